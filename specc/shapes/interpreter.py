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
from specc.shapes.meta import ProbeMismatch, dim_text, first_line, fit, shape_text, value_of
from specc.shapes.probes import PROBES, Probes, first, join, paired, split
from specc.shapes.rules import meta_function, meta_operator
from specc.values import BINOP_SYMBOLS, BINOPS, evaluate, loc, to_expr, truth

if TYPE_CHECKING:
    from specc.shapes.instance import Instance

# torch functions that make a new tensor, on the CPU unless given a `device`.
FACTORIES = frozenset(
    f"torch.{name}"
    for name in ("arange", "zeros", "ones", "empty", "full", "rand", "randn", "randint",
                 "linspace", "logspace", "eye", "tensor")
)  # fmt: skip

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
        self.warnings: list[ir.CheckWarning] = []  # recorded on the first run

    def run_node(self, n: ir.FNode) -> Any:
        out = super().run_node(n)
        if self.record:
            if n.op != "output":
                self.values[n.name] = self.value(n, out)
            if n.op == "phi":  # the builder runs the branch taken: a plain alias of it
                chosen = n.args[0] if self.taken[n.target] else n.args[1]
                n = n.model_copy(update={"op": "alias", "target": "", "args": [chosen]})
            self.resolved.append(self.fold(n))
        return out

    def layer_present(self, e: ir.Name) -> bool:
        return self.inst.present(e.id)

    def run(self, nodes: Any, inputs: Any = ()) -> Any:
        self.by_name = {n.name: n for n in nodes}
        return super().run(nodes, inputs)

    def condition(self, n: ir.FNode) -> bool:
        """Decided now, for every batch size: a condition reading the batch size (even one
        that holds at every probe, like `x.shape[0] > 1`) is not."""
        todo = [r.node for r in n.args[0].find_all(ir.Ref)]
        seen: set[str] = set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            value = self.env.get(name)
            if isinstance(value, Probes) and isinstance(value.items[0], (int, float)):
                raise SpecTypeError(
                    "this condition depends on the batch size, which is known only when the "
                    "model runs",
                    loc(n.args[0].span),
                    hint="conditions are decided when the model is built, the same for every "
                    "batch: use model parameters and the sizes of other dimensions",
                )
            node = self.by_name[name]
            args = [*node.args, *node.kwargs.values()]
            todo += [r.node for a in args for r in a.find_all(ir.Ref)]
        value = self.expr(n.args[0])
        if isinstance(value, Probes):  # tensors (sizes were refused above): truth says why
            value = value.items[0]
        return truth(value, n.args[0])

    def value(self, n: ir.FNode, out: Any) -> ir.Value:
        """`out` as the IR records it, sizes solved for the batch size."""
        try:
            return value_of(out)
        except ProbeMismatch as exc:
            sizes = ", ".join(map(str, PROBES))
            raise SpecShapeError(
                f"`{self.ck.snippet(n.span)}` gives {exc} at different batch sizes "
                f"({sizes}), so its shape cannot be written for every batch size",
                loc(n.span),
            ) from None

    def expr(self, e: ir.Expr) -> Any:
        """Arithmetic on forward values (`x.shape[0] * 2`, also inside a list) is done at
        each probe, the way torch would see it."""
        if isinstance(e, ir.Ref):  # most arguments: nothing to compute
            return self.ref(e)
        if isinstance(e, ir.Const):
            return e.value
        if e.find(ir.BinOp, ir.Neg) is not None and e.find(ir.Ref) is not None:
            return join([self._expr_at(e, i) for i in range(len(PROBES))])
        return super().expr(e)

    def _expr_at(self, e: ir.Expr, i: int) -> Any:
        def other(o: ir.Expr) -> Any:
            return split(self._other(o), i)

        return evaluate(e, self.names, on_other=other)

    def ref(self, r: ir.Ref) -> Any:
        v = self.env[r.node]
        if r.index is None:
            return v
        try:
            if isinstance(v, Probes):
                return join([item[r.index] for item in v.items])
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

        args = [a.map(sub) for a in node.args]
        kwargs = {k: v.map(sub) for k, v in node.kwargs.items()}
        if _same_items(args, node.args) and _same_items(kwargs.values(), node.kwargs.values()):
            return node  # nothing to fold (most nodes: `relu(x)`, `fc(x)`): no copy
        return node.model_copy(update={"args": args, "kwargs": kwargs})

    # ---- op kinds -----------------------------------------------------------------------
    def layer(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        if self.inst.mdef.kind == "sequential" and not self.inst.present(n.target):
            return args[0]  # a `sequential` model's absent (None) entry passes x through
        built = self.inst.layer(n, args)
        self.inst.layers.verify(n, built, args)
        key = None if built.key is None else ("layer", built.key)
        # layers run as built: a plugin may fall back to real tensors on the CPU
        out = self.invoke(n, built.module, args, kwargs, key)
        if n.target not in self.inst.first_out:
            self.inst.first_out[n.target] = self.value(n, out)
        return out

    def function(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        key = ("function", n.target)
        try:
            fn = function_by_qualname(n.target)
        except KeyError:
            raise SpecNameError(
                f"`{n.target}` is not a tensor operation a forward may call", loc(n.span)
            ) from None
        if "device" in kwargs:  # checking never leaves meta, whatever device is named
            kwargs = {**kwargs, "device": "meta"}
        elif self.record and n.target in FACTORIES:
            self.warnings.append(self.device_warning(n))
        # factories (zeros, arange...) make meta tensors too
        return self.invoke(n, meta_function(n.target, fn), args, kwargs, key, on_meta=True)

    def device_warning(self, n: ir.FNode) -> ir.CheckWarning:
        """A factory call without `device=` makes a CPU tensor wherever the model runs: it
        checks here (on meta) and fails on a GPU."""
        inputs = self.inst.mdef.forward.inputs if self.inst.mdef.forward else []
        source = inputs[0].name if inputs else "x"
        return ir.CheckWarning(
            message=f"`{self.ck.snippet(n.span)}` creates its tensor on the CPU whatever "
            "device the model runs on, so it fails on a GPU",
            span=n.span,
            hint=f"pass the device of an input: `device={source}.device`",
        )

    def method(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        in_place = n.target.endswith("_")  # not a pure function of its arguments: no memo
        key = None if in_place else ("method", n.target)
        recv = args[0]
        if getattr(first(recv), n.target, None) is None:
            raise SpecTypeError(f"{shape_text(recv)} has no method `{n.target}`", loc(n.span))
        return self.invoke(n, _method(n.target), args, kwargs, key)

    def operator(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        key = ("operator", n.target)
        fn = operator.neg if n.target == "neg" else BINOPS[n.target]
        explain = _cannot_combine(n.target)
        return self.invoke(n, meta_operator(n.target, fn), args, kwargs, key, explain=explain)

    def getitem(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        key = ("getitem", n.target)
        return self.invoke(n, operator.getitem, args, kwargs, key)

    def attribute(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        recv = args[0]
        try:
            return join([getattr(split(recv, i), n.target) for i in range(len(PROBES))])
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
        """`fn(*args, **kwargs)` at every probe batch size, or its memoized result under
        `key` + the arguments' signature (`key` None, or an argument the memo cannot
        describe: always run). A `paired` fn (a container, a sub-model) takes the probes
        whole."""
        if paired(fn):
            return self.call_once(n, fn, args, kwargs, None, on_meta, explain)
        if key is not None:
            key = (*key, sig(args), sig(kwargs))
            if None in key:
                key = None
        if key is not None and (hit := self.ck.cache.get(key)) is not None:
            return rebuild(hit)
        outs = [
            self.call_once(n, fn, split(args, i), split(kwargs, i), (args, i), on_meta, explain)
            for i in range(len(PROBES))
        ]
        out = join(outs)
        if key is not None and (described := describe(out)) is not None:
            self.ck.cache[key] = described
        return out

    def call_once(
        self,
        n: ir.FNode,
        fn: Any,
        args: Args,
        kwargs: Kwargs,
        probe: tuple[Args, int] | None,
        on_meta: bool,
        explain: Explain | None,
    ) -> Any:
        """One call; `probe` (the arguments at every probe, this probe's index) words the
        error when it fails."""
        try:
            if on_meta:
                with torch.device("meta"):
                    return fn(*args, **kwargs)
            return fn(*args, **kwargs)
        except SpecError:
            raise
        except Exception as exc:  # torch reports shape errors in many exception types
            all_args, i = probe if probe is not None else (args, 0)
            raise self.failure(n, all_args, i, exc, explain) from None

    def failure(
        self, n: ir.FNode, args: Args, probe: int, exc: Exception, explain: Explain | None
    ) -> SpecShapeError:
        """The failed call in spec terms; torch's own reason names this probe's sizes, so a
        call that failed at only some batch sizes says at which."""
        what = self.ck.snippet(n.span)
        reason = explain(what, args) if explain is not None else None
        if reason is not None:
            return SpecShapeError(reason, loc(n.span))
        shapes = ", ".join(shape_text(a) for a in args if _is_tensor(a))
        at = f" (at batch size {PROBES[probe]})" if probe else ""
        hint = None
        if probe:
            sizes = ", ".join(map(str, PROBES))
            hint = f"specc checks each forward at batch sizes {sizes}; this one fails at some"
        return SpecShapeError(
            f"`{what}` fails on input {shapes or 'values'}{at}: {first_line(exc)}",
            loc(n.span),
            hint=hint,
        )


def _same_items(new: Any, old: Any) -> bool:
    """Are the two sequences the same objects, item by item?"""
    return all(a is b for a, b in zip(new, old, strict=True))


def _is_tensor(v: Any) -> bool:
    return isinstance(first(v), torch.Tensor)


def _method(name: str) -> Callable[..., Any]:
    """Calls method `name` of its first argument (one probe's receiver)."""

    def call(recv: Any, *args: Any, **kwargs: Any) -> Any:
        return getattr(recv, name)(*args, **kwargs)

    return call


def _cannot_combine(op: str) -> Explain:
    """Why `a <op> b` fails for two tensors: their shapes, and the rule they break."""

    def explain(what: str, args: list[Any]) -> str | None:
        if len(args) != 2 or not all(_is_tensor(a) for a in args):
            return None
        a, b = args
        if op == "matmul":
            inner = (_dim(a, -1), _dim(b, -2 if first(b).dim() > 1 else -1))
            reason = f"inner dimensions {inner[0]} and {inner[1]} differ"
        else:
            reason = "the shapes do not broadcast"
        return (
            f"`{what}`: cannot combine {shape_text(a)} {BINOP_SYMBOLS[op]} "
            f"{shape_text(b)}: {reason}"
        )

    return explain


def _dim(t: Any, axis: int) -> str:
    """One dimension of a forward tensor as text (`10`, `2*B`)."""
    sizes = tuple(x.shape[axis] for x in t.items) if isinstance(t, Probes) else (t.shape[axis],)
    return dim_text(fit(sizes)) if len(sizes) == len(PROBES) else str(sizes[0])
