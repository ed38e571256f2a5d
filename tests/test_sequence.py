"""Token models: a [B, T, V] output trained with CrossEntropyLoss per token, perplexity and
bits per token, tokens/s, and the loss, labels and token ids checked before training."""

from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from conftest import CASES
from datafiles import token_windows, write_token_windows

import specc
from specc.cli import main
from specc.errors import SpecTypeError
from specc.training.plan import ClassTargets
from specc.training.sequence import EvalSums

LM_SPEC = CASES / "compile" / "case_lm.spec"


@pytest.fixture(autouse=True)
def _in_tmp(in_tmp):
    """TensorFile paths are relative to the working directory."""


def _lm_copy(tmp_path, edits: dict[str, str] | None = None, **data) -> str:
    """case_lm.spec (with text edits) beside a tokens.pt of `token_windows` (with `data`
    replacing x or y)."""
    text = LM_SPEC.read_text("utf-8")
    for old, new in (edits or {}).items():
        assert old in text, old
        text = text.replace(old, new)
    spec = tmp_path / "lm.spec"
    spec.write_text(text, "utf-8")
    if data:
        x, y = token_windows()
        torch.save({"x": data.get("x", x), "y": data.get("y", y)}, tmp_path / "tokens.pt")
    else:
        write_token_windows(tmp_path)
    return str(spec)


