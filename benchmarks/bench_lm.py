"""Section 6, language models: `specs/gpt.spec` against nanoGPT written by hand.

- Training: `specc run specs/gpt.spec --set max_steps=N` in this process (quiet) against
  nanoGPT's loop (`benchmarks/nanogpt.py`: its model, `get_batch`, AdamW groups, gradient
  clipping) on the same model sizes, dropout, optimizer settings, batch and text (CPython's
  reference topics, character-level). Each variant runs 40 and 10 steps per round: the
  target row is the step rate, 30 steps over the difference of the two runs' seconds (each
  run's fixed start-up and end cancel: what "training tokens/s" means in nanoGPT's own
  log), and the 40-step run's end-to-end rate, from reading the text to the last
  checkpoint, is reported beside it. Variants alternate round by round.
- Sampling: specc's sampler (`specc.training.sample.generate` on the module specc builds,
  its head at the last position only, as `specc sample` runs it) against nanoGPT's
  `generate`, the same weights in both, 200 new tokens from a one-token prompt (the
  context grows to block_size, then is cropped).
- LoRA: `specc run specs/gpt_lora.spec --set max_steps=N` (r=8 beside every attention and
  MLP Linear, the base frozen) against the same model with LoRA written by hand
  (`nanogpt.add_lora`) in nanoGPT's loop, on the same text (stdlib source, the docs'
  characters), measured as training is. The base is a fresh GPT saved where the spec
  reads it (`runs/gpt/`).
- Checking the 124M GPT-2 config (`specs/gpt2.spec`'s defaults) in a fresh process,
  beyond `import torch`.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import nanogpt
from benchmarks.report import INFO, PASS, Context, Row, ratio_row, verdict
from benchmarks.timing import Background, Spread, paired, ratio

SECTION = "lm"
BATCH, BLOCK = 32, 128  # specs/gpt.spec's
SIZES = {"n_layer": 4, "n_head": 4, "n_embd": 128, "dropout": 0.1}
TOKENS = BATCH * BLOCK  # a step's
LONG, SHORT = 40, 10  # steps of the two runs whose difference times a step


class SpeccTrain:
    """`specc run specs/gpt.spec --set max_steps=N` in this process; seconds end to end."""

    def __init__(self, ctx: Context) -> None:
        self.ctx, self.count = ctx, 0

    def __call__(self, steps: int) -> float:
        import specc
        from specc.training.runner import run

        self.count += 1
        start = time.perf_counter()
        summary = run(specc.load(self.ctx.repo / "specs" / "gpt.spec"),
                      [f"max_steps={steps}", "log_every=1000"], runs_dir=self.ctx.tmp / "lm",
                      name=f"gpt{self.count}", quiet=True)  # fmt: skip
        assert summary["steps"] == steps, summary
        return time.perf_counter() - start


class SpeccLoRA:
    """`specc run specs/gpt_lora.spec --set max_steps=N` in this process, from a folder
    holding the base run's files; seconds end to end."""

    def __init__(self, ctx: Context) -> None:
        import specc
        from specc.training import text
        from specc.training.build import build_model
        from specc.training.plan import resolve

        self.ctx, self.count = ctx, 0
        self.folder = ctx.tmp / "lora_base"
        base = self.folder / "runs" / "gpt"
        base.mkdir(parents=True, exist_ok=True)
        text.write_tokenizer(text.char_tokens(text.python_docs_text()), "char", base)
        program = specc.load(ctx.repo / "specs" / "gpt.spec")
        torch.save(build_model(program, resolve(program)).state_dict(), base / "best.pt")

    def __call__(self, steps: int) -> float:
        import specc
        from specc.training.runner import run

        self.count += 1
        start = time.perf_counter()
        with contextlib.chdir(self.folder):  # the spec reads runs/gpt/ from here
            summary = run(specc.load(self.ctx.repo / "specs" / "gpt_lora.spec"),
                          [f"max_steps={steps}", "log_every=1000"], runs_dir="lm",
                          name=f"lora{self.count}", quiet=True)  # fmt: skip
        assert summary["steps"] == steps, summary
        return time.perf_counter() - start


