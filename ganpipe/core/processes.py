"""Is the process that left this (a temp output, a slot's lease, a sweep's journal) still running?

A pid alone is not an identity: pids are reused. Where a record can carry it, the process's start time
goes with the pid (`process_started`), and `alive(pid, started)` is true only for that same process. A
zombie (killed, not yet reaped by its parent) counts as gone: it writes and holds nothing any more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of /proc/<pid>/stat after the command name (Linux); None elsewhere or when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat[stat.rindex(")") + 2 :].split()


def process_started(pid: int) -> str | None:
    """When process `pid` started, as an opaque token (clock ticks since boot on Linux); None when unknown."""
    fields = _stat_fields(pid)
    return fields[19] if fields and len(fields) > 19 else None  # field 22 of stat: starttime


def alive(pid: int, started: str | None = None) -> bool:
    """Whether process `pid` runs (and, when `started` is given and can be checked, is the same process)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process: it exists
    fields = _stat_fields(pid)
    if fields is None:
        return True  # no /proc: kill(0) is all there is
    if fields[0] in "ZX":
        return False
    return started is None or fields[19] == started


def this_process() -> dict:
    """A record of the calling process for a file that outlives it: {pid, started, since}; `alive(pid,
    started)` later tells whether it still runs."""
    pid = os.getpid()
    return {"pid": pid, "started": process_started(pid), "since": time.time()}


def local_time(seconds: float) -> str:
    """A record's `since` as people read it: local wall time to the second."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


@contextlib.contextmanager
def interrupts_raise() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in the main thread while inside (as SIGINT does), so that cleanup
    runs; the previous handler is restored on exit. (A server that handles SIGTERM itself and raises it
    again when it has shut down, as uvicorn does, ends in this exception too instead of dying mid-`finally`.)"""

    def raise_interrupt(signum, frame):
        raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")

    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
