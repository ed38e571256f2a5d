"""Stage 5: the runner. Trains and evaluates a spec's `train` block.

Fast path: when the data's transforms are deterministic and the dataset fits in memory,
transforms run once and batches are sliced from one tensor on the training device (no
DataLoader, no per-sample Python). Otherwise a DataLoader. Checkpoints hold everything
needed to resume bit-for-bit on CPU: model, optimizer, scheduler, scaler, RNG states,
and the position in the epoch.
"""

from __future__ import annotations

import json
import math
import os
import random
import signal
import sys
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from specc import ir
from specc.errors import CheckpointError, DataError, SpecError, SpecTypeError, UsageError
from specc.errors import did_you_mean as _dym
from specc.training import kernels
from specc.training.config import CallSpec, DataConfig, TrainConfig, apply_overrides, train_config
from specc.values import loc

# ---- construction ---------------------------------------------------------------------


def pick_device(name: str) -> torch.device:
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UsageError(f"unknown device {name!r}", hint="use auto, cpu, cuda or mps") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UsageError('device = "cuda" but no CUDA GPU is available here')
    return dev


def build_model(program: ir.Program, cfg: TrainConfig) -> tuple[nn.Module, ir.ModelInstance]:
    from specc.builder import build_module
    from specc.lang.plugins import load_plugins
    from specc.shapes.check import check_model

    spec = cfg.model
    mdef = program.model(spec.name)
    if mdef is None:
        raise SpecTypeError(
            f"no model named `{spec.name}`",
            loc(spec.span),
            hint=_dym(spec.name, [m.name for m in program.models]),
        )
    names = [p.name for p in mdef.params]
    args = dict(zip(names, spec.args, strict=False)) | spec.kwargs
    inst = check_model(program, spec.name, args=args)
    return build_module(inst, load_plugins(program)), inst


def _ctor(namespace: Any, spec: CallSpec, what: str, *extra: Any, **more: Any) -> Any:
    cls = namespace.get(spec.name) if isinstance(namespace, dict) else getattr(
        namespace, spec.name, None)  # fmt: skip
    if not isinstance(cls, type):
        public = list(namespace) if isinstance(namespace, dict) else dir(namespace)
        raise SpecTypeError(
            f"unknown {what} `{spec.name}`",
            loc(spec.span),
            hint=_dym(spec.name, [n for n in public if not n.startswith("_")]),
        )
    try:
        return cls(*extra, *spec.args, **(spec.kwargs | more))
    except (TypeError, ValueError) as exc:
        raise SpecTypeError(
            f"{spec.name}(...) is invalid: {str(exc).splitlines()[0]}", loc(spec.span)
        ) from None


def build_loss(spec: CallSpec, program: ir.Program | None = None,
               model_inst: ir.ModelInstance | None = None,
               label_shape: list[int] | None = None) -> nn.Module:  # fmt: skip
    """A torch.nn loss, a plugin loss class, or a spec model with two inputs returning a
    scalar (checked against the model's output and the labels' shape)."""
    from specc.lang.plugins import load_plugins

    plugins = load_plugins(program) if program is not None else {}
    if spec.name in plugins and issubclass(plugins[spec.name], nn.Module):
        return _ctor(plugins, spec, "loss")
    if program is not None and (mdef := program.model(spec.name)) is not None:
        return _spec_loss(program, mdef, spec, model_inst, label_shape or [])
    cls = getattr(nn, spec.name, None)
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        losses = [n for n in dir(nn) if n.endswith("Loss")] + list(plugins)
        raise SpecTypeError(
            f"unknown loss `{spec.name}`", loc(spec.span), hint=_dym(spec.name, losses)
        )
    return _ctor(nn, spec, "loss")


def _spec_loss(program, mdef, spec, model_inst, label_shape) -> nn.Module:
    from specc.builder import build_module
    from specc.lang.plugins import load_plugins
    from specc.shapes.check import check_model

    fwd = mdef.forward
    if fwd is None or len(fwd.inputs) != 2:
        raise SpecTypeError(
            f"a loss model takes two inputs (output, target); `{mdef.name}` takes "
            f"{len(fwd.inputs) if fwd else 0}",
            loc(spec.span),
        )
    names = [p.name for p in mdef.params]
    args = dict(zip(names, spec.args, strict=False)) | spec.kwargs
    inputs = {}
    if model_inst is not None and model_inst.outputs and model_inst.outputs[0].tensor:
        inputs[fwd.inputs[0].name] = list(model_inst.outputs[0].tensor.shape)
    inputs[fwd.inputs[1].name] = list(label_shape)
    inst = check_model(program, mdef.name, args=args, inputs=inputs)
    out = inst.outputs[0] if len(inst.outputs) == 1 else None
    if out is None or out.tensor is None or out.tensor.batched or out.tensor.shape:
        raise SpecTypeError(
            f"loss model `{mdef.name}` must return one scalar (e.g. `.mean()`)",
            loc(spec.span),
        )
    return build_module(inst, load_plugins(program))


