"""The train plan: a spec's `train` block and its `data` block, after `--set` overrides,
resolved and validated once into frozen records.

Every name is looked up (model, loss, optimizer, scheduler, datasets, transforms), every
constructor's arguments are bound to its signature, `init`, `freeze` and `group` are matched
against the model's parameter names (on the meta device), the best metric gets its
direction, and the kernel rules are applied to the model's shapes. Each mistake is a
SpecError at its place in the spec. Two consumers read the plan and nothing else:
`specc.training.runner` instantiates it and `specc.codegen.train` prints it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import inspect
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from specc import ir
from specc.errors import SpecError, SpecNameError, SpecTypeError, did_you_mean
from specc.training.config import CallSpec, DataConfig, DataRef, TrainConfig, train_config
from specc.values import literal, loc

METRICS = ("accuracy", "top5", "loss", "perplexity", "bits_per_token")
# Ranked lower-is-better (best.pt, early stopping); the accuracies higher-is-better.
LOWER_IS_BETTER = frozenset({"loss", "perplexity", "bits_per_token"})
# Metrics computed from the mean token cross-entropy: exp(loss) and loss / ln 2.
CROSS_ENTROPY_METRICS = ("perplexity", "bits_per_token")
STEP_SCHEDULERS = ("OneCycleLR", "CyclicLR")  # stepped per optimizer step by default
INIT_OPTIONS = ("strict", "skip_mismatched", "strip_prefix", "add_prefix", "transpose", "ignore")
# What `save_pretrained` writes in its folder: `init from "folder"` reads this file.
FOLDER_WEIGHTS = "model.safetensors"
# The dataset kinds that are a text read as token ids (their tokens decode back to text).
TEXT_KINDS = ("text_file", "python_docs", "python_source")


# ---- the records ----------------------------------------------------------------------


@dataclass(frozen=True)
class Ctor:
    """A constructor from the spec with the class it names and its arguments (plain
    Python values). `origin`: "torch" (torch.nn, torch.optim, torchvision), "plugin"
    (a class of a `plugin` file) or "spec" (a model of the spec; `cls` is None)."""

    name: str
    cls: type | None
    origin: Literal["torch", "plugin", "spec"]
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    span: ir.Span | None = None


@dataclass(frozen=True)
class ModelPlan:
    call: CallSpec  # as written: `DigitsNet()` (`data.<attr>` arguments filled in)
    args: dict[str, Any]  # bound to the model's parameters
    instance: ir.ModelInstance
    # parameters written as `data.<attr>`, e.g. (("vocab_size", "data.vocab_size"),)
    from_data: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True)
class LossPlan:
    ctor: Ctor
    stateful: bool  # holds tensors (parameters or buffers): moved to the device
    definition: ir.ModelDef | None = None  # a loss written as a spec model
    model_args: dict[str, Any] = field(default_factory=dict)
    targets: ClassTargets | None = None  # CrossEntropyLoss and NLLLoss


@dataclass(frozen=True)
class ClassTargets:
    """A loss over class indices (CrossEntropyLoss, NLLLoss) and how it meets the model.
    `flatten_sequence`: the model gives [B, T, V] scores, one row per position (a language
    model); the loss sees `outputs.flatten(0, -2)` and `labels.flatten()`, as nanoGPT's
    `F.cross_entropy(logits.view(-1, V), y.view(-1))`, so each token is one sample.
    `ignore_index`: the target the loss leaves out, also left out of the token counts and
    metrics. `plain`: reduction="mean" without weight or label_smoothing, so the loss is
    the mean negative log-likelihood per counted target (what perplexity needs)."""

    flatten_sequence: bool
    ignore_index: int
    plain: bool


@dataclass(frozen=True)
class GroupPlan:
    """`group "backbone.*" (lr=1e-4)`: the trainable parameters it takes (first match wins)."""

    patterns: tuple[str, ...]
    options: dict[str, Any]
    params: tuple[str, ...]
    span: ir.Span


@dataclass(frozen=True)
class OptimizerPlan:
    ctor: Ctor
    groups: tuple[GroupPlan, ...]  # empty: every trainable parameter in one group
    rest: tuple[str, ...]  # trainable parameters in no group (all of them without groups)
    # torch's fused step (one kernel for all tensors) when the parameters are on the CPU:
    # SGD, Adam and AdamW whose implementation the spec did not choose (specc.training.kernels)
    fused_on_cpu: bool


@dataclass(frozen=True)
class SchedulerPlan:
    ctor: Ctor | None
    interval: Literal["step", "epoch"]
    fill_total_steps: bool  # OneCycleLR without total_steps: batches per epoch x epochs
    warmup: int  # linear warmup over this many optimizer steps, then `ctor`


@dataclass(frozen=True)
class InitPlan:
    target: str | None  # sub-module path, None: the whole model
    path: str
    strict: bool
    skip_mismatched: bool
    strip_prefix: str | None
    add_prefix: str | None
    file: str  # what is read: `path`, or `path/model.safetensors` when `path` is a folder
    # fnmatch patterns over the target's full keys, after the prefix mapping:
    transpose: tuple[str, ...]  # 2-D tensors the file stores as [in, out] (HF's Conv1D)
    ignore: tuple[str, ...]  # keys left out on both sides: the model keeps its own
    ties: tuple[tuple[str, str], ...]  # (alias, source): the target's keys of one tensor
    span: ir.Span


@dataclass(frozen=True)
class LoraPlan:
    """`lora "attn.c_attn" (r=8, alpha=16)`: the Linear layers that get adapters (module
    paths, model order) and their settings. Everything else is frozen, except the
    parameters of `modules_to_save`, which train in full."""

    patterns: tuple[str, ...]  # as written
    modules: tuple[str, ...]
    r: int
    alpha: float
    dropout: float
    rslora: bool
    modules_to_save: tuple[str, ...]  # patterns, as `freeze` matches them
    load: str | None  # an adapter to start from: specc's adapter.safetensors or PEFT's folder
    params: int  # the adapters' parameter count
    trainable: int  # parameters that train: the adapters and `modules_to_save`
    total: int  # every parameter of the adapted model (tied ones once)
    base_sha256: str  # the base architecture's signature (specc.training.lora)
    warnings: tuple[ir.CheckWarning, ...]
    span: ir.Span

    @property
    def scale(self) -> float:
        return self.alpha / math.sqrt(self.r) if self.rslora else self.alpha / self.r

    @property
    def load_is_peft_folder(self) -> bool:
        """`load=` names PEFT's folder unless it names a `.safetensors` file: decided by the
        name, so `specc run` and the generated script (which cannot look at the disk of
        the machine it runs on) read the same thing."""
        return self.load is not None and not self.load.rstrip("/").endswith(".safetensors")

    def summary(self) -> str:
        """What `check` and `run` print: the layers, the adapters' size, the fraction."""
        shown = ", ".join(self.modules[:4]) + (", ..." if len(self.modules) > 4 else "")
        fraction = 100 * self.trainable / self.total
        return (f"lora: {len(self.modules)} Linear layers ({shown}), r={self.r}, "
                f"scale {self.scale:g}; {self.params:,} adapter parameters; trainable "
                f"{self.trainable:,} of {self.total:,} ({fraction:.2f}%)")  # fmt: skip


