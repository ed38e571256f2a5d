"""Stage 3a: IR -> IR passes that need no shapes. Each is a plain function of one model;
`MODEL_PASSES` run in order on each model. Errors are collected (up to a cap) so one run
reports several mistakes, and a model's mistakes do not keep the others from the passes."""

from __future__ import annotations

from collections.abc import Callable

from specc import ir
from specc.errors import MAX_ERRORS, SpecError, SpecNameError, SpecTypeError, did_you_mean, together
from specc.registry import TENSOR_CTORS, Registry, init_functions, nn_classes, tensor_methods
from specc.values import CONST_FUNCTIONS, PARAM_TYPES, is_none, loc

_LITERALS = ("True", "False", "None")


class _Errors:
    def __init__(self) -> None:
        self.items: list[SpecError] = []

    def add(self, err: SpecError) -> None:
        if len(self.items) < MAX_ERRORS:
            self.items.append(err)


def _registry(program: ir.Program) -> Registry:
    from specc.lang.plugins import load_plugins

    return Registry({m.name for m in program.models}, load_plugins(program))


def check_param_types(m: ir.ModelDef, reg: Registry, errors: _Errors) -> ir.ModelDef:
    for p in m.params:
        if p.type is not None and p.type not in PARAM_TYPES:
            errors.add(
                SpecTypeError(
                    f"unknown parameter type `{p.type}`",
                    loc(p.span),
                    hint=did_you_mean(p.type, PARAM_TYPES)
                    or f"use one of {', '.join(PARAM_TYPES)}",
                )
            )
    return m


def resolve_names(m: ir.ModelDef, reg: Registry, errors: _Errors) -> ir.ModelDef:
    """Classify forward calls as layer or function calls and check every name exists."""
    params = {p.name for p in m.params}
    layer_names = {layer.name for layer in m.layers if not is_tensor_decl(layer)}
    for layer in m.layers:
        if not is_tensor_decl(layer):  # Parameter/Buffer: `check_model_tensors`
            _check_ctor(layer.ctor, reg, params, errors)
    if m.forward is None:
        errors.add(
            SpecTypeError(
                f"model `{m.name}` has no forward block",
                loc(m.span),
                hint="add `forward(x: [...]) { ... return ... }`",
            )
        )
        return m
    dims = {d.value for i in m.forward.inputs for d in i.shape if isinstance(d.value, str)}
    # The names a node's arguments may read and the layer names they may not; in an `if`
    # condition a layer's name asks whether the layer exists (`if downsample { ... }`).
    # Built once per model: per node, the set difference made this pass grow with the
    # square of the layer count (5.8 s of a 10,000-layer check).
    outside = params | dims
    scopes = {False: (outside, layer_names - outside), True: (outside | layer_names, set())}
    nodes = []
    for n in m.forward.nodes:
        if n.op == "call":
            n = _resolve_call(n, layer_names, reg, errors)
        elif n.op == "method" and n.target not in tensor_methods():
            errors.add(
                SpecNameError(
                    f"tensors have no method `{n.target}`",
                    loc(n.span),
                    hint=did_you_mean(n.target, tensor_methods()),
                )
            )
        names, layers = scopes[n.op == "if"]
        for arg in [*n.args, *n.kwargs.values()]:
            _check_forward_expr(arg, names, layers, errors)
        nodes.append(n)
    return m.model_copy(update={"forward": m.forward.model_copy(update={"nodes": nodes})})


def _resolve_call(n: ir.FNode, layer_names: set[str], reg: Registry, errors: _Errors) -> ir.FNode:
    """A forward's call `name(...)` as a layer call or a function call, else a mistake."""
    if n.target in layer_names:
        return n.model_copy(update={"op": "layer"})
    if (fn := reg.function(n.target)) is not None:
        return n.model_copy(update={"op": "function", "target": fn[0]})
    if (why := reg.function_refusal(n.target)) is not None:
        errors.add(
            SpecNameError(
                f"`{n.target}` cannot be called in a forward: {why}",
                loc(n.span),
                hint="a forward may only compute on tensors (torch and "
                "torch.nn.functional operations such as relu, cat, zeros)",
            )
        )
        return n
    hint = did_you_mean(n.target, [*layer_names, *reg.function_names()])
    if hint is None and reg.layer(n.target) is not None:
        hint = (
            f"`{n.target}` is a layer type: declare it first "
            f"(`name = {n.target}(...)`) and call it by name"
        )
    errors.add(SpecNameError(f"unknown layer or function `{n.target}`", loc(n.span), hint=hint))
    return n


