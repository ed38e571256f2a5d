"""Sampling from a language model: nanoGPT's loop, checked settings, a seeded generator."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from specc.errors import UsageError
from specc.training.sample import SampleSettings, generate


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