def build_optimizer(spec: CallSpec, model: nn.Module,
                    program: ir.Program | None = None) -> torch.optim.Optimizer:  # fmt: skip
    from specc.lang.plugins import load_plugins
    from specc.training.finetune import param_groups

    groups = param_groups(program, model) if program is not None else [
        {"params": [p for p in model.parameters() if p.requires_grad]}]  # fmt: skip
    if not any(g["params"] for g in groups):
        raise SpecTypeError("every parameter is frozen: nothing to optimize", loc(spec.span))
    plugins = load_plugins(program) if program is not None else {}
    if spec.name in plugins and issubclass(plugins[spec.name], torch.optim.Optimizer):
        return _ctor(plugins, spec, "optimizer", groups)
    return _ctor(torch.optim, spec, "optimizer", groups,
                 **kernels.optimizer_defaults(spec, groups, model))  # fmt: skip


def build_scheduler(cfg: TrainConfig, opt: torch.optim.Optimizer, steps_per_epoch: int):
    sched = None
    interval = cfg.scheduler_interval
    sched_cls = lr = torch.optim.lr_scheduler
    if cfg.scheduler is not None:
        extra = {}
        if cfg.scheduler.name == "OneCycleLR" and "total_steps" not in cfg.scheduler.kwargs:
            extra["total_steps"] = steps_per_epoch * cfg.epochs
        sched = _ctor(sched_cls, cfg.scheduler, "scheduler", opt, **extra)
        if interval is None:
            interval = "step" if cfg.scheduler.name in ("OneCycleLR", "CyclicLR") else "epoch"
    if cfg.warmup:
        warm = lr.LinearLR(opt, start_factor=1e-3, total_iters=cfg.warmup)
        if sched is None:
            return warm, "step"
        if interval != "step":
            raise SpecTypeError(
                "warmup counts optimizer steps; set scheduler_interval = "
                '"step" to combine it with a scheduler',
                loc(cfg.scheduler.span),
            )
        return lr.SequentialLR(opt, [warm, sched], milestones=[cfg.warmup]), "step"
    return sched, interval or "epoch"


# ---- data -----------------------------------------------------------------------------


@dataclass
class Split:
    name: str
    x: torch.Tensor | None = None  # fast path: all inputs, already transformed
    y: torch.Tensor | None = None
    dataset: Any = None  # fallback: a Dataset for a DataLoader
    augment: Any = None  # random transforms applied per sample to each fast-path batch

    def __len__(self) -> int:
        return len(self.y) if self.y is not None else len(self.dataset)


def _transform_items(items: list[CallSpec]) -> list[tuple[str, list, dict]]:
    return [(c.name, list(c.args), dict(c.kwargs)) for c in items]


def make_splits(data: DataConfig, device: torch.device, seed: int) -> dict[str, Split]:
    from specc.training import data as D

    common = _transform_items(data.transform)
    train_items = (
        _transform_items(data.train_transform) if data.train_transform is not None else common
    )
    splits: dict[str, Split] = {}
    for name in ("train", "val", "test"):
        spec: CallSpec | None = getattr(data, name)
        if spec is None:
            continue
        items = train_items if name == "train" else common
        det, rnd = D.split_transforms(items)
        location = loc(spec.span)
        tf = D.make_transform(items, location=location)
        ds = D.make_dataset(
            spec.name, list(spec.args), dict(spec.kwargs), transform=tf, location=location
        )
        split = Split(name, dataset=ds)
        if data.in_memory:
            # Materialize with the deterministic prefix only; random augmentations then
            # run per batch on the training device.
            pre = (
                ds
                if not rnd
                else D.make_dataset(
                    spec.name,
                    list(spec.args),
                    dict(spec.kwargs),
                    transform=D.make_transform(det, location=location),
                    location=location,
                )
            )
            got = D.materialize(pre, location=location)
            if got is not None:
                augment = D.make_transform(rnd, location=location) if rnd else None
                split = Split(name, x=got[0].to(device), y=got[1].to(device), augment=augment)
        splits[name] = split
    if data.val_split and "val" not in splits:
        splits = _carve_val(splits, data.val_split, seed)
    return splits


