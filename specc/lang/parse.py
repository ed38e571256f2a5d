"""Stage 1: text -> Lark parse tree. Lark's exceptions become located SpecSyntaxErrors."""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

import lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from specc.errors import Location, SpecSyntaxError

# How terminals read in "expected ..." messages.
_TERMINAL_TEXT = {
    "NAME": "a name",
    "INT": "an integer",
    "FLOAT": "a number",
    "STRING": "a string",
    "$END": "end of file",
}


def grammar_text() -> str:
    """The grammar, from the installed package data or, in a source checkout, grammars/."""
    try:
        return resources.files("specc.grammars").joinpath("specc.lark").read_text("utf-8")
    except (ModuleNotFoundError, FileNotFoundError, NotADirectoryError):
        path = Path(__file__).resolve().parents[2] / "grammars" / "specc.lark"
        return path.read_text("utf-8")


@functools.cache
def parser() -> lark.Lark:
    # Built at each start (~0.1 s): a cached parser would be a pickle loaded from the user's
    # cache folder, and specc loads no pickles.
    return lark.Lark(
        grammar_text(),
        parser="lalr",
        propagate_positions=True,
        maybe_placeholders=True,
    )


def parse(text: str, file: str) -> lark.Tree:
    """Parse spec text; raise SpecSyntaxError with what was expected."""
    try:
        tree = parser().parse(text)
    except UnexpectedInput as exc:
        raise _syntax_error(exc, text, file) from None
    _check_depth(tree, text, file)
    return tree


# Later stages walk expressions recursively; a bound here keeps them far from Python's
# recursion limit, so deep nesting is a located error rather than a crash.
MAX_DEPTH = 200


def _check_depth(tree: lark.Tree, text: str, file: str) -> None:
    stack = [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_DEPTH:
            m = node.meta
            line, col = (1, 1) if getattr(m, "empty", True) else (m.line, m.column)
            raise SpecSyntaxError(
                f"nested more than {MAX_DEPTH} levels deep",
                Location(file, line, col, line, col + 1),
                hint="split the expression into several statements (each operator, call "
                "and `[`...`]` counts as a level)",
                source=text,
            )
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))


def _describe_terminal(name: str) -> str:
    if name in _TERMINAL_TEXT:
        return _TERMINAL_TEXT[name]
    term = parser().get_terminal(name)
    pattern = term.pattern
    if pattern.type == "str":
        return f"`{pattern.value}`"
    return name.lower()


def _expected(names: set[str]) -> str:
    described = sorted({_describe_terminal(n) for n in names if not n.startswith("_")})
    if not described:
        return ""
    if len(described) == 1:
        return described[0]
    return ", ".join(described[:-1]) + " or " + described[-1]


def _syntax_error(exc: UnexpectedInput, text: str, file: str) -> SpecSyntaxError:
    if isinstance(exc, UnexpectedEOF) or (
        isinstance(exc, UnexpectedToken) and exc.token.type == "$END"
    ):
        lines = text.split("\n")  # as Lark counts lines (not str.splitlines())
        if len(lines) > 1 and lines[-1] == "":
            lines.pop()  # point at the end of the last line, not past the final newline
        line, col = len(lines), len(lines[-1]) + 1
        expected = _expected(set(exc.expected))
        loc = Location(file, line, col, line, col + 1)
        msg = "unexpected end of file" + (f"; expected {expected}" if expected else "")
        return SpecSyntaxError(msg, loc, hint="is a `}` or `)` missing?", source=text)
    if isinstance(exc, UnexpectedToken):
        tok = exc.token
        width = max(len(str(tok)), 1)
        loc = Location(file, tok.line, tok.column, tok.line, tok.column + width)
        expected = _expected(set(exc.expected))
        msg = f"unexpected `{tok}`" + (f"; expected {expected}" if expected else "")
        return SpecSyntaxError(msg, loc, hint=_hint_for(tok, exc), source=text)
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        loc = Location(file, exc.line, exc.column, exc.line, exc.column + 1)
        expected = _expected(set(exc.allowed or ()))
        msg = f"unexpected character `{char}`" + (f"; expected {expected}" if expected else "")
        return SpecSyntaxError(msg, loc, source=text)
    line = getattr(exc, "line", 1) or 1
    column = getattr(exc, "column", 1) or 1
    return SpecSyntaxError(str(exc), Location(file, line, column), source=text)


def _hint_for(tok: lark.Token, exc: UnexpectedToken) -> str | None:
    expected = set(exc.expected)
    if "RPAR" in expected and tok.type in {"NAME", "INT", "FLOAT", "STRING"}:
        return "is a `,` missing between arguments?"
    if tok.type == "EQUAL" and "RPAR" in expected:
        return "keyword arguments are written `name=value` inside a call"
    if tok.type == "COLON":
        return "slices (`a:b`) are only allowed inside `[...]`"
    return None
