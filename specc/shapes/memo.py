"""The shape memo: a hashable signature of a call's arguments, and a described result that
can be rebuilt as fresh meta tensors. Meta ops run through Python decompositions (~1 ms
each); the same op on the same shapes gives the same result, so repeated blocks are inferred
once (see `Checker.cache`, `Checker.instances` and `Instance.results`)."""

from __future__ import annotations

from typing import Any

import torch

from specc.shapes.probes import Probes


def sig(v: Any) -> Any:
    """A hashable description of an argument for the shape cache (None: do not cache)."""
    if isinstance(v, torch.Tensor):
        return ("T", tuple(v.shape), v.stride(), v.dtype)
    if isinstance(v, Probes):
        if v.sig is None:
            items = tuple(sig(i) for i in v.items)
            v.sig = None if None in items else ("P", items)
        return v.sig
    if isinstance(v, (list, tuple)):
        items = tuple(sig(i) for i in v)
        return None if None in items else (type(v).__name__, items)
    if isinstance(v, dict):
        items = tuple((k, sig(x)) for k, x in sorted(v.items()))
        return None if any(x is None for _, x in items) else ("D", items)
    if isinstance(v, slice):
        return ("S", sig(v.start), sig(v.stop), sig(v.step))
    if v is None or v is Ellipsis or isinstance(v, (bool, int, float, str, torch.dtype)):
        return (type(v).__name__, v)
    return None


def describe(out: Any) -> Any:
    """A call's result as plain data (shapes, strides, dtypes, constants); None: not one
    the memo can rebuild."""
    if isinstance(out, torch.Tensor):
        return ("T", tuple(out.shape), out.stride(), out.dtype)
    if isinstance(out, Probes):
        items = tuple(describe(i) for i in out.items)
        return None if None in items else ("P", items)
    if isinstance(out, (list, tuple)) and not isinstance(out, torch.Size):
        items = [describe(i) for i in out]
        return None if any(i is None for i in items) else (type(out), items)
    if out is None or isinstance(out, (bool, int, float, str, torch.Size)):
        return ("V", out)
    return None


def rebuild(d: Any) -> Any:
    """Fresh meta tensors (and constants) from a `describe`d result."""
    if d[0] == "T":
        return _empty(d[1], d[2], d[3])
    if d[0] == "V":
        return d[1]
    if d[0] == "P":
        if all(i[0] == "T" for i in d[1]):  # the common case, without a call per item
            probes = Probes(tuple(_empty(shape, stride, dtype) for _, shape, stride, dtype in d[1]))
            probes.sig = d  # a tensor's description is its signature
            return probes
        return Probes(tuple(rebuild(i) for i in d[1]))
    return d[0](rebuild(i) for i in d[1])


def _empty(shape: tuple, stride: tuple, dtype: torch.dtype) -> torch.Tensor:
    return torch.empty_strided(shape, stride, dtype=dtype, device="meta")
