"""A Pygments lexer for .spec files, registered as the `specc` lexer (pyproject.toml's
`pygments.lexers` entry point): `pygmentize -l specc file.spec`, rich's
`Syntax(text, "specc")`, Sphinx's `.. code-block:: specc`.

It follows the same token classes as the TextMate grammar (editors/specc.tmLanguage.json):
block heads and their names, statement keywords, layer constructors (`Conv2d(`), functions
and methods, the names being defined (`conv1 = ...`), input shapes (`x: [B, 3, 32, 32]`),
numbers, strings and comments. Highlighting only: the parser (grammars/specc.lark) decides
what a spec means.
"""

from __future__ import annotations

from typing import ClassVar

from pygments.lexer import RegexLexer, bygroups, include, words
from pygments.token import (
    Comment,
    Keyword,
    Name,
    Number,
    Operator,
    Punctuation,
    String,
    Whitespace,
)

NAME = r"[A-Za-z_][A-Za-z0-9_]*"


class SpecLexer(RegexLexer):
    """Lexer for specc model specs (.spec)."""

    name = "specc"
    aliases: ClassVar[list[str]] = ["specc", "spec"]
    filenames: ClassVar[list[str]] = ["*.spec"]
    mimetypes: ClassVar[list[str]] = ["text/x-specc"]

    tokens: ClassVar[dict] = {
        "root": [
            # at the start of a line: train-block statements and init rules, and the name
            # a layer, field or variable is bound to (`conv1 = ...`)
            (
                r"^([^\S\n]*)(init|freeze|group|lora)\b(?!\s*=)",
                bygroups(Whitespace, Keyword),
            ),
            (rf"^([^\S\n]*)({NAME})(?=\s*=(?!=))", bygroups(Whitespace, Name.Variable)),
            (r"\n", Whitespace),
            (r"[^\S\n]+", Whitespace),
            (r"#.*?$", Comment.Single),
            # model Net(...) {   sequential MLP {
            (
                rf"\b(model|sequential)(\s+)({NAME})",
                bygroups(Keyword.Declaration, Whitespace, Name.Class),
            ),
            # data digits {   train {   train gpt {
            (
                rf"\b(data|train)(?:(\s+)({NAME}))?(?=\s*\{{)",
                bygroups(Keyword.Declaration, Whitespace, Name.Namespace),
            ),
            (words(("import", "plugin"), suffix=r"\b"), Keyword.Namespace),
            (words(("return", "if", "else"), suffix=r"\b"), Keyword),
            (r"\bfrom\b(?=\s*[\"'])", Keyword),
            (r"\b(forward|input)(?=\s*\()", Keyword),
            # an input's shape: x: [B, 3, 32, 32] long
            (r"(:)(\s*)(\[)", bygroups(Punctuation, Whitespace, Punctuation), "shape"),
            include("expression"),
        ],
        "shape": [
            (r"\s+", Whitespace),
            (r"#.*?$", Comment.Single),
            (r"[0-9][0-9_]*\b", Number.Integer),
            (NAME, Name.Variable),
            (r",", Punctuation),
            (
                r"(\])(\s*)(long|int|float|bool|half|double)\b",
                bygroups(Punctuation, Whitespace, Keyword.Type),
                "#pop",
            ),
            (r"\]", Punctuation, "#pop"),
        ],
        "expression": [
            (r"\n", Whitespace),
            (r"[^\S\n]+", Whitespace),
            (r"#.*?$", Comment.Single),
            (r'"(?:[^"\\\n]|\\.)*"', String.Double),
            (r"'(?:[^'\\\n]|\\.)*'", String.Single),
            (r'["\']', String),  # an unterminated string: highlighted, not an error
            (r"0[xX][0-9a-fA-F_]+\b", Number.Hex),
            (r"0[oO][0-7_]+\b", Number.Oct),
            (r"0[bB][01_]+\b", Number.Bin),
            (
                r"([0-9][0-9_]*)?\.[0-9][0-9_]*([eE][-+]?[0-9]+)?\b"
                r"|[0-9][0-9_]*\.([eE][-+]?[0-9]+\b)?(?![0-9A-Za-z_.])"
                r"|[0-9][0-9_]*[eE][-+]?[0-9]+\b",
                Number.Float,
            ),
            (r"[0-9][0-9_]*\b", Number.Integer),
            (words(("True", "False", "None"), suffix=r"\b"), Keyword.Constant),
            (r"\b_\b", Name.Builtin.Pseudo),  # the hole: a size inferred from the shape
            (r"\.\.\.", Keyword.Constant),
            (words(("and", "or", "not", "in", "is"), suffix=r"\b"), Operator.Word),
            (r"(:)(\s*)(int|float|bool|str)\b", bygroups(Punctuation, Whitespace, Keyword.Type)),
            # calls, written as `specc fmt` writes them (`group blocks (lr=0.1)` is none)
            (rf"(?<=\.)({NAME})(?=\()", Name.Function),  # a method: x.view(...)
            (r"\b[A-Z][A-Za-z0-9_]*(?=\()", Name.Class),  # a layer: Conv2d(...)
            (r"\b[a-z_][A-Za-z0-9_]*(?=\()", Name.Function),  # relu(...), repeat(...)
            (NAME, Name),
            (r"->|\*\*|//|==|!=|<=|>=|[-+*/%@<>=]", Operator),
            (r"[{}()\[\],:;.]", Punctuation),
        ],
    }
