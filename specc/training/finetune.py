"""Fine-tuning statements of a train block: `init ... from`, `freeze`, `group`.

`init [target] from "file" (options)` loads a specc checkpoint, a plain state_dict or a
.safetensors file into the whole model or a sub-module, always through
``torch.load(weights_only=True)`` / safetensors. `freeze` takes parameter or module names
and globs; frozen BatchNorm layers stay in eval mode and frozen parameters stay out of the
optimizer. `group "pattern" (lr=...)` gives matching parameters their own hyper-parameters.
"""

from __future__ import annotations

import fnmatch
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc import ir
from specc.errors import CheckpointError, SpecTypeError, did_you_mean
from specc.values import literal, loc

INIT_OPTIONS = ("strict", "skip_mismatched", "strip_prefix", "add_prefix")


def matches(name: str, pattern: str) -> bool:
    """`backbone` matches backbone and everything under it; globs match full names."""
    if any(c in pattern for c in "*?["):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".")


def _train(program: ir.Program) -> ir.TrainDef | None:
    return program.trains[0] if program.trains else None


def frozen_names(program: ir.Program, model: nn.Module) -> set[str]:
    """Names of the parameters the train block freezes; patterns must match something."""
    train = _train(program)
    if train is None:
        return set()
    names = [n for n, _ in model.named_parameters()]
    frozen: set[str] = set()
    for stmt in train.freezes:
        for pattern in stmt.patterns:
            hit = {n for n in names if matches(n, pattern)}
            if not hit:
                modules = sorted({n.rsplit(".", 1)[0] for n in names if "." in n})
                raise SpecTypeError(
                    f"freeze {pattern!r} matches no parameter",
                    loc(stmt.span),
                    hint=did_you_mean(pattern, modules)
                    or 'names are module paths like `backbone` or globs like "*.bn*"',
                )
            frozen |= hit
    return frozen


def apply_train_setup(program: ir.Program, model: nn.Module, *, quiet: bool = False) -> None:
    """Load `init` weights, then apply `freeze`, on a freshly built model."""
    train = _train(program)
    if train is None:
        return
    for stmt in train.inits:
        load_init(model, stmt, quiet=quiet)
    frozen = frozen_names(program, model)
    for name, p in model.named_parameters():
        if name in frozen:
            p.requires_grad_(False)
    if frozen:
        keep_frozen_norms_in_eval(model)


