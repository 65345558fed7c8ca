"""The `prepare` stage: a source dataset -> uint8 NCHW shards, labels, a fixed split and a manifest.

Output directory (a DVC output, written to a temp directory and renamed at the end, so an interrupted
prepare leaves the previous output intact):
    {split}-00000.npy ...  uint8 [n, C, R, R] shards of `data.shard_size` images (memory-mappable)
    {split}-labels.npy     int64 [N] (-1 when the source has no labels)
    manifest.json          source, licence, counts per split and class, resolution, channels, shards,
                           every skipped input with its reason, sha256 of the content

Bad inputs are skipped and listed (`data.on_error: skip`) or stop prepare at the first one (`fail`);
exact duplicates (same bytes) are dropped, the first in listing order kept, so no image is in both splits.

Archive members are read by the main process and carried to the workers in the tasks, so the bytes read
ahead are bounded in total (INFLIGHT_BYTES), not per task: 64 members of 255 MiB would otherwise be 16 GiB.
"""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import os
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from ganpipe.core.errors import DataError
from ganpipe.core.io import atomic_dir, read_json, write_json
from ganpipe.core.params import DataParams
from ganpipe.data.shards import ShardedImages, ShardWriter, open_split
from ganpipe.data.sources import Item, Listing, convert, list_source, payloads

SPLITS = ("train", "test")
MANIFEST = "manifest.json"
TASK_ITEMS = 64  # items per worker task: large enough to amortise IPC, small enough to stream
INLINE_BELOW = 512  # fewer items than this are converted in-process (a pool costs ~1 s to start)
INFLIGHT_BYTES = 512 * 2**20  # archive bytes handed to the workers and not yet converted, all tasks together


