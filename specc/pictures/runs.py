"""A run folder's `metrics.jsonl` as `specc plot` reads it: training windows by step,
evaluations by epoch, and the final test. A run still going may end in half a line, and
a run resumed after a crash may hold one in the middle: lines that are not JSON objects
are passed over. A step or epoch logged twice (a resumed run redoes the steps after its
last checkpoint) keeps its latest record."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from specc.errors import UsageError

AXES = ("step", "epoch", "split", "final")  # keys that are not metrics


@dataclass
class Run:
    name: str
    file: Path
    train: list[dict[str, Any]] = field(default_factory=list)  # by step
    evals: list[dict[str, Any]] = field(default_factory=list)  # by epoch
    final: dict[str, float] = field(default_factory=dict)  # test_<metric> at the end

    def metrics(self) -> list[str]:
        """The evaluation metrics logged (`loss`, `accuracy`, ...), in the order first met."""
        names = [split_metric(k)[1] for r in [*self.evals, self.final] for k in r]
        return list(dict.fromkeys(n for n in names if n))

    def epoch_ends(self) -> list[tuple[int, int]]:
        """(step, epoch) at the end of each epoch logged."""
        return [(r["step"], r["epoch"]) for r in self.evals]


def is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def split_metric(key: str) -> tuple[str, str] | tuple[None, None]:
    """`val_loss` -> ("val", "loss"); a key that names no evaluated split -> (None, None)."""
    split, _, metric = key.partition("_")
    return (split, metric) if split in ("val", "test") and metric else (None, None)


def read_run(path: Path) -> Run:
    """The records of run folder `path` (or of a metrics.jsonl file named directly)."""
    file = path / "metrics.jsonl" if path.is_dir() else path
    if not path.exists():
        raise UsageError(
            f"run folder not found: {path}",
            hint="pass folders a run wrote, e.g. runs/digits (`specc run` names them after "
            "the spec, or --name)",
        )
    if not file.is_file():
        raise UsageError(
            f"{path} has no metrics.jsonl",
            hint="a run folder gets it at the first log step; is this the folder `specc run` "
            "wrote (runs/<name>)?",
        )
    try:
        lines = file.read_text("utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise UsageError(f"cannot read {file}: {exc.strerror}") from None
    run = collect(path.name if path.is_dir() else path.parent.name, file, lines)
    if not (run.train or run.evals or run.final):
        raise UsageError(
            f"{file} has no step or epoch records with numbers yet",
            hint="a run logs every `log_every` steps and at each epoch's end; plot again "
            "once it has",
        )
    return run


def collect(name: str, file: Path, lines: list[str]) -> Run:
    train: dict[float, dict[str, Any]] = {}
    evals: dict[float, dict[str, Any]] = {}
    final: dict[str, float] = {}
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue  # half a line: the run is writing it, or crashed while it did
        if not isinstance(record, dict):
            continue
        numbers = {k: v for k, v in record.items() if is_number(v)}
        if record.get("final") is True:
            final = {k: v for k, v in numbers.items() if split_metric(k)[0]}
        elif is_number(record.get("step")) and "lr" in numbers:
            train[numbers["step"]] = numbers
        elif is_number(record.get("step")) and is_number(record.get("epoch")):
            if any(split_metric(k)[0] for k in numbers):
                evals[numbers["epoch"]] = numbers
    return Run(name, file, [train[k] for k in sorted(train)], [evals[k] for k in sorted(evals)],
               final)  # fmt: skip


def named(runs: list[Run]) -> list[Run]:
    """`runs` with names a legend can tell apart: the folder's name, or its whole path
    when two runs share one."""
    counts: dict[str, int] = {}
    for r in runs:
        counts[r.name] = counts.get(r.name, 0) + 1
    for r in runs:
        if counts[r.name] > 1:
            r.name = str(r.file.parent)
    return runs
