"""Checkpoints: written atomically (temp file, fsync, rename), read only with
``torch.load(weights_only=True)`` or safetensors, never an unrestricted unpickle."""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc.errors import CheckpointError
from specc.training.lora import ADAPTER_SUFFIXES

# safetensors refuses two names for one tensor (a tied weight): a file stores it once and
# lists each further name here, as JSON {alias: stored name}; `load` restores the aliases.
TIES_METADATA = "specc.ties"
COMPILED_PREFIX = "_orig_mod."


def save(state: dict[str, Any], path: Path) -> None:
    """Write `state` to `path` so that a crash at any moment leaves the old file intact."""
    from specc.files import write_atomic

    try:
        write_atomic(path, lambda f: torch.save(state, f), durable=True)
    except OSError as exc:
        raise CheckpointError(
            f"cannot write checkpoint {path}: {exc.strerror or exc}",
            hint="the previous checkpoint at that path is unchanged",
        ) from None


def load(path: Path) -> dict[str, Any]:
    """Load a checkpoint or plain state_dict; clear errors for missing, truncated, corrupt
    or unsafe files."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        return {"model": _load_safetensors(path)}
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path}: it holds objects that could run code when unpickled "
            f"({str(exc).splitlines()[0][:200]})",
            hint="specc loads only tensors and plain containers; re-save the weights as a "
            "state_dict or .safetensors",
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as exc:
        raise CheckpointError(
            f"{path} is truncated or corrupt and cannot be read ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'})",
            hint="use the previous good checkpoint (e.g. best.pt) or start without --resume",
        ) from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} does not hold a state_dict or a specc checkpoint")
    if "model" in obj and isinstance(obj["model"], dict):
        return {**obj, "model": uncompiled(obj["model"])}
    if all(isinstance(v, torch.Tensor) for v in obj.values()):
        return {"model": uncompiled(obj)}
    raise CheckpointError(f"{path} does not hold a state_dict or a specc checkpoint")


def uncompiled(state: dict[str, Any]) -> dict[str, Any]:
    """The keys without `torch.compile`'s `_orig_mod.` (a compiled model's state_dict has
    it; the model it was compiled from does not)."""
    return {k.replace(COMPILED_PREFIX, ""): v for k, v in state.items()}


def misfit_reason(exc: BaseException) -> str:
    """What `load_state_dict` found wrong: torch's first line only says "Error(s) in
    loading state_dict for X:", the missing or unexpected keys come after it."""
    lines = [ln.strip() for ln in str(exc).splitlines()]
    return next((ln for ln in lines if ln and not ln.startswith("Error(s) in")), "")


def load_into(model: nn.Module, path: Path, name: str) -> dict[str, Any]:
    """Load checkpoint `path` (`load`'s checks) into `model`, the spec's model `name`, and
    return the checkpoint; weights that do not fit the model are a CheckpointError."""
    state = load(path)
    own = set(model.state_dict())
    absent = own - set(state["model"])
    # a base checkpoint fits the adapted model: its fresh adapters add nothing (B is zero)
    strict = not (absent and all(k.endswith(ADAPTER_SUFFIXES) for k in absent))
    try:
        model.load_state_dict(state["model"], strict=strict)
    except (RuntimeError, KeyError, TypeError) as exc:
        reason = misfit_reason(exc)
        lora = any(k.endswith(ADAPTER_SUFFIXES) for k in state["model"]) and not any(
            k.endswith(ADAPTER_SUFFIXES) for k in own
        )
        raise CheckpointError(
            f"{path} does not fit model `{name}`: {reason[:300] or type(exc).__name__}",
            hint="a LoRA run's checkpoint: `specc merge` folds its adapters in, for a file "
            "this model loads"
            if lora
            else "a checkpoint of a run with --set overrides needs the same --set here",
        ) from None
    return state


def save_safetensors(
    state: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None
) -> tuple[tuple[str, str], ...]:
    """Write a state_dict as safetensors, each tensor once: a name whose tensor is another's
    (weight tying) is listed in the metadata instead; returns those (alias, stored name)."""
    from safetensors.torch import save_file

    stored, ties = _untied(state)
    meta = dict(metadata or {})
    if ties:
        meta[TIES_METADATA] = json.dumps(dict(ties))
    save_file(stored, str(path), metadata=meta)
    return ties


def _untied(state: dict[str, torch.Tensor]) -> tuple[dict, tuple[tuple[str, str], ...]]:
    """The tensors to store and the ties. Two names are tied when they view the same memory
    the same way; a tensor that only overlaps another's memory is stored as a copy."""
    stored: dict[str, torch.Tensor] = {}
    ties: list[tuple[str, str]] = []
    views: dict[tuple, str] = {}  # (memory, offset, shape, stride, dtype) -> stored name
    memory: set[int] = set()  # the storages stored tensors use
    for key, t in state.items():
        t = t.detach().cpu()
        ptr = t.untyped_storage().data_ptr()
        view = (ptr, t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() == 0:
            stored[key] = t.clone()
        elif view in views:
            ties.append((key, views[view]))
        elif not t.is_contiguous() or ptr in memory:
            stored[key] = t.clone(memory_format=torch.contiguous_format)
        else:
            views[view] = key
            memory.add(ptr)
            stored[key] = t
    return stored, tuple(ties)


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, with the tied names its metadata lists."""
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            state = {k: f.get_tensor(k) for k in f.keys()}
            ties = json.loads((f.metadata() or {}).get(TIES_METADATA, "{}"))
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"cannot read {path}: {exc}") from None
    if not isinstance(ties, dict) or not all(
        isinstance(a, str) and isinstance(s, str) and s in state for a, s in ties.items()
    ):
        raise CheckpointError(f"{path}: its `{TIES_METADATA}` metadata is malformed")
    for alias, source in ties.items():
        state[alias] = state[source]
    return state
