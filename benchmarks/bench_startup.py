"""Section 5, start-up: `specc run specs/cifar10.spec` up to its first training step
against a bare `import torch, torchvision`.

Both are whole processes, timed wall to wall from this process, alternating round by
round; each round gives one difference A − B. A is `python -m benchmarks.first_step run
specs/cifar10.spec --set ...`: specc's own console entry point, ended by a global torch
module hook as the first training forward begins (`benchmarks/first_step.py`). B is
`python -c "import torch, torchvision, os; os._exit(0)"`: A also ends with `os._exit`, so
neither pays interpreter teardown; C, the same import ending normally, shows what that
teardown costs.

The data are 5,000 training and 1,000 test images in CIFAR-10's own file format, written
by `tests/datafiles.py` (no download); the spec is the shipped tutorial spec, pointed at
them with `--set`. specc's modules are byte-compiled as an installed package's are (pip
compiles at install; this suite's shell may set PYTHONDONTWRITEBYTECODE, which would make
every run compile specc's sources again), and the warm-up round fills the caches a second
run of specc finds (byte code, the parser tables).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

from benchmarks.bench_e2e import write_data
from benchmarks.report import INFO, Context, Row, verdict
from benchmarks.timing import Spread, paired, ratio

SECTION = "startup"
TARGET_S = 0.3  # issue 13, item 7
N_TRAIN, N_TEST = 5000, 1000


def _timer(ctx: Context, cmd: list[str], env: dict[str, str], marker: str | None = None):
    def measure() -> float:
        start = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ctx.repo, env=env, capture_output=True, check=False)
        elapsed = time.perf_counter() - start
        out = proc.stdout.decode(errors="replace")
        if proc.returncode != 0 or (marker is not None and marker not in out):
            err = proc.stderr.decode(errors="replace").strip().splitlines()[-3:]
            raise RuntimeError(f"{' '.join(cmd[:4])} ... exited {proc.returncode}: {err}")
        return elapsed

    return measure


def _difference(a: Spread, b: Spread) -> Spread:
    return Spread(tuple(x - y for x, y in zip(a.values, b.values, strict=True)))


def run(ctx: Context) -> list[Row]:
    root = ctx.tmp / "startup-data"
    write_data(root, n_train=N_TRAIN, n_test=N_TEST)
    quoted = json.dumps(str(root))
    overrides = [
        f"cifar.train.root={quoted}",
        f"cifar.test.root={quoted}",
        "cifar.train.verify=False",
        "cifar.test.verify=False",
    ]
    specc_cmd = [sys.executable, "-m", "benchmarks.first_step", "run", "specs/cifar10.spec"]
    specc_cmd += [a for o in overrides for a in ("--set", o)]
    specc_cmd += ["--runs-dir", str(ctx.tmp / "startup-runs")]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    imports = "import torch, torchvision"
    variants = {
        "specc": _timer(ctx, specc_cmd, env, marker="first-step"),
        "import": _timer(ctx, [sys.executable, "-c", f"{imports}, os; os._exit(0)"], env),
        "import+exit": _timer(ctx, [sys.executable, "-c", imports], env),
    }
    rounds, warmup = (1, 1) if ctx.quick else (7, 1)
    ctx.log(f"startup: {rounds} rounds of specc run / import / import with teardown")
    times = paired(variants, rounds=rounds, warmup=warmup)
    a, b, c = times["specc"], times["import"], times["import+exit"]
    diff = _difference(a, b)
    return [
        Row(
            SECTION,
            "`specc run specs/cifar10.spec` to its first training step − `import torch, "
            f"torchvision` (CIFAR-format files, {N_TRAIN:,} train / {N_TEST:,} test images)",
            f"<= {TARGET_S} s",
            f"{diff.fmt(3)} s: {a.fmt(3)} s vs {b.fmt(3)} s",
            ratio(a, b).fmt(3) + "×",
            verdict(diff.median, "<=", TARGET_S),
        ),
        Row(
            SECTION,
            "interpreter teardown after `import torch, torchvision` (not in the row above)",
            "reported",
            f"{_difference(c, b).fmt(3)} s: {c.fmt(3)} s vs {b.fmt(3)} s",
            ratio(c, b).fmt(3) + "×",
            INFO,
        ),
    ]
