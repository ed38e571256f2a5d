"""Highlighting: the TextMate grammar (editors/specc.tmLanguage.json, run through
textmate-grammar-python, a port of VS Code's tokenizer on Oniguruma, VS Code's regex
engine) and the Pygments lexer (specc/lang/highlight.py).

Both are checked against the parser, token by token, over every shipped spec and the
formatter's case files: each keyword, name, number, string, operator and comment of the
spec (as grammars/specc.lark reads it) must get the class its role calls for, and no
character of a token may be left unscoped (TextMate) or be an Error token (Pygments).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from conftest import CASES, ROOT, SPECS
from pygments.lexers import get_lexer_by_name, get_lexer_for_filename
from pygments.token import Comment, Error, Keyword, Name, Number, Operator, Punctuation, String

from specc.lang.fmt import Tok, _flatten
from specc.lang.highlight import SpecLexer
from specc.lang.parse import token_parser

GRAMMAR = ROOT / "editors" / "specc.tmLanguage.json"
VSCODE = ROOT / "editors" / "vscode"
FILES = sorted(SPECS.rglob("*.spec")) + sorted((CASES / "fmt").glob("*.spec"))
IDS = [str(p.relative_to(ROOT)) for p in FILES]

KEYWORD_OPERATORS = {"and", "or", "not", "in", "is"}
CONSTANTS = {"True", "False", "None", "..."}
BLOCK_HEADS = {"model", "sequential", "data", "train"}
PUNCTUATION = set("()[]{},:;.")


def spec_tokens(text: str) -> list[Tok]:
    return _flatten(token_parser().parse(text))[0]


def spec_comments(text: str) -> list[tuple[int, int, str]]:
    """(line, column, text) of each comment, 1-based line, 0-based column."""
    return [
        (t.line, t.column - 1, str(t))
        for t in token_parser().lex(text, dont_ignore=True)
        if t.type == "COMMENT"
    ]


def is_keyword(t: Tok) -> bool:
    return t.type != "NAME" and t.text.isalpha()


def name_role(t: Tok, toks: list[Tok], i: int) -> str:
    """What a NAME token is, as both highlighters should tell."""
    nxt = toks[i + 1].text if i + 1 < len(toks) else ""
    if t.text == "_" and t.rule == "name":
        return "hole"
    if t.rule in ("model", "sequential"):
        return "model name"
    if t.rule in ("data_block", "train_block"):
        return "block name"
    if t.rule == "dim_name":
        return "dimension"
    if t.rule == "param" and toks[i - 1].text == ":":
        return "type"
    if t.rule == "input" and toks[i - 1].text == "]":
        return "dtype"
    if t.rule == "method_call":
        return "method"
    if t.rule in ("call", "init_rule") and nxt == "(":
        return "constructor" if t.text[0].isupper() else "function"
    first_in_line = i == 0 or toks[i - 1].line != t.line
    if t.rule in ("layer_decl", "field") and t.stmt.first == i and first_in_line:
        return "definition"
    return "name"


# ---- TextMate -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def textmate():
    pytest.importorskip("textmate_grammar", reason="pip install textmate-grammar-python")
    from textmate_grammar.parsers.base import LanguageParser

    logging.getLogger("textmate_grammar").setLevel(logging.ERROR)
    return LanguageParser(json.loads(GRAMMAR.read_text("utf-8")))


def scope_map(parser, text: str) -> dict[tuple[int, int], list[str]]:
    """(1-based line, 0-based column) -> the scopes of that character."""
    scopes: dict[tuple[int, int], list[str]] = {}
    for (line, col), content, names in parser.parse_string(text).flatten():
        for k in range(len(content)):
            scopes[(line + 1, col + k)] = names
    return scopes


TM_NAME_SCOPES = {
    "hole": "constant.language.hole",
    "model name": "entity.name.type",
    "block name": "entity.name.section",
    "dimension": "variable.other.dimension",
    "type": "storage.type",
    "dtype": "storage.type",
    "method": "entity.name.function.method",
    "constructor": "entity.name.function.constructor",
    "function": "entity.name.function",
    "definition": "variable.other.definition",
    "name": "variable.other",
}


def tm_expected(t: Tok, toks: list[Tok], i: int) -> str:
    if t.type == "STRING":
        return "string.quoted"
    if t.type in ("INT", "FLOAT"):
        return "constant.numeric"
    if t.text in CONSTANTS:
        return "constant.language"
    if is_keyword(t):
        if t.text in KEYWORD_OPERATORS:
            return "keyword.operator"
        return "storage.type" if t.text in BLOCK_HEADS else "keyword."
    if t.type == "NAME":
        return TM_NAME_SCOPES[name_role(t, toks, i)]
    if t.text in PUNCTUATION:
        return "punctuation."
    return "keyword.operator"


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_textmate_scopes_every_token(textmate, path: Path):
    text = path.read_text("utf-8")
    scopes = scope_map(textmate, text)
    toks = spec_tokens(text)
    wrong = []
    for i, t in enumerate(toks):
        want = tm_expected(t, toks, i)
        for k in range(len(t.text)):
            got = scopes.get((t.line, t.col + k), [])
            if not any(s.startswith(want) for s in got[1:]):
                wrong.append(f"{t.line}:{t.col + k} {t.text!r}: {got[1:]} lacks {want}")
                break
    for line, col, comment in spec_comments(text):
        for k in range(len(comment)):
            if not any(s.startswith("comment.line") for s in scopes.get((line, col + k), [])):
                wrong.append(f"{line}:{col + k} comment {comment!r} not a comment")
                break
    assert not wrong, "\n".join(wrong[:20])


def test_textmate_strings_end_at_the_line(textmate):
    scopes = scope_map(textmate, 'import "a.spec\nmodel N {}\n')
    assert "storage.type.model.specc" in scopes[(2, 0)]


def test_vscode_extension_is_complete():
    package = json.loads((VSCODE / "package.json").read_text("utf-8"))
    assert package["main"] == "./extension.js" and (VSCODE / "extension.js").is_file()
    (language,) = package["contributes"]["languages"]
    assert language["extensions"] == [".spec"]
    assert (VSCODE / language["configuration"]).is_file()
    (grammar,) = package["contributes"]["grammars"]
    assert grammar["scopeName"] == json.loads(GRAMMAR.read_text("utf-8"))["scopeName"]
    copy = VSCODE / grammar["path"]
    assert copy.read_text("utf-8") == GRAMMAR.read_text("utf-8"), (
        f"{copy} is a copy of {GRAMMAR}: copy it again"
    )
    assert "vscode-languageclient" in package["dependencies"]
    source = (VSCODE / "extension.js").read_text("utf-8")
    assert '"lsp"' in source and "TransportKind.stdio" in source


# ---- Pygments -------------------------------------------------------------------------


def token_types(text: str) -> dict[tuple[int, int], object]:
    """(1-based line, 0-based column) -> Pygments token type of that character."""
    types: dict[tuple[int, int], object] = {}
    line, col = 1, 0
    for _, ttype, value in SpecLexer().get_tokens_unprocessed(text):
        for ch in value:
            types[(line, col)] = ttype
            line, col = (line + 1, 0) if ch == "\n" else (line, col + 1)
    return types


PYGMENTS_NAMES = {
    "hole": Name.Builtin.Pseudo,
    "model name": Name.Class,
    "block name": Name.Namespace,
    "dimension": Name.Variable,
    "type": Keyword.Type,
    "dtype": Keyword.Type,
    "method": Name.Function,
    "constructor": Name.Class,
    "function": Name.Function,
    "definition": Name.Variable,
    "name": Name,
}


def pygments_expected(t: Tok, toks: list[Tok], i: int):
    if t.type == "STRING":
        return String
    if t.type in ("INT", "FLOAT"):
        return Number
    if t.text in CONSTANTS:
        return Keyword.Constant
    if is_keyword(t):
        return Operator.Word if t.text in KEYWORD_OPERATORS else Keyword
    if t.type == "NAME":
        return PYGMENTS_NAMES[name_role(t, toks, i)]
    if t.text in PUNCTUATION:
        return Punctuation
    return Operator


@pytest.mark.parametrize("path", FILES, ids=IDS)
def test_pygments_lexes_every_token(path: Path):
    text = path.read_text("utf-8")
    types = token_types(text)
    assert Error not in set(types.values())
    toks = spec_tokens(text)
    wrong = []
    for i, t in enumerate(toks):
        want = pygments_expected(t, toks, i)
        for k in range(len(t.text)):
            got = types.get((t.line, t.col + k))
            if got is None or got not in want:
                wrong.append(f"{t.line}:{t.col + k} {t.text!r}: {got} is not {want}")
                break
    for line, col, comment in spec_comments(text):
        if types.get((line, col)) not in Comment:
            wrong.append(f"{line}:{col} comment {comment!r}: {types.get((line, col))}")
    assert not wrong, "\n".join(wrong[:20])


def test_pygments_finds_the_lexer_by_entry_point():
    assert isinstance(get_lexer_by_name("specc"), SpecLexer)
    assert isinstance(get_lexer_for_filename("model.spec"), SpecLexer)


def test_rich_highlights_specs():
    from rich.console import Console
    from rich.syntax import Syntax

    console = Console(record=True, force_terminal=True, color_system="truecolor", width=100)
    console.print(Syntax((SPECS / "cifar_net.spec").read_text("utf-8"), "specc"))
    assert "\x1b[" in console.export_text(styles=True)


def test_pygments_no_errors_on_broken_text():
    # half-typed text in an editor or an error snippet: highlighted, never an Error token
    for text in ['model N {\n    a = Linear(1, "x', "forward(x: [B, 3", "train {\n  init"]:
        types = [t for _, t, _ in SpecLexer().get_tokens_unprocessed(text)]
        assert Error not in types
