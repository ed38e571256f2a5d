"""How the training script gets its data, written from the train plan: transforms,
datasets, the splits held as tensors on the device (or streamed), and the val split."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from specc import ir
from specc.codegen.layout import (
    PREC_ATOM,
    Brackets,
    Doc,
    Text,
    flat,
    literal_doc,
    statement,
    with_prefix,
)
from specc.codegen.naming import check_attribute
from specc.errors import SpecTypeError
from specc.training.plan import TEXT_KINDS, DataPlan, DatasetPlan, TransformPlan
from specc.training.text import PYTHON_SOURCE_MODULES
from specc.values import loc

MAIN = 4  # indent of main()'s statements
TENSOR_FILE_KINDS = {".pt": "pt", ".pth": "pt", ".npz": "npz", ".safetensors": "safetensors"}
TENSOR_FILE_IMPORTS = {
    "npz": {"import numpy as np"},
    "safetensors": {"from safetensors.torch import load_file"},
}
# The kinds of tensor file load_tensor_file tells apart, in the order of its branches.
TENSOR_FILE_ORDER = ("npz", "safetensors", "pt")
# The script's helper that turns a text into ids, per tokenizer ("file": a tokenizer.json).
TOKEN_HELPERS = {"char": "char_tokens", "bytes": "byte_tokens", "file": "file_tokens"}


def value_doc(v: Any, span: ir.Span | None) -> Doc:
    """A constant from the spec as code (literals through `repr`)."""
    import torch

    if isinstance(v, (Text, Brackets)):  # already code
        return v
    if isinstance(v, torch.dtype):  # a transform's dtype
        return Text(f"torch.{check_attribute(str(v).removeprefix('torch.'), span, 'dtype')}")
    if isinstance(v, list):
        items = tuple(value_doc(i, span) for i in v)
        return Brackets("", items, "[", "]", PREC_ATOM, display=True)
    if isinstance(v, tuple):
        if not v:
            return Text("()")
        items = tuple(value_doc(i, span) for i in v)
        return Brackets("", items, prec=PREC_ATOM, one_tuple=len(items) == 1, display=True)
    if v is None or isinstance(v, (bool, int, float, str)):
        return literal_doc(v)
    raise SpecTypeError(f"cannot write {v!r} as Python source", loc(span))


def call_doc(head: str, args: tuple | list, kwargs: dict[str, Any], span: ir.Span | None,
             lead: tuple[Doc, ...] = ()) -> Doc:  # fmt: skip
    """`head(*lead, *args, **kwargs)` with the spec's values."""
    items = [*lead, *(value_doc(a, span) for a in args)]
    for k, v in kwargs.items():
        items.append(with_prefix(f"{check_attribute(k, span, 'keyword')}=", value_doc(v, span)))
    return Brackets(head, tuple(items))


def paragraphs(*groups: list[str]) -> list[str]:
    """Statement groups with a blank line between them (the template indents each line;
    `indent` leaves the empty one empty)."""
    out: list[str] = []
    for group in groups:
        if group and out:
            out[-1] += "\n"
        out += group
    return out