@dataclass(frozen=True)
class DatasetPlan:
    split: Literal["train", "val", "test"]
    name: str
    kind: Literal[
        "digits", "tensor_file", "text_file", "python_docs", "python_source", "torchvision"
    ]
    cls: type | None  # the torchvision class
    args: tuple[Any, ...]
    kwargs: dict[str, Any]  # without `verify`
    verify: bool  # False: CIFAR files checked for existence only, not MD5
    span: ir.Span | None


@dataclass(frozen=True)
class TransformPlan:
    name: str
    cls: type | None  # None for ToTensor: ToImage() then ToDtype(float32, scale=True)
    args: tuple[Any, ...]
    kwargs: dict[str, Any]  # dtype strings already torch dtypes
    random: bool  # draws random numbers: runs per sample, per batch
    span: ir.Span | None


@dataclass(frozen=True)
class DataPlan:
    train: DatasetPlan
    val: DatasetPlan | None
    test: DatasetPlan | None
    transform: tuple[TransformPlan, ...]  # val and test (and train without train_transform)
    train_transform: tuple[TransformPlan, ...]
    batch_size: int
    eval_batch_size: int
    shuffle: bool
    workers: int
    val_split: float
    drop_last: bool
    # The splits are kept as tensors on the device: the spec allows it and every split's
    # deterministic transforms give tensors (a torchvision set without ToTensor gives PIL
    # images, which are streamed through a DataLoader). The runner also streams a set too
    # large for memory; the batches are the same either way.
    in_memory: bool

    def splits(self) -> list[DatasetPlan]:
        return [d for d in (self.train, self.val, self.test) if d is not None]


@dataclass(frozen=True)
class LanguageModel:
    """A model trained on a text dataset that maps `[B, T]` token ids to `[B, T, vocab]`
    logits: `specc sample` continues a prompt with it, and generated code gives its class
    nanoGPT's `generate`."""

    model: str  # the model definition's name
    block_size: int  # the context it reads: its one `[T]` input's T, at the checked arguments


@dataclass(frozen=True)
class Kernels:
    """Convolution kernels and CPU threads (specc.training.kernels). A choice made by a
    shape rule holds for a single-process fp32 CPU run only; one the spec set, always."""

    conv: str | None  # "native": torch's native CPU convolutions instead of oneDNN
    threads: int | None  # intra-op threads; None: torch's count
    conv_by_rule: bool
    threads_by_rule: bool

    def for_run(self, cpu: bool, distributed: bool) -> tuple[str | None, int | None]:
        by_rule_ok = cpu and not distributed
        conv = self.conv if cpu and (by_rule_ok or not self.conv_by_rule) else None
        threads = self.threads if by_rule_ok or not self.threads_by_rule else None
        return conv, threads


@dataclass(frozen=True)
class TrainPlan:
    """Everything `specc run` and `specc compile --train` need, resolved."""

    model: ModelPlan
    data: DataPlan
    loss: LossPlan
    language_model: LanguageModel | None  # the model, when it is one trained on text
    optimizer: OptimizerPlan
    scheduler: SchedulerPlan
    inits: tuple[InitPlan, ...]
    parameters: tuple[str, ...]  # the model's parameter names, in order
    freeze_patterns: tuple[str, ...]  # as written
    frozen: tuple[str, ...]  # parameter names `freeze` matched
    frozen_norms: tuple[str, ...]  # BatchNorm module paths whose parameters are all frozen
    lora: LoraPlan | None  # the adapters; `frozen` then holds every base parameter not saved
    metrics: tuple[str, ...]  # computed on evaluation, besides the loss
    best_metric: str
    higher_is_better: bool
    kernels: Kernels
    epochs: int
    max_steps: int | None
    log_every: int
    seed: int
    device: str
    precision: Literal["fp32", "bf16", "fp16"]
    compile: bool
    accumulate: int
    clip_grad_norm: float | None
    early_stop: int | None
    checkpoint_every: int | None
    on_nan: Literal["stop", "skip"]
    strategy: Literal["auto", "ddp", "fsdp"]


# ---- resolving ------------------------------------------------------------------------


