"""Hover text and document symbols from an analysis (specc.lsp.analysis); plain data, the
server wraps it in protocol types. Positions are specc's: 1-based lines and columns."""

from __future__ import annotations

import re
from pathlib import Path

from lsprotocol import types as lsp

from specc import ir
from specc.errors import Location
from specc.lsp.analysis import Analysis


def _inside(span: ir.Span, line: int, column: int) -> bool:
    if not span.line <= line <= span.end_line:
        return False
    if line == span.line and column < span.column:
        return False
    return not (line == span.end_line and column >= span.end_column)


def _in_file(span: ir.Span, path: Path) -> bool:
    return Path(span.file).resolve() == path.resolve()


def hover_text(result: Analysis, line: int, column: int) -> str | None:
    """A layer's declaration or call: its resolved constructor, output shape and parameter
    count. A function call in a forward: its output shape. A forward variable: its shape
    there. A model's header: its check table."""
    program = result.program
    for inst in result.instances.values():
        text = _layer_hover(inst, result.path, line, column) or _forward_hover(
            inst, result, line, column
        )
        if text is not None:
            return text
    for model in program.models if program is not None else []:
        span = model.span
        if _in_file(span, result.path) and line == span.line and model.name in result.instances:
            return "```\n" + _table_text(result.instances[model.name]) + "\n```"
    return None


def _layer_text(layer: ir.LayerInstance) -> str:
    from specc.shapes.report import ctor_text, shape_of

    shape = shape_of(layer.out) if layer.out is not None else "not called"
    return (f"`{layer.name} = {ctor_text(layer.ctor)}`\n\noutput `{shape}`, "
            f"{layer.params:,} parameters")  # fmt: skip


def _layer_hover(inst: ir.ModelInstance, path: Path, line: int, column: int) -> str | None:
    for layer in inst.layers:
        if _in_file(layer.span, path) and _inside(layer.span, line, column):
            return _layer_text(layer)
    return None


def _forward_hover(inst: ir.ModelInstance, result: Analysis, line: int, column: int) -> str | None:
    """The name under the cursor in `inst`'s forward: a variable (its value where it is
    assigned or read), or the callee of the innermost call around the cursor."""
    from specc.lsp.cursor import word_at
    from specc.shapes.report import shape_of

    nodes = [n for n in inst.nodes if _in_file(n.span, result.path)]
    source = result.program.sources[0].text if result.program is not None else ""
    word = word_at(source, line - 1, column - 1)
    if not nodes or word is None:
        return None
    name = word[0]
    if (node := _assigned(nodes, name, line, column)) is not None:
        return f"`{name}`: `{shape_of(inst.values.get(node.name))}`"
    around = [n for n in nodes if _inside(n.span, line, column)]
    if not around:
        return None
    node = min(
        around, key=lambda n: (n.span.end_line - n.span.line, n.span.end_column - n.span.column)
    )
    layers = {layer.name: layer for layer in inst.layers}
    if node.op == "layer" and node.target == name and name in layers:
        return _layer_text(layers[name])
    if node.target.rsplit(".", 1)[-1] == name:
        return f"`{name}(...)`: `{shape_of(inst.values.get(node.name))}`"
    return None


def _assigned(nodes: list[ir.FNode], name: str, line: int, column: int) -> ir.FNode | None:
    """The node whose value variable `name` holds at the cursor: the assignment on the
    cursor's line when the cursor is on its target, else the last one before the cursor."""
    holding = [n for n in nodes if name in n.vars]
    for n in holding:  # `x = f(...)` with the cursor on `x`: left of the value's span
        if n.span.line == line and column < n.span.column and n.op != "input":
            return n
    before = [n for n in holding if (n.span.end_line, n.span.end_column) <= (line, column)
              or (n.op == "input" and _inside(n.span, line, column))]  # fmt: skip
    return before[-1] if before else None


def _table_text(inst: ir.ModelInstance) -> str:
    import io

    from rich.console import Console

    from specc.shapes.report import model_table

    console = Console(width=100, record=True, file=io.StringIO())
    console.print(model_table(inst))
    return console.export_text().rstrip()


def to_range(where: Location | ir.Span | None) -> lsp.Range:
    """specc's 1-based columns, end exclusive, as LSP's 0-based positions (in characters:
    the server converts them to the client's units). None: the file's first character."""
    if where is None:
        return lsp.Range(lsp.Position(0, 0), lsp.Position(0, 1))
    start = lsp.Position(where.line - 1, where.column - 1)
    end_line = where.end_line or where.line
    end_column = where.end_column or where.column + 1
    return lsp.Range(start, lsp.Position(end_line - 1, end_column - 1))


