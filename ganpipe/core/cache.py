"""A content-addressed cache of arrays (reference statistics, generated features).

Entries are `.npz` files (no pickle) named by the sha256 of their key, and hold the key itself so a
hit is verified, not trusted. A hit sets the entry's mtime, so that `ganpipe cache prune` sees when an
entry was last used, not only when it was made. Location: $GANPIPE_CACHE_DIR, else ~/.cache/ganpipe.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from ganpipe.core.hashing import json_sha256
from ganpipe.core.io import atomic_path


def cache_dir() -> Path:
    return Path(os.environ.get("GANPIPE_CACHE_DIR") or Path.home() / ".cache" / "ganpipe")


def entry_path(kind: str, key: dict) -> Path:
    return cache_dir() / kind / entry_name(key)


def entry_name(key: dict) -> str:
    """The file name of `key`'s entry, the same in every kind."""
    return f"{json_sha256(key)}.npz"


def save_arrays(path: str | Path, key: dict, arrays: dict[str, np.ndarray]) -> None:
    """Write arrays and their key to one .npz, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.savez(f, key=np.array(json.dumps(key, sort_keys=True)), **arrays)


def load_arrays(path: str | Path) -> tuple[dict, dict[str, np.ndarray]]:
    """(key, arrays) of a file written by `save_arrays`; raises OSError/ValueError/KeyError if unreadable."""
    with np.load(path, allow_pickle=False) as z:
        key = json.loads(str(z["key"]))
        return key, {name: z[name] for name in z.files if name != "key"}


def load_key(path: str | Path) -> dict:
    """The key of a file written by `save_arrays`, without reading its arrays (errors as `load_arrays`)."""
    with np.load(path, allow_pickle=False) as z:
        return json.loads(str(z["key"]))


def get(kind: str, key: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays for `key`, or None (missing, unreadable or for another key)."""
    path = entry_path(kind, key)
    try:
        stored, arrays = load_arrays(path)
    except (OSError, ValueError, KeyError):
        return None
    if stored != json.loads(json.dumps(key, sort_keys=True)):
        return None
    try:
        os.utime(path)  # last used: what pruning keeps
    except OSError:  # a read-only cache still serves hits
        pass
    return arrays


def put(kind: str, key: dict, arrays: dict[str, np.ndarray]) -> Path:
    path = entry_path(kind, key)
    save_arrays(path, key, arrays)
    return path
