"""The three ways to get the same model: hand-written here, interpreted, generated.

The hand-written classes are the tutorials' own code, written to match the specs exactly
(`specs/cifar_net.spec`, `specs/mnist_convnet.spec`), so all three variants hold the same
parameters and run the same forward.
"""

from __future__ import annotations

import importlib.util
import sys
import types
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


class Net(nn.Module):
    """The PyTorch "Training a Classifier" tutorial's CIFAR-10 network."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)


class ConvNet(nn.Module):
    """The PyTorch MNIST example's network, with fc1 sized for both max-pools (as the spec)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(0.25)
        self.dropout2 = nn.Dropout(0.5)
        self.fc1 = nn.Linear(1600, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.dropout1(x)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = self.dropout2(x)
        return F.log_softmax(self.fc2(x), dim=1)


def twin(cls: type[nn.Module]) -> type[nn.Module]:
    """A subclass whose forward is a copy with its own code object.

    The A/A control needs this: torch.compile caches compiled frames per code object, so
    two compiled instances of one class share a cache, and every call of the first one
    compiled checks the second one's guards first.
    """
    fwd = cls.forward
    code = fwd.__code__.replace(co_name="forward_twin")
    forward = types.FunctionType(code, fwd.__globals__, "forward", fwd.__defaults__, None)
    return type(f"{cls.__name__}Twin", (cls,), {"forward": forward, "__module__": __name__})


def interpreted(spec: Path) -> Callable[[], nn.Module]:
    """A factory of `specc.build(spec)` modules."""
    import specc

    return lambda: specc.build(spec)


def generated(spec: Path, tmp: Path) -> tuple[Callable[[], nn.Module] | None, str]:
    """A factory of the class `specc.compile(spec)` writes, or (None, why not).

    The source is written to a file and imported from it (so inspect, tracebacks and
    torch.compile see real source lines); the class is the spec's checked model.
    """
    import specc

    if not callable(getattr(specc, "compile", None)):
        return None, "specc.compile does not exist"
    try:
        source = specc.compile(spec)
        name = specc.check(spec).model
    except Exception as exc:  # codegen is being written: any failure means "not yet"
        return None, f"specc.compile failed: {type(exc).__name__}: {str(exc)[:120]}"
    path = tmp / f"generated_{spec.stem}.py"
    path.write_text(source)
    mod_name = f"_specc_generated_{spec.stem}"
    module_spec = importlib.util.spec_from_file_location(mod_name, path)
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[mod_name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:
        return None, f"generated source does not import: {type(exc).__name__}: {exc}"
    cls = getattr(module, name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        return None, f"generated source has no nn.Module class `{name}`"
    return cls, ""
