"""What a model holds besides layers, at check time: `Parameter(...)`/`Buffer(...)` tensors
(evaluated on meta), weight ties (`lm_head.weight = wte.weight`) and `init` rules.

Ties and init rules are checked on a *module tree*: the instance's layers constructed on
the ``meta`` device, with the tensors, sub-models and ties the builder will make, so a path,
an `isinstance` test or a parameter-name glob means here what it means at build time.
"""

from __future__ import annotations

import fnmatch
import inspect
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from specc import ir
from specc.construct import Constructor
from specc.errors import SpecNameError, SpecShapeError, SpecTypeError, did_you_mean
from specc.registry import dtype_name, init_functions, nn_classes, qualname
from specc.shapes.meta import MAX_PARAM_BYTES, bytes_text, first_line, on_meta
from specc.tensors import fold, tensor_value
from specc.values import evaluate, literal, loc, to_expr

if TYPE_CHECKING:
    from specc.shapes.check import Checker
    from specc.shapes.instance import Instance
    from specc.shapes.layers import Built

# ---- Parameter(...) and Buffer(...) -------------------------------------------------------


def held_tensor(inst: Instance, e: ir.Call, layer: ir.Layer) -> Built:
    """`Parameter(expr)` or `Buffer(expr)`: the expression evaluated on meta and folded."""
    from specc.shapes.layers import Built

    value = _meta_value(inst, e)
    nbytes = value.numel() * value.element_size()
    if nbytes > MAX_PARAM_BYTES:
        raise SpecShapeError(
            f"`{layer.name}` would hold {value.numel():,} values (about {bytes_text(nbytes)})",
            loc(e.span),
            hint="is a size off by a few zeros?",
        )
    role = "parameter" if e.func == "Parameter" else "buffer"
    options = {k: literal(v) for k, v in e.kwargs.items()}
    requires_grad = options.get("requires_grad", True)
    if role == "parameter" and not value.dtype.is_floating_point and requires_grad:
        raise SpecTypeError(
            f"a Parameter that requires grad must be floating point, this one is "
            f"{dtype_name(value.dtype)}",
            loc(e.span),
            hint="add `.float()`, or `requires_grad=False`",
        )
    shape = list(value.shape)
    ctor = ir.TensorCtor(
        role=role,
        value=fold(e.args[0], inst.names),
        requires_grad=requires_grad,
        persistent=options.get("persistent", True),
        shape=shape,
        dtype=dtype_name(value.dtype),
        span=e.span,
    )
    tensor = ir.TensorType(shape=shape, dtype=ctor.dtype, batched=False)
    inst.first_out[layer.name] = ir.Value(kind="tensor", tensor=tensor)
    params = value.numel() if role == "parameter" else 0
    trainable = params if requires_grad else 0
    return Built(ctor, value, params, e.func, [], trainable=trainable)


def _meta_value(inst: Instance, e: ir.Call) -> torch.Tensor:
    try:
        value = tensor_value(e.args[0], inst.names, device="meta")
    except (SpecNameError, SpecTypeError, SpecShapeError):
        raise
    except Exception as exc:  # torch reports bad sizes and dtypes in many exception types
        raise SpecShapeError(
            f"`{inst.ck.snippet(e.args[0].span)}` fails: {first_line(exc)}", loc(e.args[0].span)
        ) from None
    if not isinstance(value, torch.Tensor):
        raise SpecTypeError(
            f"{e.func}(...) needs a tensor, got {type(value).__name__} {value!r}",
            loc(e.args[0].span),
            hint="make one with a torch function: `tensor(...)`, `zeros(...)`, `randn(...)`",
        )
    return value


# ---- ties and init rules ----------------------------------------------------------------


@dataclass
class Held:
    """The checked ties and init rules of one instance, what they change in its counts, and
    the warnings they raised."""

    ties: list[ir.Tie] = field(default_factory=list)
    inits: list[ir.InitRule] = field(default_factory=list)
    warnings: list[ir.CheckWarning] = field(default_factory=list)
    shared_params: int = 0  # parameters counted by two layers but held once
    shared_trainable: int = 0


