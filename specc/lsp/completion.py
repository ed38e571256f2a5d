"""Completion items for the place the cursor is (specc.lsp.cursor): layer constructors in a
model, forward functions and the model's layers in a forward, a constructor's (dataset's,
transform's) keyword arguments inside its parentheses, the settings of `data` and `train`
blocks.

Every name comes from where the checker takes it: the registry's tables (torch.nn classes,
forward functions, tensor methods), constructor signatures (a data block's: as the data
stage binds them), the training config's pydantic
fields, and the spec's own models and data blocks from the last analysis that loaded it
(plus the block headers of the text as it is now, which may not parse).
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Iterable

from lsprotocol import types as lsp

from specc import ir
from specc.lsp.cursor import Cursor

_QUALIFIED = re.compile(r"\b(?:[A-Za-z_][A-Za-z0-9_]*\.)+([A-Za-z_][A-Za-z0-9_]*)")
_HEADER = re.compile(r"^[ \t]*(model|sequential|data)[ \t]+([A-Za-z_][A-Za-z0-9_]*)", re.M)
Kind = lsp.CompletionItemKind
_Argument = tuple[inspect.Parameter, str]  # a callee's parameter and its detail


def completions(cursor: Cursor, program: ir.Program | None, text: str) -> list[lsp.CompletionItem]:
    """What may be typed at `cursor` in `text`; `program` is the last good load of it."""
    names = _SpecNames(program, text)
    block = cursor.block
    if cursor.after_dot:  # an attribute: only a forward's tensor methods are known
        return _tensor_methods() if block == "forward" else []
    items: list[lsp.CompletionItem] = []
    if cursor.callee is not None and cursor.keyword_slot:
        if cursor.callee not in names.layers(cursor.model):  # `fc(x)` calls a layer
            items += _keywords(cursor.callee, names, cursor, block)
    declaring = cursor.key is not None or cursor.callee is not None
    if block == "sequential" or (block == "model" and declaring):
        items += _layer_constructors(names)
        items += _items(names.params(cursor.model), Kind.Variable, "parameter")
    elif block == "forward":
        items += _items(names.layers(cursor.model), Kind.Field, "layer")
        items += _functions()
    elif block in ("data", "train") and cursor.callee is None:
        if cursor.key is None and cursor.keyword_slot:
            items += _settings(block, cursor.keys)
        elif block == "train" and cursor.key == "model":
            items += _items(names.models, Kind.Class, "model")
        elif block == "train" and cursor.key == "data":
            items += _items(names.data, Kind.Struct, "data block")
    return items


class _SpecNames:
    """The spec's own names: the last good load's (imports included) and those the text's
    block headers declare now."""

    def __init__(self, program: ir.Program | None, text: str) -> None:
        self.program = program
        headers = _HEADER.findall(text)
        known = program.models if program is not None else []
        self.models = _unique([*(m.name for m in known), *(n for k, n in headers if k != "data")])
        data = program.data if program is not None else []
        self.data = _unique([*(d.name for d in data), *(n for k, n in headers if k == "data")])

    def model(self, name: str | None) -> ir.ModelDef | None:
        return self.program.model(name) if self.program is not None and name else None

    def params(self, model: str | None) -> list[str]:
        mdef = self.model(model)
        return [p.name for p in mdef.params] if mdef is not None else []

    def layers(self, model: str | None) -> list[str]:
        mdef = self.model(model)
        return [layer.name for layer in mdef.layers if not layer.anonymous] if mdef else []

    def plugins(self) -> dict[str, type]:
        from specc.lsp.navigation import plugins_of

        return plugins_of(self.program)


def _unique(names: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(names))


def _items(
    names: Iterable[str], kind: lsp.CompletionItemKind, detail: str
) -> list[lsp.CompletionItem]:
    return [lsp.CompletionItem(label=n, kind=kind, detail=detail) for n in names]


def _layer_constructors(names: _SpecNames) -> list[lsp.CompletionItem]:
    """What a layer can be: the spec's models, specc's own constructors, plugin classes,
    torch.nn classes (the registry's order of resolution)."""
    from torch import nn

    from specc.registry import BUILTIN_CTORS, TENSOR_CTORS, nn_classes, qualname

    plugins = {n: c for n, c in names.plugins().items() if issubclass(c, nn.Module)}
    return [
        *_items(names.models, Kind.Class, "model"),
        *_items([*BUILTIN_CTORS, *TENSOR_CTORS], Kind.Keyword, "specc"),
        *_items(plugins, Kind.Class, "plugin"),
        *[lsp.CompletionItem(label=n, kind=Kind.Class, detail=qualname(cls))
          for n, cls in nn_classes().items() if n not in plugins],
    ]  # fmt: skip


def _functions() -> list[lsp.CompletionItem]:
    from specc.registry import functions

    return [lsp.CompletionItem(label=n, kind=Kind.Function, detail=qualified)
            for n, (qualified, _) in functions().items()]  # fmt: skip


def _tensor_methods() -> list[lsp.CompletionItem]:
    from specc.registry import tensor_methods

    return _items(sorted(tensor_methods()), Kind.Method, "torch.Tensor")


def _settings(block: str, written: frozenset[str]) -> list[lsp.CompletionItem]:
    """The settings a `data` or `train` block accepts (the training config's fields) that
    it does not set yet."""
    from specc.training.config import DataConfig, TrainConfig

    config = DataConfig if block == "data" else TrainConfig
    return [lsp.CompletionItem(label=name, kind=Kind.Property, insert_text=f"{name} = ",
                               detail=_annotation(f.annotation),
                               documentation=None if f.is_required() else f"default {f.default!r}")
            for name, f in config.model_fields.items() if name not in written]  # fmt: skip


def _annotation(annotation: object) -> str:
    """`int`, `CallSpec | None`, `Literal['fp32', 'bf16', 'fp16']`: the type as written."""
    if isinstance(annotation, type):
        return annotation.__name__
    return _QUALIFIED.sub(r"\1", str(annotation))


def _keywords(
    callee: str, names: _SpecNames, cursor: Cursor, block: str | None
) -> list[lsp.CompletionItem]:
    """`name=` for each keyword argument of the constructor (or forward function, dataset,
    transform) called that the call has not passed yet, by keyword or by position; first
    in the list."""
    params = _data_parameters(callee) if block == "data" else _parameters(callee, names)
    return [lsp.CompletionItem(label=f"{name}=", kind=Kind.Variable, insert_text=f"{name}=",
                               detail=detail, sort_text=f"0{i:03d}")
            for i, (name, detail) in enumerate(_described(params, cursor.positional))
            if name not in cursor.keys]  # fmt: skip


def _parameters(callee: str, names: _SpecNames) -> list[_Argument]:
    """Each argument `callee` accepts, and its detail: a spec model's declared parameters
    (their types), else the signature of the class or function of that name (defaults)."""
    mdef = names.model(callee)
    if mdef is not None:
        kind = inspect.Parameter.POSITIONAL_OR_KEYWORD
        return [(inspect.Parameter(p.name, kind), p.type or "") for p in mdef.params]
    target = _class(callee, names.plugins())
    if target is not None:
        from specc.registry import signature_params

        params = signature_params(target)
        if _takes_what_specc_passes(target):
            params = params[1:]
    else:
        from specc.registry import functions

        function = functions().get(callee)
        try:
            params = list(inspect.signature(function[1]).parameters.values()) if function else []
        except (TypeError, ValueError):  # a builtin without a signature
            params = []
    return [(p, _default(p)) for p in params]


def _data_parameters(callee: str) -> list[_Argument]:
    """A dataset's or transform's arguments in a data block."""
    from specc.training.data import data_parameters

    return [(p, _default(p)) for p in data_parameters(callee) or []]


def _default(p: inspect.Parameter) -> str:
    return "" if p.default is p.empty else f"= {p.default!r}"


def _described(arguments: list[_Argument], positional: int) -> list[tuple[str, str]]:
    """(name, detail) of each argument that may still be passed by keyword, after the
    first `positional` were passed by position."""
    left = []
    for p, detail in arguments:
        if positional and p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD):
            positional -= 1
        elif p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY):
            left.append((p.name, detail))
    return left


def _class(name: str, plugins: dict[str, type]) -> type | None:
    """The class a constructor name resolves to: a plugin, a torch.nn class, a torch
    optimizer or learning-rate scheduler."""
    import torch

    from specc.registry import nn_classes

    if name in plugins:
        return plugins[name]
    if name in nn_classes():
        return nn_classes()[name]
    for home in (torch.optim, torch.optim.lr_scheduler):
        found = getattr(home, name, None) if not name.startswith("_") else None
        if isinstance(found, type):
            return found
    return None


def _takes_what_specc_passes(cls: type) -> bool:
    """An optimizer's first argument (the parameters) and a scheduler's (the optimizer)
    are specc's to pass."""
    import torch

    return issubclass(cls, (torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler))
