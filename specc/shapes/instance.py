"""One use of a model definition with bound parameters: its forward run on meta tensors
(`ShapeInterpreter`), its layers built at their first call (`LayerMaker`), and, after the
first run, the checked ``ir.ModelInstance`` assembled from both."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from specc import ir
from specc.errors import SpecShapeError, SpecTypeError
from specc.shapes.held import check_ties_and_inits, sub_warnings
from specc.shapes.inputs import bind_inputs
from specc.shapes.interpreter import ShapeInterpreter
from specc.shapes.layers import Built, LayerMaker
from specc.shapes.memo import describe, rebuild, sig
from specc.shapes.meta import MAX_PARAM_BYTES, bytes_text, value_of
from specc.values import loc, to_expr

if TYPE_CHECKING:
    from specc.shapes.check import Checker


class Instance:
    """One use of a model definition with bound parameters."""

    def __init__(self, ck: Checker, mdef: ir.ModelDef, args: dict[str, Any]) -> None:
        self.ck = ck
        self.mdef = mdef
        self.args = args
        self.decl = {layer.name: layer for layer in mdef.layers}
        self.built: dict[str, Built] = {}
        self.first_out: dict[str, ir.Value] = {}
        self.holes: dict[int, Any] = {}
        self.instance: ir.ModelInstance | None = None
        self.names: dict[str, Any] = dict(args)
        self.results: dict[Any, Any] = {}  # input signature -> described output
        self.layers = LayerMaker(self)

    def execute(self, inputs: list[Any], use_span: ir.Span | None = None) -> Any:
        """Run the forward on meta values; the first run records the checked instance."""
        fwd = self.mdef.forward
        assert fwd is not None
        record = self.instance is None
        key = sig(list(inputs)) if self.ck.pure(self.mdef.name) else None
        if not record and key is not None and key in self.results:
            return rebuild(self.results[key])
        if use_span is not None or not fwd.inputs:
            bind_inputs(self.mdef, self.args, self.names, inputs, use_span)
        run = ShapeInterpreter(self, record)
        result = run.run(fwd.nodes, inputs)
        if record:
            self.finish(inputs, run.resolved, run.values, run.outputs, run.warnings)
        if key is not None and (described := describe(result)) is not None:
            self.results[key] = described
        return result

    def layer(self, node: ir.FNode, args: list[Any]) -> Built:
        """The layer `node` calls, built from the input of its first call."""
        name = node.target
        if name not in self.built:
            layer = self.decl[name]
            self.built[name] = self.layers.make(layer.ctor, args, node.span, layer)
        built = self.built[name]
        if built.module is None:
            layer = self.decl[name]
            raise SpecTypeError(
                f"`{name}` is None in this use of `{self.mdef.name}` (its condition chose "
                "`None`), but forward calls it",
                loc(node.span),
                hint=f"call it only when it exists: `if {name} {{ ... }}`",
                notes=[("declared here", loc(layer.span))],
            )
        return built

    def present(self, name: str) -> bool:
        """Does layer `name` exist in this instance (a conditional may make it None)?"""
        return self.layers.present(self.decl[name].ctor)

    def held(self, node: ir.FNode) -> Any:
        """The meta value of the `Parameter`/`Buffer` a `get_attr` node reads."""
        name = node.target
        if name not in self.built:
            layer = self.decl[name]
            self.built[name] = self.layers.make(layer.ctor, None, node.span, layer)
        return self.built[name].module

    # ---- assembly ---------------------------------------------------------------------
    def finish(
        self,
        inputs: list[Any],
        nodes: list[ir.FNode],
        values: dict[str, ir.Value],
        outputs: list[Any],
        warnings: list[ir.CheckWarning] = (),  # type: ignore[assignment]
    ) -> None:
        """Record the checked instance: layers, folded nodes, values and parameter counts."""
        layers = self.layer_instances()
        held = check_ties_and_inits(self, layers)
        total = sum(x.params for x in layers) - held.shared_params
        if total * 4 > MAX_PARAM_BYTES:
            raise SpecShapeError(
                f"`{self.mdef.name}` would hold {total:,} parameters "
                f"(about {bytes_text(total * 4)} in float32)",
                loc(self.mdef.span),
                hint=f"specc refuses models over {bytes_text(MAX_PARAM_BYTES)} of parameters",
            )
        fwd = self.mdef.forward
        assert fwd is not None
        in_names = [i.name for i in fwd.inputs] or ["x"]
        self.instance = ir.ModelInstance(
            model=self.mdef.name,
            kind=self.mdef.kind,
            file=self.mdef.file,
            args={k: to_expr(v) for k, v in self.args.items()},
            inputs=[(n, value_of(t).tensor) for n, t in zip(in_names, inputs, strict=False)],
            layers=layers,
            nodes=nodes,
            values=values,
            outputs=[value_of(o) for o in outputs],
            holes={k: to_expr(v) for k, v in self.holes.items()},
            params=total,
            trainable=sum(x.trainable for x in layers) - held.shared_trainable,
            ties=held.ties,
            inits=held.inits,
            warnings=list(dict.fromkeys([*held.warnings, *warnings, *sub_warnings(layers)])),
        )

    def layer_instances(self) -> list[ir.LayerInstance]:
        """Every declared layer as checked; one forward never calls is built without an
        input (its holes then fail clearly)."""
        out = []
        for layer in self.mdef.layers:
            if layer.name not in self.built:
                self.built[layer.name] = self.layers.make(layer.ctor, None, None, layer)
            b = self.built[layer.name]
            out.append(
                ir.LayerInstance(
                    name=layer.name,
                    ctor=b.ctor,
                    type_name=b.type_name,
                    out=self.first_out.get(layer.name),
                    params=b.params,
                    trainable=b.params if b.trainable is None else b.trainable,
                    span=layer.span,
                )
            )
        return out