def check_ties_and_inits(inst: Instance, layers: list[ir.LayerInstance]) -> Held:
    """Resolve the instance's ties and init rules on its module tree (built only when it
    has some: a model without them pays nothing)."""
    mdef = inst.mdef
    held = Held()
    if not mdef.ties and not mdef.inits:
        return held
    tree = ModuleTree(inst.ck).tree(layers, [])
    for tie in mdef.ties:
        held.ties.append(_tie(tree, tie, held))
    for rule in mdef.inits:
        held.inits.append(_init_rule(inst, tree, rule, held))
    return held


def _tie(tree: nn.Module, tie: ir.Tie, held: Held) -> ir.Tie:
    before = _counts(tree)
    target = _parameter(tree, tie.target, tie.target_span)
    source = _parameter(tree, tie.source, tie.source_span)
    if target.shape != source.shape:
        raise SpecShapeError(
            f"cannot tie `{tie.target}` {_shape(target)} to `{tie.source}` {_shape(source)}: "
            "their shapes differ",
            loc(tie.span),
            hint="tied parameters must have the same shape",
        )
    tie_in(tree, tie.target, source)
    after = _counts(tree)
    held.shared_params += before[0] - after[0]
    held.shared_trainable += before[1] - after[1]
    return tie.model_copy(update={"shape": list(source.shape), "params": before[0] - after[0]})


def tie_in(tree: nn.Module, target: str, source: nn.Parameter) -> None:
    """Make the parameter at path `target` the `source` parameter."""
    owner, _, leaf = target.rpartition(".")
    setattr(tree.get_submodule(owner), leaf, source)


def _parameter(tree: nn.Module, path: str, span: ir.Span) -> nn.Parameter:
    try:
        return tree.get_parameter(path)
    except AttributeError:
        names = [n for n, _ in tree.named_parameters(remove_duplicate=False)]
        raise SpecNameError(
            f"`{path}` names no parameter of this model",
            loc(span),
            hint=did_you_mean(path, names)
            or (f"its parameters: {', '.join(names[:6])}" + (", ..." if len(names) > 6 else "")),
        ) from None


def _counts(tree: nn.Module) -> tuple[int, int]:
    params = list(tree.parameters())  # each shared parameter once
    return sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad)


def _shape(t: torch.Tensor) -> str:
    return "[" + ", ".join(map(str, t.shape)) + "]"


def _init_rule(inst: Instance, tree: nn.Module, rule: ir.InitRule, held: Held) -> ir.InitRule:
    fn = init_functions()[rule.func]
    args = [evaluate(a, inst.names) for a in rule.args]
    kwargs = {k: evaluate(v, inst.names) for k, v in rule.kwargs.items()}
    try:
        inspect.signature(fn).bind(None, *args, **kwargs)
    except TypeError as exc:
        raise SpecTypeError(
            f"`{rule.func}` cannot take these arguments: {exc}",
            loc(rule.span),
            hint=f"its parameters: {inspect.signature(fn)}",
        ) from None
    targets = list(_targets(tree, rule))
    if not targets:
        held.warnings.append(_matches_nothing(inst, tree, rule))
    tried: set[tuple] = set()
    for path, tensor in targets:
        if (key := (tuple(tensor.shape), tensor.dtype)) in tried:
            continue  # meta tensors of one shape fail alike
        tried.add(key)
        try:
            with torch.no_grad(), on_meta(device=False):
                fn(tensor, *args, **kwargs)
        except Exception as exc:  # torch.nn.init raises ValueError, RuntimeError, ...
            raise SpecTypeError(
                f"`{rule.func}` cannot initialize `{path}` {_shape(tensor)}: {first_line(exc)}",
                loc(rule.span),
            ) from None
    checked: dict[str, Any] = {
        "func": f"torch.nn.init.{rule.func}",
        "args": [to_expr(a) for a in args],
        "kwargs": {k: to_expr(v) for k, v in kwargs.items()},
    }
    if rule.module_type is not None:
        checked["module_type"] = qualname(nn_classes()[rule.module_type])
    return rule.model_copy(update=checked)


