"""Hostile archives: every damaged, encrypted, oddly compressed or lying member is one counted skip (or one
line under `on_error: fail`), never a traceback; the bytes read ahead of the decoders stay within a budget.

Each archive is built here with zipfile/tarfile and then patched byte by byte, as an attacker (or a bad
disk) would leave it. Offsets are those of the zip format (APPNOTE 4.3.7 local header, 4.3.12 central
directory record).
"""

from __future__ import annotations

import gzip
import io
import struct
import tarfile
import tracemalloc
import zipfile

import numpy as np
import pytest

from ganpipe.core.errors import DataError
from ganpipe.data import prepare as data
from ganpipe.data import sources
from ganpipe.data.prepare import prepare
from tests.test_data import _encode, _folder_params, _noise

# Field offsets: (local header, central directory record)
FLAGS, METHOD, USIZE = (6, 8), (8, 10), (22, 24)


def _png(seed: int, size: int = 8) -> bytes:
    return _encode(_noise(seed, size, size), "PNG")


def _good(n: int = 10) -> list[tuple[str, bytes, int]]:
    """n distinct small PNGs in two class folders, deflated as any zip tool would."""
    return [(f"{('cats', 'dogs')[i % 2]}/img_{i:03d}.png", _png(i), zipfile.ZIP_DEFLATED) for i in range(n)]


def _zip(path, members: list[tuple[str, bytes, int]]):
    with zipfile.ZipFile(path, "w") as z:
        for name, content, method in members:
            z.writestr(name, content, compress_type=method)
    return path


def _headers(raw: bytearray, path, name: str) -> tuple[int, int, int]:
    """(local header, central directory record, first byte of the data) of one member."""
    with zipfile.ZipFile(path) as z:
        local, central = z.getinfo(name).header_offset, z.start_dir
    while raw[central + 46 : central + 46 + struct.unpack_from("<H", raw, central + 28)[0]] != name.encode():
        central += 46 + sum(struct.unpack_from("<3H", raw, central + 28))
    start = local + 30 + sum(struct.unpack_from("<2H", raw, local + 26))
    return local, central, start


def _patch(path, name: str, how: str) -> None:
    raw = bytearray(path.read_bytes())
    local, central, start = _headers(raw, path, name)
    if how == "corrupt deflate":
        raw[start] |= 0b110  # block type 3 is reserved: zlib refuses the stream at its first block
    elif how == "bad crc":
        raw[start + 40] ^= 0x01  # a stored member: one flipped bit, only the CRC can tell
    elif how == "encrypted":
        for at, off in zip((local, central), FLAGS):
            raw[at + off] |= 0x01
    elif how == "method 99":
        for at, off in zip((local, central), METHOD):
            struct.pack_into("<H", raw, at + off, 99)
    elif how == "size lie":
        for at, off in zip((local, central), USIZE):
            struct.pack_into("<I", raw, at + off, 100)
    else:
        raise AssertionError(how)
    path.write_bytes(raw)


HOSTILE = {  # member -> (how it is stored, how it is damaged, the reason prepare gives)
    "cats/deflate.png": (zipfile.ZIP_DEFLATED, "corrupt deflate", "corrupt archive member (Error -3 "),
    "cats/crc.png": (zipfile.ZIP_STORED, "bad crc", "corrupt archive member (bad CRC-32)"),
    "dogs/secret.png": (zipfile.ZIP_DEFLATED, "encrypted", "encrypted archive member"),
    "dogs/method.png": (zipfile.ZIP_DEFLATED, "method 99", "unsupported compression (method 99)"),
    "cats/lie.png": (zipfile.ZIP_DEFLATED, "size lie", "archive member larger than declared (100 bytes)"),
    "dogs/lie.png": (zipfile.ZIP_STORED, "size lie", "archive member larger than declared (100 bytes)"),
}


def _hostile_zip(path, names) -> None:
    _zip(path, _good() + [(n, _png(50 + k, 24), HOSTILE[n][0]) for k, n in enumerate(names)])
    for n in names:
        _patch(path, n, HOSTILE[n][1])


@pytest.mark.parametrize("name", list(HOSTILE))
def test_each_hostile_zip_member_is_a_counted_skip_or_one_line(name, tmp_path, tiny):
    _hostile_zip(tmp_path / "raw.zip", [name])
    p = _folder_params(tiny, tmp_path / "raw.zip")
    m = prepare(p, tmp_path / "prepared")
    assert [s["key"] for s in m["skipped"]["items"]] == [name]
    assert m["skipped"]["items"][0]["reason"].startswith(HOSTILE[name][2])
    assert m["counts"]["train"]["images"] + m["counts"]["test"]["images"] == len(_good())
    with pytest.raises(DataError) as err:
        prepare(p.model_copy(update={"on_error": "fail"}), tmp_path / "failed")
    line = str(err.value)
    assert "\n" not in line and line.startswith(f"{name}: {HOSTILE[name][2]}")
    assert line.endswith("(data.on_error: fail)") and not (tmp_path / "failed").exists()


