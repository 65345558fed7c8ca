"""Atomic outputs: a failed stage leaves the previous output intact, never a half-written one, and what a
killed one left behind is removed when that output is next written.

A temp output sits next to its target and is named for its writer: `.{name}.pid{PID}.{random}.tmp` (a
directory or a file), and `.{name}.pid{PID}.old` holds the previous output for the instant of a directory
swap. A SIGKILL (the OOM killer, a cancelled flow run, a lost machine) skips every `finally`, so nothing
else removes them, and a prepared dataset's temp can be gigabytes.

Before writing a target, `atomic_path`/`atomic_dir` call `clean_stale_temps` (once per folder per
RESCAN_S in a process), which lists the target's folder and removes the temps whose writer is gone;
every stage writes its outputs through them, so each stage cleans up after its killed predecessor when
it starts. Why a pid in the name rather than an flock on the temp: the name is created atomically with
the pid in it (an flock is taken just after the temp appears, so a cleaner could see it unlocked), flock
on network file systems is emulated or absent, and the pid lets the message say whose temp it was. A
writer counts as alive while `kill(pid, 0)` finds the process and it is no zombie; a reused pid keeps a
dead run's temp until that process ends (late, never wrong). Not covered: two machines, or two pid
namespaces (containers), writing the same output path at the same moment, which is already two runs
racing for one output (`dvc repro` holds a repository lock). Temps of ganpipe before the pid naming
(`.{name}.{random}.tmp`, `.{name}.old-PID`) are removed once unchanged for LEGACY_STALE_S.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ganpipe.core.processes import alive

LEGACY_STALE_S = 24 * 3600.0  # a pid-less temp unchanged this long has no live writer
RESCAN_S = 60.0  # one process lists a folder at most this often (a thousand PNGs: one listing, not a thousand)
_RANDOM = r"[a-z0-9_]{8}"  # tempfile's random part
_TEMP = re.compile(rf"^\.(?P<name>.+)\.pid(?P<pid>\d+)\.{_RANDOM}(?:\.[A-Za-z0-9]+)*$")
_OLD = re.compile(r"^\.(?P<name>.+)\.pid(?P<pid>\d+)\.old$")
_scanned: dict[str, float] = {}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _prefix(target: Path) -> str:
    return f".{target.name}.pid{os.getpid()}."


@contextlib.contextmanager
def atomic_path(target: str | Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a temp file path next to `target`; on success it is renamed onto `target`.

    `suffix` ends the temp name, for writers that pick a format from the file name."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_before_write(target)
    fd, tmp = tempfile.mkstemp(prefix=_prefix(target), suffix=suffix, dir=target.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; the result is an ordinary file
    try:
        yield tmp_path
        os.replace(tmp_path, target)
    finally:
        tmp_path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: str | Path) -> Iterator[Path]:
    """Yield an empty temp directory next to `target`; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _clean_before_write(target)
    tmp = Path(tempfile.mkdtemp(prefix=_prefix(target), suffix=".tmp", dir=target.parent))
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f"{_prefix(target)}old")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _stale(entry: os.DirEntry, target_name: str, now: float) -> tuple[bool, str | None]:
    """(whether `entry` is a temp output nobody is writing, the target it was for when it is a swap's `.old`)."""
    if m := _TEMP.match(entry.name):
        return not alive(int(m["pid"])), None
    if m := _OLD.match(entry.name):
        return not alive(int(m["pid"])), m["name"]
    name = re.escape(target_name)  # a pid-less name is known to be ours only by the target's name
    if m := re.match(rf"^\.{name}\.old-(?P<pid>\d+)$", entry.name):
        return not alive(int(m["pid"])), target_name
    if re.match(rf"^\.{name}\.{_RANDOM}(?:\.[A-Za-z0-9]+)*$", entry.name):
        return now - entry.stat(follow_symlinks=False).st_ctime > LEGACY_STALE_S, None
    return False, None


def disk_usage(path: str | Path) -> int:
    """Bytes of the files under `path` (or of the file itself); 0 when it is gone."""
    path = Path(path)
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for parent, _dirs, files in os.walk(path):
        for f in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, f)).st_size
    return total


def format_size(n: float) -> str:
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def _shown(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except (ValueError, OSError):  # elsewhere, or the working directory is gone
        return str(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def clean_stale_temps(target: str | Path) -> list[Path]:
    """Remove the temp outputs in `target`'s folder that no live process is writing; return them.

    A swap's `.old` copy whose target is missing (killed between the two renames) is put back as the
    target instead: the previous output, as a failed stage leaves it. Prints one line when it acted."""
    target = Path(target)
    parent, now = target.parent, time.time()
    removed: list[tuple[Path, int]] = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return []
    for entry in entries:
        try:
            stale, swapped_for = _stale(entry, target.name, now)
        except OSError:  # removed meanwhile
            continue
        if not stale:
            continue
        path = Path(entry.path)
        if swapped_for is not None and not os.path.lexists(parent / swapped_for):
            with contextlib.suppress(OSError):  # another process may have restored it first
                os.replace(path, parent / swapped_for)
                print(f"restored {_shown(parent / swapped_for)} from {_shown(path)}, left by a killed run", flush=True)
            continue
        size = disk_usage(path)
        _remove(path)
        if not os.path.lexists(path):
            removed.append((path, size))
    if removed:
        what = ", ".join(f"{_shown(p)} ({format_size(n)})" for p, n in removed)
        whose = "temp outputs left by killed runs" if len(removed) > 1 else "temp output left by a killed run"
        print(f"removed {len(removed)} {whose}: {what}", flush=True)
    return [p for p, _ in removed]


def _clean_before_write(target: Path) -> None:
    """`clean_stale_temps` once per folder per RESCAN_S in this process: writing many files to one
    folder must not list it once per file."""
    key, now = str(target.parent.resolve()), time.monotonic()
    if key in _scanned and now - _scanned[key] < RESCAN_S:
        return
    _scanned[key] = now
    clean_stale_temps(target)


def write_json(path: str | Path, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def read_json(path: str | Path, what: str) -> Any:
    """Read a JSON file a stage produced; a missing file is a user error naming the stage to run."""
    from ganpipe.core.errors import DataError

    path = Path(path)
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(f"{path}: not found; run {what} first") from None
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: not valid JSON ({exc})") from None
