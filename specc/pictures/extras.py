"""The optional packages the pictures need, imported on demand: a missing one is a usage
error naming the extra that brings it, never an ImportError."""

from __future__ import annotations

import importlib
from types import ModuleType

from specc.errors import UsageError


def require(module: str, extra: str, command: str) -> ModuleType:
    """`module` imported, or a usage error saying `pip install 'specc[<extra>]'`."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UsageError(
            f"`specc {command}` needs {module.split('.')[0]}, which is not installed",
            hint=f"install the {extra} extra: pip install 'specc[{extra}]'",
        ) from None
