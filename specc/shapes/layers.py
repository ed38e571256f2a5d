"""Layer construction at check time: a layer expression (`Conv2d(_, 16, 3)`, `Sequential`,
`repeat`, a spec model) built on the ``meta`` device, its `_` arguments filled from the
shape it first receives, and recorded as an IR constructor (`ir.Ctor`)."""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch

from specc import ir
from specc.errors import SpecError, SpecShapeError, SpecTypeError, did_you_mean
from specc.registry import HOLE_DIMS, HOLE_WORDS, TENSOR_CTORS, accepts, qualname
from specc.shapes.held import held_tensor
from specc.shapes.inputs import bind_model_args
from specc.shapes.memo import sig
from specc.shapes.meta import (
    MAX_PARAM_BYTES,
    bytes_text,
    dim_text,
    first_line,
    fit,
    on_meta,
    shape_text,
)
from specc.shapes.probes import Probes, apply, first
from specc.shapes.rules import meta_forward
from specc.values import evaluate, is_none, loc, to_expr, truth

if TYPE_CHECKING:
    from specc.shapes.check import Checker
    from specc.shapes.instance import Instance

# repeat(n, X) enumerates distinct instances until shapes reach a fixed point.
MAX_DISTINCT_REPEATS = 1000
MAX_REPEAT = 100_000
BATCH_AS_SIZE_HINT = (
    "reshape so that the batch stays a dimension of its own, "
    "e.g. `x.flatten(1)` instead of `x.view(-1)`"
)


@dataclass
class Built:
    ctor: Any  # an ir Ctor
    module: Any  # callable on meta tensors
    params: int
    type_name: str
    checks: list[tuple[str, Any, int]]  # (ctor parameter, value, dim) to verify per call
    key: str | None = None  # identity of a torch layer's configuration, for the shape cache
    trainable: int | None = None  # when not all of `params` (a Parameter without grad)