def resolve(program: ir.Program, name: str | None = None) -> TrainPlan:
    """The plan of the program's train block (the first, or the one named), with every
    mistake a located SpecError. `--set` overrides are applied to `program` before."""
    train, cfg, data = train_config(program, name)
    spans = {f.key: f.span for f in train.fields}
    data_plan = _data(program, data)
    written = cfg.model
    cfg = with_data_refs(cfg, data_plan)
    model = _model(program, cfg.model, written)
    meta = _meta_module(program, model.instance)
    lora = _lora(train, meta, model.call.name)
    frozen = frozen_names(train, meta) | lora_frozen(lora, meta)
    base_parameters = tuple(n for n, _ in meta.named_parameters())
    if lora is not None:
        from specc.training.lora import add_adapters

        add_adapters(meta, lora)  # the optimizer holds the adapters' parameters
        counts = [(p.numel(), n not in frozen) for n, p in meta.named_parameters()]
        lora = dataclasses.replace(lora, trainable=sum(n for n, t in counts if t),
                                   total=sum(n for n, _ in counts))  # fmt: skip
    loss = _loss(program, cfg.loss, model.instance)
    metrics, best, higher = _metrics(cfg, spans, loss)
    return TrainPlan(
        model=model,
        data=data_plan,
        loss=loss,
        language_model=language_model(model.instance, data_plan.train),
        optimizer=_optimizer(program, cfg.optimizer, train.groups, meta, frozen),
        scheduler=_scheduler(cfg),
        inits=tuple(_init(stmt, meta) for stmt in train.inits),
        parameters=base_parameters,
        freeze_patterns=tuple(p for stmt in train.freezes for p in stmt.patterns),
        frozen=tuple(n for n, _ in meta.named_parameters() if n in frozen),
        frozen_norms=_frozen_norms(meta, frozen),
        lora=lora,
        metrics=metrics,
        best_metric=best,
        higher_is_better=higher,
        kernels=_kernels(cfg, meta, model.instance, data.batch_size),
        device=_device(cfg.device, spans.get("device")),
        **{k: getattr(cfg, k) for k in _PLAIN_SETTINGS},
    )


_PLAIN_SETTINGS = (
    "epochs", "max_steps", "log_every", "seed", "precision", "compile", "accumulate",
    "clip_grad_norm", "early_stop", "checkpoint_every", "on_nan", "strategy",
)  # fmt: skip


def _model_field(program: ir.Program) -> ir.Call | None:
    """The call `model = Name(...)` of the first train block, read from the IR."""
    field = next((f for f in program.trains[0].fields if f.key == "model"), None) \
        if program.trains else None  # fmt: skip
    return field.value if field is not None and isinstance(field.value, ir.Call) else None


def model_reads_data(program: ir.Program) -> bool:
    """Whether the first train block's model takes an argument `data.<attr>` (read from the
    IR, so a spec without one is never resolved by `check`)."""
    call = _model_field(program)
    return call is not None and any(
        isinstance(a, ir.Attribute) and isinstance(a.value, ir.Name) and a.value.id == "data"
        for a in (*call.args, *call.kwargs.values())
    )


def language_model(instance: ir.ModelInstance, train_set: DatasetPlan) -> LanguageModel | None:
    """`instance` as a language model when `train_set` is a text and the model maps token
    ids to logits per position; else None."""
    if train_set.kind not in TEXT_KINDS:
        return None
    block_size = token_context(instance)
    return LanguageModel(instance.model, block_size) if block_size is not None else None


def token_context(instance: ir.ModelInstance) -> int | None:
    """T, when the model's one input is `[T]` token ids (long or int) and its output
    `[B, T, V]` logits; else None."""
    inputs = [t for _, t in instance.inputs]
    out = instance.outputs[0].tensor if len(instance.outputs) == 1 else None
    ok = (
        len(inputs) == 1
        and inputs[0].batched
        and len(inputs[0].shape) == 1
        and isinstance(inputs[0].shape[0], int)
        and inputs[0].dtype in ("int64", "int32")
        and out is not None
        and out.batched
        and len(out.shape) == 2
        and out.shape[0] == inputs[0].shape[0]
    )
    return inputs[0].shape[0] if ok else None  # type: ignore[return-value]


def trained_language_model(program: ir.Program, instance: ir.ModelInstance) -> LanguageModel | None:
    """`language_model` for `specc compile` without --train: `instance`, the compiled model,
    when the first train block trains that model. Its training set is resolved without
    reading anything, and only for a model shaped like a language model (the train block
    is validated only then)."""
    call = _model_field(program)
    if call is None or call.func != instance.model or token_context(instance) is None:
        return None
    from specc.training.data import resolve_dataset

    _, _, data = train_config(program)
    return language_model(instance, resolve_dataset("train", data.train))


def train_model(program: ir.Program, name: str | None = None) -> ModelPlan:
    """The train block's model with `data.<attr>` arguments filled in from its training
    dataset (for `specc check`, which shows the values)."""
    _, cfg, data = train_config(program, name)
    resolved = with_data_refs(cfg, _data(program, data))
    return _model(program, resolved.model, cfg.model)


def with_data_refs(cfg: TrainConfig, data: DataPlan) -> TrainConfig:
    """`cfg` with every `data.<attr>` argument of its constructors replaced by the value the
    training dataset gives (a located DataError when it gives none)."""
    from specc.training.data import dataset_attribute

    def fill(ref: DataRef) -> Any:
        return dataset_attribute(data.train, ref.attr, loc(ref.span))

    ctors = ("model", "loss", "optimizer", "scheduler")
    return cfg.model_copy(update={k: _map_data_refs(getattr(cfg, k), fill) for k in ctors})


def _map_data_refs(v: Any, f: Callable[[DataRef], Any]) -> Any:
    """`v` (a constructor call, its arguments, lists of them) with each `data.<attr>`
    replaced by `f` of it."""
    if isinstance(v, DataRef):
        return f(v)
    if isinstance(v, CallSpec):
        return v.model_copy(
            update={
                "args": [_map_data_refs(a, f) for a in v.args],
                "kwargs": {k: _map_data_refs(a, f) for k, a in v.kwargs.items()},
            }
        )
    if isinstance(v, (list, tuple)):
        return type(v)(_map_data_refs(i, f) for i in v)
    return v


def _data_refs(v: Any) -> list[DataRef]:
    """The `data.<attr>` arguments anywhere in `v`."""
    found: list[DataRef] = []
    _map_data_refs(v, found.append)
    return found


def model_args(mdef: ir.ModelDef, call: CallSpec) -> dict[str, Any]:
    if len(call.args) > len(mdef.params):
        raise SpecTypeError(
            f"`{call.name}` takes {len(mdef.params)} arguments, not {len(call.args)}",
            loc(call.span),
        )
    names = [p.name for p in mdef.params]
    return dict(zip(names, call.args, strict=False)) | call.kwargs


