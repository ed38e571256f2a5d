"""Several mistakes in one spec, as a user meets them: `specc check` reports each
independent one (capped), in source order, once; the language server underlines the same
set. The renderings themselves are golden files in tests/cases/errors/."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import CASES

from specc.cli import main
from specc.errors import MAX_ERRORS
from specc.lsp.analysis import analyze

ERRORS = CASES / "errors"
HEADER = re.compile(r"^(?P<file>[^\s:]+):(?P<line>\d+):(?P<col>\d+): error: (?P<message>.*)$")


def _check(spec: Path, capsys, monkeypatch) -> tuple[int, str, list[tuple[int, int, str]]]:
    """`specc check` on `spec`: the exit code, stdout, and each error's line, column and
    message, as printed."""
    monkeypatch.chdir(spec.parent)
    code = main(["check", spec.name])
    out, err = capsys.readouterr()
    found = [m for line in err.splitlines() if (m := HEADER.match(line))]
    return code, out, [(int(m["line"]), int(m["col"]), m["message"]) for m in found]


def _underlined(spec: Path) -> list[tuple[int, int, str]]:
    """The errors the language server finds in `spec`, as (line, column, message)."""
    result = analyze(spec.read_text(), spec)
    return [
        (f.location.line, f.location.column, f.message)
        for f in result.findings
        if f.severity == "error" and f.location is not None
    ]


def test_independent_mistakes_are_all_reported_in_source_order(capsys, monkeypatch):
    code, _out, errors = _check(ERRORS / "independent_mistakes.spec", capsys, monkeypatch)
    assert code == 2
    messages = [m for _, _, m in errors]
    assert len(errors) == 3, errors
    assert "unknown layer type `Conv2D`" in messages[0]  # model Encoder
    assert "expects 16 input features but receives 32" in messages[1]  # model Wide
    assert messages[2].startswith("train: `epochs`")  # the train block
    assert errors == sorted(errors)


def test_every_bad_setting_of_a_train_block_and_its_data(capsys, monkeypatch):
    code, out, errors = _check(ERRORS / "train_settings.spec", capsys, monkeypatch)
    assert code == 2
    assert [line for line, _, _ in errors] == [10, 11, 18, 19, 20]
    assert "unknown optimizer `Adamw`" in errors[2][2]
    assert "Net  (x: [B, 1, 8, 8])" in out  # the model checks, and its table is shown


def test_a_mistake_in_a_used_model_is_reported_once(capsys, monkeypatch):
    code, out, errors = _check(ERRORS / "used_model_mistake.spec", capsys, monkeypatch)
    assert code == 2
    assert [line for line, _, _ in errors] == [2, 17]  # in Block and in Head, once each
    assert "Tower: not checked: it uses `Block`, which has errors" in out
    assert "Right: not checked: it uses `Head`, which has errors" in out
    assert "Head: generic" not in out


def test_a_train_block_of_a_model_with_mistakes_still_checks_its_settings(
    tmp_path, capsys, monkeypatch
):
    text = (ERRORS / "independent_mistakes.spec").read_text().replace("Net()", "Wide()")
    spec = tmp_path / "spec.spec"
    spec.write_text(text)
    code, out, errors = _check(spec, capsys, monkeypatch)
    assert code == 2
    assert [line for line, _, _ in errors] == [2, 10, 32]  # no second report of Wide's
    assert "train: not checked: it uses `Wide`, which has errors" in out
    # what needs no model is still checked: an unknown loss, optimizer and scheduler
    text = text.replace("AdamW(", "Adamw(").replace('epochs    = "x"', "scheduler = StepLr(2)")
    text = text.replace("CrossEntropyLoss()", "CrossEntropyLos()")
    spec.write_text(text)
    code, out, errors = _check(spec, capsys, monkeypatch)
    assert code == 2
    messages = [m for _, _, m in errors]
    assert "unknown loss `CrossEntropyLos`" in messages
    assert "unknown optimizer `Adamw`" in messages and "unknown scheduler `StepLr`" in messages


VOCAB_LOSS = """\
import torch
from torch import nn
from torch.nn import functional as F


class VocabLoss(nn.Module):
    def __init__(self, vocab):
        super().__init__()
        self.register_buffer("weight", torch.ones(vocab))  # needs the number itself

    def forward(self, logits, targets):
        return F.cross_entropy(logits.flatten(0, -2), targets.flatten(), weight=self.weight)
