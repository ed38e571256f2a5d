"""Sampling text from a trained language model: nanoGPT's `generate` loop (crop the context
to the block size, scale the last position's logits by the temperature, keep the top k,
draw the next token), with the settings checked before anything runs and each new token
handed to a callback as it is drawn, so the CLI can stream it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from specc.errors import UsageError


@dataclass(frozen=True)
class SampleSettings:
    max_new_tokens: int = 200
    temperature: float = 1.0
    top_k: int | None = None
    seed: int = 0

    def check(self) -> None:
        """A clear usage error for a setting no sampler can use."""
        if not _int(self.max_new_tokens) or self.max_new_tokens < 0:
            raise UsageError(
                f"--max-new-tokens must be a whole number >= 0, got {self.max_new_tokens!r}"
            )
        if not isinstance(self.temperature, (int, float)) or not self.temperature > 0:
            raise UsageError(
                f"--temperature must be a number > 0, got {self.temperature!r}",
                hint="lower is more conservative (0.8 is common); 1.0 samples the model as is",
            )
        if self.top_k is not None and (not _int(self.top_k) or self.top_k < 1):
            raise UsageError(f"--top-k must be a whole number >= 1, got {self.top_k!r}")
        if not _int(self.seed) or not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be a whole number >= 0, got {self.seed!r}")


def _int(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@torch.no_grad()
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    block_size: int,
    settings: SampleSettings,
    on_token: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """`idx` `[B, T]` extended by `settings.max_new_tokens` tokens drawn from `model`, whose
    forward maps `[B, t]` token ids (t <= block_size) to `[B, t, V]` logits. The draws come
    from a generator seeded with `settings.seed` on idx's device, never the global RNG."""
    generator = torch.Generator(device=idx.device).manual_seed(settings.seed)
    for _ in range(settings.max_new_tokens):
        context = idx if idx.size(1) <= block_size else idx[:, -block_size:]
        logits = model(context)[:, -1, :] / settings.temperature
        if settings.top_k is not None:
            kth = torch.topk(logits, min(settings.top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        probs = F.softmax(logits.float(), dim=-1)
        next_id = torch.multinomial(probs, num_samples=1, generator=generator)
        idx = torch.cat((idx, next_id), dim=1)
        if on_token is not None:
            on_token(int(next_id[0, 0]))
    return idx
