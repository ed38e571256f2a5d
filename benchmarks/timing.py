"""Paired measurement: variants alternate round by round, and ratios are taken per round.

The machine is shared (2 cores, other processes come and go), so two variants timed one
after the other can see very different loads. Alternating them in rotating order and
dividing within each round cancels most of that; medians drop the rounds that were hit.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Spread:
    """The median and min-max of a set of samples (times, rates or ratios)."""

    values: tuple[float, ...]

    @property
    def median(self) -> float:
        return statistics.median(self.values)

    @property
    def lo(self) -> float:
        return min(self.values)

    @property
    def hi(self) -> float:
        return max(self.values)

    def fmt(self, digits: int = 3, scale: float = 1.0, unit: str = "") -> str:
        """`1.234 (1.200–1.300)`; with one sample just `1.234`."""
        m, lo, hi = self.median * scale, self.lo * scale, self.hi * scale
        if len(self.values) == 1:
            return f"{m:.{digits}f}{unit}"
        return f"{m:.{digits}f}{unit} ({lo:.{digits}f}–{hi:.{digits}f})"


def paired(
    variants: dict[str, Callable[[], float]], rounds: int, warmup: int = 1
) -> dict[str, Spread]:
    """Run each variant's measurement `rounds` times, in rotating order per round.

    Each callable performs one measurement and returns its value (e.g. seconds per step).
    `warmup` extra rounds run first and are discarded.
    """
    names = list(variants)
    samples: dict[str, list[float]] = {n: [] for n in names}
    for r in range(warmup + rounds):
        shift = r % len(names)
        for name in names[shift:] + names[:shift]:
            value = variants[name]()
            if r >= warmup:
                samples[name].append(value)
    return {n: Spread(tuple(v)) for n, v in samples.items()}


def ratio(a: Spread, b: Spread) -> Spread:
    """Per-round ratios a/b of two paired measurements."""
    return Spread(tuple(x / y for x, y in zip(a.values, b.values, strict=True)))


def per_call(fn: Callable[[], object], calls: int) -> Callable[[], float]:
    """A measurement: the mean wall time of `calls` consecutive calls of fn, in seconds."""

    def measure() -> float:
        t = time.perf_counter()
        for _ in range(calls):
            fn()
        return (time.perf_counter() - t) / calls

    return measure


def calls_for(fn: Callable[[], object], seconds: float, most: int = 1000) -> int:
    """How many calls of fn fill about `seconds` (fn is called a few times to find out)."""
    t = time.perf_counter()
    fn()
    fn()
    one = (time.perf_counter() - t) / 2
    return max(1, min(most, round(seconds / max(one, 1e-7))))


def median_of(values: Sequence[float]) -> float:
    return statistics.median(values)


def _cpu_snapshot() -> tuple[float, float, float] | None:
    """(monotonic time, CPU seconds all processes used, CPU seconds this process and its
    reaped children used); None where /proc/stat cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    busy = (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")  # guest time is in user
    t = os.times()
    own = t.user + t.system + t.children_user + t.children_system
    return time.monotonic(), busy, own


class Background:
    """How many cores other processes kept busy between construction and `cores()`."""

    def __init__(self) -> None:
        self.start = _cpu_snapshot()

    def cores(self) -> float | None:
        end = _cpu_snapshot()
        if self.start is None or end is None or end[0] <= self.start[0]:
            return None
        others = (end[1] - self.start[1]) - (end[2] - self.start[2])
        return max(others, 0.0) / (end[0] - self.start[0])
