"""Expression layout: small documents (`Text`, `Brackets`, `Comp`, `Chain`) broken the way
``ruff format`` breaks them, so generated code is already formatted; literals through `repr`."""

from __future__ import annotations

import ast
import dataclasses
import functools
import math
import re
from dataclasses import dataclass
from typing import Any

from specc.errors import (
    SpecTypeError,
)
from specc.values import BINOP_SYMBOLS, COMPARISONS

# ruff format's default line length: the output must already be formatted at it.
LINE_LENGTH = 88
INDENT = "    "
# Where the templates put statements: class body, method body.
CLASS_INDENT = 4
BODY_INDENT = 8

# Operator precedence as in Python's grammar (higher binds tighter).
PREC_TEST, PREC_OR, PREC_AND, PREC_NOT, PREC_COMPARE = 1, 3, 4, 5, 6
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
    **dict.fromkeys(COMPARISONS, PREC_COMPARE),
}

# Qualified-name prefix of a forward function -> how generated code spells its module.
FUNCTION_MODULES = {"torch.nn.functional": "F", "torch": "torch"}


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
    # A method call `receiver.name(...)`: `head` is the receiver's text plus `.name`, and a
    # receiver with brackets of its own may break instead (`torch.outer(\n...\n).repeat(1)`).
    receiver: Doc | None = None


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


def fits(line: str) -> bool:
    return len(line) <= LINE_LENGTH


def layout(
    doc: Doc, indent: str, prefix: str = "", suffix: str = "", nested: bool = False
) -> list[str]:
    """Physical lines for `prefix + doc + suffix` at `indent`, broken like ruff format.
    `nested`: already inside brackets (operators then break without extra parentheses)."""
    line = indent + prefix + flat(doc) + suffix
    if fits(line):
        return [line]
    return _broken(doc, indent, prefix, suffix, nested)


def _broken(doc: Doc, indent: str, prefix: str, suffix: str, nested: bool) -> list[str]:
    inner = indent + INDENT
    if isinstance(doc, Brackets) and (
        receiver_lines := _receiver_broken(doc, indent, prefix, suffix, nested)
    ):
        return receiver_lines
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
            if fits(joined):
                body = [joined]
            else:
                body = [ln for item in doc.items for ln in layout(item, inner, "", ",", True)]
        return [first, *body, last]
    if isinstance(doc, Comp):
        first = indent + prefix + doc.star + doc.open
        last = indent + doc.close + suffix
        clauses = (doc.clause, *doc.more)
        joined = inner + flat(doc.elt) + " " + " ".join(clauses)
        if fits(joined):
            return [first, joined, last]
        return [first, *layout(doc.elt, inner, "", "", True), *(inner + c for c in clauses), last]
    if isinstance(doc, Chain):
        if nested:
            return _chain_lines(doc, indent, prefix, suffix)
        if _can_omit_parentheses(doc):
            lines = _inline_groups(doc, indent, prefix, suffix)
            if all(map(fits, lines)):
                return lines
        if doc.prec == PREC_TEST and fits(inner + flat(doc)):  # `a if c else b` on one line
            return [indent + prefix + "(", inner + flat(doc), indent + ")" + suffix]
        return [indent + prefix + "(", *_chain_lines(doc, inner, "", ""), indent + ")" + suffix]
    return [indent + prefix + flat(doc) + suffix]  # unbreakable: left long, as ruff leaves it


def _receiver_broken(
    doc: Brackets, indent: str, prefix: str, suffix: str, nested: bool
) -> list[str] | None:
    """ruff's "omit optional trailers": when a method call's opening line is too long even
    with its own arguments split off, the receiver's brackets break and the call's trailer
    (`.repeat(1, 2)`) follows their closing bracket. None: not such a call."""
    receiver = doc.receiver
    if receiver is None or not _own_brackets(receiver):
        return None
    if fits(indent + prefix + doc.head + doc.open):
        return None
    tail = doc.head[len(flat(receiver)) :]
    inner = ", ".join(flat(i) for i in doc.items) + ("," if doc.one_tuple else "")
    lines = _broken(receiver, indent, prefix, f"{tail}{doc.open}{inner}{doc.close}{suffix}", nested)
    return lines if all(map(fits, lines)) else None


