"""The `train` and `data` blocks as validated settings, with `--set` overrides applied.

Field values stay IR expressions until here; this module folds them to Python values and
validates them with Pydantic, translating its errors into located SpecErrors.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from specc import ir
from specc.errors import SpecError, SpecNameError, SpecTypeError, UsageError, did_you_mean
from specc.values import evaluate, loc


class CallSpec(BaseModel):
    """A constructor written in the spec: `SGD(lr=0.001, momentum=0.9)`."""

    model_config = ConfigDict(frozen=True)
    name: str
    args: list[Any] = []
    kwargs: dict[str, Any] = {}
    span: ir.Span | None = None


class DataRef(BaseModel):
    """`data.vocab_size` in a train block: a property of the training dataset, filled in
    when the plan is resolved (specc.training.plan)."""

    model_config = ConfigDict(frozen=True)
    attr: str
    span: ir.Span | None = None

    def __str__(self) -> str:
        return f"data.{self.attr}"


class DataConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    train: CallSpec
    test: CallSpec | None = None
    val: CallSpec | None = None
    transform: list[CallSpec] = []
    train_transform: list[CallSpec] | None = None
    batch_size: int = Field(32, gt=0)
    eval_batch_size: int | None = Field(None, gt=0)
    shuffle: bool = True
    workers: int = Field(0, ge=0)
    val_split: float = Field(0.0, ge=0.0, lt=1.0)
    drop_last: bool = False
    in_memory: bool = True  # allow the pre-transformed in-memory fast path


class TrainConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: CallSpec
    data: str
    loss: CallSpec
    optimizer: CallSpec
    scheduler: CallSpec | None = None
    scheduler_interval: Literal["step", "epoch"] | None = None
    warmup: int = Field(0, ge=0)  # linear warmup, in optimizer steps
    epochs: int = Field(1, gt=0)
    max_steps: int | None = Field(None, gt=0)
    log_every: int = Field(50, gt=0)
    seed: int = 0
    device: str = "auto"
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"
    compile: bool = False
    # "auto": native CPU kernels for small convolutions (specc.training.kernels); "torch": torch's.
    conv_kernels: Literal["auto", "torch", "native"] = "auto"
    # CPU intra-op threads: "auto": one for tiny steps (specc.training.kernels); "torch": torch's.
    threads: Literal["auto", "torch"] | int = "auto"
    accumulate: int = Field(1, gt=0)
    clip_grad_norm: float | None = Field(None, gt=0)
    metrics: list[str] = ["accuracy"]
    best_metric: str | None = None  # default: the first metric, else the loss
    early_stop: int | None = Field(None, gt=0)  # patience in epochs without improvement
    checkpoint_every: int | None = Field(None, gt=0)  # also write last.pt every N steps
    on_nan: Literal["stop", "skip"] = "stop"
    # Under torchrun (world size > 1): DistributedDataParallel, or FSDP2 sharding.
    strategy: Literal["auto", "ddp", "fsdp"] = "auto"

    @field_validator("threads", mode="before")
    @classmethod
    def _threads(cls, v: Any) -> Any:
        if v in ("auto", "torch") or (type(v) is int and v >= 1):
            return v
        raise ValueError(f'should be "auto", "torch" or a number of threads (1 or more), not {v!r}')


def _value(e: ir.Expr, names: dict[str, Any] | None = None) -> Any:
    """Fold a field expression. Calls become CallSpec; bare names become strings."""
    if isinstance(e, ir.Call):
        return CallSpec(
            name=e.func,
            args=[_value(a) for a in e.args],
            kwargs={k: _value(v) for k, v in e.kwargs.items()},
            span=e.span,
        )
    if isinstance(e, ir.ListExpr):
        return [_value(i) for i in e.items]
    if isinstance(e, ir.TupleExpr):
        return tuple(_value(i) for i in e.items)
    if isinstance(e, ir.Name):
        return e.id
    if isinstance(e, ir.Attribute) and isinstance(e.value, ir.Name) and e.value.id == "data":
        return DataRef(attr=e.attr, span=e.span)
    return evaluate(e, names or {})


def _parse_value(text: str) -> ir.Expr:
    """Parse the right-hand side of a --set override as a spec expression."""
    from specc.lang.parse import parse
    from specc.lang.transform import transform

    try:
        tree = parse(f"data __override {{ value = {text} }}", "--set")
    except SpecError:
        raise UsageError(f"--set: cannot parse value {text!r}") from None
    return transform(tree, "--set", text)["data"][0].fields[0].value


def apply_overrides(program: ir.Program, overrides: list[str]) -> ir.Program:
    """`--set key=value`: key is a train field (`epochs`), a constructor argument
    (`optimizer.lr`), or a data field (`batch_size`, `cifar.batch_size`)."""
    if not overrides:
        return program
    if not program.trains:
        raise UsageError("--set needs a `train` block in the spec")
    train = program.trains[0]
    data = list(program.data)
    for item in overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise UsageError(f"--set expects KEY=VALUE, got {item!r}")
        value = _parse_value(text.strip())
        head, _, rest = key.partition(".")
        data_names = [d.name for d in data]
        train_keys = set(TrainConfig.model_fields)
        if head in train_keys and not (head == "data" and rest):  # data.X: the data block
            train = train.model_copy(
                update={"fields": _set(train.fields, head, rest, value, train.span)}
            )
        elif head in data_names or head in DataConfig.model_fields or head == "data":
            if head in data_names:
                block, field = head, rest
            else:
                block, field = _train_data_name(train), (rest if head == "data" else key)
            i = next((i for i, d in enumerate(data) if d.name == block), None)
            if i is None or not field:
                raise UsageError(f"--set {key}: no data block to set it in")
            f_head, _, f_rest = field.partition(".")
            if f_head not in DataConfig.model_fields:
                raise UsageError(
                    f"--set {key}: data blocks have no field `{f_head}`",
                    hint=did_you_mean(f_head, DataConfig.model_fields),
                )
            data[i] = data[i].model_copy(
                update={"fields": _set(data[i].fields, f_head, f_rest, value, data[i].span)}
            )
        else:
            raise UsageError(
                f"--set {key}: unknown setting `{head}`",
                hint=did_you_mean(head, [*train_keys, *DataConfig.model_fields]),
            )
    trains = [train, *program.trains[1:]]
    return program.model_copy(update={"trains": trains, "data": data})


def _train_data_name(train: ir.TrainDef) -> str | None:
    f = next((f for f in train.fields if f.key == "data"), None)
    return f.value.id if f is not None and isinstance(f.value, ir.Name) else None


def _set(
    fields: list[ir.FieldDef], key: str, sub: str, value: ir.Expr, span: ir.Span
) -> list[ir.FieldDef]:
    out = list(fields)
    i = next((i for i, f in enumerate(out) if f.key == key), None)
    if not sub:
        new = ir.FieldDef(key=key, value=value, span=out[i].span if i is not None else span)
        if i is None:
            out.append(new)
        else:
            out[i] = new
        return out
    if i is None or not isinstance(out[i].value, ir.Call):
        raise UsageError(f"--set {key}.{sub}: `{key}` is not a constructor call in the spec")
    call = out[i].value
    out[i] = out[i].model_copy(
        update={"value": call.model_copy(update={"kwargs": {**call.kwargs, sub: value}})}
    )
    return out


def _validate(cls: type[BaseModel], fields: list[ir.FieldDef], span: ir.Span, what: str):
    raw = {f.key: _value(f.value) for f in fields}
    by_key = {f.key: f for f in fields}
    try:
        return cls.model_validate(raw)
    except ValidationError as exc:
        err = exc.errors()[0]
        key = str(err["loc"][0]) if err["loc"] else ""
        field = by_key.get(key)
        where = loc(field.span) if field else loc(span)
        if err["type"] == "extra_forbidden":
            raise SpecNameError(
                f"{what} has no setting `{key}`", where, hint=did_you_mean(key, cls.model_fields)
            ) from None
        if err["type"] == "missing":
            raise SpecTypeError(f"{what} needs `{key} = ...`", where) from None
        msg = err["msg"].removeprefix("Value error, ")
        raise SpecTypeError(f"{what}: `{key}`: {msg}", where) from None


def train_config(
    program: ir.Program, name: str | None = None
) -> tuple[ir.TrainDef, TrainConfig, DataConfig]:
    """The train block (the first, or the one named), its validated settings and those of
    its data block."""
    if not program.trains:
        raise UsageError(
            "the spec has no `train` block",
            hint="add `train { model = ...; data = ...; loss = ...; optimizer = ... }`",
        )
    train = next((t for t in program.trains if t.name == name), program.trains[0])
    cfg = _validate(TrainConfig, train.fields, train.span, "train")
    block = next((d for d in program.data if d.name == cfg.data), None)
    if block is None:
        field = next(f for f in train.fields if f.key == "data")
        raise SpecNameError(
            f"no data block named `{cfg.data}`",
            loc(field.span),
            hint=did_you_mean(cfg.data, [d.name for d in program.data]),
        )
    data = _validate(DataConfig, block.fields, block.span, f"data {block.name}")
    return train, cfg, data
