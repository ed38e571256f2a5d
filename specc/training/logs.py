"""What a run shows and records: the progress bar or lines, `metrics.jsonl`, TensorBoard
events when tensorboard is installed, and the final summary table."""

from __future__ import annotations

import json
import sys
import warnings
from pathlib import Path
from typing import Any


class Progress:
    """A live bar on a terminal, plain lines every `log_every` steps otherwise."""

    def __init__(self, total_steps: int, log_every: int, quiet: bool = False,
                 unit: str = "samples") -> None:  # fmt: skip
        self.total = total_steps
        self.unit = unit  # what throughput counts: "tokens" for a sequence loss
        self.log_every = log_every
        self.quiet = quiet
        self.live = sys.stderr.isatty() and not quiet
        self.bar = None
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total_steps, epoch=1, info="")
            self.bar.start()

    def due(self, step: int) -> bool:
        """Whether `step` shows anything: the loop skips building the line otherwise."""
        if self.bar is not None:
            return True
        return not self.quiet and (step % self.log_every == 0 or step == self.total)

    def step(self, step: int, epoch: int, loss: float, lr: float, ips: float) -> None:
        info = f"loss {loss:.4f}  lr {lr:.3g}  {ips:,.0f} {self.unit}/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, epoch=epoch, info=info)
        elif self.due(step):
            print(f"epoch {epoch}  step {step}/{self.total}  {info}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


class RunLog:
    """`metrics.jsonl` (one JSON object per line) and TensorBoard scalars. Workers other
    than rank 0 write nothing. Per `log_every` steps: step, epoch, split "train", loss, lr
    and samples_per_s (tokens_per_s for a sequence loss: target tokens, padding included).
    Per epoch: epoch, step, the split evaluated ("val", else "test") and its metrics as
    `<split>_<metric>` (loss, accuracy, top5, perplexity, bits_per_token; per counted
    token for a sequence loss). At the end: final, split "test" and the test metrics.
    The README's "metrics.jsonl" section is this schema; keep the two together."""

    def __init__(self, out_dir: Path, enabled: bool) -> None:
        self.file = (out_dir / "metrics.jsonl").open("a") if enabled else None
        self.tb = _tensorboard(out_dir) if enabled else None
        self.step = 0  # the final record has no step: TensorBoard puts it at the last one

    def write(self, record: dict[str, Any]) -> None:
        if self.file is None:
            return
        self.step = record.get("step", self.step)
        head = {k: record[k] for k in ("step", "epoch") if k in record}
        split = split_of(record)
        record = {**head, **({"split": split} if split else {}), **record}
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        if self.tb is not None:
            for k, v in record.items():
                if _is_scalar(k, v):
                    self.tb.add_scalar(k, v, self.step)

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
        if self.tb is not None:
            self.tb.close()


def _is_scalar(key: str, value: Any) -> bool:
    """A number TensorBoard plots: not the step or epoch (its axes), nor `final`, a marker
    (a bool, which Python counts as an int)."""
    numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
    return numeric and key not in ("step", "epoch")


def split_of(record: dict[str, Any]) -> str | None:
    """The split a record describes, from the keys the runner writes: "train" for a
    training window (it has `lr`), else the split its `<split>_<metric>` keys name; None
    for an epoch that evaluated nothing. Derived here so the runner's records stay as
    they are."""
    if "lr" in record:
        return "train"
    named = {k.split("_", 1)[0] for k in record} & {"val", "test"}
    return named.pop() if len(named) == 1 else None


def _tensorboard(out_dir: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.jsonl is enough
        return None
    return SummaryWriter(str(out_dir / "tb"))


def print_summary(summary: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="summary", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console(stderr=False).print(table)