def _model(program: ir.Program, call: CallSpec, written: CallSpec | None = None) -> ModelPlan:
    """The model `call` makes; `written`: the same call before `data.<attr>` was filled in."""
    from specc.shapes.check import check_model

    mdef = program.model(call.name)
    if mdef is None:
        raise SpecTypeError(
            f"no model named `{call.name}`",
            loc(call.span),
            hint=did_you_mean(call.name, [m.name for m in program.models]),
        )
    args = model_args(mdef, call)
    as_written = model_args(mdef, written) if written is not None else {}
    from_data = tuple((k, str(v)) for k, v in as_written.items() if isinstance(v, DataRef))
    return ModelPlan(call, args, check_model(program, call.name, args=args), from_data)


def _meta_module(program: ir.Program, instance: ir.ModelInstance) -> Any:
    """The model on the meta device: its parameter and module names, and its op sizes."""
    from specc.builder import build_module
    from specc.lang.plugins import load_plugins
    from specc.shapes.meta import on_meta

    with on_meta():
        return build_module(instance, load_plugins(program))


def _metrics(cfg: TrainConfig, spans: dict[str, ir.Span],
             loss: LossPlan) -> tuple[tuple[str, ...], str, bool]:  # fmt: skip
    """The metrics, the one that picks `best.pt` and early stopping, and its direction:
    the loss, perplexity and bits per token are lower-is-better, accuracies higher."""
    for m in cfg.metrics:
        if m not in METRICS:
            raise SpecNameError(
                f"unknown metric `{m}`",
                loc(spans.get("metrics")),
                hint=did_you_mean(m, METRICS) or f"available: {', '.join(METRICS)}",
            )
    metrics = tuple(m for m in dict.fromkeys(cfg.metrics) if m != "loss")
    best = cfg.best_metric or next(iter(metrics), "loss")
    computed = ["loss", *metrics]
    if best not in METRICS:
        raise SpecNameError(
            f"unknown best_metric `{best}`",
            loc(spans.get("best_metric")),
            hint=did_you_mean(best, METRICS) or f"known metrics: {', '.join(METRICS)}",
        )
    if best not in computed:
        raise SpecNameError(
            f"best_metric `{best}` is not computed: the metrics are {', '.join(computed)}",
            loc(spans.get("best_metric")),
            hint=f"add it to `metrics`, or use one of {', '.join(computed)}",
        )
    _check_cross_entropy_metrics(metrics, loss, spans.get("metrics"))
    return metrics, best, best not in LOWER_IS_BETTER


def _check_cross_entropy_metrics(metrics: tuple[str, ...], loss: LossPlan,
                                 span: ir.Span | None) -> None:  # fmt: skip
    """Perplexity and bits per token are exp(loss) and loss / ln 2 only when the loss is
    the plain mean negative log-likelihood of the targets."""
    asked = [m for m in metrics if m in CROSS_ENTROPY_METRICS]
    if not asked:
        return
    if loss.targets is None:
        raise SpecTypeError(
            f"metric `{asked[0]}` needs a cross-entropy loss, not `{loss.ctor.name}`",
            loc(span),
            hint="use loss = CrossEntropyLoss() (or NLLLoss() after log_softmax)",
        )
    if not loss.targets.plain:
        raise SpecTypeError(
            f"metric `{asked[0]}` is computed from the mean loss per token, which "
            f"`{loss.ctor.name}` changes with weight, label_smoothing or reduction",
            loc(span),
            hint="drop those loss options, or the metric",
        )


def _device(name: str, span: ir.Span | None) -> str:
    if name == "auto":
        return name
    import torch

    try:
        torch.device(name)
    except RuntimeError:
        raise SpecTypeError(
            f"unknown device {name!r}", loc(span), hint="use auto, cpu, cuda or mps"
        ) from None
    return name


# ---- constructors ---------------------------------------------------------------------


def _plain_signature(sig: inspect.Signature) -> str:
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def bind(
    target: Callable, args: list | tuple, kwargs: dict, what: str, span: ir.Span | None
) -> inspect.BoundArguments | None:
    """Bind a spec's arguments to `target`'s signature: a mistake is a located error. None
    when the signature cannot be read."""
    try:
        sig = inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature
        return None
    try:
        return sig.bind(*args, **kwargs)
    except TypeError as exc:
        raise SpecTypeError(
            f"bad arguments for {what}: {exc}",
            loc(span),
            hint=f"the signature is {_plain_signature(sig)}",
        ) from None


def _no_calls(spec: CallSpec) -> None:
    """Constructor arguments are constants: a call among them is a located error."""
    for v in (*spec.args, *spec.kwargs.values()):
        for item in v if isinstance(v, (list, tuple)) else (v,):
            if isinstance(item, CallSpec):
                raise SpecTypeError("a call is not allowed here", loc(item.span or spec.span))


def _lookup(spec: CallSpec, namespace: Any, base: type, what: str,
            plugins: dict[str, type], names: list[str]) -> Ctor:  # fmt: skip
    """A plugin class, else the class of that name in `namespace`, subclassing `base`."""
    _no_calls(spec)
    plugin = plugins.get(spec.name)
    if plugin is not None and issubclass(plugin, base):
        return Ctor(spec.name, plugin, "plugin", tuple(spec.args), dict(spec.kwargs), spec.span)
    cls = getattr(namespace, spec.name, None) if not spec.name.startswith("_") else None
    if not (isinstance(cls, type) and issubclass(cls, base)) or cls is base:
        raise SpecTypeError(
            f"unknown {what} `{spec.name}`", loc(spec.span), hint=did_you_mean(spec.name, names)
        )
    return Ctor(spec.name, cls, "torch", tuple(spec.args), dict(spec.kwargs), spec.span)


def _plugins(program: ir.Program) -> dict[str, type]:
    from specc.lang.plugins import load_plugins

    return load_plugins(program) if program.plugins else {}


def _loss(program: ir.Program, spec: CallSpec, model: ir.ModelInstance) -> LossPlan:
    """A torch.nn loss, a plugin loss class, or a spec model taking (output, target)."""
    plan, loss = _loss_class(program, spec)
    if loss is None:
        return plan
    return dataclasses.replace(plan, targets=_class_targets(loss, model))


