"""The three formats: how each is written and how the written file is checked against the
model it came from. One function of each kind per format, found by name (`write_onnx`,
`check_onnx`, ...): adding a format is adding two functions and a row in FORMATS."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils._pytree import tree_leaves

from specc.errors import ExportError
from specc.exporting.trace import Subject, first_line, quiet
from specc.training import checkpoint

# Within this of torch's outputs counts as the same model (float32 kernels differ in the
# order they add; a wrong graph is off by far more).
ATOL, RTOL = 1e-4, 1e-3


# ---- writing ------------------------------------------------------------------------------


def write_onnx(model: Subject, path: Path, meta: dict[str, str]) -> list[str]:
    """ONNX through torch.onnx's dynamo exporter, the dynamic dimensions named as the
    summary names them (`batch`, `seq`), the metadata in the model's properties."""
    sig, ep = model.signature, model.traced
    try:
        with quiet():
            onnx_program = torch.onnx.export(
                ep,
                dynamo=True,
                dynamic_shapes=sig.dynamic_shapes(),
                input_names=[i.name for i in sig.inputs],
                verbose=False,
            )
            assert onnx_program is not None
            onnx_program.model.metadata_props.update(meta)
            onnx_program.save(str(path))  # weights in a side file only past ONNX's 2 GB
    except Exception as exc:  # the converter raises its own types
        raise ExportError(
            f"the traced model cannot be converted to ONNX: {first_line(exc)}",
            hint="--format pt2 keeps the model as torch.export traced it",
        ) from None
    side = [p.name for p in path.parent.iterdir() if p != path]
    return [f"weights in {', '.join(side)} (past ONNX's 2 GB limit)"] if side else []


def write_pt2(model: Subject, path: Path, meta: dict[str, str]) -> list[str]:
    """torch.export's own file; the metadata as `specc.json` among its extra files."""
    traced = model.traced
    try:
        with quiet():
            torch.export.save(traced, str(path), extra_files={"specc.json": json.dumps(meta)})
    except Exception as exc:  # e.g. a plugin's constant torch cannot serialize
        raise ExportError(f"the traced model cannot be saved: {first_line(exc)}") from None
    return []


def write_safetensors(model: Subject, path: Path, meta: dict[str, str]) -> list[str]:
    """The state_dict, a tied weight stored once (checkpoint.TIES_METADATA)."""
    state = model.module.state_dict()
    ties = checkpoint.save_safetensors(state, path, {"format": "pt", **meta})
    tied = "".join(f"; {alias} is {source}, stored once" for alias, source in ties)
    return [f"{len(state) - len(ties)} tensors{tied}"]


# ---- checking -----------------------------------------------------------------------------


def check_onnx(path: Path, model: Subject) -> float:
    """The file run in onnxruntime at two sizes of each dynamic dimension: the largest
    difference from torch's outputs."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: they come back as the exception
    try:
        session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # onnxruntime's own error types
        raise ExportError(f"onnxruntime cannot load the exported file: {first_line(exc)}") from None
    names = [i.name for i in session.get_inputs()]

    def run(*xs: torch.Tensor) -> list[torch.Tensor]:
        feed = {n: x.numpy() for n, x in zip(names, xs, strict=True)}
        return [torch.from_numpy(o) for o in session.run(None, feed)]

    return _compare(run, model, "onnxruntime")


def check_pt2(path: Path, model: Subject) -> float:
    """The file loaded back with torch.export.load and run at two sizes of each dynamic
    dimension: the largest difference from the model's outputs."""
    with quiet():
        loaded = torch.export.load(str(path)).module()
    return _compare(loaded, model, "the loaded program")


def check_safetensors(path: Path, model: Subject) -> float:
    """The file read back as `specc eval --ckpt` reads it: the same state_dict, exactly."""
    back = checkpoint.load(path)["model"]
    own = model.module.state_dict()
    if set(back) != set(own):
        raise ExportError(f"{path.name} reads back with other keys than the model's")
    for key, value in own.items():
        if not _same(back[key], value, atol=0.0, rtol=0.0):
            raise ExportError(f"{path.name} reads back with another `{key}`")
    return 0.0


def _compare(run: Callable[..., Any], model: Subject, what: str) -> float:
    module, sig = model.module, model.signature
    worst = 0.0
    for batch, seq in sig.sizes():
        xs = sig.example(batch, seq, seed=batch)
        at = f"batch {batch}" + (f", seq {seq}" if seq is not None else "")
        with torch.inference_mode():
            want = [t for t in tree_leaves(module(*xs)) if isinstance(t, torch.Tensor)]
            try:
                got = [t for t in tree_leaves(run(*xs)) if isinstance(t, torch.Tensor)]
            except Exception as exc:  # onnxruntime's or torch's own error types
                raise ExportError(f"{what} cannot run at {at}: {first_line(exc)}") from None
        if [t.shape for t in got] != [t.shape for t in want]:
            raise ExportError(
                f"{what} gives outputs of shapes {[list(t.shape) for t in got]} at {at}, "
                f"the model {[list(t.shape) for t in want]}"
            )
        for g, w in zip(got, want, strict=True):
            g = g.to(w.dtype)
            if not _same(g, w, atol=ATOL, rtol=RTOL):
                raise ExportError(
                    f"{what} gives other outputs than the model at {at}: off by up to "
                    f"{_diff(g, w):.3g}",
                    hint="report it with the spec: the export changed what the model computes",
                )
            worst = max(worst, _diff(g, w))
    return worst


def _same(a: torch.Tensor, b: torch.Tensor, atol: float, rtol: float) -> bool:
    return (
        a.shape == b.shape
        and a.dtype == b.dtype
        and torch.allclose(a, b, atol=atol, rtol=rtol, equal_nan=True)
    )


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    """The largest difference, NaNs where both have one left out."""
    if not a.numel():
        return 0.0
    d = (a.double() - b.double()).abs()
    return float(d.nan_to_num(0.0, posinf=float("inf")).max())
