"""A cross-process lock around registry decisions, so two pipelines finishing at once are serialised:
the second one compares itself against the first one's result instead of both becoming champion.

The lock is an advisory `flock` on a file: next to the SQLite store for local tracking (every process
on the machine that uses that store shares it), else in the ganpipe cache directory, keyed by tracking
URI and model name. Processes on different machines sharing a remote tracking server are not covered.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
from collections.abc import Iterator
from pathlib import Path

from ganpipe.core.cache import cache_dir


def lock_path(tracking_uri: str, model_name: str) -> Path:
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return db.with_name(f"{db.name}.{model_name}.registry.lock")
    digest = hashlib.sha256(f"{tracking_uri}\n{model_name}".encode()).hexdigest()[:16]
    return cache_dir() / "locks" / f"registry-{digest}.lock"


@contextlib.contextmanager
def registry_lock(tracking_uri: str, model_name: str) -> Iterator[None]:
    """Hold the exclusive lock for `model_name` in the store at `tracking_uri` (blocks until free)."""
    path = lock_path(tracking_uri, model_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print(
                f"waiting for the registry lock of {model_name!r} ({path}): another registration holds it", flush=True
            )
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)
