"""Section 1, module overhead: one training step, interpreted vs generated vs hand-written.

A step is zero_grad + forward + loss + backward + optimizer step on a fixed batch. The
variants start from the same weights (the hand-written model's state_dict) and run
interleaved step by step in rounds of about 0.1 s per variant; every round gives one
ratio per variant against the hand-written one. A second hand-written instance runs
alongside as an A/A control, so the table shows the noise floor of its ratios. The aten
ops of one step are counted with torch.profiler. Under ``torch.compile`` (static shapes,
one compile per variant and batch size) the first step's extra time is reported as the
compile cost and the steady-state step is compared with eager.
"""

from __future__ import annotations

import collections
import contextlib
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks import models
from benchmarks.report import FAIL, INFO, NA, PASS, SKIPPED, Context, Row, ratio_row
from benchmarks.timing import Background, Spread, calls_for, ratio

SECTION = "modules"
LIMITS = {"interpreted": 1.03, "generated": 1.01}  # step time vs hand-written, at most


@dataclass(frozen=True)
class Case:
    label: str
    spec: str
    hand: type[nn.Module]
    input_shape: tuple[int, ...]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    optimizer: Callable[[list], torch.optim.Optimizer]


CASES = (
    Case(
        "CIFAR Net",
        "specs/cifar_net.spec",
        models.Net,
        (3, 32, 32),
        F.cross_entropy,
        lambda p: torch.optim.SGD(p, lr=0.001, momentum=0.9),  # the tutorial's
    ),
    Case(
        "MNIST ConvNet",
        "specs/mnist_convnet.spec",
        models.ConvNet,
        (1, 28, 28),
        F.nll_loss,
        lambda p: torch.optim.Adadelta(p, lr=1.0),  # the MNIST example's
    ),
)


class Trainer:
    """One model, its optimizer and a fixed batch; `step()` is one training step."""

    def __init__(self, model: nn.Module, case: Case, x: torch.Tensor, y: torch.Tensor) -> None:
        self.model = model.train()
        self.forward = model
        self.case = case
        self.opt = case.optimizer(list(model.parameters()))
        self.x, self.y = x, y

    def step(self) -> None:
        self.opt.zero_grad(set_to_none=True)
        loss = self.case.loss(self.forward(self.x), self.y)
        loss.backward()
        self.opt.step()


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (kineto prints `profiler_start/stop` lines from C++)."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def aten_ops(step: Callable[[], None]) -> collections.Counter:
    """The aten:: operators one call of `step` issues (names with multiplicity)."""
    from torch.profiler import ProfilerActivity, profile

    with _quiet_stderr(), profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
    return collections.Counter(e.name for e in prof.events() if e.name.startswith("aten::"))


def _factories(case: Case, ctx: Context) -> tuple[dict[str, Callable[[], nn.Module]], str]:
    spec = ctx.repo / case.spec
    out: dict[str, Callable[[], nn.Module]] = {
        "hand": case.hand,
        "interpreted": models.interpreted(spec),
    }
    gen, why = models.generated(spec, ctx.tmp)
    if gen is not None:
        out["generated"] = gen
    out["hand copy"] = models.twin(case.hand)  # an A/A control: the noise floor of a ratio
    return out, why


def _trainers(case: Case, factories: dict, batch: int, notes: list[str]) -> dict[str, Trainer]:
    torch.manual_seed(0)
    x = torch.randn(batch, *case.input_shape)
    y = torch.randint(0, 10, (batch,))
    trainers = {}
    reference = None
    for name, make in factories.items():
        torch.manual_seed(0)
        model = make()
        if reference is None:
            reference = model.state_dict()
        else:
            try:
                model.load_state_dict(reference)
            except RuntimeError as exc:
                notes.append(f"{case.label} {name}: state_dict differs from hand-written: {exc}")
        trainers[name] = Trainer(model, case, x, y)
    return trainers


