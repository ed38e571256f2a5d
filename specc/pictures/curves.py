"""Runs' metrics as curves (`specc plot`): one panel for the loss (training windows and
each evaluation), one per other metric, one for the learning rate; every run in its own
colour, the training line solid, val dashed, the final test a star. matplotlib draws on a
`Figure` of its own (no pyplot: no global state, no display needed)."""

from __future__ import annotations

import io
import itertools
import math
from pathlib import Path
from typing import Any

from specc.errors import UsageError, did_you_mean
from specc.pictures.extras import require
from specc.pictures.output import PLOT_SUFFIXES, check_output, write_bytes
from specc.pictures.runs import Run, named, read_run

X_AXES = ("step", "epoch")
STYLE = {"train": {"linestyle": "-", "linewidth": 1.2},
         "val": {"linestyle": "--", "marker": "o", "markersize": 3.5},
         "test": {"linestyle": ":", "marker": "s", "markersize": 3.5}}  # fmt: skip
COLUMNS = 3  # panels per row
PANEL_SIZE = (4.6, 3.3)  # inches; saved at 100 dpi
LOG_RATIO = 30  # a panel whose values span more than this factor gets a log scale


def plot_runs(paths: list[Path], output: Path, x: str = "step") -> Path:
    """Draw the runs at `paths` into `output` (its suffix picks the format)."""
    if x not in X_AXES:
        raise UsageError(f"--x {x}: choose step or epoch", hint=did_you_mean(x, X_AXES))
    check_output(output, PLOT_SUFFIXES, "curves.png")
    if not paths:
        raise UsageError("name at least one run folder", hint="e.g. specc plot runs/digits")
    require("matplotlib", "plot", "plot")
    figure = draw(named([read_run(p) for p in paths]), x)
    buffer = io.BytesIO()
    figure.savefig(buffer, format=output.suffix.lower()[1:], dpi=100)
    write_bytes(output, buffer.getvalue())
    return output


def panels(runs: list[Run]) -> list[str]:
    """The panels to draw: loss first, then each metric any run logged, then lr."""
    metrics = [m for r in runs for m in r.metrics()]
    lr = ["lr"] if any("lr" in t for r in runs for t in r.train) else []
    return list(dict.fromkeys(["loss", *metrics, *lr]))


def draw(runs: list[Run], x: str) -> Any:
    """The figure: one panel (`Axes`) per entry of `panels(runs)`."""
    from matplotlib.figure import Figure

    names = panels(runs)
    cols = min(len(names), COLUMNS)
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(PANEL_SIZE[0] * cols, PANEL_SIZE[1] * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).flatten()
    for ax in axes[len(names) :]:
        ax.remove()
    for ax, panel in zip(axes, names, strict=False):
        for color, run in enumerate(runs):
            draw_run(ax, run, panel, x, f"C{color}", label=run.name if len(runs) > 1 else "")
        finish(ax, panel, x)
    fig.suptitle(runs[0].name if len(runs) == 1 else " vs ".join(r.name for r in runs))
    return fig


def draw_run(ax: Any, run: Run, panel: str, x: str, color: str, label: str) -> None:
    """One run's lines on one panel."""
    prefix = f"{label} " if label else ""
    if panel in ("loss", "lr"):
        points = [(train_x(run, t, x), t[panel]) for t in run.train if panel in t]
        if points:
            ax.plot(*columns(points), color=color, label=f"{prefix}train", **STYLE["train"])
    if panel == "lr":
        return
    for split in ("val", "test"):
        key = f"{split}_{panel}"
        points = [(e[x], e[key]) for e in run.evals if key in e]
        if points:
            ax.plot(*columns(points), color=color, label=f"{prefix}{split}", **STYLE[split])
    if f"test_{panel}" in run.final:
        ax.plot([last_x(run, x)], [run.final[f"test_{panel}"]], color=color, marker="*",
                markersize=10, linestyle="none", label=f"{prefix}test (final)")  # fmt: skip


def columns(points: list[tuple[float, float]]) -> tuple[list[float], list[float]]:
    return [p[0] for p in points], [p[1] for p in points]


def finish(ax: Any, panel: str, x: str) -> None:
    """Titles, scale and legend of a drawn panel."""
    ax.set_title("learning rate" if panel == "lr" else panel)
    ax.set_xlabel(x)
    ax.grid(True, alpha=0.3)
    values = [v for line in ax.get_lines() for v in line.get_ydata()]
    # Losses fall by orders of magnitude; a schedule reads better on a linear scale.
    spread = values and min(values) > 0 and max(values) / min(values) > LOG_RATIO
    if spread and panel != "lr":
        ax.set_yscale("log")
    if ax.get_lines():
        ax.legend(fontsize=8)


def train_x(run: Run, record: dict[str, Any], x: str) -> float:
    """Where a training window goes: its step, or the fraction of epochs done by then
    (between the epoch ends logged; past the last, at that epoch's pace)."""
    if x == "step":
        return record["step"]
    step = record["step"]
    points = [(0, 0), *run.epoch_ends()]
    for (s0, e0), (s1, e1) in itertools.pairwise(points):
        if step <= s1:
            return e0 + (e1 - e0) * (step - s0) / max(s1 - s0, 1)
    if len(points) > 1:
        (s0, e0), (s1, e1) = points[-2], points[-1]
        return e1 + (step - s1) * (e1 - e0) / max(s1 - s0, 1)
    # No epoch has ended yet: spread the first epoch's windows over it.
    return record["epoch"] - 1 + step / (max(t["step"] for t in run.train) + 1)


def last_x(run: Run, x: str) -> float:
    """Where the final test goes: the last step or epoch the run logged."""
    return max([train_x(run, t, x) for t in run.train] + [e[x] for e in run.evals], default=0)
