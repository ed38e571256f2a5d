"""The suite's entry point: runs the sections, prints the table, writes RESULTS.md."""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.report import Row, markdown_table, summary_line
from benchmarks.section import crashed
from benchmarks.timing import Background

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "RESULTS.md"
SECTIONS = ("cli", "lsp", "startup", "compiler", "modules", "e2e", "lm")  # cheapest first


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="specc's benchmark suite (module overhead, end-to-end training, "
        "compiler scaling, CLI start-up, `specc run` start-up). Prints a markdown table of "
        "target, measured ratio and PASS/FAIL per row.",
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny sizes, one round, no torch.compile (< 60 s)"
    )
    p.add_argument(
        "--only",
        action="append",
        choices=SECTIONS,
        metavar="NAME",
        help=f"run only this section (repeatable): {', '.join(SECTIONS)}",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="write the markdown here (default: benchmarks/RESULTS.md for a full run of "
        "every section; --quick and --only write only where --out says)",
    )
    p.add_argument("--no-compile", action="store_true", help="skip the torch.compile measurements")
    p.add_argument(
        "--threads",
        type=int,
        help="torch intra-op threads in each section's process (default: torch's own, as users get "
        "it; 1 is far steadier when another process keeps a core busy)",
    )
    return p


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _load() -> str:
    try:
        return "/".join(f"{v:.2f}" for v in os.getloadavg())
    except OSError:
        return "?"


def _header(
    argv: list[str], started: str, load_start: str, seconds: float, background: dict
) -> str:
    import torch
    import torchvision

    command = "python -m benchmarks" + ("" if not argv else " " + shlex.join(argv))
    return "\n".join(
        [
            "# specc benchmark results",
            "",
            f"- date: {started}",
            f"- machine: {os.cpu_count()} cores ({_cpu_model()}), "
            f"torch {torch.__version__} ({torch.get_num_threads()} threads), "
            f"torchvision {torchvision.__version__}, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}",
            f"- command: `{command}` (from the repository root, in its .venv)",
            f"- load average (1/5/15 min) at start {load_start}, at end {_load()}: the machine "
            "is shared with other processes, so every comparison is paired (variants "
            "alternate round by round; ratios are per round; medians with min–max)",
            "- CPU used by other processes while each section ran (cores, of "
            f"{os.cpu_count()}): "
            + ", ".join(
                f"{k} {v:.2f}" if v is not None else f"{k} ?" for k, v in background.items()
            ),
            f"- suite wall time: {seconds:.0f} s",
            "",
            "",
        ]
    )


def _run_section(
    name: str, args: argparse.Namespace, tmp: Path, elapsed: float, env: dict[str, str]
) -> tuple[list[Row], list[str]]:
    """The section's rows and notes, from a fresh process (see benchmarks/section.py)."""
    spec = {
        "section": name,
        "quick": args.quick,
        "compile": not (args.quick or args.no_compile),
        "tmp": str(tmp),
        "repo": str(REPO),
        "threads": args.threads,
        "elapsed": elapsed,
    }
    cmd = [sys.executable, "-m", "benchmarks.section", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, text=True, check=False)
    lines = proc.stdout.strip().splitlines()
    try:
        out = json.loads(lines[-1])
        return [Row(**r) for r in out["rows"]], out["notes"]
    except (IndexError, ValueError, KeyError, TypeError):
        return [crashed(name, f"the section's process exited {proc.returncode}")], []


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = _parser().parse_args(argv)
    sections = [s for s in SECTIONS if not args.only or s in args.only]
    out = args.out
    if out is None and not args.quick and not args.only:
        out = RESULTS
    started = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_start = _load()
    t0 = time.perf_counter()

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - t0:6.1f}s] {msg}", file=sys.stderr, flush=True)

    rows: list[Row] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory(prefix="specc-bench-") as tmp:
        # A fresh inductor cache: compile times are cold, and nothing is left behind.
        env = dict(os.environ, TORCHINDUCTOR_CACHE_DIR=str(Path(tmp) / "inductor"))
        env.setdefault("TRITON_CACHE_DIR", str(Path(tmp) / "triton"))
        background: dict[str, float | None] = {}
        for name in sections:
            log(f"section {name}")
            meter = Background()
            section_rows, section_notes = _run_section(
                name, args, Path(tmp), time.perf_counter() - t0, env
            )
            rows += section_rows
            notes += section_notes
            background[name] = meter.cores()
    if args.threads:  # for the header's thread count
        import torch

        torch.set_num_threads(args.threads)
    text = _header(argv, started, load_start, time.perf_counter() - t0, background)
    text += markdown_table(rows) + "\n\n" + summary_line(rows) + "\n"
    if notes:
        text += "\nNotes:\n" + "".join(f"- {n}\n" for n in notes)
    print(text)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
        log(f"wrote {out}")
    # A missed target is a result; only a section that crashed is an error.
    return 1 if any(r.name == "section crashed" for r in rows) else 0
