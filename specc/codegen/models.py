"""Model classes: the checked instance tree as one ``nn.Module`` class per model, with a
``forward`` that mirrors the spec's statements (templates `module.py.j2`, `model.py.j2`)."""

from __future__ import annotations

import dataclasses
import functools
import itertools
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

import jinja2

from specc import ir
from specc.codegen.layout import (
    BODY_INDENT,
    CLASS_INDENT,
    FUNCTION_MODULES,
    INDENT,
    PREC_ATOM,
    PREC_COMPARE,
    PREC_PRIMARY,
    Brackets,
    Chain,
    Comp,
    Doc,
    Text,
    attribute_of,
    binop,
    block,
    boolop,
    conditional,
    flat,
    layout,
    literal_doc,
    method_call,
    negate,
    not_,
    parens,
    statement,
    with_prefix,
)
from specc.codegen.naming import MODULE_NAMES, Namespace, check_attribute, check_identifier
from specc.errors import (
    SpecNameError,
    SpecTypeError,
)
from specc.graph import Args, GraphInterpreter, Kwargs, last_position, per_position_layers
from specc.lang.plugins import load_plugins, plugin_module_for
from specc.shapes.meta import tensor_dims
from specc.values import CONST_FUNCTION_CODE, CONST_FUNCTIONS, is_none, loc

if TYPE_CHECKING:
    from specc.training.plan import LanguageModel

# ---- templates ------------------------------------------------------------------------


def _template_source(name: str) -> tuple[str, str, Callable[[], bool]]:
    """A template from the installed package data or, in a source checkout, templates/."""
    try:
        text = resources.files("specc.templates").joinpath(name).read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        path = Path(__file__).resolve().parents[2] / "templates" / name
        try:
            text = path.read_text("utf-8")
        except FileNotFoundError:
            raise jinja2.TemplateNotFound(name) from None
    return text, f"templates/{name}", lambda: True


@functools.cache
def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FunctionLoader(_template_source),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,  # Python source, not HTML; every value is built by this module
    )


# Top-level modules of the standard library that generated code may import.
STDLIB_MODULES = frozenset({"collections", "fnmatch", "math"})


def import_groups(lines: set[str]) -> list[list[str]]:
    """Import lines in isort's order: the standard library, then third-party packages;
    in each, `import x` lines before `from x import y` lines, by module name."""

    def module(line: str) -> str:
        return line.split()[1]

    def key(line: str) -> tuple[bool, str]:
        return line.startswith("from "), module(line).lower()

    stdlib = sorted((ln for ln in lines if module(ln).split(".")[0] in STDLIB_MODULES), key=key)
    third = sorted((ln for ln in lines if module(ln).split(".")[0] not in STDLIB_MODULES), key=key)
    return [g for g in (stdlib, third) if g]


# ---- expressions ----------------------------------------------------------------------


class Exprs:
    """Writes IR expressions as documents; names, holes and forward values are delegated
    to the caller, which knows what they mean in its scope."""

    def __init__(
        self,
        name: Callable[[ir.Name], Doc],
        hole: Callable[[ir.Hole], Doc],
        ref: Callable[[ir.Ref], Doc],
        uses: dict[str, bool] | None = None,
    ) -> None:
        self.name, self.hole, self.ref = name, hole, ref
        self.uses = uses if uses is not None else {}  # imports the output needs ("math")

    def __call__(self, e: ir.Expr) -> Doc:
        if isinstance(e, ir.Const):
            return literal_doc(e.value)
        if isinstance(e, ir.Name):
            return self.name(e)
        if isinstance(e, ir.Hole):
            return self.hole(e)
        if isinstance(e, ir.Ref):
            return self.ref(e)
        if isinstance(e, ir.Ellipsis_):
            return Text("...")
        if isinstance(e, ir.ListExpr):
            return Brackets("", tuple(map(self, e.items)), "[", "]", PREC_ATOM, display=True)
        if isinstance(e, ir.TupleExpr):
            if not e.items:
                return Text("()")
            items = tuple(map(self, e.items))
            return Brackets("", items, prec=PREC_ATOM, one_tuple=len(items) == 1, display=True)
        if isinstance(e, ir.SliceExpr):
            parts = [None if p is None else self(p) for p in (e.start, e.stop, e.step)]
            args = ", ".join("None" if p is None else flat(p) for p in parts)
            return Text(f"slice({args})", PREC_PRIMARY)
        if isinstance(e, ir.BinOp):
            return binop(e.op, self(e.left), self(e.right))
        if isinstance(e, ir.Neg):
            return negate(self(e.operand))
        if isinstance(e, ir.BoolOp):
            return boolop(e.op, self(e.left), self(e.right))
        if isinstance(e, ir.Not):
            return not_(self(e.operand))
        if isinstance(e, ir.IfExp):
            return conditional(self(e.body), self(e.test), self(e.orelse))
        if isinstance(e, ir.Index):  # a constant's item: `widths[i]`
            value = self(e.value)
            head = flat(value) if value.prec >= PREC_PRIMARY else f"({flat(value)})"
            return Brackets(head, (self.index(e.index),), "[", "]", subscript=True)
        if isinstance(e, ir.Call) and e.func in CONST_FUNCTIONS:
            if e.func in CONST_FUNCTION_CODE:
                self.uses["math"] = True
            return Brackets(CONST_FUNCTION_CODE.get(e.func, e.func), tuple(map(self, e.args)))
        raise SpecTypeError("a call is not allowed here", loc(getattr(e, "span", None)))

    def index(self, e: ir.Expr) -> Doc:
        """A subscript item: slices as `a:b:c`, spaced like ruff when a bound is complex."""
        if not isinstance(e, ir.SliceExpr):
            return self(e)
        parts = [None if p is None else self(p) for p in (e.start, e.stop, e.step)]
        if parts[2] is None:
            parts = parts[:2]
        texts = ["" if p is None else flat(p) for p in parts]
        if all(p is None or (isinstance(p, Text) and p.simple == "name") for p in parts):
            return Text(":".join(texts))
        out = texts[0]
        for prev, text in itertools.pairwise(texts):
            out += (" :" if prev else ":") + (f" {text}" if text else "")
        return Text(out)


# ---- the instance tree ----------------------------------------------------------------


@dataclass
class _Plan:
    """One model definition and every checked instance of it in the output."""

    mdef: ir.ModelDef
    instances: list[ir.ModelInstance] = field(default_factory=list)
    # hole id -> the keyword-only __init__ parameter standing for it (values differ by use)
    kw_holes: dict[int, str] = field(default_factory=dict)
    # id(instance) -> hole id -> the literals it resolved to, in construction order
    hole_values: dict[int, dict[int, list[ir.Expr]]] = field(default_factory=dict)


