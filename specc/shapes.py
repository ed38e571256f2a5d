"""Stage 3b: shape inference. IR Program -> checked ``ModelInstance``.

Every layer is constructed on the ``meta`` device and every forward step runs on meta
tensors: real torch semantics, no real allocation, so a 20-billion-parameter model checks
in milliseconds. `_` arguments are filled from the shape a layer actually receives, at its
first call. Torch's own errors are caught here and reported at the spec line that caused
them.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from specc import ir
from specc.errors import SpecError, SpecNameError, SpecShapeError, SpecTypeError, did_you_mean
from specc.registry import (
    DTYPES,
    HOLE_DIMS,
    HOLE_WORDS,
    Registry,
    accepts,
    dtype_name,
    function_by_qualname,
    qualname,
)
from specc.values import BINOP_SYMBOLS as _SYMBOL
from specc.values import BINOPS, evaluate, loc, to_expr, type_ok

# The batch size used for meta tensors. Shapes are shown with `B` in its place.
BATCH = 2
# repeat(n, X) enumerates distinct instances until shapes reach a fixed point.
MAX_DISTINCT_REPEATS = 1000
# Sizes past these are mistakes, not models: refused at check time with an estimate.
MAX_PARAM_BYTES = 1 << 40  # 1 TiB of float32 parameters (a 20B model is 80 GB)
MAX_INPUT_BYTES = 1 << 40  # 1 TiB per sample (a 4K video clip of 1,000 frames is 100 GB)
MAX_REPEAT = 100_000


@dataclass
class _Built:
    ctor: Any  # an ir Ctor
    module: Any  # callable on meta tensors
    params: int
    type_name: str
    checks: list[tuple[str, Any, int]]  # (ctor parameter, value, dim) to verify per call
    key: str | None = None  # identity of a torch layer's configuration, for the shape cache


def shape_text(t: Any) -> str:
    if isinstance(t, torch.Tensor):
        dims = [str(d) for d in t.shape]
        if t.dim() >= 1 and t.shape[0] == BATCH:
            dims[0] = "B"
        return "[" + ", ".join(dims) + "]"
    if isinstance(t, (tuple, list)):
        return "(" + ", ".join(shape_text(x) for x in t) + ")"
    return repr(t)


def value_of(t: Any) -> ir.Value:
    if isinstance(t, torch.Tensor):
        batched = t.dim() >= 1 and t.shape[0] == BATCH
        shape = list(t.shape[1:]) if batched else list(t.shape)
        return ir.Value(
            kind="tensor",
            tensor=ir.TensorType(shape=shape, dtype=dtype_name(t.dtype), batched=batched),
        )
    if isinstance(t, (tuple, list)) and not isinstance(t, torch.Size):
        return ir.Value(kind="tuple", items=[value_of(x) for x in t])
    if isinstance(t, torch.Size):
        return ir.Value(kind="const", const=list(t))
    if t is None or isinstance(t, (bool, int, float, str)):
        return ir.Value(kind="const", const=t)
    return ir.Value(kind="const", const=repr(t))


def value_text(v: ir.Value) -> str:
    if v.kind == "tensor" and v.tensor is not None:
        dims = [str(d) for d in v.tensor.shape]
        if v.tensor.batched:
            dims.insert(0, "B")
        return "[" + ", ".join(dims) + "]"
    if v.kind == "tuple":
        return "(" + ", ".join(value_text(i) for i in v.items) + ")"
    return repr(v.const)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


class Checker:
    """Checks models of one program; sub-model instances are checked at each use."""

    def __init__(self, program: ir.Program, registry: Registry) -> None:
        self.program = program
        self.reg = registry
        self.texts = {s.path: s.text for s in program.sources}
        self.depth = 0
        # Meta ops run through Python decompositions (~1 ms each); the same op on the same
        # shapes gives the same result, so repeated blocks are inferred once.
        self.cache: dict[Any, Any] = {}
        self.modules: dict[str, Any] = {}
        # A model used with the same arguments on the same input shapes checks the same way:
        # its instance is checked once and shared (n models each using the previous one
        # twice would otherwise make 2**n instances).
        self.instances: dict[Any, _Instance] = {}
        self._pure: dict[str, bool] = {}

    def pure(self, name: str) -> bool:
        """Does model `name` leave its inputs alone (no in-place calls, its own or in the
        models it uses)? Only then can its outputs be reused for the same input shapes."""
        if name not in self._pure:
            self._pure[name] = True  # a model that uses itself fails elsewhere
            mdef = self.program.model(name)
            nodes = mdef.forward.nodes if mdef is not None and mdef.forward else []
            used = [c for layer in mdef.layers for c in _calls(layer.ctor)] if mdef else []
            self._pure[name] = not any(
                n.op in ("method", "function") and n.target.endswith("_") for n in nodes
            ) and all(self.pure(c) for c in used if self.program.model(c) is not None)
        return self._pure[name]

    def snippet(self, span: ir.Span | None) -> str:
        if span is None:
            return "?"
        lines = self.texts.get(span.file, "").split("\n")
        if span.line != span.end_line or not (0 < span.line <= len(lines)):
            return lines[span.line - 1].strip() if 0 < span.line <= len(lines) else "?"
        return lines[span.line - 1][span.column - 1 : span.end_column - 1]


class _Instance:
    """One use of a model definition with bound parameters."""

    def __init__(self, ck: Checker, mdef: ir.ModelDef, args: dict[str, Any]) -> None:
        self.ck = ck
        self.mdef = mdef
        self.args = args
        self.decl = {layer.name: layer for layer in mdef.layers}
        self.built: dict[str, _Built] = {}
        self.first_out: dict[str, ir.Value] = {}
        self.holes: dict[int, Any] = {}
        self.instance: ir.ModelInstance | None = None
        self.names: dict[str, Any] = dict(args)
        self.results: dict[Any, Any] = {}  # input signature -> described output

    # ---- inputs ----------------------------------------------------------------------
    def declared_inputs(self, overrides: dict[str, list[int]] | None) -> list[torch.Tensor]:
        """Meta tensors for a top-level check, from declared shapes (or --input)."""
        fwd = self.mdef.forward
        assert fwd is not None
        overrides = dict(overrides or {})
        tensors = []
        if not fwd.inputs:
            if overrides:
                (name, shape), *_ = overrides.items()
                return [_input_tensor(name, shape, torch.float32, self.mdef.span)]
            raise SpecShapeError(
                f"`{self.mdef.name}` declares no input shape, so it cannot be checked alone",
                loc(self.mdef.span),
                hint="add `input [C, H, W]` as its first line, or pass --input x=C,H,W",
            )
        for inp in fwd.inputs:
            dims = []
            if inp.name in overrides:
                got = overrides.pop(inp.name)
                if len(got) != len(inp.shape):
                    raise SpecShapeError(
                        f"--input {inp.name} has {len(got)} dimensions; "
                        f"`{inp.name}` is declared with {len(inp.shape)}",
                        loc(inp.span),
                    )
                dims = list(got)
            else:
                for d in inp.shape:
                    if isinstance(d.value, int):
                        dims.append(d.value)
                    elif d.value in self.args and isinstance(self.args[d.value], int):
                        dims.append(self.args[d.value])
                    else:
                        raise SpecShapeError(
                            f"input `{inp.name}` has a named dimension `{d.value}` with no size",
                            loc(d.span),
                            hint=f"check it with a size: --input {inp.name}="
                            + ",".join(
                                str(x.value) if isinstance(x.value, int) else "N" for x in inp.shape
                            ),
                        )
            tensors.append(_input_tensor(inp.name, dims, self._dtype(inp), inp.span))
        if overrides:
            name = next(iter(overrides))
            raise SpecShapeError(
                f"--input names `{name}`, which is not an input of `{self.mdef.name}`",
                loc(fwd.span),
                hint=did_you_mean(name, [i.name for i in fwd.inputs]),
            )
        return tensors

    def _dtype(self, inp: ir.Input) -> torch.dtype:
        if inp.dtype is None:
            return torch.float32
        if inp.dtype not in DTYPES:
            raise SpecTypeError(
                f"unknown dtype `{inp.dtype}`", loc(inp.span), hint=did_you_mean(inp.dtype, DTYPES)
            )
        return DTYPES[inp.dtype]

    def bind_inputs(self, actual: list[Any], use_span: ir.Span | None) -> None:
        """Check the tensors a use passes against the declared input shapes."""
        fwd = self.mdef.forward
        assert fwd is not None
        name = self.mdef.name
        if not fwd.inputs:  # a sequential block without `input`: takes what it is given
            if len(actual) != 1:
                raise SpecTypeError(f"`{name}` takes 1 input, got {len(actual)}", loc(use_span))
            return
        if len(actual) != len(fwd.inputs):
            raise SpecTypeError(
                f"`{name}` takes {len(fwd.inputs)} input(s), got {len(actual)}",
                loc(use_span),
                notes=[("forward declared here", loc(fwd.span))],
            )
        bound: dict[str, int] = {}
        for inp, t in zip(fwd.inputs, actual, strict=False):
            if not isinstance(t, torch.Tensor):
                raise SpecTypeError(f"`{name}` input `{inp.name}` must be a tensor", loc(use_span))
            got = list(t.shape[1:])
            want = [d.value for d in inp.shape]
            where = [("declared here", loc(inp.span))]
            if len(got) != len(want):
                raise SpecShapeError(
                    f"`{name}` expects `{inp.name}` of shape {_dims_text(want)} per sample, "
                    f"but receives {shape_text(t)}",
                    loc(use_span),
                    notes=where,
                )
            for d, g in zip(want, got, strict=False):
                expect = d if isinstance(d, int) else self.args.get(d, bound.get(d))
                if isinstance(d, str) and expect is None:
                    bound[d] = g
                    self.names.setdefault(d, g)
                elif expect != g:
                    raise SpecShapeError(
                        f"`{name}` expects `{inp.name}` of shape {_dims_text(want)}"
                        f"{_binding_text(want, self.args, bound)} per sample, "
                        f"but receives {shape_text(t)}",
                        loc(use_span),
                        notes=where,
                    )
            if inp.dtype is not None and t.dtype != self._dtype(inp):
                raise SpecTypeError(
                    f"`{name}` expects `{inp.name}` of dtype {inp.dtype}, got "
                    f"{dtype_name(t.dtype)}",
                    loc(use_span),
                    notes=where,
                )

    # ---- execution -------------------------------------------------------------------
    def execute(self, inputs: list[Any], use_span: ir.Span | None = None) -> Any:
        """Run the forward on meta values; the first run records the checked instance."""
        fwd = self.mdef.forward
        assert fwd is not None
        record = self.instance is None
        sig = _sig(list(inputs)) if self.ck.pure(self.mdef.name) else None
        if not record and sig is not None and sig in self.results:
            return _rebuild(self.results[sig])
        if use_span is not None or not fwd.inputs:
            self.bind_inputs(inputs, use_span)
        env: dict[str, Any] = {}
        values: dict[str, ir.Value] = {}
        resolved: list[ir.FNode] = []
        outputs: list[Any] = []
        it = iter(inputs)
        for node in fwd.nodes:
            if node.op == "input":
                out = next(it)
            else:
                args = [self.arg(a, env) for a in node.args]
                kwargs = {k: self.arg(v, env) for k, v in node.kwargs.items()}
                if node.op == "output":
                    outputs = args
                    if record:
                        resolved.append(self.fold(node))
                    continue
                out = self.step(node, args, kwargs)
            env[node.name] = out
            if record:
                values[node.name] = value_of(out)
                resolved.append(self.fold(node))
        result = outputs[0] if len(outputs) == 1 else tuple(outputs)
        if record:
            self.finish(inputs, resolved, values, outputs)
        if sig is not None and (described := _describe(result)) is not None:
            self.results[sig] = described
        return result

    def arg(self, e: ir.Expr, env: dict[str, Any]) -> Any:
        def other(x: ir.Expr) -> Any:
            if isinstance(x, ir.Ref):
                v = env[x.node]
                if x.index is None:
                    return v
                try:
                    return v[x.index]
                except (IndexError, TypeError, KeyError):
                    raise SpecTypeError(
                        f"cannot unpack {shape_text(v)} into that many names", loc(x.span)
                    ) from None
            raise SpecTypeError("unexpected expression here", loc(getattr(x, "span", None)))

        return evaluate(e, self.names, on_other=other)

    def fold(self, node: ir.FNode) -> ir.FNode:
        """The node with parameter names replaced by their literal values."""

        def sub(e: ir.Expr) -> ir.Expr:
            if isinstance(e, ir.Ref):
                return e
            if isinstance(e, (ir.ListExpr, ir.TupleExpr)):
                return e.model_copy(update={"items": [sub(i) for i in e.items]})
            if isinstance(e, ir.SliceExpr):
                return e.model_copy(
                    update={
                        k: None if getattr(e, k) is None else sub(getattr(e, k))
                        for k in ("start", "stop", "step")
                    }
                )
            return to_expr(evaluate(e, self.names))

        return node.model_copy(
            update={
                "args": [sub(a) for a in node.args],
                "kwargs": {k: sub(v) for k, v in node.kwargs.items()},
            }
        )

    def step(self, node: ir.FNode, args: list[Any], kwargs: dict[str, Any]) -> Any:
        if node.op == "alias":
            return args[0]
        key: Any = None
        if node.op == "layer":
            built = self.layer(node, args)
            self.verify(node, built, args)
            fn = built.module
            if built.key is not None:
                key = ("layer", built.key, _sig(args), _sig(kwargs))
        elif node.op in ("function", "method", "operator", "getitem") and not (
            node.op == "method" and node.target.endswith("_")  # in-place: not a pure function
        ):
            key = (node.op, node.target, _sig(args), _sig(kwargs))
        if key is not None and None not in key:
            hit = self.ck.cache.get(key)
            if hit is not None:
                out = _rebuild(hit)
                if node.op == "layer" and node.target not in self.first_out:
                    self.first_out[node.target] = value_of(out)
                return out
        else:
            key = None
        if node.op == "layer":
            pass  # fn is the built layer
        elif node.op == "function":
            try:
                fn = function_by_qualname(node.target)
            except KeyError:
                raise SpecNameError(
                    f"`{node.target}` is not a tensor operation a forward may call",
                    loc(node.span),
                ) from None
            if "device" in kwargs:  # checking never leaves meta, whatever device is named
                kwargs = {**kwargs, "device": "meta"}
        elif node.op == "method":
            recv, args = args[0], args[1:]
            fn = getattr(recv, node.target, None)
            if fn is None:
                raise SpecTypeError(
                    f"{shape_text(recv)} has no method `{node.target}`", loc(node.span)
                )
        elif node.op == "operator":
            fn = operator.neg if node.target == "neg" else BINOPS[node.target]
        elif node.op == "getitem":
            fn = operator.getitem
        elif node.op == "attribute":
            recv = args[0]
            try:
                return getattr(recv, node.target)
            except AttributeError:
                raise SpecTypeError(
                    f"{shape_text(recv)} has no attribute `{node.target}`", loc(node.span)
                ) from None
        else:  # pragma: no cover - resolve_names leaves no other op
            raise SpecTypeError(f"cannot evaluate `{node.target}`", loc(node.span))
        try:
            if node.op == "function":  # factories (zeros, arange...) make meta tensors too
                with torch.device("meta"):
                    out = fn(*args, **kwargs)
            else:  # layers run as built: a plugin may fall back to real tensors on the CPU
                out = fn(*args, **kwargs)
            if key is not None:
                described = _describe(out)
                if described is not None:
                    self.ck.cache[key] = described
        except SpecError:
            raise
        except Exception as exc:  # torch reports shape errors in many exception types
            shapes = ", ".join(shape_text(a) for a in args if isinstance(a, torch.Tensor))
            what = self.ck.snippet(node.span)
            if (
                node.op == "operator"
                and len(args) == 2
                and all(isinstance(a, torch.Tensor) for a in args)
            ):
                a, b = args
                if node.target == "matmul":
                    inner = (a.shape[-1], b.shape[-2] if b.dim() > 1 else b.shape[-1])
                    reason = f"inner dimensions {inner[0]} and {inner[1]} differ"
                else:
                    reason = "the shapes do not broadcast"
                raise SpecShapeError(
                    f"`{what}`: cannot combine {shape_text(a)} {_SYMBOL[node.target]} "
                    f"{shape_text(b)}: {reason}",
                    loc(node.span),
                ) from None
            raise SpecShapeError(
                f"`{what}` fails on input {shapes or 'values'}: {_first_line(exc)}",
                loc(node.span),
            ) from None
        if node.op == "layer" and node.target not in self.first_out:
            self.first_out[node.target] = value_of(out)
        return out

    def verify(self, node: ir.FNode, built: _Built, args: list[Any]) -> None:
        """Explain a layer/input size mismatch in spec terms before torch does."""
        if not args or not isinstance(args[0], torch.Tensor):
            return
        x = args[0]
        for pname, value, dim in built.checks:
            if x.dim() < (dim + 1 if dim >= 0 else -dim):
                continue
            if pname == "normalized_shape":
                want = tuple(value) if isinstance(value, (list, tuple)) else (value,)
                got = tuple(x.shape[-len(want) :])
                if want == got:
                    continue
            else:
                got = x.shape[dim]
                if got == value:
                    continue
            layer = self.decl[node.target]
            ctor_text = self.ck.snippet(layer.ctor.span)
            hint = None
            if isinstance(layer.ctor, ir.Call) and layer.ctor.func not in ("Sequential", "repeat"):
                hint = f"write `_` to infer it: {_with_hole(layer.ctor, pname, self.ck)}"
            raise SpecShapeError(
                f"`{layer.name}` = {ctor_text} expects {value} {HOLE_WORDS[pname]} "
                f"but receives {got} (input shape {shape_text(x)})",
                loc(layer.ctor.span),
                hint=hint,
                notes=[(f"called here: {self.ck.snippet(node.span)}", loc(node.span))],
            )

    # ---- layers ----------------------------------------------------------------------
    def layer(self, node: ir.FNode, args: list[Any]) -> _Built:
        name = node.target
        if name not in self.built:
            layer = self.decl[name]
            self.built[name] = self.make(layer.ctor, args, node.span, layer)
        return self.built[name]

    def make(
        self, e: ir.Expr, incoming: list[Any] | None, use: ir.Span | None, layer: ir.Layer
    ) -> _Built:
        """Construct a layer expression on meta, filling holes from `incoming`; refuse sizes
        no machine could hold before anything real is allocated."""
        built = self._make(e, incoming, use, layer)
        if built.params * 4 > MAX_PARAM_BYTES:
            raise SpecShapeError(
                f"`{self.ck.snippet(e.span)}` would hold {built.params:,} parameters "
                f"(about {_bytes_text(built.params * 4)} in float32)",
                loc(e.span),
                hint=f"specc refuses models over {_bytes_text(MAX_PARAM_BYTES)} of parameters; "
                "is a size off by a few zeros?",
            )
        return built

    def _make(
        self, e: ir.Expr, incoming: list[Any] | None, use: ir.Span | None, layer: ir.Layer
    ) -> _Built:
        if not isinstance(e, ir.Call):
            raise SpecTypeError("a layer must be a constructor call", loc(getattr(e, "span", None)))
        kind, obj = self.ck.reg.layer(e.func) or (None, None)
        if kind == "builtin" and e.func == "Sequential":
            return self.make_sequential(e, incoming, use, layer)
        if kind == "builtin" and e.func == "repeat":
            return self.make_repeat(e, incoming, use, layer)
        if kind == "model":
            return self.make_model(e, incoming, use)
        return self.make_torch(e, obj, incoming, plugin=kind == "plugin")

    def make_sequential(self, e: ir.Call, incoming, use, layer) -> _Built:
        if e.kwargs:
            raise SpecTypeError("Sequential takes only layers", loc(e.span))
        items, mods, params = [], [], 0
        cur = incoming
        for a in e.args:
            b = self.make(a, cur, use, layer)
            items.append(b.ctor)
            mods.append(b)
            params += b.params
            if cur is not None:
                cur = [self.call_built(b, cur, a)]
        module = _Chain(mods)
        ctor = ir.SequentialCtor(items=items, span=e.span)
        return _Built(ctor, module, params, "Sequential", [])

    def make_repeat(self, e: ir.Call, incoming, use, layer) -> _Built:
        if len(e.args) != 2 or e.kwargs:
            raise SpecTypeError(
                "repeat takes a count and a layer: repeat(3, Block(64))", loc(e.span)
            )
        count = evaluate(e.args[0], self.names)
        if not isinstance(count, int) or isinstance(count, bool) or count < 1:
            raise SpecTypeError(
                f"repeat count must be a positive integer, got {count!r}", loc(e.args[0].span)
            )
        distinct: list[_Built] = []
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
        last = distinct[-1]
        params = sum(b.params for b in distinct) + (count - len(distinct)) * last.params
        if count > MAX_REPEAT:
            raise SpecShapeError(
                f"repeat({count:,}, ...) would create {count:,} modules "
                f"({params:,} parameters, about {_bytes_text(params * 4)} in float32)",
                loc(e.span),
                hint=f"specc builds at most {MAX_REPEAT:,} repeated instances",
            )
        ctor = ir.RepeatCtor(count=count, items=[b.ctor for b in distinct], span=e.span)
        module = _Chain(distinct)
        inner = distinct[0].type_name
        return _Built(ctor, module, params, f"{inner} x{count}", [])

    def make_model(self, e: ir.Call, incoming, use) -> _Built:
        mdef = self.ck.program.model(e.func)
        assert mdef is not None
        args = bind_model_args(
            mdef,
            [evaluate(a, self.names) for a in e.args],
            {k: evaluate(v, self.names) for k, v in e.kwargs.items()},
            e.span,
        )
        if self.ck.depth > 64:
            raise SpecTypeError(f"`{e.func}` uses itself (recursion too deep)", loc(e.span))
        if incoming is None:
            raise SpecShapeError(
                f"`{e.func}` is never called, so its input shape is unknown", loc(e.span)
            )
        key = (mdef.name, _sig(args), _sig(list(incoming)))
        child = self.ck.instances.get(key) if None not in key else None
        if child is None:
            child = _Instance(self.ck, mdef, args)
            self.ck.depth += 1
            try:
                child.execute(incoming, use)
            finally:
                self.ck.depth -= 1
            if None not in key:
                self.ck.instances[key] = child
        inst = child.instance
        assert inst is not None
        return _Built(
            ir.ModelCtor(instance=inst, span=e.span), _ChildCall(child), inst.params, mdef.name, []
        )

    def make_torch(self, e: ir.Call, cls: type, incoming, plugin: bool = False) -> _Built:
        names, var_pos, var_kw = accepts(cls)
        x = incoming[0] if incoming else None
        holes: dict[int, Any] = {}

        def fill(arg: ir.Expr, pname: str | None) -> Any:
            if isinstance(arg, ir.Hole):
                if pname not in HOLE_DIMS:
                    raise SpecTypeError(
                        f"cannot infer `_` for {e.func}'s argument `{pname or '?'}`",
                        loc(arg.span),
                        hint="write the value; `_` works for input sizes "
                        "(in_features, in_channels, num_features, ...)",
                    )
                if not isinstance(x, torch.Tensor):
                    raise SpecShapeError(
                        f"`_` in {e.func}(...) needs the layer's input shape, but the layer "
                        "is never called in forward",
                        loc(arg.span),
                    )
                dim = HOLE_DIMS[pname]
                if x.dim() < (dim + 1 if dim >= 0 else -dim):
                    raise SpecShapeError(
                        f"cannot infer `{pname}` of {e.func} from input {shape_text(x)}",
                        loc(arg.span),
                    )
                value = int(x.shape[dim])
                holes[arg.id] = value
                return value
            return evaluate(arg, self.names, on_other=lambda o: _no_hole(o, e.func))

        if len(e.args) > len(names) and not var_pos:
            raise SpecTypeError(
                f"{e.func} takes at most {len(names)} positional arguments, got {len(e.args)}",
                loc(e.span),
                hint=f"its parameters: {', '.join(names)}",
            )
        args = [fill(a, names[i] if i < len(names) else None) for i, a in enumerate(e.args)]
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
            kwargs[k] = fill(v, k)
        cache_key = None if plugin else f"{qualname(cls)}:{_sig(args)}:{_sig(kwargs)}"
        cached = self.ck.modules.get(cache_key) if cache_key and None not in (
            _sig(args), _sig(kwargs)) else None  # fmt: skip
        try:
            if cached is not None:
                module = cached  # same class, same arguments: one meta instance serves all
            else:
                with torch.device("meta"):
                    module = cls(*args, **kwargs)
                if cache_key:
                    self.ck.modules[cache_key] = module
        except Exception as exc:  # torch validates arguments with several exception types
            if plugin:  # plugin code may not support meta: fall back to a real instance
                try:
                    module = cls(*args, **kwargs)
                except Exception as exc2:
                    raise SpecTypeError(
                        f"{e.func}({_args_text(args, kwargs)}) failed: {_first_line(exc2)}",
                        loc(e.span),
                    ) from None
                return self._plugin_built(e, cls, module, args, kwargs, holes)
            raise SpecTypeError(
                f"{e.func}({_args_text(args, kwargs)}) is invalid: {_first_line(exc)}", loc(e.span)
            ) from None
        if plugin:
            return self._plugin_built(e, cls, module, args, kwargs, holes)
        self.holes.update(holes)
        bound = dict(zip(names, args, strict=False)) | kwargs
        checks = [
            (p, bound[p], HOLE_DIMS[p])
            for p in bound
            if p in HOLE_DIMS and isinstance(bound[p], (int, list, tuple))
        ]
        params = sum(p.numel() for p in module.parameters())
        ctor = ir.TorchCtor(
            cls=qualname(cls),
            args=[to_expr(a) for a in args],
            kwargs={k: to_expr(v) for k, v in kwargs.items()},
            span=e.span,
        )
        key = f"{qualname(cls)}:{ctor.model_dump_json(exclude={'span'})}"
        return _Built(ctor, module, params, cls.__name__, checks, key)

    def _plugin_built(self, e, cls, module, args, kwargs, holes) -> _Built:
        """A plugin layer is a black box: run it on meta tensors, or, when its code does not
        support meta, a real instance on tiny zero tensors of the same shapes."""
        self.holes.update(holes)
        params = sum(p.numel() for p in module.parameters())
        ctor = ir.TorchCtor(
            cls=qualname(cls),
            args=[to_expr(a) for a in args],
            kwargs={k: to_expr(v) for k, v in kwargs.items()},
            span=e.span,
        )
        return _Built(ctor, _BlackBox(cls, module, args, kwargs), params, cls.__name__, [])

    def call_built(self, b: _Built, inputs: list[Any], e: ir.Expr) -> Any:
        try:
            return b.module(*inputs)
        except SpecError:
            raise
        except Exception as exc:
            raise SpecShapeError(
                f"`{self.ck.snippet(e.span)}` fails on input "
                f"{', '.join(shape_text(i) for i in inputs)}: {_first_line(exc)}",
                loc(e.span),
            ) from None

    def finish(self, inputs, nodes, values, outputs) -> None:
        layers = []
        for layer in self.mdef.layers:
            if layer.name not in self.built:
                # Never called: build it without an input (holes then fail clearly).
                self.built[layer.name] = self.make(layer.ctor, None, None, layer)
            b = self.built[layer.name]
            layers.append(
                ir.LayerInstance(
                    name=layer.name,
                    ctor=b.ctor,
                    type_name=b.type_name,
                    out=self.first_out.get(layer.name),
                    params=b.params,
                    trainable=b.params,
                    span=layer.span,
                )
            )
        total = sum(x.params for x in layers)
        if total * 4 > MAX_PARAM_BYTES:
            raise SpecShapeError(
                f"`{self.mdef.name}` would hold {total:,} parameters "
                f"(about {_bytes_text(total * 4)} in float32)",
                loc(self.mdef.span),
                hint=f"specc refuses models over {_bytes_text(MAX_PARAM_BYTES)} of parameters",
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
            trainable=total,
        )


class _Chain:
    """Meta-time stand-in for nn.Sequential over built items."""

    def __init__(self, items: list[_Built]) -> None:
        self.items = items

    def __call__(self, x: Any) -> Any:
        for b in self.items:
            x = b.module(x)
        return x


class _BlackBox:
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


class _ChildCall:
    def __init__(self, child: _Instance) -> None:
        self.child = child

    def __call__(self, *xs: Any) -> Any:
        return self.child.execute(list(xs), use_span=None)


def _input_tensor(
    name: str, dims: list[int], dtype: torch.dtype, span: ir.Span | None
) -> torch.Tensor:
    """A batched meta tensor for a declared input, refusing sizes no machine could hold (and
    that overflow torch's size arithmetic) with an estimate."""
    if any(d < 0 for d in dims):
        raise SpecShapeError(
            f"input `{name}` has a negative dimension: {_dims_text(dims)}", loc(span)
        )
    numel = 1
    for d in dims:
        numel *= d
    hint = (
        f"specc refuses inputs over {_bytes_text(MAX_INPUT_BYTES)} per sample; "
        "is a size off by a few zeros?"
    )
    if numel * dtype.itemsize > MAX_INPUT_BYTES:
        raise SpecShapeError(
            f"input `{name}` of shape {_dims_text(dims)} would hold {numel:,} values per "
            f"sample (about {_bytes_text(numel * dtype.itemsize)} in {dtype_name(dtype)})",
            loc(span),
            hint=hint,
        )
    biggest = max(dims, default=0)  # an empty input (a 0 elsewhere) with an absurd size
    if biggest * dtype.itemsize > MAX_INPUT_BYTES:
        raise SpecShapeError(
            f"input `{name}` of shape {_dims_text(dims)} has a dimension of {biggest:,} "
            f"(about {_bytes_text(biggest * dtype.itemsize)} in {dtype_name(dtype)} alone)",
            loc(span),
            hint=hint,
        )
    return torch.empty((BATCH, *dims), dtype=dtype, device="meta")


def _bytes_text(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB", "PB"):
        if n < 1000 or unit == "PB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1000
    return f"{n} B"  # pragma: no cover


def _sig(v: Any) -> Any:
    """A hashable description of an argument for the shape cache (None: do not cache)."""
    if isinstance(v, torch.Tensor):
        return ("T", tuple(v.shape), v.stride(), v.dtype)
    if isinstance(v, (list, tuple)):
        items = tuple(_sig(i) for i in v)
        return None if None in items else (type(v).__name__, items)
    if isinstance(v, dict):
        items = tuple((k, _sig(x)) for k, x in sorted(v.items()))
        return None if any(x is None for _, x in items) else ("D", items)
    if isinstance(v, slice):
        return ("S", _sig(v.start), _sig(v.stop), _sig(v.step))
    if v is None or v is Ellipsis or isinstance(v, (bool, int, float, str, torch.dtype)):
        return (type(v).__name__, v)
    return None


def _describe(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return ("T", tuple(out.shape), out.stride(), out.dtype)
    if isinstance(out, (list, tuple)) and not isinstance(out, torch.Size):
        items = [_describe(i) for i in out]
        return None if any(i is None for i in items) else (type(out), items)
    if out is None or isinstance(out, (bool, int, float, str, torch.Size)):
        return ("V", out)
    return None


def _rebuild(d: Any) -> Any:
    if d[0] == "T":
        return torch.empty_strided(d[1], d[2], dtype=d[3], device="meta")
    if d[0] == "V":
        return d[1]
    return d[0](_rebuild(i) for i in d[1])


def _calls(e: Any) -> list[str]:
    """Constructor names in a layer expression, nested ones (Sequential, repeat) included."""
    if not isinstance(e, ir.Call):
        return []
    return [e.func, *(c for a in [*e.args, *e.kwargs.values()] for c in _calls(a))]


def _same_shapes(a: Any, b: Any) -> bool:
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
    )


def _no_hole(o: ir.Expr, func: str) -> Any:
    if isinstance(o, ir.Hole):
        raise SpecTypeError(f"`_` must be a whole argument of {func}(...)", loc(o.span))
    raise SpecTypeError("expected a constant here", loc(getattr(o, "span", None)))


def _args_text(args: list[Any], kwargs: dict[str, Any]) -> str:
    return ", ".join([*map(repr, args), *(f"{k}={v!r}" for k, v in kwargs.items())])


def _dims_text(dims: list[Any]) -> str:
    return "[" + ", ".join(str(d) for d in dims) + "]"


def _binding_text(dims: list[Any], args: dict[str, Any], bound: dict[str, int]) -> str:
    known = {**args, **bound}
    parts = [f"{d}={known[d]}" for d in dims if isinstance(d, str) and d in known]
    return f" (with {', '.join(parts)})" if parts else ""


def _with_hole(call: ir.Call, pname: str, ck: Checker) -> str:
    """The constructor text with the argument for `pname` replaced by `_`."""
    from specc.registry import nn_classes

    cls = nn_classes().get(call.func)
    names = accepts(cls)[0] if cls else []
    parts = []
    for i, a in enumerate(call.args):
        parts.append("_" if i < len(names) and names[i] == pname else ck.snippet(a.span))
    for k, v in call.kwargs.items():
        parts.append(f"{k}=_" if k == pname else f"{k}={ck.snippet(v.span)}")
    return f"{call.func}({', '.join(parts)})"


def bind_model_args(
    mdef: ir.ModelDef, args: list[Any], kwargs: dict[str, Any], span: ir.Span | None
) -> dict[str, Any]:
    """Bind a model's parameters like a Python call would, checking declared types."""
    params = mdef.params
    names = [p.name for p in params]
    if len(args) > len(params):
        raise SpecTypeError(
            f"`{mdef.name}` takes {len(params)} argument(s), got {len(args)}",
            loc(span),
            notes=[("defined here", loc(mdef.span))],
        )
    bound = dict(zip(names, args, strict=False))
    for k, v in kwargs.items():
        if k not in names:
            raise SpecTypeError(
                f"`{mdef.name}` has no parameter `{k}`", loc(span), hint=did_you_mean(k, names)
            )
        if k in bound:
            raise SpecTypeError(f"`{mdef.name}` got `{k}` twice", loc(span))
        bound[k] = v
    for p in params:
        if p.name not in bound:
            if p.default is None:
                raise SpecTypeError(
                    f"`{mdef.name}` needs a value for `{p.name}`",
                    loc(span),
                    notes=[("parameter declared here", loc(p.span))],
                )
            bound[p.name] = evaluate(p.default, bound)
        if not type_ok(bound[p.name], p.type):
            raise SpecTypeError(
                f"`{mdef.name}` parameter `{p.name}` is declared {p.type} but got "
                f"{bound[p.name]!r}",
                loc(span),
                notes=[("declared here", loc(p.span))],
            )
    return {n: bound[n] for n in names}


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
    from specc.passes import _registry

    texts = {s.path: s.text for s in program.sources}
    try:
        mdef = program.model(name) if name else default_model(program)
        if mdef is None:
            raise UsageError(
                f"no model named `{name}` in the spec",
                hint=did_you_mean(name or "", [m.name for m in program.models]),
            )
        ck = Checker(program, _registry(program))
        bound = bind_model_args(mdef, [], args or {}, mdef.span)
        inst = _Instance(ck, mdef, bound)
        xs = inst.declared_inputs(inputs)
        inst.execute(xs)
        assert inst.instance is not None
        return inst.instance
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


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())
