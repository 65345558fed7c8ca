"""What the ganpipe cache holds (`ganpipe cache`) and pruning it (`ganpipe cache prune`).

The cache ($GANPIPE_CACHE_DIR, else ~/.cache/ganpipe) only grows: every new dataset, extractor or
generator adds content-addressed entries. Entries are the `<sha256>.npz` files of `ganpipe.core.cache`,
one folder per kind (reference statistics, generated features, probe reals); they can always be
recomputed, so they are what pruning deletes, least recently used first (a hit sets the mtime).

Never pruned: the entry holding the reference statistics of the project's current data (recomputing it
costs a full pass over the real images, and it is what every evaluation compares against); the DVC
remote (it may hold the only copy of a dataset version: `dvc gc -c` knows what is still referenced);
dataset downloads, lock files and model weights (not recomputable, or in use). The kinds are read from the
folders, so a kind added later is listed and pruned without a change here, and this module needs no
import from the layers that own them.
"""

from __future__ import annotations

import os
import re
import time
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ganpipe.core import cache
from ganpipe.core.dvc import default_remote_dir
from ganpipe.core.errors import ConfigError
from ganpipe.core.io import clean_stale_temps, format_size

ENTRY = re.compile(r"^[0-9a-f]{64}\.npz$")
DVC_REMOTE, WEIGHTS, OTHER = "dvc-remote", "weights", "other"
NOT_PRUNED = {  # kind -> why; folders not named here are kinds of entries
    DVC_REMOTE: "not pruned: use `dvc gc -c`",
    "torchvision": "not pruned: dataset downloads",
    "locks": "not pruned: lock files",
    WEIGHTS: "not pruned: model weights",
    OTHER: "not pruned",
}
_UNITS = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12}


@dataclass(frozen=True)
class Item:
    """One file in the cache; `entry`: a content-addressed entry that pruning may delete."""

    path: Path
    kind: str
    size: int
    used: float  # mtime: when it was written or last a cache hit
    entry: bool