def _check_ctor(e: ir.Expr, reg, params: set[str], errors: _Errors) -> None:
    """A layer expression: a constructor call, a model parameter, or a conditional of two
    (one may be `None`: the layer is then absent)."""
    if isinstance(e, ir.IfExp):
        _check_value(e.test, params, errors)
        for branch in (e.body, e.orelse):
            if not is_none(branch):
                _check_ctor(branch, reg, params, errors)
    elif isinstance(e, ir.Call):
        if reg.layer(e.func) is None:
            errors.add(
                SpecNameError(
                    f"unknown layer type `{e.func}`",
                    loc(e.func_span or e.span),
                    hint=_tensor_hint(e.func) or did_you_mean(e.func, reg.layer_names()),
                )
            )
        if e.func == "Sequential":
            for a in [*e.args, *e.kwargs.values()]:
                _check_ctor(a.value if isinstance(a, ir.Starred) else a, reg, params, errors)
            return
        for i, a in enumerate(e.args):
            if e.func == "repeat" and i == 1 and isinstance(a, ir.Lambda):
                _check_ctor(a.body, reg, params | {a.param}, errors)
            elif e.func == "repeat" and i == 1:
                _check_ctor(a, reg, params, errors)
            else:
                _check_value(a, params, errors)
        for v in e.kwargs.values():
            _check_value(v, params, errors)
    elif isinstance(e, ir.Name) and e.id in params:
        return
    else:
        errors.add(
            SpecTypeError(
                "a layer must be a constructor call like `Linear(64, 10)`",
                loc(getattr(e, "span", None)),
            )
        )


def _check_value(e: ir.Expr, params: set[str], errors: _Errors) -> None:
    if isinstance(e, ir.Name):
        if e.id not in params:
            errors.add(
                SpecNameError(
                    f"unknown name `{e.id}`",
                    loc(e.span),
                    hint=did_you_mean(e.id, [*params, *_LITERALS]),
                )
            )
    elif isinstance(e, ir.Call) and e.func in CONST_FUNCTIONS and not e.kwargs:
        pass  # `len(widths)`, `sqrt(d)`: arithmetic on constants
    elif isinstance(e, (ir.Lambda, ir.Starred)):
        errors.add(
            SpecTypeError(
                "`->` and `*` are only allowed in `repeat(n, i -> ...)` and `Sequential(...)`",
                loc(e.span),
            )
        )
        return
    elif isinstance(e, ir.CALL_LIKE) and not isinstance(e, ir.Index):
        errors.add(
            SpecTypeError(
                "a call is not allowed in a layer argument",
                loc(e.span),
                hint="layer arguments are constants, model parameters, arithmetic, "
                f"comparisons, `a if c else b`, indexing and {', '.join(CONST_FUNCTIONS)}",
            )
        )
        return
    for child in e.children():
        _check_value(child, params, errors)


def _check_forward_expr(e: ir.Expr, names: set[str], layers: set[str], errors: _Errors) -> None:
    if isinstance(e, ir.Name):
        if e.id in layers:
            errors.add(SpecTypeError(f"layer `{e.id}` must be called: `{e.id}(x)`", loc(e.span)))
        elif e.id not in names:
            errors.add(
                SpecNameError(
                    f"unknown name `{e.id}`",
                    loc(e.span),
                    hint=did_you_mean(e.id, [*names, *layers, *_LITERALS]),
                )
            )
    elif isinstance(e, ir.Hole):
        errors.add(SpecTypeError("`_` can only stand for a layer argument", loc(e.span)))
    elif isinstance(e, (ir.Lambda, ir.Starred)):
        errors.add(
            SpecTypeError(
                "`->` and `*` are only allowed in `repeat(n, i -> ...)` and `Sequential(...)`",
                loc(e.span),
            )
        )
    for child in e.children():
        _check_forward_expr(child, names, layers, errors)


# ---- tensors a model holds, ties and init rules ------------------------------------------


