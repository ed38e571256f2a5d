"""What `specc export` was asked for, checked before torch is imported: the format (named,
or read from the output's suffix), the output path, and the optional packages the format
needs, so a wrong flag costs no model building."""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from pathlib import Path

from specc.errors import UsageError, did_you_mean

EXTRA_HINT = "pip install 'specc[export]'"


@dataclass(frozen=True)
class Format:
    name: str
    suffix: str
    title: str  # how the summary names it
    traced: bool  # through torch.export (a graph), not only the weights
    needs: tuple[str, ...] = ()  # modules of the `export` extra it imports


FORMATS = {
    f.name: f
    for f in (
        Format("onnx", ".onnx", "ONNX", True, ("onnx", "onnxscript", "onnxruntime")),
        Format("pt2", ".pt2", "torch.export program", True),
        Format("safetensors", ".safetensors", "safetensors weights", False),
    )
}


@dataclass(frozen=True)
class ExportSettings:
    ckpt: Path
    output: Path
    format: str | None = None  # None: from the output's suffix
    model: str | None = None  # None: the train block's, else the last one defined
    overrides: list[str] = field(default_factory=list)

    def check(self) -> Format:
        """The format to write, or a usage error for a flag no export can use (this
        imports the format's optional packages, so a missing one is reported here)."""
        self._check_output()
        fmt = self._format()
        if not self.ckpt.is_file():
            raise UsageError(
                f"checkpoint not found: {self.ckpt}"
                if not self.ckpt.exists()
                else f"--ckpt {self.ckpt} is not a file",
                hint="pass a checkpoint a run wrote, e.g. --ckpt runs/<name>/best.pt",
            )
        if self.output.resolve() == self.ckpt.resolve():
            raise UsageError(
                f"-o {self.output} is the checkpoint itself",
                hint="write the export to another file",
            )
        require(fmt)
        return fmt

    def _format(self) -> Format:
        if self.format is None:
            by_suffix = {f.suffix: f for f in FORMATS.values()}
            if self.output.suffix in by_suffix:
                return by_suffix[self.output.suffix]
            raise UsageError(
                f"which format? -o {self.output} has no suffix that names one",
                hint=f"pass --format {' | '.join(FORMATS)}, or end the output's name in "
                + ", ".join(f.suffix for f in FORMATS.values()),
            )
        fmt = FORMATS.get(self.format)
        if fmt is None:
            raise UsageError(
                f"unknown format `{self.format}`; choose one of {', '.join(FORMATS)}",
                hint=did_you_mean(self.format, FORMATS),
            )
        named = next((f for f in FORMATS.values() if f.suffix == self.output.suffix), fmt)
        if named is not fmt:
            raise UsageError(
                f"--format {fmt.name} but -o {self.output} names a {named.name} file",
                hint=f"end the output's name in {fmt.suffix}, or leave --format out",
            )
        return fmt

    def _check_output(self) -> None:
        out = self.output
        if out.is_dir():
            suffix = FORMATS[self.format].suffix if self.format in FORMATS else ".onnx"
            raise UsageError(
                f"-o {out} is a folder", hint=f"name the file, e.g. -o {out / 'model'}{suffix}"
            )
        if not out.parent.is_dir():
            raise UsageError(
                f"-o {out}: the folder {out.parent} does not exist",
                hint=f"create it first: mkdir -p {out.parent}",
            )


def require(fmt: Format) -> None:
    """Import the packages `fmt` needs; a usage error naming the extra when one is absent."""
    missing = []
    for module in fmt.needs:
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(module)
    if missing:
        raise UsageError(
            f"--format {fmt.name} needs {' and '.join(missing)}, which "
            f"{'is' if len(missing) == 1 else 'are'} not installed",
            hint=f"install the export extra: {EXTRA_HINT}",
        )
