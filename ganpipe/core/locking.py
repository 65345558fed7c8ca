"""The registry lock: registration decisions (register's gate, promote, rollback) for one model are made
one at a time, so two pipelines finishing at once are serialised and the second compares itself against
the champion the first left, instead of both deciding against a stale one.

Which lock, by what the machines share:
- the tracking store is PostgreSQL (`MLFLOW_TRACKING_URI=postgresql://...`): a PostgreSQL advisory lock
  on that database, held by a connection of this process (freed when it closes, or when the server sees
  the connection die);
- a Prefect server is configured (`PREFECT_API_URL`, not ganpipe's temporary per-run server): the global
  concurrency limit `ganpipe-registry-<model>` (one slot, created when missing), held with a lease that
  this process renews; a dead machine's lease expires after REGISTRY_LEASE_S;
- otherwise this machine's `flock` only: next to the SQLite store for local tracking, else in the ganpipe
  cache directory, keyed by tracking URI and model name. Machines that share only an MLflow server and
  no Prefect server are not serialised.
The machine's `flock` is always taken first, so processes on one machine queue there.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

from ganpipe.core import leases
from ganpipe.core.cache import cache_dir
from ganpipe.core.leases import TEMPORARY_SERVER_ENV

REGISTRY_LEASE_S = 60.0  # renewed every 45 s while a decision is made; a dead machine frees it within a minute


def lock_path(tracking_uri: str, model_name: str) -> Path:
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///") :])
        return db.with_name(f"{db.name}.{model_name}.registry.lock")
    digest = hashlib.sha256(f"{tracking_uri}\n{model_name}".encode()).hexdigest()[:16]
    return cache_dir() / "locks" / f"registry-{digest}.lock"


def team_lock(tracking_uri: str) -> str:
    """Which lock the machines of a team share for this store: 'postgres', 'prefect' or '' (none)."""
    if tracking_uri.startswith(("postgresql:", "postgresql+")):
        return "postgres"
    if os.environ.get(TEMPORARY_SERVER_ENV):
        return ""
    from prefect.settings import PREFECT_API_URL

    return "prefect" if (os.environ.get("PREFECT_API_URL") or PREFECT_API_URL.value()) else ""


@contextlib.contextmanager
def registry_lock(tracking_uri: str, model_name: str) -> Iterator[str]:
    """Hold the registry lock for `model_name` in the store at `tracking_uri` (blocks until free; says so
    while it waits). Yields which team lock is held ('postgres', 'prefect' or '')."""
    with _machine_lock(tracking_uri, model_name):
        kind = team_lock(tracking_uri)
        if kind == "postgres":
            with _advisory_lock(tracking_uri, model_name):
                yield kind
        elif kind == "prefect":
            with _prefect_lock(model_name):
                yield kind
        else:
            yield kind


@contextlib.contextmanager
def _machine_lock(tracking_uri: str, model_name: str) -> Iterator[None]:
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


def advisory_key(model_name: str) -> int:
    """The 64-bit advisory lock key of a model's registry decisions."""
    return int.from_bytes(hashlib.sha256(f"ganpipe-registry\n{model_name}".encode()).digest()[:8], "big", signed=True)


@contextlib.contextmanager
def _advisory_lock(tracking_uri: str, model_name: str) -> Iterator[None]:
    import psycopg
    from sqlalchemy.engine import make_url

    dsn = make_url(tracking_uri).set(drivername="postgresql").render_as_string(hide_password=False)
    key = advisory_key(model_name)
    with psycopg.connect(dsn, autocommit=True, application_name="ganpipe registry lock") as conn:
        if not conn.execute("SELECT pg_try_advisory_lock(%s)", (key,)).fetchone()[0]:
            print(
                f"waiting for the registry lock of {model_name!r} (a PostgreSQL advisory lock): another "
                "registration holds it",
                flush=True,
            )
            conn.execute("SELECT pg_advisory_lock(%s)", (key,))
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (key,))


def registry_limit(model_name: str) -> str:
    return f"ganpipe-registry-{model_name}"


@contextlib.contextmanager
def _prefect_lock(model_name: str) -> Iterator[None]:
    from prefect.client.orchestration import get_client

    name = registry_limit(model_name)
    leases.ensure_limit(name, 1)
    said = False
    with get_client(sync_client=True) as client:
        while True:
            lease_id, wait_s = leases.try_take(client, name, REGISTRY_LEASE_S)
            if lease_id is not None:
                break
            if not said:
                print(
                    f"waiting for the registry lock of {model_name!r} (Prefect limit {name}): another "
                    "registration holds it, maybe on another machine",
                    flush=True,
                )
                said = True
            time.sleep(max(wait_s, 0.2))
    renewer = leases.Renewer(lease_id, REGISTRY_LEASE_S, f"registry lock {name}")
    renewer.start()
    try:
        yield
    finally:
        renewer.stop.set()
        try:
            leases.give_back(lease_id)
        except Exception as exc:  # the lease then expires on its own
            print(
                f"registry lock {name}: could not release lease {lease_id} ({exc}); it expires in "
                f"{REGISTRY_LEASE_S:.0f} s",
                flush=True,
            )
