"""Sampling from a language model: nanoGPT's loop, checked settings, a seeded generator."""

from __future__ import annotations

import re

import pytest
import torch
from conftest import CASES, SPECS
from torch import nn

import specc
from specc.cli import main
from specc.errors import UsageError
from specc.training import checkpoint
from specc.training.build import build_model
from specc.training.plan import LanguageModel
from specc.training.sample import SampleSettings, generate, sampling_model


class Bigram(nn.Module):
    """Logits from the last token only; refuses a context longer than its block."""

    def __init__(self, vocab: int = 7, block_size: int = 4) -> None:
        super().__init__()
        self.table = nn.Embedding(vocab, vocab)
        self.block_size = block_size

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        assert idx.size(1) <= self.block_size, "context not cropped"
        return self.table(idx)


def test_generate_crops_the_context_and_streams_each_token():
    torch.manual_seed(0)
    model = Bigram()
    seen: list[int] = []
    out = generate(model, torch.tensor([[1, 2]]), 4, SampleSettings(10, seed=3), seen.append)
    assert out.shape == (1, 12)
    assert out[0, 2:].tolist() == seen


def test_same_seed_same_text_and_the_global_rng_untouched():
    torch.manual_seed(0)
    model = Bigram()
    state = torch.get_rng_state()
    a = generate(model, torch.tensor([[0]]), 4, SampleSettings(20, seed=5))
    b = generate(model, torch.tensor([[0]]), 4, SampleSettings(20, seed=5))
    assert torch.equal(a, b)
    assert torch.equal(torch.get_rng_state(), state)


def test_top_k_one_is_greedy():
    torch.manual_seed(0)
    model = Bigram()
    out = generate(model, torch.tensor([[0]]), 4, SampleSettings(6, temperature=0.7, top_k=1))
    for prev, nxt in zip(out[0, :-1].tolist(), out[0, 1:].tolist(), strict=True):
        assert nxt == int(model.table.weight[prev].argmax())


@pytest.mark.parametrize(
    ("settings", "flag"),
    [
        (SampleSettings(max_new_tokens=-1), "--max-new-tokens"),
        (SampleSettings(temperature=0.0), "--temperature"),
        (SampleSettings(top_k=0), "--top-k"),
        (SampleSettings(seed=-2), "--seed"),
    ],
)
def test_bad_settings_are_usage_errors(settings, flag):
    with pytest.raises(UsageError) as exc:
        settings.check()
    assert exc.value.message.startswith(flag)


BIGRAM = """
model Bigram(vocab_size: int, block_size: int = 8) {
    table = Embedding(vocab_size, vocab_size)
    forward(idx: [block_size] long) {
        return table(idx)                      # (B, T, vocab) logits
    }
}
data docs {
    train      = PythonDocs(block_size=8)
    batch_size = 4
}
train {
    model     = Bigram(vocab_size = data.vocab_size)
    data      = docs
    loss      = CrossEntropyLoss()
    optimizer = SGD(lr=0.1)
}
"""


@pytest.fixture
def bigram(tmp_path):
    """A spec trained on PythonDocs' characters and a checkpoint of its (untrained) model."""
    spec = tmp_path / "bigram.spec"
    spec.write_text(BIGRAM)
    torch.manual_seed(0)
    program = specc.load(spec)
    state = build_model(program, specc.train_plan(program)).state_dict()
    checkpoint.save({"model": state}, tmp_path / "ckpt.pt")
    return spec, tmp_path / "ckpt.pt"


