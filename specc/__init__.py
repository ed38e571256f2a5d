"""specc: a declarative model-spec compiler and runner for PyTorch.

The verbs mirror the CLI: ``load`` (spec -> IR), ``check`` (IR -> checked instances),
``build`` (-> nn.Module), ``compile`` (-> PyTorch source), ``train``. This module stays
import-light: torch is imported only when a verb needs it.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

from specc.errors import SpecError

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from specc.ir import ModelInstance, Program


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """Run the block with Python's cyclic garbage collector off, restoring it after.

    Compiling allocates millions of small objects (parse trees, IR nodes, fx nodes, modules)
    that stay alive until the verb returns. With the collector on, its automatic collections
    rescanned that growing set again and again: a 10,000-layer spec spent most of its time
    there, and the cost grew faster than the spec. The cyclic garbage made meanwhile (a few
    KB per layer) is collected as usual once the collector is back on.
    """
    if not gc.isenabled():  # nested, or the caller turned it off: leave it alone
        yield
        return
    gc.disable()
    try:
        yield
    finally:
        gc.enable()


def load(source: Any, *, plugins: bool = True) -> Program:
    """Parse and validate a spec (a path, or spec text) into its IR ``Program``."""
    from specc.lang.loader import load as _load

    with gc_paused():
        return _load(source, plugins=plugins)


def check(source: Any, model: str | None = None, inputs: dict | None = None) -> ModelInstance:
    """Shape-check one model of a spec and return its checked instance (no real tensors)."""
    from specc.shapes.check import check_model

    with gc_paused():
        return check_model(load(source), model, inputs=inputs)


def build(source: Any, model: str | None = None, inputs: dict | None = None) -> torch.nn.Module:
    """Build a real ``nn.Module`` for one model of a spec (the last model by default)."""
    from specc.builder import build_module
    from specc.lang.plugins import load_plugins
    from specc.shapes.check import check_model

    with gc_paused():
        program = load(source)
        return build_module(check_model(program, model, inputs=inputs), load_plugins(program))


def compile(
    source: Any, model: str | None = None, *, train: bool = False, warn: bool = False
) -> str:
    """Generate readable standalone PyTorch source for a spec; with `train`, the script that
    trains its train block as `specc run` does. `warn`: print check-time warnings to
    stderr first."""
    from specc.codegen import generate

    with gc_paused():
        program = load(source)
        plan = train_plan(program) if train else None
        return generate(program, model=model, plan=plan, warn=warn)


def format_text(text: str, file: str = "<spec>") -> str:
    """Spec text in the canonical layout of `specc fmt` (idempotent; comments kept; raises
    the located `SpecSyntaxError` of `specc check` when the text does not parse)."""
    from specc.lang.fmt import format_text as _format

    return _format(text, file)


def train_plan(program: Program, name: str | None = None) -> Any:
    """The resolved plan of the program's train block (specc.training.plan)."""
    from specc.lang.loader import source_texts
    from specc.training.plan import resolve

    try:
        return resolve(program, name)
    except SpecError as err:
        raise err.with_source(source_texts(program)) from None


def train(source: Any, overrides: list[str] | None = None, **options: Any) -> dict:
    """Train the spec's `train` block; returns the final metrics."""
    from specc.training.runner import run

    return run(load(source), overrides=overrides or [], **options)


__all__ = [
    "__version__",
    "build",
    "check",
    "compile",
    "draw_graph",
    "export",
    "export_adapter",
    "format_text",
    "gc_paused",
    "load",
    "merge",
    "plot",
    "sample",
    "train",
    "train_plan",
]


def sample(
    source: Any,
    ckpt: Any,
    prompt: str = "\n",
    *,
    max_new_tokens: int = 200,
    temperature: float = 1.0,
    top_k: int | None = None,
    seed: int = 0,
    overrides: list[str] | None = None,
    stream: Any = None,
) -> str:
    """Continue `prompt` with the model of checkpoint `ckpt` (a spec trained on a text
    dataset); returns the prompt and its continuation, also written to `stream` as drawn."""
    from pathlib import Path

    from specc.training.sample import SampleSettings, sample_checkpoint

    settings = SampleSettings(max_new_tokens, temperature, top_k, seed)
    return sample_checkpoint(load(source), Path(ckpt), prompt, settings, overrides, stream)