class LayerMaker:
    """Builds the layers of one model instance; constants are the instance's `names`, and
    every `_` filled is recorded in its `holes`."""

    def __init__(self, inst: Instance) -> None:
        # The instance owns its layer maker; a strong reference back would make a cycle, and
        # with it the whole check (instances, meta modules, the program) garbage that only
        # a collection frees, after the check has returned.
        self._inst = weakref.ref(inst)
        self.ck: Checker = inst.ck
        self.scope: dict[str, Any] = {}  # the index of `repeat(n, i -> ...)` being built

    @property
    def inst(self) -> Instance:
        inst = self._inst()
        assert inst is not None, "a layer maker outlived its instance"
        return inst

    @property
    def names(self) -> dict[str, Any]:
        """The constants a layer expression may use: model arguments, repeat indices."""
        return {**self.inst.names, **self.scope} if self.scope else self.inst.names

    def present(self, e: ir.Expr) -> bool:
        """Is the layer `e` declares there at all (a conditional may choose `None`)?"""
        while isinstance(e, ir.IfExp):
            e = e.body if truth(evaluate(e.test, self.names), e.test) else e.orelse
        return not is_none(e)

    def make(
        self, e: ir.Expr, incoming: list[Any] | None, use: ir.Span | None, layer: ir.Layer
    ) -> Built:
        """Construct a layer expression on meta, filling holes from `incoming`; refuse sizes
        no machine could hold before anything real is allocated."""
        built = self._make(e, incoming, use, layer)
        if built.params * 4 > MAX_PARAM_BYTES:
            raise SpecShapeError(
                f"`{self.ck.snippet(e.span)}` would hold {built.params:,} parameters "
                f"(about {bytes_text(built.params * 4)} in float32)",
                loc(e.span),
                hint=f"specc refuses models over {bytes_text(MAX_PARAM_BYTES)} of parameters; "
                "is a size off by a few zeros?",
            )
        return built

    def _make(
        self, e: ir.Expr, incoming: list[Any] | None, use: ir.Span | None, layer: ir.Layer
    ) -> Built:
        if isinstance(e, ir.IfExp):
            return self.conditional(e, incoming, use, layer)
        if is_none(e):
            return Built(ir.NoneCtor(span=e.span), None, 0, "None", [])
        if not isinstance(e, ir.Call):
            raise SpecTypeError("a layer must be a constructor call", loc(getattr(e, "span", None)))
        if e.func in TENSOR_CTORS:
            return held_tensor(self.inst, e, layer)
        kind, obj = self.ck.reg.layer(e.func) or (None, None)
        if kind == "builtin" and e.func == "Sequential":
            return self.sequential(e, incoming, use, layer)
        if kind == "builtin" and e.func == "repeat":
            return self.repeat(e, incoming, use, layer)
        if kind == "model":
            return self.model(e, incoming, use)
        return self.torch_layer(e, obj, incoming, plugin=kind == "plugin")

    def call_built(self, b: Built, inputs: list[Any], e: ir.Expr) -> Any:
        if b.module is None:
            raise SpecTypeError(
                f"`{self.ck.snippet(e.span)}` is None here, so it cannot be applied",
                loc(e.span),
            )
        try:
            return apply(b.module, *inputs)
        except SpecError:
            raise
        except Exception as exc:
            raise SpecShapeError(
                f"`{self.ck.snippet(e.span)}` fails on input "
                f"{', '.join(shape_text(i) for i in inputs)}: {first_line(exc)}",
                loc(e.span),
            ) from None

    # ---- containers -------------------------------------------------------------------
    def conditional(self, e: ir.IfExp, incoming, use, layer) -> Built:
        """`A if test else B`: the branch the model's arguments choose (`None`: absent)."""
        taken = truth(evaluate(e.test, self.names), e.test)
        b = self.make(e.body if taken else e.orelse, incoming, use, layer)
        ctor = ir.CondCtor(taken=taken, ctor=b.ctor, span=e.span)
        return Built(ctor, b.module, b.params, b.type_name, b.checks, b.key)

    def sequential(self, e: ir.Call, incoming, use, layer) -> Built:
        """`Sequential(a, b, *repeat(n, ...), c)`, or with named entries `Sequential(head=a)`;
        an entry that is `None` (a conditional) is left out, as torchvision's lists do."""
        if e.kwargs and e.args:
            raise SpecTypeError(
                "Sequential takes layers, or named layers (`Sequential(head=Linear(...))`), "
                "not both",
                loc(e.span),
            )
        entries = [*e.args, *e.kwargs.values()]
        items, mods, params = [], [], 0
        cur = incoming
        for a in entries:
            if isinstance(a, ir.Starred):
                b = self._splat(a, cur, use, layer)
            else:
                b = self.make(a, cur, use, layer)
            items.append(b.ctor)
            mods.append(b)
            params += b.params
            if cur is not None and b.module is not None:
                cur = [self.call_built(b, cur, a)]
        names = list(e.kwargs) if e.kwargs else None
        ctor = ir.SequentialCtor(items=items, names=names, span=e.span)
        return Built(ctor, Chain(mods), params, "Sequential", [])

    def _splat(self, a: ir.Starred, incoming, use, layer) -> Built:
        value = a.value
        if not (isinstance(value, ir.Call) and value.func == "repeat"):
            raise SpecTypeError(
                "`*` in Sequential splices the layers of a `repeat(n, ...)`", loc(a.span)
            )
        b = self.repeat(value, incoming, use, layer)
        b.ctor = b.ctor.model_copy(update={"splat": True})
        return b

    def repeat(self, e: ir.Call, incoming, use, layer) -> Built:
        count, prefix = self._repeat_args(e)
        if isinstance(e.args[1], ir.Lambda):
            distinct = self._indexed_repeats(e, e.args[1], count, incoming, use, layer)
        else:
            distinct = self._distinct_repeats(e, count, incoming, use, layer)
        last = distinct[-1]
        params = sum(b.params for b in distinct) + (count - len(distinct)) * last.params
        if count > MAX_REPEAT:
            raise SpecShapeError(
                f"repeat({count:,}, ...) would create {count:,} modules "
                f"({params:,} parameters, about {bytes_text(params * 4)} in float32)",
                loc(e.span),
                hint=f"specc builds at most {MAX_REPEAT:,} repeated instances",
            )
        ctor = ir.RepeatCtor(
            count=count, items=[b.ctor for b in distinct], prefix=prefix, span=e.span
        )
        inner = distinct[0].type_name
        return Built(ctor, Chain(distinct), params, f"{inner} x{count}", [])

    def _repeat_args(self, e: ir.Call) -> tuple[int, str]:
        """The count, and the prefix of the children's names (`prefix="encoder_layer_"`)."""
        if len(e.args) != 2 or set(e.kwargs) - {"prefix"}:
            raise SpecTypeError(
                "repeat takes a count and a layer: repeat(3, Block(64)), "
                "repeat(3, i -> Block(64, stride=2 if i == 0 else 1)), and optionally "
                'prefix="block_" to name the children block_0, block_1, ...',
                loc(e.span),
            )
        count = evaluate(e.args[0], self.names)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SpecTypeError(
                f"repeat count must be a positive integer, got {count!r}", loc(e.args[0].span)
            )
        prefix = evaluate(e.kwargs["prefix"], self.names) if "prefix" in e.kwargs else ""
        if not isinstance(prefix, str) or (prefix and not (prefix + "0").isidentifier()):
            raise SpecTypeError(
                f"repeat's prefix must start a Python name, got {prefix!r}",
                loc(e.kwargs["prefix"].span),
            )
        return count, prefix

    def _indexed_repeats(
        self, e: ir.Call, fn: ir.Lambda, count: int, incoming, use, layer
    ) -> list[Built]:
        """`repeat(n, i -> X)`: each instance built with its index bound to `i`."""
        if count > MAX_DISTINCT_REPEATS:
            raise SpecShapeError(
                f"repeat({count:,}, {fn.param} -> ...) builds each instance apart; "
                f"at most {MAX_DISTINCT_REPEATS:,}",
                loc(e.span),
            )
        if fn.param in self.inst.names:
            raise SpecTypeError(
                f"the index `{fn.param}` hides the model parameter of that name",
                loc(fn.span),
                hint="give the index another name",
            )
        built: list[Built] = []
        cur = incoming
        outer = self.scope
        try:
            for k in range(count):
                self.scope = {**outer, fn.param: k}
                try:
                    b = self.make(fn.body, cur, use, layer)
                except SpecError as err:
                    note = f"in the instance with {fn.param} = {k} (of {count})"
                    err.diagnostic.notes.append((note, loc(e.span)))
                    raise
                if b.module is None:
                    raise SpecTypeError(
                        f"repeat's layer is None at index {fn.param} = {k}", loc(fn.body.span)
                    )
                built.append(b)
                if cur is not None:
                    cur = [self.call_built(b, cur, fn.body)]
        finally:
            self.scope = outer
        return built

    def _distinct_repeats(self, e: ir.Call, count: int, incoming, use, layer) -> list[Built]:
        """The leading instances of `repeat(count, X)` until one maps its input's shape to
        itself (a fixed point): every further instance equals the last."""
        distinct: list[Built] = []
        cur = incoming
        for _ in range(min(count, MAX_DISTINCT_REPEATS)):
            b = self.make(e.args[1], cur, use, layer)
            if distinct and b.ctor == distinct[-1].ctor and cur is not None:
                prev_in = cur
                out = self.call_built(b, cur, e.args[1])
                if _same_shapes(out, prev_in[0]):
                    break  # fixed point: every further instance is identical
                distinct.append(b)
                cur = [out]
                continue
            distinct.append(b)
            if cur is not None:
                cur = [self.call_built(b, cur, e.args[1])]
        else:
            if count > MAX_DISTINCT_REPEATS:
                raise SpecShapeError(
                    f"repeat({count}, ...) changes shape at every step; cannot check it",
                    loc(e.span),
                )
        return distinct

    def model(self, e: ir.Call, incoming, use) -> Built:
        """A spec model used as a layer: checked (once per arguments and input shapes) as
        a child instance."""
        mdef = self.ck.program.model(e.func)
        assert mdef is not None
        names = self.names
        args = bind_model_args(
            mdef,
            [evaluate(a, names) for a in e.args],
            {k: evaluate(v, names) for k, v in e.kwargs.items()},
            e.span,
        )
        if self.ck.depth > 64:
            raise SpecTypeError(f"`{e.func}` uses itself (recursion too deep)", loc(e.span))
        if incoming is None:
            raise SpecShapeError(
                f"`{e.func}` is never called, so its input shape is unknown", loc(e.span)
            )
        child = self.ck.use(mdef, args, incoming, use)
        inst = child.instance
        assert inst is not None
        ctor = ir.ModelCtor(instance=inst, span=e.span)
        return Built(ctor, ChildCall(child), inst.params, mdef.name, [])

    # ---- torch and plugin classes -----------------------------------------------------
    def torch_layer(self, e: ir.Call, cls: type, incoming, plugin: bool = False) -> Built:
        x = incoming[0] if incoming else None
        holes: dict[int, Any] = {}
        signature = accepts(cls)
        args, kwargs = self._arguments(e, signature, x, holes)
        config = None if plugin else _config_key(cls, args, kwargs)
        # The layers of a deep spec repeat a few configurations: what the class and the
        # arguments decide (module, parameter count, constructor, checks) is made once per
        # configuration, and each layer gets it with its own span.
        made = self.ck.torch_layers.get(config) if config is not None else None
        if made is None:
            made = self._torch_layer(e, cls, signature, args, kwargs, plugin)
            if config is not None:
                self.ck.torch_layers[config] = made
        self.inst.holes.update(holes)
        ctor = made.ctor
        if ctor.span is not e.span:
            ctor = ctor.model_copy(update={"span": e.span})
        return Built(
            ctor, made.module, made.params, made.type_name, made.checks, made.key, made.trainable
        )

    def _torch_layer(
        self,
        e: ir.Call,
        cls: type,
        signature: tuple[tuple[str, ...], bool, bool],
        args: list[Any],
        kwargs: dict[str, Any],
        plugin: bool,
    ) -> Built:
        """A torch or plugin layer of class `cls` with these (filled) arguments."""
        module = self._construct(e, cls, args, kwargs, plugin)
        params = sum(p.numel() for p in module.parameters())
        ctor = ir.TorchCtor(
            cls=qualname(cls),
            args=[to_expr(a) for a in args],
            kwargs={k: to_expr(v) for k, v in kwargs.items()},
            span=e.span,
        )
        if plugin:
            # A plugin layer is a black box: run on meta tensors, or, when its code does not
            # support meta, a real instance on tiny zero tensors of the same shapes.
            return Built(ctor, BlackBox(cls, module, args, kwargs), params, cls.__name__, [])
        bound = dict(zip(signature[0], args, strict=False)) | kwargs
        checks = [
            (p, bound[p], HOLE_DIMS[p])
            for p in bound
            if p in HOLE_DIMS and isinstance(bound[p], (int, list, tuple))
        ]
        key = f"{qualname(cls)}:{ctor.model_dump_json(exclude={'span'})}"
        return Built(ctor, meta_forward(module), params, cls.__name__, checks, key)

    def _arguments(
        self,
        e: ir.Call,
        signature: tuple[tuple[str, ...], bool, bool],
        x: Any,
        holes: dict[int, Any],
    ) -> tuple[list[Any], dict[str, Any]]:
        """The constructor's arguments (`signature`: `registry.accepts`), bound like a Python
        call, `_` filled from `x`."""
        names, var_pos, var_kw = signature
        if len(e.args) > len(names) and not var_pos:
            raise SpecTypeError(
                f"{e.func} takes at most {len(names)} positional arguments, got {len(e.args)}",
                loc(e.span),
                hint=f"its parameters: {', '.join(names)}",
            )
        args = [
            self._fill(e, a, names[i] if i < len(names) else None, x, holes)
            for i, a in enumerate(e.args)
        ]
        kwargs = {}
        for k, v in e.kwargs.items():
            if k not in names and not var_kw:
                raise SpecTypeError(
                    f"{e.func} has no parameter `{k}`",
                    loc(v.span),
                    hint=did_you_mean(k, names) or f"its parameters: {', '.join(names)}",
                )
            if k in names[: len(args)]:
                raise SpecTypeError(f"{e.func} got `{k}` twice", loc(v.span))
            kwargs[k] = self._fill(e, v, k, x, holes)
        return args, kwargs

    def _fill(
        self, e: ir.Call, arg: ir.Expr, pname: str | None, x: Any, holes: dict[int, Any]
    ) -> Any:
        """An argument's value; a `_` is the size of `x` along the parameter's dimension."""
        if isinstance(arg, ir.Const):  # most arguments: a literal
            return arg.value
        if not isinstance(arg, ir.Hole):
            return evaluate(arg, self.names, on_other=lambda o: _no_hole(o, e.func))
        if pname not in HOLE_DIMS:
            raise SpecTypeError(
                f"cannot infer `_` for {e.func}'s argument `{pname or '?'}`",
                loc(arg.span),
                hint="write the value; `_` works for input sizes "
                "(in_features, in_channels, num_features, ...)",
            )
        if not isinstance(first(x), torch.Tensor):
            raise SpecShapeError(
                f"`_` in {e.func}(...) needs the layer's input shape, but the layer "
                "is never called in forward",
                loc(arg.span),
            )
        dim = HOLE_DIMS[pname]
        if first(x).dim() < (dim + 1 if dim >= 0 else -dim):
            raise SpecShapeError(
                f"cannot infer `{pname}` of {e.func} from input {shape_text(x)}",
                loc(arg.span),
            )
        size = _size_at(x, dim)
        if not isinstance(size, int):
            raise SpecShapeError(
                f"`_` in {e.func}(...) would be `{pname}` = {dim_text(size)}, a size that "
                f"depends on the batch size (input {shape_text(x)}); a layer's sizes "
                "must be the same for every batch",
                loc(arg.span),
                hint=BATCH_AS_SIZE_HINT,
            )
        holes[arg.id] = size
        return size

    def _construct(
        self, e: ir.Call, cls: type, args: list[Any], kwargs: dict[str, Any], plugin: bool
    ) -> Any:
        """The module on meta; a plugin whose code does not support meta is built for real
        instead."""
        try:
            with on_meta():
                return cls(*args, **kwargs)
        except Exception as exc:  # torch validates arguments with several exception types
            if not plugin:
                raise SpecTypeError(
                    f"{e.func}({_args_text(args, kwargs)}) is invalid: {first_line(exc)}",
                    loc(e.span),
                ) from None
            try:
                return cls(*args, **kwargs)
            except Exception as exc2:
                raise SpecTypeError(
                    f"{e.func}({_args_text(args, kwargs)}) failed: {first_line(exc2)}",
                    loc(e.span),
                ) from None

    # ---- per call ---------------------------------------------------------------------
    def verify(self, node: ir.FNode, built: Built, args: list[Any]) -> None:
        """Explain a layer/input size mismatch in spec terms before torch does."""
        if not args or not isinstance(first(args[0]), torch.Tensor):
            return
        x = args[0]
        for pname, value, dim in built.checks:
            if first(x).dim() < (dim + 1 if dim >= 0 else -dim):
                continue
            if pname == "normalized_shape":
                want = tuple(value) if isinstance(value, (list, tuple)) else (value,)
                got: Any = tuple(_size_at(x, d) for d in range(-len(want), 0))
            else:
                want, got = value, _size_at(x, dim)
            if got != want:
                self._mismatch(node, pname, value, _got_text(got), x)

    def _mismatch(self, node: ir.FNode, pname: str, value: Any, got: Any, x: Any) -> None:
        layer = self.inst.decl[node.target]
        ctor_text = self.ck.snippet(layer.ctor.span)
        hint = None
        if isinstance(got, str):  # depends on the batch size: `_` cannot fix it
            hint = BATCH_AS_SIZE_HINT
        elif isinstance(layer.ctor, ir.Call) and layer.ctor.func not in ("Sequential", "repeat"):
            hint = f"write `_` to infer it: {self._with_hole(layer.ctor, pname)}"
        raise SpecShapeError(
            f"`{layer.name}` = {ctor_text} expects {value} {HOLE_WORDS[pname]} "
            f"but receives {got} (input shape {shape_text(x)})",
            loc(layer.ctor.span),
            hint=hint,
            notes=[(f"called here: {self.ck.snippet(node.span)}", loc(node.span))],
        )

    def _with_hole(self, call: ir.Call, pname: str) -> str:
        """The constructor text with the argument for `pname` replaced by `_`."""
        from specc.registry import nn_classes

        cls = nn_classes().get(call.func)
        names = accepts(cls)[0] if cls else []
        parts = []
        for i, a in enumerate(call.args):
            parts.append("_" if i < len(names) and names[i] == pname else self.ck.snippet(a.span))
        for k, v in call.kwargs.items():
            parts.append(f"{k}=_" if k == pname else f"{k}={self.ck.snippet(v.span)}")
        return f"{call.func}({', '.join(parts)})"