def _targets(tree: nn.Module, rule: ir.InitRule) -> Iterator[tuple[str, torch.Tensor]]:
    """What the rule initializes, as the generated `_init_weights` loops find it."""
    if rule.glob is not None:
        for name, p in tree.named_parameters():
            if fnmatch.fnmatchcase(name, rule.glob):
                yield name, p
        return
    cls = nn_classes()[rule.module_type or ""]
    attr = rule.attr or ""
    for name, m in tree.named_modules():
        if isinstance(m, cls) and not hasattr(m, attr):  # the generated `m.attr` would raise
            tensors = [n for n, _ in m.named_parameters(recurse=False)]
            tensors += [n for n, _ in m.named_buffers(recurse=False)]
            raise SpecNameError(
                f"`{rule.module_type}` layers have no `{attr}`",
                loc(rule.span),
                hint=did_you_mean(attr, tensors) or f"they hold {', '.join(tensors) or 'nothing'}",
            )
        if not isinstance(m, cls) or getattr(m, attr) is None:
            continue
        value = getattr(m, attr)
        if not isinstance(value, torch.Tensor):
            raise SpecTypeError(
                f"`{rule.module_type}.{attr}` is not a tensor (it is {value!r})",
                loc(rule.span),
                hint=f"an init rule sets a parameter, like `{rule.module_type}.weight`",
            )
        yield f"{name}.{attr}" if name else attr, value


def _matches_nothing(inst: Instance, tree: nn.Module, rule: ir.InitRule) -> ir.CheckWarning:
    model = inst.mdef.name
    if rule.glob is not None:
        names = [n for n, _ in tree.named_parameters()]
        return ir.CheckWarning(
            message=f'init rule matches nothing: no parameter of `{model}` matches "{rule.glob}"',
            span=rule.span,
            hint=did_you_mean(rule.glob, names)
            or (f"parameter names look like `{names[0]}`" if names else None),
        )
    return ir.CheckWarning(
        message=f"init rule matches nothing: `{model}` has no `{rule.module_type}` layer "
        f"with a `{rule.attr}`",
        span=rule.span,
    )


def sub_warnings(layers: list[ir.LayerInstance]) -> list[ir.CheckWarning]:
    """The warnings of the sub-model instances among `layers`."""
    out: list[ir.CheckWarning] = []
    for layer in layers:
        for child in _instances(layer.ctor):
            out += child.warnings
    return out


def _instances(c: Any) -> Iterator[ir.ModelInstance]:
    if isinstance(c, ir.ModelCtor):
        yield c.instance
    elif isinstance(c, ir.CondCtor):
        yield from _instances(c.ctor)
    elif isinstance(c, (ir.SequentialCtor, ir.RepeatCtor)):
        for item in c.items:
            yield from _instances(item)


# ---- the module tree ----------------------------------------------------------------------


class ModuleTree(Constructor):
    """Checked layers as real modules on meta: what the builder makes, without forwards."""

    def __init__(self, ck: Checker) -> None:
        self.ck = ck

    def tree(self, layers: list[ir.LayerInstance], ties: list[ir.Tie]) -> nn.Module:
        root = nn.Module()
        for layer in layers:
            self.add(root, layer.name, layer.ctor)
        for tie in ties:
            tie_in(root, tie.target, root.get_parameter(tie.source))
        return root

    def model(self, inst: ir.ModelInstance) -> nn.Module:
        if inst.kind == "sequential":
            return self.sequential_model(inst)
        return self.tree(inst.layers, inst.ties)

    def add_tensor(self, root: nn.Module, name: str, c: ir.TensorCtor) -> None:
        value = torch.empty(c.shape, dtype=getattr(torch, c.dtype), device="meta")
        if c.role == "parameter":
            root.register_parameter(name, nn.Parameter(value, c.requires_grad))
        else:
            root.register_buffer(name, value, persistent=c.persistent)

    def torch_module(self, c: ir.TorchCtor) -> nn.Module:
        short = c.cls.rsplit(".", 1)[-1]
        cls = nn_classes()[short] if c.cls.startswith("torch.nn.") else self.ck.reg.plugins[short]
        args = [literal(a) for a in c.args]
        kwargs = {k: literal(v) for k, v in c.kwargs.items()}
        try:
            with on_meta():
                return cls(*args, **kwargs)
        except Exception:  # a plugin whose code needs real tensors (checked so already)
            with torch.random.fork_rng(devices=[]):  # checking draws nothing the build draws
                return cls(*args, **kwargs)
