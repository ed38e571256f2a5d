"""Class-index losses against the model's output and the labels, sequences included.

A CrossEntropyLoss or NLLLoss on a [B, T, V] output with [B, T] targets scores every
position as one sample, as nanoGPT's `F.cross_entropy(logits.view(-1, V), y.view(-1))`
does (the plan's `ClassTargets.flatten_sequence`). Before training, the loss is checked
against the model's output and each split's labels (a located error at `loss =`, not a
torch error mid-run), and token ids are checked against the Embedding that reads them and
the output's vocabulary (a data error naming the dataset, the largest id and the limit).
Evaluation counts tokens, leaving out `ignore_index`; perplexity and bits per token come
from the mean token loss.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from specc import ir
from specc.errors import DataError, SpecTypeError
from specc.shapes.meta import tensor_dims
from specc.training import data as D
from specc.training.batches import Split, dataset_item_zero
from specc.training.plan import ClassTargets, DatasetPlan, TrainPlan
from specc.values import loc

# The metrics computed from the mean token loss, by name.
DERIVED_METRICS: dict[str, Callable[[float], float]] = {
    "perplexity": lambda loss: math.exp(loss) if loss < 700 else math.inf,  # no OverflowError
    "bits_per_token": lambda loss: loss / math.log(2),
}
EMBEDDINGS = ("torch.nn.Embedding", "torch.nn.EmbeddingBag")


class FlattenSequence(nn.Module):
    """A class-index loss scored per position: [B, T, V] outputs and [B, T] targets
    become [B*T, V] and [B*T]."""

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, outputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return self.loss(outputs.flatten(0, -2), labels.flatten())


def per_token(loss: nn.Module, targets: ClassTargets | None) -> nn.Module:
    """The loss the runner calls: flattened per token when the plan says so."""
    return FlattenSequence(loss) if is_sequence(targets) else loss


def is_sequence(targets: ClassTargets | None) -> bool:
    return targets is not None and targets.flatten_sequence


def units(labels: torch.Tensor, targets: ClassTargets | None) -> int:
    """What a batch counts for throughput: its tokens for a sequence loss, else samples."""
    return labels.numel() if is_sequence(targets) else labels.shape[0]


def counted(labels: torch.Tensor, targets: ClassTargets | None) -> torch.Tensor | None:
    """The positions the loss counts (not `ignore_index`) for a sequence loss; None
    otherwise (every sample counts)."""
    return labels != targets.ignore_index if is_sequence(targets) else None


# ---- evaluation -----------------------------------------------------------------------


@dataclass
class EvalSums:
    """Running sums of one evaluation: the loss weighted by samples (or by counted tokens
    for a sequence loss) and the hits of each counted metric."""

    metrics: tuple[str, ...]
    targets: ClassTargets | None
    total: float = 0.0
    loss: float = 0.0

    def __post_init__(self) -> None:
        self.hits = {m: 0.0 for m in self.metrics if m not in DERIVED_METRICS}

    def add(self, out: torch.Tensor, y: torch.Tensor, loss: torch.Tensor) -> None:
        mask = counted(y, self.targets)
        n = int(mask.sum()) if mask is not None else y.shape[0]
        if n == 0:  # every target ignored: the batch's mean loss is NaN and counts for nothing
            return
        self.total += n
        self.loss += float(loss) * n
        for m in self.hits:
            self.hits[m] += int(_topk_hits(out, y, 1 if m == "accuracy" else 5, mask))

    def values(self) -> list[float]:
        return [self.total, self.loss, *self.hits.values()]

    def result(self, values: list[float] | None = None) -> dict[str, float]:
        """The mean loss and each metric in the plan's order (from `values`: the sums
        added up over the workers)."""
        total, loss, *hits = values if values is not None else self.values()
        mean = loss / max(total, 1)
        counts = dict(zip(self.hits, hits, strict=True))
        out = {"loss": mean}
        for m in self.metrics:
            out[m] = DERIVED_METRICS[m](mean) if m in DERIVED_METRICS else counts[m] / max(total, 1)
        return out


def _topk_hits(
    out: torch.Tensor, y: torch.Tensor, k: int, mask: torch.Tensor | None
) -> torch.Tensor:
    """Targets among the top k scores of the last dimension (per token for a sequence)."""
    k = min(k, out.shape[-1])
    hit = (out.topk(k, dim=-1).indices == y.unsqueeze(-1)).any(-1)
    return (hit & mask).sum() if mask is not None else hit.sum()


# ---- checks before training -----------------------------------------------------------


def _dims(shape: list[Any]) -> str:
    return "[" + ", ".join(["B", *map(str, shape)]) + "]"


@dataclass(frozen=True)
class LabelType:
    """One sample's label as the loss sees it: its shape and dtype (`int64`)."""

    shape: tuple[int, ...]
    dtype: str

    @staticmethod
    def of(label: torch.Tensor) -> LabelType:
        return LabelType(tuple(label.shape), str(label.dtype).removeprefix("torch."))

    def text(self) -> str:
        return f"{_dims(list(self.shape))} {self.dtype}"


