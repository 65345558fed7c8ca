"""ganpipe.tvdata: tiny fixtures in each dataset's real on-disk format, read through torchvision's classes.

Nothing downloads. CIFAR and STL-10 are md5-checked by torchvision on every load; the tests re-point the
classes' checksum tables at the fixtures (monkeypatch) so the real check runs against the fixtures' sums.
"""

from __future__ import annotations

import hashlib
import pickle
import urllib.error
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from torchvision import datasets as tvd

from ganpipe.core.errors import ConfigError, DataError
from ganpipe.data.tvdata import DATASETS, LICENCES, load

N_TRAIN, N_TEST = 6, 4
PLANT = (1, 3, 250)  # row, column, value planted in train image 0: off the diagonal, so a transpose shows
MNIST_NAMES = [
    f"{i} - {w}" for i, w in enumerate(["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"])
]
FASHION_NAMES = [
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
]
CIFAR10_NAMES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
CIFAR100_NAMES = [f"fine_{i}" for i in range(100)]  # the real names are not needed to test the reading
STL10_NAMES = ["airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship", "truck"]
SHAPES = {
    "mnist": (28, 28, 1),
    "fashion_mnist": (28, 28, 1),
    "cifar10": (32, 32, 3),
    "cifar100": (32, 32, 3),
    "stl10": (96, 96, 3),
}


def _md5(path: Path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(shape: tuple[int, int, int], n: int, seed: int) -> np.ndarray:
    # Values below the planted one, so the planted pixel is unique in the image.
    x = np.random.default_rng(seed).integers(0, 200, size=(n, *shape), dtype=np.uint8)
    x[0, PLANT[0], PLANT[1], :] = PLANT[2]
    return x


def _write_idx(path: Path, array: np.ndarray) -> None:
    # idx format: 0, 0, type (8 = uint8), number of dims, then big-endian int32 sizes, then the data.
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, split: dict) -> None:
    # torchvision 0.29 reads the extracted files (no .gz) from <root>/<ClassName>/raw.
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    for prefix, (x, y) in (("train", split["train"]), ("t10k", split["test"])):
        _write_idx(raw / f"{prefix}-images-idx3-ubyte", x[..., 0])
        _write_idx(raw / f"{prefix}-labels-idx1-ubyte", y)


def _pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)  # the originals are Python 2 cPickle files, protocol 2


def _cifar_rows(x: np.ndarray) -> np.ndarray:
    # Each row: 1024 red values, then green, then blue, each channel row-major.
    return x.transpose(0, 3, 1, 2).reshape(len(x), -1)


def _write_cifar10(root: Path, split: dict, monkeypatch) -> None:
    base = root / "cifar-10-batches-py"
    base.mkdir()
    (x, y), bounds = split["train"], [0, 2, 3, 4, 5, 6]  # 6 images over the 5 training batches
    for i in range(5):
        lo, hi = bounds[i], bounds[i + 1]
        batch = {
            "batch_label": f"training batch {i + 1} of 5",
            "labels": y[lo:hi].tolist(),
            "data": _cifar_rows(x[lo:hi]),
            "filenames": [f"{j}.png" for j in range(lo, hi)],
        }
        _pickle(base / f"data_batch_{i + 1}", batch)
    x, y = split["test"]
    _pickle(
        base / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "labels": y.tolist(),
            "data": _cifar_rows(x),
            "filenames": [f"{j}.png" for j in range(len(x))],
        },
    )
    _pickle(base / "batches.meta", {"num_cases_per_batch": 10000, "label_names": CIFAR10_NAMES, "num_vis": 3072})
    cls = tvd.CIFAR10
    monkeypatch.setattr(cls, "train_list", [[f, _md5(base / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(base / f)] for f, _ in cls.test_list])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(base / "batches.meta")})