def _children(c: Any) -> Iterator[ir.ModelInstance]:
    if isinstance(c, ir.ModelCtor):
        yield c.instance
    elif isinstance(c, ir.CondCtor):
        yield from _children(c.ctor)
    elif isinstance(c, (ir.SequentialCtor, ir.RepeatCtor)):
        for item in c.items:
            yield from _children(item)


@functools.cache
def _model_attrs(sequential: bool) -> frozenset[str]:
    """Attribute names an nn.Module (or nn.Sequential) already has: not usable as layers."""
    from torch import nn

    base = nn.Sequential if sequential else nn.Module
    return frozenset(dir(base)) | frozenset(vars(nn.Module()))


class ModuleWriter:
    """One generated module: a class per model that `tops` (checked instances) use.
    `reserved`: further module-level names the output uses (the training script's).
    `language_model`: the model trained on text, whose class gets a `generate` method."""

    def __init__(
        self,
        program: ir.Program,
        tops: list[ir.ModelInstance],
        reserved: dict[str, str] | None = None,
        language_model: LanguageModel | None = None,
    ) -> None:
        self.program = program
        self.language_model = language_model
        self.plans: dict[str, _Plan] = {}
        self.collected: set[int] = set()
        for top in tops:
            self.collect(top)  # fills self.plans in dependency order (used models first)
        self.uses = {"torch": False, "F": False, "OrderedDict": False, "fnmatch": False,
                     "math": False}  # fmt: skip
        imported = ["torch", "nn", "F", "OrderedDict", "math"]
        if any(rule.glob for plan in self.plans.values() for rule in plan.mdef.inits):
            imported.append("fnmatch")  # glob init rules
        self.modules = Namespace(
            {n: f"`{n}`, which the generated module imports" for n in imported} | (reserved or {})
        )
        for name, plan in self.plans.items():
            self.modules.claim(name, plan.mdef.span, "model name")
        self.plugin_classes = load_plugins(program) if program.plugins else {}
        self.plugin_imports: dict[str, list[str]] = {}  # module -> classes, in first use
        self.index_names: set[str] = set()  # `i` of the `repeat(n, i -> ...)` being written

    def collect(self, inst: ir.ModelInstance) -> None:
        # The checker shares one instance between uses with the same arguments and inputs;
        # walking each once keeps a model used twice per level linear, not 2**levels.
        if id(inst) in self.collected:
            return
        self.collected.add(id(inst))
        for layer in inst.layers:
            for child in _children(layer.ctor):
                self.collect(child)
        plan = self.plans.get(inst.model)
        if plan is None:
            mdef = self.program.model(inst.model)
            assert mdef is not None
            plan = self.plans[inst.model] = _Plan(mdef)
        plan.instances.append(inst)

    def module(
        self,
        template: str = "module.py.j2",
        context: dict[str, Any] | None = None,
        imports: Iterator[str] | list[str] = (),
    ) -> str:
        """The module text: `template` (module.py.j2 or one extending it) rendered with
        the classes, the imports they need plus `imports`, and `context`."""
        classes = [self.model_class(plan) for plan in self.plans.values()]
        source = self.program.sources[0]
        name = Path(source.path).name
        if not name.isprintable():  # never let a file name break out of the comment
            name = repr(name)
        sha = source.sha256[:12] if re.fullmatch(r"[0-9a-f]{12,}", source.sha256) else "?"
        lines = set(imports) | {"from torch import nn"}
        if self.uses["OrderedDict"]:
            lines.add("from collections import OrderedDict")
        if self.uses["torch"]:
            lines.add("import torch")
        if self.uses["math"]:
            lines.add("import math")
        if self.uses["F"]:
            lines.add("import torch.nn.functional as F")
        if self.uses["fnmatch"]:
            lines.add("import fnmatch")
        plugin_imports = [
            f"from {m} import {', '.join(sorted(names))}"
            for m, names in sorted(self.plugin_imports.items())
        ]
        return (
            environment()
            .get_template(template)
            .render(
                spec_name=name,
                sha=sha,
                import_groups=import_groups(lines),
                plugin_imports=plugin_imports,
                classes=classes,
                **(context or {}),
            )
        )

    # ---- one class ------------------------------------------------------------------
    def model_class(self, plan: _Plan) -> dict[str, Any]:
        mdef = plan.mdef
        sequential = mdef.kind == "sequential"
        self.analyse_holes(plan)
        locals_ = Namespace(
            {n: f"`{n}`, which the generated code uses" for n in MODULE_NAMES}
            | {n: f"the class `{n}`" for n in self.plans}
        )
        reserved = {n: f"`nn.Module.{n}`" for n in _model_attrs(sequential)}
        if self.generates(mdef):
            reserved["generate"] = "`generate`, the method of a model trained on text"
            reserved["last_logits"] = "`last_logits`, the method `generate` calls"
        attrs = Namespace(reserved)
        params: list[str] = []
        fills: list[str] = []
        seen_default = None
        for p in mdef.params:
            locals_.claim(p.name, p.span, "model parameter")
            if p.default is None:
                if seen_default is not None:
                    raise SpecTypeError(
                        f"parameter `{p.name}` has no default but follows `{seen_default}`, "
                        "which has one; Python cannot write that",
                        loc(p.span),
                        hint="give it a default or move it before the defaulted ones",
                    )
                params.append(p.name)
                continue
            seen_default = p.name
            # a list default would be shared by every call (ruff B006): written as a tuple
            default = self.value_exprs(plan, None)(p.default.map(_list_as_tuple))
            if p.default.find(ir.Name) is not None:  # a default computed from other parameters
                params.append(f"{p.name}=None")
                fills.append(
                    f"if {p.name} is None:\n"
                    + INDENT
                    + statement(default, f"{p.name} = ", BODY_INDENT + 4).replace(
                        "\n", "\n" + INDENT
                    )
                )
            else:
                params.append(flat(with_prefix(f"{p.name}=", default)))
        hole_params = []
        for hole_id, base in plan.kw_holes.items():
            plan.kw_holes[hole_id] = locals_.fresh(base, "argument")
            hole_params.append(plan.kw_holes[hole_id])
        if hole_params:
            params += ["*", *hole_params]
        for layer in mdef.layers:
            if not layer.anonymous:
                attrs.claim(layer.name, layer.span, "layer", attribute=True)
        if mdef.inits:
            attrs.claim("_init_weights", mdef.inits[0].span, "init method", attribute=True)

        layers = self.layer_docs(plan)
        init_def = statement(
            Brackets("def __init__", tuple(Text(p) for p in ["self", *params]), close="):"),
            "",
            CLASS_INDENT,
        )
        out: dict[str, Any] = {"name": mdef.name, "init_def": init_def, "fills": fills}
        if sequential:
            out["template"] = "sequential.py.j2"
            out["super_call"] = statement(self.sequential_items(mdef, layers), "", BODY_INDENT)
            out["generate"] = self.generate_context(mdef, attrs, [])
            out["last_logits"] = None
            return out
        out["template"] = "model.py.j2"
        out["layers"] = [
            self.layer_statement(layer, li.ctor, doc)
            for layer, li, doc in zip(mdef.layers, plan.instances[0].layers, layers, strict=True)
        ]
        out["ties"] = [tie_statement(tie) for tie in mdef.ties]
        init_params: set[str] = set()
        out["init_rules"] = [self.init_rule(plan, rule, init_params) for rule in mdef.inits]
        fwd = _ForwardWriter(self, plan)
        forward_def, body = fwd.render()
        last = self.last_logits(plan) if self.generates(mdef) else None
        out["last_logits"] = None
        if last is not None:
            out["last_logits"] = dict(zip(("def", "body"), last.render(), strict=True))
        stored = []
        for p in mdef.params:
            if p.name in fwd.used_params or p.name in init_params:
                attrs.claim(p.name, p.span, "model parameter stored for forward", attribute=True)
                stored.append(f"self.{p.name} = {p.name}")
        out["stored"] = stored
        out["forward_def"] = forward_def
        out["forward_body"] = body
        out["generate"] = self.generate_context(mdef, attrs, stored)
        return out

    # ---- generate -------------------------------------------------------------------
    def generates(self, mdef: ir.ModelDef) -> bool:
        """Whether the class gets nanoGPT's `generate`: it is the model trained on text."""
        return self.language_model is not None and self.language_model.model == mdef.name

    def last_logits(self, plan: _Plan) -> _ForwardWriter | None:
        """The writer of `last_logits`: forward with its per-position head applied to the
        last position only (graph.last_position), which `generate` calls as the sampler of
        `specc sample` does; None when forward does not end in such layers."""
        fwd = plan.mdef.forward
        assert fwd is not None
        heads = set.intersection(*(per_position_layers(i.layers) for i in plan.instances))
        nodes = last_position(fwd.nodes, heads)
        if nodes is None:
            return None
        return _ForwardWriter(self, plan, fwd.model_copy(update={"nodes": nodes}), "last_logits")

    def generate_context(
        self, mdef: ir.ModelDef, attrs: Namespace, stored: list[str]
    ) -> dict[str, str | None] | None:
        """What templates/generate.py.j2 needs: the attribute holding the block size (its
        input's T as the definition writes it: a parameter or a size) and the `__init__`
        line setting it, None when a parameter stored for forward already is that line."""
        if not self.generates(mdef):
            return None
        assert mdef.forward is not None and len(mdef.forward.inputs) == 1  # a language model
        dim = mdef.forward.inputs[0].shape[0]
        if isinstance(dim.value, str) and dim.value not in {p.name for p in mdef.params}:
            raise SpecTypeError(  # pragma: no cover - a trained model's sizes are all known
                f"cannot write `generate`: the block size `{dim.value}` is not a parameter",
                loc(dim.span),
            )
        self.uses["torch"] = self.uses["F"] = True
        value = dim.value if isinstance(dim.value, str) else flat(literal_doc(dim.value))
        if f"self.block_size = {value}" in stored:
            return {"block_size": "block_size", "init": None}
        attr = attrs.fresh("block_size", "block size `generate` crops the context to")
        init = f"self.{attr} = {value}  # generate() crops the context to this"
        return {"block_size": attr, "init": init}

    # ---- tensors, ties and init rules ---------------------------------------------------
    def layer_statement(self, layer: ir.Layer, c: Any, doc: Doc) -> str:
        """`self.name = ...`; a buffer is registered (`persistent=False`: left out of the
        state_dict)."""
        if not (isinstance(c, ir.TensorCtor) and c.role == "buffer"):
            return statement(doc, f"self.{layer.name} = ", BODY_INDENT)
        items = (literal_doc(layer.name), doc)
        if not c.persistent:
            items += (Text("persistent=False"),)
        return statement(Brackets("self.register_buffer", items), "", BODY_INDENT)

    def tensor_doc(self, plan: _Plan, e: ir.Call, c: ir.TensorCtor) -> Doc:
        """`nn.Parameter(torch.zeros(1, 1, dim))`, or a buffer's bare expression."""
        value = _TensorExprs(self, self.value_exprs(plan, None))(e.args[0])
        if c.role == "buffer":
            return value
        if not c.requires_grad:
            return Brackets("nn.Parameter", (value, Text("requires_grad=False")))
        return Brackets("nn.Parameter", (value,))

    def init_rule(self, plan: _Plan, rule: ir.InitRule, used: set[str]) -> dict[str, str]:
        """One loop of `_init_weights`: what the template needs, already laid out. Model
        parameters in the arguments are read from `self` (added to `used`)."""
        params = {p.name for p in plan.mdef.params}

        def name(e: ir.Name) -> Doc:
            if e.id not in params:  # pragma: no cover - passes check init arguments
                raise SpecNameError(f"unknown name `{e.id}`", loc(e.span))
            used.add(e.id)
            return Text(f"self.{e.id}", PREC_PRIMARY, "attr")

        values = Exprs(name, _no_hole, _no_ref, self.uses)  # sqrt() needs `import math`
        check_attribute(rule.func, rule.func_span, "init function")
        if rule.glob is not None:
            self.uses["fnmatch"] = True
            target = "p"
            out = {"glob": flat(literal_doc(rule.glob))}
        else:
            attr = check_attribute(rule.attr or "", rule.span, "attribute")
            check_attribute(rule.module_type or "", rule.span, "layer type")
            target = f"m.{attr}"
            out = {"cls": f"nn.{rule.module_type}", "target": target}
        items = [Text(target), *map(values, rule.args)]
        items += [
            with_prefix(f"{check_attribute(k, v.span, 'keyword')}=", values(v))
            for k, v in rule.kwargs.items()
        ]
        out["call"] = statement(Brackets(f"nn.init.{rule.func}", tuple(items)), "", 16)
        return out

    def sequential_items(self, mdef: ir.ModelDef, layers: list[Doc]) -> Doc:
        optional = [_optional(layer.ctor) for layer in mdef.layers]
        if all(layer.anonymous for layer in mdef.layers):
            layers = [
                self.optional_entry(layer.ctor, doc) if opt else doc  # type: ignore[arg-type]
                for layer, doc, opt in zip(mdef.layers, layers, optional, strict=True)
            ]
            return Brackets("super().__init__", tuple(layers))
        for layer, opt in zip(mdef.layers, optional, strict=True):
            if opt:
                raise SpecTypeError(
                    f"`{layer.name}` may be None, which a named entry of a `sequential` "
                    "model cannot be in generated code",
                    loc(layer.span),
                    hint="leave the entry unnamed, or write a `model` with an `if` in forward",
                )
        self.uses["OrderedDict"] = True
        pairs = tuple(
            Brackets("", (literal_doc(layer.name), doc), prec=PREC_ATOM, display=True)
            for layer, doc in zip(mdef.layers, layers, strict=True)
        )
        return Brackets(
            "super().__init__",
            (Brackets("OrderedDict", (Brackets("", pairs, "[", "]", PREC_ATOM, display=True),)),),
        )

    # ---- holes ----------------------------------------------------------------------
    def analyse_holes(self, plan: _Plan) -> None:
        """Find each `_`'s values over all uses of the model: one value -> a literal; one
        value per use but different uses -> a keyword-only parameter."""
        where: dict[int, tuple[str, str]] = {}  # hole id -> (layer, argument name)
        for inst in plan.instances:
            values: dict[int, list[ir.Expr]] = {}
            for layer, li in zip(plan.mdef.layers, inst.layers, strict=True):
                label = f"layer{layer.name}" if layer.anonymous else layer.name
                self.walk_holes(layer.ctor, li.ctor, label, values, where)
            plan.hole_values[id(inst)] = values
        for hole_id in sorted(where):
            per_use = [plan.hole_values[id(i)].get(hole_id, []) for i in plan.instances]
            texts = {flat(self.literal_expr(v)) for vs in per_use for v in vs}
            if len(texts) <= 1:
                continue
            if all(len({flat(self.literal_expr(v)) for v in vs}) == 1 for vs in per_use):
                layer, arg = where[hole_id]
                plan.kw_holes[hole_id] = f"{layer}_{arg}"

    def walk_holes(
        self,
        e: ir.Expr,
        c: Any,
        label: str,
        out: dict[int, list[ir.Expr]],
        where: dict[int, tuple[str, str]],
    ) -> None:
        if isinstance(c, ir.CondCtor) and isinstance(e, ir.IfExp):
            self.walk_holes(e.body if c.taken else e.orelse, c.ctor, label, out, where)
        elif isinstance(c, ir.SequentialCtor) and isinstance(e, ir.Call):
            for a, item in zip([*e.args, *e.kwargs.values()], c.items, strict=True):
                self.walk_holes(_unstarred(a), item, label, out, where)
        elif isinstance(c, ir.RepeatCtor) and isinstance(e, ir.Call):
            body = _repeated(e)
            for k in range(c.count):
                self.walk_holes(body, c.items[min(k, len(c.items) - 1)], label, out, where)
        elif isinstance(c, ir.TorchCtor) and isinstance(e, ir.Call):
            names = _ctor_params(self.plugin_classes.get(e.func), e.func)
            for i, a in enumerate(e.args):
                if isinstance(a, ir.Hole):
                    out.setdefault(a.id, []).append(c.args[i])
                    where.setdefault(a.id, (label, names[i] if i < len(names) else f"arg{i}"))
            for k, a in e.kwargs.items():
                if isinstance(a, ir.Hole):
                    out.setdefault(a.id, []).append(c.kwargs[k])
                    where.setdefault(a.id, (label, k))

    def literal_expr(self, e: ir.Expr) -> Doc:
        return Exprs(_no_name, _no_hole, _no_ref)(e)

    # ---- layers ---------------------------------------------------------------------
    def value_exprs(self, plan: _Plan, hole_value: Callable[[ir.Hole], Doc] | None) -> Exprs:
        """Constant expressions in `__init__`: parameters are locals there."""

        def name(e: ir.Name) -> Doc:
            if e.id not in {p.name for p in plan.mdef.params} | self.index_names:
                raise SpecNameError(f"unknown name `{e.id}`", loc(e.span))
            return Text(e.id, simple="name")

        return Exprs(name, hole_value or _no_hole, _no_ref, self.uses)

    def layer_docs(self, plan: _Plan) -> list[Doc]:
        """The constructor of each layer; every use of the model must give the same text
        (only keyword-parameter holes may differ, and they are written as names)."""
        first: list[Doc] | None = None
        for inst in plan.instances:
            docs = [
                self.ctor_doc(plan, layer.ctor, li.ctor)
                for layer, li in zip(plan.mdef.layers, inst.layers, strict=True)
            ]
            if first is None:
                first = docs
                continue
            for layer, a, b in zip(plan.mdef.layers, first, docs, strict=True):
                if flat(a) != flat(b):
                    raise SpecTypeError(
                        f"layer `{layer.name}` of `{plan.mdef.name}` is built differently in "
                        f"different uses ({flat(a)} vs {flat(b)}), so one class cannot "
                        "describe it",
                        loc(layer.span),
                        hint="write the `_` values out, or make them model parameters",
                    )
        return first or []

    def ctor_doc(self, plan: _Plan, e: ir.Expr, c: Any) -> Doc:
        def hole(h: ir.Hole) -> Doc:
            raise AssertionError("holes are filled by the caller")  # pragma: no cover

        values = self.value_exprs(plan, hole)
        if isinstance(e, ir.IfExp):
            return self.conditional_doc(plan, e, c, values)
        if isinstance(e, ir.Const) and e.value is None:
            return Text("None", simple="name")
        if not isinstance(e, ir.Call):  # pragma: no cover - the checker rejects these
            raise SpecTypeError("a layer must be a constructor call", loc(getattr(e, "span", None)))
        if c is None:
            c = self.unchecked_ctor(plan, e)
        if isinstance(c, ir.SequentialCtor):
            return self.sequential_doc(plan, e, c)
        if isinstance(c, ir.RepeatCtor):
            return self.repeat_doc(plan, e, c, values)
        if isinstance(c, ir.TensorCtor):
            return self.tensor_doc(plan, e, c)
        if isinstance(c, ir.ModelCtor) or (c is None and e.func in self.plans):
            child = self.plans[e.func]
            check_identifier(e.func, e.func_span or e.span, "model name")
            items = [*map(values, e.args)]
            items += [
                with_prefix(f"{check_attribute(k, v.span, 'keyword')}=", values(v))
                for k, v in e.kwargs.items()
            ]
            got = child.hole_values[id(c.instance)] if c is not None else {}
            for hole_id, pname in child.kw_holes.items():
                items.append(with_prefix(f"{pname}=", self.literal_expr(got[hole_id][0])))
            return Brackets(e.func, tuple(items))
        if isinstance(c, ir.TorchCtor):
            head = self.class_name(e, c)

            def arg(a: ir.Expr, value: ir.Expr) -> Doc:
                if not isinstance(a, ir.Hole):
                    return values(a)
                if a.id in plan.kw_holes:
                    return Text(plan.kw_holes[a.id], simple="name")
                return self.literal_expr(value)

            items = [arg(a, c.args[i]) for i, a in enumerate(e.args)]
            items += [
                with_prefix(f"{check_attribute(k, a.span, 'keyword')}=", arg(a, c.kwargs[k]))
                for k, a in e.kwargs.items()
            ]
            return Brackets(head, tuple(items))
        raise TypeError(f"unknown constructor {c!r}")  # pragma: no cover

    def conditional_doc(self, plan: _Plan, e: ir.IfExp, c: Any, values: Exprs) -> Doc:
        """`A if test else B` as written: the branch this use took from its checked
        constructor, the other from the expression alone (no use built it)."""
        taken = c.taken if isinstance(c, ir.CondCtor) else None
        inner = c.ctor if isinstance(c, ir.CondCtor) else None
        body = self.ctor_doc(plan, e.body, inner if taken is True else None)
        orelse = self.ctor_doc(plan, e.orelse, inner if taken is False else None)
        return conditional(body, values(e.test), orelse)

    def unchecked_ctor(self, plan: _Plan, e: ir.Call) -> Any:
        """What a branch no use of the model took needs to be written: nothing checked it, so
        only torch layers, Sequentials of them and models some use built can be written."""
        if e.func == "Sequential":
            return ir.SequentialCtor(items=[], names=list(e.kwargs) or None)
        if e.func in self.plans and not self.plans[e.func].kw_holes:
            return None  # written from its arguments (see ctor_doc's ModelCtor case)
        if e.func in self.plans or e.func == "repeat" or e.find(ir.Hole) is not None:
            raise SpecTypeError(
                f"`{e.func}(...)` stands in a branch no use of `{plan.mdef.name}` takes, and "
                "it needs sizes only a use can give",
                loc(e.span),
                hint="write its sizes out (no `_`), or make the condition true in some use",
            )
        return ir.TorchCtor(cls=f"torch.nn.{e.func}", args=list(e.args), kwargs=dict(e.kwargs))

    def sequential_doc(self, plan: _Plan, e: ir.Call, c: ir.SequentialCtor) -> Doc:
        """`nn.Sequential(a, *([b] if c else []), *[x for i in range(n)])`, or with named
        entries `nn.Sequential(OrderedDict([("head", ...)]))`."""
        entries = [*e.args, *e.kwargs.values()]
        checked = c.items or [None] * len(entries)
        docs = []
        for a, item in zip(entries, checked, strict=True):
            if isinstance(a, ir.Starred):
                values = self.value_exprs(plan, None)
                docs += self.repeat_items(plan, _unstarred(a), item, values)  # type: ignore[arg-type]
                continue
            doc = self.ctor_doc(plan, a, item)
            if _optional(a):
                doc = self.optional_entry(a, doc)  # type: ignore[arg-type]
            docs.append(doc)
        if not e.kwargs:
            return Brackets("nn.Sequential", tuple(docs))
        self.uses["OrderedDict"] = True
        pairs = tuple(
            Brackets("", (literal_doc(k), d), prec=PREC_ATOM, display=True)
            for k, d in zip(e.kwargs, docs, strict=True)
        )
        return Brackets(
            "nn.Sequential",
            (Brackets("OrderedDict", (Brackets("", pairs, "[", "]", PREC_ATOM, display=True),)),),
        )

    def optional_entry(self, a: ir.IfExp, doc: Doc) -> Doc:
        """A Sequential entry that may be None: spliced as `*([X] if test else [])`."""
        assert isinstance(doc, Chain) and len(doc.operands) == 3
        body, test, orelse = doc.operands
        present = orelse if is_none(a.body) else body
        listed = Brackets("", (present,), "[", "]", PREC_ATOM)
        empty = Text("[]")
        inner = (
            conditional(listed, test, empty)
            if not is_none(a.body)
            else conditional(empty, test, listed)
        )
        return with_prefix("*", parens(inner))

    def class_name(self, e: ir.Call, c: ir.TorchCtor) -> str:
        """`nn.Conv2d` for torch classes; a plugin class by its own name, imported from the
        plugin's module (plain PyTorch, so the output still needs no specc)."""
        check_attribute(e.func, e.func_span or e.span, "layer type")
        if c.cls.startswith("torch.nn."):
            return f"nn.{e.func}"
        return self.plugin_class(e.func, e.func_span or e.span)

    def plugin_class(self, name: str, span: ir.Span | None) -> str:
        """A plugin class (layer, loss or optimizer) by name, imported from its module."""
        cls = self.plugin_classes.get(name)
        stmt = None if cls is None else plugin_module_for(cls, self.program)
        if stmt is None:  # pragma: no cover - the checker resolved it to a plugin class
            raise SpecNameError(f"cannot find the plugin that defines `{name}`", loc(span))
        module = Path(stmt.target).stem if stmt.target.endswith(".py") else stmt.target
        for part in module.split("."):
            check_identifier(part, stmt.span, "plugin module name")
        names = self.plugin_imports.setdefault(module, [])
        if name not in names:
            self.modules.claim(name, span, "plugin class")
            names.append(name)
        return name

    def repeat_doc(self, plan: _Plan, e: ir.Call, c: ir.RepeatCtor, values: Exprs) -> Doc:
        """`repeat(n, X)`: `nn.Sequential(*[X for _ in range(n)])`; children named
        `prefix + str(i)` are built in an OrderedDict."""
        items = self.repeat_items(plan, e, c, values)
        if not c.prefix:
            return Brackets("nn.Sequential", items)
        (comp,) = items  # repeat_items refuses a prefix on a written-out repeat
        assert isinstance(comp, Comp)
        self.uses["OrderedDict"] = True
        var = comp.clause.split()[1]
        name = Text(f'f"{c.prefix}{{{var}}}"')
        pair = Brackets("", (name, comp.elt), prec=PREC_ATOM)
        return Brackets(
            "nn.Sequential",
            (Brackets("OrderedDict", (dataclasses.replace(comp, star="", elt=pair),)),),
        )

    def repeat_items(
        self, plan: _Plan, e: ir.Call, c: ir.RepeatCtor, values: Exprs
    ) -> tuple[Doc, ...]:
        """The repeated layers as `*[X for i in range(n)]`, each instance built in order;
        uses that differ (a `_` that changes along the chain) are written out."""
        fn = e.args[1] if isinstance(e.args[1], ir.Lambda) else None
        params = {p.name for p in plan.mdef.params}
        unused = next(v for v in ("i", "k", "index", "_") if v not in params | self.index_names)
        var = fn.param if fn is not None else unused if c.prefix else "_"  # `_`: not read
        if fn is not None:
            check_identifier(var, fn.span, "repeat index")
        last = len(c.items) - 1
        outer = self.index_names
        self.index_names = outer | {var}
        try:
            docs = [
                self.ctor_doc(plan, _repeated(e), c.items[min(k, last)]) for k in range(c.count)
            ]
        finally:
            self.index_names = outer
        runs: list[tuple[Doc, int]] = []
        for d in docs:
            if runs and flat(runs[-1][0]) == flat(d):
                runs[-1] = (d, runs[-1][1] + 1)
            else:
                runs.append((d, 1))
        if len(runs) == 1:
            count = flat(values(e.args[0]))
            return (Comp("*", docs[0], f"for {var} in range({count})"),)
        if fn is not None or c.prefix:
            raise SpecTypeError(
                "the layers of this repeat differ in their `_` sizes, which an indexed or "
                "prefixed repeat cannot write",
                loc(e.span),
                hint="write the sizes out instead of `_`",
            )
        return tuple(d if n == 1 else Comp("*", d, f"for _ in range({n})") for d, n in runs)