def test_sample_streams_the_prompt_and_its_continuation(bigram, capsys):
    spec, ckpt = bigram
    assert main(["sample", str(spec), "--ckpt", str(ckpt), "--prompt", "The ",
                 "--max-new-tokens", "30", "--seed", "1"]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("The ") and out.endswith("\n")
    again = specc.sample(spec, ckpt, "The ", max_new_tokens=30, seed=1)
    assert out == again + "\n"  # the stream is the text, token by token
    assert len(again) == 34  # characters: one token each


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--prompt", "snow ☃"], "character '☃' (at position 5) is not in the vocabulary"),
        (["--prompt", ""], "the prompt is empty"),
        (["--temperature", "0"], "--temperature must be a number > 0"),
    ],
)
def test_sample_mistakes_are_clear_errors(bigram, capsys, args, message):
    spec, ckpt = bigram
    assert main(["sample", str(spec), "--ckpt", str(ckpt), *args]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_sample_needs_a_checkpoint_that_fits(bigram, tmp_path, capsys):
    spec, _ = bigram
    checkpoint.save({"model": {"table.weight": torch.zeros(3, 3)}}, tmp_path / "other.pt")
    assert main(["sample", str(spec), "--ckpt", str(tmp_path / "other.pt")]) == 2
    assert "does not fit model `Bigram`" in capsys.readouterr().err


def test_the_plan_holds_the_language_model(bigram):
    spec, _ = bigram
    assert specc.train_plan(specc.load(spec)).language_model == LanguageModel("Bigram", 8)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (SPECS / "digits.spec", "needs a language model: `DigitsNet` must take token ids"),
        # token ids in, logits out, but no tokenizer: trained on a tensor file
        (CASES / "compile" / "case_lm.spec", "needs the tokenizer of a text dataset, and the "
         "train set is `TensorFile`"),
    ],
)  # fmt: skip
def test_sample_needs_a_model_trained_on_text(spec, message, tmp_path):
    with pytest.raises(UsageError, match=re.escape(message)):
        specc.sample(spec, tmp_path / "none.pt")


HEAD_SPEC = """
model Head(vocab: int = 11, dim: int = 8) {{
    wte  = Embedding(vocab, dim)
    norm = LayerNorm(dim)
    head = Linear(dim, vocab)
    forward(idx: [6] long) {{
{body}
    }}
}}
data docs {{
    train      = PythonDocs(block_size=6)
    batch_size = 2
}}
train {{
    model     = Head(vocab=data.vocab_size)
    data      = docs
    loss      = CrossEntropyLoss()
    optimizer = SGD(lr=0.1)
}}
"""


@pytest.mark.parametrize(
    ("body", "cut"),
    [
        ("        return head(norm(wte(idx)))", "norm"),  # the norm is per position too
        ("        x = norm(wte(idx))\n        y = x * 2\n        return head(x)", "head"),
        ("        return head(norm(wte(idx)) + wte(idx))", "head"),
        ("        return head(wte(idx)).tanh()", None),  # not a layer's output: kept whole
    ],
    ids=["norm_and_head", "norm_read_twice", "sum_into_head", "method_last"],
)
def test_sampling_computes_only_the_last_positions_logits(body, cut, tmp_path):
    """What `specc sample` runs gives forward's last-position logits, computing the layers
    that end forward at that position only, as nanoGPT's forward does, and shares the
    model's parameters; a forward ending otherwise is sampled whole."""
    spec = tmp_path / "head.spec"
    spec.write_text(HEAD_SPEC.format(body=body), "utf-8")
    program = specc.load(spec)
    plan = specc.train_plan(program)
    model = build_model(program, plan).eval()
    sampler = sampling_model(model, plan)
    if cut is None:
        assert sampler is model
        return
    calls = []
    getattr(model, cut).register_forward_pre_hook(lambda m, a: calls.append(a[0].shape))
    idx = torch.randint(0, plan.model.args["vocab"], (3, 6))
    with torch.no_grad():
        full, last = model(idx), sampler(idx)
    assert last.shape == (3, 1, full.shape[-1])
    torch.testing.assert_close(last[:, -1], full[:, -1])
    assert calls == [(3, 6, 8), (3, 1, 8)]  # forward's, then the sampler's: one position
    assert dict(sampler.named_parameters()).keys() <= dict(model.named_parameters()).keys()
    assert all(p is model.get_parameter(n) for n, p in sampler.named_parameters())


def test_sampling_the_shipped_language_models_reads_the_last_position_only():
    program = specc.load(SPECS / "gpt.spec")
    plan = specc.train_plan(program)
    model = build_model(program, plan).eval()
    sampler = sampling_model(model, plan)
    idx = torch.randint(0, plan.model.args["vocab_size"], (2, 9))
    with torch.no_grad():
        torch.testing.assert_close(sampler(idx)[:, -1], model(idx)[:, -1])
    assert sampler(idx).shape[1] == 1


def test_a_model_that_is_not_a_language_model_is_sampled_as_it_is():
    """`[B, classes]` logits have no positions: nothing to cut."""
    program = specc.load(SPECS / "digits.spec")
    plan = specc.train_plan(program)
    model = build_model(program, plan)
    assert sampling_model(model, plan) is model