def nanogpt_lora(steps: int) -> float:
    """The same LoRA fine-tune by hand: nanoGPT's model and loop, `nanogpt.add_lora`, the
    adapters' AdamW alone; seconds end to end."""
    from specc.training.text import python_docs_text, python_source_text

    start = time.perf_counter()
    chars = sorted(set(python_docs_text()))  # the base model's vocabulary
    stoi = {c: i for i, c in enumerate(chars)}
    text = python_source_text()
    data = np.array([stoi[c] for c in text], dtype=np.uint16)[: int(0.9 * len(text))]
    model = nanogpt.GPT(len(chars), BLOCK, **SIZES)
    params = nanogpt.add_lora(model, ("c_attn", "c_proj", "c_fc"), r=8, alpha=16, dropout=0.05)
    optimizer = torch.optim.AdamW(params, lr=3e-3)
    model.train()
    for it in range(steps):
        x, y = nanogpt.get_batch(data, BLOCK, BATCH)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % 50 == 0:
            loss.item()
    return time.perf_counter() - start


def nanogpt_train(steps: int) -> float:
    """nanoGPT's train.py loop (no lr schedule, as the spec has none); seconds end to end."""
    from pydoc_data.topics import topics

    start = time.perf_counter()
    data, vocab = nanogpt.char_ids("".join(topics.values()))
    train_data = data[: int(0.9 * len(data))]
    model = nanogpt.GPT(vocab, BLOCK, **SIZES)
    optimizer = model.configure_optimizers(0.1, 1e-3, (0.9, 0.99))
    model.train()
    for it in range(steps):
        x, y = nanogpt.get_batch(train_data, BLOCK, BATCH)
        _, loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if it % 50 == 0:
            loss.item()
    return time.perf_counter() - start


def optimizer_state_bytes(last: Path) -> int:
    """Bytes of the optimizer's per-parameter state tensors (AdamW's moments) in a run's
    last.pt."""
    from specc.training import checkpoint

    state = checkpoint.load(last)["optimizer"]["state"]
    return sum(t.numel() * t.element_size() for s in state.values() for t in s.values()
               if isinstance(t, torch.Tensor) and t.dim() > 0)  # fmt: skip


def optimizer_row(ctx: Context, full: SpeccTrain, lora: SpeccLoRA) -> Row:
    """The LoRA run's optimizer state against full training's, beside the trainable
    fraction the plan gives (issue 16: it should fall by that fraction)."""
    import specc
    from specc.training.plan import resolve

    full_bytes = optimizer_state_bytes(ctx.tmp / "lm" / f"gpt{full.count}" / "last.pt")
    lora_bytes = optimizer_state_bytes(lora.folder / "lm" / f"lora{lora.count}" / "last.pt")
    with contextlib.chdir(lora.folder):
        plan = resolve(specc.load(ctx.repo / "specs" / "gpt_lora.spec")).lora
    fraction = plan.trainable / plan.total
    return Row(
        SECTION,
        "optimizer state, specs/gpt_lora.spec / full training of specs/gpt.spec (AdamW "
        "moments, from each run's last.pt)",
        "reported: the trainable fraction",
        f"{lora_bytes:,} vs {full_bytes:,} bytes; trainable {plan.trainable:,} of "
        f"{plan.total:,} parameters ({fraction:.2%})",
        f"{lora_bytes / full_bytes:.4f}×",
        INFO,
    )


def _samplers(ctx: Context, new_tokens: int):
    """specc's sampler and nanoGPT's generate over the same weights."""
    import specc
    from specc.training.build import build_model
    from specc.training.plan import resolve
    from specc.training.sample import SampleSettings, generate, sampling_model

    program = specc.load(ctx.repo / "specs" / "gpt.spec")
    plan = resolve(program)
    built = build_model(program, plan).eval()
    ours = sampling_model(built, plan)  # what `specc sample` runs
    vocab = plan.model.args["vocab_size"]
    hand = nanogpt.GPT(vocab, BLOCK, **SIZES).eval()
    hand.load_state_dict(built.state_dict())
    settings = SampleSettings(max_new_tokens=new_tokens, temperature=0.8, top_k=20)
    prompt = torch.zeros(1, 1, dtype=torch.long)

    def specc_sample() -> float:
        start = time.perf_counter()
        generate(ours, prompt, BLOCK, settings)
        return new_tokens / (time.perf_counter() - start)

    def nanogpt_sample() -> float:
        start = time.perf_counter()
        hand.generate(prompt, new_tokens, temperature=0.8, top_k=20)
        return new_tokens / (time.perf_counter() - start)

    return specc_sample, nanogpt_sample


