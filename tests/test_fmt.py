"""`specc fmt` (specc/lang/fmt.py): black's two checks, on every spec we have.

- Case files: tests/cases/fmt/NAME.spec formatted is tests/cases/fmt/NAME.expected.spec
  (`--update-goldens` rewrites them).
- Formatting twice changes nothing, the IR is the input's (spans aside) and every comment
  is kept in order, over the shipped specs, every test case that parses, the same files
  roughed up (comments between tokens, spacing and line breaks changed at random), and
  specs generated from the grammar (tests/fuzz_grammar.py).
- The shipped specs are the style reference: they are fixed points.
"""

from __future__ import annotations

import io
import os
import random
from pathlib import Path

import pytest
from conftest import CASES, SPECS
from fuzz_grammar import specs
from hypothesis import HealthCheck, given, settings

import specc
from specc import format_text
from specc.cli import main
from specc.errors import SpecError
from specc.lang.fmt import _flatten, comments, format_files
from specc.lang.parse import parse, token_parser
from specc.lang.transform import transform

SHIPPED = sorted(SPECS.rglob("*.spec"))
FMT_CASES = sorted(p for p in (CASES / "fmt").glob("*.spec") if ".expected" not in p.name)
ALL_CASES = sorted(CASES.rglob("*.spec"))


def _parses(path: Path) -> bool:
    try:
        parse(path.read_text("utf-8"), path.name)
    except SpecError:
        return False
    return True


PARSING = [p for p in SHIPPED + ALL_CASES if _parses(p)]


def _ids(paths: list[Path]) -> list[str]:
    return [str(p.relative_to(SPECS.parent)) for p in paths]


def _strip_spans(value):
    if isinstance(value, dict):
        return {k: _strip_spans(v) for k, v in value.items() if not k.endswith("span")}
    if isinstance(value, list):
        return [_strip_spans(v) for v in value]
    return value


def ir(text: str):
    """The spec's IR (before name resolution) as JSON data without spans; None if the
    text parses but is not a valid program."""
    try:
        parts = transform(parse(text, "x.spec"), "x.spec", text)
    except SpecError:
        return None
    return _strip_spans({k: [n.model_dump(mode="json") for n in v] for k, v in parts.items()})


def check_formatting(text: str) -> str:
    out = format_text(text)
    assert format_text(out) == out, "formatting twice changed the text"
    assert ir(out) == ir(text), "formatting changed the IR"
    assert comments(out) == comments(text), "a comment was lost or moved"
    assert all(line == line.rstrip() for line in out.split("\n"))
    return out


@pytest.mark.parametrize("path", SHIPPED, ids=_ids(SHIPPED))
def test_shipped_specs_are_fixed_points(path: Path):
    text = path.read_text("utf-8")
    assert format_text(text) == text


@pytest.mark.parametrize("path", FMT_CASES, ids=[p.stem for p in FMT_CASES])
def test_case_files(path: Path, golden):
    out = check_formatting(path.read_text("utf-8"))
    golden(path.with_name(path.stem + ".expected.spec"), out)


@pytest.mark.parametrize("path", PARSING, ids=_ids(PARSING))
def test_idempotent_same_ir_comments_kept(path: Path):
    check_formatting(path.read_text("utf-8"))


def rough_up(text: str, seed: int) -> str:
    """The same tokens with other whitespace: comments added between tokens, indentation
    and spaces changed, line breaks added and removed (never where a comment needs one)."""
    rng = random.Random(seed)
    toks, _ = _flatten(token_parser().parse(text))
    out, prev = [], 0
    for n, t in enumerate(toks):
        gap = text[prev : t.start]
        r = rng.random()
        if "#" not in gap:
            if r < 0.1:
                gap = rng.choice(["", " ", "   "]) if gap else ""
            elif r < 0.2:
                gap = rng.choice(["\n", "\n\n\n", "\n\t  "])
        if r > 0.93:
            gap += rng.choice([f"  # c{n}\n", f"\n# s{n}\n", f"\n\n    # s{n}\n\n"])
        elif "\n" in gap and r > 0.7:
            gap = gap.replace("\n", "\n" + " " * rng.randrange(9), 1)
        out += [gap, t.text]
        prev = t.end
    out.append(text[prev:])
    return "".join(out)


ROUGH = [p for p in PARSING if "errors" not in p.parts]


@pytest.mark.parametrize(("seed", "path"), list(enumerate(ROUGH)), ids=_ids(ROUGH))
def test_roughed_up_specs(seed: int, path: Path):
    rough = rough_up(path.read_text("utf-8"), seed)
    try:
        parse(rough, "x.spec")
    except SpecError:
        return  # two tokens glued into one (`1` `2` -> `12`): not a spec any more
    check_formatting(rough)