class DataWriter:
    """The data section of `main()`, and what it needs: imports, `torch.utils.data` names
    and the module's helpers (`digits_dataset`, `load_tensor_file`, ...)."""

    def __init__(self, data: DataPlan, seed: int) -> None:
        self.data, self.seed = data, seed
        self.imports: set[str] = set()
        self.dataset_names: set[str] = set()  # what the script imports from torch.utils.data
        self.unverified: dict[str, str] = {}  # class name -> the torchvision class it extends
        self.digits = False  # digits_dataset()
        self.tensor_kinds: set[str] = set()  # load_tensor_file() for these kinds of file
        self.transformed = False  # TransformedDataset
        self.text_sources: set[str] = set()  # read_text(), python_docs_text(), ...
        self.tokenizers: set[str] = set()  # the TOKEN_HELPERS the script needs

    def transform_doc(self, steps: tuple[TransformPlan, ...]) -> Doc | None:
        """`v2.Compose([...])`; None when there are no steps. ToTensor is the classic one:
        `ToImage()` then `ToDtype(torch.float32, scale=True)`."""
        docs: list[Doc] = []
        for t in steps:
            if t.cls is None:
                docs += [Text("v2.ToImage()"), Text("v2.ToDtype(torch.float32, scale=True)")]
            else:
                head = f"v2.{check_attribute(t.name, t.span, 'transform')}"
                docs.append(call_doc(head, t.args, t.kwargs, t.span))
        if not docs:
            return None
        self.imports.add("from torchvision.transforms import v2")
        return Brackets(
            "v2.Compose", (Brackets("", tuple(docs), "[", "]", PREC_ATOM, display=True),)
        )

    def dataset_doc(self, ds: DatasetPlan, transform: str | None) -> Doc:
        """One dataset: a torchvision class, or a helper for Digits / TensorFile."""
        if ds.kind != "torchvision":
            doc = self.builtin_dataset(ds)
            if transform is None:
                return doc
            self.transformed = True
            self.dataset_names.add("Dataset")
            return Brackets("TransformedDataset", (doc, Text(transform)))
        import torchvision

        head = f"torchvision.datasets.{check_attribute(ds.name, ds.span, 'dataset')}"
        if not ds.verify and ds.cls in (
            torchvision.datasets.CIFAR10,
            torchvision.datasets.CIFAR100,
        ):
            # torchvision checks these files' MD5 sums; a small subclass checks only that
            # they exist. (MNIST-family files are never checksummed: verify=False is left out.)
            head = f"Unverified{ds.name}"
            self.unverified[head] = ds.name
        self.imports.add("import torchvision")
        doc = call_doc(head, ds.args, ds.kwargs, ds.span)
        assert isinstance(doc, Brackets)
        if transform is not None:
            doc = dataclasses.replace(doc, items=(*doc.items, Text(f"transform={transform}")))
        return doc

    def builtin_dataset(self, ds: DatasetPlan) -> Doc:
        self.dataset_names.add("TensorDataset")
        if ds.kind in TEXT_KINDS:
            return self.text_dataset(ds)
        if ds.kind == "digits":
            self.digits = True
            return call_doc("digits_dataset", ds.args, ds.kwargs, ds.span)
        path = (ds.args or (ds.kwargs.get("path"),))[0]
        kind = TENSOR_FILE_KINDS[Path(path).suffix.lower()]
        self.tensor_kinds.add(kind)
        self.imports |= TENSOR_FILE_IMPORTS.get(kind, set())
        return call_doc("load_tensor_file", ds.args, ds.kwargs, ds.span)

    def text_dataset(self, ds: DatasetPlan) -> Doc:
        """`text_windows(char_tokens(read_text("a.txt")), block_size=..., ...)`: the script
        tokenises the text itself (no cache) into the ids `specc run` uses."""
        from specc.training.data import text_arguments

        a = text_arguments(ds)
        if ds.kind == "text_file":
            self.text_sources.add("file")
            source = call_doc("read_text", (a["path"],), {}, ds.span)
        else:  # python_docs, python_source: the script reads the same text
            self.text_sources.add(ds.kind)
            source = Text(f"{ds.kind}_text()")
        kind = a["tokenizer"] if a["tokenizer"] in TOKEN_HELPERS else "file"
        self.tokenizers.add(kind)
        self.imports.add("import numpy as np")
        extra: tuple = ()
        if kind == "file":
            self.imports.add("from tokenizers import Tokenizer")
            extra = (a["tokenizer"],)
        tokens = call_doc(TOKEN_HELPERS[kind], extra, {}, ds.span, lead=(source,))
        options = {k: a[k] for k in ("block_size", "split", "val_fraction")}
        return call_doc("text_windows", (), options, ds.span, lead=(tokens,))

    def section(self) -> tuple[list[str], dict[str, str]]:
        """Transforms, datasets and the val split; returns the statements and, per split,
        how the script holds it (`train_x` in memory, `train_set` streamed)."""
        data = self.data
        transforms: list[str] = []
        first_random = next((i for i, t in enumerate(data.train_transform) if t.random),
                            len(data.train_transform))  # fmt: skip
        if not data.in_memory:
            first_random = len(data.train_transform)  # streamed: all in the dataset
        common = self.transform_doc(data.transform)
        if common is not None:
            transforms.append(statement(common, "transform = ", MAIN))
        train_tf = self.transform_doc(data.train_transform[:first_random])
        augment = self.transform_doc(data.train_transform[first_random:])
        train_name: str | None = None
        if train_tf is not None:
            train_name = "transform" if common is not None and flat(train_tf) == flat(common) \
                else "train_transform"  # fmt: skip
            if train_name == "train_transform":
                transforms.append(statement(train_tf, "train_transform = ", MAIN))
        if augment is not None:
            transforms += [
                "# random transforms: drawn per sample, for each batch",
                statement(augment, "train_augment = ", MAIN),
            ]
        eval_name = "transform" if common is not None else None
        sets: list[str] = []
        held: dict[str, str] = {}
        for ds in data.splits():
            tf = train_name if ds.split == "train" else eval_name
            held[ds.split] = self.hold(ds, tf, sets)
        if data.val_split:
            held["val"] = self.carve_val(sets)
        return paragraphs(transforms, sets), held

    def hold(self, ds: DatasetPlan, transform: str | None, out: list[str]) -> str:
        """`train_x, train_y = as_tensors(...)` (in memory) or `train_set = ...`."""
        doc = self.dataset_doc(ds, transform)
        if self.data.in_memory:
            out.append(statement(Brackets("as_tensors", (doc, Text("device"))),
                                 f"{ds.split}_x, {ds.split}_y = ", MAIN))  # fmt: skip
            return f"{ds.split}_x"
        out.append(statement(doc, f"{ds.split}_set = ", MAIN))
        return f"{ds.split}_set"

    def carve_val(self, out: list[str]) -> str:
        """A seeded random part of the training set held out for validation, as `specc run`
        holds it out (sorted indices, so both parts keep the data's order)."""
        data, seed = self.data, self.seed
        percent = f"{data.val_split * 100:g}%"
        n = "len(train_y)" if data.in_memory else "len(train_set)"
        out += [
            f"# hold out a seeded random {percent} of the training set for validation",
            statement(Text(f"max(1, round({n} * {data.val_split!r}))"), "n_val = ", MAIN),
            f"perm = torch.randperm({n}, generator=torch.Generator().manual_seed({seed!r}))",
        ]
        if data.in_memory:
            out += [
                "val_idx = perm[:n_val].sort().values.to(device)",
                "train_idx = perm[n_val:].sort().values.to(device)",
                "val_x, val_y = train_x[val_idx], train_y[val_idx]",
                "train_x, train_y = train_x[train_idx], train_y[train_idx]",
            ]
            return "val_x"
        self.dataset_names.add("Subset")
        out += [
            "val_set = Subset(train_set, perm[:n_val].sort().values.tolist())",
            "train_set = Subset(train_set, perm[n_val:].sort().values.tolist())",
        ]
        return "val_set"

    @staticmethod
    def source_modules() -> Doc:
        """PythonSource's module names, as a list display."""
        names = tuple(literal_doc(m) for m in PYTHON_SOURCE_MODULES)
        return Brackets("", names, "[", "]", PREC_ATOM, display=True)

    def helpers(self) -> dict[str, Any]:
        """The template's helpers this data needs; adds the torch.utils.data import."""
        self.dataset_names.add("default_collate" if self.data.in_memory else "DataLoader")
        names = ", ".join(sorted(self.dataset_names, key=lambda n: (n[0].islower(), n)))
        self.imports.add(f"from torch.utils.data import {names}")
        return {
            "unverified": [{"name": n, "base": b} for n, b in sorted(self.unverified.items())],
            "digits": self.digits,
            # load_tensor_file: one way of reading per kind of file the spec names
            "tensor_kinds": sorted(self.tensor_kinds, key=TENSOR_FILE_ORDER.index),
            "transformed": self.transformed,
            "text_sources": sorted(self.text_sources),
            "python_source_modules": statement(self.source_modules(), "modules = ", 4),
            "tokenizers": [k for k in TOKEN_HELPERS if k in self.tokenizers],
        }
