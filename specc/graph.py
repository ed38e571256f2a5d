"""One forward graph, three readers: the base they share.

The shape checker (``specc.shapes.interpreter``), the fx builder (``specc.builder``) and
the source writer (``specc.codegen.models``) each turn the SSA nodes of a forward into
something: meta tensors, ``fx.Node``s, source expressions. ``GraphInterpreter.run_node``
dispatches on ``FNode.op`` to the method of that name, the way ``torch.fx.Interpreter``
does, so each reader is a subclass with one method per op kind (see ``ir.FOp``), as
``torch/fx/passes/shape_prop.py`` subclasses ``Interpreter``.

This module imports only the IR and ``specc.values``, so every stage may use it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any

from specc import ir
from specc.errors import SpecTypeError
from specc.values import evaluate, loc, truth

Args = list[Any]
Kwargs = dict[str, Any]


class GraphInterpreter:
    """Runs forward nodes in order. `env` maps each SSA name to its value; `names` are the
    constants an argument may mention (model parameters, named dimensions)."""

    def __init__(self, names: Mapping[str, Any] | None = None) -> None:
        self.env: dict[str, Any] = {}
        self.names: Mapping[str, Any] = {} if names is None else names
        self.inputs: Iterator[Any] = iter(())
        self.taken: dict[str, bool] = {}  # if node -> whether its condition held

    def run(self, nodes: Iterable[ir.FNode], inputs: Iterable[Any] = ()) -> Any:
        """Every node in order, skipping the part of each `if` block its condition rules
        out; the value of the `output` node."""
        self.inputs = iter(inputs)
        skipping: str | None = None  # the if block whose untaken part is being passed over
        for n in nodes:
            if skipping is not None:
                if n.target == skipping and n.op in ("else", "endif"):
                    skipping = None  # at "else" the untaken then-part ends
                continue
            if n.op == "if":
                self.taken[n.name] = self.condition(n)
                skipping = None if self.taken[n.name] else n.name
                continue
            if n.op in ("else", "endif"):
                if n.op == "else" and self.taken[n.target]:
                    skipping = n.target
                continue
            out = self.run_node(n)
            if n.op == "output":
                return out
            self.env[n.name] = out
        raise SpecTypeError("forward has no `return` statement")  # pragma: no cover

    def condition(self, n: ir.FNode) -> bool:
        """An if block's condition, decided now: a constant, never a tensor."""
        return truth(self.expr(n.args[0]), n.args[0])

    def run_node(self, n: ir.FNode) -> Any:
        if n.op == "phi":  # only the branch that ran has a value
            chosen = n.args[0] if self.taken[n.target] else n.args[1]
            return self.phi(n, [self.expr(chosen)], {})
        args, kwargs = self.fetch_args(n)
        return getattr(self, n.op)(n, args, kwargs)

    def fetch_args(self, n: ir.FNode) -> tuple[Args, Kwargs]:
        """The node's arguments as values of this interpreter."""
        return [self.expr(a) for a in n.args], {k: self.expr(v) for k, v in n.kwargs.items()}

    def expr(self, e: ir.Expr) -> Any:
        """A constant expression's value, forward values (`Ref`) looked up by `ref`."""
        return evaluate(e, self.names, on_other=self._other)

    def _other(self, e: ir.Expr) -> Any:
        if isinstance(e, ir.Ref):
            return self.ref(e)
        if isinstance(e, ir.Name):
            return self.layer_present(e)
        raise SpecTypeError("unexpected expression here", loc(getattr(e, "span", None)))

    def ref(self, r: ir.Ref) -> Any:
        """The value of `r`: a node's value, or one element of it when it is unpacked."""
        value = self.env[r.node]
        return value if r.index is None else value[r.index]

    # ---- one method per op kind (ir.FOp); a reader overrides those it meets -------------
    def input(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return next(self.inputs)

    def layer(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.unsupported(n)

    def function(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.unsupported(n)

    def method(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.unsupported(n)

    def operator(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.unsupported(n)

    def getitem(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.unsupported(n)

    def attribute(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.unsupported(n)

    def alias(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return args[0]

    def phi(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        """After an if block: the value from the branch that ran (`args` holds only it)."""
        return args[0]

    def layer_present(self, e: ir.Name) -> bool:
        """`if downsample`: does the layer exist (a conditional layer may be `None`)?"""
        raise SpecTypeError(f"unknown name `{e.id}`", loc(e.span))  # pragma: no cover

    def get_attr(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.unsupported(n)

    def output(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return args[0] if len(args) == 1 else tuple(args)

    def call(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.unsupported(n)  # unresolved: `passes.resolve_names` leaves none

    def unsupported(self, n: ir.FNode) -> Any:  # pragma: no cover - resolve_names' job
        raise SpecTypeError(f"cannot evaluate `{n.op}` node `{n.target}`", loc(n.span))
