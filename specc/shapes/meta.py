"""Meta tensors: the sizes refused before anything is allocated, each size solved for the
batch size B from its value at every probe batch size (`fit`), and how shapes and checked
values are written in messages, tables and generated comments (`dim_text`)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.overrides import TorchFunctionMode

from specc import ir
from specc.registry import dtype_name
from specc.shapes.probes import PROBES, Probes, first, is_tensor

# Sizes past these are mistakes, not models: refused at check time with an estimate.
MAX_PARAM_BYTES = 1 << 40  # 1 TiB of float32 parameters (a 20B model is 80 GB)
MAX_INPUT_BYTES = 1 << 40  # 1 TiB per sample (a 4K video clip of 1,000 frames is 100 GB)


class _NormalOnMeta(TorchFunctionMode):
    """`normal_` on a meta tensor, without its cost: torch runs it through a Python
    reference that imports torch._dynamo on first use (4-5 s cold, most of checking GPT-2,
    whose Embedding layers and init rules draw from a normal). The arguments are still
    checked, on a 0-d CPU stand-in, with the global RNG left as it was."""

    def __torch_function__(self, func: Any, types: Any, args: tuple = (), kwargs: Any = None):
        kwargs = kwargs or {}
        if func in _NORMALS:
            by_name = "tensor" in kwargs  # torch.nn.init.normal_ passes it as a keyword
            tensor = kwargs["tensor"] if by_name else args[0]
            if isinstance(tensor, torch.Tensor) and tensor.is_meta:
                stand_in = torch.empty((), dtype=tensor.dtype)
                with torch.random.fork_rng(devices=[]):
                    if by_name:
                        func(*args, **(kwargs | {"tensor": stand_in}))
                    else:
                        func(stand_in, *args[1:], **kwargs)
                return tensor
        return func(*args, **kwargs)


_NORMALS = (torch.Tensor.normal_, torch.nn.init.normal_)


@contextmanager
def on_meta(device: bool = True) -> Iterator[None]:
    """Build on the meta device (`device=False`: tensors already there), with `normal_`
    made cheap."""
    with _NormalOnMeta():
        if device:
            with torch.device("meta"):
                yield
        else:
            yield


class ProbeMismatch(Exception):
    """A value whose kind, rank or dtype differs between probe batch sizes; the interpreter
    reports it at the node that made it."""


def fit(sizes: tuple[int, ...]) -> ir.Size:
    """A size from its value at each probe batch size (`PROBES`): an int when it does not
    change, else `a * B + c` solved from the first two probes and verified on the rest;
    "?" when no such form (with integer a and c) gives every probe."""
    if all(s == sizes[0] for s in sizes):
        return sizes[0]
    (b0, b1), (s0, s1) = PROBES[:2], sizes[:2]
    scale, rem = divmod(s1 - s0, b1 - b0)
    offset = s0 - scale * b0
    if rem or any(scale * b + offset != s for b, s in zip(PROBES, sizes, strict=True)):
        return "?"
    return ir.BatchDim(scale=scale, offset=offset)


def dim_text(d: ir.Size) -> str:
    """How a size is written: `10`; `B`, `2*B`, `B + 1`, `35*B - 2` (the coefficient of B
    first, then the offset); `?` for a size that changes with B in no such form."""
    if not isinstance(d, ir.BatchDim):
        return str(d)
    text = "B" if d.scale == 1 else "-B" if d.scale == -1 else f"{d.scale}*B"
    if d.offset:
        text += f" + {d.offset}" if d.offset > 0 else f" - {-d.offset}"
    return text


def tensor_dims(t: ir.TensorType) -> list[str]:
    """Every dimension of `t` as text, the batch dimension as `B`."""
    dims = [dim_text(d) for d in t.shape]
    return ["B", *dims] if t.batched else dims


def shape_text(t: Any) -> str:
    """A forward value as users read it in messages: `[B, 10]`, `([B, 4], 3)`."""
    if isinstance(t, (Probes, torch.Tensor)) and is_tensor(t):
        try:
            return value_text(value_of(t))
        except ProbeMismatch:
            return "[" + ", ".join(map(str, first(t).shape)) + "]"
    if isinstance(t, (tuple, list)) and not isinstance(t, torch.Size):
        return "(" + ", ".join(shape_text(x) for x in t) + ")"
    return value_text(value_of(t)) if isinstance(t, Probes) else repr(t)


def value_of(t: Any) -> ir.Value:
    """A forward value as the IR records it: sizes that differ between probes solved for
    B (`fit`). Raises `ProbeMismatch` when the probes disagree on more than sizes."""
    if isinstance(t, Probes):
        if isinstance(t.items[0], torch.Tensor):
            return _tensor_value(t)
        return _joined([_probe_value(v) for v in t.items])
    if isinstance(t, (tuple, list)) and not isinstance(t, torch.Size):
        return ir.Value(kind="tuple", items=[value_of(x) for x in t])
    return _probe_value(t)


# Values are frozen, so one serves every tensor of the same shapes (a 1,000-layer model
# has a handful of distinct ones).
_TENSOR_VALUES: dict[tuple, ir.Value] = {}


def _tensor_value(t: Probes) -> ir.Value:
    """The value of a tensor at every probe (the common case, memoized by shapes; the
    memo signature, when the tensor has one, is the key)."""
    key = t.sig or tuple(
        (tuple(x.shape), x.dtype) if isinstance(x, torch.Tensor) else None for x in t.items
    )
    if (hit := _TENSOR_VALUES.get(key)) is None:
        hit = _TENSOR_VALUES[key] = _joined([_probe_value(v) for v in t.items])
    return hit


def _probe_value(t: Any) -> ir.Value:
    """One probe's value, exact (no batch dimension singled out)."""
    if isinstance(t, torch.Tensor):
        tensor = ir.TensorType(shape=list(t.shape), dtype=dtype_name(t.dtype), batched=False)
        return ir.Value(kind="tensor", tensor=tensor)
    if isinstance(t, (tuple, list)) and not isinstance(t, torch.Size):
        return ir.Value(kind="tuple", items=[_probe_value(x) for x in t])
    if isinstance(t, torch.Size):
        return ir.Value(kind="const", const=list(t))
    if t is None or isinstance(t, (bool, int, float, str)):
        return ir.Value(kind="const", const=t)
    return ir.Value(kind="const", const=repr(t))


