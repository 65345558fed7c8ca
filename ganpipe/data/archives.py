"""Archives (.zip, .tar[.gz|.bz2|.xz]) as `prepare` sources, read as hostile input.

Archives come from anywhere, so a member is read the way a zip bomb or a cut download would be: a damaged,
encrypted or oddly compressed member, or one that decompresses to more than its header says, is a skip
with a short reason (`SkipImage`), never a traceback, and never read past the size it declares. A member
declaring more than MAX_MEMBER_BYTES is skipped unread. A cut or corrupt tar keeps the members listed
before the damage; the rest is one skip.
"""

from __future__ import annotations

import bz2
import copy
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from ganpipe.core.errors import DataError
from ganpipe.data.decode import IMAGE_SUFFIXES, SkipImage

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


def list_members(path: Path, skipped: list[dict]) -> list[str]:
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


def read_members(path: Path, keys: list[str]) -> Iterator[tuple[str, bytes | SkipImage]]:
    """(key, its bytes or why not) for each listed member, in one pass over the archive: zip members in
    the order of `keys`, tar members in archive order, then any that a second read no longer found."""
    if path.name.lower().endswith(".zip"):
        with zipfile.ZipFile(path) as z:
            for key in keys:
                yield key, _read_zip(z, key)
        return
    want = set(keys)
    with tarfile.open(path, "r:*") as t:
        for m in _tar_walk(t, []):  # the damage that ends the walk was listed as a skip already
            if m.name in want and m.isfile():  # a link of the same name is not the member listed
                want.discard(m.name)
                yield m.name, _read_tar(t, m)
    for key in [k for k in keys if k in want]:  # the archive changed since it was listed
        yield key, SkipImage("unreadable archive member (gone on a second read)")


def _tar_walk(t: tarfile.TarFile, damage: list[BaseException]) -> Iterator[tarfile.TarInfo]:
    """The members of `t` up to the first damage; what stopped the walk is appended to `damage`."""
    try:
        yield from t
        if (bad := _bad_end(t)) is not None:
            damage.append(bad)
    except _DAMAGE as exc:  # raised by the walk itself; a consumer's own errors never come back in here
        damage.append(exc)


def _bad_end(t: tarfile.TarFile) -> tarfile.ReadError | None:
    """Why the walk of `t` that just ended was not the archive's end, or None. tarfile ends a walk quietly
    at an invalid header anywhere but the first: every member after a corrupt header would be lost
    without a word. A real end is a zero block (or the file's end: a cut at a member's boundary)."""
    t.fileobj.seek(t.offset)
    block = t.fileobj.read(tarfile.BLOCKSIZE)
    if not block.strip(b"\0"):
        return None
    return tarfile.ReadError(f"invalid header at byte {t.offset}")


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
