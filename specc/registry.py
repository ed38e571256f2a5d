"""How a name in a spec resolves: one table for layers, functions, methods and holes.

Names resolve to the real torch objects (never a re-description of them): a layer name is
a ``torch.nn`` class, a forward call a ``torch.nn.functional`` or ``torch`` function.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

# Layer constructors handled by specc itself rather than by a torch class.
BUILTIN_CTORS = ("Sequential", "repeat")

# Which incoming dimension a `_` argument stands for, by constructor parameter name. Names
# follow torch's own conventions, so plugins that use them get inference for free.
# Index into the *batched* input shape: 1 = channels of (N, C, ...), -1 = last dimension.
HOLE_DIMS: dict[str, int] = {
    "in_features": -1,
    "in1_features": -1,
    "in_channels": 1,
    "num_features": 1,
    "num_channels": 1,
    "normalized_shape": -1,
    "input_size": -1,
    "embed_dim": -1,
    "d_model": -1,
}

# The attribute a built layer keeps for that parameter, used to explain mismatches.
HOLE_WORDS = {
    "in_features": "input features",
    "in1_features": "input features",
    "in_channels": "input channels",
    "num_features": "channels",
    "num_channels": "channels",
    "normalized_shape": "features in the last dimension",
    "input_size": "input features",
    "embed_dim": "embedding features",
    "d_model": "model features",
}

# Modules whose forward expects a channel-first batched input of a fixed rank.
EXPECTED_RANK = {
    "Conv1d": 3,
    "Conv2d": 4,
    "Conv3d": 5,
    "ConvTranspose1d": 3,
    "ConvTranspose2d": 4,
    "ConvTranspose3d": 5,
    "BatchNorm2d": 4,
    "BatchNorm3d": 5,
    "MaxPool2d": 4,
    "AvgPool2d": 4,
}


@functools.cache
def nn_classes() -> dict[str, type]:
    out = {}
    for name in dir(nn):
        obj = getattr(nn, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module) and not name.startswith("_"):
            out[name] = obj
    return out


@functools.cache
def functions() -> dict[str, tuple[str, Callable]]:
    """Forward-call names -> (qualified name, callable). torch.nn.functional wins over torch
    (that is how hand-written code reads: F.relu, torch.flatten)."""
    out: dict[str, tuple[str, Callable]] = {}
    for name in dir(torch):
        obj = getattr(torch, name, None)
        if name.startswith("_") or isinstance(obj, type) or inspect.ismodule(obj):
            continue
        if callable(obj):
            out[name] = (f"torch.{name}", obj)
    for name in dir(F):
        obj = getattr(F, name, None)
        if name.startswith("_") or isinstance(obj, type) or inspect.ismodule(obj):
            continue
        if callable(obj) and getattr(obj, "__module__", "").startswith("torch"):
            out[name] = (f"torch.nn.functional.{name}", obj)
    return out


def function_by_qualname(qualname: str) -> Callable:
    mod, _, name = qualname.rpartition(".")
    return getattr(F if mod == "torch.nn.functional" else torch, name)


@functools.cache
def tensor_methods() -> frozenset[str]:
    return frozenset(n for n in dir(torch.Tensor) if not n.startswith("_"))


DTYPES = {
    name: getattr(torch, name)
    for name in (
        "float32",
        "float",
        "float64",
        "double",
        "float16",
        "half",
        "bfloat16",
        "int64",
        "long",
        "int32",
        "int",
        "int16",
        "int8",
        "uint8",
        "bool",
        "complex64",
    )
}


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@functools.cache
def signature_params(cls: type) -> list[inspect.Parameter]:
    """Constructor parameters after `self` (empty when torch hides them)."""
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return []
    return list(list(sig.parameters.values())[1:])


def accepts(cls: type) -> tuple[list[str], bool, bool]:
    """(parameter names, has *args, has **kwargs) of a constructor."""
    params = signature_params(cls)
    names = [p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return names, var_pos, var_kw


class Registry:
    """Name resolution for one program: spec models, plugins, then torch."""

    def __init__(self, model_names: set[str], plugins: dict[str, type] | None = None) -> None:
        self.model_names = model_names
        self.plugins = plugins or {}

    def layer(self, name: str) -> tuple[str, Any] | None:
        """('model', name) | ('builtin', name) | ('plugin', cls) | ('torch', cls) | None."""
        if name in self.model_names:
            return ("model", name)
        if name in BUILTIN_CTORS:
            return ("builtin", name)
        if name in self.plugins and issubclass(self.plugins[name], nn.Module):
            return ("plugin", self.plugins[name])
        cls = nn_classes().get(name)
        if cls is not None:
            return ("torch", cls)
        return None

    def layer_names(self) -> list[str]:
        return [*self.model_names, *BUILTIN_CTORS, *self.plugins, *nn_classes()]

    def function(self, name: str) -> tuple[str, Callable] | None:
        return functions().get(name)

    def function_names(self) -> list[str]:
        return list(functions())


def qualname(cls: type) -> str:
    if cls.__module__.startswith("torch.nn"):
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"
