"""Checking for every batch size at once: each forward runs in lockstep at a few probe batch
sizes (`PROBES`), and every size is solved for the form ``a * B + c`` (``meta.value_of``).

A forward value is a `Probes` (one value per probe batch size) wherever the probes differ:
tensors always, numbers such as `x.shape[0]` when they depend on B. Lists, tuples and
values equal at every probe stay plain, so indexing and unpacking work as usual. Layers are
built once, from the first probe; torch ops run once per probe (`apply`), each answered from
the shape memo when it can be. Spec models used as layers (`ChildCall`) and containers
(`Chain`) take the `Probes` whole, so a sub-model also runs in lockstep.

What cannot be written for every batch size is said so: a size that changes with B but not
as `a * B + c` shows as `?`; a value whose kind, rank, dtype or number of items changes
with B (`x.unbind(0)`), and a `_` that would be filled from a batch-dependent size, are
located errors.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

# The probe batch sizes. Two fit `a * B + c`; the third verifies it (`B // 2` or `B * B`
# fit two probes but not three: shown `?`). None is 1, so `squeeze()` and the like cannot
# drop the batch dimension at one probe only.
PROBES = (2, 3, 5)


class Probes:
    """One value per probe batch size, in `PROBES` order."""

    __slots__ = ("items", "sig")

    def __init__(self, items: tuple[Any, ...]) -> None:
        self.items = items
        self.sig: Any = None  # its memo signature, once computed (`memo.sig`)

    def __repr__(self) -> str:
        return f"Probes{self.items!r}"


def split(v: Any, i: int) -> Any:
    """The value at probe `i`: `Probes` replaced by their i-th item, containers rebuilt."""
    if isinstance(v, Probes):
        return v.items[i]
    if isinstance(v, list):
        return [x.items[i] if isinstance(x, Probes) else split(x, i) for x in v]
    if isinstance(v, tuple) and not isinstance(v, torch.Size):
        return type(v)(split(x, i) for x in v)
    if isinstance(v, dict):
        return {k: split(x, i) for k, x in v.items()} if v else v
    if isinstance(v, slice):
        return slice(split(v.start, i), split(v.stop, i), split(v.step, i))
    return v


def join(values: list[Any]) -> Any:
    """One value from its value at each probe: plain where all are equal (and not tensors),
    containers joined item by item, a `Probes` otherwise."""
    first = values[0]
    if isinstance(first, torch.Tensor):
        return Probes(tuple(values))
    if isinstance(first, (list, tuple)) and not isinstance(first, torch.Size):
        if all(type(v) is type(first) and len(v) == len(first) for v in values):
            return type(first)(join(list(parts)) for parts in zip(*values, strict=True))
        return Probes(tuple(values))  # e.g. `x.unbind(0)`: as many tensors as the batch
    if _all_equal(values):
        return first
    return Probes(tuple(values))


def _all_equal(values: list[Any]) -> bool:
    first = values[0]
    try:
        return all(type(v) is type(first) and bool(v == first) for v in values[1:])
    except Exception:  # an object whose == is not a plain yes or no (holds tensors)
        return False


def paired(fn: Any) -> bool:
    """Does `fn` take `Probes` itself (a container, a sub-model) rather than one probe?"""
    return getattr(fn, "takes_probes", False)


def apply(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """`fn` at every probe, joined; a `paired` fn is called once with the `Probes`."""
    if paired(fn):
        return fn(*args, **kwargs)
    return join([fn(*split(args, i), **split(kwargs, i)) for i in range(len(PROBES))])


def first(v: Any) -> Any:
    """The value at the first probe (what layers are built from)."""
    return split(v, 0)


def is_tensor(v: Any) -> bool:
    return isinstance(first(v), torch.Tensor)