def export(
    source: Any,
    ckpt: Any,
    output: Any,
    *,
    format: str | None = None,
    model: str | None = None,
    overrides: list[str] | None = None,
) -> Any:
    """Write the model of checkpoint `ckpt` to `output` as "onnx", "pt2" or "safetensors"
    (default: from the output's suffix), checked against the model first; returns what was
    written (`.path`, `.describe()`)."""
    from pathlib import Path

    from specc.exporting.export import export_checkpoint
    from specc.exporting.settings import ExportSettings

    settings = ExportSettings(Path(ckpt), Path(output), format, model, list(overrides or []))
    settings.check()
    return export_checkpoint(load(source), settings)


def export_adapter(source: Any, ckpt: Any, output: Any, *,
                   overrides: list[str] | None = None) -> Any:  # fmt: skip
    """Write the LoRA adapter of checkpoint `ckpt` (a run of the spec's `lora` train block)
    as a PEFT folder: `adapter_model.safetensors` and `adapter_config.json`."""
    from pathlib import Path

    from specc.exporting.adapter import export_adapter as write

    return write(load(source), Path(ckpt), Path(output), overrides)


def merge(source: Any, ckpt: Any, output: Any, *, overrides: list[str] | None = None) -> Any:
    """Fold the LoRA adapters of `ckpt` (a run's checkpoint, its adapter.safetensors or a
    PEFT folder) into the base weights; the safetensors file loads into the spec without
    its `lora` line."""
    from pathlib import Path

    from specc.exporting.adapter import merge as write

    return write(load(source), Path(ckpt), Path(output), overrides)


def draw_graph(
    source: Any,
    output: Any,
    *,
    model: str | None = None,
    depth: int | None = None,
    plugins: bool = True,
) -> Any:
    """Draw one model's checked dataflow to `output` (.svg, .png, .pdf through Graphviz's
    `dot`; .dot for the text alone). Without `dot`, writes the .dot beside `output` and
    says how to render it. Returns what was written (`.paths`, `.note`). (Not named
    `graph`: that is the module `specc.graph`, which would replace it once imported.)"""
    from pathlib import Path

    from specc.errors import UsageError
    from specc.pictures.extras import require
    from specc.pictures.output import GRAPH_FORMATS, check_output

    output = Path(output)
    check_output(output, tuple(GRAPH_FORMATS), "net.svg")
    if depth is not None and depth < 0:
        raise UsageError(f"--depth {depth}: give 0 or more levels")
    require("graphviz", "graph", "graph")  # before checking the model
    from specc.pictures.dataflow import dataflow_dot
    from specc.pictures.output import write_graph

    with gc_paused():
        program = load(source, plugins=plugins)
        dot = dataflow_dot(_checked(program, model), depth)
    return write_graph(dot, output)


def _checked(program: Program, model: str | None) -> ModelInstance:
    """The named model as `check` checks it; unnamed, the train block's model, with the
    arguments it reads from the data (`vocab_size = data.vocab_size`) filled in."""
    from specc.lang.loader import source_texts
    from specc.shapes.check import check_model
    from specc.training.plan import model_reads_data, train_model

    if model is not None or not model_reads_data(program):
        return check_model(program, model)
    try:
        return train_model(program).instance
    except SpecError as err:
        raise err.with_source(source_texts(program)) from None


def plot(runs: Any, output: Any = "curves.png", *, x: str = "step") -> Any:
    """Draw the metrics of run folders (or their metrics.jsonl files) to `output` (.png,
    .svg, .pdf), several runs over each other; returns the path written."""
    from pathlib import Path

    from specc.pictures.curves import plot_runs

    if isinstance(runs, (str, Path)):
        runs = [runs]
    return plot_runs([Path(r) for r in runs], Path(output), x)
