"""`specc ARGS` that ends the process as its first training step begins:
``python -m benchmarks.first_step run SPEC ...``.

The start-up section times this as a whole process. It runs specc's own console entry
point (``specc.cli.main``) unchanged; the only addition is one of torch's global module
forward pre-hooks (``torch.nn.modules.module.register_module_forward_pre_hook``). It
fires before every module call and acts on the first one that is a training step's: a
module with trainable parameters, in training mode, with autograd on. (Transforms are
modules too, but have no parameters; the runner's kernel probe runs the model in eval
mode without grad.) The hook writes ``first-step`` to stdout and ends the process with
``os._exit(0)``, so neither the step itself (its kernels' first-call costs are training
time, paid by any loop) nor anything after it is timed. Nothing in specc is patched.

The hook is registered the moment torch defines it (an import hook waits for
`torch.nn.modules.module`), so torch is imported when specc imports it, as in `specc run`:
importing it first would change more than the order, since the collector's passes would
then scan torch's objects from the start.
"""

from __future__ import annotations

import importlib.machinery
import os
import sys

MARKER = b"first-step\n"


def _stop_at_training_forward(module, args) -> None:
    import torch

    if (
        module.training
        and torch.is_grad_enabled()
        and any(p.requires_grad for p in module.parameters())
    ):
        os.write(1, MARKER)
        os._exit(0)


class _HookOnImport:
    """A meta path finder that registers the hook once torch's Module module is loaded."""

    name = "torch.nn.modules.module"

    def find_spec(self, name, path, target=None):
        if name != self.name:
            return None
        sys.meta_path.remove(self)
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run_module = spec.loader.exec_module

        def exec_module(module) -> None:
            run_module(module)
            module.register_module_forward_pre_hook(_stop_at_training_forward)

        spec.loader.exec_module = exec_module
        return spec


def main(argv: list[str]) -> int:
    sys.meta_path.insert(0, _HookOnImport())
    from specc.cli import main as specc_main

    rc = specc_main(argv)
    print(f"the run ended (exit {rc}) without a training step", file=sys.stderr)
    return rc or 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
