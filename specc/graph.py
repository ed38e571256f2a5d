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

from collections import Counter
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


# ---- the last position only ------------------------------------------------------------

# Classes that map each position on its own (over the last dim): run at the last position
# only, they give that position's values. A norm qualifies when it normalises one dim.
_PER_POSITION = frozenset(
    f"torch.nn.{c}" for c in ("Linear", "Dropout", "Identity", "GELU", "ReLU", "SiLU", "Tanh")
)
_NORMS = frozenset(("torch.nn.LayerNorm", "torch.nn.RMSNorm"))


def per_position_layers(layers: Iterable[ir.LayerInstance]) -> set[str]:
    """The layers of an instance that act on each position alone."""
    return {layer.name for layer in layers if _per_position(layer.ctor)}


def _per_position(c: ir.Ctor | None) -> bool:
    if not isinstance(c, ir.TorchCtor):
        return False
    if c.cls in _NORMS:
        shape = c.args[0] if c.args else c.kwargs.get("normalized_shape")
        return isinstance(shape, ir.Const) and isinstance(shape.value, int)
    return c.cls in _PER_POSITION


_LAST = ir.TupleExpr(items=[ir.SliceExpr(), ir.SliceExpr(start=ir.Const(value=-1))])


def last_position(nodes: list[ir.FNode], per_position: set[str]) -> list[ir.FNode] | None:
    """A language model's forward (`[B, T]` ids -> `[B, T, V]` logits) with the layers that
    end it, when they act on each position alone (the vocabulary head, the norm before it),
    applied to the last position only: `[B, 1, V]`, all that sampling reads. nanoGPT's
    forward does the same without targets. None when the forward does not end that way."""
    by_name = {n.name: n for n in nodes}
    out = next(n for n in nodes if n.op == "output")
    ret = out.args[0] if len(out.args) == 1 else None
    if not isinstance(ret, ir.Ref) or ret.index is not None:
        return None
    uses = Counter(
        r.node for n in nodes for e in [*n.args, *n.kwargs.values()] for r in e.find_all(ir.Ref)
    )
    chain: list[ir.FNode] = []  # the per-position layers the output comes from, last first
    node = by_name[ret.node]
    while node.op == "layer" and node.target in per_position and len(node.args) == 1:
        if chain and uses[node.name] != 1:  # its value is read elsewhere too: keep it whole
            break
        chain.append(node)
        arg = node.args[0]
        if not isinstance(arg, ir.Ref) or arg.index is not None:
            break
        node = by_name[arg.node]
    if not chain:
        return None
    first = chain[-1]
    name = f"{first.name}_last"
    while name in by_name:
        name += "_"
    cut = ir.FNode(name=name, op="getitem", args=[first.args[0], _LAST], span=first.span)
    fed = first.model_copy(update={"args": [ir.Ref(node=name)]})
    at = nodes.index(first)
    return [*nodes[:at], cut, fed, *nodes[at + 1 :]]