"""
DATA_SIZED_LOSS = """\
plugin "vocab_loss.py"
model Tiny(vocab: int = 11) {
    wte  = Embedding(vocab, 8)
    head = Linear(8, vocab)
    forward(idx: [6] long) {
        return head(wte(idx))
    }
}
data docs {
    train      = PythonDocs(block_size=6)
    batch_size = 2
}
train {
    model     = Tiny(vocab=data.vocab_size)
    data      = docs
    loss      = VocabLoss(vocab=data.vocab_size)
    optimizer = SGD(lr=0.1)
}
"""


def test_a_loss_sized_by_the_data_is_no_error_beside_a_model_mistake(tmp_path, capsys, monkeypatch):
    """Without the model, `data.vocab_size` is not known yet: the loss's class and
    arguments are checked, and no instance is built from a placeholder."""
    (tmp_path / "vocab_loss.py").write_text(VOCAB_LOSS)
    spec = tmp_path / "sized.spec"
    spec.write_text(DATA_SIZED_LOSS)
    code, out, errors = _check(spec, capsys, monkeypatch)
    assert (code, errors) == (0, []) and "VocabLoss" in out
    spec.write_text(DATA_SIZED_LOSS.replace("Linear(8, vocab)", "Linear(9, vocab)"))
    code, out, errors = _check(spec, capsys, monkeypatch)
    assert code == 2 and [line for line, _, _ in errors] == [4]  # the Linear's alone
    misnamed = "VocabLoss(size=data.vocab_size)"
    spec.write_text(spec.read_text().replace("VocabLoss(vocab=data.vocab_size)", misnamed))
    code, out, errors = _check(spec, capsys, monkeypatch)
    assert "bad arguments for loss `VocabLoss`" in [m.split(":")[0] for _, _, m in errors]


def test_the_count_is_capped(tmp_path, capsys, monkeypatch):
    models = [
        f"model M{i} {{\n    fc = Lineer(4, 2)\n    forward(x: [4]) {{\n"
        "        return fc(x)\n    }\n}\n"
        for i in range(MAX_ERRORS + 5)
    ]
    spec = tmp_path / "many.spec"
    spec.write_text("\n".join(models))
    code, _out, errors = _check(spec, capsys, monkeypatch)
    assert code == 2
    assert len(errors) == MAX_ERRORS
    assert all("unknown layer type `Lineer`" in m for _, _, m in errors)
    assert len(_underlined(spec)) == MAX_ERRORS


@pytest.mark.parametrize(
    "case", ["independent_mistakes", "train_settings", "used_model_mistake", "unknown_names"]
)
def test_the_editor_underlines_what_check_reports(case, capsys, monkeypatch):
    spec = ERRORS / f"{case}.spec"
    _code, _out, errors = _check(spec, capsys, monkeypatch)
    assert _underlined(spec) == errors


def test_a_name_that_differs_only_in_case_is_suggested(tmp_path, capsys, monkeypatch):
    spec = tmp_path / "case.spec"
    spec.write_text(
        "model Net {\n    fc = linear(4, 2)\n    forward(x: [4]) {\n        return fc(x)\n"
        "    }\n}\n"
    )
    monkeypatch.chdir(tmp_path)
    assert main(["check", spec.name]) == 2
    assert "hint: did you mean `Linear`?" in capsys.readouterr().err


def test_the_editor_rechecks_only_what_an_edit_changed(tmp_path, monkeypatch):
    """The language server gives each analysis the last one's memo: a model whose text (and
    its models' text) is as it was, at the same lines, is not checked again, and what the
    editor shows is what a check from scratch shows, after each kind of edit."""
    import specc.training.check as checking

    spec = tmp_path / "many.spec"
    original = (ERRORS / "independent_mistakes.spec").read_text()
    checked: list[str] = []
    real = checking.check_model

    def counted(program, name):
        checked.append(name)
        return real(program, name)

    monkeypatch.setattr(checking, "check_model", counted)
    memo = analyze(original, spec).memo
    broken = original.replace("Linear(16, 10)", "Linear(17, 10)")  # the shape error changes
    fixed = original.replace("Linear(16, 10)", "Linear(_, 10)")
    moved = "\n" + fixed  # every model one line lower: their spans change
    for text, rechecked in ((broken, 1), (fixed, 1), (fixed, 0), (moved, 2)):
        checked.clear()
        again = analyze(text, spec, memo)
        assert len(checked) == rechecked, (checked, text[:40])
        scratch = analyze(text, spec)
        assert again.findings == scratch.findings
        assert again.instances == scratch.instances
        memo = again.memo