def _optional(e: ir.Expr) -> bool:
    """A conditional layer one of whose branches is `None`."""
    return isinstance(e, ir.IfExp) and (is_none(e.body) or is_none(e.orelse))


def _list_as_tuple(e: ir.Node) -> ir.Node:
    return ir.TupleExpr(items=e.items, span=e.span) if isinstance(e, ir.ListExpr) else e


def _unstarred(e: ir.Expr) -> ir.Expr:
    return e.value if isinstance(e, ir.Starred) else e


def _repeated(e: ir.Call) -> ir.Expr:
    """The layer a `repeat(n, X)` or `repeat(n, i -> X)` call repeats."""
    layer = e.args[1]
    return layer.body if isinstance(layer, ir.Lambda) else layer


def tie_statement(tie: ir.Tie) -> str:
    """`self.lm_head.weight = self.wte.weight`; `blocks.0.w` is `self.blocks[0].w`."""

    def path(text: str, span: ir.Span) -> str:
        parts = [
            f"[{p}]" if p.isdigit() else "." + check_attribute(p, span, "attribute")
            for p in text.split(".")
        ]
        return "self" + "".join(parts)

    return f"{path(tie.target, tie.target_span)} = {path(tie.source, tie.source_span)}"


class _TensorExprs(Exprs):
    """Constant expressions plus the calls a `Parameter`/`Buffer` expression makes: torch
    functions (`torch.zeros`), tensor methods (`.float()`), attributes and indexing."""

    def __init__(self, gen: ModuleWriter, values: Exprs) -> None:
        super().__init__(values.name, values.hole, values.ref)
        self.gen = gen

    def __call__(self, e: ir.Expr) -> Doc:
        if isinstance(e, ir.Call):
            from specc.registry import functions

            module, _, fname = functions()[e.func][0].rpartition(".")
            alias = FUNCTION_MODULES[module]
            self.gen.uses[alias] = True
            check_attribute(fname, e.func_span or e.span, "function")
            return Brackets(f"{alias}.{fname}", self.items(e.args, e.kwargs))
        if isinstance(e, ir.MethodCall):
            name = check_attribute(e.method, e.span, "method")
            return method_call(self(e.receiver), name, self.items(e.args, e.kwargs))
        if isinstance(e, ir.Attribute):
            name = check_attribute(e.attr, e.span, "attribute")
            return Text(attribute_of(self(e.value), name), PREC_PRIMARY)
        if isinstance(e, ir.Index):
            value = self(e.value)
            head = flat(value) if value.prec >= PREC_PRIMARY else f"({flat(value)})"
            subs = e.index.items if isinstance(e.index, ir.TupleExpr) else [e.index]
            return Brackets(head, tuple(map(self.index, subs)), "[", "]", subscript=True)
        return super().__call__(e)

    def items(self, args: list[ir.Expr], kwargs: dict[str, ir.Expr]) -> tuple[Doc, ...]:
        docs = [*map(self, args)]
        docs += [
            with_prefix(f"{check_attribute(k, v.span, 'keyword')}=", self(v))
            for k, v in kwargs.items()
        ]
        return tuple(docs)