# 100 generated specs (about 5 s); SPECC_FMT_EXAMPLES=2000 for a longer look.
@settings(
    max_examples=int(os.environ.get("SPECC_FMT_EXAMPLES", "100")),
    derandomize=True,
    database=None,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(specs())
def test_generated_specs(text: str):
    try:
        check_formatting(text)
    except SpecError:
        pass  # not a spec that parses


# ---- a few rules, spelled out --------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "after"),
    [
        ("model N{a=Linear(1,2) b2 = ReLU()}",
         "model N {\n    a  = Linear(1, 2)\n    b2 = ReLU()\n}\n"),
        ("model N(k:int=3,j=2) {}", "model N(k: int = 3, j=2) {}\n"),
        ("data d {train=Digits(train = True, x = 1)}",
         "data d {\n    train = Digits(train = True, x = 1)\n}\n"),
        ("model N {forward(x:[B,3]long) {y=x[1:n+1, ::2] return -y ** 2}}",
         "model N {\n    forward(x: [B, 3] long) {\n        y = x[1 : n + 1, ::2]\n"
         "        return -y ** 2\n    }\n}\n"),
        ("model A {}\nmodel B {}", "model A {}\n\nmodel B {}\n"),
        ('import "a.spec"\nimport "b.spec"', 'import "a.spec"\nimport "b.spec"\n'),
        ("", ""),
        ("\n  # only a comment  \n\n", "# only a comment\n"),
        ("model N {}\n\n\n\n# the end", "model N {}\n\n# the end\n"),
        ("model N {\n\n    a = L()\n\n\n    b = L()\n\n}",
         "model N {\n    a = L()\n\n    b = L()\n}\n"),
        ("sequential S {Flatten(); -Linear(1, 2); ReLU();}",
         "sequential S {\n    Flatten();\n    -Linear(1, 2)\n    ReLU()\n}\n"),
    ],
)  # fmt: skip
def test_rules(before: str, after: str):
    assert check_formatting(before) == after


def test_trailing_comment_keeps_its_column_or_moves_right():
    text = "model N {\n    a = Linear(1, 2)        # here\n    bbbbbb = ReLU() # pushed\n}\n"
    assert format_text(text) == (
        "model N {\n    a      = Linear(1, 2)   # here\n    bbbbbb = ReLU()  # pushed\n}\n"
    )


def test_syntax_error_is_the_one_check_reports():
    text = "model N {\n    a = Linear(1 2)\n}\n"
    with pytest.raises(SpecError) as fmt_err:
        format_text(text, "<spec>")
    with pytest.raises(SpecError) as load_err:
        specc.load(text)
    assert fmt_err.value.render() == load_err.value.render()


def test_nesting_too_deep_is_the_one_check_reports():
    deep = "model N {\n    a = Linear(" + "f(" * 300 + "1" + ")" * 300 + ", 2)\n}\n"
    with pytest.raises(SpecError, match="nested more than 200 levels"):
        format_text(deep)
    parens = "model N {\n    a = Linear(" + "(" * 300 + "1" + ")" * 300 + ", 2)\n}\n"
    assert format_text(parens) == parens  # `(x)` is no level: as deep as `check` allows


# ---- the command ----------------------------------------------------------------------


def run(args: list[str], capsys) -> tuple[int, str, str]:
    code = main(args)
    got = capsys.readouterr()
    return code, got.out, got.err


def test_cli_formats_in_place_and_check_writes_nothing(tmp_path: Path, capsys):
    messy, tidy = tmp_path / "messy.spec", tmp_path / "tidy.spec"
    messy.write_text("model N{a=Linear(1,2)}\n")
    tidy.write_text("model N {\n    a = Linear(1, 2)\n}\n")
    code, _, err = run(["fmt", "--check", str(messy), str(tidy)], capsys)
    assert code == 1
    assert f"would reformat {messy}" in err and str(tidy) not in err
    assert messy.read_text() == "model N{a=Linear(1,2)}\n"
    code, _, err = run(["fmt", str(messy), str(tidy)], capsys)
    assert code == 0 and f"reformatted {messy}" in err
    assert messy.read_text() == tidy.read_text()
    assert run(["fmt", "--check", str(messy), str(tidy)], capsys)[0] == 0


def test_cli_syntax_error_as_check_and_file_untouched(tmp_path: Path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    bad = tmp_path / "bad.spec"
    bad.write_text("model N {\n    a = Linear(1 2)\n}\n")
    code, _, err = run(["fmt", "bad.spec"], capsys)
    assert code == 2
    with pytest.raises(SpecError) as load_err:  # what `specc check bad.spec` prints
        specc.load("bad.spec")
    assert err == load_err.value.render() + "\n"
    assert err.startswith("bad.spec:2:18: error: unexpected `2`")
    assert bad.read_text() == "model N {\n    a = Linear(1 2)\n}\n"


def test_cli_stdin(monkeypatch, capsys):
    monkeypatch.setattr("sys.stdin", io.StringIO("model N{a=Linear(1,2)}"))
    code, out, _ = run(["fmt", "-"], capsys)
    assert code == 0 and out == "model N {\n    a = Linear(1, 2)\n}\n"


def test_format_files_reports_each_file(tmp_path: Path):
    good, bad = tmp_path / "good.spec", tmp_path / "bad.spec"
    good.write_text("model N{}")
    bad.write_text("model {")
    err = io.StringIO()
    assert format_files([bad, good], err=err) == 2  # the bad one fails, the good one is done
    assert good.read_text() == "model N {}\n"
    assert "bad.spec:1:7: error: unexpected `{`" in err.getvalue()
