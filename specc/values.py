"""Literal Exprs <-> Python values, and constant folding with model parameters."""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Mapping
from typing import Any

from specc import ir
from specc.errors import Location, SpecNameError, SpecTypeError, did_you_mean

BINOPS: dict[str, Callable[[Any, Any], Any]] = {
    "add": operator.add,
    "sub": operator.sub,
    "mul": operator.mul,
    "div": operator.truediv,
    "floordiv": operator.floordiv,
    "mod": operator.mod,
    "matmul": operator.matmul,
    "pow": operator.pow,
    "eq": operator.eq,
    "ne": operator.ne,
    "lt": operator.lt,
    "le": operator.le,
    "gt": operator.gt,
    "ge": operator.ge,
    "is": operator.is_,
    "is_not": operator.is_not,
    "in": lambda a, b: a in b,
    "not_in": lambda a, b: a not in b,
}
COMPARISONS = frozenset({"eq", "ne", "lt", "le", "gt", "ge", "is", "is_not", "in", "not_in"})
BINOP_SYMBOLS = {
    "add": "+",
    "sub": "-",
    "mul": "*",
    "div": "/",
    "floordiv": "//",
    "mod": "%",
    "matmul": "@",
    "pow": "**",
    "eq": "==",
    "ne": "!=",
    "lt": "<",
    "le": "<=",
    "gt": ">",
    "ge": ">=",
    "is": "is",
    "is_not": "is not",
    "in": "in",
    "not_in": "not in",
}

# Functions a constant expression may call (`len(widths)`, `sqrt(2 * n_layer)`), and how
# generated code spells them.
CONST_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "len": len,
    "min": min,
    "max": max,
    "abs": abs,
    "round": round,
    "sqrt": math.sqrt,
}
CONST_FUNCTION_CODE = {"sqrt": "math.sqrt"}

# Integers past this are almost surely mistakes, and huge powers would hang the checker.
_MAX_INT = 10**18


def loc(span: ir.Span | None) -> Location | None:
    if span is None:
        return None
    return Location(span.file, span.line, span.column, span.end_line, span.end_column)


def evaluate(
    expr: ir.Expr,
    names: Mapping[str, Any],
    *,
    on_other: Callable[[ir.Expr], Any] | None = None,
) -> Any:
    """Evaluate a constant expression. `names` are model parameters; `on_other` handles
    nodes that are not constants (holes, refs, calls) or raises."""
    return _Evaluator(names, on_other).ev(expr)


class _Evaluator:
    """`evaluate`'s walk over an expression. An object rather than a nested function that
    calls itself: such a function refers to itself through its closure, so each call left
    a reference cycle holding `names` and `on_other` (in a check, the whole interpreter and
    what it built) for the garbage collector."""

    __slots__ = ("names", "on_other")

    def __init__(self, names: Mapping[str, Any], on_other: Callable[[ir.Expr], Any] | None) -> None:
        self.names = names
        self.on_other = on_other

    def ev(self, e: ir.Expr) -> Any:
        if isinstance(e, ir.Const):
            return e.value
        if isinstance(e, ir.Name):
            if e.id in self.names:
                return self.names[e.id]
            if self.on_other is not None:
                return self.on_other(e)
            raise SpecNameError(
                f"unknown name `{e.id}`", loc(e.span), hint=did_you_mean(e.id, self.names)
            )
        if isinstance(e, ir.ListExpr):
            return [self.ev(i) for i in e.items]
        if isinstance(e, ir.TupleExpr):
            return tuple(self.ev(i) for i in e.items)
        if isinstance(e, ir.SliceExpr):
            return slice(*(None if p is None else self.ev(p) for p in (e.start, e.stop, e.step)))
        if isinstance(e, ir.Ellipsis_):
            return ...
        if isinstance(e, ir.Neg):
            v = self.ev(e.operand)
            if self.on_other is not None and not isinstance(v, (int, float)):
                return self.on_other(e)
            return _arith(operator.neg, e, v)
        if isinstance(e, ir.BinOp):
            left, right = self.ev(e.left), self.ev(e.right)
            return _arith(BINOPS[e.op], e, left, right)
        if isinstance(e, ir.BoolOp):
            left = truth(self.ev(e.left), e.left)
            if left == (e.op == "or"):
                return left
            return truth(self.ev(e.right), e.right)
        if isinstance(e, ir.Not):
            return not truth(self.ev(e.operand), e.operand)
        if isinstance(e, ir.IfExp):
            return self.ev(e.body) if truth(self.ev(e.test), e.test) else self.ev(e.orelse)
        if isinstance(e, ir.Index):
            return _arith(operator.getitem, e, self.ev(e.value), self.ev(e.index))
        if isinstance(e, ir.Call) and e.func in CONST_FUNCTIONS and not e.kwargs:
            if e.func not in self.names:  # a model parameter may shadow it
                return _arith(CONST_FUNCTIONS[e.func], e, *(self.ev(a) for a in e.args))
        if self.on_other is not None:
            return self.on_other(e)
        raise SpecTypeError("expected a constant here", loc(getattr(e, "span", None)))


