"""The dataset/transform stage: real-format files in, tensors or located DataErrors out."""

from __future__ import annotations

import os
import urllib.error
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from datafiles import CIFAR10_LABEL_NAMES, write_cifar10, write_mnist, write_tensor_files

from specc.errors import DataError, Location
from specc.training.data import (
    check_labels,
    is_random_transform,
    make_dataset,
    make_transform,
    materialize,
    split_transforms,
)

MEAN, STD = [0.5, 0.4, 0.3], [0.25, 0.2, 0.5]
TO_TENSOR_NORMALIZE = [("ToTensor", [], {}), ("Normalize", [], {"mean": MEAN, "std": STD})]
LOC = Location("spec.model", 3, 5)


@pytest.fixture(scope="module")
def cifar(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("cifar")
    return root, write_cifar10(root, n_train=25, n_test=10)


@pytest.fixture(scope="module")
def mnist(tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("mnist")
    return root, write_mnist(root, n_train=30, n_test=12)


def expected_cifar(images: np.ndarray) -> torch.Tensor:
    """What ToTensor + Normalize(MEAN, STD) must give for written HWC uint8 images."""
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    return (x - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]


# --------------------------------------------------------------------------- CIFAR10


def test_cifar10_loads_real_format_with_verify_false(cifar):
    root, written = cifar
    ds = make_dataset(
        "CIFAR10", [str(root)], {"verify": False}, transform=make_transform(TO_TENSOR_NORMALIZE)
    )
    assert len(ds) == 25
    assert ds.classes == CIFAR10_LABEL_NAMES
    x, y = ds[7]
    assert isinstance(x, torch.Tensor) and x.shape == (3, 32, 32) and x.dtype == torch.float32
    assert isinstance(y, int) and y == written["train_labels"][7] == 7
    torch.testing.assert_close(x, expected_cifar(written["train_images"][7:8])[0])

    test = make_dataset("CIFAR10", [str(root)], {"train": False, "verify": False})
    assert len(test) == 10
    assert np.array_equal(np.asarray(test[3][0]), written["test_images"][3])  # a PIL image


def test_cifar10_checksum_mismatch_suggests_verify_false(cifar):
    root, _ = cifar
    with pytest.raises(DataError) as err:
        make_dataset("CIFAR10", [str(root)], {}, location=LOC)
    assert "verify=False" in err.value.render()
    assert str(root / "cifar-10-batches-py") in err.value.message
    assert err.value.location == LOC


def test_cifar10_missing_root_names_the_resolved_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError) as err:
        make_dataset("CIFAR10", ["nowhere"], {"train": False})
    text = err.value.render()
    assert str(tmp_path / "nowhere" / "cifar-10-batches-py") in text
    assert "download=True" in text


def test_cifar10_corrupt_file_is_a_data_error(tmp_path):
    write_cifar10(tmp_path, n_train=5, n_test=5)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    batch.write_bytes(batch.read_bytes()[:40])
    with pytest.raises(DataError) as err:
        make_dataset("CIFAR10", [str(tmp_path)], {"verify": False})
    assert "CIFAR10" in err.value.message and str(tmp_path) in err.value.message


def test_cifar10_download_without_network_says_so(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DataError) as err:
        make_dataset("CIFAR10", [str(tmp_path)], {"download": True})
    assert "network" in err.value.message
    assert str(tmp_path) in err.value.message


# --------------------------------------------------------------------------- MNIST family


@pytest.mark.parametrize("verify", [True, False])
def test_mnist_loads_real_format(mnist, verify):
    # torchvision checks only that the raw MNIST files exist, so verify makes no difference.
    root, written = mnist
    ds = make_dataset(
        "MNIST", [str(root)], {"verify": verify}, transform=make_transform([("ToTensor", [], {})])
    )
    assert len(ds) == 30
    x, y = ds[4]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert y == 4
    torch.testing.assert_close(x[0], torch.from_numpy(written["train_images"][4]).float() / 255)
    assert len(make_dataset("MNIST", [str(root)], {"train": False})) == 12


def test_mnist_missing_names_the_raw_folder(tmp_path):
    with pytest.raises(DataError) as err:
        make_dataset("FashionMNIST", [str(tmp_path)], {"download": False})
    text = err.value.render()
    assert str(tmp_path / "FashionMNIST" / "raw") in text
    assert "train-images-idx3-ubyte" in text and "download=True" in text


def test_kmnist_reads_its_own_folder(tmp_path):
    write_mnist(tmp_path, n_train=10, n_test=10, cls_name="KMNIST")
    assert len(make_dataset("KMNIST", [str(tmp_path)], {})) == 10


# --------------------------------------------------------------------------- Digits


def test_digits_split_sizes_range_and_determinism():
    train = make_dataset("Digits", [], {})
    test = make_dataset("Digits", [], {"train": False})
    assert (len(train), len(test)) == (1437, 360)
    x, y = train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32
    assert y.dtype == torch.int64
    images = torch.stack([train[i][0] for i in range(len(train))])
    assert images.min() >= 0 and images.max() <= 1 and images.max() == 1

    again = make_dataset("Digits", [True], {})
    assert all(torch.equal(train[i][0], again[i][0]) for i in (0, 100, 1436))
    train_rows = {train[i][0].numpy().tobytes() for i in range(len(train))}
    test_rows = {test[i][0].numpy().tobytes() for i in range(len(test))}
    assert not train_rows & test_rows
    # Stratified: every class keeps its share (about 36 of each in the test split).
    counts = torch.bincount(torch.stack([test[i][1] for i in range(len(test))]))
    assert counts.min() >= 35 and counts.max() <= 37


def test_digits_applies_transform_and_rejects_bad_arguments():
    ds = make_dataset(
        "Digits",
        [],
        {},
        transform=make_transform([("Normalize", [], {"mean": [0.5], "std": [0.5]})]),
    )
    assert ds[0][0].min() >= -1 and ds[0][0].min() < 0
    with pytest.raises(DataError, match="Digits"):
        make_dataset("Digits", [], {"split": "train"})


# --------------------------------------------------------------------------- TensorFile


@pytest.mark.parametrize("suffix", ["pt", "npz", "safetensors"])
def test_tensor_file_each_suffix(tmp_path, suffix):
    paths = write_tensor_files(tmp_path, n=40)
    ds = make_dataset("TensorFile", [str(paths[suffix])], {})
    assert len(ds) == 40
    x, y = ds[13]
    assert x.shape == (4,) and x.dtype == torch.float32
    assert y.dtype == torch.int64 and int(y) == 3
    inputs, labels = materialize(ds)
    assert inputs.shape == (40, 4) and labels.tolist() == [i % 10 for i in range(40)]


def test_tensor_file_pair_and_custom_keys(tmp_path):
    torch.save((torch.zeros(6, 2), torch.arange(6)), tmp_path / "pair.pt")
    assert len(make_dataset("TensorFile", [str(tmp_path / "pair.pt")], {})) == 6
    np.savez(tmp_path / "k.npz", images=np.ones((5, 3)), targets=np.arange(5))
    ds = make_dataset("TensorFile", [str(tmp_path / "k.npz")], {"x": "images", "y": "targets"})
    assert ds[0][0].dtype == torch.float32  # float64 arrays become float32


def test_tensor_file_errors(tmp_path):
    np.savez(tmp_path / "a.npz", inputs=np.ones((5, 3)), y=np.arange(5))
    with pytest.raises(DataError) as err:
        make_dataset("TensorFile", [str(tmp_path / "a.npz")], {}, location=LOC)
    assert "'x'" in err.value.message and "inputs" in err.value.message
    assert err.value.location == LOC

    np.savez(tmp_path / "b.npz", x=np.ones((5, 3)), y=np.arange(4))
    with pytest.raises(DataError, match="5 samples"):
        make_dataset("TensorFile", [str(tmp_path / "b.npz")], {})

    (tmp_path / "c.csv").write_text("1,2\n")
    with pytest.raises(DataError, match=r"\.csv"):
        make_dataset("TensorFile", [str(tmp_path / "c.csv")], {})

    with pytest.raises(DataError) as err:
        make_dataset("TensorFile", [str(tmp_path / "none.pt")], {})
    assert str(tmp_path / "none.pt") in err.value.message

    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(DataError, match=r"junk\.safetensors"):
        make_dataset("TensorFile", [str(tmp_path / "junk.safetensors")], {})

    np.savez(tmp_path / "obj.npz", x=np.array([{"a": 1}], dtype=object), y=np.arange(1))
    with pytest.raises(DataError, match="refused"):
        make_dataset("TensorFile", [str(tmp_path / "obj.npz")], {})


class _Payload:
    """Unpickling this runs a shell command: the kind of file weights_only must refuse."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


def test_hostile_pt_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    torch.save({"x": _Payload(marker), "y": torch.arange(3)}, tmp_path / "evil.pt")
    with pytest.raises(DataError) as err:
        make_dataset("TensorFile", [str(tmp_path / "evil.pt")], {})
    assert "refused" in err.value.message and "evil.pt" in err.value.message
    assert not marker.exists()

    # The payload is real: an unrestricted load would have run it.
    proof = tmp_path / "proof"
    torch.save({"x": _Payload(proof)}, tmp_path / "proof.pt")
    torch.load(tmp_path / "proof.pt", weights_only=False)
    assert proof.exists()


# --------------------------------------------------------------------------- names


def test_unknown_names_suggest_the_closest():
    with pytest.raises(DataError) as err:
        make_transform([("Normalise", [], {"mean": [0.5], "std": [0.5]})], location=LOC)
    assert "Normalise" in err.value.message and "Normalize" in err.value.hint
    assert err.value.location == LOC
    with pytest.raises(DataError) as err:
        make_dataset("FashionMnist", ["."], {})
    assert "FashionMNIST" in err.value.hint
    with pytest.raises(DataError) as err:
        make_dataset("digits", [], {})
    assert "Digits" in err.value.hint


def test_bad_transform_arguments_name_the_transform():
    with pytest.raises(DataError) as err:
        make_transform([("Normalize", [], {"mean": [0.5]})])
    assert "Normalize" in err.value.message and "std" in err.value.message


def test_verify_false_refused_where_unsupported(tmp_path):
    with pytest.raises(DataError, match="verify=False"):
        make_dataset("SVHN", [str(tmp_path)], {"verify": False})


# --------------------------------------------------------------------------- transforms


def test_to_tensor_matches_classic_without_warnings(cifar):
    from PIL import Image
    from torchvision.transforms import ToTensor as ClassicToTensor

    _, written = cifar
    image = Image.fromarray(written["train_images"][2])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = make_transform([("ToTensor", [], {})])(image)
    assert out.dtype == torch.float32 and out.shape == (3, 32, 32)
    # v2 scales by multiplying with 1/255, the classic one divides by 255: equal to 1 ulp.
    torch.testing.assert_close(out.as_subclass(torch.Tensor), ClassicToTensor()(image))
    assert make_transform([]) is None


def test_random_transforms_and_split():
    for name in (
        "RandomCrop",
        "RandomHorizontalFlip",
        "ColorJitter",
        "AutoAugment",
        "TrivialAugmentWide",
        "GaussianBlur",
    ):
        assert is_random_transform(name), name
    for name in ("ToTensor", "Normalize", "Resize", "CenterCrop", "ToImage"):
        assert not is_random_transform(name), name
    items = [
        ("ToTensor", [], {}),
        ("Normalize", [], {"mean": [0.5], "std": [0.5]}),
        ("RandomCrop", [8], {"padding": 1}),
        ("Resize", [8], {}),
    ]
    assert split_transforms(items) == (items[:2], items[2:])
    assert split_transforms(items[:2]) == (items[:2], [])
    assert split_transforms(items[2:]) == ([], items[2:])


# --------------------------------------------------------------------------- materialize


def test_materialize_digits():
    inputs, labels = materialize(make_dataset("Digits", [], {}))
    assert inputs.shape == (1437, 1, 8, 8) and inputs.dtype == torch.float32
    assert labels.shape == (1437,) and labels.dtype == torch.int64
    assert materialize(make_dataset("Digits", [], {}), max_bytes=1000) is None


def test_materialize_cifar_with_to_tensor_normalize(cifar):
    root, written = cifar
    ds = make_dataset(
        "CIFAR10", [str(root)], {"verify": False}, transform=make_transform(TO_TENSOR_NORMALIZE)
    )
    inputs, labels = materialize(ds)
    assert type(inputs) is torch.Tensor
    assert inputs.shape == (25, 3, 32, 32) and labels.dtype == torch.int64
    assert torch.equal(inputs, torch.stack([ds[i][0] for i in range(len(ds))]))
    assert labels.tolist() == written["train_labels"].tolist()
    torch.testing.assert_close(inputs, expected_cifar(written["train_images"]))


def test_materialize_mnist_and_pil_outputs(mnist, cifar):
    root, _ = mnist
    ds = make_dataset("MNIST", [str(root)], {}, transform=make_transform([("ToTensor", [], {})]))
    inputs, labels = materialize(ds)
    assert inputs.shape == (30, 1, 28, 28) and labels[:3].tolist() == [0, 1, 2]
    # Without ToTensor the samples are PIL images: no fast path.
    assert materialize(make_dataset("MNIST", [str(root)], {})) is None
    assert materialize(make_dataset("CIFAR10", [str(cifar[0])], {"verify": False})) is None


def test_materialize_with_other_deterministic_transform(cifar):
    # Resize is not batched; the per-sample route must still give the same stack.
    ds = make_dataset(
        "CIFAR10",
        [str(cifar[0])],
        {"verify": False, "train": False},
        transform=make_transform([("Resize", [16], {}), ("ToTensor", [], {})]),
    )
    inputs, _ = materialize(ds)
    assert inputs.shape == (10, 3, 16, 16)
    assert torch.equal(inputs[4], ds[4][0])


def test_materialize_reports_a_failing_transform(cifar):
    ds = make_dataset(
        "CIFAR10",
        [str(cifar[0])],
        {"verify": False, "train": False},
        transform=make_transform(
            [("ToTensor", [], {}), ("Normalize", [], {"mean": [0.5] * 4, "std": [0.5] * 4})]
        ),
    )
    with pytest.raises(DataError, match="CIFAR10"):
        materialize(ds, location=LOC)


# --------------------------------------------------------------------------- labels


def test_check_labels():
    check_labels(torch.tensor([0, 9, 3]), 10, dataset_name="CIFAR10")
    with pytest.raises(DataError) as err:
        check_labels(torch.tensor([0, 3, 10, 12]), 10, dataset_name="CIFAR10", location=LOC)
    assert "CIFAR10" in err.value.message and "index 2" in err.value.message
    assert "10" in err.value.message and err.value.location == LOC
    with pytest.raises(DataError, match="index 1"):
        check_labels([4, -1], 5, dataset_name="TensorFile")


def test_errors_do_not_leak_pickle_tracebacks(tmp_path):
    (tmp_path / "bad.pt").write_bytes(b"\x80\x02garbage")
    with pytest.raises(DataError) as err:
        make_dataset("TensorFile", [str(tmp_path / "bad.pt")], {})
    assert "bad.pt" in err.value.message
    assert isinstance(err.value.render(), str)


def test_unverified_cifar_pickles_for_worker_processes(cifar):
    import pickle

    ds = make_dataset("CIFAR10", [str(cifar[0])], {"verify": False})
    copy = pickle.loads(pickle.dumps(ds))
    assert len(copy) == len(ds) and type(copy).__name__ == "CIFAR10"


@pytest.mark.parametrize(
    "items",
    [
        [
            ("ToImage", [], {}),
            ("ToDtype", [], {"dtype": "float32", "scale": True}),
            ("Normalize", [], {"mean": MEAN, "std": STD}),
        ],
        [("ToImage", [], {})],
        [("ToImage", [], {}), ("ToDtype", [], {"dtype": "float64"})],
    ],
)
def test_materialize_whole_set_matches_each_sample(cifar, items):
    ds = make_dataset(
        "CIFAR10", [str(cifar[0])], {"verify": False}, transform=make_transform(items)
    )
    inputs, _ = materialize(ds)
    assert torch.equal(inputs, torch.stack([ds[i][0] for i in range(len(ds))]))
    before = ds.data.copy()
    inputs.zero_()  # the stack owns its memory: the dataset's arrays stay as they were
    assert np.array_equal(ds.data, before)