def _loss_class(program: ir.Program, spec: CallSpec, build: bool = True) -> tuple[LossPlan, Any]:
    """What the loss is without the model: its plan, and for a class, an instance on meta
    (None for a spec model, or when not `build`: only its class and arguments checked)."""
    import torch
    from torch import nn

    plugins = _plugins(program)
    mdef = program.model(spec.name)
    plugin = plugins.get(spec.name)
    if mdef is not None and not (plugin is not None and issubclass(plugin, nn.Module)):
        fwd = mdef.forward
        if fwd is None or len(fwd.inputs) != 2:
            raise SpecTypeError(
                f"a loss model takes two inputs (output, target); `{mdef.name}` takes "
                f"{len(fwd.inputs) if fwd else 0}",
                loc(spec.span),
            )
        ctor = Ctor(spec.name, None, "spec", tuple(spec.args), dict(spec.kwargs), spec.span)
        args = model_args(mdef, spec)
        return LossPlan(ctor, stateful=True, definition=mdef, model_args=args), None
    losses = [n for n in dir(nn) if n.endswith("Loss")] + list(plugins)
    ctor = _lookup(spec, nn, nn.Module, "loss", plugins, losses)
    bind(ctor.cls, spec.args, spec.kwargs, f"loss `{spec.name}`", spec.span)
    if not build:
        return LossPlan(ctor, stateful=False), None
    try:
        with torch.device("meta"):
            loss = ctor.cls(*spec.args, **spec.kwargs)
    except (TypeError, ValueError, RuntimeError) as exc:
        raise SpecTypeError(
            f"{spec.name}(...) is invalid: {str(exc).splitlines()[0]}", loc(spec.span)
        ) from None
    return LossPlan(ctor, stateful=any(True for _ in loss.state_dict())), loss


def _class_targets(loss: Any, model: ir.ModelInstance) -> ClassTargets | None:
    """How a CrossEntropyLoss or NLLLoss meets the model's output: a [B, T, V] output is
    scored per position with the class (vocabulary) last, the language-model layout.
    (torch's own layout, class scores in dimension 1, stays for [B, C] and [B, C, H, W].)"""
    from torch import nn

    if type(loss) not in (nn.CrossEntropyLoss, nn.NLLLoss):
        return None
    out = model.outputs[0].tensor if len(model.outputs) == 1 else None
    sequence = out is not None and out.batched and len(out.shape) == 2
    plain = (loss.reduction == "mean" and loss.weight is None
             and getattr(loss, "label_smoothing", 0.0) == 0.0)  # fmt: skip
    return ClassTargets(flatten_sequence=sequence, ignore_index=loss.ignore_index, plain=plain)


def spec_loss_instance(program: ir.Program, plan: TrainPlan,
                       label_shape: list[int]) -> ir.ModelInstance:  # fmt: skip
    """A loss written as a spec model, checked against the model's output and the labels'
    shape (known once the data is: class labels are [])."""
    from specc.shapes.check import check_model
    from specc.shapes.meta import value_text

    loss = plan.loss
    assert loss.definition is not None
    fwd = loss.definition.forward
    assert fwd is not None
    inputs: dict[str, list[int]] = {fwd.inputs[1].name: list(label_shape)}
    outputs = plan.model.instance.outputs
    if outputs and (model_out := outputs[0].tensor) is not None:
        if not (model_out.batched and model_out.fixed()):  # e.g. [2*B] after a view(-1)
            raise SpecTypeError(
                f"loss model `{loss.ctor.name}` takes the model's output per sample, but "
                f"`{plan.model.instance.model}` returns {value_text(outputs[0])}, whose "
                "first dimension is not the batch",
                loc(loss.ctor.span),
            )
        inputs[fwd.inputs[0].name] = [int(d) for d in model_out.shape]  # type: ignore[arg-type]
    inst = check_model(program, loss.ctor.name, args=loss.model_args, inputs=inputs)
    out = inst.outputs[0] if len(inst.outputs) == 1 else None
    if out is None or out.tensor is None or out.tensor.batched or out.tensor.shape:
        raise SpecTypeError(
            f"loss model `{loss.ctor.name}` must return one scalar (e.g. `.mean()`)",
            loc(loss.ctor.span),
        )
    return inst


def _optimizer(program: ir.Program, spec: CallSpec, groups: list[ir.GroupStmt], meta: Any,
               frozen: set[str]) -> OptimizerPlan:  # fmt: skip
    from specc.training import kernels

    ctor = _optimizer_ctor(program, spec)
    trainable = [n for n, _ in meta.named_parameters() if n not in frozen]
    if not trainable:
        what = "every parameter is frozen" if frozen else "the model has no parameters"
        raise SpecTypeError(f"{what}: nothing to optimize", loc(spec.span))
    planned: list[GroupPlan] = []
    taken: set[str] = set()
    for g in groups:
        hit = tuple(n for n in trainable
                    if n not in taken and any(matches(n, p) for p in g.patterns))  # fmt: skip
        if not hit:
            raise SpecTypeError(f"group {g.patterns} matches no trainable parameter", loc(g.span))
        taken |= set(hit)
        options = {k: literal(v) for k, v in g.options.items()}
        planned.append(GroupPlan(tuple(g.patterns), options, hit, g.span))
    rest = tuple(n for n in trainable if n not in taken)
    fused = kernels.fused_candidate(ctor, [g.options for g in planned], meta)
    return OptimizerPlan(ctor, tuple(planned), rest, fused)


def _optimizer_ctor(program: ir.Program, spec: CallSpec) -> Ctor:
    """The optimizer's class (torch.optim's or a plugin's), its arguments bound."""
    import torch

    plugins = _plugins(program)
    names = [n for n in dir(torch.optim) if isinstance(getattr(torch.optim, n), type)]
    ctor = _lookup(spec, torch.optim, torch.optim.Optimizer, "optimizer", plugins,
                   [*names, *plugins])  # fmt: skip
    bind(ctor.cls, [[], *spec.args], spec.kwargs, f"optimizer `{spec.name}`", spec.span)
    return ctor