CHECK_124M = (
    "import time, torch; t = time.perf_counter(); import specc; "
    "inst = specc.check({spec!r}); "
    "print(__import__('json').dumps([time.perf_counter() - t, inst.params]))"
)


def cold_check_124m(ctx: Context, rounds: int) -> tuple[Spread, int]:
    """Seconds to import specc and check specs/gpt2.spec's 124M GPT in a fresh process
    that has imported torch already."""
    code = CHECK_124M.format(spec=str(ctx.repo / "specs" / "gpt2.spec"))
    times, params = [], 0
    for _ in range(rounds):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True, cwd=ctx.repo).stdout  # fmt: skip
        seconds, params = json.loads(out.strip().splitlines()[-1])
        times.append(seconds)
    return Spread(tuple(times)), params


def _logged(ctx: Context, name: str, fn, unit: str, background: dict):
    def measure() -> float:
        meter = Background()
        rate = fn()
        bg = meter.cores()
        background.setdefault(name, []).append(bg or 0.0)
        ctx.log(f"    {name}: {rate:,.0f} {unit} (others used {bg or 0:.1f} cores)")
        return rate

    return measure


class Training:
    """One variant's training measurement per round: a run of `long` steps and one of
    `short`. Its value is the step rate, `long - short` steps over the difference in
    seconds (what a step costs, each run's fixed start-up and end cancelling); the long
    run's end-to-end rate is kept beside it."""

    def __init__(self, ctx: Context, name: str, seconds_for, background: dict,
                 steps: tuple[int, int]) -> None:  # fmt: skip
        self.ctx, self.name, self.seconds_for, self.background = ctx, name, seconds_for, background
        self.long, self.short = steps
        self.end_to_end: list[float] = []

    def __call__(self) -> float:
        meter = Background()
        long_s, short_s = self.seconds_for(self.long), self.seconds_for(self.short)
        cores = meter.cores() or 0.0
        self.background.setdefault(self.name, []).append(cores)
        step_rate = (self.long - self.short) * TOKENS / (long_s - short_s)
        self.end_to_end.append(self.long * TOKENS / long_s)
        self.ctx.log(f"    {self.name}: {step_rate:,.0f} tokens/s a step, "
                     f"{self.end_to_end[-1]:,.0f} end to end over {self.long} steps "
                     f"(others used {cores:.1f} cores)")  # fmt: skip
        return step_rate


def _training(ctx: Context, variants: dict, rounds: int, background: dict,
              steps: tuple[int, int]):  # fmt: skip
    """Paired step rates of the variants, and their end-to-end rates in the same rounds."""
    measures = {n: Training(ctx, n, f, background, steps) for n, f in variants.items()}
    if not ctx.quick:  # warm-up
        for f in variants.values():
            f(3)
    steps = paired(measures, rounds=rounds, warmup=0)
    return steps, {n: Spread(tuple(m.end_to_end)) for n, m in measures.items()}


