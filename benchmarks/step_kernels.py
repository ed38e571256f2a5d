"""The CIFAR tutorial net's training step (batch 4) under each kernel choice, side by side.

    python -m benchmarks.step_kernels [--seconds 60] [--timeline]

Not part of the suite: the tool behind the runner's kernel choices (`specc/training/kernels.py`) and
behind the README's account of this host's quiet and slow states. Every variant trains
its own copy of the net from the same weights on the same batches; they take turns in
chunks of `--chunk` steps, so a change of the machine's state hits all of them alike.
Prints each variant's median step time and its median per-chunk ratio to the tutorial's
(torch's defaults, 2 threads); `--timeline` also prints every round, where a state change
shows as a jump in every two-thread column at once.
"""

from __future__ import annotations

import argparse
import statistics
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from benchmarks.models import Net


@dataclass
class Variant:
    fused: bool
    onednn: bool
    threads: int
    times: list[float] = field(default_factory=list)

    def __post_init__(self) -> None:
        torch.manual_seed(0)
        self.net = Net()
        self.opt = torch.optim.SGD(
            self.net.parameters(), lr=0.001, momentum=0.9, **({"fused": True} if self.fused else {})
        )
        self.loss = nn.CrossEntropyLoss()
        self.step_no = 0

    def chunk(self, xs: torch.Tensor, ys: torch.Tensor, steps: int) -> None:
        torch.set_num_threads(self.threads)
        torch._C._set_mkldnn_enabled(self.onednn)
        start = time.perf_counter()
        for _ in range(steps):
            i = self.step_no % len(xs)
            self.step_no += 1
            self.opt.zero_grad()
            self.loss(self.net(xs[i]), ys[i]).backward()
            self.opt.step()
        self.times.append((time.perf_counter() - start) / steps)


VARIANTS = {
    "tutorial (torch's defaults)": (False, True, 2),
    "fused SGD": (True, True, 2),
    "native conv": (False, False, 2),
    "fused + native, 2 threads": (True, False, 2),
    "fused + native, 1 thread (specc)": (True, False, 1),
    "tutorial, 1 thread": (False, True, 1),
}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m benchmarks.step_kernels", description=__doc__)
    p.add_argument("--seconds", type=float, default=60.0, help="how long to alternate")
    p.add_argument("--chunk", type=int, default=100, help="steps per variant per turn")
    p.add_argument("--timeline", action="store_true", help="print every round's step times")
    args = p.parse_args(argv)
    threads, onednn = torch.get_num_threads(), torch.backends.mkldnn.enabled
    g = torch.Generator().manual_seed(0)
    xs = torch.randn(2500, 4, 3, 32, 32, generator=g)  # 10,000 images in batches of 4
    ys = torch.randint(0, 10, (2500, 4), generator=g)
    variants = {name: Variant(*v) for name, v in VARIANTS.items()}
    try:
        for v in variants.values():  # warm-up: first calls build kernels and buffers
            v.chunk(xs, ys, 20)
            v.times.clear()
        end = time.perf_counter() + args.seconds
        while time.perf_counter() < end:
            for v in variants.values():
                v.chunk(xs, ys, args.chunk)
            if args.timeline:
                print("  ".join(f"{v.times[-1] * 1e3:5.2f}" for v in variants.values()), flush=True)
    finally:
        torch.set_num_threads(threads)
        torch._C._set_mkldnn_enabled(onednn)
    base = variants["tutorial (torch's defaults)"].times
    print(f"{'variant':28s} {'step ms':>8s}  per-chunk ratio to the tutorial: median (min-max)")
    for name, v in variants.items():
        ratios = [a / b for a, b in zip(v.times, base, strict=True)]
        print(
            f"{name:28s} {statistics.median(v.times) * 1e3:8.3f}  {statistics.median(ratios):.3f}"
            f" ({min(ratios):.3f}-{max(ratios):.3f}), {len(ratios)} chunks"
        )


if __name__ == "__main__":
    main()
