"""Stage 1: text -> Lark parse tree. Lark's exceptions become located SpecSyntaxErrors."""

from __future__ import annotations

import functools
import hashlib
import json
import os
import tempfile
from importlib import resources
from pathlib import Path
from typing import Any

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


# Building the LALR tables took about a third of `specc run`'s own start-up (0.06-0.1 s on a
# quiet machine), so they are cached per user as JSON, keyed by the grammar, the options
# and Lark's version. JSON, not Lark's own pickle cache: specc loads no pickles. The tables'
# only non-JSON parts are integer dict keys (the LALR states and tokens, the memo), which
# `_int_keys` restores, and tuples, which Lark only unpacks or iterates; `_save_tables`
# writes them only if they read back equal, so a Lark with another layout is never cached.
_OPTIONS = {"parser": "lalr", "propagate_positions": True, "maybe_placeholders": True}


@functools.cache
def parser() -> lark.Lark:
    """The LALR parser, from its cached tables when they match this grammar and Lark."""
    text = grammar_text()
    key = hashlib.sha256(
        "\0".join((text, repr(sorted(_OPTIONS.items())), lark.__version__)).encode()
    ).hexdigest()[:24]
    try:
        path = _cache_dir() / f"parser-{key}.json"
        tables = _int_keys(json.loads(path.read_text("utf-8")))
        return _pass_unit_rules(lark.Lark._load_from_dict(tables["data"], tables["memo"]))
    except Exception:  # missing, unreadable or not Lark's tables: build them (and cache them)
        pass
    built = lark.Lark(text, **_OPTIONS)
    _save_tables(built, key)
    return _pass_unit_rules(built)


# Most reductions in a spec are unit rules: an atom climbs `?postfix: atom`, `?power:
# postfix`, ... up to `?expr: test`, ten reductions per name or call (83% of the 79,000 in
# a 1,000-layer spec). For such a rule Lark's tree builder returns the child unchanged and
# then re-propagates the child's own positions onto it, which changes nothing but took
# about a third of the parse. `test_unit_rules_pass_through` parses every spec both ways.
def _is_unit_rule(rule: Any) -> bool:
    """Does Lark's tree builder hand this rule's one child back unchanged (a `?rule` with one
    symbol that is kept, not inlined, and no `[...]` placeholder)?"""
    options = rule.options
    if not options.expand1 or rule.alias or len(rule.expansion) != 1:
        return False
    (sym,) = rule.expansion
    kept = (options.keep_all_tokens or not sym.filter_out) if sym.is_term else sym.name[0] != "_"
    return kept and not any(options.empty_indices)


def _first_child(children: list) -> Any:
    return children[0]


def _pass_unit_rules(built: lark.Lark) -> lark.Lark:
    """`built`, its unit rules reduced to their child directly (in place). A Lark whose
    callbacks live elsewhere is left as it is: correct, only slower."""
    callbacks = getattr(built, "_callbacks", None)  # the dict the LALR parser calls into
    if isinstance(callbacks, dict):
        for rule in built.rules:
            if rule in callbacks and _is_unit_rule(rule):
                callbacks[rule] = _first_child
    return built


def _cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "specc"


def _int_keys(tables: dict) -> dict:
    """The tables as Lark wrote them: JSON turned their integer keys into strings."""
    table = tables["data"]["parser"]["parser"]
    table["tokens"] = {int(k): v for k, v in table["tokens"].items()}
    table["states"] = {
        int(k): {int(t): a for t, a in acts.items()} for k, acts in table["states"].items()
    }
    tables["memo"] = {int(k): v for k, v in tables["memo"].items()}
    return tables


def _as_json(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _as_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_as_json(v) for v in value]
    return value


def _save_tables(built: lark.Lark, key: str) -> None:
    """Write the parser's tables where `parser()` looks for them; never fails the caller."""
    from lark.grammar import Rule
    from lark.lexer import TerminalDef

    try:
        path = _cache_dir() / f"parser-{key}.json"
        data, memo = built.memo_serialize([TerminalDef, Rule])
        tables = {"data": data, "memo": memo}
        text = json.dumps(tables, separators=(",", ":"))
        if _int_keys(json.loads(text)) != _as_json(tables):
            return  # something JSON cannot hold: keep building at each start
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    except Exception:  # a read-only home, ...: the parser works without the cache
        return
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.replace(tmp, path)  # whole or absent, even with several specc processes at once
    except OSError:  # a full disk, ...
        Path(tmp).unlink(missing_ok=True)


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
        return SpecSyntaxError(msg, loc, hint=_hint_for(tok, exc, text), source=text)
    if isinstance(exc, UnexpectedCharacters):
        char = text[exc.pos_in_stream] if exc.pos_in_stream < len(text) else "?"
        loc = Location(file, exc.line, exc.column, exc.line, exc.column + 1)
        expected = _expected(set(exc.allowed or ()))
        msg = f"unexpected character `{char}`" + (f"; expected {expected}" if expected else "")
        return SpecSyntaxError(msg, loc, source=text)
    line = getattr(exc, "line", 1) or 1
    column = getattr(exc, "column", 1) or 1
    return SpecSyntaxError(str(exc), Location(file, line, column), source=text)


def _hint_for(tok: lark.Token, exc: UnexpectedToken, text: str) -> str | None:
    expected = set(exc.expected)
    before = text.split("\n")[tok.line - 1][: tok.column - 1].split()
    if tok.type == "EQUAL" and before[-1:] == ["init"]:
        return (
            "`init` starts an init rule (`init Linear.weight = normal_(0.0, 0.02)`); "
            "give the layer another name"
        )
    if "RPAR" in expected and tok.type in {"NAME", "INT", "FLOAT", "STRING"}:
        return "is a `,` missing between arguments?"
    if tok.type == "EQUAL" and "RPAR" in expected:
        return "keyword arguments are written `name=value` inside a call"
    if tok.type == "ELSE" and "LBRACE" in expected:
        return (
            "in a forward, a conditional value goes in parentheses: `y = (a if c else b)` "
            "(a bare `if` after an assignment starts an `if` block)"
        )
    if tok.type == "COLON":
        return "slices (`a:b`) are only allowed inside `[...]`"
    return None
