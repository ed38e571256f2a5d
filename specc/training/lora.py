"""LoRA at run time: the adapter layer, putting it on a built model, and its files.

`LoRALinear` keeps the Linear's own `weight` and `bias` under their names, so a base
checkpoint's keys are the adapted model's keys too (a specc checkpoint of a LoRA run is the
base's state_dict plus `<path>.lora_A.weight` / `<path>.lora_B.weight`). PEFT renames the
base to `<path>.base_layer.weight`; specc does not, which is what lets `merge` write a file
that loads strictly into the spec without its `lora` line. The computation is PEFT's:
`linear(x) + lora_B(lora_A(dropout(x))) * scale` (the scale applied before lora_B, where
it costs r multiplies per position), A kaiming-uniform (a=√5), B zero.

Files: `adapter.safetensors` (specc's: the adapter tensors, the settings and the base's
signature as metadata) and a PEFT folder (`adapter_model.safetensors` with keys
`base_model.model.<path>.lora_A.weight`, and `adapter_config.json`).
"""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.nn import functional as F

from specc.errors import CheckpointError

if TYPE_CHECKING:
    from specc.training.plan import LoraPlan

ADAPTER_FILE = "adapter.safetensors"  # what each LoRA run writes next to last.pt
PEFT_WEIGHTS = "adapter_model.safetensors"
PEFT_CONFIG = "adapter_config.json"
PEFT_PREFIX = "base_model.model."
SETTINGS_METADATA = "specc.lora"  # the JSON settings in an adapter file's metadata
BASE_METADATA = "specc.base_sha256"  # in a PEFT folder's weights, which specc wrote
ADAPTER_KEYS = ("lora_A.weight", "lora_B.weight")
ADAPTER_SUFFIXES = tuple("." + k for k in ADAPTER_KEYS)  # an adapter's keys in a state_dict


class LoRALinear(nn.Module):
    """A frozen Linear plus a trainable low-rank update: y = xWᵀ + b + scale·B(A(drop(x)))."""

    def __init__(self, base: nn.Linear, r: int, scale: float, dropout: float) -> None:
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias  # the base's keys, unchanged
        self.lora_A = nn.Linear(base.in_features, r, bias=False, device=base.weight.device)
        self.lora_B = nn.Linear(r, base.out_features, bias=False, device=base.weight.device)
        nn.init.kaiming_uniform_(self.lora_A.weight, a=math.sqrt(5))  # PEFT's init
        nn.init.zeros_(self.lora_B.weight)  # the adapted model starts as the base
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # scaled at rank r, before lora_B: r numbers per position instead of out_features.
        # Added out of place: an in-place add to linear's 3-D output (a view of a 2-D addmm)
        # costs autograd three full-size copies in backward (CopySlices).
        update = self.lora_B(self.lora_A(self.dropout(x)) * self.scale)
        return F.linear(x, self.weight, self.bias) + update


def add_adapters(model: nn.Module, plan: LoraPlan) -> None:
    """Replace each planned Linear of `model` by a LoRALinear around it (in place)."""
    for path in plan.modules:
        parent_path, _, name = path.rpartition(".")
        parent = model.get_submodule(parent_path) if parent_path else model
        base = parent.get_submodule(name)
        setattr(parent, name, LoRALinear(base, plan.r, plan.scale, plan.dropout))


def adapter_names(plan: LoraPlan) -> tuple[str, ...]:
    """The adapters' parameter names in the model, in the plan's module order."""
    return tuple(f"{m}.{k}" for m in plan.modules for k in ADAPTER_KEYS)