def _tensor_hint(func: str) -> str | None:
    if func not in TENSOR_CTORS:
        return None
    return f"a {func} is a declaration of its own: `name = {func}(zeros(4))`, read by name"


def is_tensor_decl(layer: ir.Layer) -> bool:
    """Is `layer` a `Parameter(...)`/`Buffer(...)` declaration rather than a module?"""
    return isinstance(layer.ctor, ir.Call) and layer.ctor.func in TENSOR_CTORS


def check_model_tensors(m: ir.ModelDef, reg: Registry, errors: _Errors) -> ir.ModelDef:
    """Check `Parameter(...)`/`Buffer(...)` declarations and `init` rules, and turn a
    forward's reads of a declared tensor into `get_attr` nodes."""
    params = {p.name for p in m.params}
    for layer in m.layers:
        if is_tensor_decl(layer):
            _check_tensor_decl(m, layer, reg, params, errors)
    for rule in m.inits:
        _check_init_rule(rule, params, errors)
    tensors = {layer.name for layer in m.layers if is_tensor_decl(layer)}
    if not tensors or m.forward is None:
        return m
    nodes = _TensorReads(tensors, m.forward.nodes, errors).rewrite()
    return m.model_copy(update={"forward": m.forward.model_copy(update={"nodes": nodes})})


def _check_tensor_decl(
    m: ir.ModelDef, layer: ir.Layer, reg, params: set[str], errors: _Errors
) -> None:
    call = layer.ctor
    assert isinstance(call, ir.Call)
    example = f"`{layer.name} = {call.func}(zeros(4, 16))`"
    if m.kind == "sequential":
        errors.add(
            SpecTypeError(
                f"a `sequential` model holds only layers, not a {call.func}",
                loc(call.span),
                hint="declare it in a `model` block and read it in forward",
            )
        )
        return
    if len(call.args) != 1:
        errors.add(
            SpecTypeError(
                f"{call.func} takes one tensor expression, got {len(call.args)} arguments",
                loc(call.span),
                hint=f"for example {example}",
            )
        )
    keyword = TENSOR_CTORS[call.func]
    for k, v in call.kwargs.items():
        if k != keyword:
            errors.add(
                SpecTypeError(
                    f"{call.func} has no option `{k}`",
                    loc(v.span),
                    hint=did_you_mean(k, [keyword]) or f"its only option is `{keyword}=`",
                )
            )
        elif not (isinstance(v, ir.Const) and isinstance(v.value, bool)):
            errors.add(SpecTypeError(f"`{k}` must be True or False", loc(v.span)))
    for a in call.args:
        _check_tensor_expr(a, reg, params, errors)


def _check_tensor_expr(e: ir.Expr, reg, params: set[str], errors: _Errors) -> None:
    """A tensor expression: torch functions and tensor methods over constants and model
    parameters (no forward values, no `_`)."""
    if isinstance(e, ir.Name) and e.id not in params:
        errors.add(
            SpecNameError(
                f"unknown name `{e.id}`",
                loc(e.span),
                hint=did_you_mean(e.id, [*params, *_LITERALS])
                or "a Parameter or Buffer is computed from constants and model parameters",
            )
        )
    elif isinstance(e, ir.Hole):
        errors.add(SpecTypeError("`_` can only stand for a layer argument", loc(e.span)))
    elif isinstance(e, ir.Call) and reg.function(e.func) is None:
        why = reg.function_refusal(e.func)
        message = f"`{e.func}` cannot make a tensor: {why}" if why else None
        errors.add(
            SpecNameError(
                message or f"unknown function `{e.func}`",
                loc(e.func_span or e.span),
                hint=None if why else did_you_mean(e.func, reg.function_names()),
            )
        )
    elif isinstance(e, ir.MethodCall) and e.method not in tensor_methods():
        errors.add(
            SpecNameError(
                f"tensors have no method `{e.method}`",
                loc(e.method_span or e.span),
                hint=did_you_mean(e.method, tensor_methods()),
            )
        )
    for child in e.children():
        _check_tensor_expr(child, reg, params, errors)


