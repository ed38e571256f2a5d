"""Meta tensors: the batch size they carry, the sizes refused before anything is allocated,
and how shapes and checked values are written in messages and tables."""

from __future__ import annotations

from typing import Any

import torch

from specc import ir
from specc.registry import dtype_name

# The batch size used for meta tensors. Shapes are shown with `B` in its place.
BATCH = 2
# Sizes past these are mistakes, not models: refused at check time with an estimate.
MAX_PARAM_BYTES = 1 << 40  # 1 TiB of float32 parameters (a 20B model is 80 GB)
MAX_INPUT_BYTES = 1 << 40  # 1 TiB per sample (a 4K video clip of 1,000 frames is 100 GB)


def shape_text(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        dims = [str(d) for d in t.shape]
        if t.dim() >= 1 and t.shape[0] == BATCH:
            dims[0] = "B"
        return "[" + ", ".join(dims) + "]"
    if isinstance(t, (tuple, list)):
        return "(" + ", ".join(shape_text(x) for x in t) + ")"
    return repr(t)


def value_of(t: Any) -> ir.Value:
    if isinstance(t, torch.Tensor):
        batched = t.dim() >= 1 and t.shape[0] == BATCH
        shape = list(t.shape[1:]) if batched else list(t.shape)
        return ir.Value(
            kind="tensor",
            tensor=ir.TensorType(shape=shape, dtype=dtype_name(t.dtype), batched=batched),
        )
    if isinstance(t, (tuple, list)) and not isinstance(t, torch.Size):
        return ir.Value(kind="tuple", items=[value_of(x) for x in t])
    if isinstance(t, torch.Size):
        return ir.Value(kind="const", const=list(t))
    if t is None or isinstance(t, (bool, int, float, str)):
        return ir.Value(kind="const", const=t)
    return ir.Value(kind="const", const=repr(t))


def value_text(v: ir.Value) -> str:
    if v.kind == "tensor" and v.tensor is not None:
        dims = [str(d) for d in v.tensor.shape]
        if v.tensor.batched:
            dims.insert(0, "B")
        return "[" + ", ".join(dims) + "]"
    if v.kind == "tuple":
        return "(" + ", ".join(value_text(i) for i in v.items) + ")"
    return repr(v.const)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (torch's run to many lines)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def bytes_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def dims_text(dims: list[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"