def method_call(receiver: Doc, name: str, items: tuple[Doc, ...]) -> Brackets:
    """`receiver.name(items)`, parenthesising a receiver that would not bind."""
    return Brackets(attribute_of(receiver, name), items, receiver=receiver)


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
        if fits(current + flat(piece) + rest):
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
    if comment and len(lines) == 1 and fits(lines[0] + "  # " + comment):
        lines = [lines[0] + "  # " + comment]
    return block(lines, base)


def with_prefix(prefix: str, doc: Doc) -> Doc:
    """`prefix` glued in front of `doc` (keyword arguments: `dim=...`); it stays breakable."""
    if isinstance(doc, Brackets) and not doc.bare:
        receiver = None if doc.receiver is None else with_prefix(prefix, doc.receiver)
        return dataclasses.replace(doc, head=prefix + doc.head, receiver=receiver)
    if isinstance(doc, Comp):
        return dataclasses.replace(doc, star=prefix + doc.star)
    if isinstance(doc, Chain):
        first = with_prefix(prefix, doc.operands[0])
        return Chain((first, *doc.operands[1:]), doc.ops, doc.prec)
    return Text(prefix + flat(doc), PREC_ATOM)


def parens(doc: Doc) -> Doc:
    return Brackets("", (doc,), prec=PREC_ATOM)


def binop(op: str, left: Doc, right: Doc) -> Doc:
    if op not in BINOP_SYMBOLS:
        raise SpecTypeError(f"unknown operator `{op}`")
    sym, prec = BINOP_SYMBOLS[op], BINOP_PREC[op]
    if op == "pow":  # right-associative, binds tighter than unary minus on its left
        if left.prec <= PREC_POWER:
            left = parens(left)
        if right.prec < PREC_UNARY:
            right = parens(right)
        if _simple(left) and _simple(right):  # ruff hugs `**` between simple operands
            return Text(f"{flat(left)}**{flat(right)}", PREC_POWER)
        return Chain((left, right), ("**",), PREC_POWER)  # breaks like the other operators
    if left.prec < prec or (op in COMPARISONS and left.prec == prec):  # no `a < b < c`
        left = parens(left)
    if right.prec <= prec:
        right = parens(right)
    if isinstance(left, Chain) and left.prec == prec:
        return Chain((*left.operands, right), (*left.ops, sym), prec)
    return Chain((left, right), (sym,), prec)


def boolop(op: str, left: Doc, right: Doc) -> Doc:
    """`a and b`, `a or b` (left-associative, like `binop`)."""
    prec = PREC_AND if op == "and" else PREC_OR
    if left.prec < prec:
        left = parens(left)
    if right.prec <= prec:
        right = parens(right)
    if isinstance(left, Chain) and left.prec == prec:
        return Chain((*left.operands, right), (*left.ops, op), prec)
    return Chain((left, right), (op,), prec)


def not_(operand: Doc) -> Doc:
    if operand.prec < PREC_NOT:
        operand = parens(operand)
    return Text(f"not {flat(operand)}", PREC_NOT)


def conditional(body: Doc, test: Doc, orelse: Doc) -> Doc:
    """`body if test else orelse`, kept on one line (ruff breaks it only inside brackets,
    which the statement layout supplies when the line is too long)."""
    body = parens(body) if body.prec <= PREC_TEST else body
    test = parens(test) if test.prec <= PREC_TEST else test
    orelse = parens(orelse) if orelse.prec < PREC_TEST else orelse
    return Chain((body, test, orelse), ("if", "else"), PREC_TEST)


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