def _ctor_params(plugin: type | None, func: str) -> list[str]:
    """Parameter names of a layer class (for naming keyword parameters of holes)."""
    from specc.registry import accepts, nn_classes

    cls = plugin or nn_classes().get(func)
    return list(accepts(cls)[0]) if cls is not None else []


def _no_name(e: ir.Name) -> Doc:  # pragma: no cover - literals have no names
    raise SpecNameError(f"unexpected name `{e.id}`", loc(e.span))


def _no_hole(e: ir.Hole) -> Doc:
    raise SpecTypeError("`_` can only stand for a layer argument", loc(e.span))


def _no_ref(e: ir.Ref) -> Doc:  # pragma: no cover - only forward has values
    raise SpecTypeError("a forward value cannot be used here", loc(e.span))


# ---- forward --------------------------------------------------------------------------


def shape_comment(v: ir.Value | None) -> str:
    """`(B, 6, 14, 14)` for a tensor value, sizes that depend on the batch size written
    as `check` writes them (`(2*B,)`); "" for anything else."""
    if v is None or v.kind != "tensor" or v.tensor is None:
        return ""
    dims = tensor_dims(v.tensor)
    text = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    return text if v.tensor.dtype == "float32" else f"{text} {v.tensor.dtype}"


@dataclass
class _Stmt:
    targets: list[list[str]]  # one entry per value; several names = unpacking
    values: list[Doc]
    reads: list[tuple[str, str]]  # (variable, SSA node it must hold) when this runs
    defines: list[tuple[str, str]]  # (variable, SSA node) bound by this statement
    comment: str = ""


