"""`specc export-adapter` and `specc merge`: a LoRA run's adapter as PEFT's folder, and the
adapter folded into the base weights (W += scale·B@A) as one safetensors file that loads
strictly into the spec without its `lora` line.

Both read a run's checkpoint (`last.pt`, `best.pt`), or for `merge` also an adapter alone
(`adapter.safetensors` or a PEFT folder) put on the base the spec's `init` statements load.
The settings and base signature recorded with the adapter must be the spec's: a merge with
another rank, scaling or base would write wrong weights without a sound.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from specc import ir
from specc.errors import CheckpointError, SpecError, UsageError
from specc.lang.loader import source_texts
from specc.training import checkpoint, lora
from specc.training.build import build_model
from specc.training.config import apply_overrides
from specc.training.plan import TrainPlan, resolve


@dataclass(frozen=True)
class Written:
    path: Path
    what: str

    def describe(self) -> str:
        return f"wrote {self.path}: {self.what}"


def export_adapter(program: ir.Program, ckpt: Path, output: Path,
                   overrides: list[str] | None = None) -> Written:  # fmt: skip
    """The adapter of checkpoint `ckpt` as a PEFT folder at `output`."""
    try:
        plan = _lora_plan(program, overrides)
        if plan.lora.modules_to_save:
            raise UsageError(
                "export-adapter writes lora_A/lora_B alone; this spec also trains "
                f"modules_to_save {list(plan.lora.modules_to_save)}, which PEFT would miss",
                hint="use `specc merge` for the whole fine-tuned model",
            )
        state, recorded = _adapted_state(program, plan, Path(ckpt))
        tensors = {k: state[k] for k in lora.adapter_names(plan.lora)}
        lora.write_peft(tensors, recorded, Path(output))
    except SpecError as err:
        raise err.with_source(source_texts(program)) from None
    n = sum(t.numel() for t in tensors.values())
    return Written(Path(output), f"PEFT LoRA adapter, {len(recorded['modules'])} layers, "
                                 f"r={recorded['r']}, {n:,} parameters")  # fmt: skip


def merge(program: ir.Program, ckpt: Path, output: Path,
          overrides: list[str] | None = None) -> Written:  # fmt: skip
    """Checkpoint `ckpt`'s adapters folded into its base, written as safetensors."""
    try:
        plan = _lora_plan(program, overrides)
        base = build_model(program, plan)  # the model without adapters
        _refuse_tied_targets(base, plan)
        state, recorded = _adapted_state(program, plan, Path(ckpt))
        merged = lora.merged_state(state, recorded)
        _load_strictly(base, merged, ckpt)
        meta = {"specc.spec_sha256": program.sources[0].sha256,
                "specc.lora_merged": str(recorded["modules"])}  # fmt: skip
        checkpoint.save_safetensors(base.state_dict(), Path(output), meta)
    except SpecError as err:
        raise err.with_source(source_texts(program)) from None
    return Written(Path(output), f"{len(recorded['modules'])} adapters merged into "
                                 f"model `{plan.model.call.name}`")  # fmt: skip


def _lora_plan(program: ir.Program, overrides: list[str] | None) -> TrainPlan:
    plan = resolve(apply_overrides(program, overrides or []))
    if plan.lora is None:
        raise UsageError("the spec's train block has no `lora` statement: nothing to export "
                         "or merge", hint="name the spec the adapter was trained with")  # fmt: skip
    return plan


def _refuse_tied_targets(base: torch.nn.Module, plan: TrainPlan) -> None:
    """An adapted layer whose weight is tied to another (a GPT's lm_head and wte) cannot be
    merged: B@A folded into the shared tensor would change the other layer too."""
    names: dict[int, list[str]] = {}
    for name, p in base.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), []).append(name)
    for module in plan.lora.modules:
        weight = f"{module}.weight"
        others = [n for n in names[id(base.get_parameter(weight))] if n != weight]
        if others:
            raise UsageError(
                f"cannot merge the adapter of `{module}`: its weight is tied to `{others[0]}`, "
                f"so folding it in would change `{others[0]}` too and the merged model would "
                "compute something else",
                hint="keep the adapter apart (the run's checkpoint, or `lora ... (load=)`), or "
                "leave the tied layer out of the lora targets",
            )


def _adapted_state(program: ir.Program, plan: TrainPlan,
                   ckpt: Path) -> tuple[dict[str, torch.Tensor], dict]:  # fmt: skip
    """The adapted model's state_dict and the adapter's recorded settings (checked against
    the spec's), from a run's checkpoint or from an adapter on the spec's base."""
    if ckpt.is_dir() or (ckpt.name.endswith(".safetensors") and _is_adapter(ckpt)):
        if plan.lora.modules_to_save:
            raise UsageError(
                f"{ckpt} holds the adapters alone, not the trained modules_to_save",
                hint="merge the run's checkpoint (last.pt or best.pt) instead",
            )
        if not plan.inits:
            raise UsageError(
                f"{ckpt} holds the adapters alone, and the spec loads no base weights "
                "(no `init` statement): there is nothing to merge them into",
                hint="merge the run's checkpoint (last.pt or best.pt), which holds the base",
            )
        tensors, recorded = lora.read_adapter(ckpt)
        lora.check_settings(recorded, plan.lora, str(ckpt))
        from specc.training.finetune import apply_train_setup

        model = build_model(program, plan)
        apply_train_setup(plan, model, quiet=True)  # the base's `init` weights, adapters
        state = model.state_dict()
        state.update(tensors)
        return state, recorded
    ck = checkpoint.load(ckpt)
    recorded = ck.get("lora") or lora.settings(plan.lora)
    lora.check_settings(recorded, plan.lora, str(ckpt))
    state = ck["model"]
    missing = [k for k in lora.adapter_names(plan.lora) if k not in state]
    if missing:
        raise CheckpointError(f"{ckpt} has no LoRA adapter `{missing[0]}`",
                              hint="name a checkpoint of a run of this spec")  # fmt: skip
    return state, recorded


def _is_adapter(path: Path) -> bool:
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return lora.SETTINGS_METADATA in (f.metadata() or {})
    except Exception:  # not readable: `checkpoint.load` says why
        return False


def _load_strictly(model: torch.nn.Module, state: dict, ckpt: Path) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        reason = checkpoint.misfit_reason(exc)
        raise CheckpointError(
            f"{ckpt} does not fit the spec's base model: {reason[:300]}",
            hint="use the spec (and --set overrides) of the run",
        ) from None
