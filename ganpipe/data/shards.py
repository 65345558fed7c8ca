"""Prepared images as a few large uint8 NCHW `.npy` shards per split, written in order, read memory-mapped.

A few large files rather than one per image: DVC hashes and transfers them fast (treeverse/dvc#7607),
and `np.load(mmap_mode="r")` reads only what a batch touches. Memory while writing is one shard.

Pages of a memory map that a process has read count in its resident memory until it unmaps them, so
a pass over a 2.4 GB split would leave the reader 2.4 GB "resident" (the pages are the kernel's page
cache, but cgroup and OOM accounting see them). `ShardedImages` hands them back (madvise DONTNEED) every
`RELEASE_BYTES` of reads: a reader's memory stays bounded by what it holds, whatever the split's size.
"""

from __future__ import annotations

import hashlib
import mmap
from pathlib import Path

import numpy as np

from ganpipe.core.errors import DataError


def shard_name(split: str, k: int) -> str:
    return f"{split}-{k:05d}.npy"


class ShardWriter:
    """Appends uint8 [C, R, R] images of one split; every `shard_size` images become one `.npy` file.
    Keeps a running sha256 of the images in order (the content hash never needs the whole split)."""

    def __init__(self, out_dir: Path, split: str, shard_size: int, shape: tuple[int, int, int]):
        self.out_dir, self.split, self.shard_size = Path(out_dir), split, shard_size
        self.buf = np.empty((shard_size, *shape), dtype=np.uint8)
        self.n_buf, self.labels, self.files = 0, [], []
        self.sha = hashlib.sha256()

    def add(self, image: np.ndarray, label: int) -> None:
        self.buf[self.n_buf] = image
        self.n_buf += 1
        self.labels.append(int(label))
        if self.n_buf == self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self.n_buf:
            return
        block = self.buf[: self.n_buf]
        self.sha.update(block.tobytes())
        name = shard_name(self.split, len(self.files))
        np.save(self.out_dir / name, block, allow_pickle=False)
        self.files.append({"file": name, "images": int(self.n_buf)})
        self.n_buf = 0

    def close(self) -> dict:
        """Write the last shard and the labels; returns {files, images, labels_file, sha256, per_label}."""
        self._flush()
        labels = np.asarray(self.labels, dtype=np.int64)
        np.save(self.out_dir / f"{self.split}-labels.npy", labels, allow_pickle=False)
        self.sha.update(labels.tobytes())
        values, counts = np.unique(labels, return_counts=True)
        return {
            "files": self.files,
            "images": len(labels),
            "labels_file": f"{self.split}-labels.npy",
            "sha256": self.sha.hexdigest(),
            "per_label": {int(v): int(n) for v, n in zip(values, counts)},
        }


RELEASE_BYTES = 64 << 20  # mapped pages read between two releases
# What reading one image may map: a fault maps the page cache's folio around it, up to 2 MiB (measured
# here: 1.36 MB more resident per random 12 KB image, ext4 with 8 MB readahead). Releasing costs 50 us.
FAULT_BYTES = 2 << 20


class ShardedImages:
    """The images of one split across its shards, as one read-only array-like: len, shape, dtype,
    integer / slice / index-array access, and np.asarray (which reads everything). Pickled (to a
    DataLoader worker started by spawn or forkserver) it sends its file paths and maps them again."""

    def __init__(self, shards: list[np.ndarray], paths: list[Path] | None = None):
        self.shards, self.paths = shards, paths
        self.mapped_bytes = 0  # read through the maps since their pages were last handed back
        sizes = [len(s) for s in shards]
        self.starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
        first = shards[0] if shards else np.empty((0, 1, 1, 1), np.uint8)
        self.shape = (int(self.starts[-1]), *first.shape[1:])
        self.dtype = first.dtype
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index):
        if isinstance(index, (int, np.integer)):
            i = int(index) + (len(self) if index < 0 else 0)
            if not 0 <= i < len(self):
                raise IndexError(f"image {index} of {len(self)}")
            k = int(np.searchsorted(self.starts, i, side="right") - 1)
            out = np.array(self.shards[k][i - self.starts[k]])
            self._read(1)
            return out
        idx = np.arange(len(self))[index] if isinstance(index, slice) else np.asarray(index)
        if idx.dtype == bool:
            idx = np.flatnonzero(idx)
        out = np.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        k = np.searchsorted(self.starts, idx, side="right") - 1
        for shard in np.unique(k):  # one gather per shard touched
            sel = k == shard
            out[sel] = self.shards[shard][idx[sel] - self.starts[shard]]
            self._read(int(sel.sum()))
        return out

    def __array__(self, dtype=None, copy=None):
        out = self[np.arange(len(self))]
        return out if dtype is None else out.astype(dtype)

    def _read(self, num_images: int) -> None:
        image_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self.mapped_bytes += num_images * max(image_bytes, FAULT_BYTES)
        if self.mapped_bytes >= RELEASE_BYTES:
            self.release()

    def release(self) -> None:
        """Unmap the pages read so far from this process (the data stays in the page cache)."""
        for s in self.shards:
            m = getattr(s, "_mmap", None)  # np.memmap's map; None for arrays in memory
            if m is not None and hasattr(m, "madvise"):
                m.madvise(mmap.MADV_DONTNEED)
        self.mapped_bytes = 0

    def __getstate__(self) -> dict:
        if self.paths is None:
            return self.__dict__
        return {**self.__dict__, "shards": None}  # a memory map pickles as a full copy of its data

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        if self.shards is None:
            self.shards = [np.load(p, mmap_mode="r", allow_pickle=False) for p in self.paths]
            self.mapped_bytes = 0


class Picked:
    """The images at `idx` of a split (or any array) as an array-like (len, shape, slicing) that reads
    them only when indexed, a batch at a time: feature extraction over a subset holds one batch."""

    def __init__(self, images: ShardedImages | np.ndarray, idx: np.ndarray):
        self.images, self.idx = images, np.asarray(idx)
        self.shape, self.dtype = (len(idx), *images.shape[1:]), images.dtype

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, index) -> np.ndarray:
        return self.images[self.idx[index]]

    def __array__(self, dtype=None, copy=None):
        out = self.images[self.idx]
        return out if dtype is None else out.astype(dtype)


def open_split(prepared_dir: Path, info: dict) -> tuple[ShardedImages, np.ndarray]:
    """Memory-map the shards listed in a manifest's split entry; check they agree with it."""
    d = Path(prepared_dir)
    paths = [d / f["file"] for f in info["files"]]
    try:
        shards = [np.load(p, mmap_mode="r", allow_pickle=False) for p in paths]
        labels = np.load(d / info["labels_file"], allow_pickle=False)
    except FileNotFoundError as exc:
        raise DataError(f"{exc.filename}: not found; re-run `ganpipe prepare`") from None
    bad = [
        f["file"] for f, s in zip(info["files"], shards) if s.dtype != np.uint8 or s.ndim != 4 or len(s) != f["images"]
    ]
    if bad or len(labels) != info["images"] or sum(len(s) for s in shards) != info["images"]:
        raise DataError(f"{d}: shards {bad or ''} disagree with the manifest; re-run `ganpipe prepare`")
    return ShardedImages(shards, paths), labels