def _carve_val(splits: dict[str, Split], fraction: float, seed: int) -> dict[str, Split]:
    train = splits["train"]
    n = len(train)
    n_val = max(1, int(round(n * fraction)))
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    val_idx, train_idx = perm[:n_val].sort().values, perm[n_val:].sort().values
    if train.x is not None:
        dev = train.x.device
        splits["val"] = Split("val", x=train.x[val_idx.to(dev)], y=train.y[val_idx.to(dev)])
        splits["train"] = Split("train", x=train.x[train_idx.to(dev)], y=train.y[train_idx.to(dev)])
    else:
        from torch.utils.data import Subset

        splits["val"] = Split("val", dataset=Subset(train.dataset, val_idx.tolist()))
        splits["train"] = Split("train", dataset=Subset(train.dataset, train_idx.tolist()))
    return splits


def batches(
    split: Split,
    batch_size: int,
    *,
    perm: torch.Tensor | None,
    start: int,
    workers: int,
    drop_last: bool,
    device: torch.device,
    augment: bool = False,
    rank: int = 0,
    world: int = 1,
):
    """Yield (inputs, labels) from batch index `start` on, in the order `perm` gives."""
    n = len(split)
    if world > 1:
        # Each global batch is world * batch_size samples in `perm` order; rank r takes
        # its slice, so N workers see exactly the data of one worker with N times the batch.
        # An incomplete last global batch is dropped to keep the workers in step.
        gb = batch_size * world
        count = n // gb
        order = perm if perm is not None else torch.arange(n)
        parts = [order[b * gb + rank * batch_size : b * gb + (rank + 1) * batch_size]
                 for b in range(count)]  # fmt: skip
        perm = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        n = len(perm)
    else:
        count = n // batch_size if drop_last else math.ceil(n / batch_size)
    if split.x is not None:
        # All batch indices cut up front (one op, not a slice per step).
        if perm is None:
            xs, ys = split.x.split(batch_size), split.y.split(batch_size)
            pairs = zip(xs[start:count], ys[start:count], strict=True)
        else:
            idxs = perm.to(split.x.device).split(batch_size)[start:count]
            pairs = ((split.x[i], split.y[i]) for i in idxs)
        for x, y in pairs:
            if split.augment is not None and augment:
                # v2 transforms draw one set of parameters per call: call per sample.
                x = torch.stack([split.augment(xi) for xi in x])
            yield x, y
        return
    from torch.utils.data import DataLoader, Subset

    ds = split.dataset
    if perm is not None:
        ds = Subset(ds, perm[start * batch_size :].tolist())
    else:
        ds = Subset(ds, list(range(start * batch_size, n)))
    # Workers only help when a core is left for the training process itself.
    workers = min(workers, max((os.cpu_count() or 1) - 2, 0))
    loader = DataLoader(
        ds,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


# ---- metrics --------------------------------------------------------------------------

METRICS = ("accuracy", "top5", "loss")


def _topk(out: torch.Tensor, y: torch.Tensor, k: int) -> torch.Tensor:
    k = min(k, out.shape[-1])
    return (out.topk(k, dim=-1).indices == y.unsqueeze(-1)).any(-1).sum()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    split: Split,
    loss_fn: nn.Module,
    cfg: TrainConfig,
    data: DataConfig,
    device: torch.device,
    amp,
    ctx: Any = None,
) -> dict[str, float]:
    was_training = model.training
    model.eval()
    total, loss_sum = 0, 0.0
    correct = {m: 0 for m in cfg.metrics if m != "loss"}
    bs = data.eval_batch_size or max(data.batch_size, 256)
    if ctx is not None and ctx.enabled:
        split = _shard(split, ctx)
    for x, y in batches(
        split, bs, perm=None, start=0, workers=data.workers, drop_last=False, device=device
    ):
        with amp():
            out = model(x)
            loss = loss_fn(out, y)
        n = y.shape[0]
        total += n
        loss_sum += float(loss) * n
        for m in correct:
            correct[m] += int(_topk(out, y, 1 if m == "accuracy" else 5))
    model.train(was_training)
    if ctx is not None and ctx.enabled:
        from specc.training import distributed

        keys = list(correct)
        sums = distributed.all_sum([total, loss_sum, *(correct[k] for k in keys)], ctx, device)
        total, loss_sum = int(sums[0]), sums[1]
        correct = dict(zip(keys, sums[2:], strict=True))
    result = {"loss": loss_sum / max(total, 1)}
    result.update({m: c / max(total, 1) for m, c in correct.items()})
    return result


