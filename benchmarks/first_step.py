"""`specc ARGS` that ends the process at its first training step:
``python -m benchmarks.first_step run SPEC ...``.

The start-up section times this as a whole process. It runs specc's own console entry
point (``specc.cli.main``) unchanged; the only addition is torch's global optimizer
step pre-hook (``torch.optim.optimizer.register_optimizer_step_pre_hook``), which fires
right before the first ``optimizer.step()`` of the run, after the first batch's forward
and backward. The hook writes ``first-step`` to stdout and ends the process with
``os._exit(0)``, so nothing after that point (the rest of the epoch, checkpoints, the
summary, interpreter teardown) is timed. Nothing in specc is patched.

torch is imported here, before specc, to register the hook; `specc run` imports torch
anyway, so the process does the same work in a different order.
"""

from __future__ import annotations

import os
import sys

MARKER = b"first-step\n"


def _stop(optimizer, args, kwargs) -> None:
    os.write(1, MARKER)
    os._exit(0)


def main(argv: list[str]) -> int:
    from torch.optim.optimizer import register_optimizer_step_pre_hook

    register_optimizer_step_pre_hook(_stop)
    from specc.cli import main as specc_main

    rc = specc_main(argv)
    print(f"the run ended (exit {rc}) without an optimizer step", file=sys.stderr)
    return rc or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
