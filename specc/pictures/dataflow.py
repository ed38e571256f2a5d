"""A checked model instance as a Graphviz dataflow graph (`specc graph`).

`Dataflow` is one more reader of the forward graph (``specc.graph.GraphInterpreter``): its
values are `Flow`s, the drawn node that makes a value and what the checker recorded for
it. It reads the instance's folded nodes, so every label is the checker's: `_` shows its
resolved value and each edge the shape found for it, for every batch size. Only the taken
branch of each static `if` is among those nodes. Sizes and constants (`x.shape[1]`) are
not drawn; the ops that use them show their value. A submodel called once is a cluster of
its own nodes (`depth` levels deep); `repeat(n, X)` is one node, `X ×n`.
"""

from __future__ import annotations

import textwrap
from collections import Counter
from dataclasses import dataclass
from typing import Any

from specc import ir
from specc.graph import Args, GraphInterpreter, Kwargs
from specc.pictures.extras import require
from specc.shapes.meta import dim_text, value_text
from specc.shapes.report import ctor_text, tensor_text
from specc.values import BINOP_SYMBOLS, literal

# How each kind of node looks: layers are boxes, ops are ovals, the data is orange.
STYLES: dict[str, dict[str, str]] = {
    "layer": {"shape": "box", "style": "rounded,filled", "fillcolor": "#dbe9f6"},
    "repeat": {"shape": "box", "style": "rounded,filled", "fillcolor": "#c6dbef",
               "peripheries": "2"},
    "model": {"shape": "box", "style": "rounded,filled", "fillcolor": "#e5f5e0"},
    "op": {"shape": "box", "style": "rounded", "color": "#888888"},
    "operator": {"shape": "circle", "width": "0.3", "fixedsize": "false", "color": "#888888"},
    "held": {"shape": "note", "style": "filled", "fillcolor": "#fff7bc"},
    "io": {"shape": "box", "style": "filled", "fillcolor": "#fdd0a2"},
}  # fmt: skip
GRAPH_ATTRS = {"rankdir": "TB", "fontname": "Helvetica", "fontsize": "12", "labelloc": "t",
               "nodesep": "0.3", "ranksep": "0.3"}  # fmt: skip
NODE_ATTRS = {"fontname": "Helvetica", "fontsize": "10", "margin": "0.08,0.03", "height": "0.3"}
EDGE_ATTRS = {"fontname": "Helvetica", "fontsize": "8", "fontcolor": "#555555",
              "color": "#666666", "arrowsize": "0.6"}  # fmt: skip
WRAP = 44  # characters per label line
SEQUENTIAL_LINES = 6  # a Sequential's entries shown before "... n more"


@dataclass(frozen=True)
class Flow:
    """A forward value on the picture. `node`: the drawn node that makes it (None: a size
    or a constant, not drawn); `text`: how an op's label shows it as an argument."""

    node: str | None
    value: ir.Value
    text: str = "·"


class Drawing:
    """The graph being drawn. Nodes go into the (sub)graph of their model and edges into
    the root at the end: an edge written inside a cluster would pull the node it comes
    from into that cluster."""

    def __init__(self, graphviz: Any, title: str) -> None:
        self.root = graphviz.Digraph(
            "dataflow",
            graph_attr={**GRAPH_ATTRS, "label": label(title)},
            node_attr=NODE_ATTRS,
            edge_attr=EDGE_ATTRS,
        )
        self.edges: list[tuple[str, str, str]] = []

    def source(self) -> str:
        for tail, head, text in self.edges:
            self.root.edge(tail, head, label=label(text))
        self.edges = []
        return self.root.source


def label(*lines: str) -> str:
    """Lines as one DOT label: backslashes kept literal, lines centred (`\\n`)."""
    return "\\n".join(line.replace("\\", "\\\\") for line in lines)


def wrapped(text: str, width: int = WRAP) -> list[str]:
    return textwrap.wrap(text, width, break_long_words=False, break_on_hyphens=False) or [""]