# ---- what runs a built layer on meta tensors ---------------------------------------------


class Chain:
    """Meta-time stand-in for nn.Sequential over built items; runs on every probe."""

    takes_probes = True

    def __init__(self, items: list[Built]) -> None:
        self.items = items

    def __call__(self, x: Any) -> Any:
        for b in self.items:
            if b.module is not None:  # an absent (None) entry
                x = apply(b.module, x)
        return x


class ChildCall:
    """A spec model used as a layer: runs its checked instance's forward (on every probe,
    in lockstep)."""

    takes_probes = True

    def __init__(self, child: Instance) -> None:
        self.child = child

    def __call__(self, *xs: Any) -> Any:
        return self.child.execute(list(xs), use_span=None)


class BlackBox:
    """Calls a plugin module on meta tensors, falling back to real zeros on the CPU."""

    def __init__(self, cls: type, module: Any, args: list, kwargs: dict) -> None:
        self.cls, self.module, self.args, self.kwargs = cls, module, args, kwargs
        self.real: Any = None

    def __call__(self, *xs: Any, **kw: Any) -> Any:
        if not _has_meta_params(self.module):
            with torch.no_grad():
                return _to_meta(self.module(*_to_real(xs), **_to_real(kw)))
        try:
            return self.module(*xs, **kw)
        except Exception:
            if self.real is None:
                self.real = self.cls(*self.args, **self.kwargs)
            with torch.no_grad():
                return _to_meta(self.real(*_to_real(xs), **_to_real(kw)))


