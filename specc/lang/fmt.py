"""Spec text -> the same spec in its canonical layout (`specc fmt`, `specc.format_text`).

The formatter works from the parse tree, not from the text: a second LALR parser over the
same grammar keeps every token (`keep_all_tokens`), so each token knows the rule it sits in
(a `=` of a keyword argument, a `[` that indexes, a `-` that negates) and the statement it
belongs to. Comments are not tokens; between two tokens there is only whitespace and
comments, so the gaps give them back with their line and column.

What is canonical:
- one statement per line, blocks indented by four spaces, `{` on its header's line,
  `} else {`, at most one blank line in a row (none right inside a block), and one blank
  line between top-level items (consecutive imports and plugins may stay together);
- spacing between tokens by kind (`f(a, b=1)`, `x: [B, 3]`, `a + b`, `-x`, `q[: hd // 2]`);
- `=` aligned in runs of one-line `name = value` lines of one kind (layers, fields of a
  data or train block, ties, init rules, named sequential layers). A blank line, a
  multi-line entry or an entry of another kind ends a run; comment lines and lines without
  `=` (`freeze`, `init ... from`) do not. A multi-line entry is aligned with the run that
  follows it only when its `=` already lines up with that run's.

What is kept from the input, because it is a choice and not an accident:
- line breaks inside a statement (long lines are never wrapped, short ones never joined);
  continuation lines are re-indented: under the bracket's first item when the bracket
  has one on its line (visual), else four spaces in from the bracket's line (hanging);
- trailing comments stay at their column while the code leaves room (two spaces), else
  they follow it after two spaces;
- in a forward block, a run of assignments is aligned only when the input aligned it;
- keyword arguments of a call are `name=value`, or `name = value` for every one of them
  when the call's first keyword argument is written so;
- extra spaces after a comma of a statement written over several lines (hand-made
  tables, like the stage table of specs/zoo/mobilenet_v2.spec).

Every result is checked before it is returned: it must parse to the same tree as the
input, so a formatter bug can never change what a spec means.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import lark
from lark.exceptions import UnexpectedInput

from specc.errors import SpecError
from specc.lang.parse import MAX_DEPTH, parse, token_parser

INDENT = 4
COMMENT_GAP = 2  # spaces between code and a trailing comment it has to move away from

# Parse-tree rules that are statements: each starts its own line.
STATEMENTS = {
    "model", "sequential", "data_block", "train_block", "import_stmt", "plugin_stmt",
    "layer_decl", "forward", "tie_decl", "init_rule",
    "assign", "return_stmt", "if_stmt",
    "seq_input", "seq_named", "seq_anon",
    "field", "init_stmt", "freeze_stmt", "group_stmt", "lora_stmt",
}  # fmt: skip
# Statements whose `=` lines up with their neighbours' (`assign` only where the input did).
ALIGNED = {"layer_decl", "tie_decl", "init_rule", "field", "seq_named", "assign"}
IMPORTS = {"import_stmt", "plugin_stmt"}
# Keywords that can start a statement and never continue an expression: a `;` before one of
# them (or before a name) says nothing, and is dropped.
ITEM_KEYWORDS = {
    "model", "sequential", "data", "train", "import", "plugin", "forward", "init", "return",
    "freeze", "group", "lora", "input",
}  # fmt: skip
# Rules whose `(` follows a name with no space: calls, headers.
CALL_PARENS = {"call", "method_call", "init_rule", "forward", "seq_input", "params"}
SIMPLE = {"name", "int", "float", "none", "true", "false", "ellipsis"}


@dataclass(eq=False)
class Stmt:
    kind: str
    node: lark.Tree
    first: int = -1  # index of its first token
    eq: int | None = None  # index of its own `=` token
    container: int = -1  # index of the `{` it sits in (-1: top level)
    own: list[int] = field(default_factory=list)  # its tokens, not its inner statements
    header: list[int] = field(default_factory=list)  # its own tokens before its block
    multiline: bool = False  # its own tokens (a block's braces too) on several lines
    header_multiline: bool = False


@dataclass(eq=False)
class Tok:
    text: str
    type: str
    parent: lark.Tree
    stmt: Stmt | None
    start: int
    end: int
    line: int  # 1-based, as in the input
    col: int  # 0-based, as in the input

    @property
    def rule(self) -> str:
        return self.parent.data


@dataclass
class Comment:
    text: str
    col: int  # 0-based column in the input
    trailing: bool  # on the line of the token before it


NL = "\n"


@dataclass(eq=False)
class Line:
    toks: list[int] = field(default_factory=list)
    comment: Comment | None = None  # trailing comment
    text: str | None = None  # a comment line (`toks` empty)
    next_tok: int = -1  # for a comment line: the token after it (-1: end of file)
    blank: bool = False


BLANK = Line(blank=True)


def format_text(text: str, file: str = "<spec>") -> str:
    """Format spec text in specc's canonical layout. A spec that does not parse raises the
    same located `SpecSyntaxError` as `specc check`. Formatting twice changes nothing, and
    the result always parses to the same tree as `text` (checked, else a RuntimeError)."""
    tree = _parse_tokens(text, file)
    out = _Formatter(text, tree).run()
    try:
        same = _signature(token_parser().parse(out)) == _signature(tree)
    except UnexpectedInput:
        same = False
    if not same:  # a formatter bug: never hand back a spec that means something else
        raise RuntimeError(f"specc fmt: formatting {file} would change its meaning")
    return out


def _parse_tokens(text: str, file: str) -> lark.Tree:
    """The tree with every token; the user's syntax errors exactly as `specc check` shows
    them (its parser raises them: only a text that fails here, or nests deep, is parsed
    twice)."""
    try:
        tree = token_parser().parse(text)
    except UnexpectedInput:
        parse(text, file)  # raises the located error
        raise
    if _depth(tree) > MAX_DEPTH:  # this tree is never shallower than `parse`'s
        parse(text, file)
    return tree


def _depth(tree: lark.Tree) -> int:
    deepest, stack = 0, [(tree, 1)]
    while stack:
        node, depth = stack.pop()
        deepest = max(deepest, depth)
        stack.extend((c, depth + 1) for c in node.children if isinstance(c, lark.Tree))
    return deepest


def _signature(tree: lark.Tree) -> list:
    """The tree's rules and tokens in order, without the `;` the formatter may drop."""
    out: list = []
    stack: list = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, lark.Tree):
            out.append(node.data)
            stack.append(")")
            stack.extend(reversed(node.children))
        elif node is None or (isinstance(node, str) and not isinstance(node, lark.Token)):
            out.append(node)
        elif node != ";":
            out.append((node.type, str(node)))
    return out


