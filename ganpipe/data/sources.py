"""Dataset sources for `prepare`: list what a source holds (cheap), then turn each item into an image.

Listing happens in the main process and decides the split before any pixel is decoded; decoding runs
in worker processes (`convert`), one task per batch of items. A task carries what a worker needs:
a file path (the worker reads it: parallel I/O), the bytes of an archive member (the main process reads
archives sequentially), an array row (bundled and torchvision datasets) or an emoji to render.

Archives come from anywhere, so a member is read the way a zip bomb or a cut download would be: a damaged,
encrypted or oddly compressed member, or one that decompresses to more than its header says, is a skip
with a short reason, never a traceback, and never read past the size it declares.
"""

from __future__ import annotations

import bz2
import copy
import hashlib
import lzma
import os
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ganpipe.core.cache import cache_dir
from ganpipe.core.errors import DataError
from ganpipe.core.params import DataParams
from ganpipe.data.decode import IMAGE_SUFFIXES, SkipImage, decode, from_image, read_file

ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tar.xz")
MAX_MEMBER_BYTES = 256 * 2**20  # an archive member larger than this is skipped unread (zip bombs)
_ZIP_METHODS = (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2, zipfile.ZIP_LZMA)
# What a damaged archive raises: zipfile and tarfile let the decompressors' own errors through.
_DAMAGE = (
    OSError,
    EOFError,
    KeyError,
    NotImplementedError,
    zipfile.BadZipFile,
    tarfile.TarError,
    zlib.error,
    lzma.LZMAError,
)


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
        keys, kind = _list_archive(root, skipped), "member"
    else:
        raise DataError(f"data.path = {p.path!r}: not a directory or a .zip/.tar archive")
    if not keys:
        raise DataError(
            f"data.path = {p.path!r}: no image files ({', '.join(IMAGE_SUFFIXES)}); {len(skipped)} other entries"
        )
    items, names = _labelled(keys, p.labels, p.path, skipped)
    return Listing("imagefolder", p.licence, names, items, kind, {"path": str(root)}, skipped)


def _list_archive(path: Path, skipped: list[dict]) -> list[str]:
    """Member names of the images in an archive, in archive order (read back in the same order)."""
    keys, damage = [], []
    try:
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                members = [(i.filename, i.file_size, not i.is_dir()) for i in z.infolist()]
        else:
            with tarfile.open(path, "r:*") as t:
                members = [(m.name, m.size, m.isfile()) for m in _tar_walk(t, damage)]
            if damage and not members:
                raise damage[0]
    except _DAMAGE as exc:
        raise DataError(f"{path}: unreadable archive ({exc})") from None
    if damage:  # a cut or corrupt tar: what comes after the damage cannot be listed, only counted as one skip
        skipped.append({"key": f"{path.name} (after {members[-1][0]})", "reason": _damage("archive", damage[0])})
    for name, size, regular in members:
        if not regular:
            continue
        if Path(name).suffix.lower() not in IMAGE_SUFFIXES:
            skipped.append({"key": name, "reason": f"not an image (suffix {Path(name).suffix or 'missing'!r})"})
        elif size > MAX_MEMBER_BYTES:
            skipped.append({"key": name, "reason": f"too large ({size} bytes > {MAX_MEMBER_BYTES})"})
        else:
            keys.append(name)
    if len(set(keys)) != len(keys):
        raise DataError(f"{path}: the archive lists a member name twice")
    return keys


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
        path = Path(listing.detail["path"])
        want = {it.key: i for i, it in enumerate(listing.items)}
        if path.name.lower().endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                for key, i in want.items():
                    yield i, "bytes", (key, _read_zip(z, key))
            return
        with tarfile.open(path, "r:*") as t:
            for m in _tar_walk(t, []):  # the damage that ends the walk was listed as a skip already
                if m.name in want and m.isfile():  # a link of the same name is not the member listed
                    yield want.pop(m.name), "bytes", (m.name, _read_tar(t, m))
        for key, i in want.items():  # the archive changed since it was listed
            yield i, "bytes", (key, SkipImage("unreadable archive member (gone on a second read)"))
        return
    for i, it in enumerate(listing.items):
        if listing.kind == "file":
            yield i, "file", str(Path(listing.detail["path"]) / it.key)
        elif listing.kind == "array":
            split = it.split if it.split in listing.arrays else ""
            yield i, "array", listing.arrays[split][int(it.key.rsplit("/", 1)[-1])]
        else:
            yield i, "emoji", listing.detail["text"][it.key]