def _has_meta_params(module: Any) -> bool:
    params = getattr(module, "parameters", None)
    return params is not None and any(p.is_meta for p in params())


def _to_real(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.zeros(x.shape, dtype=x.dtype) if x.is_meta else x
    if isinstance(x, (list, tuple)):
        return type(x)(_to_real(i) for i in x)
    if isinstance(x, dict):
        return {k: _to_real(v) for k, v in x.items()}
    return x


def _to_meta(x: Any) -> Any:
    if isinstance(x, torch.Tensor):
        return torch.empty(x.shape, dtype=x.dtype, device="meta")
    if isinstance(x, (list, tuple)):
        return type(x)(_to_meta(i) for i in x)
    return x


def _config_key(cls: type, args: list[Any], kwargs: dict[str, Any]) -> str | None:
    """What identifies a torch layer's configuration, its class and arguments (one meta
    module serves every layer of it); None: an argument the shape memo cannot describe.
    Text, not the signatures themselves: their repr tells -0.0 from 0.0, which == does not."""
    sigs = (sig(args), sig(kwargs))
    return None if None in sigs else f"{qualname(cls)}:{sigs[0]}:{sigs[1]}"


def _same_shapes(a: Any, b: Any) -> bool:
    if isinstance(a, Probes) and isinstance(b, Probes):
        return all(_same_shapes(x, y) for x, y in zip(a.items, b.items, strict=True))
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
    )


def _size_at(x: Any, dim: int) -> ir.Size:
    """Dimension `dim` of a forward tensor: an int, or how it depends on the batch size."""
    if not isinstance(x, Probes):
        return int(x.shape[dim])
    return fit(tuple(int(t.shape[dim]) for t in x.items))


def _got_text(got: Any) -> Any:
    """A received size for a message: ints as they are, batch-dependent sizes as text."""
    if isinstance(got, tuple):
        if all(isinstance(g, int) for g in got):
            return got
        return "(" + ", ".join(dim_text(g) for g in got) + ")"
    return got if isinstance(got, int) else dim_text(got)


def _no_hole(o: ir.Expr, func: str) -> Any:
    if isinstance(o, ir.Hole):
        raise SpecTypeError(f"`_` must be a whole argument of {func}(...)", loc(o.span))
    raise SpecTypeError("expected a constant here", loc(getattr(o, "span", None)))


def _args_text(args: list[Any], kwargs: dict[str, Any]) -> str:
    return ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])
