"""Hover text and document symbols from an analysis (specc.lsp.analysis); plain data, the
server wraps it in protocol types. Positions are specc's: 1-based lines and columns."""

from __future__ import annotations

from pathlib import Path

from lsprotocol import types as lsp

from specc import ir
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
    """A layer: its resolved constructor, output shape and parameter count. A model's
    header: its check table."""
    from specc.shapes.report import ctor_text, shape_of

    for inst in result.instances.values():
        for layer in inst.layers:
            if _in_file(layer.span, result.path) and _inside(layer.span, line, column):
                shape = shape_of(layer.out) if layer.out is not None else "not called"
                return (f"`{layer.name} = {ctor_text(layer.ctor)}`\n\noutput `{shape}`, "
                        f"{layer.params:,} parameters")  # fmt: skip
    program = result.program
    for model in program.models if program is not None else []:
        span = model.span
        if _in_file(span, result.path) and line == span.line and model.name in result.instances:
            return "```\n" + _table_text(result.instances[model.name]) + "\n```"
    return None


def _table_text(inst: ir.ModelInstance) -> str:
    import io

    from rich.console import Console

    from specc.shapes.report import model_table

    console = Console(width=100, record=True, file=io.StringIO())
    console.print(model_table(inst))
    return console.export_text().rstrip()


def _range(span: ir.Span) -> lsp.Range:
    return lsp.Range(lsp.Position(span.line - 1, span.column - 1),
                     lsp.Position(span.end_line - 1, span.end_column - 1))  # fmt: skip


def _symbol(name: str, kind: lsp.SymbolKind, span: ir.Span,
            children: list[lsp.DocumentSymbol] | None = None) -> lsp.DocumentSymbol:  # fmt: skip
    return lsp.DocumentSymbol(name=name, kind=kind, range=_range(span),
                              selection_range=_range(span), children=children)  # fmt: skip


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