def _write_cifar100(root: Path, split: dict, monkeypatch) -> None:
    base = root / "cifar-100-python"
    base.mkdir()
    for file, (x, y) in (("train", split["train"]), ("test", split["test"])):
        _pickle(
            base / file,
            {
                "filenames": [f"{j}.png" for j in range(len(x))],
                "batch_label": f"{file} batch 1 of 1",
                "fine_labels": y.tolist(),
                "coarse_labels": (y // 5).tolist(),
                "data": _cifar_rows(x),
            },
        )
    _pickle(base / "meta", {"fine_label_names": CIFAR100_NAMES, "coarse_label_names": [f"c{i}" for i in range(20)]})
    cls = tvd.CIFAR100
    monkeypatch.setattr(cls, "train_list", [["train", _md5(base / "train")]])
    monkeypatch.setattr(cls, "test_list", [["test", _md5(base / "test")]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": _md5(base / "meta")})


def _write_stl10(root: Path, split: dict, monkeypatch) -> None:
    base = root / "stl10_binary"
    base.mkdir()
    for prefix, (x, y) in (("train", split["train"]), ("test", split["test"])):
        # Column-major, one channel at a time: per image C, then column, then row.
        (base / f"{prefix}_X.bin").write_bytes(x.transpose(0, 3, 2, 1).tobytes())
        (base / f"{prefix}_y.bin").write_bytes((y + 1).astype(np.uint8).tobytes())  # labels are 1-based on disk
    # torchvision checksums unlabeled_X.bin even when only train/test are read.
    (base / "unlabeled_X.bin").write_bytes(np.zeros((1, 3, 96, 96), np.uint8).tobytes())
    (base / "class_names.txt").write_text("\n".join(STL10_NAMES) + "\n")
    cls = tvd.STL10
    monkeypatch.setattr(cls, "train_list", [[f, _md5(base / f)] for f, _ in cls.train_list])
    monkeypatch.setattr(cls, "test_list", [[f, _md5(base / f)] for f, _ in cls.test_list])


def _fixture(name: str, root: Path, monkeypatch) -> dict:
    """Write tiny train/test files for `name` under root; return the arrays they must read back as."""
    shape, num_classes = SHAPES[name], 100 if name == "cifar100" else 10
    rng = np.random.default_rng(1)
    split = {
        "train": (_images(shape, N_TRAIN, 2), rng.integers(0, num_classes, N_TRAIN)),
        "test": (_images(shape, N_TEST, 3), rng.integers(0, num_classes, N_TEST)),
    }
    split["train"][1][:2] = [0, num_classes - 1]  # both ends of the label range (STL-10's 1-based shift)
    if name in ("mnist", "fashion_mnist"):
        _write_mnist(root, {"mnist": "MNIST", "fashion_mnist": "FashionMNIST"}[name], split)
    else:
        {"cifar10": _write_cifar10, "cifar100": _write_cifar100, "stl10": _write_stl10}[name](root, split, monkeypatch)
    return split


@pytest.mark.parametrize("name", DATASETS)
def test_load_reads_real_format(name, tmp_path, monkeypatch):
    expected = _fixture(name, tmp_path, monkeypatch)
    ds = load(name, tmp_path, download=False)
    assert ds.name == name and ds.licence == LICENCES[name]
    for split, (x, y) in (("train", ds.train), ("test", ds.test)):
        n = N_TRAIN if split == "train" else N_TEST
        assert x.shape == (n, *SHAPES[name]) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        np.testing.assert_array_equal(x, expected[split][0])
        np.testing.assert_array_equal(y, expected[split][1])
    # Upright: the planted pixel sits at (row, column), not at its transpose.
    row, col, value = PLANT
    assert (ds.train[0][0, row, col] == value).all() and (ds.train[0][0, col, row] != value).all()
    names = {
        "mnist": MNIST_NAMES,
        "fashion_mnist": FASHION_NAMES,
        "cifar10": CIFAR10_NAMES,
        "cifar100": CIFAR100_NAMES,
        "stl10": STL10_NAMES,
    }[name]
    assert ds.class_names == names


def test_unknown_name_is_config_error(tmp_path):
    with pytest.raises(ConfigError, match="valid names: mnist, fashion_mnist, cifar10, cifar100, stl10"):
        load("imagenet", tmp_path, download=False)


@pytest.mark.parametrize("name", DATASETS)
def test_missing_files_is_data_error_naming_root(name, tmp_path):
    with pytest.raises(DataError, match="machine with internet") as info:
        load(name, tmp_path, download=False)
    assert str(tmp_path) in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "stl10"])
def test_file_failing_its_checksum_is_data_error(name, tmp_path, monkeypatch):
    _fixture(name, tmp_path, monkeypatch)
    folder = {
        "cifar10": "cifar-10-batches-py/test_batch",
        "cifar100": "cifar-100-python/test",
        "stl10": "stl10_binary/test_y.bin",
    }[name]
    path = tmp_path / folder
    data = path.read_bytes()
    path.write_bytes(data[:-1] + bytes([data[-1] ^ 0xFF]))  # same size, one byte changed
    with pytest.raises(DataError, match="corrupted"):
        load(name, tmp_path, download=False)


@pytest.mark.parametrize("name", ["mnist", "cifar10", "stl10"])
def test_download_without_network_is_data_error(name, tmp_path, monkeypatch):
    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(urllib.request, "urlopen", offline)  # every torchvision download goes through it
    with pytest.raises(DataError, match="machine with internet") as info:
        load(name, tmp_path / "cache", download=True)
    assert str(tmp_path / "cache") in str(info.value) and "\n" not in str(info.value)


def test_torchvision_real_checksums_reject_fixtures(tmp_path, monkeypatch):
    # Without the tests' re-pointed tables, torchvision's own sums apply and the fixtures fail them:
    # production has no path that skips the check.
    _fixture("cifar10", tmp_path, monkeypatch)
    monkeypatch.undo()
    with pytest.raises(DataError, match="corrupted"):
        load("cifar10", tmp_path, download=False)


@pytest.mark.parametrize("name", DATASETS)
def test_download_keeps_verified_files(name, tmp_path, monkeypatch):
    expected = _fixture(name, tmp_path, monkeypatch)

    def offline(*args, **kwargs):
        raise AssertionError("tried to download files that were already there")

    monkeypatch.setattr(urllib.request, "urlopen", offline)
    np.testing.assert_array_equal(load(name, tmp_path, download=True).test[0], expected["test"][0])


def test_stl10_is_verified_after_a_download(tmp_path, monkeypatch):
    # torchvision's STL10(download=True) ignores its own post-download check; load must still catch bad files.
    _fixture("stl10", tmp_path, monkeypatch)
    path = tmp_path / "stl10_binary" / "test_y.bin"
    path.write_bytes(bytes([1]) * len(path.read_bytes()))  # valid labels, wrong checksum
    monkeypatch.setattr(tvd.stl10, "download_and_extract_archive", lambda *args, **kwargs: None)  # a "download"
    with pytest.raises(DataError, match="corrupted"):
        load("stl10", tmp_path, download=True)


def test_stl10_without_class_names_is_data_error(tmp_path, monkeypatch):
    _fixture("stl10", tmp_path, monkeypatch)
    (tmp_path / "stl10_binary" / "class_names.txt").unlink()  # not checksummed, so torchvision does not notice
    with pytest.raises(DataError, match="class_names.txt"):
        load("stl10", tmp_path, download=False)