def _tar_walk(t: tarfile.TarFile, damage: list[BaseException]) -> Iterator[tarfile.TarInfo]:
    """The members of `t` up to the first damage; what stopped the walk is appended to `damage`."""
    try:
        yield from t
    except _DAMAGE as exc:  # raised by the walk itself; a consumer's own errors never come back in here
        damage.append(exc)


def _read_tar(t: tarfile.TarFile, m: tarfile.TarInfo) -> bytes | SkipImage:
    try:
        return t.extractfile(m).read(m.size)  # m.size <= MAX_MEMBER_BYTES (listing); it is where the data ends
    except _DAMAGE as exc:
        return SkipImage(_damage("archive member", exc))


def _read_zip(z: zipfile.ZipFile, key: str) -> bytes | SkipImage:
    """One zip member, holding at most its declared size + 1 bytes: a member that decompresses to more
    than its header says (a zip bomb's lie) is skipped, not trusted."""
    try:
        info = z.getinfo(key)
        if info.flag_bits & 0x41:  # 0x01 traditional PKWARE encryption, 0x40 strong encryption
            return SkipImage("encrypted archive member")
        if info.compress_type not in _ZIP_METHODS:
            return SkipImage(f"unsupported compression (method {info.compress_type})")
        limit = info.file_size  # <= MAX_MEMBER_BYTES (listing)
        if info.compress_type == zipfile.ZIP_BZIP2:
            data = _bunzip(z, info, limit)
        else:
            probe = copy.copy(info)
            probe.file_size = 1 << 62  # zipfile cuts its output at file_size (then fails the CRC): look past it
            with z.open(probe) as f:
                # zipfile bounds deflate's output by the size asked for, but LZMA's only by the compressed
                # bytes it reads per call (up to ~7,000x): ask for 4 KiB at a time there.
                data = f.read(limit + 1) if info.compress_type != zipfile.ZIP_LZMA else _read_steps(f, limit + 1)
    except _DAMAGE as exc:
        return SkipImage(_damage("archive member", exc))
    if len(data) > limit:
        return SkipImage(f"archive member larger than declared ({limit} bytes)")
    return data


def _read_steps(f, size: int, step: int = 4096) -> bytes:
    pieces, n = [], 0
    while n < size and (piece := f.read(min(step, size - n))):
        pieces.append(piece)
        n += len(piece)
    return b"".join(pieces)


def _bunzip(z: zipfile.ZipFile, info: zipfile.ZipInfo, limit: int) -> bytes:
    """A bzip2 member, decompressed here: zipfile puts no bound on bzip2's output (a few hundred bytes of
    bzip2 expand to gigabytes), so read the compressed bytes as if stored and bound each step."""
    raw = copy.copy(info)
    raw.compress_type, raw.file_size = zipfile.ZIP_STORED, info.compress_size
    del raw.CRC  # the CRC is that of the decompressed bytes: checked below
    d, out = bz2.BZ2Decompressor(), bytearray()
    with z.open(raw) as f:
        while not d.eof and len(out) <= limit:
            chunk = f.read(2**16) if d.needs_input else b""
            if d.needs_input and not chunk:
                raise EOFError("bzip2 data ended early")
            out += d.decompress(chunk, limit + 1 - len(out))
    if len(out) <= limit and zlib.crc32(out) != info.CRC:
        raise zipfile.BadZipFile(f"Bad CRC-32 for file {info.filename!r}")
    return bytes(out)


def _damage(what: str, exc: BaseException) -> str:
    """A short reason for an archive (member) that cannot be read. prepare groups reasons by the text before
    " (" or ":", so the kind comes first: "corrupt archive member (bad CRC-32)", "truncated archive"."""
    if isinstance(exc, EOFError) or str(exc) == "unexpected end of data":  # the latter: tarfile's ReadError
        return f"truncated {what}"
    if isinstance(exc, zipfile.BadZipFile) and str(exc).startswith("Bad CRC-32"):
        return f"corrupt {what} (bad CRC-32)"
    if isinstance(exc, NotImplementedError):
        return f"unsupported {what} ({exc})"
    if isinstance(exc, KeyError):
        return f"unreadable {what} (gone on a second read)"
    if isinstance(exc, OSError) and exc.errno is not None:  # the disk, not the data (bz2/gzip damage: no errno)
        return f"unreadable {what} ({exc.strerror})"
    return f"corrupt {what} ({exc})"


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