@dataclass
class _Block:
    """A static `if` block of the forward: its condition and the statements of each part."""

    test: Doc
    then: list[_Stmt | _Block] = field(default_factory=list)
    orelse: list[_Stmt | _Block] = field(default_factory=list)


class _ForwardWriter(GraphInterpreter):
    """Writes a forward from the SSA nodes: named nodes become statements, unnamed ones are
    inlined where they are used; a multi-value assignment whose parts read each other's old
    values (`a, b = b, a`) is written back as one tuple assignment. As a graph interpreter,
    its value of a node is the source expression computing it."""

    def __init__(
        self, gen: ModuleWriter, plan: _Plan, fwd: ir.Forward | None = None, method: str = "forward"
    ) -> None:
        super().__init__()
        self.gen = gen
        self.plan = plan
        fwd = fwd or plan.mdef.forward
        assert fwd is not None
        self.fwd, self.def_name = fwd, method
        self.nodes = {n.name: n for n in fwd.nodes}
        self.params = {p.name for p in plan.mdef.params}
        self.layer_names = {layer.name for layer in plan.mdef.layers}
        self.blocks: set[str] = set()  # if blocks written as statements
        self.used_params: set[str] = set()
        self.dims: dict[str, tuple[str, int, ir.Span]] = {}  # dim -> (input, axis, span)
        for inp in fwd.inputs:
            for axis, d in enumerate(inp.shape, start=1):
                if isinstance(d.value, str) and d.value not in self.dims:
                    self.dims[d.value] = (inp.name, axis, d.span)
        self.used_dims: dict[str, None] = {}
        self.reads: list[tuple[str, str]] = []
        self.exprs = Exprs(self.name, _no_hole, self.ref, gen.uses)

    # ---- expressions ------------------------------------------------------------------
    def name(self, e: ir.Name) -> Doc:
        if e.id in self.params:
            self.used_params.add(e.id)
            return Text(f"self.{e.id}", PREC_PRIMARY, "attr")
        if e.id in self.dims:
            self.used_dims[e.id] = None
            return Text(check_identifier(e.id, e.span, "dimension name"), simple="name")
        if e.id in self.layer_names:  # `if downsample`: does the layer exist?
            return Text(f"self.{check_attribute(e.id, e.span, 'layer')} is not None", PREC_COMPARE)
        raise SpecNameError(f"unknown name `{e.id}`", loc(e.span))  # pragma: no cover

    def ref(self, e: ir.Ref) -> Doc:
        node = self.nodes[e.node]
        if not node.vars:
            # run_node, inlined: one stack frame less per level of a deeply nested forward
            return getattr(self, node.op)(node, *self.fetch_args(node))
        var = node.vars[e.index] if e.index is not None and len(node.vars) > 1 else node.vars[0]
        self.reads.append((var, node.name))
        return Text(var, simple="name")

    def call_items(self, args: list[ir.Expr], kwargs: dict[str, ir.Expr]) -> tuple[Doc, ...]:
        items = [self.exprs(a) for a in args]
        items += [
            with_prefix(f"{check_attribute(k, v.span, 'keyword')}=", self.exprs(v))
            for k, v in kwargs.items()
        ]
        return tuple(items)

    def fetch_args(self, n: ir.FNode) -> tuple[Args, Kwargs]:
        """Arguments stay expressions: each op renders them where it places them (a subscript
        is written differently from a call argument), in source order."""
        return list(n.args), dict(n.kwargs)

    def layer(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        check_attribute(n.target, n.span, "layer")
        return Brackets(f"self.{n.target}", self.call_items(args, kwargs))

    def function(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        module, _, fname = n.target.rpartition(".")
        if module not in FUNCTION_MODULES:
            raise SpecNameError(f"cannot write function `{n.target}`", loc(n.span))
        alias = FUNCTION_MODULES[module]
        self.gen.uses[alias] = True
        check_attribute(fname, n.span, "function")
        return Brackets(f"{alias}.{fname}", self.call_items(args, kwargs))

    def method(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        recv = self.exprs(args[0])
        name = check_attribute(n.target, n.span, "method")
        return method_call(recv, name, self.call_items(args[1:], kwargs))

    def attribute(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        recv = self.exprs(args[0])
        name = check_attribute(n.target, n.span, "attribute")
        simple = (
            "attr"
            if isinstance(recv, Text)
            and recv.simple in ("name", "attr")
            and recv.prec >= PREC_PRIMARY
            else ""
        )
        return Text(attribute_of(recv, name), PREC_PRIMARY, simple)

    def operator(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        if n.target == "neg":
            return negate(self.exprs(args[0]))
        return binop(n.target, self.exprs(args[0]), self.exprs(args[1]))

    def getitem(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        value = self.exprs(args[0])
        head = flat(value) if value.prec >= PREC_PRIMARY else f"({flat(value)})"
        index = args[1]
        if isinstance(index, ir.TupleExpr) and len(index.items) > 1:
            items = tuple(self.exprs.index(i) for i in index.items)
        else:
            items = (self.exprs.index(index),)
        return Brackets(head, items, "[", "]", subscript=True)

    def alias(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        return self.exprs(args[0])

    def get_attr(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        return Text(f"self.{check_attribute(n.target, n.span, 'attribute')}", PREC_PRIMARY, "attr")

    def output(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        returns = [self.exprs(a) for a in args]
        return returns[0] if len(returns) == 1 else Brackets("", tuple(returns), bare=True)

    def unsupported(self, n: ir.FNode) -> Doc:  # pragma: no cover
        raise SpecTypeError(f"cannot write `{n.op}` nodes", loc(n.span))

    # ---- statements -------------------------------------------------------------------
    def live(self) -> set[str]:
        """Nodes the output (or an `if` condition) depends on; statements nothing reads are
        left out."""
        live: set[str] = set()
        todo = [n.name for n in self.fwd.nodes if n.op in ("output", "if")]
        while todo:
            name = todo.pop()
            if name in live:
                continue
            live.add(name)
            n = self.nodes[name]
            for e in [*n.args, *n.kwargs.values()]:
                todo += [r.node for r in e.find_all(ir.Ref)]
        return live

    def comment(self, n: ir.FNode) -> str:
        # uses that skip the node's if block have no value for it
        texts = {shape_comment(v) for inst in self.plan.instances if (v := inst.values.get(n.name))}
        return texts.pop() if len(texts) == 1 else ""

    def statement_blocks(self) -> set[str]:
        """The if blocks written as `if` statements: those holding assignments. The others
        come from `a if c else b` and are written as that expression."""
        blocks: set[str] = set()
        open_blocks: list[str] = []
        for n in self.fwd.nodes:
            if n.op == "if":
                open_blocks.append(n.name)
            elif n.op == "endif":
                open_blocks.pop()
            elif n.vars and open_blocks:
                blocks.update(open_blocks)
        return blocks

    def render(self) -> tuple[str, list[str]]:
        for inp in self.fwd.inputs:
            check_identifier(inp.name, inp.span, "forward input")
        live = self.live()
        self.blocks = self.statement_blocks()
        top: list[_Stmt | _Block] = []
        stack = [top]
        output: ir.FNode | None = None
        for n in self.fwd.nodes:
            if n.op == "output":
                output = n
            elif n.op in ("if", "else", "endif"):
                self.open_close(n, stack)
            elif n.op == "phi" and n.target in self.blocks:
                # each branch bound the variable under its own name: nothing to write
                stack[-1].append(_Stmt([], [], [], [(n.vars[0], n.name)]))
            elif n.op != "input" and n.vars and n.name in live:
                stack[-1].append(self.assigned(n))
        binding = {n.vars[0]: n.name for n in self.fwd.nodes if n.op == "input"}
        statements = self.lines(self.group(top, binding), 0)
        assert output is not None
        value = self.run_node(output)
        # named dimensions (`x: [T, C]`) are read from the input before anything else
        body = [self.dim_line(d) for d in self.used_dims]
        body += [*statements, statement(value, "return ", BODY_INDENT)]
        return self.signature(), body

    def open_close(self, n: ir.FNode, stack: list[list[_Stmt | _Block]]) -> None:
        """Open, switch or close the statement list an if block's marker `n` delimits."""
        if n.op == "if" and n.name in self.blocks:
            block = _Block(self.exprs(n.args[0]))
            stack[-1].append(block)
            stack.append(block.then)
        elif n.op == "else" and n.target in self.blocks:
            stack.pop()
            block = stack[-1][-1]
            assert isinstance(block, _Block)
            stack.append(block.orelse)
        elif n.op == "endif" and n.target in self.blocks:
            stack.pop()

    def assigned(self, n: ir.FNode) -> _Stmt:
        for v in n.vars:
            check_identifier(v, n.span, "variable")
        self.reads = []
        doc = self.run_node(n)
        comment = self.comment(n) if len(n.vars) == 1 else ""
        return _Stmt([list(n.vars)], [doc], self.reads, [(v, n.name) for v in n.vars], comment)

    def run_node(self, n: ir.FNode) -> Doc:
        # every node, a phi included, is written from its arguments as expressions
        return getattr(self, n.op)(n, *self.fetch_args(n))

    def phi(self, n: ir.FNode, args: Args, kwargs: Kwargs) -> Doc:
        """`a if c else b` (an if block written as one expression)."""
        test = self.nodes[n.target].args[0]
        return conditional(self.exprs(args[0]), self.exprs(test), self.exprs(args[1]))

    def lines(self, items: list[_Stmt | _Block], depth: int) -> list[str]:
        """Statements as text at `depth` blocks deep; an if block without statements left
        in one of its parts is written without that part."""
        out: list[str] = []
        shapes = ""
        for item in items:
            if isinstance(item, _Block):
                out += self.block_lines(item, depth)
                shapes = ""
                continue
            if not item.values:
                continue
            if item.comment == shapes:  # unchanged shape: the comment would only repeat
                item.comment = ""
            else:
                shapes = item.comment
            out.append(_indented(self.assignment(item, BODY_INDENT + 4 * depth), depth))
        return out

    def block_lines(self, b: _Block, depth: int, keyword: str = "if") -> list[str]:
        then, orelse = self.lines(b.then, depth + 1), self.lines(b.orelse, depth + 1)
        if not then and not orelse:
            return []
        test = b.test if then else not_(b.test)
        base = BODY_INDENT + 4 * depth
        head = _indented(block(layout(test, " " * base, f"{keyword} ", ":"), base), depth)
        out = [head, *(then or orelse)]
        nested = [i for i in b.orelse if isinstance(i, _Block) or i.values]
        if then and len(nested) == 1 and isinstance(nested[0], _Block):  # `else if`
            out += self.block_lines(nested[0], depth, "elif")
        elif then and orelse:
            out += [_indented("else:", depth), *orelse]
        return out

    def dim_line(self, dim: str) -> str:
        inp, axis, span = self.dims[dim]
        if dim in {i.name for i in self.fwd.inputs}:
            raise SpecNameError(
                f"dimension `{dim}` has the name of a forward input",
                loc(span),
                hint="rename one of them",
            )
        return f"{dim} = {inp}.shape[{axis}]"

    def signature(self) -> str:
        names = [i.name for i in self.fwd.inputs]
        notes = []
        for i, name in enumerate(names):
            texts = set()
            for inst in self.plan.instances:
                t = inst.inputs[i][1] if i < len(inst.inputs) else None
                texts.add(shape_comment(ir.Value(kind="tensor", tensor=t)) if t else "")
            if len(texts) == 1 and (text := texts.pop()):
                notes.append(f"{name}: {text}")
        doc = Brackets(f"def {self.def_name}", tuple(Text(n) for n in ["self", *names]), close="):")
        return statement(doc, "", CLASS_INDENT, ", ".join(notes))

    def group(self, items: list[_Stmt | _Block], binding: dict[str, str]) -> list[_Stmt | _Block]:
        """Merge statements into tuple assignments where a statement reads a variable an
        earlier one already rebound (only happens inside one multi-value assignment).
        `binding`: variable -> SSA node it holds before `items` run (updated)."""
        out: list[tuple[_Stmt | _Block, dict[str, str]]] = []
        for s in items:
            if isinstance(s, _Block):  # each part starts from the bindings before it
                s.then = self.group(s.then, dict(binding))
                s.orelse = self.group(s.orelse, dict(binding))
                out.append((s, dict(binding)))
                continue
            before = dict(binding)
            while any(before.get(v) != node for v, node in s.reads):
                if not out or isinstance(out[-1][0], _Block):  # pragma: no cover
                    raise SpecTypeError("cannot order this forward's assignments")
                prev, before = out.pop()
                assert isinstance(prev, _Stmt)
                s = _Stmt(
                    prev.targets + s.targets,
                    prev.values + s.values,
                    prev.reads + s.reads,
                    prev.defines + s.defines,
                )
            out.append((s, before))
            for v, node in s.defines:
                binding[v] = node
        return [s for s, _ in out]

    def assignment(self, s: _Stmt, base: int = BODY_INDENT) -> str:
        if len(s.values) == 1:
            return statement(s.values[0], ", ".join(s.targets[0]) + " = ", base, s.comment)
        targets = ", ".join(t[0] if len(t) == 1 else "(" + ", ".join(t) + ")" for t in s.targets)
        return statement(Brackets("", tuple(s.values), bare=True), targets + " = ", base)


def _indented(text: str, depth: int) -> str:
    """A statement laid out `depth` blocks deep, for a template that indents one level."""
    pad = "    " * depth
    return "\n".join(pad + line for line in text.split("\n")) if depth else text