def _is_tensor(*values: Any) -> bool:
    return any(type(v).__name__ in ("Tensor", "Parameter") for v in values)


def truth(value: Any, e: Any) -> bool:
    """A condition's value, which must be known when the model is built: a constant, never a
    tensor (whose values exist only when the model runs)."""
    if value is None or isinstance(value, (bool, int, float, str, list, tuple)):
        return bool(value)
    what = "tensor values" if _is_tensor(value) else f"a {type(value).__name__}"
    raise SpecTypeError(
        f"this condition depends on {what}, which are known only when the model runs",
        loc(getattr(e, "span", None)),
        hint="conditions are decided when the model is built: use model parameters, "
        "sizes (`x.shape[1]`) and constants; for a per-element choice use `where(c, a, b)`",
    )


def _arith(fn: Callable, e: Any, *args: Any) -> Any:
    if fn is operator.pow and isinstance(args[1], int) and abs(args[1]) > 4096:
        raise SpecTypeError("exponent too large", loc(e.span))
    try:
        out = fn(*args)
    except ZeroDivisionError:
        raise SpecTypeError("division by zero", loc(e.span)) from None
    except (TypeError, ValueError, OverflowError, IndexError, KeyError) as exc:
        raise SpecTypeError(f"cannot compute this: {exc}", loc(e.span)) from None
    if isinstance(out, int) and abs(out) > _MAX_INT:
        raise SpecTypeError(f"number too large ({out:.3g})", loc(e.span))
    if isinstance(out, float) and not math.isfinite(out):
        raise SpecTypeError("result is not a finite number", loc(e.span))
    return out


def to_expr(value: Any) -> ir.Expr:
    """The literal Expr for a Python value (for storing resolved arguments in the IR)."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return ir.Const(value=value)
    if isinstance(value, tuple):
        return ir.TupleExpr(items=[to_expr(v) for v in value])
    if isinstance(value, list):
        return ir.ListExpr(items=[to_expr(v) for v in value])
    if isinstance(value, slice):
        parts = [None if p is None else to_expr(p) for p in (value.start, value.stop, value.step)]
        return ir.SliceExpr(start=parts[0], stop=parts[1], step=parts[2])
    if value is Ellipsis:
        return ir.Ellipsis_()
    # torch.Size, dtypes and the like: keep what is representable.
    if hasattr(value, "__iter__"):
        return ir.TupleExpr(items=[to_expr(v) for v in value])
    raise SpecTypeError(f"value {value!r} cannot be written in a spec")


def is_none(e: ir.Expr) -> bool:
    """Is `e` the literal `None` (an absent layer: `X if c else None`)?"""
    return isinstance(e, ir.Const) and e.value is None


def literal(expr: ir.Expr) -> Any:
    """The Python value of a literal Expr (no names)."""
    return evaluate(expr, {})


def type_ok(value: Any, type_name: str | None) -> bool:
    """Does `value` fit a declared parameter type?"""
    if type_name is None:
        return True
    if type_name == "int":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_name == "float":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if type_name == "bool":
        return isinstance(value, bool)
    if type_name == "str":
        return isinstance(value, str)
    if type_name in ("list", "tuple"):
        return isinstance(value, (list, tuple))
    return True


PARAM_TYPES = ("int", "float", "bool", "str", "list", "tuple", "any")