def _timed_rounds(trainers: dict[str, Trainer], ctx: Context) -> dict[str, Spread]:
    """Per-variant step times, interleaved step by step: each round runs `k` steps of every
    variant, alternating (A B C A B C ...), and keeps each variant's median step; a burst of
    load from another process then hits all variants alike. Returns per-round medians."""
    # Single rounds spread by ±2-3% (the A/A control's min-max); 25 rounds put the median's
    # own error well under the 1% the generated-code target allows.
    rounds = 3 if ctx.quick else 25
    k = calls_for(trainers["hand"].step, 0.01 if ctx.quick else 0.1, most=100)
    # A median of at least 6 steps per round: with 3 (batch 128, 50-95 ms steps) rounds
    # spread ±4-7% and the median of 25 missed the 1% target in 2 of 4 full runs, once in
    # an A/A-sized excursion (1.010x for a class identical to the hand-written one).
    k = k if ctx.quick else max(k, 6)
    names = list(trainers)
    medians: dict[str, list[float]] = {n: [] for n in names}
    clock = time.perf_counter
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        steps: dict[str, list[float]] = {n: [] for n in names}
        for _ in range(k):
            for n in order:
                start = clock()
                trainers[n].step()
                steps[n].append(clock() - start)
        for n in names:
            medians[n].append(statistics.median(steps[n]))
    return {n: Spread(tuple(v)) for n, v in medians.items()}


def _variant_rows(case, batch, mode, trainers, times, why_no_gen, bg) -> list[Row]:
    rows = []
    hand = times["hand"]
    for name, limit in LIMITS.items():
        label = f"{case.label} b{batch} {mode}: {name} / hand step time"
        if name not in times:
            rows.append(Row(SECTION, label, f"<= {limit:g}×", why_no_gen, "n/a", NA))
            continue
        measured = f"{times[name].median * 1e3:.3f} ms vs {hand.median * 1e3:.3f} ms"
        if bg is not None:
            measured += f" (others used {bg:.1f} cores)"
        rows.append(ratio_row(SECTION, label, ratio(times[name], hand), "<=", limit, measured))
    if "hand copy" in times:
        aa = ratio(times["hand copy"], hand)
        rows.append(
            Row(
                SECTION,
                f"{case.label} b{batch} {mode}: noise floor, hand / another hand instance",
                "reported (A/A control)",
                f"{times['hand copy'].median * 1e3:.3f} ms vs {hand.median * 1e3:.3f} ms",
                aa.fmt(3) + "×",
                INFO,
            )
        )
    return rows


def _op_rows(case, batch, trainers, why_no_gen) -> list[Row]:
    counts = {n: aten_ops(t.step) for n, t in trainers.items()}
    hand = counts["hand"]
    rows = []
    for name in LIMITS:
        label = f"{case.label} b{batch}: aten ops per step, {name} vs hand"
        if name not in counts:
            rows.append(Row(SECTION, label, "same ops", why_no_gen, "", NA))
            continue
        same = counts[name] == hand
        diff = ""
        if not same:
            delta = (counts[name] - hand) + (hand - counts[name])
            diff = "; differ: " + ", ".join(f"{k}×{v}" for k, v in delta.most_common(6))
        measured = f"{sum(counts[name].values())} vs {sum(hand.values())} events{diff}"
        rows.append(Row(SECTION, label, "same ops", measured, "", PASS if same else FAIL))
    return rows


def _compiled_rows(case, batch, factories, ctx, why_no_gen, eager_hand_step) -> list[Row]:
    """Compile a throwaway copy of the hand-written model first (the cold compile), then
    each variant, which then hits inductor's FX-graph cache when its graph is identical.
    (The cold-compiled module itself runs 1.5-2% slower than cache-loaded ones here, so
    no measured variant may be the cold one.)"""
    torch._dynamo.reset()
    notes: list[str] = []
    cold = {"cold copy (hand)": models.twin(case.hand)}
    # The compiled hand-written variant gets a code object of its own too: the uncompiled
    # baseline below runs `case.hand.forward`, and sharing it made the A/A control drift.
    factories = {**factories, "hand": models.twin(case.hand)}
    trainers = _trainers(case, {**cold, **factories}, batch, notes)
    compile_s = {}
    for name, t in trainers.items():
        t.forward = torch.compile(t.model, dynamic=False)
        start = time.perf_counter()
        t.step()  # compiles forward and backward
        compile_s[name] = time.perf_counter() - start
        ctx.log(f"    compiled {name} b{batch}: {compile_s[name]:.1f} s")
    del trainers["cold copy (hand)"]
    eager = Trainer(case.hand(), case, trainers["hand"].x, trainers["hand"].y)
    eager.model.load_state_dict(trainers["hand"].model.state_dict())
    for t in (*trainers.values(), eager):
        for _ in range(3):
            t.step()
    meter = Background()
    times = _timed_rounds({**trainers, "eager hand": eager}, ctx)
    bg = meter.cores()
    rows = _variant_rows(case, batch, "compiled", trainers, times, why_no_gen, bg)
    cost = ", ".join(f"{n} {s - eager_hand_step:.1f} s" for n, s in compile_s.items())
    steady = ratio(times["hand"], times["eager hand"])
    rows.append(
        Row(
            SECTION,
            f"{case.label} b{batch}: torch.compile cost (first step − eager step)",
            "reported (issue: ≈38 s)",
            cost,
            "",
            INFO,
        )
    )
    rows.append(
        Row(
            SECTION,
            f"{case.label} b{batch}: compiled / eager step time (hand-written)",
            "reported (issue: 1.47× slower)",
            f"{times['hand'].median * 1e3:.3f} ms vs {times['eager hand'].median * 1e3:.3f} ms",
            steady.fmt(3) + "×",
            INFO,
        )
    )
    ctx.notes.extend(notes)
    return rows


