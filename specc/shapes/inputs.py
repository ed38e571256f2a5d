"""What a model is called with: its parameters bound like a Python call, meta tensors for its
declared inputs (a top-level check), and the tensors a use passes checked against them."""

from __future__ import annotations

import math
from typing import Any

import torch

from specc import ir
from specc.errors import SpecShapeError, SpecTypeError, did_you_mean
from specc.registry import DTYPES, dtype_name
from specc.shapes.meta import MAX_INPUT_BYTES, bytes_text, dims_text, shape_text
from specc.shapes.probes import PROBES, Probes, first
from specc.values import evaluate, loc, type_ok


def bind_model_args(
    mdef: ir.ModelDef, args: list[Any], kwargs: dict[str, Any], span: ir.Span | None
) -> dict[str, Any]:
    """Bind a model's parameters like a Python call would, checking declared types."""
    params = mdef.params
    names = [p.name for p in params]
    if len(args) > len(params):
        raise SpecTypeError(
            f"`{mdef.name}` takes {len(params)} argument(s), got {len(args)}",
            loc(span),
            notes=[("defined here", loc(mdef.span))],
        )
    bound = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        if k not in names:
            raise SpecTypeError(
                f"`{mdef.name}` has no parameter `{k}`", loc(span), hint=did_you_mean(k, names)
            )
        if k in bound:
            raise SpecTypeError(f"`{mdef.name}` got `{k}` twice", loc(span))
        bound[k] = v
    for p in params:
        if p.name not in bound:
            if p.default is None:
                raise SpecTypeError(
                    f"`{mdef.name}` needs a value for `{p.name}`",
                    loc(span),
                    notes=[("parameter declared here", loc(p.span))],
                )
            bound[p.name] = evaluate(p.default, bound)
        if not type_ok(bound[p.name], p.type):
            raise SpecTypeError(
                f"`{mdef.name}` parameter `{p.name}` is declared {p.type} but got "
                f"{bound[p.name]!r}",
                loc(span),
                notes=[("declared here", loc(p.span))],
            )
    return {n: bound[n] for n in names}


# ---- a top-level check: tensors from the declared shapes --------------------------------


def declared_inputs(
    mdef: ir.ModelDef, args: dict[str, Any], overrides: dict[str, list[int]] | None
) -> list[Probes]:
    """Meta tensors for a top-level check, from declared shapes (or --input), at every
    probe batch size."""
    fwd = mdef.forward
    assert fwd is not None
    overrides = dict(overrides or {})
    if not fwd.inputs:
        if overrides:
            (name, shape), *_ = overrides.items()
            return [input_tensor(name, shape, torch.float32, mdef.span)]
        raise SpecShapeError(
            f"`{mdef.name}` declares no input shape, so it cannot be checked alone",
            loc(mdef.span),
            hint="add `input [C, H, W]` as its first line, or pass --input x=C,H,W",
        )
    tensors = []
    for inp in fwd.inputs:
        if inp.name in overrides:
            dims = _overridden_dims(inp, overrides.pop(inp.name))
        else:
            dims = _declared_dims(inp, args)
        tensors.append(input_tensor(inp.name, dims, input_dtype(inp), inp.span))
    if overrides:
        name = next(iter(overrides))
        raise SpecShapeError(
            f"--input names `{name}`, which is not an input of `{mdef.name}`",
            loc(fwd.span),
            hint=did_you_mean(name, [i.name for i in fwd.inputs]),
        )
    return tensors


def _overridden_dims(inp: ir.Input, got: list[int]) -> list[int]:
    if len(got) != len(inp.shape):
        raise SpecShapeError(
            f"--input {inp.name} has {len(got)} dimensions; "
            f"`{inp.name}` is declared with {len(inp.shape)}",
            loc(inp.span),
        )
    return list(got)


def _declared_dims(inp: ir.Input, args: dict[str, Any]) -> list[int]:
    """The sizes of a declared input; a named dimension needs a model argument's value."""
    dims = []
    for d in inp.shape:
        if isinstance(d.value, int):
            dims.append(d.value)
        elif d.value in args and isinstance(args[d.value], int):
            dims.append(args[d.value])
        else:
            sizes = ",".join(str(x.value) if isinstance(x.value, int) else "N" for x in inp.shape)
            raise SpecShapeError(
                f"input `{inp.name}` has a named dimension `{d.value}` with no size",
                loc(d.span),
                hint=f"check it with a size: --input {inp.name}=" + sizes,
            )
    return dims


def input_dtype(inp: ir.Input) -> torch.dtype:
    if inp.dtype is None:
        return torch.float32
    if inp.dtype not in DTYPES:
        raise SpecTypeError(
            f"unknown dtype `{inp.dtype}`", loc(inp.span), hint=did_you_mean(inp.dtype, DTYPES)
        )
    return DTYPES[inp.dtype]