# ---- tokens and comments --------------------------------------------------------------


def _flatten(tree: lark.Tree) -> tuple[list[Tok], list[Stmt]]:
    """The tree's tokens in order, each with its rule and innermost statement."""
    toks: list[Tok] = []
    stmts: list[Stmt] = []
    stack: list[tuple[lark.Tree | lark.Token, lark.Tree, Stmt | None]] = [(tree, tree, None)]
    while stack:
        node, parent, stmt = stack.pop()
        if isinstance(node, lark.Token):
            tok = Tok(str(node), node.type, parent, stmt, node.start_pos, node.end_pos,
                      node.line, node.column - 1)  # fmt: skip
            if stmt is not None and stmt.first < 0:
                stmt.first = len(toks)
            toks.append(tok)
            continue
        if node.data in STATEMENTS and not (node.data == "if_stmt" and parent.data == "else_part"):
            stmt = Stmt(node.data, node)
            stmts.append(stmt)
        for child in reversed(node.children):
            if child is not None:
                stack.append((child, node, stmt))
    return toks, stmts


def _gap_items(src: str, start: int, end: int, after_token: bool) -> list:
    """The comments and newlines between two tokens, in order (NL for each newline)."""
    items: list = []
    j = start
    while j < end:
        c = src[j]
        if c == "\n":
            items.append(NL)
            j += 1
        elif c == "#":
            stop = src.find("\n", j, end)
            stop = end if stop < 0 else stop
            col = j - (src.rfind("\n", 0, j) + 1)
            trailing = after_token and NL not in items
            items.append(Comment(src[j:stop].rstrip(), col, trailing))
            j = stop
        else:
            j += 1
    return items