def base_signature(model_name: str, module: nn.Module) -> str:
    """A hash of the base model's architecture: its name and each state_dict key's shape
    and dtype. An adapter records it; merging onto another architecture is refused."""
    keys = [(k, list(v.shape), str(v.dtype)) for k, v in module.state_dict().items()]
    text = json.dumps({"model": model_name, "keys": keys}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def settings(plan: LoraPlan) -> dict[str, Any]:
    """What an adapter file records: enough to rebuild and merge it, and to refuse a base
    or a setting it was not trained with."""
    return {"r": plan.r, "alpha": plan.alpha, "rslora": plan.rslora, "dropout": plan.dropout,
            "modules": list(plan.modules), "base_sha256": plan.base_sha256}  # fmt: skip


def scale_of(recorded: dict[str, Any]) -> float:
    r, alpha = recorded["r"], recorded["alpha"]
    return alpha / math.sqrt(r) if recorded.get("rslora") else alpha / r


# ---- specc's adapter file -------------------------------------------------------------


def write_adapter(model_state: dict[str, torch.Tensor], plan: LoraPlan, path: Path,
                  spec_sha256: str) -> None:  # fmt: skip
    """The adapter tensors of a model state_dict, with the settings, written alone."""
    from specc.training.checkpoint import save_safetensors

    tensors = {k: model_state[k].detach().cpu().contiguous() for k in adapter_names(plan)}
    meta = {SETTINGS_METADATA: json.dumps(settings(plan)), "specc.spec_sha256": spec_sha256}
    tmp = path.with_name(f".{path.name}.tmp")
    save_safetensors(tensors, tmp, meta)
    tmp.replace(path)


def read_adapter(
    path: Path, peft_folder: bool | None = None
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """An adapter's tensors (keyed by model path) and settings, from specc's
    `adapter.safetensors` or a PEFT folder (`peft_folder`; None: whichever `path` is on
    disk); anything unreadable is a CheckpointError."""
    path = Path(path)
    if path.is_dir() if peft_folder is None else peft_folder:
        return _read_peft(path)
    if not path.exists():
        raise CheckpointError(f"adapter not found: {path}",
                              hint="name a run's adapter.safetensors or a PEFT folder")  # fmt: skip
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
            recorded = json.loads((f.metadata() or {})[SETTINGS_METADATA])
    except KeyError:
        raise CheckpointError(f"{path} is not a specc adapter: it has no LoRA settings") from None
    except Exception as exc:  # safetensors and json raise their own types
        raise CheckpointError(f"cannot read adapter {path}: {exc}") from None
    return tensors, recorded


# ---- PEFT's folder --------------------------------------------------------------------


def write_peft(tensors: dict[str, torch.Tensor], recorded: dict[str, Any], folder: Path) -> None:
    """`adapter_model.safetensors` + `adapter_config.json` as PEFT's `save_pretrained`."""
    from safetensors.torch import save_file

    folder.mkdir(parents=True, exist_ok=True)
    # the base's signature goes in the weights' metadata: PEFT warns about unknown config keys
    meta = {"format": "pt", BASE_METADATA: recorded["base_sha256"] or ""}
    save_file({PEFT_PREFIX + k: v.contiguous() for k, v in tensors.items()},
              str(folder / PEFT_WEIGHTS), metadata=meta)  # fmt: skip
    config = {
        "peft_type": "LORA",
        "task_type": None,
        "r": recorded["r"],
        "lora_alpha": recorded["alpha"],
        "lora_dropout": recorded["dropout"],
        "use_rslora": recorded["rslora"],
        "target_modules": recorded["modules"],
        "bias": "none",
        "fan_in_fan_out": False,
        "init_lora_weights": True,
        "modules_to_save": None,
        "base_model_name_or_path": None,
        "inference_mode": True,
    }
    (folder / PEFT_CONFIG).write_text(json.dumps(config, indent=2) + "\n")


def _read_peft(folder: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    config_path, weights = folder / PEFT_CONFIG, folder / PEFT_WEIGHTS
    if folder.is_file():
        raise CheckpointError(f"{folder} is a file, and a name without `.safetensors` is read "
                              "as a PEFT adapter folder",
                              hint="name specc's adapter file `<name>.safetensors`, or the "
                              "folder PEFT's save_pretrained wrote")  # fmt: skip
    for need in (config_path, weights):
        if not need.exists():
            raise CheckpointError(
                f"{folder} is not a PEFT adapter folder: it has no {need.name}",
                hint="PEFT's save_pretrained writes adapter_config.json and "
                "adapter_model.safetensors",
            )
    try:
        config = json.loads(config_path.read_text())
        from safetensors import safe_open

        with safe_open(str(weights), framework="pt") as f:
            raw = {k: f.get_tensor(k) for k in f.keys()}
            base = (f.metadata() or {}).get(BASE_METADATA) or None
    except Exception as exc:  # json and safetensors raise their own types
        raise CheckpointError(f"cannot read the PEFT adapter in {folder}: {exc}") from None
    if not isinstance(config, dict) or config.get("peft_type") != "LORA" or "r" not in config:
        raise CheckpointError(f"{folder / PEFT_CONFIG} is not a LoRA adapter config")
    if config.get("bias", "none") != "none" or config.get("use_dora"):
        raise CheckpointError(f"{folder}: only plain LoRA (bias='none', no DoRA) is supported")
    tensors = {}
    for key, value in raw.items():
        name = key.removeprefix(PEFT_PREFIX).replace(".default.", ".")
        if not name.endswith(ADAPTER_KEYS):
            raise CheckpointError(f"{folder}: unexpected tensor `{key}` in {PEFT_WEIGHTS}",
                                  hint="only lora_A / lora_B weights are supported")  # fmt: skip
        tensors[name] = value
    modules = sorted({k.rsplit(".", 2)[0] for k in tensors})
    recorded = {"r": int(config["r"]), "alpha": config.get("lora_alpha", 8),
                "rslora": bool(config.get("use_rslora", False)),
                "dropout": float(config.get("lora_dropout", 0.0)), "modules": modules,
                "base_sha256": base}  # fmt: skip
    return tensors, recorded


# ---- merging --------------------------------------------------------------------------


def merged_state(state: dict[str, torch.Tensor], recorded: dict[str, Any]) -> dict[str, Any]:
    """The base state_dict with each adapter folded in (W += scale·B@A, in float64 then
    cast back) and the adapter keys removed."""
    out = {k: v for k, v in state.items() if not k.endswith(ADAPTER_SUFFIXES)}
    scale = scale_of(recorded)
    for module in recorded["modules"]:
        a, b = state[f"{module}.lora_A.weight"], state[f"{module}.lora_B.weight"]
        w = out[f"{module}.weight"]
        delta = (b.double() @ a.double()) * scale
        out[f"{module}.weight"] = (w.double() + delta).to(w.dtype)
    return out


# ---- starting from an adapter ---------------------------------------------------------


def check_settings(recorded: dict[str, Any], plan: LoraPlan, source: str) -> None:
    """An adapter is only used with the rank, scaling, layers and base it was trained
    with: anything else would silently compute another model."""
    from specc.values import loc

    differences = [
        f"{what} {theirs!r} (the spec: {ours!r})"
        for what, theirs, ours in (
            ("r", recorded["r"], plan.r),
            ("alpha", recorded["alpha"], plan.alpha),
            ("rslora", recorded["rslora"], plan.rslora),
            ("modules", sorted(recorded["modules"]), sorted(plan.modules)),
        )
        if theirs != ours
    ]
    base = recorded.get("base_sha256")
    if base and base != plan.base_sha256:
        differences.append("another base model (its recorded architecture differs)")
    if differences:
        raise CheckpointError(
            f"the adapter {source} was trained with " + "; ".join(differences),
            loc(plan.span),
            hint="use the spec (and --set overrides) the adapter was trained with",
        )


def load_adapter(model: nn.Module, plan: LoraPlan, *, quiet: bool = False) -> None:
    """`lora ... (load="...")`: the adapter's tensors into the model's adapters."""
    tensors, recorded = read_adapter(Path(plan.load), plan.load_is_peft_folder)
    check_settings(recorded, plan, plan.load)
    own = dict(model.named_parameters())
    with torch.no_grad():
        for name in adapter_names(plan):
            if name not in tensors or tensors[name].shape != own[name].shape:
                raise CheckpointError(
                    f"the adapter {plan.load} has no tensor `{name}` of shape "
                    f"{list(own[name].shape)}",
                    hint="the file is incomplete or from another model",
                )
            own[name].copy_(tensors[name])
    if not quiet:
        print(f"lora: loaded {len(tensors)} adapter tensors from {plan.load}")
