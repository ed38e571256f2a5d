"""Where the cursor is, read from the text before it: which block, which statement, which
call's parentheses. Completion is asked for on half-typed text that does not parse, so this
is a light scan of tokens and brackets, not the grammar; it never fails, it only knows less.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

_TOKEN = re.compile(
    r"""(?P<comment>\#[^\n]*)
      | (?P<string>"(?:[^"\\\n]|\\.)*"?|'(?:[^'\\\n]|\\.)*'?)
      | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
      | (?P<op>==|!=|<=|>=|->|\*\*|//)
      | (?P<newline>\n)
      | (?P<other>\S)""",
    re.VERBOSE,
)
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NAME_CHAR = re.compile(r"[A-Za-z0-9_]")
# The word that opens a block, and the kind of block it opens (`if`/`else`: the parent's).
_BLOCKS = {"model": "model", "sequential": "sequential", "forward": "forward", "data": "data",
           "train": "train", "if": None, "else": None}  # fmt: skip
_CLOSING = {")": "(", "]": "["}


@dataclass
class _Frame:
    """An open bracket: a block (`{`), a call or group (`(`), a list or shape (`[`)."""

    opener: str
    block: str | None = None  # `{`: model | sequential | forward | data | train
    model: str | None = None  # the model this block belongs to
    callee: str | None = None  # `(`: the name being called, if it is a call
    header: bool = False  # `(`: a header's parameters (`model Net(`, `forward(`)
    keys: set[str] = field(default_factory=set)  # `key =` written directly inside
    positional: int = 0  # `(`: the arguments written before the cursor without a keyword
    statement: list[str] = field(default_factory=list)  # the current statement's tokens


@dataclass(frozen=True)
class Cursor:
    """What the text before the cursor says about the place being typed."""

    block: str | None  # model | sequential | forward | data | train | None (top level)
    model: str | None  # the enclosing model's name
    key: str | None  # in a block, after `key =`: the key
    callee: str | None  # inside a call's parentheses: the called name
    keyword_slot: bool  # a keyword argument (in a call) or a key (in a block) may go here
    keys: frozenset[str]  # the keywords already in that call, or the keys in that block
    positional: int  # in a call: the arguments already passed by position
    after_dot: bool  # typing an attribute or method name


def cursor_at(text: str, line: int, column: int) -> Cursor | None:
    """The cursor at 0-based `line` and `column` (LSP positions) of `text`; None inside a
    comment or a string, where nothing should be offered."""
    lines = text.split("\n")
    if line >= len(lines):
        return None
    before = "\n".join([*lines[:line], lines[line][:column]])
    stack = [_Frame("{")]  # the file itself, a block of no kind
    for token in _TOKEN.finditer(before):
        kind, value = token.lastgroup, token.group()
        if kind in ("comment", "string") and token.end() == len(before):
            if kind == "comment" or len(value) < 2 or value[-1] != value[0]:
                return None
        if kind == "comment":
            continue
        _feed(stack, "STRING" if kind == "string" else value)
    return _cursor(stack, typing=bool(before) and _NAME_CHAR.fullmatch(before[-1]) is not None)


def _feed(stack: list[_Frame], token: str) -> None:
    top = stack[-1]
    if token in ("\n", ";"):
        if top.opener == "{":
            top.statement = []
    elif token == "{":
        stack.append(_block(top))
        top.statement = []
    elif token == "}":
        while len(stack) > 1 and stack.pop().opener != "{":
            pass
        stack[-1].statement = []
    elif token in ("(", "["):
        header = token == "(" and _is_header(top.statement)
        callee = _callee(top.statement) if token == "(" and not header else None
        top.statement.append(token)
        stack.append(_Frame(token, callee=callee, header=header))
    elif token in _CLOSING:
        while len(stack) > 1 and stack[-1].opener != "{":
            if stack.pop().opener == _CLOSING[token]:
                break
        stack[-1].statement.append(token)
    else:
        if token == "," and top.opener == "(" and _positional(top.statement):
            top.positional += 1
        if token == "=" and top.statement and _NAME.fullmatch(top.statement[-1]):
            if top.opener == "(" or len(top.statement) == 1:
                top.keys.add(top.statement[-1])
        top.statement.append(token)


def _positional(statement: list[str]) -> bool:
    """Whether the call's argument just ended (after its last comma) was given by position."""
    start = max((i + 1 for i, t in enumerate(statement) if t == ","), default=0)
    argument = statement[start:]
    return bool(argument) and not (
        len(argument) > 1 and _NAME.fullmatch(argument[0]) and argument[1] == "="
    )


def _block(parent: _Frame) -> _Frame:
    """The frame a `{` opens, from the statement before it (`model Net(...)`, `data d`)."""
    words = parent.statement
    opener = words[0] if words else ""
    if opener not in _BLOCKS:
        return _Frame("{")
    if _BLOCKS[opener] is None:  # `if c {` / `else {`: still the enclosing block
        return _Frame("{", parent.block, parent.model)
    model = words[1] if opener in ("model", "sequential") and len(words) > 1 else parent.model
    return _Frame("{", _BLOCKS[opener], model)


def _is_header(statement: list[str]) -> bool:
    """`model Net(` / `sequential Net(` / `forward(`: parameters and inputs, not a call."""
    named = len(statement) == 2 and statement[0] in ("model", "sequential")
    return named or statement == ["forward"]


def _callee(statement: list[str]) -> str | None:
    """The name a `(` calls; None for a method (`x.view(`) or a group (`(a + b)`)."""
    if not statement or not _NAME.fullmatch(statement[-1]) or statement[-2:-1] == ["."]:
        return None
    return statement[-1]


def _cursor(stack: list[_Frame], typing: bool) -> Cursor:
    """`typing`: the cursor touches the end of a word, the one being typed."""
    top = stack[-1]
    words = top.statement
    if typing and words and _NAME.fullmatch(words[-1]):
        words = words[:-1]  # what the word being typed is, the editor filters by
    at = max(i for i, f in enumerate(stack) if f.opener == "{")
    block = stack[at]
    in_call = top.opener == "("
    in_header = any(f.header for f in stack[at:])
    return Cursor(
        block=None if in_header else block.block,
        model=block.model,
        key=block.statement[0] if len(block.statement) > 1 and block.statement[1] == "=" else None,
        callee=top.callee if in_call else None,
        keyword_slot=(not words or words[-1] == ",") if in_call else not words,
        keys=frozenset(top.keys if in_call else block.keys),
        positional=top.positional if in_call else 0,
        after_dot=bool(words) and words[-1] == ".",
    )


def word_at(text: str, line: int, column: int) -> tuple[str, int] | None:
    """The name under (or just before) 0-based `line`/`column`, and its start column."""
    lines = text.split("\n")
    if line >= len(lines):
        return None
    for match in _NAME.finditer(lines[line]):
        if match.start() <= column <= match.end():
            return match.group(), match.start()
    return None
