"""Section 2, end to end: `specc run specs/cifar10.spec` against the tutorial's own loop.

All loops read the same generated CIFAR-10 files (real pickled batches, written by
`tests/datafiles.py` into a temporary folder), train the same network with SGD(lr=0.001,
momentum=0.9) for one whole epoch, and read the loss each step (`loss.item()`, as the
tutorial does). Images per second are end to end: from reading the dataset files (and,
for specc, parsing the spec) to the end of the epoch, so specc's one-off transform of the
whole set counts against it. specc runs in this process through `specc.training.runner.run`, its
quiet mode, alternating with the hand-written loops round by round. The hand-written
loops never touch the test set, so specc runs `specs/cifar10.spec` with its `test = ...`
line taken out (`train_only_spec`); otherwise specc alone would load, transform and
evaluate the test images inside its timed run. torch keeps its own thread count here (as
users run it) unless --threads says otherwise; each row says how many cores other
processes used meanwhile, since two threads on two busy cores can run several
times slower. The runner uses torch's fused SGD step and, for a net as small as the
tutorial's at batch 4, torch's native CPU convolutions instead of oneDNN and one intra-op
thread (`specc.training.kernels`); one more specc run undoes all three (`TORCH_KERNELS`) to show
what those choices are worth.
"""

from __future__ import annotations

import importlib.util
import json
import os
import time
from pathlib import Path
from typing import ClassVar
from unittest import mock

import torch
import torchvision
from torch import nn

from benchmarks.models import Net
from benchmarks.report import FAIL, INFO, PASS, Context, Row, ratio_row
from benchmarks.timing import Background, Spread, paired, ratio

SECTION = "e2e"


class UnverifiedCIFAR10(torchvision.datasets.CIFAR10):
    """torchvision's CIFAR10 without MD5 checks: the generated files are not the real ones.
    (Module level, so DataLoader workers can pickle it.)"""

    train_list: ClassVar = [[f, None] for f, _ in torchvision.datasets.CIFAR10.train_list]
    test_list: ClassVar = [[f, None] for f, _ in torchvision.datasets.CIFAR10.test_list]
    meta: ClassVar = {**torchvision.datasets.CIFAR10.meta, "md5": None}


def write_data(root: Path, n_train: int, n_test: int) -> None:
    path = Path(__file__).resolve().parents[1] / "tests" / "datafiles.py"
    spec = importlib.util.spec_from_file_location("_bench_datafiles", path)
    datafiles = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(datafiles)
    datafiles.write_cifar10(root, n_train=n_train, n_test=n_test)


def _train(net: nn.Module, batches, max_steps: int | None) -> int:
    """The tutorial's inner loop; returns the number of images trained on."""
    criterion = nn.CrossEntropyLoss()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.001, momentum=0.9)
    running_loss, seen = 0.0, 0
    for i, (inputs, labels) in enumerate(batches):
        optimizer.zero_grad()
        outputs = net(inputs)
        loss = criterion(outputs, labels)
        loss.backward()
        optimizer.step()
        running_loss += loss.item()
        seen += labels.shape[0]
        if i % 2000 == 1999:
            running_loss = 0.0
        if max_steps and i + 1 >= max_steps:
            break
    return seen


def tutorial_loop(root: Path, workers: int, batch: int, max_steps: int | None = None) -> float:
    """The tutorial as written: per-sample ToTensor + Normalize in a DataLoader."""
    import torchvision.transforms as transforms

    start = time.perf_counter()
    transform = transforms.Compose(
        [transforms.ToTensor(), transforms.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))]
    )
    trainset = UnverifiedCIFAR10(root=root, train=True, download=False, transform=transform)
    trainloader = torch.utils.data.DataLoader(
        trainset, batch_size=batch, shuffle=True, num_workers=workers
    )
    torch.manual_seed(0)
    seen = _train(Net(), trainloader, max_steps)
    return seen / (time.perf_counter() - start)