def parse_size(text: str) -> int:
    """Bytes of "500M", "2G", "1.5GB", "2GiB" or "1000" (k, M, G, T: powers of 1000; with "i": of 1024)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kKmMgGtT]?)(i?)[bB]?\s*", text)
    if not m:
        raise ConfigError(f"--max-size {text!r}: not a size; use bytes or a number with k, M, G or T (500M, 2G)")
    unit = m[2].upper()
    scale = 1024 ** " KMGT".index(unit) if m[3] and unit else _UNITS[unit]
    return int(float(m[1]) * scale)


def _files(folder: Path) -> Iterable[tuple[Path, os.stat_result]]:
    for parent, _dirs, files in os.walk(folder):
        for f in files:
            path = Path(parent) / f
            try:
                yield path, path.lstat()
            except OSError:  # removed meanwhile
                continue


def inventory(root: Path | None = None) -> list[Item]:
    """Every file under the cache folder, by kind."""
    root = root or cache.cache_dir()
    remote = default_remote_dir()  # $GANPIPE_DVC_REMOTE may name another folder in the cache
    special = {name: name for name in NOT_PRUNED} | ({remote.name: DVC_REMOTE} if remote.parent == root else {})
    items = []
    try:
        children = sorted(root.iterdir())
    except FileNotFoundError:
        return []
    for child in children:
        if child.is_file() or child.is_symlink():
            st = child.lstat()
            kind = WEIGHTS if child.suffix in (".pt", ".pth") else OTHER
            items.append(Item(child, kind, st.st_size, st.st_mtime, False))
            continue
        for path, st in _files(child):
            entry = child.name not in special and path.parent == child and bool(ENTRY.match(path.name))
            kind = child.name if entry else special.get(child.name, OTHER)  # a kind's temps: other
            items.append(Item(path, kind, st.st_size, st.st_mtime, entry))
    return items


def protected_names(ref_stats_path: str | Path, items: list[Item]) -> tuple[set[str], str]:
    """The entry file name of the reference statistics at `ref_stats_path` (the current data's), and a
    line saying what that protects. By name in any kind: the name is the sha256 of that key."""
    try:
        key = cache.load_key(ref_stats_path)
    except FileNotFoundError:
        return set(), f"no {ref_stats_path}: no reference statistics are protected"
    except (OSError, ValueError, KeyError) as exc:
        return set(), f"{ref_stats_path} is unreadable ({exc}): no reference statistics are protected"
    name = cache.entry_name(key)
    found = [_short(it) for it in items if it.entry and it.path.name == name]
    where = ", ".join(found) or f"{name[:12]}...npz (not in the cache)"
    return {name}, f"protected: {where}, the reference statistics of {ref_stats_path}"


def _short(it: Item) -> str:
    return f"{it.kind}/{it.path.name[:12]}...npz"


def _age(seconds: float) -> str:
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= n:
            return f"{seconds / n:.0f}{unit}"
    return f"{max(seconds, 0):.0f}s"


def table(items: list[Item], protected: set[str], now: float | None = None) -> list[str]:
    """Lines of `ganpipe cache`: per kind the files, their size, the oldest and newest use, and the total."""
    now = time.time() if now is None else now
    kinds: dict[str, list[Item]] = defaultdict(list)
    for it in items:
        kinds[it.kind].append(it)
    order = sorted(kinds, key=lambda k: (not kinds[k][0].entry, k == OTHER, k))
    lines = [f"{'kind':<20}{'files':>7}{'size':>12}{'oldest':>8}{'newest':>8}"]
    for kind in order:
        its = kinds[kind]
        used = [it.used for it in its]
        note = NOT_PRUNED.get(kind, "")
        if its[0].entry and (n := sum(it.path.name in protected for it in its)):
            note = f"{n} protected"
        lines.append(
            f"{kind:<20}{len(its):>7}{format_size(sum(it.size for it in its)):>12}"
            f"{_age(now - min(used)):>8}{_age(now - max(used)):>8}   {note}".rstrip()
        )
    lines.append(f"{'total':<20}{len(items):>7}{format_size(sum(it.size for it in items)):>12}")
    return lines


def plan_prune(
    items: list[Item], protected: set[str], keep_last: int | None = None, max_size: int | None = None
) -> list[Item]:
    """The entries to delete, least recently used first: beyond the `keep_last` newest of each kind,
    then while all entries together exceed `max_size` bytes. Protected entries stay and count in the size."""
    if keep_last is None and max_size is None:
        raise ConfigError("cache prune: give --keep-last N, --max-size SIZE or both")
    if keep_last is not None and keep_last < 0:
        raise ConfigError(f"--keep-last {keep_last}: need 0 or more")
    entries = sorted((it for it in items if it.entry), key=lambda it: (it.used, it.path.name))
    doomed: set[Item] = set()
    if keep_last is not None:
        kinds: dict[str, list[Item]] = defaultdict(list)
        for it in entries:
            if it.path.name not in protected:
                kinds[it.kind].append(it)
        for its in kinds.values():
            doomed.update(its[: max(len(its) - keep_last, 0)])
    if max_size is not None:
        total = sum(it.size for it in entries if it not in doomed)
        for it in entries:
            if total <= max_size:
                break
            if it not in doomed and it.path.name not in protected:
                doomed.add(it)
                total -= it.size
    return sorted(doomed, key=lambda it: (it.used, it.path.name))


def prune(items: list[Item], doomed: list[Item], root: Path | None = None, dry_run: bool = False) -> list[str]:
    """Delete `doomed` (unless `dry_run`) and the cache's temps left by killed runs; lines to print."""
    root = root or cache.cache_dir()
    now, freed = time.time(), sum(it.size for it in doomed)
    verb = "would delete" if dry_run else "deleted"
    lines = [f"{verb} {len(doomed)} cache entr{'y' if len(doomed) == 1 else 'ies'} ({format_size(freed)})"]
    for it in doomed:
        lines.append(f"  {_short(it)}  {format_size(it.size)}  last used {_age(now - it.used)} ago")
        if not dry_run:
            it.path.unlink(missing_ok=True)
    if not dry_run:
        for kind in sorted({it.kind for it in items if it.entry}):
            clean_stale_temps(root / kind / "entry")  # any name: it removes every dead writer's temp
    gone = set(doomed)
    left = [it for it in items if it.entry and it not in gone]
    lines.append(
        f"cache entries {'would be' if dry_run else 'now'} {len(left)} ({format_size(sum(it.size for it in left))})"
        + ("; --dry-run: nothing deleted" if dry_run else f"; freed {format_size(freed)}")
    )
    return lines