def first_label(split: Split) -> LabelType | None:
    """Sample 0's label type: from the split's tensor, else its dataset's sample 0 read
    without consuming any random number."""
    if split.y is not None:
        return LabelType.of(split.y[0]) if len(split.y) else None
    item = dataset_item_zero(split)
    if not isinstance(item, (tuple, list)) or len(item) != 2:
        return None
    try:
        return LabelType.of(torch.as_tensor(item[1]))
    except (TypeError, ValueError, RuntimeError):
        return None


def spec_labels(plan: TrainPlan) -> dict[str, LabelType | None]:
    """Each split's label type for `specc check`: from the dataset's kind when it settles
    it, else from sample 0 of the opened dataset (a DataError when it cannot be opened)."""
    labels = {}
    for ds in plan.data.splits():
        known = D.known_label(ds)
        labels[ds.split] = LabelType(*known) if known is not None else \
            first_label(Split(ds.split, dataset=D.open_dataset(ds)))  # fmt: skip
    return labels


def expected_targets(targets: ClassTargets, per_sample: list[int]) -> list[int] | None:
    """The per-sample shape of class-index targets for an output of `per_sample` scores:
    the output without its class dimension (last for a sequence, else torch's dimension 1).
    None: no class dimension to drop."""
    if targets.flatten_sequence:
        return per_sample[:-1]
    return per_sample[1:] if per_sample else None


def check_before_training(plan: TrainPlan, splits: dict[str, Split]) -> TokenLimits | None:
    """The loss against the output and every split's labels, and the token ids of the
    splits held as tensors (scanned once). Returns the limits streamed batches are checked
    against (`checked_batches`), None when there are none."""
    check_loss_fit(plan, {name: first_label(split) for name, split in splits.items()})
    limits = token_limits(plan)
    if limits is not None:
        for name, split in splits.items():
            if split.x is not None:
                limits.check(split.x, split.y, split_label(plan, name), split_span(plan, name))
    return limits


def check_data_fit(plan: TrainPlan, labels: dict[str, LabelType | None]) -> str:
    """`specc check`'s train line: the model's output against the loss and each split's
    label type (a located error, as `specc run` gives), summed up as
    `output [B, T, V] -> CrossEntropyLoss (per token) <- labels [B, T] int64`."""
    check_loss_fit(plan, labels)
    outputs = plan.model.instance.outputs
    out = outputs[0].tensor if len(outputs) == 1 else None
    shown = "" if out is None else f"output [{', '.join(tensor_dims(out))}] -> "
    per = " (per token)" if is_sequence(plan.loss.targets) else ""
    label = next((t for t in labels.values() if t is not None), None)
    shown_labels = "" if label is None else f" <- labels {label.text()}"
    return f"{shown}{plan.loss.ctor.name}{per}{shown_labels}"


def _dataset(plan: TrainPlan, split: str) -> DatasetPlan:
    return getattr(plan.data, split, None) or plan.data.train  # a carved val: the train set's


def split_label(plan: TrainPlan, split: str) -> str:
    """`Tokens` (train): how messages name a split's dataset."""
    return f"`{_dataset(plan, split).name}` ({split})"


def split_span(plan: TrainPlan, split: str) -> ir.Span | None:
    return _dataset(plan, split).span


def check_loss_fit(plan: TrainPlan, labels: dict[str, LabelType | None]) -> None:
    """A class-index loss that cannot compare the model's output with a split's labels
    (None: unknown) is a located error at the loss, naming the output's and the labels'
    shapes."""
    targets = plan.loss.targets
    outputs = plan.model.instance.outputs
    out = outputs[0].tensor if len(outputs) == 1 else None
    if targets is None or out is None or not out.batched or not out.fixed():
        return
    per_sample = [int(d) for d in out.shape]  # type: ignore[arg-type]
    index_shape = expected_targets(targets, per_sample)
    if index_shape is None:
        return
    for name, label in labels.items():
        if label is None:
            continue
        shape = list(label.shape)
        floating = label.dtype.startswith(("float", "bfloat"))
        if not floating and shape == index_shape:
            continue
        if floating and shape == per_sample and plan.loss.ctor.name == "CrossEntropyLoss":
            continue  # class probabilities (torch's soft targets)
        raise _misfit(plan, targets, per_sample, index_shape, split_label(plan, name), shape,
                      label.dtype)  # fmt: skip


def _misfit(plan: TrainPlan, targets: ClassTargets, per_sample: list[int], index_shape: list[int],
            dataset: str, shape: list[int], dtype: str) -> SpecTypeError:  # fmt: skip
    name = plan.loss.ctor.name
    model = plan.model.instance.model
    want = f"{_dims(index_shape)} integer class indices"
    if targets.flatten_sequence:
        want = (f"{_dims(index_shape)} token ids (one target per position: the "
                f"{per_sample[-1]} scores of each position are its classes)")  # fmt: skip
    elif name == "CrossEntropyLoss":
        want += f" or {_dims(per_sample)} float class probabilities"
    if targets.flatten_sequence and not shape:
        hint = (
            "a [B, T, V] output scores every position: label each position with its next "
            "token, or return one row of scores per sample (e.g. the last position)"
        )
    elif targets.flatten_sequence and shape == per_sample[1:]:  # torch's [B, C, L] layout
        hint = ("a [B, T, V] output is scored per position with the classes last; to score "
                "classes in dimension 1, move them last with `.transpose(1, 2)`")  # fmt: skip
    else:
        hint = "make the labels fit the output, or the output fit the labels"
    return SpecTypeError(
        f"loss `{name}` cannot compare `{model}`'s output {_dims(per_sample)} with the labels "
        f"of {dataset}, {_dims(shape)} {dtype}: it needs {want}",
        loc(plan.loss.ctor.span),
        hint=hint,
    )


