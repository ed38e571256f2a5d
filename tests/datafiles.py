"""Writers of small dataset files in the real on-disk formats torchvision reads.

Only numpy/pickle/struct are used (no torchvision writers), so a test that loads these
files through torchvision checks the real reading code. Images are class-dependent
patterns plus a little noise (labels cycle 0..9), so a tiny model can learn them.
"""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import ClassVar

import numpy as np

CIFAR10_LABEL_NAMES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
MNIST_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


# --------------------------------------------------------------------------- pickling


class _Py2Str(bytes):
    """A Python 2 ``str``: the type of every key and name in the original CIFAR pickles."""


class _Py2Pickler(pickle._Pickler):
    """Writes ``_Py2Str`` with the Python 2 string opcode, as cPickle did for CIFAR.

    Loaded with ``encoding="latin1"`` (what torchvision does) these become ``str``;
    with ``encoding="bytes"`` (the classic CIFAR tutorial) they become ``bytes``.
    """

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2str(self, obj: _Py2Str) -> None:
        data = bytes(obj)
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[_Py2Str] = _save_py2str


def _py2_pickle(obj: object) -> bytes:
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump(obj)
    return buf.getvalue()


# --------------------------------------------------------------------------- images


def cifar_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 [n, 32, 32, 3] HWC images: a class colour and class-dependent stripes."""
    rng = np.random.default_rng(seed)
    n = len(labels)
    yy, xx = np.mgrid[0:32, 0:32]
    images = np.empty((n, 32, 32, 3), dtype=np.float32)
    for i, c in enumerate(labels):
        c = int(c)
        colour = np.array([(c * 70) % 256, (c * 130 + 60) % 256, (c * 40 + 200) % 256])
        period = 2 + c  # stripes: horizontal for even classes, vertical for odd ones
        coord = yy if c % 2 == 0 else xx
        stripes = ((coord // period) % 2).astype(np.float32)[..., None]
        images[i] = 0.35 * colour + 0.65 * colour * stripes
    images += rng.normal(0.0, 8.0, size=images.shape)
    return np.clip(images, 0, 255).astype(np.uint8)


def mnist_images(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """uint8 [n, 28, 28] images: a bright 8x8 block whose position encodes the class."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 30, size=(len(labels), 28, 28)).astype(np.uint8)
    for i, c in enumerate(labels):
        r, col = 2 + 12 * (int(c) // 5), 2 + 4 * (int(c) % 5)
        images[i, r : r + 8, col : col + 8] = 220
    return images


def cycling_labels(n: int) -> np.ndarray:
    return np.arange(n, dtype=np.int64) % 10


# --------------------------------------------------------------------------- writers


def write_cifar10(
    root: str | Path, n_train: int = 50, n_test: int = 20, seed: int = 0
) -> dict[str, np.ndarray]:
    """Write ``root/cifar-10-batches-py`` as the real pickled batches.

    Each batch is a dict with ``data`` (uint8 [n, 3072]: the R, G and B 32x32 planes,
    row-major), ``labels`` (list of int), ``batch_label`` and ``filenames``;
    ``batches.meta`` holds ``label_names``. Keys are Python 2 strings as in the
    original files. ``n_train`` is split over the 5 training batches. Returns the HWC
    images and labels written: {"train_images", "train_labels", "test_images",
    "test_labels"}.
    """
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train_labels, test_labels = cycling_labels(n_train), cycling_labels(n_test)
    train_images = cifar_images(train_labels, seed)
    test_images = cifar_images(test_labels, seed + 1)

    def batch(images: np.ndarray, labels: np.ndarray, label: str, offset: int) -> dict:
        planes = images.transpose(0, 3, 1, 2).reshape(len(images), 3072)  # CHW, row-major
        return {
            _Py2Str(b"batch_label"): _Py2Str(label.encode()),
            _Py2Str(b"labels"): [int(v) for v in labels],
            _Py2Str(b"data"): np.ascontiguousarray(planes, dtype=np.uint8),
            _Py2Str(b"filenames"): [
                _Py2Str(f"img_{offset + i:05d}.png".encode()) for i in range(len(labels))
            ],
        }

    bounds = np.linspace(0, n_train, 6).astype(int)
    for k in range(5):
        lo, hi = bounds[k], bounds[k + 1]
        data = batch(train_images[lo:hi], train_labels[lo:hi], f"training batch {k + 1} of 5", lo)
        (folder / f"data_batch_{k + 1}").write_bytes(_py2_pickle(data))
    test = batch(test_images, test_labels, "testing batch 1 of 1", 0)
    (folder / "test_batch").write_bytes(_py2_pickle(test))
    meta = {
        _Py2Str(b"num_cases_per_batch"): int(bounds[1] - bounds[0]),
        _Py2Str(b"label_names"): [_Py2Str(s.encode()) for s in CIFAR10_LABEL_NAMES],
        _Py2Str(b"num_vis"): 3072,
    }
    (folder / "batches.meta").write_bytes(_py2_pickle(meta))
    return {
        "train_images": train_images,
        "train_labels": train_labels,
        "test_images": test_images,
        "test_labels": test_labels,
    }


def _idx(array: np.ndarray) -> bytes:
    """The idx format: 0, 0, type 0x08 (uint8), ndim; big-endian dims; the raw bytes."""
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(
    root: str | Path, n_train: int, n_test: int, seed: int = 0, cls_name: str = "MNIST"
) -> dict[str, np.ndarray]:
    """Write ``root/<cls_name>/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte``.

    These uncompressed idx files (magic 2051 for images, 2049 for labels) are exactly what
    torchvision's MNIST/FashionMNIST/KMNIST read. Returns the images and labels written.
    """
    raw = Path(root) / cls_name / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n, s in (("train", n_train, seed), ("t10k", n_test, seed + 1)):
        labels = cycling_labels(n)
        images = mnist_images(labels, s)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(_idx(images))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(_idx(labels.astype(np.uint8)))
        key = "train" if split == "train" else "test"
        out[f"{key}_images"], out[f"{key}_labels"] = images, labels
    return out


def tensor_arrays(n: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n, 4] inputs whose first feature is the label, and int64 labels 0..9."""
    rng = np.random.default_rng(seed)
    y = cycling_labels(n)
    x = rng.normal(0.0, 0.1, size=(n, 4)).astype(np.float32)
    x[:, 0] += y
    return x, y


def write_tensor_files(directory: str | Path, n: int = 40, seed: int = 0) -> dict[str, Path]:
    """Write ``data.pt``, ``data.npz`` and ``data.safetensors`` holding the same x/y.

    Returns the paths keyed by suffix ("pt", "npz", "safetensors").
    """
    import torch
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    x, y = tensor_arrays(n, seed)
    paths = {
        "pt": directory / "data.pt",
        "npz": directory / "data.npz",
        "safetensors": directory / "data.safetensors",
    }
    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, paths["pt"])
    np.savez(paths["npz"], x=x, y=y)
    save_file({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, str(paths["safetensors"]))
    return paths


# --------------------------------------------------------------------------- tokens


def token_windows(n: int = 200, context: int = 8, vocab: int = 16, seed: int = 0):
    """int64 windows x [n, context] of a token stream whose next token follows from the
    current one ((5t + 3) mod vocab, so a bigram model learns it), and their next-token
    targets y; every fourth window's last target is -1 (padding a loss may ignore)."""
    import torch

    rng = np.random.default_rng(seed)
    start = torch.from_numpy(rng.integers(0, vocab, n))
    steps = [start]
    for _ in range(context):
        steps.append((5 * steps[-1] + 3) % vocab)
    stream = torch.stack(steps, dim=1)
    x, y = stream[:, :-1].clone(), stream[:, 1:].clone()
    y[::4, -1] = -1
    return x, y


def write_token_windows(directory: str | Path, name: str = "tokens.pt", **kwargs) -> Path:
    """`token_windows` saved as {"x": ..., "y": ...} for `TensorFile`."""
    import torch

    x, y = token_windows(**kwargs)
    path = Path(directory) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"x": x, "y": y}, path)
    return path