def split_indices(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray, bool]:
    """Deterministic split (train, test, stratified): the same labels, fraction and seed give the same
    indices; stratified by label when every class has at least two items."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    counts = np.unique(labels, return_counts=True)[1]
    stratify = labels if labels.min() >= 0 and len(counts) > 1 and counts.min() >= 2 else None
    n_test = max(1, int(round(test_fraction * len(labels))))
    train, test = train_test_split(idx, test_size=n_test, random_state=seed, stratify=stratify)
    return np.sort(train), np.sort(test), stratify is not None


def _assign_splits(items: list[Item], p: DataParams) -> tuple[list[str], dict]:
    if all(it.split for it in items):
        return [it.split for it in items], {"kind": "the source's own", "stratified": False}
    if len(items) < 2:
        raise DataError(f"{len(items)} image listed: a train/test split needs at least 2")
    train, test, stratified = split_indices(np.array([it.label for it in items]), p.test_fraction, p.split_seed)
    out = np.empty(len(items), dtype=object)
    out[train], out[test] = "train", "test"
    return list(out), {
        "kind": "seeded",
        "test_fraction": p.test_fraction,
        "seed": p.split_seed,
        "stratified": stratified,
    }


def _held(entry: tuple) -> int:
    """The archive bytes an entry carries (files are read by the workers; array rows and emoji are small)."""
    _, kind, payload = entry
    return len(payload[1]) if kind == "bytes" and isinstance(payload[1], bytes) else 0


def _nbytes(task: tuple) -> int:
    return sum(map(_held, task[0]))


def _tasks(listing: Listing, p: DataParams, share: int) -> Iterator[tuple]:
    """Tasks of TASK_ITEMS items, cut early once the archive bytes they carry reach `share`."""
    batch, size = [], 0
    for entry in payloads(listing):
        batch.append(entry)
        size += _held(entry)
        del entry  # so this frame holds no member while the next one is read
        if len(batch) == TASK_ITEMS or size >= share:
            yield batch, p.resolution, p.channels, p.crop
            batch, size = [], 0
    if batch:
        yield batch, p.resolution, p.channels, p.crop


def _ordered_map(tasks: Iterable, workers: int) -> Iterator[list]:
    """convert() over tasks in order, with at most 4 tasks per worker and INFLIGHT_BYTES of archive bytes
    in flight (a task larger than that goes alone): memory stays bounded however large the dataset or its
    members (Pool.imap would read the whole input ahead)."""
    if workers <= 1:
        yield from map(convert, tasks)  # one task at a time
        return
    # fork where there is one (as torch's DataLoader does): spawn would re-run a user's __main__ script.
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with mp.get_context(method).Pool(workers) as pool:
        pending: deque = deque()
        in_flight = 0
        for task in tasks:
            size = _nbytes(task)
            while pending and in_flight + size > INFLIGHT_BYTES:
                result, n = pending.popleft()
                in_flight -= n
                yield result.get()
            pending.append((pool.apply_async(convert, (task,)), size))
            in_flight += size
            del task  # the pool holds it until a worker has it
            if len(pending) >= 4 * workers:
                result, n = pending.popleft()
                in_flight -= n
                yield result.get()
        while pending:
            yield pending.popleft()[0].get()


def _kind(reason: str) -> str:
    return reason.split(":")[0].split(" (")[0]


def prepare(p: DataParams, out_dir: str | Path) -> dict:
    """Prepare the dataset named by `p.source` into `out_dir`; return the manifest."""
    listing = list_source(p)
    items = listing.items
    splits, split_info = _assign_splits(items, p)
    workers = 1 if len(items) < INLINE_BELOW else (p.workers or os.cpu_count() or 1)
    skipped = list(listing.skipped)
    if skipped and p.on_error == "fail":
        raise DataError(f"{skipped[0]['key']}: {skipped[0]['reason']} (data.on_error: fail)")
    seen: dict[str, str] = {}
    with atomic_dir(out_dir) as tmp:
        shape = (p.channels, p.resolution, p.resolution)
        writers = {s: ShardWriter(tmp, s, p.shard_size, shape) for s in SPLITS}
        share = max(1, INFLIGHT_BYTES // (4 * workers))  # what one of the 4 x workers tasks in flight may carry
        for results in _ordered_map(_tasks(listing, p, share), workers):
            for i, image, reason, digest in results:
                it = items[i]
                if not reason and digest in seen:  # not an error: dropped and counted under either on_error
                    skipped.append({"key": it.key, "reason": f"duplicate (same content as {seen[digest]})"})
                    continue
                if reason:
                    if p.on_error == "fail":
                        raise DataError(f"{it.key}: {reason} (data.on_error: fail)")
                    skipped.append({"key": it.key, "reason": reason})
                    continue
                seen[digest] = it.key
                writers[splits[i]].add(image, it.label)
                if p.hflip and splits[i] == "train":
                    writers["train"].add(image[:, :, ::-1], it.label)
        shards = {s: w.close() for s, w in writers.items()}
        usable = len(seen)
        if usable < p.min_images or not shards["train"]["images"] or not shards["test"]["images"]:
            why = ", ".join(f"{n} {k}" for k, n in Counter(_kind(s["reason"]) for s in skipped).most_common(3))
            raise DataError(
                f"{listing.name}: {usable} usable images of {len(items) + len(listing.skipped)} "
                f"inputs ({len(skipped)} skipped{': ' + why if why else ''}); data.min_images = "
                f"{p.min_images} and each split needs one"
            )
        manifest = _manifest(listing, p, shards, split_info, skipped)
        write_json(tmp / MANIFEST, manifest)
    return manifest


def _manifest(listing: Listing, p: DataParams, shards: dict, split_info: dict, skipped: list[dict]) -> dict:
    names = listing.class_names
    counts = {
        s: {
            "images": shards[s]["images"],
            "per_class": {names[k]: n for k, n in sorted(shards[s].pop("per_label").items()) if k >= 0},
        }
        for s in SPLITS
    }
    h = hashlib.sha256()
    for s in SPLITS:
        h.update(f"{s}:{shards[s]['images']}:{shards[s]['sha256']}\n".encode())
    return {
        "source": listing.name,
        **{k: v for k, v in listing.detail.items() if k != "text"},
        "licence": listing.licence,
        "resolution": p.resolution,
        "channels": p.channels,
        "crop": p.crop,
        "hflip": p.hflip,
        "num_classes": len(names),
        "class_names": names,
        "counts": counts,
        "split": split_info,
        "shards": shards,
        "skipped": {
            "count": len(skipped),
            "by_reason": dict(Counter(_kind(s["reason"]) for s in skipped)),
            "items": skipped,
        },
        "sha256": h.hexdigest(),
    }


def read_manifest(prepared_dir: str | Path) -> dict:
    m = read_json(Path(prepared_dir) / MANIFEST, "`ganpipe prepare`")
    if not isinstance(m, dict) or not {"shards", "skipped", "counts", "sha256"} <= m.keys():
        raise DataError(
            f"{prepared_dir}: prepared by an older ganpipe (no shards in {MANIFEST}); re-run `ganpipe prepare`"
        )
    return m


def load_split(prepared_dir: str | Path, split: str) -> tuple[ShardedImages, np.ndarray]:
    """The images (memory-mapped shards, one array-like) and labels of one split."""
    manifest = read_manifest(prepared_dir)
    if split not in manifest["shards"]:
        raise DataError(f"{prepared_dir}: no {split} split in the manifest; re-run `ganpipe prepare`")
    return open_split(Path(prepared_dir), manifest["shards"][split])


def summary(manifest: dict) -> list[str]:
    """The manifest in a few lines: what, how big, what was skipped and why."""
    c = manifest["counts"]
    lines = [
        f"{manifest['source']}: {c['train']['images']} train / {c['test']['images']} test images, "
        f"{manifest['resolution']}px x {manifest['channels']} channel(s), sha256 {manifest['sha256'][:12]}",
        f"licence: {manifest['licence']}",
    ]
    if manifest.get("attribution"):
        lines.append(f"attribution: {manifest['attribution']}")
    if manifest["num_classes"]:
        per = c["train"]["per_class"]
        lines.append(
            f"{manifest['num_classes']} classes (train images): "
            + ", ".join(f"{k} {v}" for k, v in list(per.items())[:12])
            + (" ..." if len(per) > 12 else "")
        )
    sk = manifest["skipped"]
    if sk["count"]:
        lines.append(
            f"skipped {sk['count']}: "
            + ", ".join(f"{n} {k}" for k, n in sk["by_reason"].items())
            + f" (every one, with its reason, in {MANIFEST})"
        )
    return lines


def contact_sheet(prepared_dir: str | Path, out: str | Path, per_class: int = 8, seed: int = 0) -> Path:
    """A PNG of random training images: one row per class (up to 32 classes), or an 8-wide grid."""
    from ganpipe.core.images import grid, save_png

    manifest = read_manifest(prepared_dir)
    images, labels = load_split(prepared_dir, "train")
    rng = np.random.default_rng(seed)
    classes = list(range(min(manifest["num_classes"], 32))) or [-1]
    rows = []
    for k in classes:
        pool = np.flatnonzero(labels == k) if k >= 0 else np.arange(len(labels))
        pick = np.sort(rng.choice(pool, size=min(per_class * (1 if k >= 0 else 8), len(pool)), replace=False))
        row = images[pick]
        pad = per_class * (1 if k >= 0 else 8) - len(row)
        rows.append(np.concatenate([row, np.zeros((pad, *row.shape[1:]), np.uint8)]) if pad > 0 else row)
    return save_png(grid(np.concatenate(rows), cols=per_class), out)