def run(ctx: Context) -> list[Row]:
    rounds, new_tokens = (1, 20) if ctx.quick else (4, 200)
    long, short = steps = (4, 2) if ctx.quick else (LONG, SHORT)
    background: dict[str, list[float]] = {}
    ctx.log(f"  training, {long} and {short} steps of {BATCH}x{BLOCK} tokens")
    full_run, lora_run = SpeccTrain(ctx), SpeccLoRA(ctx)
    rates, rates_e2e = _training(ctx, {"specc run": full_run, "nanoGPT loop": nanogpt_train},
                                 rounds, background, steps)  # fmt: skip
    ctx.log(f"  LoRA fine-tuning, {long} and {short} steps")
    lora, lora_e2e = _training(ctx, {"specc run (lora)": lora_run,
                                     "hand LoRA loop": nanogpt_lora},
                               rounds, background, steps)  # fmt: skip
    optimizer = optimizer_row(ctx, full_run, lora_run)
    ctx.log(f"  sampling, {new_tokens} tokens")
    ours, hand = _samplers(ctx, new_tokens)
    samples = paired({"specc sample": _logged(ctx, "specc sample", ours, "tokens/s", background),
                      "nanoGPT generate": _logged(ctx, "nanoGPT generate", hand, "tokens/s",
                                                  background)},
                     rounds=rounds * 4, warmup=1)  # fmt: skip
    ctx.log("  checking the 124M config, cold")
    check, params = cold_check_124m(ctx, rounds=1 if ctx.quick else 3)

    def vs(table: dict[str, Spread], a: str, b: str) -> str:
        loads = background.get(a, []) + background.get(b, [])
        return (f"{table[a].fmt(0)} vs {table[b].fmt(0)} tokens/s; others used ≤ "
                f"{max(loads):.1f} cores")  # fmt: skip

    def reported(name: str, table: dict[str, Spread], a: str, b: str) -> Row:
        return Row(SECTION, name, "reported", vs(table, a, b),
                   ratio(table[a], table[b]).fmt(3) + "×", INFO)  # fmt: skip

    train_what = f"CPU, batch {BATCH}x{BLOCK}"
    lora_what = f"CPU, r=8 on attention and MLP, batch {BATCH}x{BLOCK}"
    return [
        ratio_row(
            SECTION,
            f"specc run specs/gpt.spec / nanoGPT's loop, training tokens/s a step "
            f"({train_what}; runs of {long} and {short} steps, their difference)",
            ratio(rates["specc run"], rates["nanoGPT loop"]),
            ">=",
            1.0,
            vs(rates, "specc run", "nanoGPT loop"),
        ),  # fmt: skip
        reported(
            f"specc run specs/gpt.spec / nanoGPT's loop, tokens/s end to end "
            f"({train_what}, {long} steps: reading the text, the plan, checks, checkpoints)",
            rates_e2e,
            "specc run",
            "nanoGPT loop",
        ),  # fmt: skip
        ratio_row(
            SECTION,
            f"specc run specs/gpt_lora.spec / LoRA by hand in nanoGPT's loop, training "
            f"tokens/s a step ({lora_what}; runs of {long} and {short} steps)",
            ratio(lora["specc run (lora)"], lora["hand LoRA loop"]),
            ">=",
            1.0,
            vs(lora, "specc run (lora)", "hand LoRA loop"),
        ),  # fmt: skip
        reported(
            f"specc run specs/gpt_lora.spec / LoRA by hand, tokens/s end to end "
            f"({lora_what}, {long} steps)",
            lora_e2e,
            "specc run (lora)",
            "hand LoRA loop",
        ),  # fmt: skip
        optimizer,
        ratio_row(
            SECTION,
            f"specc sample / nanoGPT's generate, tokens/s ({new_tokens} new "
            "tokens, top-k 20, same weights)",
            ratio(samples["specc sample"], samples["nanoGPT generate"]),
            ">=",
            1.0,
            vs(samples, "specc sample", "nanoGPT generate"),
        ),  # fmt: skip
        Row(
            SECTION,
            f"check the 124M GPT-2 config ({params:,} parameters), beyond import "
            "torch (cold: specc import + check)",
            "< 1 s",
            f"{check.fmt(2)} s",
            "",
            verdict(check.median, "<", 1.0),
        ),  # fmt: skip
        Row(
            SECTION,
            "GPU rows (bf16 autocast, flash SDPA, fused AdamW, torch.compile, MFU)",
            "on a GPU",
            "no GPU on this machine",
            "",
            INFO if not torch.cuda.is_available() else PASS,
        ),  # fmt: skip
    ]