def model_free_errors(program: ir.Program, name: str | None = None) -> list[SpecError]:
    """The mistakes of train block `name` that need no model: its loss's, optimizer's and
    scheduler's classes and arguments. What `check` still reports when the block's model
    has mistakes of its own (so that `resolve` never gets as far)."""
    try:
        _, cfg, _ = train_config(program, name)
    except SpecError:  # a bad setting: reported with the settings
        return []
    errors = []
    # a loss argument from the data (`vocab=data.vocab_size`) is not known here: the class
    # and its arguments are checked, not an instance built
    parts = (
        lambda: _loss_class(program, cfg.loss, build=not _data_refs(cfg.loss)),
        lambda: _optimizer_ctor(program, cfg.optimizer),
        lambda: _scheduler(cfg),
    )
    for part in parts:
        try:
            part()
        except SpecError as err:
            errors.append(err)
    return errors


def _scheduler(cfg: TrainConfig) -> SchedulerPlan:
    import torch

    lr = torch.optim.lr_scheduler
    spec = cfg.scheduler
    ctor, fill, interval = None, False, cfg.scheduler_interval
    if spec is not None:
        names = [n for n in dir(lr) if isinstance(getattr(lr, n), type)]
        ctor = _lookup(spec, lr, lr.LRScheduler, "scheduler", {}, names)
        bound = bind(ctor.cls, [None, *spec.args], spec.kwargs, f"scheduler `{spec.name}`",
                     spec.span)  # fmt: skip
        given = set(bound.arguments) if bound else set(spec.kwargs)
        fill = spec.name == "OneCycleLR" and "total_steps" not in given
        interval = interval or ("step" if spec.name in STEP_SCHEDULERS else "epoch")
    if cfg.warmup and spec is not None and interval != "step":
        raise SpecTypeError(
            'warmup counts optimizer steps; set scheduler_interval = "step" to combine it '
            "with a scheduler",
            loc(spec.span),
        )
    if cfg.warmup:
        interval = "step"
    return SchedulerPlan(ctor, interval or "epoch", fill, cfg.warmup)


# ---- fine-tuning ----------------------------------------------------------------------


def matches(name: str, pattern: str) -> bool:
    """`backbone` matches backbone and everything under it; globs match full names."""
    import fnmatch

    if is_glob(pattern):
        return fnmatch.fnmatchcase(name, pattern)
    return name == pattern or name.startswith(pattern + ".")


def is_glob(pattern: str) -> bool:
    return any(c in pattern for c in "*?[")


def frozen_names(train: ir.TrainDef, meta: Any) -> set[str]:
    """Names of the parameters the train block freezes; each pattern must match one."""
    names = [n for n, _ in meta.named_parameters()]
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


LORA_OPTIONS = ("r", "alpha", "dropout", "rslora", "modules_to_save", "load")
REGEX_PREFIX = "re:"  # `lora "re:h\\.[01]\\..*"`: a regex full-matched against module paths


def lora_matches(path: str, pattern: str) -> bool:
    """PEFT's `target_modules` rule: a name matches a module path exactly or as a
    `.`-suffix (`attn.c_attn` matches `h.3.attn.c_attn`); a glob the same way; `re:...` is
    a regex that must match the whole path."""
    if pattern.startswith(REGEX_PREFIX):
        return re.fullmatch(pattern[len(REGEX_PREFIX) :], path) is not None
    suffixes = [".".join(path.split(".")[i:]) for i in range(path.count(".") + 1)]
    if is_glob(pattern):
        return any(fnmatch.fnmatchcase(s, pattern) for s in suffixes)
    return pattern in suffixes


def _lora(train: ir.TrainDef, meta: Any, model_name: str) -> LoraPlan | None:
    """The train block's `lora` statement matched against the model's Linear layers."""
    from specc.training.lora import base_signature

    if not train.loras:
        return None
    if len(train.loras) > 1:
        raise SpecTypeError("a train block has one `lora` statement", loc(train.loras[1].span),
                            hint="list every target in the first one")  # fmt: skip
    stmt = train.loras[0]
    opts = _lora_options(stmt)
    modules = dict(meta.named_modules())
    chosen: set[str] = set()
    for pattern in stmt.patterns:
        chosen |= _lora_targets(stmt, pattern, modules)
    ordered = tuple(p for p in modules if p in chosen)
    r = opts["r"]
    params = sum(r * (modules[p].in_features + modules[p].out_features) for p in ordered)
    saved = opts["modules_to_save"]
    names = [n for n, _ in meta.named_parameters(remove_duplicate=False)]
    for pattern in saved:
        if not any(matches(n, pattern) for n in names):
            raise SpecTypeError(
                f"lora: modules_to_save {pattern!r} matches no parameter",
                loc(stmt.options["modules_to_save"].span) or loc(stmt.span),
                hint=did_you_mean(pattern, [p for p in modules if p]),
            )
    return LoraPlan(
        patterns=tuple(stmt.patterns), modules=ordered, r=r, alpha=opts["alpha"],
        dropout=opts["dropout"], rslora=opts["rslora"], modules_to_save=saved,
        load=opts["load"], params=params, trainable=0, total=0,
        base_sha256=base_signature(model_name, meta),
        warnings=_partial_repeats(stmt, ordered, modules), span=stmt.span,
    )  # fmt: skip


def _lora_targets(stmt: ir.LoraStmt, pattern: str, modules: dict[str, Any]) -> set[str]:
    """The Linear paths one target names; a name or glob that matches nothing, or a name
    that is not a Linear, is a located error."""
    from torch import nn

    hit = [p for p in modules if p and lora_matches(p, pattern)]
    if not hit:
        suffixes = {".".join(p.split(".")[i:]) for p in modules if p
                    for i in range(p.count(".") + 1)}  # fmt: skip
        raise SpecNameError(
            f"lora {pattern!r} matches no module of the model",
            loc(stmt.span),
            hint=did_you_mean(pattern, sorted(suffixes))
            or f"targets are module paths or their ends, such as {_examples(modules)}",
        )
    linear = {p for p in hit if isinstance(modules[p], nn.Linear)}
    explicit = not pattern.startswith(REGEX_PREFIX) and not is_glob(pattern)
    other = [p for p in hit if p not in linear]
    if (explicit and other) or not linear:
        kind = type(modules[other[0]]).__name__
        raise SpecTypeError(
            f"lora {pattern!r} matches `{other[0]}`, a {kind}; adapters go on Linear layers",
            loc(stmt.span),
            hint=_not_linear_hint(modules, other[0]),
        )  # fmt: skip
    return linear


