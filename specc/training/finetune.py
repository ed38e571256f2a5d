"""A train plan's fine-tuning applied to a built model: `init` and `freeze`.

`init [target] from "file" (options)` loads a specc checkpoint, a plain state_dict or a
.safetensors file into the whole model or a sub-module, always through
``torch.load(weights_only=True)`` / safetensors. Frozen parameters stop needing gradients
and frozen BatchNorm layers stay in eval mode. Which names a pattern matches, and the
`group` options, are settled in the plan (specc.training.plan).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from specc import ir
from specc.errors import CheckpointError
from specc.training.plan import InitPlan, TrainPlan, frozen_names
from specc.values import loc


def apply_train_setup(plan: TrainPlan, model: nn.Module, *, quiet: bool = False) -> None:
    """Load the `init` weights, then freeze, on a freshly built model."""
    for init in plan.inits:
        load_init(model, init, quiet=quiet)
    frozen = set(plan.frozen)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    for path in plan.frozen_norms:
        keep_in_eval(model.get_submodule(path))


def keep_in_eval(module: nn.Module) -> None:
    """A frozen BatchNorm layer must not update its running stats: pin it to eval mode."""
    module.train = _stay_eval.__get__(module)  # type: ignore[method-assign]
    module.eval()


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def load_init(model: nn.Module, stmt: InitPlan, *, quiet: bool = False) -> dict[str, list]:
    """Load one `init` statement; returns loaded/missing/unexpected/skipped key lists."""
    from specc.training import checkpoint

    target: nn.Module = model.get_submodule(stmt.target) if stmt.target else model
    try:
        state = checkpoint.load(Path(stmt.path))["model"]
    except CheckpointError as err:
        raise CheckpointError(f"init from {stmt.path!r}: {err.message}", loc(stmt.span),
                              hint=err.hint) from None  # fmt: skip
    state = _map_keys(state, target, stmt)
    own = target.state_dict()
    skipped = []
    for key, value in list(state.items()):
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            if stmt.skip_mismatched:
                skipped.append(key)
                del state[key]
                continue
            where = f"{stmt.target}.{key}" if stmt.target else key
            raise CheckpointError(
                f"init: `{where}` has shape {list(own[key].shape)} in the model but "
                f"{list(value.shape)} in {stmt.path}",
                loc(stmt.span),
                hint="to load everything else and keep the new layer's fresh weights, write "
                "`(skip_mismatched=True)` after the path",
            )
    result = target.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if stmt.strict and (missing or unexpected):
        raise CheckpointError(
            f"init (strict=True): {len(missing)} missing and {len(unexpected)} unexpected "
            f"keys, e.g. {(missing + unexpected)[:3]}",
            loc(stmt.span),
        )
    loaded = [k for k in state if k not in unexpected]
    if not loaded:
        raise CheckpointError(
            f"init: no key of {stmt.path} fits `{stmt.target or 'the model'}`",
            loc(stmt.span),
            hint=f"its keys look like {list(state)[:3]}; use strip_prefix=/add_prefix=",
        )
    if not quiet:
        what = stmt.target or "model"
        print(
            f"init {what} from {stmt.path}: {len(loaded)} tensors loaded, "
            f"{len(missing)} missing, {len(unexpected)} unexpected"
            + (
                f", {len(skipped)} skipped (shape changed): {', '.join(skipped)}" if skipped else ""
            ),
            file=sys.stderr,
        )
        for k in missing[:10]:
            print(f"  missing: {k}", file=sys.stderr)
        for k in unexpected[:10]:
            print(f"  unexpected: {k}", file=sys.stderr)
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected, "skipped": skipped}


def _map_keys(state: dict[str, torch.Tensor], target: nn.Module,
              stmt: InitPlan) -> dict[str, torch.Tensor]:  # fmt: skip
    """Strip or add key prefixes so a checkpoint of a whole model fits a sub-module."""
    strip, add, prefix = stmt.strip_prefix, stmt.add_prefix, stmt.target
    if strip:
        state = {k.removeprefix(strip): v for k, v in state.items() if k.startswith(strip)}
    if add:
        state = {add + k: v for k, v in state.items()}
    if strip or add:
        return state
    own = set(target.state_dict())
    if prefix and not (own & set(state)):
        # A checkpoint of a model that had this sub-module under the same name.
        sub = {k.removeprefix(prefix + "."): v for k, v in state.items()
               if k.startswith(prefix + ".")}  # fmt: skip
        if sub:
            return sub
    return dict(state)


def frozen_counts(program: ir.Program, inst: ir.ModelInstance) -> dict[str, int] | None:
    """Frozen parameter counts per layer for `specc check`, or None without freezes."""
    train = program.trains[0] if program.trains else None
    if train is None or not train.freezes:
        return None
    model_field = next((f for f in train.fields if f.key == "model"), None)
    if model_field is None or not isinstance(model_field.value, ir.Call):
        return None
    if model_field.value.func != inst.model:
        return None
    from specc.builder import build_module
    from specc.lang.plugins import load_plugins

    with torch.device("meta"):
        model = build_module(inst, load_plugins(program))
    frozen = frozen_names(train, model)
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        if name in frozen:
            layer = name.split(".", 1)[0]
            counts[layer] = counts.get(layer, 0) + p.numel()
    return counts
