"""Stage 3b: shape inference. IR Program -> checked ``ModelInstance``.

Every layer is constructed on the ``meta`` device and every forward step runs on meta
tensors: real torch semantics, no real allocation, so a 20-billion-parameter model checks
in milliseconds. `_` arguments are filled from the shape a layer actually receives, at its
first call. Torch's own errors are caught here and reported at the spec line that caused
them.
"""

from __future__ import annotations

import functools
import itertools
import math
import operator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from specc import ir
from specc.errors import SpecError, SpecNameError, SpecShapeError, SpecTypeError, did_you_mean
from specc.lang.loader import source_texts
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
        self.texts = source_texts(program)
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
            layers = mdef.layers if mdef else []
            used = [c.func for layer in layers for c in layer.ctor.find_all(ir.Call)]
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
            if isinstance(e, (ir.Ref, ir.ListExpr, ir.TupleExpr, ir.SliceExpr)):
                return e  # its parts are folded already
            return to_expr(evaluate(e, self.names))

        return node.model_copy(
            update={
                "args": [a.map(sub) for a in node.args],
                "kwargs": {k: v.map(sub) for k, v in node.kwargs.items()},
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
            fn = _meta_function(node.target, fn)
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
            fn = _meta_operator(node.target, fn)
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
        return _Built(ctor, _meta_forward(module), params, cls.__name__, checks, key)

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


# ---- shape rules -------------------------------------------------------------------------
# Torch's meta kernels for most layers and operators (addmm, convolution, pooling, batch and
# group norm, dropout, pointwise and broadcasting ops) are Python decompositions whose first
# call imports sympy and torch._dynamo: about 1 s of every cold check. A shape rule computes
# the output shape of the common calls of the layers and functions real specs use. A rule
# answers only for a call it fully understands and returns None for anything else (another
# rank, channel count or dtype, an odd argument, an in-place call...): the real op then runs,
# so torch still decides and reports errors. tests/test_shape_rules.py compares each rule
# with torch.

SHAPE_RULES = True  # False: every call runs torch's own meta kernel (tests compare the two)

Shape = tuple[int, ...]


def _meta_forward(module: Any) -> Any:
    """What runs a torch layer at check time: the module, or its shape rule (`_ShapeRule`)."""
    rule = _LAYER_RULES.get(type(module)) if SHAPE_RULES else None
    return module if rule is None else _ShapeRule(module, functools.partial(rule, module))


def _meta_function(qualname: str, fn: Any) -> Any:
    """What runs a function at check time: the function, or its shape rule (`_ShapeRule`)."""
    rule = _FUNCTION_RULES.get(qualname) if SHAPE_RULES else None
    return fn if rule is None else _ShapeRule(fn, rule)


def _meta_operator(op: str, fn: Any) -> Any:
    """What runs a binary operator (`x + y`) at check time: `fn`, or its shape rule."""
    return _ShapeRule(fn, _elementwise) if SHAPE_RULES and op in _OPERATOR_RULES else fn


class _ShapeRule:
    """A layer, function or operator on meta by its shape rule, where the rule covers the call.

    The rule takes the call's arguments (its signature mirrors torch's) and returns the output
    shape, or None: not covered. It is asked only when every tensor argument is a contiguous
    floating-point meta tensor of one dtype; the output is a new contiguous tensor of that
    dtype, as torch's is for such inputs.
    """

    def __init__(self, real: Any, rule: Any) -> None:
        self.real = real
        self.rule = rule

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        tensors = [
            t
            for a in (*args, *kwargs.values())
            for t in (a if isinstance(a, (list, tuple)) else (a,))  # cat's list of tensors
            if isinstance(t, torch.Tensor)
        ]
        if tensors and all(_plain(t, tensors[0].dtype) for t in tensors):
            try:
                shape = self.rule(*args, **kwargs)
            except Exception:  # arguments the rule cannot read (a bad call): torch says why
                shape = None
            if shape is not None:
                return tensors[0].new_empty(shape)
        return self.real(*args, **kwargs)


def _plain(t: torch.Tensor, dtype: torch.dtype) -> bool:
    return t.is_meta and t.dtype == dtype and t.is_floating_point() and t.is_contiguous()


def _int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _number(v: Any) -> bool:  # a Python scalar torch takes as is (a huge int overflows)
    return isinstance(v, float) or (_int(v) and -(2**63) <= v < 2**63)


def _ints(v: Any, n: int) -> tuple[int, ...] | None:
    """An int-or-tuple argument (kernel_size, stride...) as n ints, None for anything else."""
    if _int(v):
        return (v,) * n
    if isinstance(v, (tuple, list)) and len(v) == n and all(_int(i) for i in v):
        return tuple(v)
    return None


def _same_dtype(m: nn.Module, x: torch.Tensor) -> bool:
    """Do the layer's parameters and buffers have the input's dtype (no mixed-dtype calls)?"""
    tensors = [*m.parameters(recurse=False), *m.buffers(recurse=False)]
    return all(t.dtype == x.dtype for t in tensors if t.is_floating_point())


# -- pointwise: the input's shape --------------------------------------------------------


def _pointwise(input: torch.Tensor, inplace: Any = False) -> Shape | None:
    return tuple(input.shape) if inplace is False else None


def _pointwise_only(input: torch.Tensor) -> Shape:
    return tuple(input.shape)


def _leaky_relu(input: torch.Tensor, negative_slope: Any = 0.01, inplace: Any = False) -> Any:
    return _pointwise(input, inplace) if _number(negative_slope) else None


def _elu(input: torch.Tensor, alpha: Any = 1.0, inplace: Any = False) -> Any:
    return _pointwise(input, inplace) if _number(alpha) else None


def _gelu(input: torch.Tensor, *, approximate: Any = "none") -> Shape | None:
    return tuple(input.shape) if approximate in ("none", "tanh") else None


def _softmax(
    input: torch.Tensor, dim: Any = None, _stacklevel: Any = 3, dtype: Any = None
) -> Shape | None:
    """softmax/log_softmax along a given dim (no dim: torch warns and picks one)."""
    n = max(input.dim(), 1)
    ok = _int(dim) and -n <= dim < n and dtype is None
    return tuple(input.shape) if ok else None


def _dropout(input: torch.Tensor, p: Any = 0.5, training: Any = True, inplace: Any = False) -> Any:
    """Training-mode dropout; p == 0, eval mode and empty inputs return the input itself."""
    ok = _number(p) and 0 < p <= 1 and training is True and inplace is False
    return tuple(input.shape) if ok and input.numel() > 0 else None


def _dropout_layer(m: Any, x: torch.Tensor, ranks: tuple[int, ...] | None = None) -> Any:
    # Dropout1d/2d/3d check (or warn about) the rank themselves: only their own ranks here.
    ok = ranks is None or x.dim() in ranks
    return _dropout(x, m.p, m.training, m.inplace) if ok else None


def _activation(m: nn.Module, x: torch.Tensor, numbers: tuple[str, ...] = ()) -> Shape | None:
    ok = not getattr(m, "inplace", False) and all(_number(getattr(m, a)) for a in numbers)
    return tuple(x.shape) if ok else None


# -- layers with weights -----------------------------------------------------------------


def _linear(m: nn.Linear, x: torch.Tensor) -> Shape | None:
    ok = x.dim() >= 1 and x.shape[-1] == m.in_features and _same_dtype(m, x)
    return (*x.shape[:-1], m.out_features) if ok else None


def _conv(m: Any, x: torch.Tensor) -> Shape | None:
    """Conv1d/2d/3d, batched or not: per spatial size L, padded by (lo, hi),
    out = (L + lo + hi - dilation * (kernel - 1) - 1) // stride + 1, at least 1."""
    nd = len(m.kernel_size)
    if x.dim() not in (nd + 1, nd + 2) or 0 in x.shape or x.shape[-nd - 1] != m.in_channels:
        return None
    if not _same_dtype(m, x):
        return None
    out = []
    for i, size in enumerate(x.shape[-nd:]):
        k, s, d = m.kernel_size[i], m.stride[i], m.dilation[i]
        if m.padding == "same":  # d * (k - 1) in all, the odd one after
            lo = d * (k - 1) // 2
            hi = d * (k - 1) - lo
        else:
            lo = hi = 0 if m.padding == "valid" else m.padding[i]
        if (m.padding_mode == "reflect" and max(lo, hi) >= size) or (
            m.padding_mode == "circular" and max(lo, hi) > size
        ):
            return None  # F.pad refuses these: torch reports it
        span = size + lo + hi - d * (k - 1)
        if span < 1:
            return None
        out.append((span - 1) // s + 1)
    return (*x.shape[: -nd - 1], m.out_channels, *out)


def _batch_norm(m: Any, x: torch.Tensor, ranks: tuple[int, ...]) -> Shape | None:
    if x.dim() not in ranks or 0 in x.shape or x.shape[1] != m.num_features:
        return None
    # Batch statistics (training, or eval without running stats) need more than one value
    # per channel; eps must be positive (torch takes 0 in eval); momentum=None reads the meta
    # step counter, which fails.
    batch_stats = m.training or m.running_mean is None
    if batch_stats and x.numel() // x.shape[1] < 2:
        return None
    ok = m.momentum is not None and m.eps > 0 and _same_dtype(m, x)
    return tuple(x.shape) if ok else None


def _layer_norm(m: nn.LayerNorm, x: torch.Tensor) -> Shape | None:
    n = len(m.normalized_shape)
    ok = 1 <= n <= x.dim() and tuple(x.shape[x.dim() - n :]) == tuple(m.normalized_shape)
    return tuple(x.shape) if ok and _same_dtype(m, x) else None


def _group_norm(m: nn.GroupNorm, x: torch.Tensor) -> Shape | None:
    if x.dim() < 2 or 0 in x.shape or x.shape[1] != m.num_channels:
        return None
    # F.group_norm wants more than one value per group (_verify_batch_size).
    per_group = x.shape[0] * x.shape[1] // m.num_groups * math.prod(x.shape[2:])
    return tuple(x.shape) if per_group > 1 and _same_dtype(m, x) else None


# -- pooling -------------------------------------------------------------------------------


def _pool(
    x: torch.Tensor,
    nd: int,
    kernel_size: Any,
    stride: Any,
    padding: Any,
    dilation: Any,
    ceil_mode: Any,
    whole_kernel: bool = False,
) -> Shape | None:
    """Max and average pooling, batched or not, by torch's pooling_output_shape: per spatial
    size L, out = (L + 2 * pad - dilation * (kernel - 1) - 1) / stride + 1, rounded down, or
    up where ceil_mode is set and the last window starts inside the input or left padding.
    `whole_kernel`: each input size must hold a kernel, padding aside (avg_pool3d)."""
    if stride is None or (isinstance(stride, (tuple, list)) and not stride):
        stride = kernel_size  # no stride (None, []): the kernel size
    k, s, p, d = (_ints(v, nd) for v in (kernel_size, stride, padding, dilation))
    if None in (k, s, p, d) or not isinstance(ceil_mode, bool):
        return None
    if x.dim() not in (nd + 1, nd + 2) or 0 in x.shape:
        return None
    out = []
    for size, ki, si, pi, di in zip(x.shape[-nd:], k, s, p, d, strict=True):
        # torch allows padding up to half the (dilated, for max_pool1d) kernel: stricter here
        if min(ki, si, di) < 1 or not 0 <= pi <= ki // 2 or (whole_kernel and size < ki):
            return None
        n = (size + 2 * pi - di * (ki - 1) - 1 + (si - 1 if ceil_mode else 0)) // si + 1
        if ceil_mode and (n - 1) * si >= size + pi:
            n -= 1
        if n < 1:
            return None
        out.append(n)
    return (*x.shape[:-nd], *out)


def _max_pool(
    nd: int,
    input: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    dilation: Any = 1,
    ceil_mode: Any = False,
    return_indices: Any = False,
) -> Shape | None:
    if return_indices is not False:
        return None
    return _pool(input, nd, kernel_size, stride, padding, dilation, ceil_mode)


def _avg_pool(
    nd: int,
    input: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: Any = False,
    count_include_pad: Any = True,
    divisor_override: Any = None,
) -> Shape | None:
    if not isinstance(count_include_pad, bool) or not (
        divisor_override is None or (_int(divisor_override) and divisor_override != 0)
    ):
        return None
    return _pool(input, nd, kernel_size, stride, padding, 1, ceil_mode, whole_kernel=nd == 3)


def _avg_pool1d(
    input: torch.Tensor,
    kernel_size: Any,
    stride: Any = None,
    padding: Any = 0,
    ceil_mode: Any = False,
    count_include_pad: Any = True,
) -> Shape | None:  # avg_pool1d takes no divisor_override
    return _avg_pool(1, input, kernel_size, stride, padding, ceil_mode, count_include_pad)


def _adaptive_pool(nd: int, input: torch.Tensor, output_size: Any) -> Shape | None:
    """Adaptive pooling to output_size: an int, or nd entries where None keeps that input
    size (not in 1d)."""
    if input.dim() not in (nd + 1, nd + 2) or 0 in input.shape:
        return None
    sizes = (output_size,) * nd if _int(output_size) else output_size
    if not isinstance(sizes, (tuple, list)) or len(sizes) != nd:
        return None
    out = []
    for want, size in zip(sizes, input.shape[-nd:], strict=True):
        want = size if want is None and nd > 1 else want
        if not (_int(want) and want >= 1):
            return None
        out.append(want)
    return (*input.shape[:-nd], *out)


def _adaptive_max_pool(
    nd: int, input: torch.Tensor, output_size: Any, return_indices: Any = False
) -> Shape | None:
    return _adaptive_pool(nd, input, output_size) if return_indices is False else None


# -- binary operators --------------------------------------------------------------------


def _elementwise(a: Any, b: Any) -> Shape | None:
    """`x + y`, `x * 0.5`...: tensors broadcast (one dtype, checked by `_ShapeRule`); a Python
    int or float keeps the tensor's dtype."""
    shapes = []
    for v in (a, b):
        if isinstance(v, torch.Tensor):
            shapes.append(tuple(v.shape))
        elif not _number(v):
            return None
    out = []
    for dims in itertools.zip_longest(*(reversed(s) for s in shapes), fillvalue=1):
        sizes = {d for d in dims if d != 1}
        if len(sizes) > 1:
            return None  # these do not broadcast: torch says so
        out.append(sizes.pop() if sizes else 1)
    return tuple(reversed(out))


def _pool_layers(nd: int) -> dict[type, Any]:
    """Rules for the nd-dimensional pooling layers: their functional calls (AvgPool1d's
    has no divisor_override)."""
    avg = getattr(nn, f"AvgPool{nd}d")
    return {
        getattr(nn, f"MaxPool{nd}d"): lambda m, x: _max_pool(
            nd, x, m.kernel_size, m.stride, m.padding, m.dilation, m.ceil_mode, m.return_indices
        ),
        avg: lambda m, x: _avg_pool(
            nd,
            x,
            m.kernel_size,
            m.stride,
            m.padding,
            m.ceil_mode,
            m.count_include_pad,
            getattr(m, "divisor_override", None),
        ),  # fmt: skip
        getattr(nn, f"AdaptiveAvgPool{nd}d"): lambda m, x: _adaptive_pool(nd, x, m.output_size),
        getattr(nn, f"AdaptiveMaxPool{nd}d"): lambda m, x: _adaptive_max_pool(
            nd, x, m.output_size, m.return_indices
        ),
    }


def _cat(tensors: Any, dim: Any = 0, *, out: Any = None) -> Shape | None:
    """cat of same-rank tensors (one dtype) that agree on every dim but `dim`."""
    if out is not None or not isinstance(tensors, (list, tuple)) or not tensors:
        return None
    shapes = [tuple(t.shape) if isinstance(t, torch.Tensor) else None for t in tensors]
    n = len(shapes[0] or ())
    if None in shapes or not (_int(dim) and -n <= dim < n):
        return None
    d = dim % n
    rest = {s[:d] + s[d + 1 :] for s in shapes}
    if len(rest) != 1 or any(len(s) != n for s in shapes):
        return None
    return (*shapes[0][:d], sum(s[d] for s in shapes), *shapes[0][d + 1 :])


# Layer class -> rule(module, input). Each mirrors the layer's forward (its functional call
# with the layer's attributes); exact classes only, so a subclass with its own forward runs.
_LAYER_RULES: dict[type, Any] = {
    nn.Linear: _linear,
    nn.Conv1d: _conv,
    nn.Conv2d: _conv,
    nn.Conv3d: _conv,
    **_pool_layers(1),
    **_pool_layers(2),
    **_pool_layers(3),
    nn.BatchNorm1d: functools.partial(_batch_norm, ranks=(2, 3)),
    nn.BatchNorm2d: functools.partial(_batch_norm, ranks=(4,)),
    nn.BatchNorm3d: functools.partial(_batch_norm, ranks=(5,)),
    nn.LayerNorm: _layer_norm,
    nn.GroupNorm: _group_norm,
    nn.Dropout: _dropout_layer,
    nn.Dropout1d: functools.partial(_dropout_layer, ranks=(2, 3)),
    nn.Dropout2d: functools.partial(_dropout_layer, ranks=(4,)),
    nn.Dropout3d: functools.partial(_dropout_layer, ranks=(4, 5)),
    nn.ReLU: _activation,
    nn.ReLU6: _activation,
    nn.SiLU: _activation,
    nn.Mish: _activation,
    nn.Hardswish: _activation,
    nn.Tanh: _activation,
    nn.Sigmoid: _activation,
    nn.LeakyReLU: functools.partial(_activation, numbers=("negative_slope",)),
    nn.ELU: functools.partial(_activation, numbers=("alpha",)),
    nn.GELU: lambda m, x: _gelu(x, approximate=m.approximate),
    nn.Softmax: lambda m, x: _softmax(x, m.dim),
    nn.LogSoftmax: lambda m, x: _softmax(x, m.dim),
}

# Function qualname -> rule, called with the function's own arguments.
_FUNCTION_RULES: dict[str, Any] = {
    "torch.cat": _cat,
    **{
        f"torch.nn.functional.{name}": rule
        for rule, names in (
            (_pointwise, ("relu", "relu6", "silu", "mish", "hardswish")),
            (_pointwise_only, ("tanh", "sigmoid")),
            (_leaky_relu, ("leaky_relu",)),
            (_elu, ("elu",)),
            (_gelu, ("gelu",)),
            (_softmax, ("softmax", "log_softmax")),
            (_dropout, ("dropout",)),
            (_avg_pool1d, ("avg_pool1d",)),
            *(
                (functools.partial(make, nd), (f"{kind}{nd}d",))
                for nd in (1, 2, 3)
                for kind, make in (
                    ("max_pool", _max_pool),
                    ("avg_pool", _avg_pool),
                    ("adaptive_avg_pool", _adaptive_pool),
                    ("adaptive_max_pool", _adaptive_max_pool),
                )
                if (kind, nd) != ("avg_pool", 1)
            ),
        )
        for name in names
    },
}

_OPERATOR_RULES = frozenset({"add", "sub", "mul", "div"})


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
    numel = math.prod(dims)
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
