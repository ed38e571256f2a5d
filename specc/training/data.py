"""The dataset/transform stage of the training runner.

Resolves the names in a spec's ``data`` block (for the train plan) and turns them into
objects: transforms from
``torchvision.transforms.v2``, datasets from ``torchvision.datasets`` plus the built-ins
(``Digits``, ``TensorFile``, and the text datasets ``TextFile``, ``PythonDocs`` and
``PythonSource`` of ``specc.training.text``), and an optional in-memory fast path (``materialize``).
Every user-facing problem (missing files, bad checksums, bad arguments, unsafe pickles)
becomes a ``DataError`` with the dataset name, the path looked at and how to fix it.
"""

from __future__ import annotations

import functools
import http.client
import inspect
import os
import pickle
import socket
import urllib.error
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch.utils.data import Dataset

from specc.errors import DataError, Location, did_you_mean
from specc.files import file_stamp
from specc.training import text
from specc.training.config import CallSpec
from specc.training.plan import TEXT_KINDS, DatasetPlan, TransformPlan
from specc.values import loc

BUILTIN_DATASETS = ("Digits", "TensorFile", "TextFile", "PythonDocs", "PythonSource")
TEXT_DATASETS = ("TextFile", "PythonDocs", "PythonSource")
# What `data.<attribute>` in a train block can read from the training dataset.
DATASET_ATTRIBUTES = ("vocab_size", "block_size")
TENSOR_FILE_SUFFIXES = (".pt", ".pth", ".npz", ".safetensors")

# Transforms that draw random numbers although their name does not start with "Random".
_RANDOM_TRANSFORMS = frozenset(
    {
        "ColorJitter",
        "RandAugment",
        "AutoAugment",
        "TrivialAugmentWide",
        "AugMix",
        "ElasticTransform",
        "GaussianBlur",  # sigma is sampled from a range
        "GaussianNoise",
        "MixUp",
        "CutMix",
        "ScaleJitter",
        "JPEG",  # quality may be a range that is sampled per call
    }
)

# torchvision (about 2.5 s to import cold) is imported where a dataset or transform of it is
# looked up or used, not with this module: checking a spec whose train block reads only the
# built-in datasets never needs it.


@functools.cache
def _batch_safe_transforms() -> tuple[type, ...]:
    """Deterministic v2 transforms that give the same result on a uint8 batch [N, C, H, W]
    as on each PIL image of it; only these take the batched materialize route."""
    from torchvision.transforms import v2

    return (
        v2.Compose,
        v2.ToImage,
        v2.ToDtype,
        v2.ConvertImageDtype,
        v2.Normalize,
        v2.ToPureTensor,
        v2.Identity,
    )


# --------------------------------------------------------------------------- transforms


def _transform_names() -> list[str]:
    from torchvision.transforms import v2

    return sorted({n for n in dir(v2) if _v2_transform(n)} | {"ToTensor"})


def _v2_transform(name: str) -> type | None:
    """The torchvision.transforms.v2 transform class `name`; None when there is none."""
    from torchvision.transforms import v2

    cls = getattr(v2, name, None) if not name.startswith("_") else None
    return cls if isinstance(cls, type) and issubclass(cls, v2.Transform) else None


def _coerce_transform_arg(key: str | None, value: Any) -> Any:
    """Spec values are plain data; turn the few strings torchvision wants as objects."""
    if key == "dtype" and isinstance(value, str):
        dtype = getattr(torch, value.removeprefix("torch."), None)
        return dtype if isinstance(dtype, torch.dtype) else value
    return value


def resolve_transforms(items: list[CallSpec]) -> tuple[TransformPlan, ...]:
    """Each transform of a spec's list, looked up in ``torchvision.transforms.v2`` and
    built once to check its arguments. ``ToTensor`` means the classic behaviour (float32
    in [0, 1], CHW): ``ToImage`` then ``ToDtype(float32, scale=True)``, since
    ``v2.ToTensor`` is deprecated."""
    return tuple(_resolve_transform(c.name, c.args, c.kwargs, loc(c.span), c.span) for c in items)


def _resolve_transform(name: str, raw_args: list, raw_kwargs: dict, location,
                       span=None) -> TransformPlan:  # fmt: skip
    args = tuple(_coerce_transform_arg(None, a) for a in (raw_args or []))
    kwargs = {k: _coerce_transform_arg(k, v) for k, v in (raw_kwargs or {}).items()}
    random = is_random_transform(name)
    if name == "ToTensor":
        if args or kwargs:
            raise DataError(
                "transform `ToTensor` takes no arguments",
                location,
                hint="write `ToTensor()`; use `ToDtype` to choose another dtype",
            )
        return TransformPlan(name, None, (), {}, random, span)
    cls = _v2_transform(name)
    if cls is None:
        raise DataError(
            f"unknown transform `{name}`: torchvision.transforms.v2 has no transform of that name",
            location,
            hint=did_you_mean(name, _transform_names())
            or "see the list of transforms in torchvision.transforms.v2",
        )
    try:
        cls(*args, **kwargs)
    except (TypeError, ValueError) as exc:
        raise DataError(
            f"bad arguments for transform `{name}`: {exc}",
            location,
            hint=f"the signature is {name}{_signature(cls)}",
        ) from exc
    return TransformPlan(name, cls, args, kwargs, random, span)


