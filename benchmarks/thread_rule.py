"""One intra-op thread against two for small training steps, in processes taking turns.

    python -m benchmarks.thread_rule [--nets Net:2,Net:4,Net:6,ConvNet:1,digits:4,digits:8]
                                     [--seconds 60] [--chunk 0.2] [--procs 4]

Not part of the suite: the measurement behind `ONE_THREAD_MAX_FLOPS` in `specc/training/kernels.py`.
A thread count is fixed per process (libgomp's pool), so each variant is its own worker
process (`--procs` of them per variant); the workers take turns running `--chunk` seconds
of forward + backward + step while the others wait on a pipe, so a change of the host's
state hits all of them alike.
Variants: torch's defaults on two threads (the baseline), and the runner's kernels (fused
optimizer, native convolutions) on two threads and on one. Rounds where the baseline runs
over 1.2x its own 20th percentile are counted as the host's slow state (its two vCPUs
sharing a core, see README Performance), and the medians are split by state.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VARIANTS = {  # name: (runner's kernels, threads)
    "torch's defaults, 2 threads": (False, 2),
    "runner's kernels, 2 threads": (True, 2),
    "runner's kernels, 1 thread": (True, 1),
}


def worker(net: str, batch: int, runners: bool, threads: int) -> None:
    """Train `net` in chunks of the seconds read from stdin; print each chunk's ms/step."""
    import torch
    from torch import nn

    from benchmarks import models

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    torch._C._set_mkldnn_enabled(not runners)
    fused = {"fused": True} if runners else {}
    if net == "digits":
        import specc

        model, shape = specc.build(REPO / "specs" / "digits.spec"), (1, 8, 8)
        opt = torch.optim.AdamW(model.parameters(), lr=0.003, weight_decay=1e-4, **fused)
    else:
        model = getattr(models, net)()
        shape = (3, 32, 32) if net == "Net" else (1, 28, 28)
        opt = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9, **fused)
    loss_fn = nn.CrossEntropyLoss()
    xs, ys = torch.randn(200, batch, *shape), torch.randint(0, 10, (200, batch))
    step_no = 0

    def step() -> None:
        nonlocal step_no
        i = step_no % len(xs)
        step_no += 1
        opt.zero_grad()
        loss_fn(model(xs[i]), ys[i]).backward()
        opt.step()

    for _ in range(30):  # first calls build kernels and buffers
        step()
    print("ready", flush=True)
    for line in sys.stdin:
        seconds, start, n = float(line), time.perf_counter(), 0
        while time.perf_counter() - start < seconds:
            step()
            n += 1
        print((time.perf_counter() - start) / n * 1e3, flush=True)


def measure(net: str, batch: int, seconds: float, chunk: float, procs_per: int) -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    # Several processes per variant: one process can sit on a slower vCPU or a less lucky
    # memory layout for its whole life (seen here: 15-40% between two processes alike).
    procs: dict[str, list[subprocess.Popen]] = {}
    for name, (runners, threads) in VARIANTS.items():
        cmd = [sys.executable, "-m", "benchmarks.thread_rule", "--worker",
               net, str(batch), str(int(runners)), str(threads)]  # fmt: skip
        for _ in range(procs_per):
            p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                 cwd=REPO, env=env)  # fmt: skip
            if p.stdout.readline().strip() != "ready":
                sys.exit(f"worker for {net} b{batch} ({name}) failed")
            procs.setdefault(name, []).append(p)
    times: dict[str, list[float]] = {name: [] for name in procs}
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:  # a round: every process of every variant, in turn
        chunks: dict[str, list[float]] = {name: [] for name in procs}
        for i in range(procs_per):
            for name, ps in procs.items():
                ps[i].stdin.write(f"{chunk}\n")
                ps[i].stdin.flush()
                chunks[name].append(float(ps[i].stdout.readline()))
        for name, ts in chunks.items():
            times[name].append(statistics.median(ts))
    for ps in procs.values():
        for p in ps:
            p.stdin.close()
            p.wait()
    base = times["torch's defaults, 2 threads"]
    floor = sorted(base)[len(base) // 5]
    slow = [t > 1.2 * floor for t in base]
    print(f"{net} batch {batch}: {len(base)} rounds, {sum(slow)} in the slow state")
    two = times["runner's kernels, 2 threads"]
    for name, ts in times.items():
        quiet = [t for t, s in zip(ts, slow, strict=True) if not s]
        slowed = [t for t, s in zip(ts, slow, strict=True) if s]
        med = lambda v: f"{statistics.median(v):6.3f}" if v else "     -"  # noqa: E731
        line = f"  {name:28s} ms/step: quiet {med(quiet)}  slow {med(slowed)}"
        if ts is not two:
            ratios = [a / b for a, b in zip(ts, two, strict=True)]
            line += f"   vs runner's 2 threads: {statistics.median(ratios):.3f}x"
        print(line, flush=True)


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--worker"]:
        net, batch, runners, threads = argv[1:5]
        worker(net, int(batch), runners == "1", int(threads))
        return
    p = argparse.ArgumentParser(prog="python -m benchmarks.thread_rule", description=__doc__)
    p.add_argument("--nets", default="Net:2,Net:4,Net:6,ConvNet:1,digits:4,digits:8",
                   help="NET:BATCH,... (NET: Net, ConvNet, digits)")  # fmt: skip
    p.add_argument("--seconds", type=float, default=60.0, help="how long each net takes turns")
    p.add_argument("--chunk", type=float, default=0.2, help="seconds per process per turn")
    p.add_argument("--procs", type=int, default=4, help="worker processes per variant")
    args = p.parse_args(argv)
    for item in args.nets.split(","):
        net, _, batch = item.partition(":")
        measure(net, int(batch), args.seconds, args.chunk, args.procs)


if __name__ == "__main__":
    main()