def _not_linear_hint(modules: dict[str, Any], path: str) -> str:
    from torch import nn

    if _examples(modules, path):
        return f"name its Linear layers, such as {_examples(modules, path)}"
    if isinstance(modules[path], (nn.Embedding, nn.modules.conv._ConvNd)):
        return "Embedding and Conv layers are not supported yet; `freeze` the rest instead"
    return f"the model's Linear layers are {_examples(modules)}"


def _examples(modules: dict[str, Any], under: str = "") -> str:
    from torch import nn

    found = [f"`{p}`" for p, m in modules.items()
             if isinstance(m, nn.Linear) and (not under or p.startswith(under + "."))]  # fmt: skip
    return ", ".join(found[:3])


def _partial_repeats(stmt: ir.LoraStmt, chosen: tuple[str, ...],
                     modules: dict[str, Any]) -> tuple[ir.CheckWarning, ...]:  # fmt: skip
    """A warning per repeated layer (`h.0.attn.c_attn`, `h.1.attn.c_attn`, ...) that the
    targets adapt in some blocks and not in others: usually a path written too long."""

    def shape(path: str) -> str:
        return ".".join("*" if part.isdigit() else part for part in path.split("."))

    kin: dict[str, list[str]] = {}
    for path, m in modules.items():
        if path and type(m).__name__ == "Linear" and shape(path) != path:
            kin.setdefault(shape(path), []).append(path)
    warnings = []
    for repeated, paths in kin.items():
        taken = [p for p in paths if p in chosen]
        if taken and len(taken) < len(paths):
            warnings.append(ir.CheckWarning(
                message=f"lora adapts {len(taken)} of the {len(paths)} `{repeated}` layers "
                f"({', '.join(taken[:3])}{', ...' if len(taken) > 3 else ''}); the others "
                "stay frozen",
                span=stmt.span,
                hint=f"to adapt all of them, target {repeated.rsplit('*.', 1)[-1]!r}",
            ))  # fmt: skip
    return tuple(warnings)


def _lora_options(stmt: ir.LoraStmt) -> dict[str, Any]:
    """The options, checked; PEFT's defaults (r=8, alpha=8, no dropout)."""
    opts: dict[str, Any] = {"r": 8, "alpha": None, "dropout": 0.0, "rslora": False,
                            "modules_to_save": (), "load": None}  # fmt: skip
    for key, expr in stmt.options.items():
        if key not in LORA_OPTIONS:
            raise SpecTypeError(
                f"lora has no option `{key}`",
                loc(expr.span) or loc(stmt.span),
                hint=did_you_mean(key, LORA_OPTIONS) or f"options: {', '.join(LORA_OPTIONS)}",
            )
        opts[key] = literal(expr)
    checks = {
        "r": (lambda v: isinstance(v, int) and not isinstance(v, bool) and v > 0,
              "a whole number above 0, such as 8"),
        "alpha": (lambda v: v is None or (isinstance(v, (int, float))
                                          and not isinstance(v, bool) and v > 0),
                  "a number above 0, such as 16"),
        "dropout": (lambda v: isinstance(v, (int, float)) and not isinstance(v, bool)
                    and 0 <= v < 1, "a probability in [0, 1), such as 0.05"),
        "rslora": (lambda v: isinstance(v, bool), "True or False"),
        "modules_to_save": (lambda v: isinstance(v, (str, list, tuple))
                            and all(isinstance(x, str) for x in ([v] if isinstance(v, str) else v)),
                            'a module path or a list of them, such as ["lm_head"]'),
        "load": (lambda v: v is None or isinstance(v, str), "a path string"),
    }  # fmt: skip
    for key, (ok, want) in checks.items():
        if not ok(opts[key]):
            span = stmt.options[key].span if key in stmt.options else None
            raise SpecTypeError(f"lora: `{key}` is {want}, not {opts[key]!r}",
                                loc(span) or loc(stmt.span))  # fmt: skip
    if opts["alpha"] is None:
        opts["alpha"] = 8
    save = opts["modules_to_save"]
    opts["modules_to_save"] = (save,) if isinstance(save, str) else tuple(save)
    opts["dropout"] = float(opts["dropout"])
    return opts


def lora_frozen(lora: LoraPlan | None, meta: Any) -> set[str]:
    """With `lora`, every base parameter except those of `modules_to_save` (a tied weight
    trains when any of its names is saved)."""
    if lora is None:
        return set()
    saved = {id(p) for n, p in meta.named_parameters(remove_duplicate=False)
             if any(matches(n, pat) for pat in lora.modules_to_save)}  # fmt: skip
    return {n for n, p in meta.named_parameters() if id(p) not in saved}


def _frozen_norms(meta: Any, frozen: set[str]) -> tuple[str, ...]:
    """BatchNorm layers whose parameters are all frozen: they stay in eval mode."""
    from torch import nn

    out = []
    for path, module in meta.named_modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            names = [f"{path}.{n}" for n, _ in module.named_parameters()]
            if names and all(n in frozen for n in names):
                out.append(path)
    return tuple(out)


def _init(stmt: ir.InitStmt, meta: Any) -> InitPlan:
    opts: dict[str, Any] = {}
    for key, expr in stmt.options.items():
        if key not in INIT_OPTIONS:
            raise SpecTypeError(
                f"init has no option `{key}`",
                loc(expr.span) or loc(stmt.span),
                hint=did_you_mean(key, INIT_OPTIONS) or f"options: {', '.join(INIT_OPTIONS)}",
            )
        opts[key] = literal(expr)
    for key in ("strip_prefix", "add_prefix"):
        if opts.get(key) is not None and not isinstance(opts[key], str):
            raise SpecTypeError("init: prefixes must be strings", loc(stmt.span))
    for key in ("strict", "skip_mismatched"):
        if key in opts and not isinstance(opts[key], bool):
            raise SpecTypeError(
                f"init: `{key}` is True or False, not {opts[key]!r}",
                loc(stmt.options[key].span) or loc(stmt.span),
            )
    target = meta
    if stmt.target:
        try:
            target = meta.get_submodule(stmt.target)
        except AttributeError:
            raise SpecTypeError(
                f"init: the model has no sub-module `{stmt.target}`",
                loc(stmt.span),
                hint=did_you_mean(stmt.target, [n for n, _ in meta.named_modules() if n]),
            ) from None
    patterns = {key: _init_patterns(stmt, key, opts.get(key)) for key in ("transpose", "ignore")}
    _check_transposable(stmt, patterns["transpose"], target.state_dict())
    return InitPlan(
        target=stmt.target or None,
        path=stmt.path,
        strict=bool(opts.get("strict", False)),
        skip_mismatched=bool(opts.get("skip_mismatched", False)),
        strip_prefix=opts.get("strip_prefix") or None,
        add_prefix=opts.get("add_prefix") or None,
        file=weights_file(stmt.path),
        transpose=patterns["transpose"],
        ignore=patterns["ignore"],
        ties=tied_keys(target),
        span=stmt.span,
    )


