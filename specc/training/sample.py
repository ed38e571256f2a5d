"""Sampling text from a trained language model: nanoGPT's `generate` loop (crop the context
to the block size, scale the last position's logits by the temperature, keep the top k,
draw the next token), with the settings checked before anything runs and each new token
handed to a callback as it is drawn, so the CLI can stream it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import torch
import torch.nn.functional as F
from torch import nn

from specc import ir
from specc.builder import last_position_module
from specc.errors import DataError, SpecError, UsageError
from specc.lang.loader import source_texts
from specc.training import checkpoint
from specc.training.build import build_trained_model, pick_device
from specc.training.config import apply_overrides
from specc.training.data import text_tokens
from specc.training.plan import LanguageModel, TrainPlan, resolve, token_context
from specc.training.text import Tokens


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


@torch.inference_mode()  # no autograd bookkeeping at all: ~10% faster than no_grad
def generate(
    model: nn.Module,
    idx: torch.Tensor,
    block_size: int,
    settings: SampleSettings,
    on_token: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """`idx` `[B, T]` extended by `settings.max_new_tokens` tokens drawn from `model`, whose
    forward maps `[B, t]` token ids (t <= block_size) to `[B, t, V]` logits (or to the last
    position's, `[B, 1, V]`: see `sampling_model`). The draws come from a generator
    seeded with `settings.seed` on idx's device, never the global RNG.
    The `generate` method of generated code (templates/generate.py.j2) takes the same steps,
    so that both give the same tokens: change them together."""
    generator = torch.Generator(device=idx.device).manual_seed(settings.seed)
    temperature, top_k = settings.temperature, settings.top_k
    for _ in range(settings.max_new_tokens):
        context = idx[:, -block_size:]  # forward reads at most block_size tokens
        logits = model(context)[:, -1, :] / temperature
        if top_k is not None:
            kth = torch.topk(logits, min(top_k, logits.size(-1))).values[:, [-1]]
            logits = logits.masked_fill(logits < kth, -float("inf"))
        probs = F.softmax(logits.float(), dim=-1)
        next_id = torch.multinomial(probs, num_samples=1, generator=generator)
        idx = torch.cat((idx, next_id), dim=1)
        if on_token is not None:
            on_token(int(next_id[0, 0]))
    return idx


# ---- `specc sample`: a checkpoint of a spec trained on a text dataset -------------------


def sample_checkpoint(
    program: ir.Program,
    ckpt: Path,
    prompt: str,
    settings: SampleSettings,
    overrides: list[str] | None = None,
    stream: TextIO | None = None,
) -> str:
    """The prompt followed by the text the checkpoint's model writes; with `stream`, each
    piece is written there as it is drawn."""
    settings.check()
    texts = source_texts(program)
    try:
        plan = resolve(apply_overrides(program, overrides or []))
        block_size = _language_model(plan).block_size
        tokens = text_tokens(plan.data.train)
        ids = _prompt_ids(prompt, tokens, plan.data.train.name)
        device = pick_device(plan.device)
        model = sampling_model(_load_model(program, plan, ckpt).to(device).eval(), plan)
    except SpecError as err:
        raise err.with_source(texts) from None
    echo = _Echo(tokens.decode, ids, stream)
    idx = torch.tensor([ids], dtype=torch.long, device=device)
    out = generate(model, idx, block_size, settings, echo.token)
    echo.finish()
    return tokens.decode(out[0].tolist())


def sampling_model(model: nn.Module, plan: TrainPlan) -> nn.Module:
    """What `generate` runs: the trained `model` computing its vocabulary head at the last
    position only, where its forward allows (as nanoGPT's and the generated `generate`
    do); else the model itself."""
    return last_position_module(model, plan.model.instance) or model


def _language_model(plan: TrainPlan) -> LanguageModel:
    """The plan's language model, or a usage error saying why the model is not one."""
    if plan.language_model is not None:
        return plan.language_model
    inst = plan.model.instance
    if token_context(inst) is None:
        raise UsageError(
            f"`specc sample` needs a language model: `{inst.model}` must take token ids "
            "`[T] long` and return logits `[B, T, vocab]`",
            hint="a model whose logits are `[B, vocab, T]` can return `x.transpose(1, 2)`",
        )
    raise UsageError(
        f"`specc sample` needs the tokenizer of a text dataset, and the train set is "
        f"`{plan.data.train.name}`",
        hint="train on TextFile(...) or PythonDocs(...)",
    )


def _prompt_ids(prompt: str, tokens: Tokens, dataset: str) -> list[int]:
    if not prompt:
        raise UsageError("the prompt is empty", hint='give at least one character: --prompt "\\n"')
    try:
        ids = tokens.encode(prompt)
    except KeyError as exc:
        char = exc.args[0]
        raise DataError(
            f"the prompt's character {char!r} (at position {prompt.index(char)}) is not in "
            f"the vocabulary of `{dataset}` ({tokens.vocab_size} tokens)",
            hint="the model can only continue text made of the characters it was trained on",
        ) from None
    if not ids:
        raise DataError(f"the tokenizer of `{dataset}` gives no tokens for the prompt")
    return ids


def _load_model(program: ir.Program, plan: TrainPlan, ckpt: Path) -> nn.Module:
    model = build_trained_model(program, plan)
    checkpoint.load_into(model, ckpt, plan.model.call.name)
    return model


class _Echo:
    """Writes the text as it grows: the prompt, then each token's new characters (decoding
    the whole sequence, so a character split over several byte tokens comes out whole)."""

    def __init__(self, decode: Callable[[list[int]], str], ids: list[int], out: TextIO | None):
        self.decode, self.ids, self.out = decode, list(ids), out
        self.shown = decode(self.ids)
        if out is not None:
            out.write(self.shown)
            out.flush()

    def token(self, token: int) -> None:
        self.ids.append(token)
        if self.out is None:
            return
        text = self.decode(self.ids)
        if text.startswith(self.shown) and not text.endswith("\ufffd"):  # a whole character
            self.out.write(text[len(self.shown) :])
            self.out.flush()
            self.shown = text

    def finish(self) -> None:
        if self.out is not None:
            text = self.decode(self.ids)
            self.out.write(text[len(self.shown) :] if text.startswith(self.shown) else "")
            self.out.write("\n")
            self.out.flush()