def compose(steps: Sequence[TransformPlan]):
    """The ``v2.Compose`` of resolved transforms; None when there are none."""
    if not steps:
        return None
    from torchvision.transforms import v2

    built = [
        v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])
        if t.cls is None
        else t.cls(*t.args, **t.kwargs)
        for t in steps
    ]
    return v2.Compose(built)


def make_transform(items: list[tuple[str, list, dict]], *, location: Location | None = None):
    """``compose`` of ``(class_name, args, kwargs)`` items; None when empty."""
    return compose([_resolve_transform(n, a, k, location) for n, a, k in items])


def is_random_transform(name: str) -> bool:
    """True when the transform draws random numbers (so it must run per epoch, per sample)."""
    return name.startswith("Random") or name in _RANDOM_TRANSFORMS


def _item_name(item: Any) -> str:
    return item[0] if isinstance(item, (tuple, list)) else item.name


def split_transforms(items) -> tuple[list, list]:
    """Split at the first random transform: (deterministic prefix, the rest)."""
    items = list(items)
    for i, item in enumerate(items):
        if is_random_transform(_item_name(item)):
            return items[:i], items[i:]
    return items, []


# --------------------------------------------------------------------------- built-ins


class _TensorBacked(Dataset):
    """A dataset held as two tensors; ``transform`` applies to each input."""

    name = "dataset"

    def __init__(self, data: torch.Tensor, targets: torch.Tensor, transform=None) -> None:
        self.data = data
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, index: int) -> tuple[Any, torch.Tensor]:
        x = self.data[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]

    def __repr__(self) -> str:
        return f"{self.name}(n={len(self)}, input={tuple(self.data.shape[1:])})"


class DigitsDataset(_TensorBacked):
    """scikit-learn's bundled handwritten digits (8x8, 10 classes) as [1, 8, 8] floats."""

    name = "Digits"
    classes: ClassVar[list[str]] = [str(i) for i in range(10)]

    def __init__(self, train: bool = True, transform=None) -> None:
        data, targets = _digits_split(bool(train))
        super().__init__(data, targets, transform)
        self.train = bool(train)