def _shard(split: Split, ctx: Any) -> Split:
    """This worker's share of an evaluation set (every world-th sample)."""
    if split.x is not None:
        return Split(split.name, x=split.x[ctx.rank :: ctx.world], y=split.y[ctx.rank :: ctx.world])
    from torch.utils.data import Subset

    return Split(
        split.name, dataset=Subset(split.dataset, range(ctx.rank, len(split.dataset), ctx.world))
    )


# ---- progress -------------------------------------------------------------------------


class Progress:
    """A live bar on a terminal, plain lines every `log_every` steps otherwise."""

    def __init__(self, total_steps: int, log_every: int, quiet: bool = False) -> None:
        self.total = total_steps
        self.log_every = log_every
        self.quiet = quiet
        self.live = sys.stderr.isatty() and not quiet
        self.bar = None
        if self.live:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                TextColumn,
                TimeRemainingColumn,
            )
            from rich.progress import Progress as RichProgress

            self.bar = RichProgress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[info]}"),
                TimeRemainingColumn(),
                transient=False,
            )
            self.task = self.bar.add_task("train", total=total_steps, epoch=1, info="")
            self.bar.start()

    def due(self, step: int) -> bool:
        """Whether `step` shows anything: the loop skips building the line otherwise."""
        if self.bar is not None:
            return True
        return not self.quiet and (step % self.log_every == 0 or step == self.total)

    def step(self, step: int, epoch: int, loss: float, lr: float, ips: float) -> None:
        info = f"loss {loss:.4f}  lr {lr:.3g}  {ips:,.0f} samples/s"
        if self.bar is not None:
            self.bar.update(self.task, completed=step, epoch=epoch, info=info)
        elif self.due(step):
            print(f"epoch {epoch}  step {step}/{self.total}  {info}", file=sys.stderr, flush=True)

    def message(self, text: str) -> None:
        if self.quiet:
            return
        if self.bar is not None:
            self.bar.console.print(text)
        else:
            print(text, file=sys.stderr, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


# ---- the loop -------------------------------------------------------------------------


@dataclass
class State:
    epoch: int = 0  # epochs completed
    step: int = 0  # optimizer steps taken
    batch: int = 0  # batches consumed in the current epoch
    best: float | None = None
    best_epoch: int | None = None
    stale_epochs: int = 0
    history: list[dict] = field(default_factory=list)
    conv_kernels: str | None = None  # what `conv_kernels` chose (see kernels); None: torch
    threads: int | None = None  # what `threads` chose; None: torch's count


def _rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def _amp(precision: str, device: torch.device):
    if precision == "fp32":
        return nullcontext
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return lambda: torch.autocast(device_type=device.type, dtype=dtype)


def _maybe_compile(model: nn.Module, enabled: bool, progress: Progress, sample: Any) -> Any:
    if not enabled:
        return model
    try:
        compiled = torch.compile(model)
        with torch.no_grad():
            compiled.eval()
            compiled(sample)
            compiled.train()
        return compiled
    except Exception as exc:  # any backend failure: fall back rather than lose the run
        progress.message(
            f"warning: torch.compile failed ({type(exc).__name__}: "
            f"{str(exc).splitlines()[0][:160]}); training in eager mode"
        )
        return model


def run(
    program: ir.Program,
    overrides: list[str] | None = None,
    *,
    resume: bool = False,
    name: str | None = None,
    runs_dir: Path | str = "runs",
    quiet: bool = False,
    train_name: str | None = None,
) -> dict[str, Any]:
    """Train the program's train block; returns the final summary (metrics, paths)."""
    texts = {s.path: s.text for s in program.sources}
    try:
        with kernels.restored():
            return _run(program, overrides or [], resume, name, Path(runs_dir), quiet, train_name)
    except SpecError as err:
        raise err.with_source(texts) from None


def _kernel_choices(cfg, ctx, device, model, train, data) -> tuple[str | None, int | None]:
    """The convolution kernels and CPU thread count for this run (see specc.training.kernels);
    None: torch's choice."""
    threads = cfg.threads if isinstance(cfg.threads, int) else None
    has_conv = kernels.has_conv(model)
    conv = None
    if device.type == "cpu" and cfg.conv_kernels == "native" and has_conv:
        conv = kernels.NATIVE
    auto_conv = cfg.conv_kernels == "auto" and has_conv
    auto_threads = cfg.threads == "auto"
    # The rules were measured in fp32 on one process; torch.compile picks kernels of its own.
    if (
        device.type != "cpu" or cfg.precision != "fp32" or cfg.compile or ctx.enabled
        or not (auto_conv or auto_threads)
    ):  # fmt: skip
        return conv, threads
    n = min(data.batch_size, len(train))
    try:
        if train.x is not None:
            x = train.x[:n]
        else:
            from torch.utils.data import default_collate

            x = default_collate([train.dataset[i] for i in range(n)])[0]
        probe = kernels.probe(model, x)
    except Exception:  # the training loop reports the model's own errors
        return conv, threads
    if auto_conv:
        conv = kernels.choose_conv(probe)
    if auto_threads:
        threads = kernels.choose_threads(probe)
    return conv, threads


def _run(program, overrides, resume, name, runs_dir, quiet, train_name):
    from specc.training import checkpoint

    program = apply_overrides(program, overrides)
    cfg, data = train_config(program, train_name)
    for m in cfg.metrics:
        if m not in METRICS:
            raise UsageError(
                f"unknown metric `{m}`", hint=_dym(m, METRICS) or f"available: {', '.join(METRICS)}"
            )
    best_metric = cfg.best_metric or next((m for m in cfg.metrics if m != "loss"), "loss")
    higher_better = best_metric != "loss"
    run_name = name or Path(program.sources[0].path).stem
    out_dir = runs_dir / run_name
    last_path, best_path = out_dir / "last.pt", out_dir / "best.pt"

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"cannot create the run folder {out_dir}: {exc.strerror}",
                         hint="choose another place with --runs-dir") from None  # fmt: skip
    from specc.training import distributed

    ctx = distributed.from_env(cfg.strategy)
    device = distributed.init(ctx, pick_device(cfg.device))
    quiet = quiet or not ctx.is_main  # rank 0 alone prints, logs and writes checkpoints
    torch.manual_seed(cfg.seed)
    random.seed(cfg.seed)
    model, model_inst = build_model(program, cfg)
    model = model.to(device)
    from specc.training.finetune import apply_train_setup

    apply_train_setup(program, model, quiet=quiet)
    base_model = model
    model = distributed.wrap(model, ctx, device)
    splits = make_splits(data, device, cfg.seed)
    train = splits["train"]
    if len(train) == 0:
        raise DataError("the training set is empty", loc(data.train.span))
    eval_split = splits.get("val") or splits.get("test")
    n = len(train)
    per_epoch = n // data.batch_size if data.drop_last else math.ceil(n / data.batch_size)
    if ctx.enabled:
        per_epoch = n // (data.batch_size * ctx.world)
        if per_epoch == 0:
            raise DataError(
                f"{n} training samples are fewer than one global batch "
                f"({data.batch_size} x {ctx.world} workers)",
                loc(data.train.span),
            )
    steps_per_epoch = max(math.ceil(per_epoch / cfg.accumulate), 1)  # last group may be short
    _check_input_shapes(splits, model_inst, data)
    _check_label_ranges(splits, model_inst, data)
    label_shape = list(train.y.shape[1:]) if train.y is not None else []
    loss_fn = build_loss(cfg.loss, program, model_inst, label_shape).to(device)
    opt = build_optimizer(cfg.optimizer, base_model, program)
    sched, interval = build_scheduler(cfg, opt, steps_per_epoch)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.precision == "fp16")
    scaling = scaler.is_enabled()
    amp = _amp(cfg.precision, device)

    state = State()
    if resume:
        if not last_path.exists():
            raise CheckpointError(
                f"--resume: no checkpoint at {last_path}",
                hint="run without --resume to start fresh",
            )
        ck = checkpoint.load(last_path)
        try:
            distributed.load_state_dicts(model, opt, ctx, ck["model"], ck["optimizer"])
            if sched is not None and ck.get("scheduler") is not None:
                sched.load_state_dict(ck["scheduler"])
            scaler.load_state_dict(ck["scaler"])
            _set_rng_state(ck["rng"])
            state = State(**ck["state"])
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            raise CheckpointError(
                f"{last_path} does not match this spec: {str(exc).splitlines()[0][:300]}"
            ) from None

    total_batches = per_epoch * cfg.epochs
    if cfg.max_steps:
        total_batches = min(total_batches, cfg.max_steps * cfg.accumulate)
    progress = Progress(total_batches, cfg.log_every, quiet)
    if ctx.is_main:
        for stale in out_dir.glob(".*.tmp"):  # left by a run killed while saving
            stale.unlink(missing_ok=True)
    metrics_file = (out_dir / "metrics.jsonl").open("a") if ctx.is_main else _NullFile()
    tb = _tensorboard(out_dir) if ctx.is_main else None

    def log(record: dict) -> None:
        metrics_file.write(json.dumps(record) + "\n")
        metrics_file.flush()
        if tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    tb.add_scalar(k, v, record.get("step", 0))

    def save(path: Path) -> None:
        model_state, opt_state = distributed.state_dicts(model, opt, ctx)  # all ranks
        if not ctx.is_main:
            return
        checkpoint.save(
            {
                "model": model_state,
                "optimizer": opt_state,
                "scheduler": sched.state_dict() if sched is not None else None,
                "scaler": scaler.state_dict(),
                "rng": _rng_state(),
                "state": state.__dict__,
                "spec": program.sources[0].text,
                "model_name": cfg.model.name,
            },
            path,
        )

    stop = {"signal": None}

    def on_sigint(signum, frame):  # stop at the next step boundary, then checkpoint
        if stop["signal"] is not None:
            raise KeyboardInterrupt
        stop["signal"] = signum
        progress.message(
            "interrupt: finishing this step and saving a checkpoint (press Ctrl-C again to abort)"
        )

    old_handler = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    model.train()
    sample = train.x[:2] if train.x is not None else None
    step_model = _maybe_compile(model, cfg.compile and sample is not None, progress, sample)
    if cfg.compile and sample is None:
        progress.message("warning: compile = True needs the in-memory fast path; eager mode")
    if not resume:  # a resumed run keeps the kernels its checkpoint recorded
        state.conv_kernels, state.threads = _kernel_choices(
            cfg, ctx, device, base_model, train, data
        )
    kernels.use(state.conv_kernels, state.threads)
    t_start = time.perf_counter()
    seen = 0
    test_eval: tuple[int, dict[str, float]] | None = None  # (at step, metrics) when eval is test
    batch_no = state.epoch * per_epoch + state.batch
    interrupted = False
    try:
        while state.epoch < cfg.epochs and not interrupted:
            epoch = state.epoch + 1
            gen = torch.Generator().manual_seed(cfg.seed * 1000003 + epoch)
            perm = torch.randperm(n, generator=gen) if data.shuffle else None
            t_log, n_log, loss_acc = time.perf_counter(), 0, 0.0
            for x, y in batches(
                train,
                data.batch_size,
                perm=perm,
                start=state.batch,
                workers=data.workers,
                drop_last=data.drop_last,
                device=device,
                augment=True,
                rank=ctx.rank,
                world=ctx.world,
            ):
                with amp():
                    out = step_model(x)
                    loss = loss_fn(out, y)
                loss_value = loss.item()
                if not math.isfinite(loss_value):
                    if cfg.on_nan == "skip":
                        opt.zero_grad(set_to_none=True)
                        progress.message(f"warning: non-finite loss at step {state.step}; skipped")
                        state.batch += 1
                        batch_no += 1
                        continue
                    raise SpecTypeError(
                        f"loss became {loss_value} at step {state.step + 1} (epoch {epoch}); "
                        f"training stopped. The last good checkpoint is {last_path}"
                        if last_path.exists()
                        else f"loss became {loss_value} at step {state.step + 1} (epoch {epoch}); "
                        "training stopped before any checkpoint was written",
                        hint='lower the learning rate, add clip_grad_norm, or set on_nan = "skip"',
                    )
                # Dividing by 1 and scaling by a disabled scaler would each add an op
                # (and its backward) to every step without changing a bit.
                if cfg.accumulate != 1:
                    loss = loss / cfg.accumulate
                (scaler.scale(loss) if scaling else loss).backward()
                state.batch += 1
                batch_no += 1
                seen += y.shape[0]
                n_log += y.shape[0]
                loss_acc += loss_value
                if state.batch % cfg.accumulate == 0 or state.batch == per_epoch:
                    if cfg.clip_grad_norm:
                        scaler.unscale_(opt)
                        nn.utils.clip_grad_norm_(model.parameters(), cfg.clip_grad_norm)
                    if scaling:
                        scaler.step(opt)
                        scaler.update()
                    else:
                        opt.step()
                    opt.zero_grad(set_to_none=True)
                    state.step += 1
                    if sched is not None and interval == "step":
                        sched.step()
                    if state.step % cfg.log_every == 0:
                        now = time.perf_counter()
                        ips = n_log / max(now - t_log, 1e-9)
                        log(
                            {
                                "step": state.step,
                                "epoch": epoch,
                                "loss": loss_acc / max(cfg.log_every * cfg.accumulate, 1),
                                "lr": opt.param_groups[0]["lr"],
                                "samples_per_s": ips,
                            }
                        )
                        t_log, n_log, loss_acc = now, 0, 0.0
                    if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                        save(last_path)
                if progress.due(batch_no):
                    progress.step(
                        batch_no,
                        epoch,
                        loss_value,
                        opt.param_groups[0]["lr"],
                        seen / max(time.perf_counter() - t_start, 1e-9),
                    )
                stopping = stop["signal"] is not None
                if ctx.enabled:  # every worker must stop at the same step
                    stopping = distributed.all_sum([float(stopping)], ctx, device)[0] > 0
                if stopping or (cfg.max_steps and state.step >= cfg.max_steps):
                    interrupted = stopping
                    break
            else:
                # The epoch ran to its end.
                state.epoch += 1
                state.batch = 0
                if sched is not None and interval == "epoch":
                    sched.step()
                record = {"epoch": state.epoch, "step": state.step}
                if eval_split is not None:
                    ev = evaluate(model, eval_split, loss_fn, cfg, data, device, amp, ctx)
                    if eval_split.name == "test":
                        test_eval = (state.step, ev)
                    record.update({f"{eval_split.name}_{k}": v for k, v in ev.items()})
                    value = ev.get(best_metric, ev["loss"])
                    improved = state.best is None or (
                        value > state.best if higher_better else value < state.best
                    )
                    if improved:
                        state.best, state.best_epoch, state.stale_epochs = value, state.epoch, 0
                    else:
                        state.stale_epochs += 1
                    progress.message(
                        f"epoch {state.epoch}: "
                        + "  ".join(f"{eval_split.name} {k} {v:.4f}" for k, v in ev.items())
                    )
                    state.history.append(record)
                    log(record)
                    save(last_path)
                    if improved:
                        save(best_path)
                    if cfg.early_stop and state.stale_epochs >= cfg.early_stop:
                        progress.message(f"early stop: no improvement in {cfg.early_stop} epochs")
                        break
                else:
                    state.history.append(record)
                    log(record)
                    save(last_path)
                continue
            # Left the epoch early: max_steps or an interrupt.
            save(last_path)
            break
    finally:
        progress.close()
        if old_handler is not None:
            signal.signal(signal.SIGINT, old_handler)
        if sys.exc_info()[0] is not None:
            distributed.shutdown(ctx, failed=True)
        if interrupted or sys.exc_info()[0] is not None:
            _close(metrics_file, tb)

    if interrupted:
        distributed.shutdown(ctx)
        if not ctx.is_main:
            return {"interrupted": True, "step": state.step}
        print(
            f"stopped at step {state.step}; checkpoint saved to {last_path}\n"
            f"resume with: specc run {program.sources[0].path} --resume",
            file=sys.stderr,
        )
        return {"interrupted": True, "step": state.step, "checkpoint": str(last_path)}

    summary: dict[str, Any] = {
        "steps": state.step,
        "epochs": state.epoch,
        "seconds": time.perf_counter() - t_start,
        "run_dir": str(out_dir),
    }
    if state.conv_kernels is not None:
        summary["conv_kernels"] = state.conv_kernels
    if state.threads is not None:
        summary["threads"] = state.threads
    if "test" in splits:
        if best_path.exists() and "val" in splits and not ctx.enabled:
            model.load_state_dict(checkpoint.load(best_path)["model"])
        if test_eval is not None and test_eval[0] == state.step:
            test = test_eval[1]  # the model has not changed since the last epoch's test
        else:
            test = evaluate(model, splits["test"], loss_fn, cfg, data, device, amp, ctx)
        summary.update({f"test_{k}": v for k, v in test.items()})
        log({"final": True, **{f"test_{k}": v for k, v in test.items()}})
    _close(metrics_file, tb)
    distributed.shutdown(ctx)
    _print_summary(summary, quiet)
    return summary