def _symbol(name: str, kind: lsp.SymbolKind, span: ir.Span,
            children: list[lsp.DocumentSymbol] | None = None) -> lsp.DocumentSymbol:  # fmt: skip
    return lsp.DocumentSymbol(name=name, kind=kind, range=to_range(span),
                              selection_range=to_range(span), children=children)  # fmt: skip


def document_symbols(result: Analysis) -> list[lsp.DocumentSymbol]:
    """Models (with their layers), data blocks and train blocks of this file."""
    program = result.program
    if program is None:
        return []
    mine = [m for m in program.models if _in_file(m.span, result.path)]
    out = [_symbol(m.name, lsp.SymbolKind.Class, m.span,
                   [_symbol(layer.name, lsp.SymbolKind.Field, layer.span)
                    for layer in m.layers if not layer.anonymous])
           for m in mine]  # fmt: skip
    out += [_symbol(f"data {d.name}", lsp.SymbolKind.Struct, d.span)
            for d in program.data if _in_file(d.span, result.path)]  # fmt: skip
    out += [_symbol(f"train {t.name}" if t.name else "train", lsp.SymbolKind.Event, t.span)
            for t in program.trains if _in_file(t.span, result.path)]  # fmt: skip
    return out


def plugins_of(program: ir.Program | None) -> dict[str, type]:
    """The program's plugin classes by name; none when it has none or one fails to load
    (the diagnostics say why)."""
    from specc.errors import SpecError
    from specc.lang.plugins import load_plugins

    if program is None or not program.plugins:
        return {}
    try:
        return load_plugins(program)
    except SpecError:
        return {}


def definition(result: Analysis, text: str, line: int, column: int) -> lsp.Location | None:
    """Where the name at 0-based `line`/`column` of `text` is defined: a layer of the model
    the cursor is in, a model or data block (in this file or an imported one), a plugin or
    torch.nn class (in its Python file). `result` is the last analysis that loaded."""
    from specc.lsp.cursor import cursor_at, word_at
    from specc.registry import nn_classes

    program = result.program
    found = word_at(text, line, column)
    if program is None or found is None or cursor_at(text, line, found[1]) is None:
        return None  # nothing known, no name there, or a word in a comment or string
    name = found[0]
    here = next((m for m in program.models if _in_file(m.span, result.path)
                 and m.span.line <= line + 1 <= m.span.end_line), None)  # fmt: skip
    layer = next((x for x in here.layers if x.name == name), None) if here else None
    declared = (
        layer or program.model(name) or next((d for d in program.data if d.name == name), None)
    )
    if declared is not None:
        return _name_location(program, declared.span, name)
    cls = plugins_of(program).get(name) or nn_classes().get(name)
    return _class_location(cls) if cls is not None else None


def _name_location(program: ir.Program, span: ir.Span, name: str) -> lsp.Location:
    """The first `name` in the first line of `span`: a model's or a data block's name in
    its header, a layer's at the start of its declaration."""
    text = next((s.text for s in program.sources if s.path == span.file), "")
    lines = text.split("\n")
    row = lines[span.line - 1] if span.line <= len(lines) else ""
    found = re.compile(rf"\b{re.escape(name)}\b").search(row, span.column - 1)
    start, end = found.span() if found else (span.column - 1,) * 2
    return lsp.Location(Path(span.file).resolve().as_uri(),
                        lsp.Range(lsp.Position(span.line - 1, start),
                                  lsp.Position(span.line - 1, end)))  # fmt: skip


def _class_location(cls: type) -> lsp.Location | None:
    """The `class` statement of a Python class, at its name."""
    import inspect

    try:
        file = inspect.getsourcefile(cls)
        lines, first = inspect.getsourcelines(cls)
    except (OSError, TypeError):
        return None
    if file is None:
        return None
    header = next((i for i, text in enumerate(lines) if text.lstrip().startswith("class ")), 0)
    start = max(lines[header].find(cls.__name__), 0)
    where = lsp.Position(first - 1 + header, start)
    end = lsp.Position(where.line, start + len(cls.__name__))
    return lsp.Location(Path(file).resolve().as_uri(), lsp.Range(where, end))