def _keep_freed_memory() -> bool:
    """Ask glibc's malloc to keep freed blocks of any size in the heap. By default it hands
    blocks over 128 kB and up back to the OS, so every step's large activations are faulted
    in afresh: at batch 128 that was a fifth of the MNIST step (62 against 49 ms), and the
    A/A ratio's per-round standard deviation was 1.3-3.9% against 0.6-0.8% with freed
    blocks kept. Process-wide; this section has a process of its own (benchmarks.section)."""
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3  # <malloc.h>
    return bool(libc.mallopt(m_mmap_threshold, 1 << 30) and libc.mallopt(m_trim_threshold, 1 << 30))


def run(ctx: Context) -> list[Row]:
    threads = ctx.threads or 1
    saved = torch.get_num_threads()
    torch.set_num_threads(threads)
    if _keep_freed_memory():
        ctx.notes.append(
            "modules: glibc malloc keeps freed memory (M_MMAP_THRESHOLD and M_TRIM_THRESHOLD "
            "1 GiB), so large activations are not returned to the OS and faulted in again "
            "every step; that noise hid 1% differences at batch 128. All variants alike."
        )
    ctx.notes.append(
        f"modules: measured with {threads} torch intra-op thread(s) (--threads to change). "
        "The variants issue identical aten ops, so the ratios measure per-step framework "
        "overhead; with 2 threads on 2 cores, a neighbour process that keeps one core busy "
        "stalls every parallel region at its barrier (seen on this machine: CIFAR Net b4 steps "
        "of 2-50 ms instead of 1.3 ms) and the ratios become noise."
    )
    try:
        return _run(ctx)
    finally:
        torch.set_num_threads(saved)


def _run(ctx: Context) -> list[Row]:
    rows: list[Row] = []
    batches = (4, 16) if ctx.quick else (4, 128)  # --quick is a smoke run
    for case in CASES:
        factories, why_no_gen = _factories(case, ctx)
        for batch in batches:
            ctx.log(f"  {case.label} batch {batch}: eager")
            trainers = _trainers(case, factories, batch, ctx.notes)
            for t in trainers.values():
                for _ in range(2 if ctx.quick else 10):
                    t.step()
            meter = Background()
            times = _timed_rounds(trainers, ctx)
            bg = meter.cores()
            rows += _variant_rows(case, batch, "eager", trainers, times, why_no_gen, bg)
            rows += _op_rows(case, batch, trainers, why_no_gen)
            if ctx.compile:
                ctx.log(f"  {case.label} batch {batch}: torch.compile")
                try:
                    rows += _compiled_rows(
                        case, batch, factories, ctx, why_no_gen, times["hand"].median
                    )
                except Exception as exc:  # a backend failure is a result, not a crash
                    rows.append(
                        Row(
                            SECTION,
                            f"{case.label} b{batch}: torch.compile",
                            "compiles",
                            f"{type(exc).__name__}: {str(exc).splitlines()[0][:150]}",
                            "",
                            FAIL,
                        )
                    )
            else:
                label = f"{case.label} b{batch}: torch.compile"
                rows.append(Row(SECTION, label, "", "--quick / --no-compile", "", SKIPPED))
    return rows
