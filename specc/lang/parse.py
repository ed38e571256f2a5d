"""Stage 1: text -> Lark parse tree. Lark's exceptions become located SpecSyntaxErrors."""

from __future__ import annotations

import functools
import hashlib
import json
import os
from importlib import resources
from pathlib import Path
from typing import Any

import lark
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken
from lark.parse_tree_builder import PropagatePositions

from specc.errors import Location, SpecSyntaxError
from specc.files import write_atomic

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
    return _build_trees_faster(_cached_lark(_OPTIONS))


@functools.cache
def token_parser() -> lark.Lark:
    """The same parser keeping every token (keywords, punctuation) in the tree, with plain
    Lark tree building: for tools that rewrite text (`specc fmt`)."""
    return _cached_lark({**_OPTIONS, "propagate_positions": False, "keep_all_tokens": True})


def _cached_lark(options: dict[str, Any]) -> lark.Lark:
    text = grammar_text()
    key = hashlib.sha256(
        "\0".join((text, repr(sorted(options.items())), lark.__version__)).encode()
    ).hexdigest()[:24]
    try:
        path = _cache_dir() / f"parser-{key}.json"
        tables = _int_keys(json.loads(path.read_text("utf-8")))
        return lark.Lark._load_from_dict(tables["data"], tables["memo"])
    except Exception:  # missing, unreadable or not Lark's tables: build them (and cache them)
        pass
    built = lark.Lark(text, **options)
    _save_tables(built, key)
    return built


# Lark builds the tree as it parses: each reduction calls the rule's callback, which filters
# the children, makes the Tree and propagates positions (`propagate_positions`). Two things
# there are cheaper done here, with the same result (`test_tree_building_as_lark`
# parses every spec and error case, and generated programs, both ways):
# - Unit rules, 83% of the reductions (79,000 in a 1,000-layer spec): an atom climbs
#   `?postfix: atom`, `?power: postfix`, ... up to `?expr: test`, ten reductions per name
#   or call. Lark returns the one child unchanged and then propagates its own positions
#   onto it, which changes nothing but took about a third of the parse.
# - The positions of every other rule's tree, from its first and last child with one,
#   without Lark's generic per-child dispatch.
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


def _start(children: list) -> tuple[int, int, int] | None:
    """Where the first child that has a position starts, counting what an inlined rule
    dropped (its `container_*`), as Lark's `PropagatePositions` reads it."""
    for c in children:
        if isinstance(c, lark.Tree):
            m = c._meta
            if m is not None and not m.empty:
                return (
                    getattr(m, "container_line", m.line),
                    getattr(m, "container_column", m.column),
                    getattr(m, "container_start_pos", m.start_pos),
                )
        elif isinstance(c, lark.Token):
            return c.line, c.column, c.start_pos
    return None


def _end(children: list) -> tuple[int, int, int] | None:
    """Where the last child that has a position ends."""
    for c in reversed(children):
        if isinstance(c, lark.Tree):
            m = c._meta
            if m is not None and not m.empty:
                return (
                    getattr(m, "container_end_line", m.end_line),
                    getattr(m, "container_end_column", m.end_column),
                    getattr(m, "container_end_pos", m.end_pos),
                )
        elif isinstance(c, lark.Token):
            return c.end_line, c.end_column, c.end_pos
    return None


def _with_positions(build: Any) -> Any:
    """Lark's `PropagatePositions` around `build` (the rule's filtering and tree making)."""

    def callback(children: list) -> Any:
        res = build(children)
        if isinstance(res, lark.Tree) and (start := _start(children)) is not None:
            end: Any = _end(children)  # there is one: the child `start` is from
            m = res.meta
            if not hasattr(m, "line"):  # not a tree an inlined rule passed up
                m.line, m.column, m.start_pos = start
                m.empty = False
            m.container_line, m.container_column, m.container_start_pos = start
            if not hasattr(m, "end_line"):
                m.end_line, m.end_column, m.end_pos = end
            m.container_end_line, m.container_end_column, m.container_end_pos = end
        return res

    return callback


def _build_trees_faster(built: lark.Lark) -> lark.Lark:
    """`built`, its tree building done as above (in place). A Lark whose callbacks are not
    where or what this expects is left as it is: correct, only slower."""
    callbacks = getattr(built, "_callbacks", None)  # the dict the LALR parser calls into
    if not isinstance(callbacks, dict):
        return built
    for rule in built.rules:
        callback = callbacks.get(rule)
        if callback is None:
            continue
        if _is_unit_rule(rule):
            callbacks[rule] = _first_child
        elif isinstance(callback, PropagatePositions) and callback.node_filter is None:
            callbacks[rule] = _with_positions(callback.node_builder)
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
        # whole or absent, even with several specc processes at once
        write_atomic(path, lambda f: f.write(text.encode("utf-8")))
    except Exception:  # a read-only home, a full disk, ...: the parser works without it
        return


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
