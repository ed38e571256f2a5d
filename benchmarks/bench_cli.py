"""Section 4, CLI start-up: `specc --help`, `--version`, `check` against `import torch`.

Each command is a fresh process, timed wall to wall; the commands alternate round by
round. Which packages a command imports is read from a separate ``python -X importtime``
run of the same command.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

from benchmarks.report import FAIL, INFO, NA, PASS, Context, Row, verdict
from benchmarks.timing import paired, ratio

SECTION = "cli"


def _specc(*args: str) -> list[str]:
    script = Path(sys.executable).with_name("specc")
    return [str(script), *args] if script.exists() else [sys.executable, "-m", "specc", *args]


def _timer(ctx: Context, cmd: list[str]):
    def measure() -> float:
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ctx.repo, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        if proc.returncode != 0:
            err = proc.stderr.decode(errors="replace").strip().splitlines()[-1:]
            raise RuntimeError(f"{' '.join(cmd[-3:])} exited {proc.returncode}: {err}")
        return elapsed

    return measure


def imported_packages(ctx: Context, args: list[str]) -> set[str] | str:
    """Top-level packages `specc ARGS` imports (from -X importtime), or an error text."""
    cmd = [sys.executable, "-X", "importtime", "-m", "specc", *args]
    proc = subprocess.run(cmd, cwd=ctx.repo, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        return f"exit {proc.returncode}"
    names = set()
    for line in proc.stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            name = line.rsplit("|", 1)[1].strip()
            names.add(name.split(".")[0])
    return names


def run(ctx: Context) -> list[Row]:
    out = ctx.tmp / "cli_net.py"
    commands = {
        "import torch": [sys.executable, "-c", "import torch"],
        "specc --help": _specc("--help"),
        "specc --version": _specc("--version"),
        "specc check specs/cifar_net.spec": _specc("check", "specs/cifar_net.spec"),
    }
    if ctx.quick:  # the smoke run: one round, and `check` only through -X importtime below
        del commands["specc check specs/cifar_net.spec"]
    rounds, warmup = (1, 0) if ctx.quick else (3, 1)
    times = paired({n: _timer(ctx, c) for n, c in commands.items()}, rounds=rounds, warmup=warmup)
    torch_t = times["import torch"]
    rows = []
    for name in ("specc --help", "specc --version"):
        rows.append(
            Row(
                SECTION,
                f"`{name}` wall time",
                "< 0.5 s",
                f"{times[name].fmt(3)} s vs import torch {torch_t.median:.3f} s",
                ratio(times[name], torch_t).fmt(3) + "× import torch",
                verdict(times[name].median, "<", 0.5),
            )
        )
    name = "specc check specs/cifar_net.spec"
    if name in times:
        rows.append(
            Row(
                SECTION,
                f"`{name}` wall time",
                "reported",
                f"{times[name].fmt(3)} s vs import torch {torch_t.median:.3f} s",
                ratio(times[name], torch_t).fmt(3) + "× import torch",
                INFO,
            )
        )
    import_checks = (
        (("--help",), ("torch", "torchvision")),
        (("--version",), ("torch", "torchvision")),
        (("check", "specs/cifar_net.spec"), ("torchvision",)),
        (("compile", "specs/cifar_net.spec", "-o", str(out)), ("torchvision",)),
        (("check", "specs/cifar10.spec"), ()),  # uses CIFAR10: torchvision is allowed
    )
    if ctx.quick:
        import_checks = import_checks[:1] + import_checks[2:3]
    for args, banned in import_checks:
        got = imported_packages(ctx, list(args))
        shown = " ".join(a if a != str(out) else "OUT.py" for a in args)
        label = f"`specc {shown}` imports"
        if isinstance(got, str):  # `compile` may not work yet while codegen is written
            rows.append(Row(SECTION, label, "runs", got, "", NA if "compile" in args else FAIL))
            continue
        seen = [p for p in ("torch", "torchvision") if p in got]
        measured = ", ".join(seen) if seen else "neither torch nor torchvision"
        if banned:
            bad = [p for p in banned if p in got]
            target = "no " + " / ".join(banned)
            rows.append(Row(SECTION, label, target, measured, "", FAIL if bad else PASS))
        else:
            rows.append(Row(SECTION, label, "reported (spec uses torchvision)", measured, "", INFO))
    return rows
