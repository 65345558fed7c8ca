"""Dataset sources for `prepare`: list what a source holds (cheap), then turn each item into an image.

Listing happens in the main process and decides the split before any pixel is decoded; decoding runs
in worker processes (`convert`), one task per batch of items. A task carries what a worker needs:
a file path (the worker reads it: parallel I/O), the bytes of an archive member (the main process reads
archives sequentially), an array row (bundled and torchvision datasets) or an emoji to render.

Archives are listed and read by `ganpipe.data.archives`, as hostile input.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ganpipe.core.cache import cache_dir
from ganpipe.core.errors import DataError
from ganpipe.core.params import DataParams
from ganpipe.data.archives import ARCHIVE_SUFFIXES, list_members, read_members
from ganpipe.data.decode import IMAGE_SUFFIXES, SkipImage, decode, from_image, read_file


@dataclass(frozen=True)
class Item:
    key: str  # unique and stable: relative path, archive member, "train/000123", emoji hexcode
    label: int  # -1 when the source has no labels
    split: str = ""  # the source's own split ("train" / "test"); "" when prepare draws the split


@dataclass
class Listing:
    name: str
    licence: str
    class_names: list[str]
    items: list[Item]
    kind: str  # file | member | array | emoji: what a task carries
    detail: dict = field(default_factory=dict)  # path, dataset, attribution... (goes into the manifest)
    skipped: list[dict] = field(default_factory=list)  # found while listing: {key, reason}
    arrays: dict[str, np.ndarray] = field(default_factory=dict)  # per split, for kind == "array"


def _suffix(name: str) -> str:
    low = name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if low.endswith(s)), Path(low).suffix)


def _labelled(keys: list[str], labels: str, where: str, skipped: list[dict]) -> tuple[list[Item], list[str]]:
    """Items from relative image paths; with labels == "folders" the first path part is the class."""
    if labels == "none":
        return [Item(k, -1) for k in keys], []
    inside = [k for k in keys if "/" in k]
    for k in sorted(set(keys) - set(inside)):
        skipped.append({"key": k, "reason": "not in a class folder (data.labels: folders)"})
    names = sorted({k.split("/", 1)[0] for k in inside})
    if len(names) < 2:
        raise DataError(
            f"{where}: data.labels is 'folders' but there {'is' if names else 'are'} "
            f"{len(names)} class folder{'' if len(names) == 1 else 's'}; need at least 2"
        )
    index = {n: i for i, n in enumerate(names)}
    return [Item(k, index[k.split("/", 1)[0]]) for k in inside], names


def _list_folder(p: DataParams) -> Listing:
    root = Path(p.path).expanduser()
    if not root.exists():
        raise DataError(f"data.path = {p.path!r}: no such file or directory")
    skipped: list[dict] = []
    if root.is_dir():
        keys, kind = [], "file"

        def unreadable(err: OSError) -> None:
            skipped.append({"key": os.path.relpath(err.filename, root), "reason": f"unreadable ({err.strerror})"})

        for d, dirs, names in os.walk(root, onerror=unreadable):
            dirs.sort()
            for n in sorted(names):
                rel = os.path.relpath(os.path.join(d, n), root).replace(os.sep, "/")
                (
                    keys.append(rel)
                    if Path(n).suffix.lower() in IMAGE_SUFFIXES
                    else skipped.append(
                        {"key": rel, "reason": f"not an image (suffix {Path(n).suffix or 'missing'!r})"}
                    )
                )
    elif _suffix(root.name) in ARCHIVE_SUFFIXES:
        keys, kind = list_members(root, skipped), "member"
    else:
        raise DataError(f"data.path = {p.path!r}: not a directory or a .zip/.tar archive")
    if not keys:
        raise DataError(
            f"data.path = {p.path!r}: no image files ({', '.join(IMAGE_SUFFIXES)}); {len(skipped)} other entries"
        )
    items, names = _labelled(keys, p.labels, p.path, skipped)
    return Listing("imagefolder", p.licence, names, items, kind, {"path": str(root)}, skipped)


def _list_digits(p: DataParams) -> Listing:
    from sklearn.datasets import load_digits

    bunch = load_digits()  # 1,797 real 8x8 images, values 0..16, 10 classes
    images = np.rint(bunch.images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    items = [Item(f"{i:05d}", int(y)) for i, y in enumerate(bunch.target)]
    return Listing(
        "digits",
        "UCI ML hand-written digits (Alpaydin & Kaynak 1998), CC BY 4.0, bundled with scikit-learn",
        [str(c) for c in bunch.target_names],
        items,
        "array",
        arrays={"": images},
    )


def _list_torchvision(p: DataParams) -> Listing:
    from ganpipe.data import tvdata

    root = Path(p.download_dir).expanduser() if p.download_dir else cache_dir() / "torchvision"
    ds = tvdata.load(p.dataset, root, download=True)
    items = [
        Item(f"{split}/{i:06d}", int(y), split)
        for split, (_, labels) in (("train", ds.train), ("test", ds.test))
        for i, y in enumerate(labels)
    ]
    return Listing(
        p.dataset,
        ds.licence,
        ds.class_names,
        items,
        "array",
        {"dataset": p.dataset, "root": str(root)},
        arrays={"train": ds.train[0], "test": ds.test[0]},
    )


def _list_openmoji(p: DataParams) -> Listing:
    from ganpipe.data import emoji

    glyphs = emoji.list_glyphs()
    names = emoji.group_names(glyphs)
    index = {n: i for i, n in enumerate(names)}
    return Listing(
        "openmoji",
        emoji.LICENCE,
        names,
        [Item(g.key, index[g.group]) for g in glyphs],
        "emoji",
        {"attribution": emoji.ATTRIBUTION, "text": {g.key: g.text for g in glyphs}},
    )


LISTERS = {
    "digits": _list_digits,
    "openmoji": _list_openmoji,
    "imagefolder": _list_folder,
    "torchvision": _list_torchvision,
}


def list_source(p: DataParams) -> Listing:
    """What the source named by `p.source` holds, without decoding any image."""
    return LISTERS[p.source](p)


def payloads(listing: Listing) -> Iterator[tuple[int, str, object]]:
    """(position, kind, payload) for each item, in listing order; archives are read in one pass."""
    if listing.kind == "member":
        want = {it.key: i for i, it in enumerate(listing.items)}
        for key, data in read_members(Path(listing.detail["path"]), list(want)):
            yield want[key], "bytes", (key, data)
        return
    for i, it in enumerate(listing.items):
        if listing.kind == "file":
            yield i, "file", str(Path(listing.detail["path"]) / it.key)
        elif listing.kind == "array":
            split = it.split if it.split in listing.arrays else ""
            yield i, "array", listing.arrays[split][int(it.key.rsplit("/", 1)[-1])]
        else:
            yield i, "emoji", listing.detail["text"][it.key]


def convert(task: tuple[list[tuple[int, str, object]], int, int, str]) -> list[tuple[int, np.ndarray | None, str, str]]:
    """Worker: (position, image or None, skip reason, sha256 of the input) for each entry of a task."""
    entries, resolution, channels, crop = task
    out = []
    for i, kind, payload in entries:
        try:
            if kind == "file":
                data = read_file(payload)
                out.append((i, decode(data, payload, resolution, channels, crop), "", _sha(data)))
            elif kind == "bytes":
                name, data = payload
                if isinstance(data, SkipImage):
                    raise data
                if not data:
                    raise SkipImage("zero-byte file")
                out.append((i, decode(data, name, resolution, channels, crop), "", _sha(data)))
            elif kind == "array":
                a = np.ascontiguousarray(payload)
                img = Image.fromarray(a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a)
                out.append((i, from_image(img, resolution, channels, crop), "", _sha(a.tobytes())))
            else:
                from ganpipe.data.emoji import render

                out.append(
                    (i, from_image(render(payload, resolution), resolution, channels, crop), "", _sha(payload.encode()))
                )
        except SkipImage as exc:
            out.append((i, None, str(exc), ""))
    return out


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
