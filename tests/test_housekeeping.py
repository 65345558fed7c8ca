"""Housekeeping: temp outputs of a killed stage go at the next write of that output (never a live
writer's), and `ganpipe cache` shows and prunes the cache without touching what must stay."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ganpipe.core import cache, io
from ganpipe.core.housekeeping import parse_size
from ganpipe.core.io import atomic_dir, atomic_path, clean_stale_temps
from ganpipe.data.prepare import prepare, read_manifest
from tests.cli_inprocess import run_in_process

# A stage's write cut short: the temp output is made and half-written when the process is killed.
WRITER = """
import sys, time
from pathlib import Path
from ganpipe.core.io import atomic_dir, atomic_path

with (atomic_dir if sys.argv[2] == "dir" else atomic_path)(sys.argv[1]) as tmp:
    (tmp / "half.bin" if tmp.is_dir() else tmp).write_bytes(b"x" * 5000)
    print(tmp, flush=True)
    time.sleep(600)
"""


def start_writer(target: Path, how: str = "dir") -> tuple[subprocess.Popen, Path]:
    proc = subprocess.Popen([sys.executable, "-c", WRITER, str(target), how], stdout=subprocess.PIPE, text=True)
    tmp = Path(proc.stdout.readline().strip())
    assert tmp.exists(), f"the writer died: {proc.wait()}"
    return proc, tmp


def kill(proc: subprocess.Popen, reap: bool = True) -> None:
    proc.send_signal(signal.SIGKILL)
    if reap:
        proc.wait()
    proc.stdout.close()


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_killed_stage_temp_goes_when_the_stage_next_runs_and_a_live_writer_stays(tmp_path, tiny, capsys):
    out = tmp_path / "data" / "prepared"
    killed, leftover = start_writer(out)
    alive, live_tmp = start_writer(out)
    try:
        kill(killed)
        assert leftover.exists()  # SIGKILL skips every `finally`
        m = prepare(tiny.data, out)
        assert not leftover.exists()
        assert live_tmp.exists() and (live_tmp / "half.bin").exists()  # its writer may still finish
        assert read_manifest(out) == m and not list(out.glob("half.bin"))
        said = capsys.readouterr().out
        assert f"removed 1 temp output left by a killed run: {leftover}" in said and "(5.0 kB)" in said
    finally:
        kill(alive)
    assert clean_stale_temps(out) == [live_tmp]  # its writer is gone now
    assert sorted(p.name for p in out.parent.iterdir()) == ["prepared"]


def test_a_killed_file_write_goes_at_the_next_write_of_that_file(tmp_path):
    target = tmp_path / "reports" / "metrics.json"
    proc, leftover = start_writer(target, "path")
    assert f".pid{proc.pid}." in leftover.name  # the writer is in the name
    kill(proc)
    io.write_json(target, {"fid": 1.0})
    assert not leftover.exists() and sorted(p.name for p in target.parent.iterdir()) == ["metrics.json"]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="zombies are read from /proc")
def test_a_killed_writer_not_yet_reaped_counts_as_gone(tmp_path):
    target = tmp_path / "models"
    proc, leftover = start_writer(target)
    kill(proc, reap=False)
    deadline = time.monotonic() + 10
    while Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    try:
        assert clean_stale_temps(target) == [leftover]
    finally:
        proc.wait()


def test_own_live_temps_stay_and_a_cut_swap_puts_the_previous_output_back(tmp_path, monkeypatch, capsys):
    with atomic_dir(tmp_path / "models") as mine, atomic_path(tmp_path / "x.json") as mine_file:
        mine_file.write_text("{}")
        assert clean_stale_temps(mine_file) == [] and mine.exists() and mine_file.exists()
    target = tmp_path / "prepared"
    # Killed between the swap's two renames: the target is gone, the previous output is in `.old`.
    old = tmp_path / f".prepared.pid{dead_pid()}.old"
    old.mkdir()
    (old / "manifest.json").write_text("previous")
    assert clean_stale_temps(target) == []
    assert (target / "manifest.json").read_text() == "previous" and not old.exists()
    assert "restored" in capsys.readouterr().out
    # Temps of the code before the pid naming: removed only once unchanged for LEGACY_STALE_S.
    legacy = tmp_path / ".prepared.abcd1234.tmp"
    legacy.mkdir()
    other = tmp_path / ".unrelated.abcd1234.tmp"  # not this target's: left alone
    other.mkdir()
    assert clean_stale_temps(target) == [] and legacy.exists()
    monkeypatch.setattr(io, "LEGACY_STALE_S", -1.0)
    assert clean_stale_temps(target) == [legacy] and other.exists()


@pytest.fixture
def cache_home(tmp_path, monkeypatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv("GANPIPE_CACHE_DIR", str(root))
    monkeypatch.setenv("GANPIPE_DVC_REMOTE", str(root / "dvc-remote"))
    return root


def put(kind: str, i: int, hours_ago: float, n: int = 1000) -> Path:
    path = cache.put(kind, {"kind": kind, "i": i}, {"features": np.zeros(n, np.float32)})
    t = time.time() - hours_ago * 3600
    os.utime(path, (t, t))
    return path


def test_cache_show_lists_each_kind_its_size_and_what_is_not_pruned(cache_home, tmp_path, capsys):
    ref = put("ref-stats", 0, 48)
    feats = [put("generated-features", i, 5 - i) for i in range(3)]
    (cache_home / "dvc-remote" / "files").mkdir(parents=True)
    (cache_home / "dvc-remote" / "files" / "ab").write_bytes(b"d" * 3000)
    (cache_home / "inception.pth").write_bytes(b"w" * 2000)
    code, out, err = run_in_process(capsys, "-C", tmp_path, "cache")
    assert code == 0 and err == ""
    rows = {line.split()[0]: " ".join(line.split()[1:]) for line in out.splitlines()[2:]}
    feats_size = io.format_size(sum(p.stat().st_size for p in feats))
    assert rows["ref-stats"] == f"1 {io.format_size(ref.stat().st_size)} 2d 2d"
    assert rows["generated-features"] == f"3 {feats_size} 5h 3h"
    assert rows["dvc-remote"].startswith("1 3.0 kB") and rows["dvc-remote"].endswith("not pruned: use `dvc gc -c`")
    assert rows["weights"].startswith("1 2.0 kB") and rows["total"].startswith("6 ")
    assert "no reference statistics are protected" in out


def test_prune_keeps_the_newest_and_the_current_reference_statistics(cache_home, tmp_path, capsys):
    current = put("ref-stats", 0, 100)  # the oldest entry of all, but the current data's
    cache.save_arrays(tmp_path / "data" / "ref_stats.npz", {"kind": "ref-stats", "i": 0}, {"mu": np.zeros(2)})
    refs = [put("ref-stats", i, 50 - i) for i in (1, 2)]
    feats = [put("generated-features", i, 10 - i) for i in range(4)]
    remote = cache_home / "dvc-remote" / "files" / "only-copy"
    remote.parent.mkdir(parents=True)
    remote.write_bytes(b"d" * 100_000)
    everything = [current, *refs, *feats]

    code, out, _ = run_in_process(capsys, "-C", tmp_path, "cache", "prune", "--keep-last", "1", "--dry-run")
    assert code == 0 and "would delete 4 cache entries" in out and all(p.exists() for p in everything)

    assert cache.get("generated-features", {"kind": "generated-features", "i": 0}) is not None  # now the newest
    code, out, _ = run_in_process(capsys, "-C", tmp_path, "cache", "prune", "--keep-last", "1")
    assert code == 0 and "deleted 4 cache entries" in out and "protected: ref-stats/" in out
    assert {p for p in everything if p.exists()} == {current, refs[1], feats[0]}

    size = current.stat().st_size
    code, out, _ = run_in_process(capsys, "-C", tmp_path, "cache", "prune", "--max-size", str(size + 10))
    assert code == 0 and "deleted 2 cache entries" in out
    assert {p for p in everything if p.exists()} == {current} and remote.exists()


@pytest.mark.parametrize("argv", [["--max-size", "12Q"], ["--max-size", "2 G B s"], ["--keep-last", "-1"], []])
def test_bad_prune_options_are_one_line_and_exit_2(cache_home, tmp_path, capsys, argv):
    put("ref-stats", 0, 1)
    code, out, err = run_in_process(capsys, "-C", tmp_path, "cache", "prune", *argv)
    assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith("ganpipe: error: ")
    assert len(list((cache_home / "ref-stats").iterdir())) == 1


def test_sizes_read_like_du():
    assert parse_size("500M") == 500 * 10**6 and parse_size("2G") == 2 * 10**9 and parse_size("1.5GB") == 1.5e9
    assert parse_size("2GiB") == 2 * 2**30 and parse_size("1000") == 1000 and parse_size("64k") == 64_000