def test_hostile_members_group_by_kind_and_bzip2_lzma_still_decode(tmp_path, tiny):
    odd = [("cats/bz.png", _png(80), zipfile.ZIP_BZIP2), ("dogs/xz.png", _png(81), zipfile.ZIP_LZMA)]
    empty = ("cats/empty.png", b"", zipfile.ZIP_DEFLATED)  # declared and real size 0: still a plain skip
    _hostile_zip(tmp_path / "raw.zip", list(HOSTILE))
    with zipfile.ZipFile(tmp_path / "raw.zip", "a") as z:
        for name, content, method in odd + [empty]:
            z.writestr(name, content, compress_type=method)
    m = prepare(_folder_params(tiny, tmp_path / "raw.zip"), tmp_path / "prepared")
    assert m["skipped"]["by_reason"] == {
        "corrupt archive member": 2,
        "encrypted archive member": 1,
        "unsupported compression": 1,
        "archive member larger than declared": 2,
        "zero-byte file": 1,
    }
    assert m["counts"]["train"]["images"] + m["counts"]["test"]["images"] == len(_good()) + len(odd)


@pytest.mark.parametrize("method", [zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2])
def test_a_member_that_lies_about_its_size_is_never_read_past_the_lie(method, tmp_path, tiny):
    """32 MiB of zeros declared as 100 bytes: reading it holds about 100 bytes, not 32 MiB. zipfile's own
    reader puts no bound on bzip2 output at all (a few hundred bytes of bzip2 expand to gigabytes)."""
    path = _zip(tmp_path / "raw.zip", _good() + [("cats/bomb.png", bytes(32 * 2**20), method)])
    _patch(path, "cats/bomb.png", "size lie")
    listing = sources.list_source(_folder_params(tiny, path))
    tracemalloc.start()
    try:
        read = {key: payload for _, _, (key, payload) in sources.payloads(listing)}
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(read["cats/bomb.png"]) == "archive member larger than declared (100 bytes)"
    assert peak < 8 * 2**20, f"{peak / 2**20:.0f} MiB held while reading a member declared as 100 bytes"
    assert all(isinstance(v, bytes) for k, v in read.items() if k != "cats/bomb.png")


def _tar(path, members: list[tuple[str, bytes, int]]) -> bytes:
    mode = {".gz": "w:gz", ".xz": "w:xz"}.get(path.suffix, "w")
    with tarfile.open(path, mode) as t:
        for name, content, _ in members:
            info = tarfile.TarInfo(name)
            info.size = len(content)
            t.addfile(info, io.BytesIO(content))
    return path.read_bytes()


