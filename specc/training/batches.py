"""The train plan's data at run time: the splits and their batches.

Fast path: when the transforms before the first random one are deterministic and the
dataset fits in memory, they run once, the split is kept as one tensor on the training
device and batches are index slices of it (random transforms then run per sample on each
batch). Otherwise a DataLoader over the same sample order.
"""

from __future__ import annotations

import math
import os
import random
from dataclasses import dataclass
from typing import Any

import torch

from specc import ir
from specc.errors import DataError
from specc.training import data as D
from specc.training.plan import DataPlan, DatasetPlan
from specc.values import loc


@dataclass
class Split:
    name: str
    x: torch.Tensor | None = None  # fast path: all inputs, already transformed
    y: torch.Tensor | None = None
    dataset: Any = None  # fallback: a Dataset for a DataLoader
    augment: Any = None  # random transforms applied per sample to each fast-path batch

    def __len__(self) -> int:
        return len(self.y) if self.y is not None else len(self.dataset)


def make_splits(data: DataPlan, device: torch.device, seed: int) -> dict[str, Split]:
    splits = {ds.split: _split(data, ds, device) for ds in data.splits()}
    if data.val_split:
        splits = _carve_val(splits, data.val_split, seed)
    return splits


def _split(data: DataPlan, ds: DatasetPlan, device: torch.device) -> Split:
    steps = data.train_transform if ds.split == "train" else data.transform
    dataset = D.open_dataset(ds, D.compose(steps))
    if not data.in_memory:
        return Split(ds.split, dataset=dataset)
    # Materialize with the deterministic prefix only; random augmentations then run per
    # batch on the training device.
    first_random = next((i for i, t in enumerate(steps) if t.random), len(steps))
    det, rnd = steps[:first_random], steps[first_random:]
    pre = dataset if not rnd else D.open_dataset(ds, D.compose(det))
    got = D.materialize(pre, location=loc(ds.span))
    if got is None:
        return Split(ds.split, dataset=dataset)
    return Split(ds.split, x=got[0].to(device), y=got[1].to(device), augment=D.compose(rnd))


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


def batches_per_epoch(n: int, batch_size: int, drop_last: bool, world: int = 1) -> int:
    if world > 1:  # every worker takes its slice of each global batch; none is short
        return n // (batch_size * world)
    return n // batch_size if drop_last else math.ceil(n / batch_size)


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
    generator: torch.Generator | None = None,
):
    """Yield (inputs, labels) from batch index `start` on, in the order `perm` gives.
    A DataLoader draws its workers' base seed from `generator` (a new one when None), never
    from torch's global generator: the model's random ops then see the same numbers
    whether the data comes from memory or from a loader."""
    n = len(split)
    count = batches_per_epoch(n, batch_size, drop_last, world)
    if world > 1:
        # Each global batch is world * batch_size samples in `perm` order; rank r takes
        # its slice, so N workers see exactly the data of one worker with N times the batch.
        gb = batch_size * world
        order = perm if perm is not None else torch.arange(n)
        parts = [order[b * gb + rank * batch_size : b * gb + (rank + 1) * batch_size]
                 for b in range(count)]  # fmt: skip
        perm = torch.cat(parts) if parts else torch.empty(0, dtype=torch.long)
        n = len(perm)
    if split.x is not None:
        yield from _slices(split, batch_size, perm, start, count, augment)
        return
    from torch.utils.data import DataLoader, Subset

    order = (
        perm[start * batch_size :].tolist() if perm is not None else range(start * batch_size, n)
    )
    # Workers only help when a core is left for the training process itself.
    workers = min(workers, max((os.cpu_count() or 1) - 2, 0))
    loader = DataLoader(
        Subset(split.dataset, list(order)),
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        drop_last=drop_last,
        pin_memory=device.type == "cuda",
        generator=generator if generator is not None else torch.Generator(),
    )
    for x, y in loader:
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def _slices(split: Split, batch_size: int, perm: torch.Tensor | None, start: int, count: int,
            augment: bool):  # fmt: skip
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


def shard(split: Split, rank: int, world: int) -> Split:
    """This worker's share of an evaluation set (every world-th sample)."""
    if split.x is not None:
        return Split(split.name, x=split.x[rank::world], y=split.y[rank::world])
    from torch.utils.data import Subset

    return Split(split.name, dataset=Subset(split.dataset, range(rank, len(split.dataset), world)))


def _dataset_plan(data: DataPlan, name: str) -> DatasetPlan:
    return getattr(data, name, None) or data.train  # a carved val split: the train set's


def check_input_shapes(splits: dict[str, Split], inst: ir.ModelInstance, data: DataPlan) -> None:
    """Samples that do not have the shape the forward declares fail here, naming the dataset
    and index, instead of as a matmul error somewhere inside the model."""
    if len(inst.inputs) != 1:
        return
    arg, declared = inst.inputs[0]
    for name, split in splits.items():
        ds = _dataset_plan(data, name)
        sample = _first_sample(split)
        if sample is None:
            continue
        got = list(getattr(sample, "shape", []))
        if got != list(declared.shape):
            raise DataError(
                f"{ds.name} ({name}) sample 0 has shape {got}, but `{inst.model}` declares "
                f"`{arg}: {list(declared.shape)}`",
                loc(ds.span),
                hint="declare the shape the data has, or add a transform (e.g. Resize) "
                "to the data block",
            )


def _first_sample(split: Split) -> Any:
    """Sample 0 as the model receives it, without consuming any random number."""
    if split.x is not None:
        sample = split.x[0]
        if split.augment is not None:  # may crop or resize
            cuda = [sample.device] if sample.is_cuda else []
            with torch.random.fork_rng(devices=cuda):
                sample = split.augment(sample)
        return sample
    item = dataset_item_zero(split)
    return item[0] if isinstance(item, (tuple, list)) else item


def dataset_item_zero(split: Split) -> Any:
    """Item 0 of a split's dataset (None when it is empty), read without consuming any
    random number: a random transform must not shift the run's stream."""
    if not len(split.dataset):
        return None
    state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        item = split.dataset[0]
    random.setstate(state)
    return item


def check_label_ranges(splits: dict[str, Split], inst: ir.ModelInstance, data: DataPlan) -> None:
    """Class labels outside the model's outputs fail here, naming the dataset and index,
    instead of as an ATen assertion in the middle of training."""
    out = inst.outputs[0].tensor if len(inst.outputs) == 1 else None
    if out is None or not out.batched or len(out.shape) != 1 or not out.fixed():
        return  # not one row of class scores per sample
    for name, split in splits.items():
        if split.y is not None and not split.y.is_floating_point() and split.y.dim() == 1:
            ds = _dataset_plan(data, name)
            D.check_labels(split.y, out.shape[0], dataset_name=f"{ds.name} ({name})",
                           location=loc(ds.span))  # fmt: skip
