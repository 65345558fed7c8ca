"""The device's training slot: one training at a time per host and device, and a dead holder never blocks.

The slot is a Prefect global concurrency limit (`ganpipe-train-<host>-<device>`, one slot) held with a
lease that this process renews. Prefect frees the slot of a holder that died only when a repossessor
revokes its expired lease, and two cases never get there: the temporary server (`ganpipe run` without
PREFECT_API_URL) keeps the limit's count in its SQLite database across runs but its leases in memory,
and runs no repossessor; and any server restarted with in-memory leases has forgotten them. A run
SIGKILLed there (an OOM kill, a reboot) left the slot taken for ever, and every later training on the
machine waited at the train task without a word.

So every holder also leaves a record on this host (the slot names the host, so all holders are here):
`$PREFECT_HOME/ganpipe-slots/<server>/<slot>/<lease>.json` with its pid, the process's start time (a
reused pid is not mistaken for the holder), flow run and since when. Before taking the slot, and every
minute while waiting for it, the records of processes that are gone are settled: the dead holder's
lease is released, which frees the slot at once (a lease the server no longer knows is a no-op there).
On a temporary server, whose leases die with it, every slot still counted beyond the live holders on
record is then given back by count (this also frees slots that a ganpipe from before these records
left); a real server's repossessor frees a holder without a record when its lease expires. One lock
file serialises the settling and the taking on this host, so a count is never read between another
process's take and its record. While a run waits, it says every minute who holds the slot and since when.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from uuid import UUID

from ganpipe.core.leases import TEMPORARY_SERVER_ENV, Renewer, give_back, try_take
from ganpipe.core.processes import alive, local_time, this_process

NOTE_EVERY_S = 60.0  # how often a waiting run says who holds the slot


def server_identity() -> tuple[str, bool]:
    """(identity of the Prefect server this process talks to, whether it is a temporary one). A
    temporary server is identified by its database (PREFECT_HOME), since each one has another port."""
    from prefect.settings import PREFECT_API_URL

    if temporary := os.environ.get(TEMPORARY_SERVER_ENV):
        return temporary, True
    url = PREFECT_API_URL.value()
    return (url, False) if url else (temporary_identity(), True)  # no URL: Prefect's own temporary server


def temporary_identity() -> str:
    from prefect.settings import PREFECT_HOME

    return f"temporary:{Path(PREFECT_HOME.value()).expanduser().resolve()}"


@dataclass
class Holder:
    path: Path
    lease_id: str
    pid: int
    started: str | None
    host: str
    since: float
    flow_run: str

    def describe(self) -> str:
        when = local_time(self.since)
        run = f", flow run {self.flow_run}" if self.flow_run else ""
        return f"pid {self.pid} on {self.host}{run}, since {when}"


class SlotRecords:
    """The holder records of one slot on one server, on this host."""

    def __init__(self, slot: str, server: str):
        from prefect.settings import PREFECT_HOME

        digest = hashlib.sha256(server.encode()).hexdigest()[:12]
        self.dir = Path(PREFECT_HOME.value()).expanduser() / "ganpipe-slots" / digest / slot
        self.slot = slot

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        self.dir.mkdir(parents=True, exist_ok=True)
        with open(self.dir / ".lock", "a") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def holders(self) -> list[Holder]:
        found = []
        for path in sorted(self.dir.glob("*.json")) if self.dir.is_dir() else []:
            try:
                r = json.loads(path.read_text())
                found.append(
                    Holder(path, r["lease_id"], int(r["pid"]), r.get("started"), r["host"], r["since"], r["flow_run"])
                )
            except (OSError, ValueError, KeyError, TypeError):
                path.unlink(missing_ok=True)  # a record cut short: its writer died writing it
        return found

    def add(self, lease_id: UUID, flow_run: str) -> Path:
        from ganpipe.core.io import write_json

        path = self.dir / f"{lease_id}.json"
        write_json(
            path, {"lease_id": str(lease_id), "host": socket.gethostname(), "flow_run": flow_run, **this_process()}
        )
        return path


def settle(client, records: SlotRecords, temporary: bool) -> list[str]:
    """Free what dead holders left (call with `records.locked()` held); returns what was done, in words.

    A dead holder's lease is released (the server frees its slot; a lease the server no longer knows is
    a no-op there). On a temporary server, whose leases die with it, slots still counted beyond the live
    holders on record are then given back by count."""
    done = []
    live = 0
    for h in records.holders():
        if alive(h.pid, h.started):
            live += 1
            continue
        client.release_concurrency_slots_with_lease(UUID(h.lease_id))
        h.path.unlink(missing_ok=True)
        done.append(f"the slot of a training that died ({h.describe()})")
    if temporary:
        orphans = int(client.read_global_concurrency_limit_by_name(records.slot).active_slots) - live
        if orphans > 0:
            # occupancy_seconds only feeds the server's average wait estimate (it must be > 0)
            client.release_concurrency_slots([records.slot], orphans, 1.0)
            done.append(f"{orphans} slot(s) still counted for no live process (their holder died)")
    return done


def _flow_run_name() -> str:
    try:
        from prefect.runtime import flow_run

        return f"{flow_run.flow_name}/{flow_run.name}" if flow_run.id else ""
    except Exception:
        return ""


def _take(client, records: SlotRecords, temporary: bool, lease_s: float) -> tuple[UUID | None, float]:
    """One try, under the host's lock: settle, then take the slot. (lease id or None, seconds to wait)."""
    with records.locked():
        for line in settle(client, records, temporary):
            print(f"training slot {records.slot}: freed {line}", flush=True)
        lease_id, wait_s = try_take(client, records.slot, lease_s)
        if lease_id is not None:
            records.add(lease_id, _flow_run_name())
        return lease_id, wait_s


def _note_waiting(records: SlotRecords, waited_s: float) -> None:
    holders = [h.describe() for h in records.holders()]
    who = "; ".join(holders) if holders else "a holder this host has no record of (another user's run?)"
    print(
        f"waiting {waited_s:.0f} s for the training slot {records.slot}: held by {who}; "
        "it is freed when that training ends (or its process is found dead)",
        flush=True,
    )


@contextlib.contextmanager
def holding(slot: str, lease_s: float) -> Iterator[Renewer]:
    """Hold the training slot `slot` (waiting for it as long as it takes, saying so every minute),
    settling what dead holders left first; release it on the way out, however the block ends. Yields
    the lease's renewer (`.lease_id`, `.renewed`: how many times it was renewed)."""
    from prefect.client.orchestration import get_client

    server, temporary = server_identity()
    records = SlotRecords(slot, server)
    t0 = time.monotonic()
    next_note = t0
    with get_client(sync_client=True) as client:
        while True:
            lease_id, wait_s = _take(client, records, temporary, lease_s)
            if lease_id is not None:
                break
            now = time.monotonic()
            if now >= next_note:
                _note_waiting(records, now - t0)
                next_note = now + NOTE_EVERY_S
            time.sleep(max(wait_s, 0.5))
    renewer = Renewer(lease_id, lease_s, f"training slot {slot}")
    renewer.start()
    try:
        yield renewer
    finally:
        renewer.stop.set()
        release(records, lease_id)


def release(records: SlotRecords, lease_id: UUID) -> None:
    """Give the slot back and drop the record; when the server cannot be reached the record stays, and
    the next run settles it (this process is gone by then)."""
    try:
        give_back(lease_id)
    except Exception as exc:
        print(f"training slot {records.slot}: could not release lease {lease_id} ({exc}); the next run frees it")
        return
    (records.dir / f"{lease_id}.json").unlink(missing_ok=True)