@functools.lru_cache(maxsize=2)
def _digits_split(train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The fixed Digits split: ``train_test_split(test_size=0.2, stratify=y, random_state=0)``
    over all 1797 images, giving 1437 train / 360 test with the class mix kept."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32) / 16.0  # pixels are 0..16
    labels = np.asarray(bunch.target, dtype=np.int64)
    idx_train, idx_test = train_test_split(
        np.arange(len(labels)), test_size=0.2, stratify=labels, random_state=0
    )
    idx = np.sort(idx_train if train else idx_test)
    data = torch.from_numpy(images[idx]).unsqueeze(1).contiguous()
    return data, torch.from_numpy(labels[idx])


class TensorFileDataset(_TensorBacked):
    """Inputs and labels read from one .pt/.npz/.safetensors file."""

    name = "TensorFile"

    def __init__(self, path: Path, data, targets, transform=None) -> None:
        super().__init__(data, targets, transform)
        self.path = path


class TextDataset(_TensorBacked):
    """Next-token windows of a tokenised text: inputs and targets are int64 ``[block_size]``
    (views of one tensor of ids); see specc.training.text for how an epoch is cut."""

    def __init__(self, name: str, inputs: torch.Tensor, targets: torch.Tensor,
                 tokens: text.Tokens) -> None:  # fmt: skip
        super().__init__(inputs, targets)
        self.name = name
        self.vocab_size = tokens.vocab_size
        self.decode = tokens.decode


def _digits_signature(train: bool = True) -> None:
    """Digits(train=True)."""


def _tensorfile_signature(path: str, x: str = "x", y: str = "y") -> None:
    """TensorFile(path, x="x", y="y")."""


def _textfile_signature(path: str, block_size: int = 256, tokenizer: str = "char",
                        split: str = "train", val_fraction: float = 0.1) -> None:  # fmt: skip
    """TextFile(path, block_size=256, tokenizer="char", split="train", val_fraction=0.1)."""


def _builtin_text_signature(block_size: int = 256, tokenizer: str = "char", split: str = "train",
                            val_fraction: float = 0.1) -> None:  # fmt: skip
    """PythonDocs(...) and PythonSource(...): (block_size=256, tokenizer="char",
    split="train", val_fraction=0.1)."""


_BUILTIN_SIGNATURES: dict[str, Callable] = {
    "Digits": _digits_signature,
    "TensorFile": _tensorfile_signature,
    "TextFile": _textfile_signature,
    "PythonDocs": _builtin_text_signature,
    "PythonSource": _builtin_text_signature,
}
_BUILTIN_KINDS = {
    "Digits": "digits",
    "TensorFile": "tensor_file",
    "TextFile": "text_file",
    "PythonDocs": "python_docs",
    "PythonSource": "python_source",
}


def _bind(name: str, fn: Callable, args: list, kwargs: dict, location) -> inspect.BoundArguments:
    try:
        bound = inspect.signature(fn).bind(*args, **kwargs)
    except TypeError as exc:
        raise DataError(
            f"bad arguments for dataset `{name}`: {exc}",
            location,
            hint=f"the signature is {name}{_signature(fn)}",
        ) from exc
    bound.apply_defaults()
    return bound


def _signature(fn: Callable) -> str:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return "(...)"
    # Without annotations: users write plain values, and the typing noise hides the names.
    params = [p.replace(annotation=inspect.Parameter.empty) for p in sig.parameters.values()]
    return str(sig.replace(parameters=params, return_annotation=inspect.Signature.empty))


def _resolve(path: str | os.PathLike) -> Path:
    """Relative paths mean the current directory, as torchvision and open() do."""
    return Path(os.path.expanduser(os.fspath(path))).absolute()


def _check_tensor_file_args(path: Any, xkey: Any, ykey: Any, location) -> None:
    if not isinstance(path, (str, os.PathLike)):
        raise DataError(f"TensorFile: `path` must be a string, got {type(path).__name__}", location)
    for key_name, key in (("x", xkey), ("y", ykey)):
        if not isinstance(key, str):
            raise DataError(
                f"TensorFile: `{key_name}` must be a key name (a string), got {type(key).__name__}",
                location,
            )
    file = _resolve(path)
    suffix = file.suffix.lower()
    if suffix not in TENSOR_FILE_SUFFIXES:
        raise DataError(
            f"TensorFile: cannot read '{file}': unsupported file type '{suffix or '(none)'}'",
            location,
            hint="save the inputs and labels as .pt (torch.save), .npz (numpy.savez) "
            "or .safetensors (safetensors.torch.save_file)",
        )


def _load_tensor_file(path: Any, xkey: Any, ykey: Any, transform, location) -> TensorFileDataset:
    _check_tensor_file_args(path, xkey, ykey, location)
    file = _resolve(path)
    suffix = file.suffix.lower()
    if not file.is_file():
        what = "is a directory, not a file" if file.is_dir() else "does not exist"
        raise DataError(
            f"TensorFile: '{file}' {what}",
            location,
            hint=f"check the path; relative paths are resolved against the current "
            f"directory ({Path.cwd()})",
        )
    if suffix in (".pt", ".pth"):
        tensors = _read_pt(file, xkey, ykey, location)
    elif suffix == ".npz":
        tensors = _read_npz(file, location)
    else:
        tensors = _read_safetensors(file, location)

    picked = []
    for key in (xkey, ykey):
        if key not in tensors:
            keys = ", ".join(f"'{k}'" for k in tensors) or "none"
            raise DataError(
                f"TensorFile: '{file}' has no entry '{key}' (it has: {keys})",
                location,
                hint=did_you_mean(key, [str(k) for k in tensors])
                or "name the entries with the `x=` and `y=` arguments of TensorFile",
            )
        picked.append(_as_tensor(tensors[key], file, key, location))
    x, y = picked
    if x.dim() == 0 or y.dim() == 0:
        raise DataError(
            f"TensorFile: '{file}': entries '{xkey}' and '{ykey}' must have a sample "
            f"dimension first, got shapes {tuple(x.shape)} and {tuple(y.shape)}",
            location,
        )
    if len(x) != len(y):
        raise DataError(
            f"TensorFile: '{file}': '{xkey}' has {len(x)} samples but '{ykey}' has {len(y)}",
            location,
            hint="inputs and labels must have the same length along the first dimension",
        )
    if len(x) == 0:
        raise DataError(f"TensorFile: '{file}' holds no samples", location)
    if x.dtype == torch.float64:
        x = x.float()  # numpy's default float64 would not match float32 model weights
    if not (y.is_floating_point() or y.is_complex() or y.dtype == torch.bool):
        y = y.long()
    return TensorFileDataset(file, x, y, transform)


def _read_pt(file: Path, xkey: str, ykey: str, location) -> dict:
    try:
        obj = torch.load(file, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" in str(exc).lower() or "weights_only" in str(exc):
            raise DataError(
                f"TensorFile: refused to load '{file}': it contains Python objects other than "
                "tensors, and unpickling them could run arbitrary code",
                location,
                hint="save only tensors, e.g. torch.save({'x': x, 'y': y}, path), "
                "or convert the file to .safetensors or .npz",
            ) from None  # the torch message invites weights_only=False; we never do that
        raise _unreadable(file, "PyTorch", exc, location) from exc
    except Exception as exc:  # zip/stream errors, EOF, OSError: all mean "not readable"
        raise _unreadable(file, "PyTorch", exc, location) from exc
    if isinstance(obj, dict):
        return obj
    if isinstance(obj, (tuple, list)) and len(obj) == 2:
        return {xkey: obj[0], ykey: obj[1]}
    raise DataError(
        f"TensorFile: '{file}' holds a {type(obj).__name__}; expected a dict with entries "
        f"'{xkey}' and '{ykey}' or a pair (inputs, labels)",
        location,
        hint="save it as torch.save({'x': inputs, 'y': labels}, path)",
    )


def _read_npz(file: Path, location) -> dict:
    try:
        with np.load(file, allow_pickle=False) as archive:
            return {k: archive[k] for k in archive.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise DataError(
                f"TensorFile: refused to load '{file}': it holds object arrays, and "
                "unpickling them could run arbitrary code",
                location,
                hint="store plain numeric arrays (numpy.savez(path, x=x, y=y))",
            ) from None
        raise _unreadable(file, "numpy .npz", exc, location) from exc
    except Exception as exc:
        raise _unreadable(file, "numpy .npz", exc, location) from exc


def _read_safetensors(file: Path, location) -> dict:
    from safetensors.torch import load_file

    try:
        return load_file(str(file))
    except Exception as exc:  # SafetensorError is not importable in a stable place
        raise _unreadable(file, "safetensors", exc, location) from exc


def _unreadable(file: Path, kind: str, exc: BaseException, location) -> DataError:
    return DataError(
        f"TensorFile: could not read '{file}' as a {kind} file: {type(exc).__name__}: {exc}",
        location,
        hint="the file may be truncated or in another format; write it again",
    )


def _as_tensor(value: Any, file: Path, key: str, location) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    try:
        return torch.as_tensor(np.asarray(value))
    except (TypeError, ValueError, RuntimeError):
        raise DataError(
            f"TensorFile: entry '{key}' of '{file}' is a {type(value).__name__}, "
            "not a tensor or numeric array",
            location,
        ) from None


# --------------------------------------------------------------------------- torchvision


def _without_checksums(cls: type) -> type:
    """A CIFAR subclass whose file lists carry no MD5, so torchvision's own
    ``check_integrity(path, None)`` only checks that each file exists."""
    return type(
        cls.__name__,
        (cls,),
        {
            "train_list": [[f, None] for f, _ in cls.train_list],
            "test_list": [[f, None] for f, _ in cls.test_list],
            "meta": {**cls.meta, "md5": None},
            "__module__": __name__,
            # Module-level names below, so instances still pickle (DataLoader workers).
            "__qualname__": f"_Unverified{cls.__name__}",
            "__doc__": f"{cls.__name__} without the MD5 checks (verify=False).",
        },
    )


@functools.cache
def _unverified() -> dict[type, type]:
    """torchvision's CIFAR classes -> their `_without_checksums` subclasses, which are also
    this module's `_UnverifiedCIFAR10` and `_UnverifiedCIFAR100`: pickle (DataLoader
    workers) finds a class by its module and name."""
    import torchvision.datasets as tv_datasets

    made = {cls: _without_checksums(cls) for cls in (tv_datasets.CIFAR10, tv_datasets.CIFAR100)}
    for sub in made.values():
        globals()[sub.__qualname__] = sub
    return made


def __getattr__(name: str) -> Any:
    """`_UnverifiedCIFAR10` and `_UnverifiedCIFAR100`, made on first use (`_unverified`)."""
    if name in ("_UnverifiedCIFAR10", "_UnverifiedCIFAR100"):
        _unverified()
        return globals()[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _uses_plain_mnist_files(cls: type) -> bool:
    """MNIST, FashionMNIST, KMNIST: raw idx files in <root>/<Name>/raw, checked only for
    existence (torchvision 0.29 verifies MD5 of the downloaded .gz archives only)."""
    import torchvision.datasets as tv_datasets

    return (
        issubclass(cls, tv_datasets.MNIST)
        and cls._check_exists is tv_datasets.MNIST._check_exists
        and cls._load_data is tv_datasets.MNIST._load_data
    )


def data_parameters(name: str) -> list[inspect.Parameter] | None:
    """The parameters a spec may give a `data` block's dataset or transform `name` (a
    built-in, a torchvision dataset, a torchvision.transforms.v2 transform), as the
    resolver binds them; None for a name that is none of these."""
    if name in _BUILTIN_SIGNATURES:
        return list(inspect.signature(_BUILTIN_SIGNATURES[name]).parameters.values())
    from specc.registry import signature_params

    if (cls := _torchvision_dataset(name)) is not None:  # its transforms: the list's
        return [p for p in signature_params(cls) if not p.name.endswith("transform")
                and p.name != "transforms"]  # fmt: skip
    if (cls := _v2_transform(name)) is not None:
        return signature_params(cls)
    return None


def _dataset_names() -> list[str]:
    import torchvision.datasets as tv_datasets

    return [*BUILTIN_DATASETS, *tv_datasets.__all__]


def _torchvision_dataset(name: str) -> type | None:
    """The torchvision.datasets dataset class `name`; None when there is none
    (VisionDataset is their base, not a dataset)."""
    import torchvision.datasets as tv_datasets

    cls = getattr(tv_datasets, name, None) if name in tv_datasets.__all__ else None
    ok = isinstance(cls, type) and issubclass(cls, Dataset) and name != "VisionDataset"
    return cls if ok else None


def _torchvision_class(name: str, location) -> type:
    cls = _torchvision_dataset(name)
    if cls is None:
        raise DataError(
            f"unknown dataset `{name}`: it is neither a built-in ({', '.join(BUILTIN_DATASETS)}) "
            "nor a dataset class in torchvision.datasets",
            location,
            hint=did_you_mean(name, _dataset_names())
            or "see torchvision.datasets for the available datasets",
        )
    return cls


def _expected_files(cls: type, root: Path) -> tuple[Path, list[str]] | None:
    """The folder and file names torchvision looks for, for the formats we know."""
    import torchvision.datasets as tv_datasets

    if issubclass(cls, tv_datasets.CIFAR10):
        names = [f for f, _ in cls.train_list + cls.test_list] + [cls.meta["filename"]]
        return root / cls.base_folder, names
    if _uses_plain_mnist_files(cls):
        names = [os.path.splitext(os.path.basename(url))[0] for url, _ in cls.resources]
        return root / cls.__name__ / "raw", names
    return None


def _is_network_error(exc: BaseException) -> bool:
    seen: set[int] = set()
    cur: BaseException | None = exc
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        if isinstance(
            cur,
            (
                urllib.error.URLError,
                ConnectionError,
                TimeoutError,
                socket.gaierror,
                http.client.HTTPException,
            ),
        ):
            return True
        # MNIST folds the per-mirror URLErrors into one RuntimeError.
        if isinstance(cur, RuntimeError) and "Error downloading" in str(cur):
            return True
        cur = cur.__cause__ or cur.__context__
    return False


def _download_reason(exc: BaseException) -> str:
    """The innermost useful line: the URLError reason, or MNIST's last per-mirror error."""
    cur: BaseException | None = exc
    while cur is not None:
        if isinstance(cur, urllib.error.URLError):
            return str(cur.reason)
        cur = cur.__cause__ or cur.__context__
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1] if lines else type(exc).__name__


def _explain(
    name: str, cls: type, exc: Exception, root: Path | None, download: bool, verify: bool, loc
) -> DataError:
    import torchvision.datasets as tv_datasets
    from torchvision.datasets.utils import check_integrity

    if download and _is_network_error(exc):
        return DataError(
            f"could not download dataset `{name}` into {root} ({_download_reason(exc)}); "
            "this machine appears to have no network access",
            loc,
            hint="download it on a machine with internet access (download=True), copy the "
            f"files into {root}, and use download=False here",
        )
    expected = _expected_files(cls, root) if root is not None else None
    text = str(exc)
    if expected is not None and isinstance(exc, RuntimeError) and "not found" in text.lower():
        folder, names = expected
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            shown = ", ".join(missing[:4]) + (", ..." if len(missing) > 4 else "")
            if issubclass(cls, tv_datasets.CIFAR10):
                how = f"extract {cls.filename} into {root} so that {folder / names[0]} exists"
            else:
                how = f"place the uncompressed idx files ({', '.join(names)}) in {folder}"
            return DataError(
                f"dataset `{name}` not found: looked in {folder} and did not find {shown}",
                loc,
                hint=f"set download=True on a machine with internet access, or {how}",
            )
        if verify and issubclass(cls, tv_datasets.CIFAR10):
            md5s = dict(cls.train_list + cls.test_list)
            md5s[cls.meta["filename"]] = cls.meta["md5"]
            bad = [n for n in names if not check_integrity(str(folder / n), md5s[n])]
            return DataError(
                f"dataset `{name}`: the files in {folder} do not match torchvision's MD5 "
                f"checksums ({', '.join(bad) or 'unknown file'})",
                loc,
                hint="if you made these files yourself (e.g. a small set in the real "
                f"{name} format), pass verify=False to skip the checksum check (the files "
                "are then unpickled unchecked, so only do this for files you trust); "
                "otherwise delete the folder and download it again",
            )
    if isinstance(exc, FileNotFoundError) or (
        isinstance(exc, RuntimeError) and "not found" in text.lower()
    ):
        where = f" in {root}" if root is not None else ""
        if "download" in inspect.signature(cls).parameters:
            hint = (
                "set download=True on a machine with internet access, or place the "
                f"files where torchvision.datasets.{name} expects them under the root"
            )
        else:
            hint = (
                f"check the path and the folder layout torchvision.datasets.{name} expects; "
                f"relative paths are resolved against the current directory ({Path.cwd()})"
            )
        return DataError(f"dataset `{name}` not found{where}: {text}", loc, hint=hint)
    where = f" from {root}" if root is not None else ""
    return DataError(
        f"could not load dataset `{name}`{where}: {type(exc).__name__}: {text}",
        loc,
        hint="the files may be corrupt or not in the format torchvision expects for "
        f"{name}; delete them and download again",
    )


def resolve_dataset(split: str, spec: CallSpec) -> DatasetPlan:
    """A dataset of the spec looked up and its arguments checked, nothing read yet."""
    return _resolve_dataset(split, spec.name, spec.args, spec.kwargs, loc(spec.span), spec.span)


def _resolve_dataset(split: str, name: str, args: list, kwargs: dict, location,
                     span=None) -> DatasetPlan:  # fmt: skip
    args, kwargs = list(args or []), dict(kwargs or {})
    if "transform" in kwargs:
        raise DataError(
            f"dataset `{name}`: give transforms in the transform list, not as `transform=`",
            location,
        )
    if name in BUILTIN_DATASETS:
        bound = _bind(name, _BUILTIN_SIGNATURES[name], args, kwargs, location)
        _check_builtin(name, bound.arguments, location)
        return DatasetPlan(split, name, _BUILTIN_KINDS[name], None, tuple(args), kwargs, True,
                           span)  # fmt: skip
    cls = _torchvision_class(name, location)
    verify = kwargs.pop("verify", True)
    if not isinstance(verify, bool):
        raise DataError(
            f"dataset `{name}`: `verify` must be true or false, got {verify!r}", location
        )
    if not verify and cls not in _unverified():
        if hasattr(cls, "_check_integrity") and not _uses_plain_mnist_files(cls):
            raise DataError(
                f"dataset `{name}`: verify=False is not supported for this dataset",
                location,
                hint="verify=False works for CIFAR10 and CIFAR100; MNIST, FashionMNIST and "
                "KMNIST never checksum their files; remove verify=False",
            )
    _bind(name, cls, args, kwargs, location)
    return DatasetPlan(split, name, "torchvision", cls, tuple(args), kwargs, verify, span)


def _check_builtin(name: str, arguments: dict, location) -> None:
    if name == "Digits" and not isinstance(arguments["train"], bool):
        raise DataError(
            f"dataset `Digits`: `train` must be true or false, got {arguments['train']!r}",
            location,
        )
    if name == "TensorFile":
        _check_tensor_file_args(arguments["path"], arguments["x"], arguments["y"], location)
    if name in TEXT_DATASETS:
        _check_text_args(name, arguments, location)


def _check_text_args(name: str, arguments: dict, location) -> None:
    if name == "TextFile" and not isinstance(arguments["path"], (str, os.PathLike)):
        raise DataError(
            f"TextFile: `path` must be a string, got {type(arguments['path']).__name__}",
            location,
        )
    text.check_tokenizer(arguments["tokenizer"], name, location)
    text.check_window_args(arguments["block_size"], arguments["split"],
                           arguments["val_fraction"], name, location)  # fmt: skip


# --------------------------------------------------------------------------- text


def text_arguments(ds: DatasetPlan, location: Location | None = None) -> dict[str, Any]:
    """A text dataset's arguments by name, defaults filled in."""
    return _bind(ds.name, _BUILTIN_SIGNATURES[ds.name], list(ds.args), ds.kwargs,
                 location or loc(ds.span)).arguments  # fmt: skip


# A built-in text's tokens, made once per process and shared (read-only): a run reads them
# for each split, for `data.vocab_size` and for its tokenizer.json.
_BUILTIN_TOKENS: dict[tuple, text.Tokens] = {}


def text_tokens(ds: DatasetPlan, location: Location | None = None) -> text.Tokens:
    """The tokens of a text dataset's whole text (both splits): TextFile's from the cache
    beside its file when fresh, PythonDocs' and PythonSource's tokenised once per process
    and tokenizer (a tokenizer.json by its path, size and modification time; one that cannot
    be read is not cached: `tokenize` says what is wrong with it)."""
    location = location or loc(ds.span)
    a = text_arguments(ds, location)
    if ds.kind == "text_file":
        return text.file_token_ids(a["path"], a["tokenizer"], "TextFile", location)[0]
    tokenizer = a["tokenizer"]
    from_file = tokenizer not in text.TOKENIZER_KINDS
    key = (ds.kind, tokenizer, file_stamp(text.resolve_path(tokenizer)) if from_file else ())
    if (tokens := _BUILTIN_TOKENS.get(key)) is None:
        source = text.python_docs_text if ds.kind == "python_docs" else text.python_source_text
        tokens = text.tokenize(source(), tokenizer, location)
        tokens.ids.flags.writeable = False  # every caller shares this array
        _BUILTIN_TOKENS[key] = tokens
    return tokens


def save_tokenizer(ds: DatasetPlan, folder: Path) -> Path | None:
    """A text dataset's tokenizer as `folder/tokenizer.json` (specc.training.text)."""
    a = text_arguments(ds)
    tokens = text_tokens(ds) if a["tokenizer"] == "char" else None
    return text.write_tokenizer(tokens, a["tokenizer"], folder)


def _open_text(ds: DatasetPlan, transform, location: Location | None) -> TextDataset:
    if transform is not None:
        raise DataError(
            f"dataset `{ds.name}` gives token ids: transforms do not apply to it",
            location,
            hint="remove `transform` and `train_transform` from the data block",
        )
    a = text_arguments(ds, location)
    tokens = text_tokens(ds, location)
    ids = text.split_ids(tokens.ids, a["split"], a["val_fraction"])
    what = f"{ds.name}(split={a['split']!r})"
    text.check_enough_tokens(len(ids), a["block_size"], what, location)
    inputs, targets = text.windows(ids, a["block_size"])
    return TextDataset(ds.name, inputs, targets, tokens)


def dataset_attribute(ds: DatasetPlan, attr: str, location: Location | None) -> Any:
    """`data.<attr>` of a train block: a property of its training dataset, known at plan
    time (the vocabulary size reads the text, or its fresh token cache)."""
    if attr not in DATASET_ATTRIBUTES:
        raise DataError(
            f"datasets have no attribute `{attr}`",
            location,
            hint=did_you_mean(attr, DATASET_ATTRIBUTES)
            or f"available: {', '.join(f'data.{a}' for a in DATASET_ATTRIBUTES)}",
        )
    if ds.name not in TEXT_DATASETS:
        raise DataError(
            f"`data.{attr}`: the training dataset `{ds.name}` is not a text dataset",
            location,
            hint=f"data.{attr} is known for {' and '.join(TEXT_DATASETS)}",
        )
    if attr == "block_size":
        return text_arguments(ds, location)["block_size"]
    return text_tokens(ds).vocab_size  # a problem with the text is located at the dataset


def open_dataset(ds: DatasetPlan, transform=None, *, location: Location | None = None):
    """Build one resolved dataset (reading its files).

    - ``Digits(train=True)``: scikit-learn's bundled 1797 8x8 digits, no files needed.
      Split rule (fixed): ``train_test_split(test_size=0.2, stratify=labels,
      random_state=0)`` -> 1437 train / 360 test, each in original order. Samples are
      ``(float32 [1, 8, 8] in [0, 1], int64 label)``.
    - ``TensorFile(path, x="x", y="y")``: a .pt (loaded with ``weights_only=True``), .npz
      (no pickles) or .safetensors file with inputs and labels.
    - ``TextFile(path, ...)``, ``PythonDocs(...)`` and ``PythonSource(...)``: next-token
      windows of a text
      (specc.training.text): samples are ``(int64 [block_size], int64 [block_size])``.
    - anything else: the class of that name in ``torchvision.datasets``, called with
      ``args``/``kwargs`` and ``transform=``. ``verify=False`` (default True) skips
      torchvision's MD5 checks of CIFAR10/CIFAR100 files; MNIST/FashionMNIST/KMNIST raw
      files are never checksummed by torchvision, so it changes nothing there.
    """
    location = location or loc(ds.span)
    if ds.kind == "digits":
        a = _bind(ds.name, _digits_signature, list(ds.args), ds.kwargs, location).arguments
        return DigitsDataset(train=a["train"], transform=transform)
    if ds.kind == "tensor_file":
        a = _bind(ds.name, _tensorfile_signature, list(ds.args), ds.kwargs, location).arguments
        return _load_tensor_file(a["path"], a["x"], a["y"], transform, location)
    if ds.kind in TEXT_KINDS:
        return _open_text(ds, transform, location)
    cls = _unverified().get(ds.cls, ds.cls) if not ds.verify else ds.cls
    kwargs = dict(ds.kwargs) | ({"transform": transform} if transform is not None else {})
    bound = _bind(ds.name, cls, list(ds.args), kwargs, location)
    raw_root = bound.arguments.get("root")
    root = _resolve(raw_root) if isinstance(raw_root, (str, os.PathLike)) else None
    download = bool(bound.arguments.get("download", False))
    try:
        return cls(*ds.args, **kwargs)
    except DataError:
        raise
    except Exception as exc:  # anything torchvision raises is a data problem to the user
        raise _explain(ds.name, cls, exc, root, download, ds.verify, location) from exc


# torchvision datasets whose sample's target is one class index (an int) by default.
_CLASS_INDEX_DATASETS = frozenset({
    "CIFAR10", "CIFAR100", "MNIST", "FashionMNIST", "KMNIST", "EMNIST", "QMNIST", "SVHN",
    "STL10", "USPS", "SEMEION", "ImageFolder", "ImageNet", "Imagenette", "Food101",
    "Flowers102", "GTSRB", "DTD", "EuroSAT", "Country211", "SUN397", "FGVCAircraft",
    "StanfordCars", "Places365",
})  # fmt: skip


def known_label(ds: DatasetPlan) -> tuple[tuple[int, ...], str] | None:
    """One sample's label shape and dtype when the dataset's kind settles them without
    reading any file (`specc check` opens nothing it need not); None: read sample 0."""
    if ds.kind == "digits" or (ds.kind == "torchvision" and ds.name in _CLASS_INDEX_DATASETS):
        return (), "int64"
    if ds.kind in TEXT_KINDS:
        return (text_arguments(ds)["block_size"],), "int64"
    return None


def make_dataset(name: str, args: list, kwargs: dict, *, transform=None,
                 location: Location | None = None):  # fmt: skip
    """``open_dataset`` of a dataset given by name and arguments."""
    ds = _resolve_dataset("train", name, args, kwargs, location)
    return open_dataset(ds, transform, location=location)


# --------------------------------------------------------------------------- fast path


def _flatten(transform) -> list:
    from torchvision.transforms import v2

    if isinstance(transform, v2.Compose):
        return [leaf for t in transform.transforms for leaf in _flatten(t)]
    return [transform]


def _raw_images(dataset) -> torch.Tensor | None:
    """uint8 [N, C, H, W] exactly as the dataset's PIL images would give after ToImage."""
    import torchvision.datasets as tv_datasets

    if type(dataset) in (*_unverified(), *_unverified().values()):
        # torchvision keeps the pickled [N, 3, H, W] bytes and only transposes its numpy
        # view to [N, H, W, 3]; permuting back gives NCHW sharing that buffer, no copy.
        return torch.from_numpy(dataset.data).permute(0, 3, 1, 2)
    if type(dataset) in (tv_datasets.MNIST, tv_datasets.FashionMNIST, tv_datasets.KMNIST):
        return dataset.data.unsqueeze(1)  # [N, H, W] -> [N, 1, H, W]
    return None


def _plain(x: Any) -> Any:
    # tv_tensors.Image etc. are Tensor subclasses; the runner wants plain tensors.
    return x.as_subclass(torch.Tensor) if isinstance(x, torch.Tensor) else x


def _label_tensor(labels: torch.Tensor, any_rank: bool = False) -> torch.Tensor | None:
    """Integer labels as int64: one per sample, or (`any_rank`) a tensor per sample, such
    as the next-token targets of a token window."""
    if labels.dim() == 0 or (labels.dim() != 1 and not any_rank):
        return None
    if labels.is_floating_point() or labels.is_complex():
        return None
    return labels.long()


def _fits(x: torch.Tensor, n: int, max_bytes: int) -> bool:
    return x.element_size() * x.numel() * n + 8 * n <= max_bytes


def _whole_set(leaves: list, raw: torch.Tensor) -> torch.Tensor | None:
    """The chain run on all images at once with torchvision's own kernels, normalising in
    place: one new tensor and one pass per step, as a hand-written loop does it. None when
    a step has another form (e.g. a per-type dtype dict)."""
    from torchvision.transforms import v2

    x = raw
    for t in leaves:
        if isinstance(t, (v2.ToImage, v2.ToPureTensor, v2.Identity)):
            continue  # raw is already a plain uint8 [N, C, H, W] tensor
        if isinstance(t, (v2.ToDtype, v2.ConvertImageDtype)) and isinstance(t.dtype, torch.dtype):
            scale = True if isinstance(t, v2.ConvertImageDtype) else t.scale
            x = v2.functional.to_dtype_image(x, t.dtype, scale=scale)
        elif isinstance(t, v2.Normalize) and x is not raw and x.is_floating_point():
            x = v2.functional.normalize_image(x, t.mean, t.std, inplace=True)  # x is ours
        else:
            return None
    return x.clone() if x is raw else x  # raw may share the dataset's own memory


def _batched(dataset, n: int, max_bytes: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """CIFAR/MNIST-family whose transform is a known batch-safe chain: run it on the whole
    uint8 tensor (else on chunks of it) instead of once per PIL image."""
    transform = getattr(dataset, "transform", None)
    if transform is None or getattr(dataset, "target_transform", None) is not None:
        return None
    leaves = _flatten(transform)
    if not all(isinstance(t, _batch_safe_transforms()) for t in leaves):
        return None
    raw = _raw_images(dataset)
    if raw is None:
        return None
    first_x, first_y = dataset[0]
    if not isinstance(first_x, torch.Tensor):
        return None
    first_x = _plain(first_x)
    if not _fits(first_x, n, max_bytes):
        return None
    out = _whole_set(leaves, raw)
    if out is None:
        out = torch.empty((n, *first_x.shape), dtype=first_x.dtype)
        for start in range(0, n, 4096):
            out[start : start + 4096] = _plain(transform(raw[start : start + 4096]))
    # Guard against a transform behaving differently on a batch than on one PIL image.
    if out.shape[1:] != first_x.shape or out.dtype != first_x.dtype:
        return None
    if not torch.equal(out[0], first_x):
        return None
    labels = _label_tensor(torch.as_tensor(dataset.targets))
    if labels is None or len(labels) != n or int(labels[0]) != int(first_y):
        return None
    return out, labels


def _dataset_label(dataset) -> str:
    return getattr(dataset, "name", None) or type(dataset).__name__


def materialize(
    dataset, *, max_bytes: int = 2 << 30, location: Location | None = None
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Stack the whole dataset into ``(inputs [N, ...], labels [N] int64)``, or None when it
    does not yield tensors with integer labels, or would exceed ``max_bytes``.

    The dataset's own (deterministic) transform is applied per sample, once. Digits and
    TensorFile without a transform return their tensors directly (shared, not copied).
    """
    try:
        n = len(dataset)
    except TypeError:
        return None
    if n == 0:
        return None
    if isinstance(dataset, TextDataset):  # targets are windows, not one label per sample
        return dataset.data, dataset.targets
    if isinstance(dataset, _TensorBacked) and dataset.transform is None:
        labels = _label_tensor(dataset.targets, any_rank=True)
        if labels is None or not _fits(dataset.data[0], n, max_bytes):
            return None
        return dataset.data, labels
    try:
        fast = _batched(dataset, n, max_bytes)
        if fast is not None:
            return fast
        return _iterate(dataset, n, max_bytes)
    except DataError:
        raise
    except Exception as exc:  # a transform failing on the data is the user's to fix
        raise DataError(
            f"dataset `{_dataset_label(dataset)}`: preparing the samples failed: "
            f"{type(exc).__name__}: {exc}",
            location,
            hint="check that the transforms fit the data (e.g. Normalize needs one mean/std "
            "per channel, and ToTensor must come before tensor-only transforms)",
        ) from exc


def _as_label(y: Any) -> int | None:
    if isinstance(y, bool):
        return None
    if isinstance(y, (int, np.integer)):
        return int(y)
    if isinstance(y, torch.Tensor) and y.numel() == 1 and not y.is_floating_point():
        return int(y)
    return None


def _iterate(dataset, n: int, max_bytes: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    first = dataset[0]
    if not (isinstance(first, Sequence) and len(first) == 2):
        return None
    x0, y0 = first
    if not isinstance(x0, torch.Tensor) or _as_label(y0) is None:
        return None
    x0 = _plain(x0)
    if not _fits(x0, n, max_bytes):
        return None  # estimated from the first sample, before stacking anything
    inputs = torch.empty((n, *x0.shape), dtype=x0.dtype)
    labels = torch.empty(n, dtype=torch.int64)
    inputs[0], labels[0] = x0, _as_label(y0)
    for i in range(1, n):
        x, y = dataset[i]
        label = _as_label(y)
        if (
            not isinstance(x, torch.Tensor)
            or x.shape != x0.shape
            or x.dtype != x0.dtype
            or label is None
        ):
            return None
        inputs[i], labels[i] = _plain(x), label
    return inputs, labels


def check_labels(
    labels, num_classes: int, *, dataset_name: str, location: Location | None = None
) -> None:
    """Raise a DataError naming the first label outside ``[0, num_classes)``."""
    t = torch.as_tensor(labels)
    if t.is_floating_point() or t.is_complex():
        raise DataError(
            f"dataset `{dataset_name}` has non-integer labels ({t.dtype}); classification "
            "needs integer class indices",
            location,
            hint="store the labels as integers 0..num_classes-1",
        )
    t = t.reshape(-1)
    bad = ((t < 0) | (t >= num_classes)).nonzero()
    if len(bad):
        i = int(bad[0])
        raise DataError(
            f"dataset `{dataset_name}` has label {int(t[i])} at index {i}, but the model "
            f"has {num_classes} classes (labels must be in [0, {num_classes}))",
            location,
            hint=f"give the model's last layer as many outputs as the dataset has classes "
            f"(at least {int(t.max()) + 1}), or fix the labels",
        )