def _check_input_shapes(splits: dict[str, Split], inst: ir.ModelInstance, data: DataConfig):
    """Samples that do not have the shape the forward declares fail here, naming the dataset
    and index, instead of as a matmul error somewhere inside the model."""
    if len(inst.inputs) != 1:
        return
    arg, declared = inst.inputs[0]
    for name, split in splits.items():
        spec = getattr(data, name, None) or data.train
        if split.x is not None:
            sample = split.x[0]
            if split.augment is not None:  # may crop or resize; must not consume the RNG
                cuda = [sample.device] if sample.is_cuda else []
                with torch.random.fork_rng(devices=cuda):
                    sample = split.augment(sample)
        elif len(split.dataset):
            state = random.getstate()
            with torch.random.fork_rng(devices=[]):
                item = split.dataset[0]
            random.setstate(state)
            sample = item[0] if isinstance(item, (tuple, list)) else item
        else:
            continue
        got = list(getattr(sample, "shape", []))
        if got != list(declared.shape):
            raise DataError(
                f"{spec.name} ({name}) sample 0 has shape {got}, but `{inst.model}` declares "
                f"`{arg}: {list(declared.shape)}`",
                loc(spec.span),
                hint="declare the shape the data has, or add a transform (e.g. Resize) "
                "to the data block",
            )


