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

# Tensors a model holds, declared like layers (`pos = Parameter(zeros(1, 16, dim))`), with
# the one keyword each accepts.
TENSOR_CTORS: dict[str, str] = {"Parameter": "requires_grad", "Buffer": "persistent"}

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


@functools.cache
def nn_classes() -> dict[str, type]:
    out = {}
    for name in dir(nn):
        obj = getattr(nn, name)
        if isinstance(obj, type) and issubclass(obj, nn.Module) and not name.startswith("_"):
            out[name] = obj
    return out


# torch.nn.functional helpers that are plumbing, not operations on tensors.
_F_PLUMBING = frozenset(
    {
        "assert_int_or_pair",
        "boolean_dispatch",
        "handle_torch_function",
        "has_torch_function",
        "has_torch_function_unary",
        "has_torch_function_variadic",
    }
)
# ATen operations that take data from outside the spec (a file, a buffer, a numpy array) or
# constrain the tracer: not tensor math, never allowed in a forward.
_ATEN_OUTSIDE = frozenset(
    {"from_file", "from_numpy", "frombuffer", "sym_constrain_range", "sym_constrain_range_for_size"}
)
# Why a torch callable that is not an operation is refused, by name (else by prefix below).
_FILES = frozenset(
    {
        "save",
        "load",
        "from_file",
        "get_file_path",
        "import_ir_module",
        "import_ir_module_from_buffer",
    }
)
_PROCESS = frozenset(
    {
        "manual_seed",
        "seed",
        "use_deterministic_algorithms",
        "init_num_threads",
        "clear_autocast_cache",
        "autocast_increment_nesting",
        "autocast_decrement_nesting",
        "prepare_multiprocessing_environment",
    }
)


@functools.cache
def functions() -> dict[str, tuple[str, Callable]]:
    """Forward-call names -> (qualified name, callable), for tensor operations only.

    A forward call runs while checking, building and training, so it may only compute on
    tensors: torch's ATen operations (``torch.cat``, ``torch.zeros``...), the Python ones
    of ``torch.functional`` (``einsum``, ``split``...) and ``torch.nn.functional``. Files,
    threads, seeds and other process-wide settings are out of reach (``refusal`` says why).
    torch.nn.functional wins over torch (that is how hand-written code reads: F.relu,
    torch.flatten)."""
    aten = torch._C._VariableFunctions
    python_ops = set(getattr(torch.functional, "__all__", ()))
    out: dict[str, tuple[str, Callable]] = {}
    for name in dir(torch):
        if name.startswith("_") or name in _ATEN_OUTSIDE:
            continue
        if not (hasattr(aten, name) or name in python_ops):
            continue
        obj = getattr(torch, name, None)
        if _is_function(obj):
            out[name] = (f"torch.{name}", obj)
    for name in dir(F):
        obj = getattr(F, name, None)
        if name.startswith("_") or name in _F_PLUMBING or not _is_function(obj):
            continue
        if getattr(obj, "__module__", "").startswith("torch"):
            out[name] = (f"torch.nn.functional.{name}", obj)
    return out


def _is_function(obj: Any) -> bool:
    return callable(obj) and not isinstance(obj, type) and not inspect.ismodule(obj)


def refusal(name: str) -> str | None:
    """Why `name`, a torch callable, cannot be a forward call, as a sentence naming it
    (None: it can, or torch has no such callable)."""
    if name in functions() or name.startswith("_"):
        return None
    homes = ((torch, "torch"), (F, "torch.nn.functional"))
    prefix = next((p for m, p in homes if _is_function(getattr(m, name, None))), None)
    if prefix is None:
        return None
    if name in _FILES:
        return f"{prefix}.{name} reads or writes files"
    if name in _PROCESS or name.startswith(("set_", "autocast_")):
        return f"{prefix}.{name} changes torch's process-wide state"
    return f"{prefix}.{name} is not an operation on tensors"


@functools.cache
def _by_qualname() -> dict[str, Callable]:
    return dict(functions().values())


def function_by_qualname(qualname: str) -> Callable:
    """The callable of an allowed forward function (KeyError for any other name, so an IR
    that names, say, torch.save is refused by every back-end)."""
    return _by_qualname()[qualname]


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


# Constructors torch declares as (*args, **kwargs): their documented parameters, so `_`
# holes, argument counts and keyword names are checked like any other layer's.
def _rnn(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    nonlinearity: str = "tanh",
    bias: bool = True,
    batch_first: bool = False,
    dropout: float = 0.0,
    bidirectional: bool = False,
    device: Any = None,
    dtype: Any = None,
) -> None: ...


def _lstm(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bias: bool = True,
    batch_first: bool = False,
    dropout: float = 0.0,
    bidirectional: bool = False,
    proj_size: int = 0,
    device: Any = None,
    dtype: Any = None,
) -> None: ...


def _gru(
    input_size: int,
    hidden_size: int,
    num_layers: int = 1,
    bias: bool = True,
    batch_first: bool = False,
    dropout: float = 0.0,
    bidirectional: bool = False,
    device: Any = None,
    dtype: Any = None,
) -> None: ...


SIGNATURES: dict[type, Callable[..., None]] = {nn.RNN: _rnn, nn.LSTM: _lstm, nn.GRU: _gru}


@functools.cache
def signature_params(cls: type) -> list[inspect.Parameter]:
    """Constructor parameters after `self` (empty when torch hides them)."""
    for base in cls.__mro__:  # a subclass keeping the table's constructor keeps its table
        if base in SIGNATURES and cls.__init__ is base.__init__:
            return list(inspect.signature(SIGNATURES[base]).parameters.values())
    try:
        sig = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return []
    return list(list(sig.parameters.values())[1:])


@functools.cache
def accepts(cls: type) -> tuple[tuple[str, ...], bool, bool]:
    """(parameter names, has *args, has **kwargs) of a constructor."""
    params = signature_params(cls)
    names = tuple(p.name for p in params if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD))
    var_pos = any(p.kind is p.VAR_POSITIONAL for p in params)
    var_kw = any(p.kind is p.VAR_KEYWORD for p in params)
    return names, var_pos, var_kw


@functools.cache
def init_functions() -> dict[str, Callable]:
    """`init` rule functions: torch.nn.init's in-place initializers (`normal_`, `zeros_`,
    `kaiming_uniform_`, ...), by name."""
    init = torch.nn.init
    return {
        name: getattr(init, name)
        for name in dir(init)
        if name.endswith("_") and not name.startswith("_") and _is_function(getattr(init, name))
    }


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

    def function_refusal(self, name: str) -> str | None:
        return refusal(name)

    def function_names(self) -> list[str]:
        return list(functions())


def qualname(cls: type) -> str:
    if cls.__module__.startswith("torch.nn"):
        return f"torch.nn.{cls.__name__}"
    return f"{cls.__module__}.{cls.__qualname__}"
