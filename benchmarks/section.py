"""One section of the suite in a process of its own: ``python -m benchmarks.section JSON``.

`run.py` starts one per section, so nothing a section leaves in its process changes the
next one's numbers. torch.compile is the case that made this necessary: after it has run
once, eager CPU training steps in the same process were 1.3-1.9x slower here (its compile
workers and threads stay), and the e2e section used to run right after `modules` compiled
four networks. Prints the section's rows and notes as one JSON line on stdout; progress
goes to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import traceback
from pathlib import Path

from benchmarks.report import FAIL, Context, Row


def crashed(name: str, why: str) -> Row:
    return Row(name, "section crashed", "runs", why, "", FAIL)


def main(argv: list[str]) -> int:
    args = json.loads(argv[0])
    name, started = args["section"], time.perf_counter() - args["elapsed"]

    def log(msg: str) -> None:
        print(f"[{time.perf_counter() - started:6.1f}s] {msg}", file=sys.stderr, flush=True)

    if args["threads"]:
        import torch

        torch.set_num_threads(args["threads"])
    ctx = Context(
        quick=args["quick"],
        compile=args["compile"],
        tmp=Path(args["tmp"]),
        repo=Path(args["repo"]),
        log=log,
        threads=args["threads"],
    )
    try:
        module = __import__(f"benchmarks.bench_{name}", fromlist=["run"])
        rows = module.run(ctx)
    except Exception as exc:  # reported as a row: one broken section must not hide the others
        traceback.print_exc()
        rows = [crashed(name, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}")]
    print(json.dumps({"rows": [dataclasses.asdict(r) for r in rows], "notes": ctx.notes}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