@dataclass(frozen=True)
class TokenLimits:
    """The ids a model can take: below the smallest Embedding that reads its input, and,
    for a sequence loss, below the output's vocabulary among the labels (`ignore_index`
    aside)."""

    model: str
    embedding: tuple[str, int] | None  # (layer path, num_embeddings)
    vocab: int | None
    ignore_index: int

    def check(self, x: Any, y: torch.Tensor, dataset: str, span: ir.Span | None) -> None:
        """A DataError naming the dataset, the id out of range and the limit."""
        if self.embedding is not None and _integer(x):
            path, size = self.embedding
            _in_range(x, size, dataset, "inputs",
                      f"`{self.model}`'s Embedding `{path}` has {size} entries", span,
                      f"give `{path}` at least {int(x.max()) + 1} entries (the vocabulary "
                      "size), or fix the data")  # fmt: skip
        if self.vocab is not None and _integer(y):
            ids = y[y != self.ignore_index]
            _in_range(ids, self.vocab, dataset, "labels",
                      f"`{self.model}`'s output scores {self.vocab} tokens", span,
                      "make the output's vocabulary larger, or fix the labels")  # fmt: skip


def _integer(t: Any) -> bool:
    return isinstance(t, torch.Tensor) and not t.is_floating_point() and not t.is_complex()


def _in_range(ids: torch.Tensor, limit: int, dataset: str, where: str, what: str,
              span: ir.Span | None, hint: str) -> None:  # fmt: skip
    if not ids.numel():
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo >= 0 and hi < limit:
        return
    bad = hi if hi >= limit else lo
    raise DataError(
        f"{dataset} has token id {bad} in its {where}, but {what} (ids must be in [0, {limit}))",
        loc(span),
        hint=hint if hi >= limit else "token ids are never negative",
    )


def token_limits(plan: TrainPlan) -> TokenLimits | None:
    """What `TokenLimits.check` checks for this plan; None when nothing is."""
    inst, targets = plan.model.instance, plan.loss.targets
    readers = embedding_limits(inst)
    embedding = min(readers, key=lambda item: item[1]) if readers else None
    out = inst.outputs[0].tensor if len(inst.outputs) == 1 else None
    vocab = None
    if is_sequence(targets) and out is not None and isinstance(out.shape[-1], int):
        vocab = out.shape[-1]
    if embedding is None and vocab is None:
        return None
    ignore = targets.ignore_index if targets is not None else -100
    return TokenLimits(inst.model, embedding, vocab, ignore)


def embedding_limits(inst: ir.ModelInstance) -> list[tuple[str, int]]:
    """(layer path, num_embeddings) of each Embedding that reads the model's first input
    directly (through aliases and sub-models): the ids that input may hold."""
    source = next((n.name for n in inst.nodes if n.op == "input"), None)
    return _readers(inst, source, "") if source is not None else []


def _readers(inst: ir.ModelInstance, source: str, prefix: str) -> list[tuple[str, int]]:
    layers = {layer.name: layer for layer in inst.layers}
    names = {source}
    found: list[tuple[str, int]] = []
    for node in inst.nodes:
        arg = node.args[0] if node.args else None
        if not (isinstance(arg, ir.Ref) and arg.node in names and arg.index is None):
            continue
        if node.op == "alias":
            names.add(node.name)
        elif node.op == "layer" and node.target in layers:
            ctor = layers[node.target].ctor
            path = prefix + node.target
            if isinstance(ctor, ir.TorchCtor) and ctor.cls in EMBEDDINGS:
                size = _num_embeddings(ctor)
                if size is not None:
                    found.append((path, size))
            elif isinstance(ctor, ir.ModelCtor):
                sub = ctor.instance
                inner = next((n.name for n in sub.nodes if n.op == "input"), None)
                if inner is not None:
                    found += _readers(sub, inner, path + ".")
    return found


def _num_embeddings(ctor: ir.TorchCtor) -> int | None:
    expr = ctor.kwargs.get("num_embeddings") or (ctor.args[0] if ctor.args else None)
    value = getattr(expr, "value", None)
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def checked_batches(batches: Iterator, limits: TokenLimits, dataset: str,
                    span: ir.Span | None) -> Iterator:  # fmt: skip
    """Streamed batches, each checked as in-memory tensors are checked once."""
    for x, y in batches:
        limits.check(x, y, dataset, span)
        yield x, y
