"""Rows of the results table and their markdown rendering."""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field

from benchmarks.timing import Spread

PASS, FAIL, INFO, NA, SKIPPED = "PASS", "FAIL", "info", "n/a", "skipped"


@dataclass
class Row:
    """One line of the table: what was measured, against which target, and the verdict."""

    section: str
    name: str
    target: str = ""
    measured: str = ""
    ratio: str = ""
    result: str = INFO


@dataclass
class Context:
    """What every section gets: the size of the run, a scratch folder, a logger."""

    quick: bool
    compile: bool
    tmp: object  # pathlib.Path of a temporary folder, removed at the end
    repo: object  # pathlib.Path of the repository root
    log: Callable[[str], None]
    threads: int | None = None  # --threads, when given
    notes: list[str] = field(default_factory=list)


_OPS: dict[str, Callable[[float, float], bool]] = {
    "<=": operator.le,
    "<": operator.lt,
    ">=": operator.ge,
    ">": operator.gt,
}


def verdict(value: float, op: str, limit: float) -> str:
    """PASS when `value op limit` holds."""
    return PASS if _OPS[op](value, limit) else FAIL


def ratio_row(
    section: str, name: str, r: Spread, op: str, limit: float, measured: str, target: str = ""
) -> Row:
    """A row judged on the median of paired per-round ratios."""
    return Row(
        section,
        name,
        target=target or f"{op} {limit:g}×",
        measured=measured,
        ratio=r.fmt(3) + "×",
        result=verdict(r.median, op, limit),
    )


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown_table(rows: list[Row]) -> str:
    head = "| section | benchmark | target | measured: median (min–max) | ratio | result |"
    lines = [head, "|---|---|---|---|---|---|"]
    for r in rows:
        cells = (r.section, r.name, r.target, r.measured, r.ratio, f"**{r.result}**")
        lines.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(lines)


def summary_line(rows: list[Row]) -> str:
    judged = [r for r in rows if r.result in (PASS, FAIL)]
    failed = [r for r in judged if r.result == FAIL]
    return f"{len(judged) - len(failed)} of {len(judged)} targets pass" + (
        "; failing: " + "; ".join(f"{r.section}: {r.name}" for r in failed) if failed else ""
    )
