"""A train plan's fine-tuning applied to a built model: `init` and `freeze`.

`init [target] from "file" (options)` loads a specc checkpoint, a plain state_dict, a
.safetensors file or a `save_pretrained` folder into the whole model or a sub-module, always
through ``torch.load(weights_only=True)`` / safetensors. Prefixes, `ignore=`, `transpose=`
and tied keys map the file's keys and tensors onto the model's, in the order the generated
training script applies them (specc.codegen.train). Frozen parameters stop needing gradients
and frozen BatchNorm layers stay in eval mode. Which names a pattern matches, and the
`group` options, are settled in the plan (specc.training.plan).
"""

from __future__ import annotations

import fnmatch
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import torch
from torch import nn

from specc import ir
from specc.errors import CheckpointError, did_you_mean
from specc.training.plan import FOLDER_WEIGHTS, InitPlan, TrainPlan, frozen_names
from specc.values import loc


def apply_train_setup(plan: TrainPlan, model: nn.Module, *, quiet: bool = False) -> None:
    """Load the `init` weights, add the LoRA adapters (and load the adapter the plan
    starts from), then freeze, on a freshly built model."""
    for init in plan.inits:
        load_init(model, init, quiet=quiet)
    if plan.lora is not None:
        from specc.training.lora import add_adapters, load_adapter

        add_adapters(model, plan.lora)
        if plan.lora.load:
            load_adapter(model, plan.lora, quiet=quiet)
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
    """Load one `init` statement; returns loaded/missing/unexpected/skipped/ignored key
    lists. The steps are the plan's options in the order the training script applies them:
    prefixes, `ignore`, `transpose`, ties, shapes."""
    target: nn.Module = model.get_submodule(stmt.target) if stmt.target else model
    state = _map_keys(read_weights(stmt), target, stmt)
    own = target.state_dict()
    state, ignored = _leave_out_ignored(state, own, stmt)
    state = _transpose(state, stmt)
    state = _fill_ties(state, stmt)
    state, skipped = _check_shapes(state, own, stmt)
    result = target.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if stmt.strict and (missing or unexpected):
        raise _key_mismatch(missing, unexpected, stmt)
    loaded = [k for k in state if k not in unexpected and k not in ignored]
    if not loaded:
        raise CheckpointError(
            f"init: no key of {stmt.file} fits `{stmt.target or 'the model'}`",
            loc(stmt.span),
            hint=_prefix_hint(list(own), list(state))
            or f"its keys look like {list(state)[:3]}; use strip_prefix=/add_prefix=",
        )
    result = {"loaded": loaded, "missing": missing, "unexpected": unexpected,
              "skipped": skipped, "ignored": ignored}  # fmt: skip
    if not quiet:
        _print_summary(stmt, result)
    return result


def read_weights(stmt: InitPlan) -> dict[str, torch.Tensor]:
    """The file's tensors by key (a folder's `model.safetensors`), as a located error when
    it cannot be read."""
    from specc.training import checkpoint

    path = Path(stmt.file)
    if path.is_dir():  # a folder whose name has a suffix, e.g. gpt2.v1
        raise CheckpointError(
            f"init from {stmt.path!r}: it is a folder",
            loc(stmt.span),
            hint=f'write it with a trailing slash to read its {FOLDER_WEIGHTS}: "{stmt.path}/"',
        )
    if stmt.file != stmt.path and not path.exists():
        _missing_folder_weights(stmt)
    try:
        return checkpoint.load(path)["model"]
    except CheckpointError as err:
        raise CheckpointError(f"init from {stmt.path!r}: {err.message}", loc(stmt.span),
                              hint=err.hint) from None  # fmt: skip


def _missing_folder_weights(stmt: InitPlan) -> NoReturn:
    """A located error saying what the folder holds instead of model.safetensors."""
    folder = Path(stmt.file).parent
    if not folder.is_dir():
        raise CheckpointError(f"init from {stmt.path!r}: no such file or folder",
                              loc(stmt.span),
                              hint="a path without a suffix names a folder holding "
                              f"{FOLDER_WEIGHTS}")  # fmt: skip
    found = sorted(p.name for p in folder.iterdir())[:6]
    raise CheckpointError(
        f"init from {stmt.path!r}: the folder holds no {FOLDER_WEIGHTS} (it has: "
        f"{', '.join(found) or 'nothing'})",
        loc(stmt.span),
        hint="save it with save_pretrained(..., safe_serialization=True), or name the file",
    )


def _leave_out_ignored(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                       stmt: InitPlan) -> tuple[dict[str, torch.Tensor], list[str]]:  # fmt: skip
    """`ignore`: the file's matching keys are dropped and the model's keep their own values
    (so `strict` does not count them missing). Returns the state and the model's keys kept."""
    if not stmt.ignore:
        return state, []
    hit = _matcher(stmt.ignore)
    state = {k: v for k, v in state.items() if not hit(k)}
    kept = {k: v for k, v in own.items() if hit(k)}
    return state | kept, list(kept)


