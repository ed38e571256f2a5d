"""Tensor expressions of `Parameter(...)`/`Buffer(...)` declarations, shared by every stage.

`cls_token = Parameter(zeros(1, 1, dim))` holds a tensor expression: torch functions as a
forward resolves them (``registry.functions``), tensor methods, arithmetic, indexing, with
model parameters as constants. The checker evaluates it on meta (its shape and dtype) and
folds it (`fold`) into the checked IR; the builder evaluates the folded expression for real.

Like ``specc.graph``, this module imports only the IR, the registry and ``specc.values``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch

from specc import ir
from specc.errors import SpecTypeError
from specc.registry import function_by_qualname, functions
from specc.values import evaluate, loc, to_expr


def fold(e: ir.Expr, names: Mapping[str, Any]) -> ir.Expr:
    """`e` with model parameters replaced by their literal values and every function by its
    qualified name (`zeros` -> `torch.zeros`): what the builder evaluates."""

    def one(x: ir.Expr) -> ir.Expr:
        if isinstance(x, ir.Name) and x.id in names:
            return to_expr(names[x.id])
        if isinstance(x, ir.Call) and x.func in functions():
            return x.model_copy(update={"func": functions()[x.func][0]})
        return x

    return e.map(one)


def _function(name: str) -> Callable:
    """A forward function by spec name or, in a folded expression, by qualified name."""
    found = functions().get(name)
    return found[1] if found is not None else function_by_qualname(name)


def tensor_value(e: ir.Expr, names: Mapping[str, Any], device: str | None = None) -> Any:
    """The value of tensor expression `e`; with `device`, its factories make tensors there
    (`meta` at check time, whatever device a call names). Torch's own exceptions pass
    through: the caller knows how to locate them."""

    def call_args(args: list[ir.Expr], kwargs: dict[str, ir.Expr]) -> tuple[list, dict]:
        values = {k: ev(v) for k, v in kwargs.items()}
        if device is not None and "device" in values:
            values["device"] = device
        return [ev(a) for a in args], values

    def other(x: ir.Expr) -> Any:
        if isinstance(x, ir.Call):
            args, kwargs = call_args(x.args, x.kwargs)
            return _function(x.func)(*args, **kwargs)
        if isinstance(x, ir.MethodCall):
            receiver = ev(x.receiver)
            args, kwargs = call_args(x.args, x.kwargs)
            return getattr(receiver, x.method)(*args, **kwargs)
        if isinstance(x, ir.Attribute):
            return getattr(ev(x.value), x.attr)
        if isinstance(x, ir.Index):
            return ev(x.value)[ev(x.index)]
        if isinstance(x, ir.Neg):
            return -ev(x.operand)
        raise SpecTypeError("expected a tensor expression here", loc(getattr(x, "span", None)))

    def ev(x: ir.Expr) -> Any:
        return evaluate(x, names, on_other=other)

    if device is None:
        return ev(e)
    with torch.device(device):
        return ev(e)