def in_memory_loop(root: Path, batch: int, max_steps: int | None = None) -> float:
    """Hand-tuned: the whole set transformed once into one tensor, batches sliced from it."""
    start = time.perf_counter()
    ds = UnverifiedCIFAR10(root=root, train=True, download=False)
    x = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NCHW, as ToTensor gives
    x = x.float().div_(255).sub_(0.5).div_(0.5)
    y = torch.tensor(ds.targets)
    torch.manual_seed(0)
    perm = torch.randperm(len(y))
    batches = ((x[i], y[i]) for i in perm.split(batch))
    seen = _train(Net(), batches, max_steps)
    return seen / (time.perf_counter() - start)


TORCH_KERNELS = ('conv_kernels="torch"', 'threads="torch"', "optimizer.fused=False")


def train_only_spec(ctx: Context) -> Path:
    """specs/cifar10.spec without its test set, written next to the benchmark's data."""
    text = (ctx.repo / "specs" / "cifar10.spec").read_text()
    lines = text.splitlines(keepends=True)
    kept = [line for line in lines if not line.strip().startswith("test ")]
    assert len(kept) == len(lines) - 1, "specs/cifar10.spec: expected one `test = ...` line"
    path = ctx.tmp / "cifar10.spec"
    path.write_text("".join(kept))
    return path


class SpeccRun:
    """`specc run specs/cifar10.spec --set ...` (no test set) in this process; records its
    own loop rate."""

    def __init__(
        self, ctx: Context, root: Path, n: int, batch: int, extra: tuple[str, ...] = ()
    ) -> None:
        self.n, self.batch = n, batch
        self.spec = train_only_spec(ctx)
        self.runs = ctx.tmp / "runs"
        quoted = json.dumps(str(root))
        self.overrides = [
            f"cifar.train.root={quoted}",
            "cifar.train.verify=False",
            "epochs=1",
            f"batch_size={batch}",
            *extra,
        ]
        self.loop_rates: list[float] = []
        self.count = 0
        self.conv_kernels: str | None = None
        self.threads: int | None = None

    def __call__(self, max_steps: int | None = None) -> float:
        import specc
        from specc.training.runner import run

        self.count += 1
        extra = [f"max_steps={max_steps}"] if max_steps else []
        start = time.perf_counter()
        summary = run(
            specc.load(self.spec),
            self.overrides + extra,
            runs_dir=self.runs,
            name=f"bench{self.count}",
            quiet=True,
        )
        wall = time.perf_counter() - start
        self.conv_kernels = summary.get("conv_kernels")
        self.threads = summary.get("threads")
        full = summary.get("epochs", 0) >= 1
        seen = self.n * summary["epochs"] if full else summary["steps"] * self.batch
        if not max_steps:
            self.loop_rates.append(seen / summary["seconds"])
        return seen / wall


def runner_workers(ctx: Context, root: Path) -> list[int]:
    """The num_workers of each DataLoader specc's runner makes on its DataLoader path (the
    spec says workers = 2), recorded by a DataLoader subclass patched in for a 2-step run."""
    import torch.utils.data

    seen: list[int] = []

    class Spy(torch.utils.data.DataLoader):
        def __init__(self, *args, **kwargs):
            seen.append(int(kwargs.get("num_workers", 0)))
            super().__init__(*args, **kwargs)

    with mock.patch.object(torch.utils.data, "DataLoader", Spy):
        SpeccRun(ctx, root, 20, 4, ("cifar.in_memory=False",))(max_steps=2)
    return seen