def _transpose(state: dict[str, torch.Tensor], stmt: InitPlan) -> dict[str, torch.Tensor]:
    """`transpose`: matching tensors are stored [in, out] (HF's Conv1D); Linear wants
    [out, in]."""
    if not stmt.transpose:
        return state
    hit = _matcher(stmt.transpose)
    return {k: v.t() if hit(k) else v for k, v in state.items()}


def _fill_ties(state: dict[str, torch.Tensor], stmt: InitPlan) -> dict[str, torch.Tensor]:
    """A tied tensor is often saved once (HF leaves out `lm_head.weight`): its other key
    takes the same value, so a strict load does not count it missing."""
    state = dict(state)
    for alias, source in stmt.ties:
        if alias not in state and source in state:
            state[alias] = state[source]
    return state


def _check_shapes(state: dict[str, torch.Tensor], own: dict[str, torch.Tensor],
                  stmt: InitPlan) -> tuple[dict[str, torch.Tensor], list[str]]:  # fmt: skip
    """A key whose shape differs is an error naming both shapes, or with `skip_mismatched`
    left out (the model keeps its fresh tensor). Returns the state and the skipped keys."""
    transposed = _matcher(stmt.transpose)
    kept, skipped = {}, []
    for key, value in state.items():
        if key not in own or tuple(own[key].shape) == tuple(value.shape):
            kept[key] = value
        elif stmt.skip_mismatched:
            skipped.append(key)
        else:
            raise _shape_mismatch(key, list(own[key].shape), value, transposed(key), stmt)
    return kept, skipped


def _shape_mismatch(key: str, want: list[int], value: torch.Tensor, transposed: bool,
                    stmt: InitPlan) -> CheckpointError:  # fmt: skip
    where = f"{stmt.target}.{key}" if stmt.target else key
    got = list(value.shape)
    hint = ("to load everything else and keep the new layer's fresh weights, write "
            "`(skip_mismatched=True)` after the path")  # fmt: skip
    if value.dim() == 2 and got[::-1] == want:
        hint = (
            f"`{key}` is stored as the model stores it: leave it out of transpose="
            if transposed
            else f"`{key}` is stored transposed ([in, out], as HF's Conv1D stores it): "
            f'add it to transpose=, e.g. transpose=["*.{key.rsplit(".", 2)[-2]}.weight"]'
        )
    after = " after transposing" if transposed else ""
    return CheckpointError(
        f"init: `{where}` has shape {want} in the model but {got} in {stmt.file}{after}",
        loc(stmt.span),
        hint=hint,
    )


def _key_mismatch(missing: list[str], unexpected: list[str], stmt: InitPlan) -> CheckpointError:
    """strict=True and the keys differ: a few of each, the closest file key to each missing
    one, and a prefix option when one would make them meet."""
    lines = [f"{len(missing)} keys of the model are missing from the file and "
             f"{len(unexpected)} keys of the file are not in the model"]  # fmt: skip
    for key in missing[:3]:
        near = did_you_mean(key, unexpected)
        lines.append(f"  missing: {key}" + (f" ({near})" if near else ""))
    lines += [f"  unexpected: {key}" for key in unexpected[:3]]
    return CheckpointError(
        "init (strict=True): " + "\n".join(lines),
        loc(stmt.span),
        hint=_prefix_hint(missing, unexpected)
        or "ignore=[...] leaves keys out on both sides; strict=False loads what matches",
    )


def _prefix_hint(model_keys: list[str], file_keys: list[str]) -> str | None:
    """`add_prefix="transformer."` when the file's keys are the model's without it (a
    GPT2Model file for a GPT2LMHeadModel), `strip_prefix=` the other way round."""
    for mk in model_keys[:50]:
        for fk in file_keys[:50]:
            if mk != fk and mk.endswith("." + fk):
                return f'the file\'s keys lack a prefix: add_prefix="{mk[: -len(fk)]}"'
            if mk != fk and fk.endswith("." + mk):
                return f'the file\'s keys have an extra prefix: strip_prefix="{fk[: -len(mk)]}"'
    return None


def _matcher(patterns: tuple[str, ...]) -> Callable[[str], bool]:
    """Whole-key fnmatch, as the training script tests it."""
    return lambda key: any(fnmatch.fnmatchcase(key, p) for p in patterns)


def _print_summary(stmt: InitPlan, result: dict[str, list[str]]) -> None:
    loaded, missing, unexpected = result["loaded"], result["missing"], result["unexpected"]
    skipped, ignored = result["skipped"], result["ignored"]
    print(
        f"init {stmt.target or 'model'} from {stmt.path}: {len(loaded)} tensors loaded, "
        f"{len(missing)} missing, {len(unexpected)} unexpected"
        + (f", {len(ignored)} kept (ignore=)" if ignored else "")
        + (f", {len(skipped)} skipped (shape changed): {', '.join(skipped)}" if skipped else ""),
        file=sys.stderr,
    )
    for k in missing[:10]:
        print(f"  missing: {k}", file=sys.stderr)
    for k in unexpected[:10]:
        print(f"  unexpected: {k}", file=sys.stderr)


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