def _check_label_ranges(splits: dict[str, Split], inst: ir.ModelInstance, data: DataConfig):
    """Class labels outside the model's outputs fail here, naming the dataset and index,
    instead of as an ATen assertion in the middle of training."""
    from specc.training.data import check_labels

    out = inst.outputs[0].tensor if len(inst.outputs) == 1 else None
    if out is None or len(out.shape) != 1:
        return
    for name, split in splits.items():
        if split.y is not None and not split.y.is_floating_point() and split.y.dim() == 1:
            spec = getattr(data, name, None) or data.train
            check_labels(split.y, out.shape[0], dataset_name=f"{spec.name} ({name})",
                         location=loc(spec.span))  # fmt: skip


class _NullFile:
    """metrics.jsonl on workers other than rank 0: nothing is written."""

    def write(self, text: str) -> None:
        pass

    def flush(self) -> None:
        pass

    def close(self) -> None:
        pass


def _close(metrics_file, tb) -> None:
    metrics_file.close()
    if tb is not None:
        tb.close()


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def _tensorboard(out_dir: Path):
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            from torch.utils.tensorboard import SummaryWriter
    except Exception:  # tensorboard not installed: metrics.jsonl is enough
        return None
    return SummaryWriter(str(out_dir / "tb"))


def _print_summary(summary: dict[str, Any], quiet: bool) -> None:
    if quiet:
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(title="summary", title_justify="left")
    table.add_column("")
    table.add_column("value", justify="right")
    for k, v in summary.items():
        table.add_row(k, f"{v:.4f}" if isinstance(v, float) else str(v))
    Console(stderr=False).print(table)