def weights_file(path: str) -> str:
    """The file `init from "path"` reads: a path without a suffix (or ending in `/`) names a
    folder such as `save_pretrained` writes, whose weights are `model.safetensors`."""
    from pathlib import PurePosixPath

    if path.endswith(("/", "\\")) or not PurePosixPath(path).suffix:
        return path.rstrip("/\\") + "/" + FOLDER_WEIGHTS
    return path


_PATTERN_EXAMPLES = {"transpose": '["*.c_attn.weight"]', "ignore": '["*.attn.bias"]'}


def _init_patterns(stmt: ir.InitStmt, key: str, value: Any) -> tuple[str, ...]:
    """`transpose=`/`ignore=`: one fnmatch pattern or a list of them (a name without `*`
    matches that key alone)."""
    if value is None:
        return ()
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise SpecTypeError(
            f"init: `{key}` takes a list of key patterns, not {value!r}",
            loc(stmt.options[key].span) or loc(stmt.span),
            hint=f"for example {key}={_PATTERN_EXAMPLES[key]}",
        )
    return tuple(items)


def _check_transposable(stmt: ir.InitStmt, patterns: tuple[str, ...], own: dict) -> None:
    """Each `transpose` pattern names at least one of the target's keys, all of them 2-D:
    a typo would otherwise surface as a shape error, or not at all."""
    span = loc(stmt.options["transpose"].span) if patterns else None
    target = f"`{stmt.target}`" if stmt.target else "the model"
    for pattern in patterns:
        hits = [k for k in own if fnmatch.fnmatchcase(k, pattern)]
        if not hits:
            raise SpecNameError(
                f"init: transpose pattern {pattern!r} matches no key of {target}",
                span or loc(stmt.span),
                hint=did_you_mean(pattern, own)
                or f"patterns name the model's keys, such as {', '.join(list(own)[:3])}",
            )
        flat = [k for k in hits if own[k].dim() != 2]
        if flat:
            raise SpecTypeError(
                f"init: transpose pattern {pattern!r} matches `{flat[0]}`, a "
                f"{own[flat[0]].dim()}-D tensor; only 2-D weights can be transposed",
                span or loc(stmt.span),
                hint=next(
                    (f"name the 2-D ones alone, e.g. {k!r}" for k in hits if own[k].dim() == 2),
                    "leave it out of transpose",
                ),
            )


def tied_keys(module: Any) -> tuple[tuple[str, str], ...]:
    """(alias, source) for each key of `module` that holds the same tensor as an earlier
    key (weight tying): a file that stores the tensor once still fills both."""
    first: dict[int, str] = {}
    ties = []
    for key, value in module.state_dict(keep_vars=True).items():
        source = first.setdefault(id(value), key)
        if source != key:
            ties.append((key, source))
    return tuple(ties)


# ---- data and kernels -----------------------------------------------------------------


def _data(program: ir.Program, data: DataConfig) -> DataPlan:
    from specc.training.data import resolve_dataset, resolve_transforms

    common = resolve_transforms(data.transform)
    train_tf = common if data.train_transform is None else resolve_transforms(data.train_transform)

    def dataset(split: str) -> DatasetPlan | None:
        spec = getattr(data, split)
        return resolve_dataset(split, spec) if spec is not None else None

    splits = [resolve_dataset("train", data.train), dataset("val"), dataset("test")]
    tensors = all(
        ds is None or ds.kind != "torchvision"
        or _gives_tensors(train_tf if ds.split == "train" else common)
        for ds in splits
    )  # fmt: skip
    return DataPlan(
        train=splits[0],
        val=splits[1],
        test=splits[2],
        transform=common,
        train_transform=train_tf,
        batch_size=data.batch_size,
        eval_batch_size=data.eval_batch_size or max(data.batch_size, 256),
        shuffle=data.shuffle,
        workers=data.workers,
        val_split=data.val_split if data.val is None else 0.0,
        drop_last=data.drop_last,
        in_memory=data.in_memory and tensors,
    )


def _gives_tensors(steps: tuple[TransformPlan, ...]) -> bool:
    """Whether the transforms before the first random one turn an image into a tensor."""
    for t in steps:
        if t.random:
            return False
        if t.name in ("ToTensor", "ToImage", "PILToTensor"):
            return True
    return False


def _kernels(cfg: TrainConfig, meta: Any, instance: ir.ModelInstance, batch: int) -> Kernels:
    """The settings, and where they say "auto", the shape rules applied to one forward pass
    of the model on meta tensors at the training batch size."""
    from specc.training import kernels

    threads = cfg.threads if isinstance(cfg.threads, int) else None
    has_conv = kernels.has_conv(meta)
    conv = kernels.NATIVE if cfg.conv_kernels == "native" and has_conv else None
    auto_conv = cfg.conv_kernels == "auto" and has_conv
    auto_threads = cfg.threads == "auto"
    # The rules were measured in fp32; torch.compile picks kernels of its own.
    if cfg.precision == "fp32" and not cfg.compile and (auto_conv or auto_threads):
        probe = kernels.probe_meta(meta, instance, batch, conv=auto_conv, threads=auto_threads)
        if probe is not None and auto_conv:
            conv = kernels.choose_conv(probe)
        if probe is not None and auto_threads:
            threads = kernels.choose_threads(probe)
    return Kernels(conv, threads, conv_by_rule=auto_conv, threads_by_rule=auto_threads)