def input_tensor(name: str, dims: list[int], dtype: torch.dtype, span: ir.Span | None) -> Probes:
    """A batched meta tensor for a declared input at every probe batch size, refusing sizes
    no machine could hold (and that overflow torch's size arithmetic) with an estimate."""
    if any(d < 0 for d in dims):
        raise SpecShapeError(
            f"input `{name}` has a negative dimension: {dims_text(dims)}", loc(span)
        )
    numel = math.prod(dims)
    hint = (
        f"specc refuses inputs over {bytes_text(MAX_INPUT_BYTES)} per sample; "
        "is a size off by a few zeros?"
    )
    if numel * dtype.itemsize > MAX_INPUT_BYTES:
        raise SpecShapeError(
            f"input `{name}` of shape {dims_text(dims)} would hold {numel:,} values per "
            f"sample (about {bytes_text(numel * dtype.itemsize)} in {dtype_name(dtype)})",
            loc(span),
            hint=hint,
        )
    biggest = max(dims, default=0)  # an empty input (a 0 elsewhere) with an absurd size
    if biggest * dtype.itemsize > MAX_INPUT_BYTES:
        raise SpecShapeError(
            f"input `{name}` of shape {dims_text(dims)} has a dimension of {biggest:,} "
            f"(about {bytes_text(biggest * dtype.itemsize)} in {dtype_name(dtype)} alone)",
            loc(span),
            hint=hint,
        )
    return Probes(tuple(torch.empty((b, *dims), dtype=dtype, device="meta") for b in PROBES))


# ---- a use: the tensors passed, against the declared shapes -----------------------------


def bind_inputs(
    mdef: ir.ModelDef,
    args: dict[str, Any],
    names: dict[str, Any],
    actual: list[Any],
    use_span: ir.Span | None,
) -> None:
    """Check the tensors a use passes against the declared input shapes; named dimensions
    the model's arguments leave open are bound into `names`."""
    fwd = mdef.forward
    assert fwd is not None
    name = mdef.name
    if not fwd.inputs:  # a sequential block without `input`: takes what it is given
        if len(actual) != 1:
            raise SpecTypeError(f"`{name}` takes 1 input, got {len(actual)}", loc(use_span))
        return
    if len(actual) != len(fwd.inputs):
        raise SpecTypeError(
            f"`{name}` takes {len(fwd.inputs)} input(s), got {len(actual)}",
            loc(use_span),
            notes=[("forward declared here", loc(fwd.span))],
        )
    bound: dict[str, int] = {}
    for inp, t in zip(fwd.inputs, actual, strict=False):
        _bind_one(name, inp, t, args, bound, use_span)
    for d, g in bound.items():
        names.setdefault(d, g)


def _bind_one(
    model: str,
    inp: ir.Input,
    t: Any,
    args: dict[str, Any],
    bound: dict[str, int],
    use_span: ir.Span | None,
) -> None:
    """One input: rank, each size (a name is bound at its first sight), dtype."""
    if not isinstance(first(t), torch.Tensor):
        raise SpecTypeError(f"`{model}` input `{inp.name}` must be a tensor", loc(use_span))
    got = list(first(t).shape[1:])
    want = [d.value for d in inp.shape]
    where = [("declared here", loc(inp.span))]
    if len(got) != len(want) or not _per_sample_fixed(t):
        raise SpecShapeError(
            f"`{model}` expects `{inp.name}` of shape {dims_text(want)} per sample, "
            f"but receives {shape_text(t)}",
            loc(use_span),
            notes=where,
        )
    for d, g in zip(want, got, strict=False):
        expect = d if isinstance(d, int) else args.get(d, bound.get(d))
        if isinstance(d, str) and expect is None:
            bound[d] = g
        elif expect != g:
            raise SpecShapeError(
                f"`{model}` expects `{inp.name}` of shape {dims_text(want)}"
                f"{_binding_text(want, args, bound)} per sample, "
                f"but receives {shape_text(t)}",
                loc(use_span),
                notes=where,
            )
    if inp.dtype is not None and first(t).dtype != input_dtype(inp):
        raise SpecTypeError(
            f"`{model}` expects `{inp.name}` of dtype {inp.dtype}, "
            f"got {dtype_name(first(t).dtype)}",
            loc(use_span),
            notes=where,
        )


def _binding_text(dims: list[Any], args: dict[str, Any], bound: dict[str, int]) -> str:
    known = {**args, **bound}
    parts = [f"{d}={known[d]}" for d in dims if isinstance(d, str) and d in known]
    return f" (with {', '.join(parts)})" if parts else ""


def _per_sample_fixed(t: Any) -> bool:
    """Are a passed tensor's sizes after the first the same at every probe batch size?
    (A model's declared input sizes are per sample, the same for every batch.)"""
    items = t.items if isinstance(t, Probes) else (t,)
    return all(x.dim() == items[0].dim() and x.shape[1:] == items[0].shape[1:] for x in items)