def evaluate_checkpoint(
    program: ir.Program, ckpt: Path, overrides: list[str] | None = None, quiet: bool = False
) -> dict[str, float]:
    """`specc eval`: load a checkpoint into the spec's model and evaluate on test data."""
    from specc.training import checkpoint

    texts = {s.path: s.text for s in program.sources}
    try:
        program = apply_overrides(program, overrides or [])
        cfg, data = train_config(program)
        device = pick_device(cfg.device)
        model, model_inst = build_model(program, cfg)
        model = model.to(device)
        state = checkpoint.load(ckpt)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(
                f"{ckpt} does not fit model `{cfg.model.name}`: {str(exc).splitlines()[0][:300]}"
            ) from None
        splits = make_splits(data, device, cfg.seed)
        split = splits.get("test") or splits.get("val")
        if split is None:
            raise UsageError("the data block has no `test` set to evaluate on")
        _check_input_shapes({split.name: split}, model_inst, data)
        loss_fn = build_loss(
            cfg.loss, program, model_inst, list(split.y.shape[1:]) if split.y is not None else []
        ).to(device)
        with kernels.restored():  # the kernels the run trained with
            recorded = state.get("state") or {}
            kernels.use(recorded.get("conv_kernels"), recorded.get("threads"))
            result = evaluate(model, split, loss_fn, cfg, data, device, _amp(cfg.precision, device))
    except SpecError as err:
        raise err.with_source(texts) from None
    if not quiet:
        print("  ".join(f"{split.name}_{k} {v:.4f}" for k, v in result.items()))
    return result