def comments(text: str) -> list[str]:
    """Every comment of spec text, in order (Lark's lexer alone: no parse needed)."""
    return [
        str(t).rstrip() for t in token_parser().lex(text, dont_ignore=True) if t.type == "COMMENT"
    ]


# ---- the formatter --------------------------------------------------------------------


class _Formatter:
    def __init__(self, text: str, tree: lark.Tree) -> None:
        self.src = text
        self.tree = tree
        self.toks, self.stmts = _flatten(self.tree)
        self._drop_semicolons()
        self._structure()

    # -- analysis --

    def _drop_semicolons(self) -> None:
        """Drop each `;` that separates nothing (the next statement could not continue the
        expression before it); blank it in the source so the gaps and columns stay."""
        keep: list[Tok] = []
        src = list(self.src)
        firsts = {s.first for s in self.stmts}
        for i, t in enumerate(self.toks):
            if t.text == ";":
                nxt = self.toks[i + 1] if i + 1 < len(self.toks) else None
                if (
                    nxt is None
                    or nxt.text == "}"
                    or (i + 1 in firsts and (nxt.type == "NAME" or nxt.text in ITEM_KEYWORDS))
                ):
                    src[t.start : t.end] = " " * (t.end - t.start)
                    continue
            keep.append(t)
        if len(keep) != len(self.toks):
            index = {id(t): n for n, t in enumerate(keep)}
            for s in self.stmts:
                s.first = index[id(self.toks[s.first])]
            self.toks = keep
            self.src = "".join(src)

    def _structure(self) -> None:
        toks = self.toks
        self.first_of: dict[int, Stmt] = {s.first: s for s in self.stmts}
        braces: list[int] = []
        in_block: set[int] = set()  # statements whose header has ended (at their `{`)
        for i, t in enumerate(toks):
            if i in self.first_of:
                self.first_of[i].container = braces[-1] if braces else -1
            if t.text == "{":
                braces.append(i)
            elif t.text == "}":
                braces.pop()
            s = t.stmt
            if s is not None:
                s.own.append(i)
            if s is None or id(s) in in_block:
                continue
            if t.text == "{":
                in_block.add(id(s))
                continue
            s.header.append(i)
            if t.text == "=" and t.parent is s.node and s.eq is None:
                s.eq = i
        self.gaps = []
        prev_end = 0
        for i, t in enumerate(toks):
            self.gaps.append(_gap_items(self.src, prev_end, t.start, i > 0))
            prev_end = t.end
        self.tail = _gap_items(self.src, prev_end, len(self.src), bool(toks))
        # Keyword-argument style per argument list: spaced when its first keyword is.
        self.kw_spaced: dict[int, bool] = {}
        for i, t in enumerate(toks):
            if t.text == "=" and t.rule == "kwarg":
                args = id(self._arg_list(t))
                if args not in self.kw_spaced:
                    before = self.src[toks[i - 1].end : t.start]
                    after = self.src[t.end : toks[i + 1].start]
                    self.kw_spaced[args] = bool(before) and bool(after)

    def _arg_list(self, eq: Tok) -> object:
        """The `arguments`/`init_options` node around a kwarg's `=` (trees have no parent
        links, so a map from each kwarg to its list is made once)."""
        return self._kw_owner[id(eq.parent)]

    @functools.cached_property
    def _kw_owner(self) -> dict[int, lark.Tree]:
        owner: dict[int, lark.Tree] = {}
        stack = [self.tree]
        while stack:
            node = stack.pop()
            for c in node.children:
                if isinstance(c, lark.Tree):
                    if c.data == "kwarg":
                        owner[id(c)] = node
                    stack.append(c)
        return owner

    # -- layout: which tokens share a line --

    def _layout(self) -> list[Line]:
        toks = self.toks
        lines: list[Line] = []
        cur: Line | None = None

        def end_line() -> None:
            nonlocal cur
            if cur is not None:
                lines.append(cur)
                cur = None

        def blank() -> None:
            if lines and not lines[-1].blank:
                lines.append(BLANK)

        for i in range(len(toks) + 1):
            items = self.gaps[i] if i < len(toks) else self.tail
            run = 0  # newlines since the last comment
            had_comment = False
            for it in items:
                if it is NL:
                    run += 1
                    continue
                had_comment = True
                if it.trailing and cur is not None:
                    cur.comment = it
                    end_line()
                else:
                    end_line()
                    if run >= 2:
                        blank()
                    lines.append(Line(text=it.text, next_tok=i if i < len(toks) else -1))
                run = 0
            if i == len(toks):
                end_line()
                break
            t = toks[i]
            prev = toks[i - 1] if i else None
            joined = prev is not None and not had_comment and self._joins(prev, t)
            if cur is not None and joined:
                cur.toks.append(i)
            elif cur is not None and not run and not self._breaks(i):
                cur.toks.append(i)
            else:
                end_line()
                if run >= 2:
                    blank()
                cur = Line([i])
        return self._tidy(lines)

    def _joins(self, prev: Tok, t: Tok) -> bool:
        """Tokens that always follow the one before on its line."""
        if t.text == "{" or t.text in (",", ";") or t.text == "else":
            return True
        if t.text == "if" and prev.text == "else":
            return True
        return t.text == "}" and prev.text == "{"

    def _breaks(self, i: int) -> bool:
        """Must token i start a line?"""
        t = self.toks[i]
        prev = self.toks[i - 1]
        if i in self.first_of or t.text == "}":
            return True
        return prev.text == "{"

    def _tidy(self, lines: list[Line]) -> list[Line]:
        """No blank lines at either end, right inside a block or bracket; one blank line
        between top-level items (except consecutive imports and plugins)."""
        toks = self.toks
        top = [s for s in self.stmts if s.container == -1]
        starts = {s.first: s for s in top}
        out: list[Line] = []
        prev_item: Stmt | None = None
        last_code = -1  # index in `out` of the last code line
        for line in lines:
            if line.blank:
                if out and not out[-1].blank:
                    last = out[-1]
                    if not (last.toks and toks[last.toks[-1]].text in "{(["):
                        out.append(line)
                continue
            if line.toks:
                first = line.toks[0]
                if toks[first].text in "})]" and out and out[-1].blank:
                    out.pop()
                item = starts.get(first)
                if item is not None:
                    if (
                        prev_item is not None
                        and not (item.kind in IMPORTS and prev_item.kind in IMPORTS)
                        and not any(x.blank for x in out[last_code + 1 :])
                    ):
                        out.insert(last_code + 1, BLANK)
                    prev_item = item
                last_code = len(out)
            out.append(line)
        while out and out[-1].blank:
            out.pop()
        while out and out[0].blank:
            out.pop(0)
        return out

    # -- alignment --

    def _alignment(self, lines: list[Line]) -> dict[int, int]:
        """Padding before each aligned `=` (token index -> extra spaces)."""
        line_of: dict[int, int] = {}
        for n, line in enumerate(lines):
            for i in line.toks:
                line_of[i] = n
        for s in self.stmts:
            s.multiline = line_of[s.own[0]] != line_of[s.own[-1]]
            s.header_multiline = bool(s.header) and line_of[s.header[0]] != line_of[s.header[-1]]
        by_block: dict[int, list[Stmt]] = {}
        for s in self.stmts:
            by_block.setdefault(s.container, []).append(s)
        pad: dict[int, int] = {}
        for members in by_block.values():
            members.sort(key=lambda s: s.first)
            for group in self._groups(members, lines, line_of):
                self._pad(group, pad)
        return pad

    def _groups(self, members: list[Stmt], lines: list[Line], line_of: dict[int, int]):
        group: list[Stmt] = []
        tentative: Stmt | None = None  # a multi-line entry starting the group

        def close():
            nonlocal group, tentative
            if tentative is not None and len(group) > 1:
                nxt = group[1]
                if self.toks[tentative.eq].col != self.toks[nxt.eq].col:
                    group = group[1:]  # its `=` did not line up with the run's: leave it
            elif tentative is not None:
                group = []
            result = group
            group, tentative = [], None
            return result

        prev_line = None
        for s in members:
            start = line_of[s.first]
            if prev_line is not None and any(x.blank for x in lines[prev_line:start]):
                if g := close():
                    yield g
            prev_line = line_of[s.own[-1]]
            if s.kind not in ALIGNED or s.eq is None:
                if s.multiline and (g := close()):
                    yield g
                continue
            if group and group[-1].kind != s.kind:
                if g := close():
                    yield g
            if s.multiline:
                if g := close():
                    yield g
                if s.kind != "assign" and line_of[s.eq] == start:
                    group, tentative = [s], s
                continue
            group.append(s)
        if g := close():
            yield g

    def _pad(self, group: list[Stmt], pad: dict[int, int]) -> None:
        if group[0].kind == "assign":
            # opt-in: only a run the input aligned (some `=` with more than one space before)
            if not any(self._space_before_eq(s) > 1 for s in group):
                return
        widths = {id(s): self._key_width(s) for s in group}
        widest = max(widths.values())
        for s in group:
            if widest > widths[id(s)]:
                pad[s.eq] = widest - widths[id(s)]

    def _space_before_eq(self, s: Stmt) -> int:
        before = self.toks[s.eq - 1]
        return self.toks[s.eq].start - before.end

    def _key_width(self, s: Stmt) -> int:
        width = 0
        for i in range(s.first, s.eq):
            if i > s.first:
                width += len(self._space(i, {}))
            width += len(self.toks[i].text)
        return width

    # -- spacing --

    def _space(self, i: int, pad: dict[int, int]) -> str:
        """The whitespace between token i-1 and token i on one line."""
        a, b = self.toks[i - 1], self.toks[i]
        if b.text == "=" and i in pad:
            return " " * (1 + pad[i])
        return " " if self._spaced(a, b) else ""

    def _spaced(self, a: Tok, b: Tok) -> bool:
        at, bt = a.text, b.text
        if bt in (")", "]", ",", ";"):
            return False
        if at in ("(", "["):
            return False
        if at == ",":
            return True
        if bt == "{":
            return True
        if at == "{" and bt == "}":
            return False
        if at == "." or bt == ".":
            return False
        if at == ":" and a.rule == "slice":
            return self._slice_complex(a.parent) and bt not in (":", "]", ",")
        if bt == ":" and b.rule == "slice":
            return self._slice_complex(b.parent) and at not in (":", "[")
        if bt == ":":
            return False
        if at == "=" and a.rule == "kwarg":
            return self.kw_spaced[id(self._arg_list(a))]
        if bt == "=" and b.rule == "kwarg":
            return self.kw_spaced[id(self._arg_list(b))]
        if "=" in (at, bt) and "param" in (a.rule, b.rule):
            eq = a if at == "=" else b
            return any(isinstance(c, lark.Token) and c == ":" for c in eq.parent.children)
        if bt == "(":
            if b.rule == "init_options":
                return True
            if b.rule in CALL_PARENS:
                return False
        if bt == "[" and b.rule == "index":
            return False
        if at in ("-", "+") and a.rule in ("neg", "unary"):
            return False
        if at == "*" and a.rule == "starred":
            return False
        return True

    def _slice_complex(self, node: lark.Tree) -> bool:
        bounds = [
            c
            for c in node.children
            if c is not None and not (isinstance(c, lark.Token) and c == ":")
        ]
        return not all(_simple(c) for c in bounds)

    # -- rendering --

    def run(self) -> str:
        if not self.toks:
            lines = [c.text for c in self.tail if isinstance(c, Comment)]
            return "".join(line + "\n" for line in lines)
        lines = self._layout()
        pad = self._alignment(lines)
        last_in_line = {line.toks[-1] for line in lines if line.toks}
        toks = self.toks
        out: list[str] = []
        openers: list[tuple[int, bool, int]] = []  # (column, hanging, indent of its line)
        depth = 0
        stmt_indent: dict[int, int] = {}
        for line in lines:
            if line.blank:
                out.append("")
                continue
            if not line.toks:
                nxt = toks[line.next_tok] if line.next_tok >= 0 else None
                indent = self._indent(line.next_tok, nxt, openers, depth, stmt_indent, True)
                out.append(" " * indent + line.text)
                continue
            first = line.toks[0]
            indent = self._indent(first, toks[first], openers, depth, stmt_indent, False)
            if first in self.first_of:
                stmt_indent[first] = indent
            text = " " * indent
            for n, i in enumerate(line.toks):
                t = toks[i]
                if n:
                    space = self._space(i, pad)
                    if toks[i - 1].text == "," and self._keeps_table(i):
                        space = " " * max(len(space), t.start - toks[i - 1].end)
                    text += space
                col = len(text)
                text += t.text
                if t.text in "([":
                    openers.append((col, i in last_in_line, indent))
                elif t.text in ")]":
                    openers.pop()
                elif t.text == "{":
                    depth += 1
                elif t.text == "}":
                    depth -= 1
            if line.comment is not None:
                c = line.comment
                room = c.col - len(text)
                text += " " * (room if room >= COMMENT_GAP else COMMENT_GAP) + c.text
            out.append(text.rstrip())
        return "\n".join(out) + "\n"

    def _keeps_table(self, i: int) -> bool:
        """Keep the input's run of spaces after the comma before token i? Only inside a
        statement written over several lines, and only on the same input line."""
        t, comma = self.toks[i], self.toks[i - 1]
        s = comma.stmt
        return s is not None and s.header_multiline and t.line == comma.line

    def _indent(self, i, t, openers, depth, stmt_indent, comment: bool) -> int:
        if t is None:
            return 0
        closing = t.text in ")]" and not comment
        if openers:
            col, hanging, line_indent = openers[-1]
            if closing:
                return line_indent if hanging else col
            return line_indent + INDENT if hanging else col + 1
        if t.text == "}":
            return INDENT * (depth if comment else depth - 1)
        if i in self.first_of:
            return INDENT * depth
        head = stmt_indent.get(t.stmt.first, INDENT * depth) if t.stmt else INDENT * depth
        if t.text in ("else", "{", "if") and not comment:
            return head
        return head + INDENT