def _compile_rows(ctx: Context, root: Path) -> list[Row]:
    """compile = True reaches torch.compile; without it torch.compile is never called.
    (torch.compile is replaced by a spy that returns the model unchanged, so this costs
    no compile time; the compile cost itself is in the `modules` section.)"""
    rows = []
    for label, extra, want in (
        ("default (no `compile` set)", (), False),
        ("compile=True", ("compile=True",), True),
    ):
        calls = []

        def spy(model, *args, _calls=calls, **kwargs):
            _calls.append(type(model).__name__)
            return model

        with mock.patch.object(torch, "compile", spy):
            SpeccRun(ctx, root, 20, 4, extra)(max_steps=5)
        called = bool(calls)
        rows.append(
            Row(
                SECTION,
                f"runner {label}: calls torch.compile",
                "yes" if want else "no (off by default on CPU)",
                f"torch.compile called {len(calls)}×",
                "",
                PASS if called == want else FAIL,
            )
        )
    return rows


def run(ctx: Context) -> list[Row]:
    n_train, n_test = (200, 40) if ctx.quick else (10_000, 500)
    rounds, extra = (1, 1) if ctx.quick else (6, 2)
    root = ctx.tmp / "cifar"
    ctx.log(f"  writing {n_train:,} CIFAR-format images")
    write_data(root, n_train, n_test)

    specc4 = SpeccRun(ctx, root, n_train, 4)
    specc64 = SpeccRun(ctx, root, n_train, 64)
    specc_loader = SpeccRun(ctx, root, n_train, 4, ("cifar.in_memory=False",))
    # The same run on torch's default kernels: what the runner's kernel choices are worth.
    specc_torch = SpeccRun(ctx, root, n_train, 4, TORCH_KERNELS)
    tutorial0 = lambda steps=None: tutorial_loop(root, 0, 4, steps)  # noqa: E731
    memory4 = lambda steps=None: in_memory_loop(root, 4, steps)  # noqa: E731
    # The targets' four runs alternate in more rounds; the reported-only runs alternate
    # in fewer, each group beside its own baselines.
    batch4 = {
        "tutorial nw=2 b4": lambda steps=None: tutorial_loop(root, 2, 4, steps),
        "tutorial nw=0 b4": tutorial0,
        "in-memory b4": memory4,
        "specc b4": specc4,
    }
    extra4 = {
        "tutorial nw=0 b4 ": tutorial0,  # the trailing space keeps the two groups apart
        "in-memory b4 ": memory4,
        "specc DataLoader path b4": specc_loader,
        "specc b4, torch's kernels": specc_torch,
    }
    batch64 = {
        "in-memory b64": lambda steps=None: in_memory_loop(root, 64, steps),
        "specc b64": specc64,
    }
    workers = runner_workers(ctx, root)
    chosen = workers[0] if workers else None
    if chosen:  # a worker count > 0: measure it against the same run with workers = 0
        extra4["specc DataLoader path workers=0"] = SpeccRun(
            ctx, root, n_train, 4, ("cifar.in_memory=False", "cifar.workers=0")
        )
    if not ctx.quick:  # first calls import transforms, datasets, the runner
        ctx.log("  warm-up (20 steps each)")
        for fn in (tutorial0, memory4, specc4, specc_loader, specc_torch):
            fn(20)

    background: dict[str, list[float]] = {}

    def logged(name, fn):
        def measure() -> float:
            meter = Background()
            rate = fn()
            bg = meter.cores()
            background.setdefault(name, []).append(bg if bg is not None else float("nan"))
            ctx.log(f"    {name}: {rate:,.0f} img/s (others used {bg or 0:.1f} cores)")
            return rate

        return measure

    # Batch 4 epochs take ≈ 3-10 s each, and whole runs on this shared machine swing by
    # ±30% from one to the next, so the targets get 6 rounds. Batch 64 epochs take about a
    # second, where specc's fixed costs weigh more: 3 times as many.
    rates = paired({n: logged(n, f) for n, f in batch4.items()}, rounds=rounds, warmup=0)
    rates |= paired({n: logged(n, f) for n, f in extra4.items()}, rounds=extra, warmup=0)
    rates |= paired({n: logged(n, f) for n, f in batch64.items()}, rounds=rounds * 3, warmup=0)

    def img(name: str) -> str:
        s = rates[name]
        return f"{s.median:,.0f} ({s.lo:,.0f}–{s.hi:,.0f}) img/s"

    def vs(a: str, b: str) -> str:
        loads = background.get(a, []) + background.get(b, [])
        bg = f"; others used ≤ {max(loads):.1f} cores" if loads else ""
        return f"{img(a)} vs {b}: {img(b)}{bg}"

    rows = [
        ratio_row(
            SECTION,
            "specc run b4 / tutorial loop as written (num_workers=2)",
            ratio(rates["specc b4"], rates["tutorial nw=2 b4"]),
            ">=",
            2.5,
            vs("specc b4", "tutorial nw=2 b4"),
        ),
        ratio_row(
            SECTION,
            "specc run b4 / best DataLoader loop (num_workers=0)",
            ratio(rates["specc b4"], rates["tutorial nw=0 b4"]),
            ">=",
            1.4,
            vs("specc b4", "tutorial nw=0 b4"),
        ),
        ratio_row(
            SECTION,
            "specc run b64 / hand-written in-memory loop b64",
            ratio(rates["specc b64"], rates["in-memory b64"]),
            ">=",
            0.95,
            vs("specc b64", "in-memory b64"),
        ),
        Row(
            SECTION,
            "specc DataLoader path (in_memory=False) / tutorial loop, num_workers=0",
            "reported",
            vs("specc DataLoader path b4", "tutorial nw=0 b4 "),
            ratio(rates["specc DataLoader path b4"], rates["tutorial nw=0 b4 "]).fmt(3) + "×",
            INFO,
        ),
        Row(
            SECTION,
            "specc run b4 / hand-written in-memory loop b4",
            "reported",
            vs("specc b4", "in-memory b4"),
            ratio(rates["specc b4"], rates["in-memory b4"]).fmt(3) + "×",
            INFO,
        ),
        Row(
            SECTION,
            "specc run b4 on torch's default kernels / hand-written in-memory loop b4",
            f"reported ({', '.join(TORCH_KERNELS)}; specc chose conv kernels: "
            f"{specc4.conv_kernels or 'torch'}, threads: {specc4.threads or 'torch'}, SGD fused)",
            vs("specc b4, torch's kernels", "in-memory b4 "),
            ratio(rates["specc b4, torch's kernels"], rates["in-memory b4 "]).fmt(3) + "×",
            INFO,
        ),
        *(
            Row(
                SECTION,
                f"specc run b{r.batch}: training loop only (its summary seconds, no setup)",
                "reported",
                f"{Spread(tuple(r.loop_rates)).fmt(0)} img/s",
                "",
                INFO,
            )
            for r in (specc4, specc64)
            if r.loop_rates
        ),
        Row(
            SECTION,
            "tutorial num_workers=2 / num_workers=0",
            "reported (issue: ≈0.5×)",
            vs("tutorial nw=2 b4", "tutorial nw=0 b4"),
            ratio(rates["tutorial nw=2 b4"], rates["tutorial nw=0 b4"]).fmt(3) + "×",
            INFO,
        ),
    ]
    rows.append(_workers_row(chosen, rates, vs))
    rows += _compile_rows(ctx, root)
    return rows


def _workers_row(chosen: int | None, rates: dict, vs) -> Row:
    label = (
        f"runner's DataLoader worker count (spec: workers=2; {os.cpu_count()} cores): "
        "never slower than num_workers=0"
    )
    target = ">= 0.95× the same run with workers=0 (5% noise)"
    if chosen is None:
        return Row(SECTION, label, target, "the runner made no DataLoader", "", FAIL)
    if chosen == 0:
        return Row(SECTION, label, target, "chose num_workers=0: the baseline itself", "1×", PASS)
    r = ratio(rates["specc DataLoader path b4"], rates["specc DataLoader path workers=0"])
    measured = f"chose num_workers={chosen}: " + vs(
        "specc DataLoader path b4", "specc DataLoader path workers=0"
    )
    return ratio_row(SECTION, label, r, ">=", 0.95, measured, target=target)