def _run_error(spec: str, tmp_path, capsys, *extra: str) -> list[str]:
    """The error lines `specc run` prints (exit code 2, no traceback)."""
    assert main(["run", spec, "--runs-dir", str(tmp_path / "runs"), *extra]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "internal error" not in err, err
    return err.splitlines()


def test_token_model_trains_with_perplexity_and_tokens_per_second(tmp_path, capsys):
    spec = _lm_copy(tmp_path)
    assert main(["run", spec, "--runs-dir", str(tmp_path / "runs")]) == 0
    err = capsys.readouterr().err
    progress = [line for line in err.splitlines() if line.startswith("epoch 1  step")]
    assert progress and all(line.endswith(" tokens/s") for line in progress), err
    records = [json.loads(r) for r in (tmp_path / "runs" / "lm" / "metrics.jsonl").open()]
    steps = [r for r in records if "lr" in r]
    assert all("tokens_per_s" in r and "samples_per_s" not in r for r in steps)
    assert steps[-1]["loss"] < steps[0]["loss"] / 4  # the bigram rule is learnt
    epochs = [r for r in records if "val_loss" in r]
    assert len(epochs) == 7 and epochs[-1]["val_loss"] < epochs[0]["val_loss"]
    for r in epochs:
        assert r["val_perplexity"] == pytest.approx(math.exp(r["val_loss"]))
        assert r["val_bits_per_token"] == pytest.approx(r["val_loss"] / math.log(2))
    assert epochs[-1]["val_accuracy"] > 0.95


def test_token_metrics_count_tokens_and_leave_out_ignore_index():
    targets = ClassTargets(flatten_sequence=True, ignore_index=-1, plain=True)
    sums = EvalSums(("accuracy", "perplexity"), targets)
    y = torch.tensor([[1, 2, -1], [0, 0, 0]])
    out = torch.nn.functional.one_hot(torch.tensor([[1, 0, 0], [0, 0, 0]]), 3).float()
    sums.add(out, y, torch.tensor(2.0))  # 5 counted tokens, 4 right
    sums.add(out[:1], torch.full((1, 3), -1), torch.tensor(float("nan")))  # all ignored
    sums.add(out[1:], y[1:], torch.tensor(1.0))  # 3 tokens, all right
    result = sums.result()
    assert result["loss"] == pytest.approx((2.0 * 5 + 1.0 * 3) / 8)
    assert result["accuracy"] == pytest.approx(7 / 8)
    assert result["perplexity"] == pytest.approx(math.exp(result["loss"]))


def test_one_label_per_window_is_a_located_error_at_the_loss(tmp_path, capsys):
    x, _ = token_windows()
    spec = _lm_copy(tmp_path, y=x[:, -1])  # [B] labels for a [B, T, V] output
    lines = _run_error(spec, tmp_path, capsys)
    loss_line = LM_SPEC.read_text().splitlines().index(
        "    loss        = CrossEntropyLoss(ignore_index=-1)") + 1  # fmt: skip
    assert lines[0] == (
        f"{spec}:{loss_line}:19: error: loss `CrossEntropyLoss` cannot compare `Bigram`'s "
        "output [B, 8, 16] with the labels of `TensorFile` (train), [B] int64: it needs "
        "[B, 8] token ids (one target per position: the 16 scores of each position are its "
        "classes)"
    )
    assert lines[1:3] == [
        f" {loss_line} |     loss        = CrossEntropyLoss(ignore_index=-1)",
        "    |                   " + "^" * len("CrossEntropyLoss(ignore_index=-1)"),
    ]
    assert "label each position with its next token" in lines[-1]


def test_windows_of_another_length_are_a_located_error(tmp_path, capsys):
    _, y = token_windows()
    spec = _lm_copy(tmp_path, y=y[:, :7])
    lines = _run_error(spec, tmp_path, capsys)
    assert "the labels of `TensorFile` (train), [B, 7] int64: it needs [B, 8] token ids" in lines[0]


def test_token_id_beyond_the_embedding_is_a_data_error(tmp_path, capsys):
    x, _ = token_windows()
    x[:, 0] = 20
    spec = _lm_copy(tmp_path, x=x)
    lines = _run_error(spec, tmp_path, capsys)
    assert lines[0].endswith(
        "error: `TensorFile` (train) has token id 20 in its inputs, but `Bigram`'s Embedding "
        "`tok` has 16 entries (ids must be in [0, 16))"
    )
    assert 'TensorFile("tokens.pt")' in lines[1]
    assert "give `tok` at least 21 entries" in lines[-1]


def test_streamed_batches_are_checked_too(tmp_path, capsys):
    x, _ = token_windows()
    x[:, 0] = 20
    spec = _lm_copy(tmp_path, {"batch_size = 8": "batch_size = 8\n    in_memory  = False"}, x=x)
    lines = _run_error(spec, tmp_path, capsys)
    assert "has token id 20 in its inputs" in lines[0]


def test_label_beyond_the_vocabulary_is_a_data_error(tmp_path, capsys):
    _, y = token_windows()
    y[:, 0] = 16
    spec = _lm_copy(tmp_path, y=y)
    lines = _run_error(spec, tmp_path, capsys)
    assert lines[0].endswith(
        "error: `TensorFile` (train) has token id 16 in its labels, but `Bigram`'s output "
        "scores 16 tokens (ids must be in [0, 16))"
    )


@pytest.mark.parametrize(("loss", "message"), [
    ("MSELoss()", "metric `perplexity` needs a cross-entropy loss, not `MSELoss`"),
    ("CrossEntropyLoss(label_smoothing=0.1)", "metric `perplexity` is computed from the mean"),
])  # fmt: skip
def test_perplexity_needs_the_plain_cross_entropy(tmp_path, loss, message):
    spec = _lm_copy(tmp_path, {"CrossEntropyLoss(ignore_index=-1)": loss})
    with pytest.raises(SpecTypeError, match=message):
        specc.train(spec, runs_dir=tmp_path / "runs", quiet=True)


def test_perplexity_ranks_lower_is_better():
    plan_of = specc.training.plan.resolve
    plan = plan_of(specc.load(LM_SPEC))
    assert plan.best_metric == "perplexity" and not plan.higher_is_better
    assert plan.loss.targets == ClassTargets(flatten_sequence=True, ignore_index=-1, plain=True)


def test_generated_script_scores_tokens(tmp_path):
    spec = _lm_copy(tmp_path)
    shutil.copy(LM_SPEC, tmp_path / "case_lm.spec")
    source = specc.compile(spec, train=True)
    assert "loss = loss_fn(outputs.flatten(0, -2), labels.flatten())" in source
    assert "math.exp(total_loss / total)" in source


def test_window_labels_for_one_score_row_per_sample_are_a_located_error(tmp_path, capsys):
    spec = _lm_copy(tmp_path, {"return out(x)": "return out(x).mean(1)"})  # [B, 16] output
    lines = _run_error(spec, tmp_path, capsys)
    assert lines[0].endswith(
        "error: loss `CrossEntropyLoss` cannot compare `Bigram`'s output [B, 16] with the "
        "labels of `TensorFile` (train), [B, 8] int64: it needs [B] integer class indices or "
        "[B, 16] float class probabilities"
    )


def test_check_finds_the_loss_misfit_before_any_run(tmp_path, capsys):
    x, _ = token_windows()
    spec = _lm_copy(tmp_path, y=x[:, -1])
    assert main(["check", spec]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "loss `CrossEntropyLoss` cannot compare `Bigram`'s output [B, 8, 16] with the " \
        "labels of `TensorFile` (train), [B] int64" in err.splitlines()[0]  # fmt: skip
    assert not (tmp_path / "runs").exists()


def test_check_shows_output_loss_and_labels(tmp_path, capsys):
    spec = _lm_copy(tmp_path)
    assert main(["check", spec]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[-2:] == [
        "train: output [B, 8, 16] -> CrossEntropyLoss (per token) <- labels [B, 8] int64",
        "ok",
    ]
