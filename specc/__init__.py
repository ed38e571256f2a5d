"""specc: a declarative model-spec compiler and runner for PyTorch.

The verbs mirror the CLI: ``load`` (spec -> IR), ``check`` (IR -> checked instances),
``build`` (-> nn.Module), ``compile`` (-> PyTorch source), ``train``. This module stays
import-light: torch is imported only when a verb needs it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # pragma: no cover
    import torch

    from specc.ir import ModelInstance, Program


def load(source: Any, *, plugins: bool = True) -> Program:
    """Parse and validate a spec (a path, or spec text) into its IR ``Program``."""
    from specc.loader import load as _load

    return _load(source, plugins=plugins)


def check(source: Any, model: str | None = None, inputs: dict | None = None) -> ModelInstance:
    """Shape-check one model of a spec and return its checked instance (no real tensors)."""
    from specc.shapes import check_model

    return check_model(load(source), model, inputs=inputs)


def build(source: Any, model: str | None = None, inputs: dict | None = None) -> torch.nn.Module:
    """Build a real ``nn.Module`` for one model of a spec (the last model by default)."""
    from specc.builder import build_module
    from specc.plugins import load_plugins
    from specc.shapes import check_model

    program = load(source)
    return build_module(check_model(program, model, inputs=inputs), load_plugins(program))


def compile(source: Any, model: str | None = None, *, train: bool = False) -> str:
    """Generate readable standalone PyTorch source for a spec."""
    from specc.codegen import generate

    return generate(load(source), model=model, train=train)


def train(source: Any, overrides: list[str] | None = None, **options: Any) -> dict:
    """Train the spec's `train` block; returns the final metrics."""
    from specc.run import run

    return run(load(source), overrides=overrides or [], **options)


__all__ = ["__version__", "build", "check", "compile", "load", "train"]
