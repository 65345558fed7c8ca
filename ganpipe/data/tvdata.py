"""Standard image datasets read through torchvision's own download-and-verify code, returned as uint8 arrays.

Integrity: there is deliberately no switch that skips verification. Every `load` opens the files with
torchvision's real classes and their real checksum tables, so CIFAR and STL-10 files are md5-checked on
each load and the MNISTs' archives are md5-checked when downloaded (torchvision only checks that the
extracted idx files exist). Tests point those tables at their own tiny fixture files with
`monkeypatch.setattr` instead: the real check still runs, against the fixtures' sums, and production
code has no path through which unverified files could pass.

CIFAR batches are Python pickles, which can run code when loaded. torchvision unpickles them only after
they have matched its known md5 sums, which is what makes reading them acceptable here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import get_args

import numpy as np
from torchvision import datasets as tvd

from ganpipe.core.errors import ConfigError, DataError
from ganpipe.core.params import TorchvisionDataset

DATASETS = get_args(TorchvisionDataset)

# As best known; none of these licences is stated in torchvision itself.
LICENCES = {
    "mnist": "CC BY-SA 3.0 (Yann LeCun and Corinna Cortes, per yann.lecun.com/exdb/mnist); derived from NIST",
    "fashion_mnist": "MIT (Zalando SE, github.com/zalandoresearch/fashion-mnist); cite Xiao, Rasul, Vollgraf 2017",
    "cifar10": "no licence stated; cite Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images",
    "cifar100": "no licence stated; cite Krizhevsky 2009, Learning Multiple Layers of Features from Tiny Images",
    "stl10": "no licence stated; cite Coates, Ng, Lee 2011, An Analysis of Single-Layer Networks in "
    "Unsupervised Feature Learning (AISTATS); images come from ImageNet",
}

# A registry of constructors (not a class looked up by string); each takes (root, train, download).
_OPENERS = {
    "mnist": lambda root, train, download: tvd.MNIST(root, train=train, download=download),
    "fashion_mnist": lambda root, train, download: tvd.FashionMNIST(root, train=train, download=download),
    "cifar10": lambda root, train, download: tvd.CIFAR10(root, train=train, download=download),
    "cifar100": lambda root, train, download: tvd.CIFAR100(root, train=train, download=download),
    # The official labelled splits; "unlabeled" has no labels and is not a test set.
    "stl10": lambda root, train, download: tvd.STL10(root, split="train" if train else "test", download=download),
}


@dataclass(frozen=True, eq=False)  # eq=False: comparing arrays field by field is ambiguous
class TorchvisionSet:
    """One dataset: images uint8 [N, H, W, C] (C=1 for the MNISTs, 3 otherwise), labels int64 [N]."""

    name: str
    licence: str
    class_names: list[str]
    train: tuple[np.ndarray, np.ndarray]
    test: tuple[np.ndarray, np.ndarray]


def _arrays(name: str, ds) -> tuple[np.ndarray, np.ndarray]:
    """Images HWC uint8 and labels int64 from the dataset's arrays; __getitem__ would build PIL images one by one."""
    if name in ("mnist", "fashion_mnist"):
        images, labels = ds.data.numpy()[..., None], ds.targets.numpy()
    elif name == "stl10":
        # torchvision already turned the column-major file into upright CHW; we want HWC.
        images, labels = ds.data.transpose(0, 2, 3, 1), ds.labels
    else:  # CIFAR: torchvision already reshaped the rows to HWC
        images, labels = ds.data, np.asarray(ds.targets)
    return np.ascontiguousarray(images, dtype=np.uint8), labels.astype(np.int64)


def _class_names(name: str, ds) -> list[str]:
    # STL-10 reads class_names.txt only if present (it is not checksummed); without it there are no names.
    names = getattr(ds, "classes", None)
    if not names:
        raise DataError(f"{name}: no class names found under {ds.root} (STL-10 needs stl10_binary/class_names.txt)")
    return list(names)


def load(name: str, root: Path, download: bool = True) -> TorchvisionSet:
    """Load the official train and test splits of `name` from `root`, downloading them there if asked.

    Raises ConfigError for an unknown name, DataError when the files are missing or fail their checksums
    and cannot be downloaded (e.g. no network).
    """
    if name not in DATASETS:
        raise ConfigError(f"unknown torchvision dataset {name!r}; valid names: {', '.join(DATASETS)}")
    root = Path(root)
    opener = _OPENERS[name]
    try:
        if download:
            # Fetches and md5-checks the archive; existing valid files are kept.
            opener(root, True, True)
        # Always reopen with download=False: then every class checks its files and raises if they are bad.
        # STL-10's download path ignores the result of its own post-download check, so this is what
        # guarantees a verified read after a download (at the cost of one more md5 pass).
        train_ds, test_ds = opener(root, True, False), opener(root, False, False)
    except (RuntimeError, OSError) as err:  # URLError is an OSError; torchvision raises RuntimeError
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise DataError(
            f"{name}: files missing or corrupted under {root} ({reason}); download them with "
            f"download=True on a machine with internet and copy {root} here"
        ) from err
    class_names = _class_names(name, train_ds)
    train, test = _arrays(name, train_ds), _arrays(name, test_ds)
    for split, (images, labels) in (("train", train), ("test", test)):
        # STL-10 stores labels 1-based and torchvision subtracts 1 in uint8: a 0 would wrap to 255.
        if len(images) != len(labels) or labels.min(initial=0) < 0 or labels.max(initial=0) >= len(class_names):
            raise DataError(
                f"{name}: {split} labels under {root} do not match {len(images)} images and {len(class_names)} classes"
            )
    return TorchvisionSet(name, LICENCES[name], class_names, train, test)
