"""The `train` and `data` blocks as validated settings, with `--set` overrides applied.

Field values stay IR expressions until here; this module folds them to Python values and
validates them with Pydantic, translating its errors into located SpecErrors.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from specc import ir
from specc.errors import (
    SpecError,
    SpecNameError,
    SpecTypeError,
    UsageError,
    did_you_mean,
    together,
)
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


def _settings(cls: type[BaseModel], fields: list[ir.FieldDef], span: ir.Span,
              what: str) -> tuple[Any, dict[str, SpecError]]:  # fmt: skip
    """A block's settings validated as `cls` (None when any is bad), and a mistake per bad
    setting by key, in the block's order: every one, so a user fixes them in one go."""
    by_key = {f.key: f for f in fields}
    raw: dict[str, Any] = {}
    bad: dict[str, SpecError] = {}
    for f in fields:
        try:
            raw[f.key] = _value(f.value)
        except SpecError as err:
            bad[f.key] = err
    try:
        valid = cls.model_validate(raw)
    except ValidationError as exc:
        for e in exc.errors():
            key = str(e["loc"][0]) if e["loc"] else ""
            # One mistake per setting; one that could not be read is not also `missing`.
            if key not in bad:
                bad[key] = _setting_error(e, key, by_key.get(key), span, cls, what)
        valid = None
    order = {key: i for i, key in enumerate(by_key)}
    ordered = sorted(bad, key=lambda k: order.get(k, len(order)))
    return (None if bad else valid), {k: bad[k] for k in ordered}


def _setting_error(e: Any, key: str, field: ir.FieldDef | None, span: ir.Span,
                   cls: type[BaseModel], what: str) -> SpecError:  # fmt: skip
    """One of Pydantic's errors as the user's mistake, at the setting (else the block)."""
    where = loc(field.span) if field else loc(span)
    if e["type"] == "extra_forbidden":
        return SpecNameError(
            f"{what} has no setting `{key}`", where, hint=did_you_mean(key, cls.model_fields)
        )
    if e["type"] == "missing":
        return SpecTypeError(f"{what} needs `{key} = ...`", where)
    msg = e["msg"].removeprefix("Value error, ")
    return SpecTypeError(f"{what}: `{key}`: {msg}", where)


@dataclasses.dataclass
class _Blocks:
    """A train block and its data block, their settings checked."""

    train: ir.TrainDef
    config: TrainConfig | None = None
    block: ir.DataDef | None = None
    data: DataConfig | None = None
    bad_train: dict[str, SpecError] = dataclasses.field(default_factory=dict)
    bad_data: dict[str, SpecError] = dataclasses.field(default_factory=dict)

    def errors(self) -> list[SpecError]:
        return [*self.bad_train.values(), *self.bad_data.values()]


def _check_blocks(program: ir.Program, name: str | None) -> _Blocks:
    if not program.trains:
        raise UsageError(
            "the spec has no `train` block",
            hint="add `train { model = ...; data = ...; loss = ...; optimizer = ... }`",
        )
    train = next((t for t in program.trains if t.name == name), program.trains[0])
    out = _Blocks(train)
    out.config, out.bad_train = _settings(TrainConfig, train.fields, train.span, "train")
    # The data block is checked even when the train block's settings are not valid.
    data_name = out.config.data if out.config else _train_data_name(train)
    out.block = next((d for d in program.data if d.name == data_name), None)
    if out.block is not None:
        what = f"data {out.block.name}"
        out.data, out.bad_data = _settings(DataConfig, out.block.fields, out.block.span, what)
    elif data_name is not None:
        written = next(f for f in train.fields if f.key == "data")
        out.bad_train["data"] = SpecNameError(
            f"no data block named `{data_name}`",
            loc(written.span),
            hint=did_you_mean(data_name, [d.name for d in program.data]),
        )
    return out


def train_config(
    program: ir.Program, name: str | None = None
) -> tuple[ir.TrainDef, TrainConfig, DataConfig]:
    """The train block (the first, or the one named), its validated settings and those of
    its data block. A mistake raises with every other bad setting of both blocks."""
    blocks = _check_blocks(program, name)
    if blocks.errors():
        raise together(blocks.errors())
    assert blocks.config is not None and blocks.data is not None
    return blocks.train, blocks.config, blocks.data


def settings_errors(program: ir.Program, name: str | None = None) -> tuple[
    list[SpecError], ir.Program | None
]:  # fmt: skip
    """Every bad setting of train block `name` (the first when None) and of its data block,
    and the program with those settings left out, their defaults in their place, so that
    the rest of the block (its optimizer, its loss against the model) can still be checked;
    None when a setting without a default is among them."""
    blocks = _check_blocks(program, name)
    errors = blocks.errors()
    if not errors:
        return [], program
    if any(_required(TrainConfig, k) for k in blocks.bad_train) or any(
        _required(DataConfig, k) for k in blocks.bad_data
    ):
        return errors, None
    train = _without(blocks.train, blocks.bad_train)
    trains = [train if t is blocks.train else t for t in program.trains]
    data = [_without(d, blocks.bad_data) if d is blocks.block else d for d in program.data]
    return errors, program.model_copy(update={"trains": trains, "data": data})


def _required(cls: type[BaseModel], key: str) -> bool:
    info = cls.model_fields.get(key)
    return info is not None and info.is_required()


def _without(block: Any, keys: dict[str, SpecError]) -> Any:
    """A train or data block without the settings `keys` names."""
    return block.model_copy(update={"fields": [f for f in block.fields if f.key not in keys]})