@pytest.mark.parametrize("name", ["raw.tar", "raw.tar.gz", "raw.tar.xz"])
def test_a_cut_or_corrupt_tar_keeps_the_members_before_the_damage(name, tmp_path, tiny):
    """A cut download: the members before the cut are used, the one cut through is a skip, and the rest
    of the archive (unknown) is one skip naming where it starts."""
    good = _good(16)
    raw = _tar(tmp_path / name, good + [(f"dogs/big_{i}.png", _png(90 + i, 64), 0) for i in range(4)])
    if name == "raw.tar":  # cut through the last member's data (the end is padding: cutting there loses nothing)
        with tarfile.open(tmp_path / name) as t:
            last = t.getmembers()[-1]
        damaged = bytearray(raw[: last.offset_data + last.size // 2])
    else:  # compressed: the padding is a few bytes, the random PNGs are most of it
        damaged = bytearray(raw[: len(raw) * 9 // 10])
    if name.endswith(".xz"):
        damaged[len(raw) * 7 // 10 : len(raw) * 7 // 10 + 8] = bytes(8)  # corrupt, not only cut
    (tmp_path / name).write_bytes(damaged)
    p = _folder_params(tiny, tmp_path / name)
    m = prepare(p, tmp_path / "prepared")
    tail = [s for s in m["skipped"]["items"] if s["key"].startswith(f"{name} (after ")]
    cut = [s for s in m["skipped"]["items"] if s not in tail]
    assert len(tail) == 1 and data._kind(tail[0]["reason"]) in ("truncated archive", "corrupt archive")
    assert len(cut) <= 1 and all(data._kind(s["reason"]).endswith(" archive member") for s in cut)
    assert m["counts"]["train"]["images"] + m["counts"]["test"]["images"] >= len(good)
    if name == "raw.tar":  # cut through the last member: its header is there, its data is not
        assert cut == [{"key": last.name, "reason": "truncated archive member"}]
    with pytest.raises(DataError) as err:
        prepare(p.model_copy(update={"on_error": "fail"}), tmp_path / "failed")
    assert "\n" not in str(err.value) and str(err.value).endswith("(data.on_error: fail)")


@pytest.mark.parametrize("name", ["raw.tar", "raw.tar.gz"])
def test_a_corrupt_header_in_the_middle_of_a_tar_is_a_skip_not_a_quiet_end(name, tmp_path, tiny):
    """tarfile reads an invalid header after the first as the archive's end: the members after it are a
    counted skip naming where the damage starts, never silently missing."""
    good = _good(16)
    after = [(f"dogs/late_{i}.png", _png(40 + i, 16), 0) for i in range(3)]
    plain = tmp_path / "plain.tar"
    _tar(plain, good + after)
    with tarfile.open(plain) as t:
        first_late = t.getmember(after[0][0])
    damaged = bytearray(plain.read_bytes())
    damaged[first_late.offset + 148 : first_late.offset + 156] = b"garbage!"  # the header's checksum field
    if name.endswith(".gz"):
        (tmp_path / name).write_bytes(gzip.compress(bytes(damaged)))
    else:
        (tmp_path / name).write_bytes(damaged)
    p = _folder_params(tiny, tmp_path / name)
    m = prepare(p, tmp_path / "prepared")
    tail = [s for s in m["skipped"]["items"] if s["key"].startswith(f"{name} (after ")]
    assert tail == [
        {
            "key": f"{name} (after {good[-1][0]})",
            "reason": f"corrupt archive (invalid header at byte {first_late.offset})",
        }
    ]
    assert m["counts"]["train"]["images"] + m["counts"]["test"]["images"] == len(good)
    # an undamaged tar ends at its zero blocks: no skip
    _tar(tmp_path / "whole.tar", good)
    whole = prepare(_folder_params(tiny, tmp_path / "whole.tar"), tmp_path / "prepared-whole")
    assert whole["skipped"]["items"] == []


def _spy_tasks(monkeypatch, log: list) -> None:
    """Record, each time a task is read from the archive, the archive bytes of every task read before it
    and not yet consumed: those were all submitted by then."""
    real_tasks, real_map = data._tasks, data._ordered_map
    state = {"consumed": 0, "sizes": []}

    def tasks(*args):
        for task in real_tasks(*args):
            log.append(state["sizes"][state["consumed"] :])
            state["sizes"].append(data._nbytes(task))
            yield task

    def ordered_map(tasks, workers):
        for results in real_map(tasks, workers):
            state["consumed"] += 1
            yield results

    monkeypatch.setattr(data, "_tasks", tasks)
    monkeypatch.setattr(data, "_ordered_map", ordered_map)


def test_bytes_in_flight_stay_within_the_budget_and_change_nothing(tmp_path, tiny, monkeypatch):
    budget = 8 * 2**10
    big = [(f"dogs/big_{i}.png", _png(200 + i, 64), zipfile.ZIP_STORED) for i in range(2)]  # ~12 KB each
    path = _zip(tmp_path / "raw.zip", _good(40) + big + _good(80)[40:])
    assert all(len(content) > budget for _, content, _ in big)
    p = _folder_params(tiny, path, workers=2)
    monkeypatch.setattr(data, "INLINE_BELOW", 0)  # a worker pool, even for this small archive
    before = prepare(p, tmp_path / "default")

    log: list[list[int]] = []
    monkeypatch.setattr(data, "INFLIGHT_BYTES", budget)
    _spy_tasks(monkeypatch, log)
    after = prepare(p, tmp_path / "small")
    for in_flight in log:
        assert len(in_flight) <= 1 or sum(in_flight) <= budget, in_flight
    assert max(len(f) for f in log) >= 2  # tasks did run side by side, within the budget
    assert len(log) > 80 // data.TASK_ITEMS + 2  # tasks were cut by their bytes, not their item count
    assert after == before
    for split in data.SPLITS:
        x1, y1 = data.load_split(tmp_path / "default", split)
        x2, y2 = data.load_split(tmp_path / "small", split)
        assert np.array_equal(np.asarray(x1), np.asarray(x2)) and np.array_equal(y1, y2)


def test_tasks_are_cut_when_their_bytes_reach_a_share_of_the_budget(tmp_path, tiny):
    huge = ("cats/huge.png", _png(7, 128), zipfile.ZIP_STORED)
    path = _zip(tmp_path / "raw.zip", _good(15) + [huge] + _good(30)[15:])
    listing = sources.list_source(_folder_params(tiny, path))
    share = 2000
    tasks = list(data._tasks(listing, _folder_params(tiny, path), share))
    assert [i for t in tasks for i, _, _ in t[0]] == list(range(len(listing.items)))  # order kept
    for t in tasks:
        sizes = [len(payload[1]) for _, _, payload in t[0]]
        assert sum(sizes[:-1]) < share  # cut as soon as the share is reached
    holder = next(t[0] for t in tasks if "cats/huge.png" in [payload[0] for _, _, payload in t[0]])
    assert holder[-1][2][0] == "cats/huge.png"  # a member over the share ends its task
