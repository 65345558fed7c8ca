"""A content-addressed cache of arrays (reference statistics, generated features).

Entries are `.npz` files (no pickle) named by the sha256 of their key, and hold the key itself so a
hit is verified, not trusted. Location: $GANPIPE_CACHE_DIR, else ~/.cache/ganpipe.
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
    return cache_dir() / kind / f"{json_sha256(key)}.npz"


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


def get(kind: str, key: dict) -> dict[str, np.ndarray] | None:
    """The cached arrays for `key`, or None (missing, unreadable or for another key)."""
    path = entry_path(kind, key)
    try:
        stored, arrays = load_arrays(path)
    except (OSError, ValueError, KeyError):
        return None
    return arrays if stored == json.loads(json.dumps(key, sort_keys=True)) else None


def put(kind: str, key: dict, arrays: dict[str, np.ndarray]) -> Path:
    path = entry_path(kind, key)
    save_arrays(path, key, arrays)
    return path
