"""`init` and `freeze` statements of a train block (fine-tuning pretrained parts)."""

from __future__ import annotations

from torch import nn

from specc import ir


def apply_train_setup(program: ir.Program, model: nn.Module, *, quiet: bool = False) -> None:
    """Load `init` weights and apply `freeze` patterns to a freshly built model."""
    train = program.trains[0] if program.trains else None
    if train is None or not (train.inits or train.freezes):
        return
    from specc.errors import SpecError
    from specc.values import loc

    # The composition/fine-tuning issue implements these; refuse clearly until then.
    stmt = (train.inits or train.freezes)[0]
    raise SpecError("`init` and `freeze` are not supported yet", loc(stmt.span))


def frozen_counts(program: ir.Program, inst: ir.ModelInstance) -> dict[str, int] | None:
    """Frozen parameter counts per layer for `specc check`, or None without freezes."""
    return None
