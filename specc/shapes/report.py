"""What `specc check` prints: a table per checked model (rich, plain when not a TTY)."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from specc import ir
from specc.values import literal


def _lit(e: ir.Expr) -> str:
    return repr(literal(e))


def ctor_text(c: Any) -> str:
    if isinstance(c, ir.TorchCtor):
        parts = [*map(_lit, c.args), *(f"{k}={_lit(v)}" for k, v in c.kwargs.items())]
        return f"{c.cls.rsplit('.', 1)[-1]}({', '.join(parts)})"
    if isinstance(c, ir.SequentialCtor):
        inner = ", ".join(ctor_text(i) for i in c.items[:3] if not _absent(i))
        more = ", ..." if len(c.items) > 3 else ""
        return f"Sequential({inner}{more})"
    if isinstance(c, ir.RepeatCtor):
        star = "*" if c.splat else ""
        return (
            f"{star}repeat({c.count}, {ctor_text(c.items[0])}{', ...' if len(c.items) > 1 else ''})"
        )
    if isinstance(c, ir.CondCtor):
        return ctor_text(c.ctor)
    if isinstance(c, ir.NoneCtor):
        return "None"
    if isinstance(c, ir.ModelCtor):
        args = ", ".join(f"{k}={_lit(v)}" for k, v in c.instance.args.items())
        return f"{c.instance.model}({args})"
    if isinstance(c, ir.TensorCtor):
        return tensor_text(c)
    return "?"


def _absent(c: Any) -> bool:
    return isinstance(c, ir.NoneCtor) or (isinstance(c, ir.CondCtor) and _absent(c.ctor))


def tensor_text(c: ir.TensorCtor) -> str:
    """`Parameter`, `Parameter (no grad)`, `Buffer`, `Buffer (not saved)`, with a dtype that
    is not float32."""
    text = "Parameter" if c.role == "parameter" else "Buffer"
    if c.role == "parameter" and not c.requires_grad:
        text += " (no grad)"
    if c.role == "buffer" and not c.persistent:
        text += " (not saved)"
    return text if c.dtype == "float32" else f"{text} {c.dtype}"


def shape_of(v: ir.Value | None) -> str:
    """A checked value as the table shows it: `[B, 10]`, `[2*B]` (see `meta.dim_text`)."""
    from specc.shapes.meta import value_text

    return "-" if v is None else value_text(v)


def render_warnings(warnings: list[ir.CheckWarning], texts: dict[str, str]) -> str:
    """Check-time warnings rendered like errors (`path:line:col: warning: ...`, the source
    line and a caret), one blank line between them."""
    from specc.errors import Diagnostic, render_diagnostic
    from specc.values import loc

    return "\n\n".join(
        render_diagnostic(
            Diagnostic(w.message, loc(w.span), w.hint),
            texts.get(w.span.file) if w.span else None,
            "warning",
        )
        for w in warnings
    )


def print_warnings(inst: ir.ModelInstance, program: ir.Program) -> None:
    """Print a checked instance's warnings to stderr (nothing when it has none)."""
    import sys

    from specc.lang.loader import source_texts

    if inst.warnings:
        print(render_warnings(inst.warnings, source_texts(program)) + "\n", file=sys.stderr)


def _fmt(n: int) -> str:
    return f"{n:,}"


def model_table(inst: ir.ModelInstance, frozen: dict[str, int] | None = None) -> Table:
    ins = ", ".join(f"{n}: {shape_of(ir.Value(kind='tensor', tensor=t))}" for n, t in inst.inputs)
    # Spec text (strings, names) reaches the cells: plain Text, never rich markup.
    table = Table(title=escape(f"{inst.model}  ({ins})"), title_justify="left", show_lines=False)
    table.add_column("layer")
    table.add_column("type")
    table.add_column("output shape")
    table.add_column("params", justify="right")
    for layer in inst.layers:
        table.add_row(
            Text(layer.name), Text(ctor_text(layer.ctor)), Text(shape_of(layer.out)),
            _fmt(layer.params),
        )  # fmt: skip
    for tie in inst.ties:  # the shared parameter is counted once: the row subtracts it
        shape = shape_of(
            ir.Value(kind="tensor", tensor=ir.TensorType(shape=tie.shape, dtype="", batched=False))
        )
        table.add_row(Text(f"{tie.target} = {tie.source}"), "tied", Text(shape),
                      _fmt(-tie.params))  # fmt: skip
    outs = ", ".join(shape_of(v) for v in inst.outputs)
    table.add_section()
    table.add_row("output", "", Text(outs), "")
    frozen_count = sum((frozen or {}).values())
    table.add_row("total", "", "", _fmt(inst.params))
    if frozen is not None:
        table.add_row("trainable", "", "", _fmt(inst.trainable - frozen_count))
        table.add_row("frozen", "", "", _fmt(frozen_count))
    return table