def _simple(node: lark.Tree | lark.Token) -> bool:
    """A slice bound that needs no spaces around its `:` (a name, a number, `a.b`)."""
    if isinstance(node, lark.Token):
        return True
    if node.data in SIMPLE:
        return True
    if node.data == "neg":
        return isinstance(node.children[-1], lark.Tree) and node.children[-1].data in SIMPLE
    if node.data == "attribute":
        return _simple(node.children[0])
    return False


# ---- files ----------------------------------------------------------------------------


def format_files(paths: list, *, check: bool = False, out=None, err=None) -> int:
    """`specc fmt`: format each file in place (`-`: standard input to standard output).
    With `check`, write nothing and list the files that would change. Returns the exit
    code: 2 if a file could not be read or parsed (its error printed, the file untouched),
    else 1 if `check` found files to change, else 0."""
    import sys
    from pathlib import Path

    from specc.errors import EXIT_USER_ERROR
    from specc.lang.loader import _read

    out = out or sys.stdout
    err = err or sys.stderr
    failed = changed = 0
    for path in map(Path, paths):
        display = str(path)
        try:
            text = sys.stdin.read() if display == "-" else _read(path, display)
            new = format_text(text, "<stdin>" if display == "-" else display)
        except SpecError as exc:
            print(exc.render(), file=err)
            failed += 1
            continue
        if display == "-":
            if check:
                changed += new != text
            else:
                out.write(new)
            continue
        if new == text:
            continue
        changed += 1
        if check:
            print(f"would reformat {display}", file=err)
        else:
            path.write_text(new, "utf-8")
            print(f"reformatted {display}", file=err)
    if failed:
        return EXIT_USER_ERROR
    return 1 if check and changed else 0