def _check_init_rule(rule: ir.InitRule, params: set[str], errors: _Errors) -> None:
    if rule.func not in init_functions():
        errors.add(
            SpecNameError(
                f"unknown init function `{rule.func}`",
                loc(rule.func_span or rule.span),
                hint=did_you_mean(rule.func, init_functions())
                or f"torch.nn.init has {', '.join(init_functions())}",
            )
        )
    if rule.module_type is not None and rule.module_type not in nn_classes():
        errors.add(
            SpecNameError(
                f"unknown layer type `{rule.module_type}` in an init rule",
                loc(rule.span),
                hint=did_you_mean(rule.module_type, nn_classes())
                or "an init rule names a torch.nn class, like `Linear.weight`",
            )
        )
    for v in [*rule.args, *rule.kwargs.values()]:
        _check_value(v, params, errors)


class _TensorReads:
    """Rewrites a forward's reads of declared tensors (`cls_token.expand(n, -1, -1)`,
    `x + pos`) into `get_attr` nodes, one per tensor, placed before its first reader. An
    expression that now reads a forward value becomes a node of its own, as the lowering
    makes one of every expression over forward values."""

    def __init__(self, tensors: set[str], nodes: list[ir.FNode], errors: _Errors) -> None:
        self.tensors = tensors
        self.errors = errors
        self.used = {n.name for n in nodes}
        self.nodes = nodes
        self.read: dict[str, ir.Ref] = {}  # tensor name -> its get_attr node
        self.out: list[ir.FNode] = []

    def rewrite(self) -> list[ir.FNode]:
        for n in self.nodes:
            if n.op == "call" and n.target in self.tensors:
                self.errors.add(
                    SpecTypeError(
                        f"`{n.target}` is a tensor the model holds, not a layer: it cannot be "
                        "called",
                        loc(n.span),
                        hint=f"read it by name, e.g. `x * {n.target}`",
                    )
                )
            args = [self.value(a) for a in n.args]
            kwargs = {k: self.value(v) for k, v in n.kwargs.items()}
            self.out.append(n.model_copy(update={"args": args, "kwargs": kwargs}))
        return self.out

    def value(self, e: ir.Expr) -> ir.Expr:
        return e.map(self._one)

    def _one(self, e: ir.Expr) -> ir.Expr:
        if isinstance(e, ir.Name) and e.id in self.tensors:
            if e.id not in self.read:
                self.read[e.id] = self.add("get_attr", e.id, [], e.span, e.id)
            return self.read[e.id].model_copy(update={"span": e.span})
        if isinstance(e, ir.BinOp) and e.find(ir.Ref) is not None:
            return self.add("operator", e.op, [e.left, e.right], e.span, e.op)
        if isinstance(e, ir.Neg) and e.find(ir.Ref) is not None:
            return self.add("operator", "neg", [e.operand], e.span, "neg")
        return e

    def add(
        self, op: str, target: str, args: list[ir.Expr], span: ir.Span | None, base: str
    ) -> ir.Ref:
        name, k = base, 0
        while name in self.used:
            k += 1
            name = f"{base}_{k}"
        self.used.add(name)
        assert span is not None
        self.out.append(ir.FNode(name=name, op=op, target=target, args=args, span=span))
        return ir.Ref(node=name, span=span)


MODEL_PASSES: tuple[Callable[[ir.ModelDef, Registry, _Errors], ir.ModelDef], ...] = (
    check_param_types,
    check_model_tensors,
    resolve_names,
)


def passes_by_model(program: ir.Program) -> tuple[ir.Program, dict[str, list[SpecError]]]:
    """Each model through `MODEL_PASSES` in order, up to the first that finds mistakes in
    it (a later pass would find their consequences). Returns the program, each model as far
    as the passes took it, and the mistakes of each model that has any, by its name."""
    if not program.models:
        return program, {}
    reg = _registry(program)
    models, mistakes = [], {}
    for m in program.models:
        for run in MODEL_PASSES:
            errors = _Errors()
            m = run(m, reg, errors)
            if errors.items:
                mistakes[m.name] = errors.items
                break
        models.append(m)
    return program.model_copy(update={"models": models}), mistakes


def run_passes(program: ir.Program) -> ir.Program:
    """The program through the passes; its mistakes, every model's, raised together."""
    program, mistakes = passes_by_model(program)
    if mistakes:
        raise together(err for errs in mistakes.values() for err in errs)
    return program
