"""Where a picture goes: the output's suffix names its format, checked before any work,
and the file written whole (a temporary file renamed into place)."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from specc.errors import SpecError, UsageError
from specc.pictures.extras import require

# `specc graph`: Graphviz's output format per suffix; None: the DOT text itself.
GRAPH_FORMATS = {".svg": "svg", ".png": "png", ".pdf": "pdf", ".dot": None, ".gv": None}
# `specc plot`: what matplotlib writes without extra packages.
PLOT_SUFFIXES = (".png", ".svg", ".pdf")


def check_output(path: Path, suffixes: tuple[str, ...] | list[str], example: str) -> None:
    """A usage error for an output whose suffix names no format `suffixes` offers, or
    that is a folder."""
    if path.is_dir():
        raise UsageError(f"-o {path} is a folder", hint=f"name the file, e.g. -o {path / example}")
    if path.suffix.lower() not in suffixes:
        raise UsageError(
            f"-o {path}: cannot tell the format from "
            + (f"the suffix `{path.suffix}`" if path.suffix else "a name without a suffix"),
            hint=f"end the name in {', '.join(suffixes)}",
        )


def write_bytes(path: Path, data: bytes) -> None:
    from specc.files import write_atomic

    try:
        write_atomic(path, lambda f: f.write(data))
    except OSError as exc:
        raise UsageError(f"cannot write {path}: {exc.strerror}") from None


@dataclass
class Written:
    """What `write_graph` wrote, and a note for the user when it could not render."""

    paths: list[Path] = field(default_factory=list)
    note: str | None = None


def write_graph(dot: str, output: Path) -> Written:
    """`dot` rendered to `output` by Graphviz's `dot` program; without that program, the
    DOT text beside it (`net.dot`) and a note saying how to render it."""
    fmt = GRAPH_FORMATS[output.suffix.lower()]
    if fmt is None:
        write_bytes(output, dot.encode())
        return Written([output])
    graphviz = require("graphviz", "graph", "graph")
    data = None
    if shutil.which("dot") is not None:
        try:
            data = graphviz.Source(dot).pipe(format=fmt)
        except graphviz.ExecutableNotFound:
            data = None
        except subprocess.CalledProcessError as exc:
            dot_path = output.with_suffix(".dot")
            write_bytes(dot_path, dot.encode())
            reason = (exc.stderr or b"").decode(errors="replace").strip().splitlines()
            raise SpecError(
                f"Graphviz's dot could not draw {output}: {reason[0] if reason else exc}",
                hint=f"the graph is in {dot_path}; try another format, e.g. -o "
                f"{output.with_suffix('.svg' if fmt != 'svg' else '.png')}",
            ) from None
    if data is not None:
        write_bytes(output, data)
        return Written([output])
    dot_path = output.with_suffix(".dot")
    write_bytes(dot_path, dot.encode())
    return Written(
        [dot_path],
        f"Graphviz's `dot` program is not installed, so {output} was not drawn; render "
        f"the graph with: dot -T{fmt} {dot_path} -o {output} (Graphviz: "
        "apt-get install graphviz, brew install graphviz, or graphviz.org/download)",
    )
