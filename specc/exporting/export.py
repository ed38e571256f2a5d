"""`specc export`: a checkpoint's model written as ONNX, a torch.export program, or plain
safetensors weights, then read back and checked against the model before it replaces the
output. The model is the one `specc eval` and `specc sample` build: the train block's, with
its arguments resolved (`data.vocab_size` included), unless --model names another."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specc import __version__, ir
from specc.builder import build_module
from specc.errors import SpecError, UsageError
from specc.exporting import formats
from specc.exporting.settings import ExportSettings, Format
from specc.exporting.trace import Input, Signature, Subject
from specc.lang.loader import source_texts
from specc.lang.plugins import load_plugins
from specc.shapes.check import check_model
from specc.training import checkpoint
from specc.training.config import apply_overrides, train_config
from specc.training.plan import train_model
from specc.values import literal

CHECKED_WITH = {"onnx": "onnxruntime", "pt2": "torch.export.load"}


@dataclass(frozen=True)
class Exported:
    """What an export wrote, for the summary."""

    format: Format
    files: tuple[Path, ...]  # the output first
    model: str
    args: dict[str, Any]
    ckpt: Path
    meta: dict[str, str]
    signature: Signature | None  # a traced format's inputs
    difference: float  # the largest from the model's outputs (or weights) at the check
    notes: tuple[str, ...]  # the writer's (tied weights, side files)

    @property
    def path(self) -> Path:
        return self.files[0]

    def describe(self) -> str:
        """The summary: what was written from what, its inputs, metadata and the check."""
        size = _size(sum(f.stat().st_size for f in self.files))
        lines = [f"wrote {self.path} ({self.format.title}, {size}): {self.model} from {self.ckpt}"]
        if self.signature is not None:
            lines += [f"  input {_shown(i)}" for i in self.signature.inputs]
        lines += [f"  {note}" for note in self.notes]
        args = ", ".join(f"{k}={v!r}" for k, v in self.args.items())
        lines.append(
            f"  metadata: {self.meta['specc.spec']} (sha256 {self.meta['specc.spec_sha256'][:12]}),"
            f" {self.model}({args})"
        )
        lines.append(f"  checked: {self._check()}")
        return "\n".join(lines)

    def _check(self) -> str:
        if self.signature is None:
            return "reads back as the same state_dict"
        sizes = self.signature.sizes()
        at = (
            "batch " + " and ".join(str(b) for b, _ in sizes)
            if sizes[0][1] is None
            else " and ".join(f"(batch {b}, seq {s})" for b, s in sizes)
        )
        return (
            f"{CHECKED_WITH[self.format.name]} gives the model's outputs at {at} "
            f"(largest difference {self.difference:.1e})"
        )


def export_checkpoint(program: ir.Program, settings: ExportSettings) -> Exported:
    """Write the checkpoint's model in the settings' format; every mistake a SpecError, and
    the output left as it was unless the written file checks out."""
    fmt = settings.check()
    try:
        program = apply_overrides(program, settings.overrides)
        instance = _instance(program, settings.model)
        module = build_module(instance, load_plugins(program)).eval()
        checkpoint.load_into(module, settings.ckpt, instance.model)
        model = Subject(module, instance, program)
        meta = metadata(program, instance)
        with _staged(settings.output) as path:
            notes = getattr(formats, f"write_{fmt.name}")(model, path, meta)
            difference = getattr(formats, f"check_{fmt.name}")(path, model)
            side = sorted(f.name for f in path.parent.iterdir() if f != path)
    except SpecError as err:
        raise err.with_source(source_texts(program)) from None
    files = [settings.output, *(settings.output.parent / name for name in side)]
    return Exported(
        format=fmt,
        files=tuple(files),
        model=instance.model,
        args=_args(instance),
        ckpt=settings.ckpt,
        meta=meta,
        signature=model.signature if fmt.traced else None,
        difference=difference,
        notes=tuple(notes),
    )


def _instance(program: ir.Program, name: str | None) -> ir.ModelInstance:
    """The train block's model with its arguments resolved, when there is a train block and
    --model names no other; else the named model (or the last) at its defaults."""
    if program.trains and name in (None, train_config(program)[1].model.name):
        return train_model(program).instance
    return check_model(program, name)


def metadata(program: ir.Program, instance: ir.ModelInstance) -> dict[str, str]:
    """What each format stores beside the model: the spec file and its hash (the hash
    generated code names), the model and its arguments, specc's version."""
    source = program.sources[0]
    return {
        "specc.version": __version__,
        "specc.spec": Path(source.path).name,
        "specc.spec_sha256": source.sha256,
        "specc.model": instance.model,
        "specc.args": json.dumps(_args(instance), default=repr),
    }


def _args(instance: ir.ModelInstance) -> dict[str, Any]:
    return {k: literal(v) for k, v in instance.args.items()}


@contextmanager
def _staged(output: Path) -> Iterator[Path]:
    """A path named like `output` in a fresh folder beside it. When the block succeeds,
    what was written there (a side file of weights too) replaces its namesake beside
    `output`; whatever happens, the folder goes."""
    try:
        folder = Path(tempfile.mkdtemp(dir=output.parent, prefix=f".{output.name}."))
    except OSError as exc:
        raise UsageError(f"cannot write in {output.parent}: {exc.strerror}") from None
    try:
        yield folder / output.name
        mode = 0o666 & ~_umask()  # as a plain open() would make it (some writers use 0o600)
        for f in folder.iterdir():
            f.chmod(mode)
            os.replace(f, output.parent / f.name)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _umask() -> int:
    mask = os.umask(0o22)
    os.umask(mask)
    return mask


def _shown(i: Input) -> str:
    text = f"{i.name}: {str(i.dtype).removeprefix('torch.')} [{', '.join(i.dims())}]"
    return text + (f", seq 1 to {i.seq}" if i.seq is not None else "")


def _size(n: int) -> str:
    if n < 1024:
        return f"{n} bytes"
    size = n / 1024
    for unit in ("KB", "MB"):
        if size < 1024:
            return f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"
