"""The forward run on meta tensors: one method per op kind (``specc.graph``), each call
answered from the shape memo when it can be, torch's errors turned into located ones."""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import torch

from specc import ir
from specc.errors import SpecError, SpecNameError, SpecShapeError, SpecTypeError
from specc.graph import Args, GraphInterpreter, Kwargs
from specc.registry import function_by_qualname
from specc.shapes.memo import describe, rebuild, sig
from specc.shapes.meta import first_line, shape_text, value_of
from specc.shapes.rules import meta_function, meta_operator
from specc.values import BINOP_SYMBOLS, BINOPS, evaluate, loc, to_expr

if TYPE_CHECKING:
    from specc.shapes.instance import Instance

# Explains a failed call in spec terms, or None: the generic message.
Explain = Callable[[str, list[Any]], str | None]


class ShapeInterpreter(GraphInterpreter):
    """Runs one forward of `inst` on meta values. With `record`, it also keeps each node's
    value (`values`) and the nodes with parameters folded to literals (`resolved`)."""

    def __init__(self, inst: Instance, record: bool) -> None:
        super().__init__(inst.names)
        self.inst = inst
        self.ck = inst.ck
        self.record = record
        self.values: dict[str, ir.Value] = {}
        self.resolved: list[ir.FNode] = []
        self.outputs: list[Any] = []

    def run_node(self, n: ir.FNode) -> Any:
        out = super().run_node(n)
        if self.record:
            if n.op != "output":
                self.values[n.name] = value_of(out)
            if n.op == "phi":  # the builder runs the branch taken: a plain alias of it
                chosen = n.args[0] if self.taken[n.target] else n.args[1]
                n = n.model_copy(update={"op": "alias", "target": "", "args": [chosen]})
            self.resolved.append(self.fold(n))
        return out

    def layer_present(self, e: ir.Name) -> bool:
        return self.inst.present(e.id)

    def ref(self, r: ir.Ref) -> Any:
        v = self.env[r.node]
        if r.index is None:
            return v
        try:
            return v[r.index]
        except (IndexError, TypeError, KeyError):
            raise SpecTypeError(
                f"cannot unpack {shape_text(v)} into that many names", loc(r.span)
            ) from None

    def fold(self, node: ir.FNode) -> ir.FNode:
        """The node with parameter names replaced by their literal values."""

        def sub(e: ir.Expr) -> ir.Expr:
            if isinstance(e, (ir.Ref, ir.ListExpr, ir.TupleExpr, ir.SliceExpr)):
                return e  # its parts are folded already
            return to_expr(evaluate(e, self.names))

        return node.model_copy(
            update={
                "args": [a.map(sub) for a in node.args],
                "kwargs": {k: v.map(sub) for k, v in node.kwargs.items()},
            }
        )

    # ---- op kinds -----------------------------------------------------------------------
    def layer(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        if self.inst.mdef.kind == "sequential" and not self.inst.present(n.target):
            return args[0]  # a `sequential` model's absent (None) entry passes x through
        built = self.inst.layer(n, args)
        self.inst.layers.verify(n, built, args)
        key = None if built.key is None else ("layer", built.key, sig(args), sig(kwargs))
        # layers run as built: a plugin may fall back to real tensors on the CPU
        out = self.invoke(n, built.module, args, kwargs, key)
        if n.target not in self.inst.first_out:
            self.inst.first_out[n.target] = value_of(out)
        return out

    def function(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        key = ("function", n.target, sig(args), sig(kwargs))
        try:
            fn = function_by_qualname(n.target)
        except KeyError:
            raise SpecNameError(
                f"`{n.target}` is not a tensor operation a forward may call", loc(n.span)
            ) from None
        if "device" in kwargs:  # checking never leaves meta, whatever device is named
            kwargs = {**kwargs, "device": "meta"}
        # factories (zeros, arange...) make meta tensors too
        return self.invoke(n, meta_function(n.target, fn), args, kwargs, key, on_meta=True)

    def method(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        in_place = n.target.endswith("_")  # not a pure function of its arguments: no memo
        key = None if in_place else ("method", n.target, sig(args), sig(kwargs))
        recv, rest = args[0], args[1:]
        fn = getattr(recv, n.target, None)
        if fn is None:
            raise SpecTypeError(f"{shape_text(recv)} has no method `{n.target}`", loc(n.span))
        return self.invoke(n, fn, rest, kwargs, key)

    def operator(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        key = ("operator", n.target, sig(args), sig(kwargs))
        fn = operator.neg if n.target == "neg" else BINOPS[n.target]
        explain = _cannot_combine(n.target)
        return self.invoke(n, meta_operator(n.target, fn), args, kwargs, key, explain=explain)

    def getitem(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        key = ("getitem", n.target, sig(args), sig(kwargs))
        return self.invoke(n, operator.getitem, args, kwargs, key)

    def attribute(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        recv = args[0]
        try:
            return getattr(recv, n.target)
        except AttributeError:
            raise SpecTypeError(
                f"{shape_text(recv)} has no attribute `{n.target}`", loc(n.span)
            ) from None

    def get_attr(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.inst.held(n)

    def output(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        self.outputs = args
        return super().output(n, args, kwargs)

    def unsupported(self, n: ir.FNode) -> Any:  # pragma: no cover - resolve_names' job
        raise SpecTypeError(f"cannot evaluate `{n.target}`", loc(n.span))

    # ---- one call -----------------------------------------------------------------------
    def invoke(
        self,
        n: ir.FNode,
        fn: Any,
        args: Args,
        kwargs: Kwargs,
        key: tuple | None,
        *,
        on_meta: bool = False,
        explain: Explain | None = None,
    ) -> Any:
        """`fn(*args, **kwargs)`, or its memoized result under `key` (None, or a key with an
        argument the memo cannot describe: always run)."""
        if key is not None and None in key:
            key = None
        if key is not None and (hit := self.ck.cache.get(key)) is not None:
            return rebuild(hit)
        try:
            if on_meta:
                with torch.device("meta"):
                    out = fn(*args, **kwargs)
            else:
                out = fn(*args, **kwargs)
        except SpecError:
            raise
        except Exception as exc:  # torch reports shape errors in many exception types
            raise self.failure(n, args, exc, explain) from None
        if key is not None and (described := describe(out)) is not None:
            self.ck.cache[key] = described
        return out

    def failure(
        self, n: ir.FNode, args: Args, exc: Exception, explain: Explain | None
    ) -> SpecShapeError:
        what = self.ck.snippet(n.span)
        reason = explain(what, args) if explain is not None else None
        if reason is not None:
            return SpecShapeError(reason, loc(n.span))
        shapes = ", ".join(shape_text(a) for a in args if isinstance(a, torch.Tensor))
        return SpecShapeError(
            f"`{what}` fails on input {shapes or 'values'}: {first_line(exc)}", loc(n.span)
        )


def _cannot_combine(op: str) -> Explain:
    """Why `a <op> b` fails for two tensors: their shapes, and the rule they break."""

    def explain(what: str, args: list[Any]) -> str | None:
        if len(args) != 2 or not all(isinstance(a, torch.Tensor) for a in args):
            return None
        a, b = args
        if op == "matmul":
            inner = (a.shape[-1], b.shape[-2] if b.dim() > 1 else b.shape[-1])
            reason = f"inner dimensions {inner[0]} and {inner[1]} differ"
        else:
            reason = "the shapes do not broadcast"
        return (
            f"`{what}`: cannot combine {shape_text(a)} {BINOP_SYMBOLS[op]} "
            f"{shape_text(b)}: {reason}"
        )

    return explain
