"""Prefect global concurrency limits held with a lease: the primitive behind the device's training slot
(`ganpipe.orchestration.slots`) and the registry lock a team's machines share (`ganpipe.core.locking`).

A lease is renewed by a thread while its holder lives; when the holder's machine dies, the server's
repossessor frees the slot once the lease expires. The renewing thread runs in a copy of the caller's
context: Prefect keeps the API URL (ganpipe's temporary server's, say) in a context variable, and a plain
thread would talk to a temporary server of Prefect's own.
"""

from __future__ import annotations

import contextvars
import threading
from uuid import UUID

# set (to the server's identity) while ganpipe's temporary Prefect server runs (orchestration/tempserver.py)
TEMPORARY_SERVER_ENV = "GANPIPE_PREFECT_TEMPORARY"
RENEW_AT = 0.75  # renew the lease when this share of it has passed
RETRY_MAX_S = 10.0  # the longest pause between two tries to take a slot (the server suggests shorter ones)


def ensure_limit(name: str, limit: int = 1) -> None:
    """Create the global concurrency limit when missing (an existing one, a team's choice, is kept)."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            try:
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=limit))
            except Exception as exc:  # another machine created it between our read and create
                if status(exc) != 409:
                    raise


def status(exc: Exception) -> int | None:
    """The HTTP status of a failed Prefect client call, if it was one."""
    response = getattr(exc, "response", None)
    return getattr(response, "status_code", None)


def try_take(client, name: str, lease_s: float) -> tuple[UUID | None, float]:
    """One try to take a slot of limit `name`: (lease id, 0), or (None, seconds to wait) when all its slots
    are taken. RuntimeError when the limit does not exist."""
    try:
        response = client.increment_concurrency_slots_with_lease(
            names=[name], slots=1, mode="concurrency", lease_duration=lease_s
        )
    except Exception as exc:
        if status(exc) != 423:  # 423 Locked: the slots are taken
            raise
        return None, min(float(exc.response.headers.get("Retry-After", RETRY_MAX_S)), RETRY_MAX_S)
    body = response.json()
    if not body.get("limits"):
        raise RuntimeError(f"the global concurrency limit {name!r} does not exist")
    return UUID(body["lease_id"]), 0.0


def give_back(lease_id: UUID) -> None:
    """Release the lease's slot (raises when the server cannot be reached)."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease_id)


class Renewer(threading.Thread):
    """Renews a lease at RENEW_AT of its duration until `stop` is set. A failed renewal is reported, not
    fatal: the holder's work goes on (the lease may still be renewed at the next try)."""

    def __init__(self, lease_id: UUID, lease_s: float, what: str):
        super().__init__(name=f"ganpipe-lease-{what}", daemon=True)
        self.lease_id, self.lease_s, self.what = lease_id, lease_s, what
        self.stop = threading.Event()
        self.context = contextvars.copy_context()
        self.renewed = 0

    def run(self) -> None:
        self.context.run(self._renew_until_stopped)

    def _renew_until_stopped(self) -> None:
        from prefect.client.orchestration import get_client

        while not self.stop.wait(RENEW_AT * self.lease_s):
            try:
                with get_client(sync_client=True) as client:
                    client.renew_concurrency_lease(self.lease_id, self.lease_s)
                self.renewed += 1
            except Exception as exc:
                print(f"{self.what}: renewing lease {self.lease_id} failed ({exc}); going on", flush=True)