def _joined(values: list[ir.Value]) -> ir.Value:
    """One value from one per probe: equal parts kept, sizes that differ solved for B."""
    v = values[0]
    if any(x.kind != v.kind for x in values):
        raise ProbeMismatch("a different kind of value")
    if v.kind == "tensor":
        return ir.Value(kind="tensor", tensor=_joined_tensor([x.tensor for x in values]))
    if v.kind == "tuple":
        if any(len(x.items) != len(v.items) for x in values):
            raise ProbeMismatch("a different number of values")
        return _joined_items([x.items for x in values])
    consts = [x.const for x in values]
    if all(c == v.const for c in consts):
        return v
    if all(_is_int(c) for c in consts):
        return _size(fit(tuple(consts)))
    if all(isinstance(c, list) and len(c) == len(v.const) for c in consts):  # a torch.Size
        return _joined_items([[ir.Value(kind="const", const=i) for i in c] for c in consts])
    return _size("?")


def _joined_items(per_probe: list[list[ir.Value]]) -> ir.Value:
    """A tuple from its items at each probe, item by item."""
    items = [_joined(list(p)) for p in zip(*per_probe, strict=True)]
    return ir.Value(kind="tuple", items=items)


def _size(d: ir.Size) -> ir.Value:
    return ir.Value(kind="const", const=d) if isinstance(d, int) else ir.Value(kind="size", size=d)


def _is_int(c: Any) -> bool:
    return isinstance(c, int) and not isinstance(c, bool)


def _joined_tensor(types: list[Any]) -> ir.TensorType:
    t = types[0]
    if any(x.dtype != t.dtype for x in types):
        raise ProbeMismatch("a different dtype")
    if any(len(x.shape) != len(t.shape) for x in types):
        raise ProbeMismatch("a different number of dimensions")
    dims = [fit(tuple(sizes)) for sizes in zip(*(x.shape for x in types), strict=True)]
    batched = bool(dims) and dims[0] == ir.BatchDim(scale=1)
    return ir.TensorType(shape=dims[1:] if batched else dims, dtype=t.dtype, batched=batched)


def value_text(v: ir.Value) -> str:
    if v.kind == "tensor" and v.tensor is not None:
        return "[" + ", ".join(tensor_dims(v.tensor)) + "]"
    if v.kind == "tuple":
        return "(" + ", ".join(value_text(i) for i in v.items) + ")"
    if v.kind == "size" and v.size is not None:
        return dim_text(v.size)
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
