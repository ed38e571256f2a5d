"""`plugin` statements: import user Python code and expose its public classes by name.

Plugins execute code, so they are loaded only through an explicit `plugin` statement (in
the root spec or an imported one) and refused everywhere when plugins are disabled. A
plugin is plain PyTorch: its public ``nn.Module`` subclasses become layers and losses, its
``torch.optim.Optimizer`` subclasses optimizers. No specc import is needed in it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from specc import ir
from specc.errors import SpecError, SpecNameError, did_you_mean
from specc.files import file_stamp
from specc.values import loc

# Imported plugins by file (or module name), with the file's size and modification time
# when imported: a file that changed since is imported again (the language server lives
# through edits of a plugin).
_loaded: dict[str, tuple[tuple | None, ModuleType]] = {}


def plugin_path(stmt: ir.PluginStmt) -> Path | None:
    """The file a `plugin "x.py"` statement names (relative to its spec), or None for a
    dotted module name."""
    if not stmt.target.endswith(".py"):
        return None
    base = Path(stmt.span.file).parent if not stmt.span.file.startswith("<") else Path.cwd()
    return (base / stmt.target).resolve()


def _stamp_of(path: Path | None) -> tuple | None:
    """A plugin file's stamp (specc.files.file_stamp); None for a dotted module name."""
    return file_stamp(path) if path is not None else None


def plugin_stamps(program: ir.Program) -> tuple:
    """Each plugin of `program` with its file's stamp: what a cached check depends on
    besides the spec text."""
    return tuple((stmt.target, _stamp_of(plugin_path(stmt))) for stmt in program.plugins)


def _import(stmt: ir.PluginStmt) -> ModuleType:
    path = plugin_path(stmt)
    key = str(path) if path else stmt.target
    stamp = _stamp_of(path)
    if (cached := _loaded.get(key)) is not None and cached[0] == stamp:
        return cached[1]
    try:
        if path is not None:
            if not path.is_file():
                raise SpecNameError(f"plugin file not found: {path}", loc(stmt.span))
            name = f"specc_plugin_{path.stem}"
            spec = importlib.util.spec_from_file_location(name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[name] = module  # so pickling / DataLoader workers can find classes
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(stmt.target)
    except SpecError:
        raise
    except ModuleNotFoundError as exc:
        raise SpecNameError(f"plugin {stmt.target!r}: {exc}", loc(stmt.span)) from None
    except Exception as exc:  # the plugin's own code failed while importing
        raise SpecError(
            f"plugin {stmt.target!r} failed to import: {type(exc).__name__}: {exc}",
            loc(stmt.span),
        ) from None
    _loaded[key] = (stamp, module)
    return module


def plugin_classes(module: ModuleType) -> dict[str, type]:
    """Public nn.Module / Optimizer subclasses defined in (not imported into) a module."""
    import torch
    from torch import nn

    out = {}
    for name, obj in vars(module).items():
        if name.startswith("_") or not isinstance(obj, type):
            continue
        if obj.__module__ != module.__name__:
            continue
        if issubclass(obj, (nn.Module, torch.optim.Optimizer)):
            out[name] = obj
    return out


def load_plugins(program: ir.Program) -> dict[str, type]:
    """All plugin classes of a program, by class name; clashes are errors."""
    classes: dict[str, type] = {}
    origin: dict[str, str] = {}
    for stmt in program.plugins:
        for name, cls in plugin_classes(_import(stmt)).items():
            if name in classes and classes[name] is not cls:
                raise SpecNameError(
                    f"plugin class `{name}` is defined by both {origin[name]!r} and "
                    f"{stmt.target!r}",
                    loc(stmt.span),
                )
            classes[name] = cls
            origin[name] = stmt.target
    return classes


def plugin_module_for(cls: type, program: ir.Program) -> ir.PluginStmt | None:
    """The plugin statement that provides `cls` (for code generation imports)."""
    for stmt in program.plugins:
        if cls.__name__ in plugin_classes(_import(stmt)):
            return stmt
    return None


def unknown_plugin_hint(name: str, program: ir.Program) -> str | None:
    return did_you_mean(name, load_plugins(program))
