"""Stage 3b: shape inference. IR Program -> checked ``ModelInstance``.

Every layer is constructed on the ``meta`` device and every forward step runs on meta
tensors: real torch semantics, no real allocation, so a 20-billion-parameter model checks
in milliseconds. `_` arguments are filled from the shape a layer actually receives, at its
first call. Torch's own errors are caught here and reported at the spec line that caused
them.
"""

from __future__ import annotations

from typing import Any

from specc import ir
from specc.errors import SpecError, did_you_mean
from specc.lang.loader import source_texts
from specc.registry import Registry
from specc.shapes.inputs import bind_model_args, declared_inputs
from specc.shapes.instance import Instance
from specc.shapes.memo import sig


class Checker:
    """Checks models of one program; sub-model instances are checked at each use."""

    def __init__(self, program: ir.Program, registry: Registry) -> None:
        self.program = program
        self.reg = registry
        self.texts = source_texts(program)
        self.depth = 0
        # Meta ops run through Python decompositions (~1 ms each); the same op on the same
        # shapes gives the same result, so repeated blocks are inferred once (shapes.memo).
        self.cache: dict[Any, Any] = {}
        # A torch layer as its class and arguments make it (`layers._config_key`): a meta
        # module, its parameter count and what checks it, shared by the layers built alike.
        self.torch_layers: dict[str, Any] = {}
        # A model used with the same arguments on the same input shapes checks the same way:
        # its instance is checked once and shared (n models each using the previous one
        # twice would otherwise make 2**n instances).
        self.instances: dict[Any, Instance] = {}
        self._pure: dict[str, bool] = {}

    def pure(self, name: str) -> bool:
        """Does model `name` leave its inputs alone (no in-place calls, its own or in the
        models it uses)? Only then can its outputs be reused for the same input shapes."""
        if name not in self._pure:
            self._pure[name] = True  # a model that uses itself fails elsewhere
            mdef = self.program.model(name)
            nodes = mdef.forward.nodes if mdef is not None and mdef.forward else []
            # The other models it uses as layers (none to look for in a one-model spec).
            others = {m.name for m in self.program.models} - {name}
            layers = mdef.layers if mdef and others else []
            used = [c.func for layer in layers for c in layer.ctor.find_all(ir.Call)]
            self._pure[name] = not any(
                n.op in ("method", "function") and n.target.endswith("_") for n in nodes
            ) and all(self.pure(c) for c in used if c in others)
        return self._pure[name]

    def close(self) -> None:
        """Forget the sub-model instances checked: each refers back to this checker, so
        kept, they would leave the whole check to the garbage collector once it returns."""
        self.instances.clear()

    def snippet(self, span: ir.Span | None) -> str:
        if span is None:
            return "?"
        lines = self.texts.get(span.file, "").split("\n")
        if span.line != span.end_line or not (0 < span.line <= len(lines)):
            return lines[span.line - 1].strip() if 0 < span.line <= len(lines) else "?"
        return lines[span.line - 1][span.column - 1 : span.end_column - 1]

    def use(
        self,
        mdef: ir.ModelDef,
        args: dict[str, Any],
        incoming: list[Any],
        use_span: ir.Span | None,
    ) -> Instance:
        """Model `mdef` used as a layer with `args` on `incoming`: checked at its first such
        use, and shared by the uses after it."""
        key = (mdef.name, sig(args), sig(list(incoming)))
        child = self.instances.get(key) if None not in key else None
        if child is None:
            child = Instance(self, mdef, args)
            self.depth += 1
            try:
                child.execute(incoming, use_span)
            finally:
                self.depth -= 1
            if None not in key:
                self.instances[key] = child
        return child


def default_model(program: ir.Program) -> ir.ModelDef:
    """The model `build`/`check` use when none is named: the train block's model, else the
    last model of the root file."""
    from specc.errors import Location, SpecNameError

    for t in program.trains:
        for f in t.fields:
            if f.key == "model" and isinstance(f.value, ir.Call):
                m = program.model(f.value.func)
                if m is not None:
                    return m
    root = program.sources[0].path
    own = [m for m in program.models if m.file == root] or program.models
    if not own:
        # Located like any other spec mistake, at the top of the file that lacks it.
        src = program.sources[0]
        raise SpecNameError(
            "the spec defines no model",
            Location(src.path, 1, 1),
            hint="declare one with `model Name { ... forward(x: [...]) { ... } }`",
            source=src.text,
        )
    return own[-1]


def check_model(
    program: ir.Program,
    name: str | None = None,
    *,
    inputs: dict[str, list[int]] | None = None,
    args: dict[str, Any] | None = None,
) -> ir.ModelInstance:
    """Shape-check one model of a program on meta tensors."""
    from specc.errors import UsageError
    from specc.lang.passes import _registry

    texts = source_texts(program)
    try:
        mdef = program.model(name) if name else default_model(program)
        if mdef is None:
            raise UsageError(
                f"no model named `{name}` in the spec",
                hint=did_you_mean(name or "", [m.name for m in program.models]),
            )
        ck = Checker(program, _registry(program))
        try:
            bound = bind_model_args(mdef, [], args or {}, mdef.span)
            inst = Instance(ck, mdef, bound)
            inst.execute(declared_inputs(mdef, bound, inputs))
            assert inst.instance is not None
            return inst.instance
        finally:
            ck.close()
    except SpecError as err:
        raise err.with_source(texts) from None


def standalone(mdef: ir.ModelDef) -> bool:
    """Can this model be checked on its own (all parameters defaulted, sizes known)?"""
    if any(p.default is None for p in mdef.params):
        return False
    if mdef.forward is None or not mdef.forward.inputs:
        return False
    params = {p.name for p in mdef.params}
    return all(
        isinstance(d.value, int) or d.value in params for i in mdef.forward.inputs for d in i.shape
    )