class Dataflow(GraphInterpreter):
    """Draws one instance's forward into `graph`, its node ids prefixed with `prefix`.
    `depth`: how many more levels of submodels become clusters (None: all)."""

    def __init__(self, drawing: Drawing, inst: ir.ModelInstance, graph: Any,
                 prefix: str = "", depth: int | None = None, top: bool = True) -> None:  # fmt: skip
        super().__init__()
        self.drawing = drawing
        self.inst = inst
        self.graph = graph
        self.prefix = prefix
        self.depth = depth
        self.top = top  # the top model draws its inputs and outputs; a cluster is wired in
        self.layers = {layer.name: layer for layer in inst.layers}
        self.calls = Counter(n.target for n in inst.nodes if n.op == "layer")

    # ---- values ---------------------------------------------------------------------
    def run_node(self, n: ir.FNode) -> Any:
        value = self.inst.values.get(n.name)
        drawn_always = ("input", "layer", "output", "alias")
        if n.op not in drawn_always and value is not None and not holds_tensor(value):
            return Flow(None, value, constant_text(value, self.spelled(n)))
        return super().run_node(n)

    def spelled(self, n: ir.FNode) -> str:
        """How a value that is not a number is named in a label: its spec variable, or
        `idx.device` for an attribute of one."""
        if n.vars:
            return n.vars[0]
        receiver = n.args[0] if n.args else None
        if n.op == "attribute" and isinstance(receiver, ir.Ref):
            owner = self.by_name.get(receiver.node)
            return f"{owner.vars[0] if owner and owner.vars else receiver.node}.{n.target}"
        return n.name

    def run(self, nodes: Any, inputs: Any = ()) -> Any:
        nodes = list(nodes)
        self.by_name = {n.name: n for n in nodes}
        return super().run(nodes, inputs)

    def fetch_args(self, n: ir.FNode) -> tuple[Args, Kwargs]:
        """The arguments as the node's label shows them: the label is this reader's value."""
        return [self.text(a) for a in n.args], {k: self.text(v) for k, v in n.kwargs.items()}

    def ref(self, r: ir.Ref) -> Any:
        value = self.env[r.node]
        if r.index is None:
            return value
        if isinstance(value, tuple):  # a submodel's several outputs
            return value[r.index]
        item = value.value.items[r.index]
        if value.node is not None:
            return Flow(value.node, item)
        return Flow(None, item, constant_text(item, f"{value.text}[{r.index}]"))

    def text(self, e: ir.Expr) -> str:
        """An argument as written in a label, forward values as their `Flow.text`."""
        if isinstance(e, ir.Ref):
            flow = self.ref(e)
            return flow.text if isinstance(flow, Flow) else "·"
        if isinstance(e, (ir.ListExpr, ir.TupleExpr)):
            inner = ", ".join(self.text(i) for i in e.items)
            return f"[{inner}]" if isinstance(e, ir.ListExpr) else f"({inner})"
        if isinstance(e, ir.SliceExpr):
            parts = [self.text(p) if p is not None else "" for p in (e.start, e.stop, e.step)]
            return ":".join(parts if parts[2] else parts[:2])
        if isinstance(e, ir.Ellipsis_):
            return "..."
        if isinstance(e, ir.Neg):
            return f"-{self.text(e.operand)}"
        if isinstance(e, ir.BinOp):
            return f"{self.text(e.left)} {BINOP_SYMBOLS[e.op]} {self.text(e.right)}"
        try:
            return repr(literal(e))
        except Exception:  # an expression kind a folded forward does not hold
            return "…"

    # ---- drawing ---------------------------------------------------------------------
    def draw(self, n: ir.FNode, lines: list[str], style: str) -> Flow:
        """A node for `n`, with an edge from every drawn value its arguments read."""
        node = self.prefix + n.name
        self.graph.node(node, label(*lines), **STYLES[style])
        for arg in [*n.args, *n.kwargs.values()]:
            for r in arg.find_all(ir.Ref):
                flow = self.ref(r)
                for f in flow if isinstance(flow, tuple) else (flow,):
                    if f.node is not None:
                        self.drawing.edges.append((f.node, node, value_text(f.value)))
        return Flow(node, self.inst.values[n.name])

    # ---- one method per op kind ------------------------------------------------------
    def input(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        if not self.top:
            return next(self.inputs)
        tensor = self.inst.values[n.name].tensor
        dtype = f" ({tensor.dtype})" if tensor is not None and tensor.dtype != "float32" else ""
        return self.draw(n, [f"input {n.target}{dtype}"], "io")

    def output(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        flows = [self.ref(a) if isinstance(a, ir.Ref) else None for a in n.args]
        if not self.top:
            return flows[0] if len(flows) == 1 else tuple(flows)
        node = self.prefix + "return"  # no SSA name: `return` is a keyword
        self.graph.node(node, label("output"), **STYLES["io"])
        for f in flows:
            if isinstance(f, Flow) and f.node is not None:
                self.drawing.edges.append((f.node, node, value_text(f.value)))
        return flows

    def alias(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.ref(n.args[0]) if isinstance(n.args[0], ir.Ref) else Flow(None, ir.Value(
            kind="const", const=args[0]), args[0])  # fmt: skip

    def layer(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        ctor = present(self.layers[n.target].ctor)
        if isinstance(ctor, ir.ModelCtor) and self.expands(n, ctor.instance):
            return self.cluster(n, ctor)
        style = {ir.RepeatCtor: "repeat", ir.ModelCtor: "model"}.get(type(ctor), "layer")
        return self.draw(n, layer_lines(n.target, ctor), style)

    def function(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        name = n.target.rsplit(".", 1)[-1]
        return self.draw(n, wrapped(f"{name}({call_args(args, kwargs)})"), "op")

    def method(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.draw(n, wrapped(f".{n.target}({call_args(args[1:], kwargs)})"), "op")

    def operator(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        symbol = "-" if n.target == "neg" else BINOP_SYMBOLS.get(n.target, n.target)
        return self.draw(n, [symbol], "operator")

    def getitem(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        index = n.args[1]
        parts = index.items if isinstance(index, ir.TupleExpr) else [index]
        return self.draw(n, [f"[{', '.join(self.text(p) for p in parts)}]"], "op")

    def attribute(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        return self.draw(n, [f".{n.target}"], "op")

    def get_attr(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Any:
        ctor = self.layers[n.target].ctor
        kind = tensor_text(ctor) if isinstance(ctor, ir.TensorCtor) else ctor_text(ctor)
        return self.draw(n, [n.target, kind], "held")

    # ---- submodels -------------------------------------------------------------------
    def expands(self, n: ir.FNode, inst: ir.ModelInstance) -> bool:
        """Is this call drawn as a cluster? Only a submodel called once (the instance holds
        the shapes of its first call), with tensors for its inputs, within `depth`."""
        inputs = [x for x in inst.nodes if x.op == "input"]
        return (
            (self.depth is None or self.depth > 0)
            and self.calls[n.target] == 1
            and not n.kwargs
            and len(n.args) == len(inputs)
            and all(isinstance(a, ir.Ref) for a in n.args)
        )

    def cluster(self, n: ir.FNode, ctor: ir.ModelCtor) -> Any:
        incoming = [self.ref(a) for a in n.args]
        depth = None if self.depth is None else self.depth - 1
        with self.graph.subgraph(name=f"cluster_{self.prefix}{n.name}") as sub:
            title = wrapped(f"{n.target}: {ctor_text(ctor)}", 2 * WRAP)
            sub.attr(label=label(*title), style="rounded,dashed",
                     color="#74a9cf", fontsize="10")  # fmt: skip
            inner = Dataflow(self.drawing, ctor.instance, sub, f"{self.prefix}{n.name}.",
                             depth, top=False)  # fmt: skip
            return inner.run(ctor.instance.nodes, incoming)


def present(ctor: Any) -> Any:
    """The constructor a conditional layer took."""
    return present(ctor.ctor) if isinstance(ctor, ir.CondCtor) else ctor


def holds_tensor(v: ir.Value) -> bool:
    return v.kind == "tensor" or any(holds_tensor(i) for i in v.items)


def constant_text(v: ir.Value, fallback: str) -> str:
    """A value that is not drawn, as an argument shows it: a size (`B`), a number, else
    `fallback` (the name it has in the spec)."""
    if v.kind == "size" and v.size is not None:
        return dim_text(v.size)
    if v.kind == "const" and isinstance(v.const, (int, float, bool, type(None))):
        return repr(v.const)
    return fallback


def call_args(args: Args, kwargs: Kwargs) -> str:
    return ", ".join([*args, *(f"{k}={v}" for k, v in kwargs.items())])


def layer_lines(name: str, ctor: Any) -> list[str]:
    """A layer's label: its name, then its constructor with every `_` resolved; a repeat
    as `X ×n`, a Sequential one entry a line."""
    if isinstance(ctor, ir.RepeatCtor):
        item = present(ctor.items[0])
        if isinstance(item, ir.ModelCtor):
            args = ", ".join(f"{k}={literal(v)!r}" for k, v in item.instance.args.items())
            return [name, f"{item.instance.model} ×{ctor.count}", *wrapped(args)]
        return [name, *wrapped(f"{ctor_text(item)} ×{ctor.count}")]
    if isinstance(ctor, ir.SequentialCtor):
        items = [ctor_text(i) for i in ctor.items]
        more = len(items) - SEQUENTIAL_LINES
        shown = items if more <= 1 else [*items[: SEQUENTIAL_LINES - 1], f"... {more + 1} more"]
        return [name, *shown]
    return [name, *wrapped(ctor_text(ctor))]


def dataflow_dot(inst: ir.ModelInstance, depth: int | None = None) -> str:
    """The DOT text of `inst`'s dataflow (needs the `graph` extra: the graphviz package)."""
    graphviz = require("graphviz", "graph", "graph")
    inputs = ", ".join(f"{name}: {value_text(ir.Value(kind='tensor', tensor=t))}"
                       for name, t in inst.inputs)  # fmt: skip
    drawing = Drawing(graphviz, f"{inst.model}  ({inputs})  {inst.params:,} parameters")
    Dataflow(drawing, inst, drawing.root, depth=depth).run(inst.nodes)
    return drawing.source()