def keep_frozen_norms_in_eval(model: nn.Module) -> None:
    """Frozen BatchNorm layers must not update running stats: pin them to eval mode."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters())
            if params and not any(p.requires_grad for p in params):
                module.train = _stay_eval.__get__(module)  # type: ignore[method-assign]
                module.eval()


def _stay_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)


def _options(stmt: ir.InitStmt) -> dict[str, Any]:
    opts = {}
    for key, expr in stmt.options.items():
        if key not in INIT_OPTIONS:
            raise SpecTypeError(
                f"init has no option `{key}`",
                loc(expr.span) or loc(stmt.span),
                hint=did_you_mean(key, INIT_OPTIONS) or f"options: {', '.join(INIT_OPTIONS)}",
            )
        opts[key] = literal(expr)
    return opts


def load_init(model: nn.Module, stmt: ir.InitStmt, *, quiet: bool = False) -> dict[str, list]:
    """Load one `init` statement; returns loaded/missing/unexpected/skipped key lists."""
    from specc.training import checkpoint

    opts = _options(stmt)
    target: nn.Module = model
    if stmt.target:
        try:
            target = model.get_submodule(stmt.target)
        except AttributeError:
            children = [n for n, _ in model.named_modules() if n]
            raise SpecTypeError(
                f"init: the model has no sub-module `{stmt.target}`",
                loc(stmt.span),
                hint=did_you_mean(stmt.target, children),
            ) from None
    try:
        state = checkpoint.load(Path(stmt.path))["model"]
    except CheckpointError as err:
        raise CheckpointError(f"init from {stmt.path!r}: {err.message}", loc(stmt.span),
                              hint=err.hint) from None  # fmt: skip
    state = _map_keys(state, target, stmt.target, opts)
    own = target.state_dict()
    skipped = []
    for key, value in list(state.items()):
        if key in own and tuple(own[key].shape) != tuple(value.shape):
            if opts.get("skip_mismatched"):
                skipped.append(key)
                del state[key]
                continue
            where = f"{stmt.target}.{key}" if stmt.target else key
            raise CheckpointError(
                f"init: `{where}` has shape {list(own[key].shape)} in the model but "
                f"{list(value.shape)} in {stmt.path}",
                loc(stmt.span),
                hint="to load everything else and keep the new layer's fresh weights, write "
                "`(skip_mismatched=True)` after the path",
            )
    result = target.load_state_dict(state, strict=False)
    missing, unexpected = list(result.missing_keys), list(result.unexpected_keys)
    if opts.get("strict", False) and (missing or unexpected):
        raise CheckpointError(
            f"init (strict=True): {len(missing)} missing and {len(unexpected)} unexpected "
            f"keys, e.g. {(missing + unexpected)[:3]}",
            loc(stmt.span),
        )
    loaded = [k for k in state if k not in unexpected]
    if not loaded:
        raise CheckpointError(
            f"init: no key of {stmt.path} fits `{stmt.target or 'the model'}`",
            loc(stmt.span),
            hint=f"its keys look like {list(state)[:3]}; use strip_prefix=/add_prefix=",
        )
    if not quiet:
        what = stmt.target or "model"
        print(
            f"init {what} from {stmt.path}: {len(loaded)} tensors loaded, "
            f"{len(missing)} missing, {len(unexpected)} unexpected"
            + (
                f", {len(skipped)} skipped (shape changed): {', '.join(skipped)}" if skipped else ""
            ),
            file=sys.stderr,
        )
        for k in missing[:10]:
            print(f"  missing: {k}", file=sys.stderr)
        for k in unexpected[:10]:
            print(f"  unexpected: {k}", file=sys.stderr)
    return {"loaded": loaded, "missing": missing, "unexpected": unexpected, "skipped": skipped}


def _map_keys(state: dict[str, torch.Tensor], target: nn.Module, prefix: str | None,
              opts: dict[str, Any]) -> dict[str, torch.Tensor]:  # fmt: skip
    """Strip or add key prefixes so a checkpoint of a whole model fits a sub-module."""
    strip, add = opts.get("strip_prefix"), opts.get("add_prefix")
    if strip:
        state = {k.removeprefix(strip): v for k, v in state.items() if k.startswith(strip)}
    if add:
        state = {add + k: v for k, v in state.items()}
    if strip or add:
        return state
    own = set(target.state_dict())
    if prefix and not (own & set(state)):
        # A checkpoint of a model that had this sub-module under the same name.
        sub = {k.removeprefix(prefix + "."): v for k, v in state.items()
               if k.startswith(prefix + ".")}  # fmt: skip
        if sub:
            return sub
    return dict(state)


def param_groups(program: ir.Program, model: nn.Module) -> list[dict[str, Any]]:
    """Trainable parameters split by `group` statements (first match wins)."""
    train = _train(program)
    groups = list(train.groups) if train is not None else []
    buckets: list[list[nn.Parameter]] = [[] for _ in groups]
    rest: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        for i, g in enumerate(groups):
            if any(matches(name, pat) for pat in g.patterns):
                buckets[i].append(p)
                break
        else:
            rest.append(p)
    out: list[dict[str, Any]] = []
    for g, params in zip(groups, buckets, strict=True):
        if not params:
            raise SpecTypeError(f"group {g.patterns} matches no trainable parameter",
                                loc(g.span))  # fmt: skip
        out.append({"params": params, **{k: literal(v) for k, v in g.options.items()}})
    if rest:
        out.append({"params": rest})
    return out


def frozen_counts(program: ir.Program, inst: ir.ModelInstance) -> dict[str, int] | None:
    """Frozen parameter counts per layer for `specc check`, or None without freezes."""
    train = _train(program)
    if train is None or not train.freezes:
        return None
    model_field = next((f for f in train.fields if f.key == "model"), None)
    if model_field is None or not isinstance(model_field.value, ir.Call):
        return None
    if model_field.value.func != inst.model:
        return None
    from specc.builder import build_module
    from specc.lang.plugins import load_plugins

    with torch.device("meta"):
        model = build_module(inst, load_plugins(program))
    frozen = frozen_names(program, model)
    counts: dict[str, int] = {}
    for name, p in model.named_parameters():
        if name in frozen:
            layer = name.split(".", 1)[0]
            counts[layer] = counts.get(layer, 0) + p.numel()
    return counts
