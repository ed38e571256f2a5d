"""Stage 4b: checked IR -> readable standalone PyTorch source (the code-generator back-end).

The generator reads the same checked ``ModelInstance`` tree as the builder, so the two back-ends
agree: one ``nn.Module`` class per model (the models the chosen one uses first), layers
constructed in declaration order (same seed, same weights), and a ``forward`` that mirrors
the spec's statements with the spec's own variable names.

Layer arguments are written from the model *definition*, so parameters keep their names
(``nn.Linear(84, num_classes)``); every ``_`` is replaced by the literal it resolved to. A
model used several times whose ``_`` resolves to different values gets a keyword-only
``__init__`` parameter for it (``<layer>_<argument>``), and each use passes its value.

``generate(..., train=True)`` (``compile --train``) adds the train block as a script in the
style of the PyTorch tutorials (``_TrainScript``): only the data helpers, fine-tuning steps
and loop features the spec uses, under ``if __name__ == "__main__":``, needing only torch and
torchvision (plus scikit-learn for ``Digits``, safetensors/numpy for such files).

Text is laid out by Jinja2 templates in ``templates/``; expressions are laid out here, as
small documents (``Text``, ``Brackets``, ``Comp``, ``Chain``) broken the way ``ruff format``
breaks them, so the output is already formatted. Every spec name goes through
``specc.codegen.naming``; every literal through ``repr``.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import itertools
import keyword
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2

from specc import ir
from specc.codegen.naming import MODULE_NAMES, Namespace, check_attribute, check_identifier
from specc.errors import (
    DataError,
    SpecError,
    SpecNameError,
    SpecTypeError,
    UsageError,
    did_you_mean,
)
from specc.lang.plugins import load_plugins, plugin_module_for
from specc.training.config import CallSpec
from specc.values import BINOP_SYMBOLS, literal, loc

# ruff format's default line length: the output must already be formatted at it.
LINE_LENGTH = 88
INDENT = "    "
# Where the templates put statements: class body, method body.
CLASS_INDENT = 4
BODY_INDENT = 8

# Operator precedence as in Python's grammar (higher binds tighter).
PREC_OR, PREC_COMPARE = 3, 6
PREC_SUM, PREC_PRODUCT, PREC_UNARY, PREC_POWER, PREC_PRIMARY, PREC_ATOM = 10, 11, 12, 13, 15, 16
BINOP_PREC = {
    "add": PREC_SUM,
    "sub": PREC_SUM,
    "mul": PREC_PRODUCT,
    "div": PREC_PRODUCT,
    "floordiv": PREC_PRODUCT,
    "mod": PREC_PRODUCT,
    "matmul": PREC_PRODUCT,
    "pow": PREC_POWER,
}

# Qualified-name prefix of a forward function -> how generated code spells its module.
FUNCTION_MODULES = {"torch.nn.functional": "F", "torch": "torch"}


def generate(program: ir.Program, model: str | None = None, train: bool = False) -> str:
    """Standalone PyTorch source for `model` (default: the spec's default model) and the
    models it uses. Raises a located SpecError for specs that cannot be written safely."""
    from specc.shapes.check import check_model

    texts = {s.path: s.text for s in program.sources}
    try:
        if train:
            source = _TrainScript(program, model).source()
        else:
            source = _Generator(program, [check_model(program, model)]).module()
    except SpecError as err:
        raise err.with_source(texts) from None
    try:
        ast.parse(source)
    except SyntaxError as exc:  # pragma: no cover - a generator bug, never a user mistake
        raise RuntimeError(
            f"specc generated invalid Python (line {exc.lineno}): {exc.msg}"
        ) from exc
    return source


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


# ---- literals -------------------------------------------------------------------------


def string_literal(value: str) -> str:
    """`repr(value)` in the quotes ruff format prefers: double, unless that needs more
    escapes than single quotes."""
    text = repr(value)
    if text.startswith('"') or value.count('"') > value.count("'"):
        return text
    # repr chose single quotes; swapping both quote characters before and after repr gives
    # the same string in double quotes, with repr's own escaping.
    swap = str.maketrans({"'": '"', '"': "'"})
    text = repr(value.translate(swap)).translate(swap)
    if not text.startswith('"') or ast.literal_eval(text) != value:  # pragma: no cover
        raise RuntimeError(f"cannot quote {value!r}")
    return text


def literal_doc(value: Any) -> Text:
    """A Python constant as code: `repr`, with ruff's quotes and non-finite floats spelled
    `float("inf")`."""
    if value is None or isinstance(value, bool):
        return Text(repr(value), simple="name")
    if isinstance(value, int):
        return Text(repr(value), PREC_UNARY if value < 0 else PREC_ATOM, "name")
    if isinstance(value, float):
        if math.isnan(value):
            return Text('float("nan")', PREC_PRIMARY)
        if math.isinf(value):
            return (
                Text('-float("inf")', PREC_UNARY)
                if value < 0
                else Text('float("inf")', PREC_PRIMARY)
            )
        return Text(repr(value), PREC_UNARY if value < 0 else PREC_ATOM, "name")
    if isinstance(value, str):
        return Text(string_literal(value))
    raise SpecTypeError(f"cannot write {value!r} as Python source")  # pragma: no cover


# ---- layout documents -----------------------------------------------------------------
# A tiny model of how ruff format breaks a too-long line: at the last bracket pair (a call,
# list, subscript), putting the contents on one indented line if they fit, else one item
# per line with a trailing comma; binary operators break before the operator.


@dataclass(frozen=True)
class Text:
    """Unbreakable code. `simple`: "name" (a name or number, maybe negated) or "attr" (a
    dotted name): ruff hugs `**` around them and spaces `:` in slices around others."""

    text: str
    prec: int = PREC_ATOM
    simple: str = ""


@dataclass(frozen=True)
class Brackets:
    """`head(item, ...)`. `bare`: a tuple written without parentheses (`return a, b`)
    that ruff parenthesises and explodes when it must break."""

    head: str
    items: tuple[Doc, ...]
    open: str = "("
    close: str = ")"
    prec: int = PREC_PRIMARY
    one_tuple: bool = False
    bare: bool = False
    display: bool = False  # a list or tuple display: explodes one item per line
    subscript: bool = False


@dataclass(frozen=True)
class Comp:
    """`*[elt for _ in range(n)]` (`star` may be empty). `more`: further clauses
    (`if ...`); `open`/`close`: "{" and "}" for a dict comprehension."""

    star: str
    elt: Doc
    clause: str
    prec: int = PREC_ATOM
    more: tuple[str, ...] = ()
    open: str = "["
    close: str = "]"


@dataclass(frozen=True)
class Chain:
    """Operands joined by binary operators of one precedence level: `a + b - c`."""

    operands: tuple[Doc, ...]
    ops: tuple[str, ...]
    prec: int


Doc = Text | Brackets | Comp | Chain


@functools.cache
def flat(doc: Doc) -> str:
    if isinstance(doc, Text):
        return doc.text
    if isinstance(doc, Brackets):
        inner = ", ".join(flat(i) for i in doc.items) + ("," if doc.one_tuple else "")
        return inner if doc.bare else f"{doc.head}{doc.open}{inner}{doc.close}"
    if isinstance(doc, Comp):
        clauses = " ".join((doc.clause, *doc.more))
        return f"{doc.star}{doc.open}{flat(doc.elt)} {clauses}{doc.close}"
    parts = [flat(doc.operands[0])]
    for op, operand in zip(doc.ops, doc.operands[1:], strict=True):
        parts.append(f" {op} {flat(operand)}")
    return "".join(parts)


def _fits(line: str) -> bool:
    return len(line) <= LINE_LENGTH


def layout(
    doc: Doc, indent: str, prefix: str = "", suffix: str = "", nested: bool = False
) -> list[str]:
    """Physical lines for `prefix + doc + suffix` at `indent`, broken like ruff format.
    `nested`: already inside brackets (operators then break without extra parentheses)."""
    line = indent + prefix + flat(doc) + suffix
    if _fits(line):
        return [line]
    return _broken(doc, indent, prefix, suffix, nested)


def _broken(doc: Doc, indent: str, prefix: str, suffix: str, nested: bool) -> list[str]:
    inner = indent + INDENT
    if isinstance(doc, Brackets) and doc.items:
        first = indent + prefix + ("(" if doc.bare else doc.head + doc.open)
        last = indent + (")" if doc.bare else doc.close) + suffix
        # list and tuple displays explode one item per line; calls and subscripts first
        # try all their items on one indented line
        if doc.bare or doc.display:
            body = [ln for item in doc.items for ln in layout(item, inner, "", ",", True)]
        elif len(doc.items) == 1:
            body = layout(doc.items[0], inner, "", "", True)
        else:
            joined = inner + ", ".join(flat(i) for i in doc.items)
            if _fits(joined):
                body = [joined]
            else:
                body = [ln for item in doc.items for ln in layout(item, inner, "", ",", True)]
        return [first, *body, last]
    if isinstance(doc, Comp):
        first = indent + prefix + doc.star + doc.open
        last = indent + doc.close + suffix
        clauses = (doc.clause, *doc.more)
        joined = inner + flat(doc.elt) + " " + " ".join(clauses)
        if _fits(joined):
            return [first, joined, last]
        return [first, *layout(doc.elt, inner, "", "", True), *(inner + c for c in clauses), last]
    if isinstance(doc, Chain):
        if nested:
            return _chain_lines(doc, indent, prefix, suffix)
        if _can_omit_parentheses(doc):
            lines = _inline_groups(doc, indent, prefix, suffix)
            if all(map(_fits, lines)):
                return lines
        return [indent + prefix + "(", *_chain_lines(doc, inner, "", ""), indent + ")" + suffix]
    return [indent + prefix + flat(doc) + suffix]  # unbreakable: left long, as ruff leaves it


def _own_brackets(doc: Doc) -> bool:
    """Has non-empty brackets of its own that ruff may break (subscripts excluded)."""
    if isinstance(doc, Comp):
        return True
    return isinstance(doc, Brackets) and bool(doc.items) and not doc.subscript


def _can_omit_parentheses(doc: Chain) -> bool:
    """ruff's rule for `y = a + f(...)`: no wrapping parentheses when the lowest-precedence
    operator occurs once and the expression ends (or starts) with its own brackets."""
    if len(doc.ops) != 1:
        return False
    last: Doc = doc
    while isinstance(last, Chain):
        last = last.operands[-1]
    first: Doc = doc
    while isinstance(first, Chain):
        first = first.operands[0]
    starts_with_bracket = isinstance(first, Brackets) and not first.head
    return _own_brackets(last) or (starts_with_bracket and _own_brackets(first))


def _inline_pieces(doc: Doc) -> list[str | Doc]:
    """A top-level operator chain as text and bracketed groups on one logical line."""
    if isinstance(doc, Chain):
        out = _inline_pieces(doc.operands[0])
        for op, operand in zip(doc.ops, doc.operands[1:], strict=True):
            out += [f" {op} ", *_inline_pieces(operand)]
        return out
    return [doc] if _own_brackets(doc) else [flat(doc)]


def _opening(doc: Doc) -> str:
    return doc.star + doc.open if isinstance(doc, Comp) else doc.head + doc.open  # type: ignore[union-attr]


def _inline_groups(doc: Chain, indent: str, prefix: str, suffix: str) -> list[str]:
    """Operators stay on the line; each bracketed group breaks, left to right, when it and
    the text up to the next place a line may break do not fit."""
    pieces = [prefix, *_inline_pieces(doc), suffix]
    lines: list[str] = []
    current = indent
    for k, piece in enumerate(pieces):
        if isinstance(piece, str):
            current += piece
            continue
        rest = ""
        for nxt in pieces[k + 1 :]:
            if isinstance(nxt, str):
                rest += nxt
            else:
                rest += _opening(nxt)
                break
        if _fits(current + flat(piece) + rest):
            current += flat(piece)
            continue
        *done, current = _broken(piece, indent, current[len(indent) :], "", True)
        lines += done
    return [*lines, current]


def _chain_lines(doc: Chain, indent: str, prefix: str, suffix: str) -> list[str]:
    n = len(doc.operands)
    lines = layout(doc.operands[0], indent, prefix, suffix if n == 1 else "", True)
    for i, (op, operand) in enumerate(zip(doc.ops, doc.operands[1:], strict=True), start=2):
        lines += layout(operand, indent, f"{op} ", suffix if i == n else "", True)
    return lines


def block(lines: list[str], base: int) -> str:
    """Lines laid out at indent `base`, as one string whose first line has no indent (the
    template supplies it and indents the rest with `| indent(base)`)."""
    pad = " " * base
    assert all(ln.startswith(pad) for ln in lines)
    return "\n".join(ln[base:] for ln in lines)


def statement(doc: Doc, prefix: str, base: int, comment: str = "") -> str:
    """One statement at indent `base`; a trailing comment only when the line fits."""
    pad = " " * base
    lines = layout(doc, pad, prefix)
    if comment and len(lines) == 1 and _fits(lines[0] + "  # " + comment):
        lines = [lines[0] + "  # " + comment]
    return block(lines, base)


def with_prefix(prefix: str, doc: Doc) -> Doc:
    """`prefix` glued in front of `doc` (keyword arguments: `dim=...`); it stays breakable."""
    if isinstance(doc, Brackets) and not doc.bare:
        return dataclasses.replace(doc, head=prefix + doc.head)
    if isinstance(doc, Comp):
        return dataclasses.replace(doc, star=prefix + doc.star)
    if isinstance(doc, Chain):
        first = with_prefix(prefix, doc.operands[0])
        return Chain((first, *doc.operands[1:]), doc.ops, doc.prec)
    return Text(prefix + flat(doc), PREC_ATOM)


def parens(doc: Doc) -> Doc:
    return Brackets("", (doc,), prec=PREC_ATOM)


# ---- expressions ----------------------------------------------------------------------


class Exprs:
    """Writes IR expressions as documents; names, holes and forward values are delegated
    to the caller, which knows what they mean in its scope."""

    def __init__(
        self,
        name: Callable[[ir.Name], Doc],
        hole: Callable[[ir.Hole], Doc],
        ref: Callable[[ir.Ref], Doc],
    ) -> None:
        self.name, self.hole, self.ref = name, hole, ref

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


def binop(op: str, left: Doc, right: Doc) -> Doc:
    if op not in BINOP_SYMBOLS:
        raise SpecTypeError(f"unknown operator `{op}`")
    sym, prec = BINOP_SYMBOLS[op], BINOP_PREC[op]
    if op == "pow":  # right-associative, binds tighter than unary minus on its left
        if left.prec <= PREC_POWER:
            left = parens(left)
        if right.prec < PREC_UNARY:
            right = parens(right)
        hug = _simple(left) and _simple(right)
        text = f"{flat(left)}**{flat(right)}" if hug else f"{flat(left)} ** {flat(right)}"
        return Text(text, PREC_POWER)
    if left.prec < prec:
        left = parens(left)
    if right.prec <= prec:
        right = parens(right)
    if isinstance(left, Chain) and left.prec == prec:
        return Chain((*left.operands, right), (*left.ops, sym), prec)
    return Chain((left, right), (sym,), prec)


def negate(operand: Doc) -> Doc:
    if operand.prec < PREC_UNARY:
        operand = parens(operand)
    simple = operand.simple if isinstance(operand, Text) else ""
    return Text(f"-{flat(operand)}", PREC_UNARY, simple)


def _simple(doc: Doc) -> bool:
    return isinstance(doc, Text) and doc.simple in ("name", "attr")


def attribute_of(recv: Doc, name: str) -> str:
    """`recv.name` text, parenthesising a receiver that would not bind (`(a + b).sum`)."""
    text = flat(recv)
    if recv.prec < PREC_PRIMARY or re.fullmatch(r"-?[0-9][0-9_]*", text):
        text = f"({text})"
    return f"{text}.{name}"


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
    elif isinstance(c, (ir.SequentialCtor, ir.RepeatCtor)):
        for item in c.items:
            yield from _children(item)


@functools.cache
def _model_attrs(sequential: bool) -> frozenset[str]:
    """Attribute names an nn.Module (or nn.Sequential) already has: not usable as layers."""
    from torch import nn

    base = nn.Sequential if sequential else nn.Module
    return frozenset(dir(base)) | frozenset(vars(nn.Module()))


class _Generator:
    """One generated module: a class per model that `tops` (checked instances) use.
    `reserved`: further module-level names the output uses (the training script's)."""

    def __init__(
        self,
        program: ir.Program,
        tops: list[ir.ModelInstance],
        reserved: dict[str, str] | None = None,
    ) -> None:
        self.program = program
        self.plans: dict[str, _Plan] = {}
        self.collected: set[int] = set()
        for top in tops:
            self.collect(top)  # fills self.plans in dependency order (used models first)
        self.uses = {"torch": False, "F": False, "OrderedDict": False}
        self.modules = Namespace(
            {
                n: f"`{n}`, which the generated module imports"
                for n in ("torch", "nn", "F", "OrderedDict")
            }
            | (reserved or {})
        )
        for name, plan in self.plans.items():
            self.modules.claim(name, plan.mdef.span, "model name")
        self.plugin_classes = load_plugins(program) if program.plugins else {}
        self.plugin_imports: dict[str, list[str]] = {}  # module -> classes, in first use

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
        if self.uses["F"]:
            lines.add("import torch.nn.functional as F")
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
        attrs = Namespace({n: f"`nn.Module.{n}`" for n in _model_attrs(sequential)})
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
            default = self.value_exprs(plan, None)(p.default)
            if _names_in(p.default):  # a default computed from other parameters
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
            return out
        out["template"] = "model.py.j2"
        out["layers"] = [
            statement(doc, f"self.{layer.name} = ", BODY_INDENT)
            for layer, doc in zip(mdef.layers, layers, strict=True)
        ]
        fwd = _ForwardWriter(self, plan)
        forward_def, body = fwd.render()
        stored = []
        for p in mdef.params:
            if p.name in fwd.used_params:
                attrs.claim(p.name, p.span, "model parameter stored for forward", attribute=True)
                stored.append(f"self.{p.name} = {p.name}")
        out["stored"] = stored
        out["forward_def"] = forward_def
        out["forward_body"] = body
        return out

    def sequential_items(self, mdef: ir.ModelDef, layers: list[Doc]) -> Doc:
        if all(layer.anonymous for layer in mdef.layers):
            return Brackets("super().__init__", tuple(layers))
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
        if isinstance(c, ir.SequentialCtor) and isinstance(e, ir.Call):
            for a, item in zip(e.args, c.items, strict=True):
                self.walk_holes(a, item, label, out, where)
        elif isinstance(c, ir.RepeatCtor) and isinstance(e, ir.Call):
            for k in range(c.count):
                self.walk_holes(e.args[1], c.items[min(k, len(c.items) - 1)], label, out, where)
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
            if e.id not in {p.name for p in plan.mdef.params}:
                raise SpecNameError(f"unknown name `{e.id}`", loc(e.span))
            return Text(e.id, simple="name")

        return Exprs(name, hole_value or _no_hole, _no_ref)

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
        if not isinstance(e, ir.Call):  # pragma: no cover - the checker rejects these
            raise SpecTypeError("a layer must be a constructor call", loc(getattr(e, "span", None)))
        if isinstance(c, ir.SequentialCtor):
            return Brackets(
                "nn.Sequential",
                tuple(
                    self.ctor_doc(plan, a, item) for a, item in zip(e.args, c.items, strict=True)
                ),
            )
        if isinstance(c, ir.RepeatCtor):
            return self.repeat_doc(plan, e, c, values)
        if isinstance(c, ir.ModelCtor):
            child = self.plans[c.instance.model]
            check_identifier(e.func, e.func_span or e.span, "model name")
            items = [*map(values, e.args)]
            items += [
                with_prefix(f"{check_attribute(k, v.span, 'keyword')}=", values(v))
                for k, v in e.kwargs.items()
            ]
            got = child.hole_values[id(c.instance)]
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
        """`repeat(n, X)`: `nn.Sequential(*[X for _ in range(n)])`, each instance built in
        order; uses that differ (a `_` that changes along the chain) are written out."""
        last = len(c.items) - 1
        docs = [self.ctor_doc(plan, e.args[1], c.items[min(k, last)]) for k in range(c.count)]
        runs: list[tuple[Doc, int]] = []
        for d in docs:
            if runs and flat(runs[-1][0]) == flat(d):
                runs[-1] = (d, runs[-1][1] + 1)
            else:
                runs.append((d, 1))
        if len(runs) == 1:
            count = flat(values(e.args[0]))
            return Brackets("nn.Sequential", (Comp("*", docs[0], f"for _ in range({count})"),))
        items = tuple(d if n == 1 else Comp("*", d, f"for _ in range({n})") for d, n in runs)
        return Brackets("nn.Sequential", items)


def _ctor_params(plugin: type | None, func: str) -> list[str]:
    """Parameter names of a layer class (for naming keyword parameters of holes)."""
    from specc.registry import accepts, nn_classes

    cls = plugin or nn_classes().get(func)
    return accepts(cls)[0] if cls is not None else []


def _names_in(e: Any) -> bool:
    if isinstance(e, ir.Name):
        return True
    if isinstance(e, (ir.ListExpr, ir.TupleExpr)):
        return any(_names_in(i) for i in e.items)
    if isinstance(e, ir.BinOp):
        return _names_in(e.left) or _names_in(e.right)
    if isinstance(e, ir.Neg):
        return _names_in(e.operand)
    return False


def _no_name(e: ir.Name) -> Doc:  # pragma: no cover - literals have no names
    raise SpecNameError(f"unexpected name `{e.id}`", loc(e.span))


def _no_hole(e: ir.Hole) -> Doc:
    raise SpecTypeError("`_` can only stand for a layer argument", loc(e.span))


def _no_ref(e: ir.Ref) -> Doc:  # pragma: no cover - only forward has values
    raise SpecTypeError("a forward value cannot be used here", loc(e.span))


def _refs(e: Any) -> Iterator[ir.Ref]:
    if isinstance(e, ir.Ref):
        yield e
    elif isinstance(e, (ir.ListExpr, ir.TupleExpr)):
        for i in e.items:
            yield from _refs(i)
    elif isinstance(e, ir.SliceExpr):
        for p in (e.start, e.stop, e.step):
            yield from _refs(p)
    elif isinstance(e, ir.BinOp):
        yield from _refs(e.left)
        yield from _refs(e.right)
    elif isinstance(e, ir.Neg):
        yield from _refs(e.operand)


def _names(e: Any) -> Iterator[ir.Name]:
    if isinstance(e, ir.Name):
        yield e
    elif isinstance(e, (ir.ListExpr, ir.TupleExpr)):
        for i in e.items:
            yield from _names(i)
    elif isinstance(e, ir.SliceExpr):
        for p in (e.start, e.stop, e.step):
            yield from _names(p)
    elif isinstance(e, ir.BinOp):
        yield from _names(e.left)
        yield from _names(e.right)
    elif isinstance(e, ir.Neg):
        yield from _names(e.operand)


# ---- forward --------------------------------------------------------------------------


def shape_comment(v: ir.Value | None) -> str:
    """`(B, 6, 14, 14)` for a tensor value; "" for anything else."""
    if v is None or v.kind != "tensor" or v.tensor is None:
        return ""
    dims = [str(d) for d in v.tensor.shape]
    if v.tensor.batched:
        dims.insert(0, "B")
    text = "(" + ", ".join(dims) + ("," if len(dims) == 1 else "") + ")"
    return text if v.tensor.dtype == "float32" else f"{text} {v.tensor.dtype}"


@dataclass
class _Stmt:
    targets: list[list[str]]  # one entry per value; several names = unpacking
    values: list[Doc]
    reads: list[tuple[str, str]]  # (variable, SSA node it must hold) when this runs
    defines: list[tuple[str, str]]  # (variable, SSA node) bound by this statement
    comment: str = ""


class _ForwardWriter:
    """Writes a forward from the SSA nodes: named nodes become statements, unnamed ones are
    inlined where they are used; a multi-value assignment whose parts read each other's old
    values (`a, b = b, a`) is written back as one tuple assignment."""

    def __init__(self, gen: _Generator, plan: _Plan) -> None:
        self.gen = gen
        self.plan = plan
        fwd = plan.mdef.forward
        assert fwd is not None
        self.fwd = fwd
        self.nodes = {n.name: n for n in fwd.nodes}
        self.params = {p.name for p in plan.mdef.params}
        self.used_params: set[str] = set()
        self.dims: dict[str, tuple[str, int, ir.Span]] = {}  # dim -> (input, axis, span)
        for inp in fwd.inputs:
            for axis, d in enumerate(inp.shape, start=1):
                if isinstance(d.value, str) and d.value not in self.dims:
                    self.dims[d.value] = (inp.name, axis, d.span)
        self.used_dims: dict[str, None] = {}
        self.reads: list[tuple[str, str]] = []
        self.exprs = Exprs(self.name, _no_hole, self.ref)

    # ---- expressions ------------------------------------------------------------------
    def name(self, e: ir.Name) -> Doc:
        if e.id in self.params:
            self.used_params.add(e.id)
            return Text(f"self.{e.id}", PREC_PRIMARY, "attr")
        if e.id in self.dims:
            self.used_dims[e.id] = None
            return Text(check_identifier(e.id, e.span, "dimension name"), simple="name")
        raise SpecNameError(f"unknown name `{e.id}`", loc(e.span))  # pragma: no cover

    def ref(self, e: ir.Ref) -> Doc:
        node = self.nodes[e.node]
        if not node.vars:
            return self.node_doc(node)
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

    def node_doc(self, n: ir.FNode) -> Doc:
        """The expression computing node `n` (its unnamed inputs inlined)."""
        if n.op == "layer":
            check_attribute(n.target, n.span, "layer")
            return Brackets(f"self.{n.target}", self.call_items(n.args, n.kwargs))
        if n.op == "function":
            module, _, fname = n.target.rpartition(".")
            if module not in FUNCTION_MODULES:
                raise SpecNameError(f"cannot write function `{n.target}`", loc(n.span))
            alias = FUNCTION_MODULES[module]
            self.gen.uses[alias] = True
            check_attribute(fname, n.span, "function")
            return Brackets(f"{alias}.{fname}", self.call_items(n.args, n.kwargs))
        if n.op == "method":
            recv = self.exprs(n.args[0])
            head = attribute_of(recv, check_attribute(n.target, n.span, "method"))
            return Brackets(head, self.call_items(n.args[1:], n.kwargs))
        if n.op == "attribute":
            recv = self.exprs(n.args[0])
            name = check_attribute(n.target, n.span, "attribute")
            simple = (
                "attr"
                if isinstance(recv, Text)
                and recv.simple in ("name", "attr")
                and recv.prec >= PREC_PRIMARY
                else ""
            )
            return Text(attribute_of(recv, name), PREC_PRIMARY, simple)
        if n.op == "operator":
            if n.target == "neg":
                return negate(self.exprs(n.args[0]))
            return binop(n.target, self.exprs(n.args[0]), self.exprs(n.args[1]))
        if n.op == "getitem":
            value = self.exprs(n.args[0])
            head = flat(value) if value.prec >= PREC_PRIMARY else f"({flat(value)})"
            index = n.args[1]
            if isinstance(index, ir.TupleExpr) and len(index.items) > 1:
                items = tuple(self.exprs.index(i) for i in index.items)
            else:
                items = (self.exprs.index(index),)
            return Brackets(head, items, "[", "]", subscript=True)
        if n.op == "alias":
            return self.exprs(n.args[0])
        raise SpecTypeError(f"cannot write `{n.op}` nodes", loc(n.span))  # pragma: no cover

    # ---- statements -------------------------------------------------------------------
    def live(self) -> set[str]:
        """Nodes the output depends on; statements nothing reads are left out."""
        live: set[str] = set()
        todo = [n.name for n in self.fwd.nodes if n.op == "output"]
        while todo:
            name = todo.pop()
            if name in live:
                continue
            live.add(name)
            n = self.nodes[name]
            for e in [*n.args, *n.kwargs.values()]:
                todo += [r.node for r in _refs(e)]
        return live

    def comment(self, n: ir.FNode) -> str:
        texts = {shape_comment(inst.values.get(n.name)) for inst in self.plan.instances}
        return texts.pop() if len(texts) == 1 else ""

    def render(self) -> tuple[str, list[str]]:
        for inp in self.fwd.inputs:
            check_identifier(inp.name, inp.span, "forward input")
        live = self.live()
        raw: list[_Stmt] = []
        output: ir.FNode | None = None
        for n in self.fwd.nodes:
            if n.op == "input":
                continue
            if n.op == "output":
                output = n
                continue
            if not n.vars or n.name not in live:
                continue
            for v in n.vars:
                check_identifier(v, n.span, "variable")
            self.reads = []
            doc = self.node_doc(n)
            comment = self.comment(n) if len(n.vars) == 1 else ""
            raw.append(
                _Stmt([list(n.vars)], [doc], self.reads, [(v, n.name) for v in n.vars], comment)
            )
        grouped = self.group(raw)
        shapes = [s.comment for s in grouped]
        for s, prev in zip(grouped[1:], shapes[:-1], strict=True):
            if s.comment == prev:  # unchanged shape: the comment would only repeat
                s.comment = ""
        assignments = [self.assignment(s) for s in grouped]
        assert output is not None
        returns = [self.exprs(a) for a in output.args]
        value = returns[0] if len(returns) == 1 else Brackets("", tuple(returns), bare=True)
        # named dimensions (`x: [T, C]`) are read from the input before anything else
        body = [self.dim_line(d) for d in self.used_dims]
        body += [*assignments, statement(value, "return ", BODY_INDENT)]
        return self.signature(), body

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
        doc = Brackets("def forward", tuple(Text(n) for n in ["self", *names]), close="):")
        return statement(doc, "", CLASS_INDENT, ", ".join(notes))

    def group(self, raw: list[_Stmt]) -> list[_Stmt]:
        """Merge statements into tuple assignments where a statement reads a variable an
        earlier one already rebound (only happens inside one multi-value assignment)."""
        binding = {n.vars[0]: n.name for n in self.fwd.nodes if n.op == "input"}
        out: list[tuple[_Stmt, dict[str, str]]] = []
        for s in raw:
            before = dict(binding)
            while any(before.get(v) != node for v, node in s.reads):
                if not out:  # pragma: no cover - SSA from the lowering never does this
                    raise SpecTypeError("cannot order this forward's assignments")
                prev, before = out.pop()
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

    def assignment(self, s: _Stmt) -> str:
        if len(s.values) == 1:
            return statement(s.values[0], ", ".join(s.targets[0]) + " = ", BODY_INDENT, s.comment)
        targets = ", ".join(t[0] if len(t) == 1 else "(" + ", ".join(t) + ")" for t in s.targets)
        return statement(Brackets("", tuple(s.values), bare=True), targets + " = ", BODY_INDENT)


# ---- the training script (compile --train) ------------------------------------------------

# Names the training script binds or calls at module level or in `main()`: a model or plugin
# class of the same name would shadow them.
TRAIN_NAMES = frozenset(
    {
        # imports and helpers
        "torchvision", "v2", "DataLoader", "Dataset", "Subset", "TensorDataset", "fnmatch",
        "math", "np", "load_file", "evaluate", "main", "digits_dataset", "load_tensor_file",
        "TransformedDataset", "UnverifiedCIFAR10", "UnverifiedCIFAR100",
        # builtins the script calls
        "print", "len", "round", "max", "sorted", "isinstance", "dict", "tuple", "list",
        "enumerate", "any",
        # locals of main()
        "device", "transform", "train_transform", "train_set", "val_set", "test_set",
        "train_loader", "val_loader", "test_loader", "n_val", "generator", "perm", "model",
        "state", "own", "name", "param", "loss_fn", "optimizer", "scheduler", "warmup",
        "scaler", "step", "epoch", "running_loss", "i", "inputs", "labels", "outputs", "loss",
        "bad_epochs", "k", "v", "p", "other_params",
        *(f"{pre}_{m}" for pre in ("best", "val", "test") for m in ("loss", "accuracy", "top5")),
    }
)  # fmt: skip
METRICS = ("accuracy", "top5", "loss")
STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")  # stepped per optimizer step by default
MAIN = 4  # indent of main()'s statements
TENSOR_FILE_KINDS = {".pt": "pt", ".pth": "pt", ".npz": "npz", ".safetensors": "safetensors"}
TENSOR_FILE_IMPORTS = {
    "npz": {"import numpy as np"},
    "safetensors": {"from safetensors.torch import load_file"},
}
# How load_tensor_file reads each kind of file (the `data` dict it fills), in branch order.
TENSOR_FILE_LOADS = {
    "npz": ('path.endswith(".npz")', "data = dict(np.load(path))"),
    "safetensors": ('path.endswith(".safetensors")', "data = load_file(path)"),
    "pt": (
        'path.endswith((".pt", ".pth"))',
        "data = torch.load(path, weights_only=True)\n"
        "if isinstance(data, (tuple, list)):  # saved as a pair (inputs, labels)\n"
        "    data = {x: data[0], y: data[1]}",
    ),
}


def _plain_signature(sig: inspect.Signature) -> str:
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _check_call(
    target: Any, args: list, kwargs: dict, what: str, span: ir.Span | None, error=SpecTypeError
) -> inspect.BoundArguments | None:
    """Bind a spec's arguments to `target`'s signature: a mistake is a located error here,
    not a TypeError when the script runs. None when the signature cannot be read."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # pragma: no cover - builtins without a signature
        return None
    try:
        return sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise error(
            f"bad arguments for {what}: {exc}",
            loc(span),
            hint=f"the signature is {_plain_signature(sig)}",
        ) from None


def _paragraphs(*groups: list[str]) -> list[str]:
    """Statement groups with a blank line between them (the template indents each line;
    `indent` leaves the empty one empty)."""
    out: list[str] = []
    for group in groups:
        if group and out:
            out[-1] += "\n"
        out += group
    return out


def _module_path(root: str, path: str, getter: str = "get_submodule") -> str:
    """`model.backbone.bn1`, `model.head[0]`: a sub-module or parameter by its dotted name."""
    out = root
    for part in path.split("."):
        if part.isascii() and part.isdigit():
            out += f"[{part}]"
        elif part.isascii() and part.isidentifier() and not keyword.iskeyword(part):
            out += f".{part}"
        else:  # a name Python cannot write after a dot: look it up by its string
            return f"{root}.{getter}({string_literal(path)})"
    return out


def _on_device(name: str, ctor: Doc) -> list[str]:
    """`name = Ctor(...).to(device)`; split in two when that is too long for one line
    (ruff would break the short `.to(` call first)."""
    line = " " * MAIN + f"{name} = {flat(ctor)}.to(device)"
    if _fits(line):
        return [line[MAIN:]]
    return [statement(ctor, f"{name} = ", MAIN), f"{name}.to(device)"]


def _is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


class _TrainScript:
    """`compile --train`: the model module, then the data pipeline, loss, optimizer,
    scheduler and a tutorial-style loop in `main()`. The settings are the runner's
    (`config.train_config`); each constructor is bound to its class's signature here, so
    a mistake is a located error at compile time, not a traceback when the script runs."""

    def __init__(self, program: ir.Program, model: str | None) -> None:
        from specc.shapes.check import check_model
        from specc.training.config import train_config

        self.program = program
        self.cfg, self.data = train_config(program)
        spec = self.cfg.model
        if model is not None and model != spec.name:
            raise UsageError(
                f"--train writes the training of the train block's model `{spec.name}`, "
                f"not `{model}`",
                hint="leave out --model, or change `model = ...` in the train block",
            )
        mdef = program.model(spec.name)
        if mdef is None:
            raise SpecTypeError(
                f"no model named `{spec.name}`",
                loc(spec.span),
                hint=did_you_mean(spec.name, [m.name for m in program.models]),
            )
        if len(spec.args) > len(mdef.params):
            raise SpecTypeError(
                f"`{spec.name}` takes {len(mdef.params)} arguments, not {len(spec.args)}",
                loc(spec.span),
            )
        names = [p.name for p in mdef.params]
        args = dict(zip(names, spec.args, strict=False)) | spec.kwargs
        self.top = check_model(program, spec.name, args=args)
        self.plugins = load_plugins(program) if program.plugins else {}
        self.loss_inst = self.spec_loss()
        tops = [self.top] if self.loss_inst is None else [self.top, self.loss_inst]
        reserved = {n: f"`{n}`, which the generated training script uses" for n in TRAIN_NAMES}
        self.gen = _Generator(program, tops, reserved)
        self.imports = {"import torch"}
        self.dataset_names: set[str] = set()  # torch.utils.data classes besides DataLoader
        # the helpers the data needs
        self.unverified: dict[str, str] = {}  # class name -> the torchvision class it extends
        self.digits = False  # digits_dataset()
        self.tensor_kinds: set[str] = set()  # load_tensor_file() for these kinds of file
        self.transformed = False  # TransformedDataset
        self.meta: Any = None

    # ---- values -------------------------------------------------------------------------
    def value(self, v: Any, span: ir.Span | None) -> Doc:
        """A constant from the spec as code (literals through `repr`)."""
        if isinstance(v, (Text, Brackets)):  # already code (a coerced argument)
            return v
        if isinstance(v, CallSpec):
            raise SpecTypeError("a call is not allowed here", loc(v.span or span))
        if isinstance(v, list):
            items = tuple(self.value(i, span) for i in v)
            return Brackets("", items, "[", "]", PREC_ATOM, display=True)
        if isinstance(v, tuple):
            if not v:
                return Text("()")
            items = tuple(self.value(i, span) for i in v)
            return Brackets("", items, prec=PREC_ATOM, one_tuple=len(items) == 1, display=True)
        if v is None or isinstance(v, (bool, int, float, str)):
            return literal_doc(v)
        raise SpecTypeError(f"cannot write {v!r} as Python source", loc(span))

    def call(
        self,
        head: str,
        spec: CallSpec,
        lead: tuple[Doc, ...] = (),
        args: list | None = None,
        kwargs: dict[str, Any] | None = None,
    ) -> Doc:
        """`head(*lead, *args, **kwargs)` with the spec's arguments (or the given ones)."""
        args = spec.args if args is None else args
        kwargs = spec.kwargs if kwargs is None else kwargs
        items = [*lead, *(self.value(a, spec.span) for a in args)]
        for k, v in kwargs.items():
            items.append(
                with_prefix(
                    f"{check_attribute(k, spec.span, 'keyword')}=", self.value(v, spec.span)
                )
            )
        return Brackets(head, tuple(items))

    # ---- data ---------------------------------------------------------------------------
    def transform_doc(self, items: list[CallSpec]) -> Doc | None:
        """`v2.Compose([...])` for a transform list; None when it is empty. ToTensor is
        the classic one: `ToImage()` then `ToDtype(torch.float32, scale=True)`."""
        import torch
        from torchvision.transforms import v2

        steps: list[Doc] = []
        for c in items:
            if c.name == "ToTensor":
                if c.args or c.kwargs:
                    raise DataError(
                        "transform `ToTensor` takes no arguments",
                        loc(c.span),
                        hint="write `ToTensor()`; use `ToDtype` to choose another dtype",
                    )
                steps += [Text("v2.ToImage()"), Text("v2.ToDtype(torch.float32, scale=True)")]
                continue
            cls = getattr(v2, c.name, None) if not c.name.startswith("_") else None
            if not (isinstance(cls, type) and issubclass(cls, v2.Transform)):
                names = [n for n in dir(v2) if isinstance(getattr(v2, n), type)]
                raise DataError(
                    f"unknown transform `{c.name}`: torchvision.transforms.v2 has no transform "
                    "of that name",
                    loc(c.span),
                    hint=did_you_mean(c.name, [*names, "ToTensor"]),
                )
            kwargs, values = dict(c.kwargs), dict(c.kwargs)
            dtype = kwargs.get("dtype")
            if isinstance(dtype, str):  # spec strings for the dtypes torchvision wants
                name = dtype.removeprefix("torch.")
                if isinstance(getattr(torch, name, None), torch.dtype):
                    kwargs["dtype"] = Text(f"torch.{check_attribute(name, c.span, 'dtype')}")
                    values["dtype"] = getattr(torch, name)
            _check_call(cls, c.args, values, f"transform `{c.name}`", c.span, DataError)
            steps.append(self.call(f"v2.{c.name}", c, kwargs=kwargs))
        if not steps:
            return None
        self.imports.add("from torchvision.transforms import v2")
        return Brackets(
            "v2.Compose", (Brackets("", tuple(steps), "[", "]", PREC_ATOM, display=True),)
        )

    def dataset_doc(self, spec: CallSpec, transform: str | None) -> Doc:
        """One dataset: a torchvision class, or a helper for Digits / TensorFile."""
        if "transform" in spec.kwargs:
            raise DataError(
                f"dataset `{spec.name}`: give transforms in the transform list, "
                "not as `transform=`",
                loc(spec.span),
            )
        if spec.name in ("Digits", "TensorFile"):
            doc = self.builtin_dataset(spec)
            if transform is None:
                return doc
            self.transformed = True
            self.dataset_names.add("Dataset")
            return Brackets("TransformedDataset", (doc, Text(transform)))
        import torchvision

        name = spec.name
        cls = getattr(torchvision.datasets, name, None)
        if (
            name not in torchvision.datasets.__all__
            or not isinstance(cls, type)
            or name == "VisionDataset"
        ):
            raise DataError(
                f"unknown dataset `{name}`: it is neither a built-in (Digits, TensorFile) "
                "nor a dataset class in torchvision.datasets",
                loc(spec.span),
                hint=did_you_mean(name, ["Digits", "TensorFile", *torchvision.datasets.__all__]),
            )
        kwargs = dict(spec.kwargs)
        verify = kwargs.pop("verify", True)
        if not isinstance(verify, bool):
            raise DataError(
                f"dataset `{name}`: `verify` must be true or false, got {verify!r}", loc(spec.span)
            )
        head = f"torchvision.datasets.{name}"
        if not verify and cls in (torchvision.datasets.CIFAR10, torchvision.datasets.CIFAR100):
            # torchvision checks these files' MD5 sums; a small subclass checks only that
            # they exist. (MNIST, FashionMNIST and KMNIST files are never checksummed, so
            # for them verify=False changes nothing and is left out.)
            head = f"Unverified{name}"
            self.unverified[head] = name
        elif not verify and hasattr(cls, "_check_integrity") and not self.plain_mnist(cls):
            raise DataError(
                f"dataset `{name}`: verify=False is not supported for this dataset",
                loc(spec.span),
                hint="verify=False works for CIFAR10 and CIFAR100; MNIST, FashionMNIST and "
                "KMNIST never checksum their files; remove verify=False",
            )
        values = dict(kwargs) | ({"transform": None} if transform else {})
        _check_call(cls, spec.args, values, f"dataset `{name}`", spec.span, DataError)
        self.imports.add("import torchvision")
        doc = self.call(head, spec, kwargs=kwargs)
        assert isinstance(doc, Brackets)
        if transform is not None:
            doc = dataclasses.replace(doc, items=(*doc.items, Text(f"transform={transform}")))
        return doc

    @staticmethod
    def plain_mnist(cls: type) -> bool:
        """MNIST, FashionMNIST, KMNIST: raw idx files checked only for existence."""
        import torchvision

        mnist = torchvision.datasets.MNIST
        return (
            issubclass(cls, mnist)
            and cls._check_exists is mnist._check_exists  # type: ignore[attr-defined]
            and cls._load_data is mnist._load_data  # type: ignore[attr-defined]
        )

    def builtin_dataset(self, spec: CallSpec) -> Doc:
        self.dataset_names.add("TensorDataset")
        if spec.name == "Digits":

            def digits(train: bool = True) -> None: ...

            bound = _check_call(
                digits, spec.args, spec.kwargs, "dataset `Digits`", spec.span, DataError
            )
            train = bound.arguments.get("train", True) if bound else True
            if not isinstance(train, bool):
                raise DataError(
                    f"dataset `Digits`: `train` must be true or false, got {train!r}",
                    loc(spec.span),
                )
            self.digits = True
            return self.call("digits_dataset", spec)

        def tensor_file(path: str, x: str = "x", y: str = "y") -> None: ...

        bound = _check_call(
            tensor_file, spec.args, spec.kwargs, "dataset `TensorFile`", spec.span, DataError
        )
        assert bound is not None
        bound.apply_defaults()
        path = bound.arguments["path"]
        for key in ("path", "x", "y"):
            if not isinstance(bound.arguments[key], str):
                raise DataError(f"TensorFile: `{key}` must be a string", loc(spec.span))
        suffix = Path(path).suffix.lower()
        if suffix not in TENSOR_FILE_KINDS:
            raise DataError(
                f"TensorFile: cannot read {path!r}: unsupported file type '{suffix or '(none)'}'",
                loc(spec.span),
                hint="save the inputs and labels as .pt (torch.save), .npz (numpy.savez) "
                "or .safetensors (safetensors.torch.save_file)",
            )
        kind = TENSOR_FILE_KINDS[suffix]
        self.tensor_kinds.add(kind)
        self.imports |= TENSOR_FILE_IMPORTS.get(kind, set())
        return self.call("load_tensor_file", spec)

    def data_section(self) -> tuple[list[str], dict[str, str]]:
        """Transforms, datasets, val_split and loaders; returns the statements and the
        loader of each split ("train", "val", "test") that exists."""
        data = self.data
        transforms: list[str] = []
        common = self.transform_doc(data.transform)
        if common is not None:
            transforms.append(statement(common, "transform = ", MAIN))
        eval_tf = train_tf = "transform" if common is not None else None
        if data.train_transform is not None:
            doc = self.transform_doc(data.train_transform)
            if doc is None:
                train_tf = None
            elif common is None or flat(doc) != flat(common):
                transforms.append(statement(doc, "train_transform = ", MAIN))
                train_tf = "train_transform"
        sets = [statement(self.dataset_doc(data.train, train_tf), "train_set = ", MAIN)]
        splits = {"train": "train_set"}
        if data.val is not None:
            sets.append(statement(self.dataset_doc(data.val, eval_tf), "val_set = ", MAIN))
            splits["val"] = "val_set"
        elif data.val_split:
            splits["val"] = "val_set"
            self.dataset_names.add("Subset")
            held_out = (
                Text("train_set") if eval_tf == train_tf else self.dataset_doc(data.train, eval_tf)
            )
            percent = f"{data.val_split * 100:g}%"
            sets += [
                f"# hold out a seeded random {percent} of the training set for validation",
                statement(
                    Text(f"max(1, round(len(train_set) * {data.val_split!r}))"), "n_val = ", MAIN
                ),
                f"generator = torch.Generator().manual_seed({self.cfg.seed!r})",
                "perm = torch.randperm(len(train_set), generator=generator).tolist()",
                statement(
                    Brackets("Subset", (held_out, Text("sorted(perm[:n_val])"))), "val_set = ", MAIN
                ),
                "train_set = Subset(train_set, sorted(perm[n_val:]))",
            ]
        if data.test is not None:
            sets.append(statement(self.dataset_doc(data.test, eval_tf), "test_set = ", MAIN))
            splits["test"] = "test_set"
        loaders = []
        workers = [Text(f"num_workers={data.workers}")] if data.workers else []
        train_opts = [Text(f"batch_size={data.batch_size}")]
        if data.shuffle:
            train_opts.append(Text("shuffle=True"))
        train_opts += workers
        if data.drop_last:
            train_opts.append(Text("drop_last=True"))
        eval_batch = data.eval_batch_size or max(data.batch_size, 256)
        for split, var in splits.items():
            opts = train_opts if split == "train" else [Text(f"batch_size={eval_batch}"), *workers]
            doc = Brackets("DataLoader", (Text(var), *opts))
            loaders.append(statement(doc, f"{split}_loader = ", MAIN))
        return _paragraphs(transforms, sets, loaders), {s: f"{s}_loader" for s in splits}

    # ---- model, fine-tuning, loss, optimizer ------------------------------------------------
    def meta_model(self) -> Any:
        """The model on the meta device: its parameter and module names, for init, freeze
        and group statements."""
        if self.meta is None:
            import torch

            from specc.builder import build_module

            with torch.device("meta"):
                self.meta = build_module(self.top, self.plugins)
        return self.meta

    def model_section(self) -> tuple[list[list[str]], list[str], bool]:
        """Model, init and freeze statements (a group each); the frozen BatchNorm layers
        (kept in eval mode); whether any parameter is frozen."""
        spec = self.cfg.model
        check_identifier(spec.name, spec.span, "model name")
        train = self.program.trains[0]
        groups = [_on_device("model", self.call(spec.name, spec))]
        for stmt in train.inits:
            groups.append(self.init_statements(stmt))
        frozen: set[str] = set()
        norms: list[str] = []
        if train.freezes:
            from specc.training.finetune import frozen_names

            meta = self.meta_model()
            frozen = frozen_names(self.program, meta)
            for name, p in meta.named_parameters():
                p.requires_grad_(name not in frozen)
            groups.append(self.freeze_statements(train.freezes))
            from torch import nn

            for path, module in meta.named_modules():
                if isinstance(module, nn.modules.batchnorm._BatchNorm):
                    names = [f"{path}.{n}" for n, _ in module.named_parameters()]
                    if names and all(n in frozen for n in names):
                        norms.append(_module_path("model", path))
        if self.cfg.compile:
            groups[-1] = [*groups[-1], "model.compile()"]
        return groups, norms, bool(frozen)

    def init_statements(self, stmt: ir.InitStmt) -> list[str]:
        """`init [target] from "file" (options)`: the checkpoint's weights, mapped onto the
        target's keys as the runner maps them, loaded with `load_state_dict`."""
        from specc.training.finetune import INIT_OPTIONS

        opts: dict[str, Any] = {}
        for key, expr in stmt.options.items():
            if key not in INIT_OPTIONS:
                raise SpecTypeError(
                    f"init has no option `{key}`",
                    loc(expr.span) or loc(stmt.span),
                    hint=did_you_mean(key, INIT_OPTIONS) or f"options: {', '.join(INIT_OPTIONS)}",
                )
            opts[key] = literal(expr)
        target = "model"
        if stmt.target:
            meta = self.meta_model()
            try:
                meta.get_submodule(stmt.target)
            except AttributeError:
                raise SpecTypeError(
                    f"init: the model has no sub-module `{stmt.target}`",
                    loc(stmt.span),
                    hint=did_you_mean(stmt.target, [n for n, _ in meta.named_modules() if n]),
                ) from None
            target = _module_path("model", stmt.target)
        path = literal_doc(stmt.path)
        out = [f"# init {stmt.target or 'the model'}"]
        if stmt.path.lower().endswith(".safetensors"):
            self.imports.add("from safetensors.torch import load_file")
            out.append(statement(Brackets("load_file", (path,)), "state = ", MAIN))
        else:
            load = Brackets(
                "torch.load", (path, Text("map_location=device"), Text("weights_only=True"))
            )
            out += [
                statement(load, "state = ", MAIN),
                'state = state.get("model", state)  # the weights of a specc checkpoint',
            ]
        strip, add = opts.get("strip_prefix"), opts.get("add_prefix")
        for option in (strip, add):
            if option is not None and not isinstance(option, str):
                raise SpecTypeError("init: prefixes must be strings", loc(stmt.span))
        if strip:
            out.append(self.strip_prefix(strip))
        if add:
            out.append(
                statement(self.dict_comp(f"{flat(literal_doc(add))} + k: v"), "state = ", MAIN)
            )
        if stmt.target and not (strip or add):
            prefix = stmt.target + "."
            out += [
                f"if not state.keys() & {target}.state_dict().keys():",
                f"    # a whole model's checkpoint: take its {stmt.target}.* weights",
                "    " + self.strip_prefix(prefix, MAIN + 4).replace("\n", "\n    "),
            ]
        if opts.get("skip_mismatched"):
            keep = "k not in own or v.shape == own[k].shape"
            out += [
                "# skip_mismatched: where a shape differs, keep the model's own tensor",
                f"own = {target}.state_dict()",
                statement(self.dict_comp("k: v", keep), "state = ", MAIN),
            ]
        if opts.get("strict"):
            out.append(f"{target}.load_state_dict(state)")
        else:
            out.append(f"print({target}.load_state_dict(state, strict=False))")
        return out

    @staticmethod
    def dict_comp(elt: str, condition: str | None = None) -> Doc:
        more = (f"if {condition}",) if condition else ()
        return Comp("", Text(elt), "for k, v in state.items()", more=more, open="{", close="}")

    def strip_prefix(self, prefix: str, base: int = MAIN) -> str:
        text = flat(literal_doc(prefix))
        doc = self.dict_comp(f"k.removeprefix({text}): v", f"k.startswith({text})")
        return statement(doc, "state = ", base)

    def name_test(self, patterns: list[str]) -> Doc:
        """A condition on `name` (a parameter's name) that is true where one of the
        patterns matches it, as `finetune.matches` decides."""
        meta = self.meta_model()
        params = {n for n, _ in meta.named_parameters()}
        tests: list[Doc] = []
        for pattern in patterns:
            if _is_glob(pattern):
                self.imports.add("import fnmatch")
                test = Brackets("fnmatch.fnmatchcase", (Text("name"), literal_doc(pattern)))
            elif pattern in params:
                test = Chain((Text("name"), literal_doc(pattern)), ("==",), PREC_COMPARE)
            else:
                test = Brackets("name.startswith", (literal_doc(pattern + "."),))
            tests.append(test)
        if len(tests) == 1:
            return tests[0]
        return Chain(tuple(tests), ("or",) * (len(tests) - 1), PREC_OR)

    def freeze_statements(self, freezes: list[ir.FreezeStmt]) -> list[str]:
        """Each named module or parameter by name; glob patterns in one loop."""
        meta = self.meta_model()
        modules = {n for n, _ in meta.named_modules() if n}
        out: list[str] = []
        globs: list[str] = []
        for stmt in freezes:
            for pattern in stmt.patterns:
                if _is_glob(pattern):
                    globs.append(pattern)
                else:
                    getter = "get_submodule" if pattern in modules else "get_parameter"
                    out.append(f"{_module_path('model', pattern, getter)}.requires_grad_(False)")
        if globs:
            test = self.name_test(globs)
            out += [
                "for name, param in model.named_parameters():",
                "    " + self.condition(test, MAIN + 4),
                "        param.requires_grad_(False)",
            ]
        return out

    @staticmethod
    def condition(test: Doc, base: int) -> str:
        """`if test:` at indent `base`, as one string for a statement list at `base - 4`."""
        lines = layout(test, " " * base, "if ", ":")
        return block(lines, base).replace("\n", "\n    ")

    def spec_loss(self) -> ir.ModelInstance | None:
        """The checked instance of a loss written as a spec model (two inputs: the model's
        output and the labels; one scalar out), else None."""
        from torch import nn

        from specc.shapes.check import check_model

        spec = self.cfg.loss
        plugin = self.plugins.get(spec.name)
        mdef = self.program.model(spec.name)
        if (plugin is not None and issubclass(plugin, nn.Module)) or mdef is None:
            return None
        fwd = mdef.forward
        if fwd is None or len(fwd.inputs) != 2:
            raise SpecTypeError(
                f"a loss model takes two inputs (output, target); `{mdef.name}` takes "
                f"{len(fwd.inputs) if fwd else 0}",
                loc(spec.span),
            )
        names = [p.name for p in mdef.params]
        args = dict(zip(names, spec.args, strict=False)) | spec.kwargs
        inputs: dict[str, list[int]] = {fwd.inputs[1].name: []}  # class labels
        outputs = self.top.outputs
        if outputs and outputs[0].tensor is not None:
            inputs[fwd.inputs[0].name] = [int(d) for d in outputs[0].tensor.shape]
        inst = check_model(self.program, mdef.name, args=args, inputs=inputs)
        out = inst.outputs[0] if len(inst.outputs) == 1 else None
        if out is None or out.tensor is None or out.tensor.batched or out.tensor.shape:
            raise SpecTypeError(
                f"loss model `{mdef.name}` must return one scalar (e.g. `.mean()`)",
                loc(spec.span),
            )
        return inst

    def loss_statements(self) -> list[str]:
        """`loss_fn = ...`: a torch.nn loss, a plugin loss or a spec model; moved to the
        device only when it holds tensors."""
        import torch
        from torch import nn

        spec = self.cfg.loss
        plugin = self.plugins.get(spec.name)
        if self.loss_inst is not None:
            head = spec.name  # a class of the generated module
            stateful = bool(self.loss_inst.layers)
        else:
            if plugin is not None and issubclass(plugin, nn.Module):
                cls, head = plugin, self.gen.plugin_class(spec.name, spec.span)
            else:
                cls = getattr(nn, spec.name, None) if not spec.name.startswith("_") else None
                if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
                    losses = [n for n in dir(nn) if n.endswith("Loss")] + list(self.plugins)
                    raise SpecTypeError(
                        f"unknown loss `{spec.name}`",
                        loc(spec.span),
                        hint=did_you_mean(spec.name, losses),
                    )
                head = f"nn.{check_attribute(spec.name, spec.span, 'loss')}"
            _check_call(cls, spec.args, spec.kwargs, f"loss `{spec.name}`", spec.span)
            try:
                with torch.device("meta"):
                    loss = cls(*spec.args, **spec.kwargs)
            except (TypeError, ValueError, RuntimeError) as exc:
                raise SpecTypeError(
                    f"{spec.name}(...) is invalid: {str(exc).splitlines()[0]}", loc(spec.span)
                ) from None
            stateful = any(True for _ in loss.state_dict())
        if stateful:
            return _on_device("loss_fn", self.call(head, spec))
        return [statement(self.call(head, spec), "loss_fn = ", MAIN)]

    def optimizer_statements(self, any_frozen: bool) -> list[str]:
        """Parameter groups (`group` statements, first match wins; frozen parameters left
        out), then the optimizer."""
        import torch

        spec = self.cfg.optimizer
        plugin = self.plugins.get(spec.name)
        if plugin is not None and issubclass(plugin, torch.optim.Optimizer):
            cls, head = plugin, self.gen.plugin_class(spec.name, spec.span)
        else:
            cls = getattr(torch.optim, spec.name, None) if not spec.name.startswith("_") else None
            if not (isinstance(cls, type) and issubclass(cls, torch.optim.Optimizer)):
                names = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)]
                raise SpecTypeError(
                    f"unknown optimizer `{spec.name}`",
                    loc(spec.span),
                    hint=did_you_mean(spec.name, [*names, *self.plugins]),
                )
            head = f"torch.optim.{check_attribute(spec.name, spec.span, 'optimizer')}"
        _check_call(cls, [[], *spec.args], spec.kwargs, f"optimizer `{spec.name}`", spec.span)
        groups = self.program.trains[0].groups
        out: list[str] = []
        if groups:
            params: Doc = self.group_statements(groups, any_frozen, out)
        elif any_frozen:
            meta = self.meta_model()
            if not any(p.requires_grad for p in meta.parameters()):
                raise SpecTypeError(
                    "every parameter is frozen: nothing to optimize", loc(spec.span)
                )
            params = Text("[p for p in model.parameters() if p.requires_grad]")
        else:
            params = Text("model.parameters()")
        out.append(statement(self.call(head, spec, (params,)), "optimizer = ", MAIN))
        return out

    def group_statements(self, groups: list[ir.GroupStmt], any_frozen: bool, out: list[str]) -> Doc:
        """Fill one list per `group` (and one for the rest) in a loop over the named
        parameters; returns the optimizer's param-group dicts."""
        from specc.training.finetune import matches

        meta = self.meta_model()
        trainable = [n for n, p in meta.named_parameters() if p.requires_grad]
        taken: set[str] = set()
        names: list[str] = []
        for i, g in enumerate(groups, start=1):
            hit = {
                n for n in trainable if n not in taken and any(matches(n, p) for p in g.patterns)
            }
            if not hit:
                raise SpecTypeError(
                    f"group {g.patterns} matches no trainable parameter", loc(g.span)
                )
            taken |= hit
            base = re.sub(r"\W+", "_", g.patterns[0].split("*")[0], flags=re.ASCII).strip("_")
            if not base or not base.isidentifier() or base[0].isdigit():
                base = f"group{i}"
            names.append(self.gen.modules.fresh(f"{base}_params", "parameter group"))
        rest = [n for n in trainable if n not in taken]
        if rest:
            names.append("other_params")
        if not taken and not rest:  # pragma: no cover - every group matched something
            raise SpecTypeError("every parameter is frozen: nothing to optimize")
        out.append(", ".join(names) + " = " + ", ".join("[]" for _ in names))
        out.append("for name, param in model.named_parameters():")
        if any_frozen:
            out += ["    if not param.requires_grad:", "        continue"]
        for i, (g, var) in enumerate(zip(groups, names, strict=False)):
            test = self.condition(self.name_test(g.patterns), MAIN + 4)
            out += ["    " + (test if i == 0 else "el" + test), f"        {var}.append(param)"]
        if rest:
            out += ["    else:", "        other_params.append(param)"]
        dicts = []
        for g, var in zip(groups, names, strict=False):
            items = [Text(f'"params": {var}')]
            for k, v in g.options.items():
                items.append(
                    with_prefix(f"{literal_doc(k).text}: ", self.value(literal(v), g.span))
                )
            dicts.append(Brackets("", tuple(items), "{", "}", PREC_ATOM, display=True))
        if rest:
            dicts.append(Text('{"params": other_params}'))
        return Brackets("", tuple(dicts), "[", "]", PREC_ATOM, display=True)

    def scheduler_statements(self) -> tuple[list[str], str | None]:
        """The scheduler (OneCycleLR gets its length) and linear warmup; returns the
        statements and when `scheduler.step()` runs: "step", "epoch" or None."""
        import torch

        cfg = self.cfg
        lr = torch.optim.lr_scheduler
        out: list[str] = []
        interval = cfg.scheduler_interval
        spec = cfg.scheduler
        steps = (
            Text("len(train_loader)")
            if cfg.accumulate == 1
            else Text(f"math.ceil(len(train_loader) / {cfg.accumulate})", PREC_PRIMARY)
        )
        if spec is not None:
            cls = getattr(lr, spec.name, None) if not spec.name.startswith("_") else None
            if not isinstance(cls, type) or spec.name == "LRScheduler":
                names = [n for n in dir(lr) if isinstance(getattr(lr, n), type)]
                raise SpecTypeError(
                    f"unknown scheduler `{spec.name}`",
                    loc(spec.span),
                    hint=did_you_mean(spec.name, names),
                )
            head = f"torch.optim.lr_scheduler.{check_attribute(spec.name, spec.span, 'scheduler')}"
            bound = _check_call(
                cls, [None, *spec.args], spec.kwargs, f"scheduler `{spec.name}`", spec.span
            )
            kwargs: dict[str, Any] = dict(spec.kwargs)
            given = set(bound.arguments) if bound else set(kwargs)
            if spec.name == "OneCycleLR" and "total_steps" not in given:
                if cfg.accumulate > 1:
                    self.imports.add("import math")
                if given & {"epochs", "steps_per_epoch"}:  # the runner's total_steps wins
                    kwargs["total_steps"] = Text(f"{flat(steps)} * {cfg.epochs}")
                else:
                    kwargs["epochs"] = Text(str(cfg.epochs))
                    kwargs["steps_per_epoch"] = steps
            out.append(
                statement(
                    self.call(head, spec, (Text("optimizer"),), kwargs=kwargs), "scheduler = ", MAIN
                )
            )
            if interval is None:
                interval = "step" if spec.name in STEP_SCHEDULERS else "epoch"
        if cfg.warmup:
            warmup = Brackets(
                "torch.optim.lr_scheduler.LinearLR",
                (Text("optimizer"), Text("start_factor=0.001"), Text(f"total_iters={cfg.warmup}")),
            )
            if spec is None:
                out.append(f"# linear warmup over the first {cfg.warmup} optimizer steps")
                out.append(statement(warmup, "scheduler = ", MAIN))
                return out, "step"
            if interval != "step":
                raise SpecTypeError(
                    "warmup counts optimizer steps; set scheduler_interval = "
                    '"step" to combine it with a scheduler',
                    loc(spec.span),
                )
            sequential = Brackets(
                "torch.optim.lr_scheduler.SequentialLR",
                (
                    Text("optimizer"),
                    Text("[warmup, scheduler]"),
                    Text(f"milestones=[{cfg.warmup}]"),
                ),
            )
            out += [
                f"# linear warmup over the first {cfg.warmup} optimizer steps, then the scheduler",
                statement(warmup, "warmup = ", MAIN),
                statement(sequential, "scheduler = ", MAIN),
            ]
        return out, interval

    # ---- evaluation and the loop -----------------------------------------------------------
    def metrics(self) -> list[str]:
        for m in self.cfg.metrics:
            if m not in METRICS:
                raise UsageError(
                    f"unknown metric `{m}`",
                    hint=did_you_mean(m, METRICS) or f"available: {', '.join(METRICS)}",
                )
        return [m for m in dict.fromkeys(self.cfg.metrics) if m != "loss"]

    def evaluate_context(self, metrics: list[str], autocast: str) -> dict[str, Any]:
        out = self.top.outputs[0].tensor if len(self.top.outputs) == 1 else None
        shape = list(out.shape) if out is not None else []
        dim = "1" if len(shape) == 1 else "-1"
        counts, names = [], []
        if "accuracy" in metrics:
            names.append("correct")
            counts.append(f"correct += (outputs.argmax({dim}) == labels).sum().item()")
        if "top5" in metrics:
            k = min(5, shape[-1]) if shape and isinstance(shape[-1], int) else 5
            names.append("correct_top5")
            counts += [
                f"top5 = outputs.topk({k}, dim={dim}).indices",
                f"correct_top5 += (top5 == labels.unsqueeze({dim})).any({dim}).sum().item()",
            ]
        what = {"accuracy": "accuracy", "top5": "top-5 accuracy"}
        described = ["loss", *(what[m] for m in metrics)]
        listed = ", ".join(described[:-1]) + " and " + described[-1] if metrics else "loss"
        return {
            "doc": f"The mean {listed} of `model` on `loader`.",
            "init": ", ".join(["total_loss", *names, "total"])
            + " = "
            + ", ".join(["0.0", *("0" for _ in names), "0"]),
            "counts": counts,
            "result": ", ".join(f"{n} / total" for n in ["total_loss", *names]),
        }

    def evaluation(
        self, split: str, loader: str, metrics: list[str], base: int, epoch: bool
    ) -> dict[str, str]:
        """`val_loss, val_accuracy = evaluate(...)` and the line printing the results."""
        names = [f"{split}_{m}" for m in ["loss", *metrics]]
        call = statement(
            Brackets("evaluate", tuple(Text(a) for a in ("model", loader, "loss_fn", "device"))),
            ", ".join(names) + " = ",
            base,
        )
        parts = [f"{split} loss {{{names[0]}:.4f}}"]
        parts += [f"{m} {{{n}:.4f}}" for m, n in zip(metrics, names[1:], strict=True)]
        text = ("epoch {epoch + 1}: " if epoch else "") + ", ".join(parts)
        report = statement(Brackets("print", (Text(f'f"{text}"'),)), "", base)
        return {"call": call, "report": report}

    def source(self) -> str:
        cfg = self.cfg
        if cfg.device == "auto":
            device = 'device = torch.device("cuda" if torch.cuda.is_available() else "cpu")'
        else:
            import torch

            try:
                torch.device(cfg.device)
            except RuntimeError:
                raise UsageError(
                    f"unknown device {cfg.device!r}", hint="use auto, cpu, cuda or mps"
                ) from None
            device = statement(
                Brackets("torch.device", (literal_doc(cfg.device),)), "device = ", MAIN
            )
        metrics = self.metrics()
        data_stmts, loaders = self.data_section()
        model_groups, norms, any_frozen = self.model_section()
        setup = [*self.loss_statements(), *self.optimizer_statements(any_frozen)]
        sched_stmts, interval = self.scheduler_statements()
        setup += sched_stmts
        autocast = ""
        if cfg.precision != "fp32":
            dtype = "bfloat16" if cfg.precision == "bf16" else "float16"
            autocast = f"torch.autocast(device.type, dtype=torch.{dtype})"
        if cfg.precision == "fp16":
            setup.append("scaler = torch.amp.GradScaler(device.type)")

        # one optimizer step
        scaled = "loss" if cfg.accumulate == 1 else f"loss / {cfg.accumulate}"
        if cfg.precision == "fp16":
            backward = f"scaler.scale({scaled}).backward()"
        else:
            backward = "loss.backward()" if cfg.accumulate == 1 else f"({scaled}).backward()"
        step = []
        if cfg.clip_grad_norm:
            if cfg.precision == "fp16":
                step.append("scaler.unscale_(optimizer)")
            clip = flat(literal_doc(cfg.clip_grad_norm))
            step.append(f"nn.utils.clip_grad_norm_(model.parameters(), {clip})")
        step += ["scaler.step(optimizer)", "scaler.update()"] if cfg.precision == "fp16" else [
            "optimizer.step()"]  # fmt: skip
        step.append("optimizer.zero_grad()")
        if interval == "step":
            step.append("scheduler.step()")
        loop_init = []
        if cfg.max_steps:
            loop_init.append("step = 0")
            step += ["step += 1", f"if step == {cfg.max_steps}:\n    break"]

        # evaluation: the val (else test) set after each epoch, the test set at the end
        eval_split = "val" if "val" in loaders else "test" if "test" in loaders else None
        epoch_eval = final_eval = early_stop = None
        if eval_split is not None:
            epoch_eval = self.evaluation(eval_split, loaders[eval_split], metrics, 8, True)
        if "test" in loaders and (eval_split == "val" or cfg.max_steps):
            final_eval = self.evaluation("test", loaders["test"], metrics, MAIN, False)
        if cfg.early_stop and eval_split is not None:
            best = cfg.best_metric or next(iter(metrics), "loss")
            if best not in ("loss", *metrics):
                best = "loss"
            higher = best != "loss"
            early_stop = {
                "better": f"{eval_split}_{best} {'>' if higher else '<'} best_{best}",
                "best": f"best_{best}",
                "metric": f"{eval_split}_{best}",
                "patience": cfg.early_stop,
            }
            loop_init += [f'best_{best} = float("{"-inf" if higher else "inf"}")', "bad_epochs = 0"]

        stem = Path(self.program.sources[0].path).stem
        weights = f"{stem}.pt" if re.fullmatch(r"[A-Za-z0-9_.-]+", stem) else "model.pt"
        names = ", ".join(["DataLoader", *sorted(self.dataset_names)])
        self.imports.add(f"from torch.utils.data import {names}")
        # load_tensor_file: one way of reading per kind of file the spec names
        kinds = sorted(self.tensor_kinds, key=list(TENSOR_FILE_LOADS).index)
        branches = [
            {
                "branch": "else" if k == len(kinds) - 1 else f"{'el' if k else ''}if {test}",
                "load": load,
            }
            for k, (test, load) in enumerate(TENSOR_FILE_LOADS[kind] for kind in kinds)
        ]
        context = {
            "unverified": [{"name": n, "base": b} for n, b in sorted(self.unverified.items())],
            "digits": self.digits,
            "tensor_file": branches,
            "transformed": self.transformed,
            "evaluate": self.evaluate_context(metrics, autocast) if eval_split else None,
            "autocast": autocast,
            "seed": repr(cfg.seed),
            "device": device,
            "data": data_stmts,
            # blank lines around init and freeze statements only
            "setup": _paragraphs(*model_groups, setup)
            if len(model_groups) > 1
            else [*model_groups[0], *setup],
            "loop_init": loop_init,
            "epochs": cfg.epochs,
            "frozen_norms": norms,
            "skip_nan": cfg.on_nan == "skip",
            "accumulate": cfg.accumulate,
            "backward": backward,
            "step": step,
            "log_every": cfg.log_every * cfg.accumulate,
            "max_steps": cfg.max_steps,
            "epoch_scheduler": interval == "epoch",
            "epoch_eval": epoch_eval,
            "early_stop": early_stop,
            "final_eval": final_eval,
            "weights": string_literal(weights),
            "saved": string_literal(f"saved the weights to {weights}"),
        }
        self.gen.uses["torch"] = True
        return self.gen.module("train.py.j2", context, sorted(self.imports))
