"""Is the process that left this (a temp output, a slot's lease, a sweep's journal) still running?

A pid alone is not an identity: pids are reused. Where a record can carry it, the process's start time
goes with the pid (`process_started`), and `alive(pid, started)` is true only for that same process. A
zombie (killed, not yet reaped by its parent) counts as gone: it writes and holds nothing any more.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

# The warm server's socket (ganpipe.warmstart): set by `ganpipe run` / `ganpipe sweep` for the processes they start
WARM_SOCKET_ENV = "GANPIPE_WARM_SOCKET"


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


def die_with_parent(sig: int = signal.SIGTERM, new_session: bool = True) -> None:
    """In a child process (a `preexec_fn`, or just after a fork): `sig` when the parent dies (Linux's
    PR_SET_PDEATHSIG), and a session of its own unless `new_session` is False (signals for the parent's
    process group, a terminal's Ctrl-C, then do not reach it)."""
    import ctypes

    parent = os.getppid()
    if new_session:
        os.setsid()
    ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, sig)  # 1 = PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before the line above
        os.kill(os.getpid(), sig)


def stop(proc: subprocess.Popen, timeout_s: float) -> None:
    """SIGTERM a child process and wait for it; SIGKILL it if it has not ended within `timeout_s`."""
    proc.terminate()
    try:
        proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def exit_now(code: int) -> NoReturn:
    """End this process with `code` as the interpreter would (threads joined, exit handlers run, output
    flushed) but without tearing its modules down afterwards: with torch and MLflow imported that
    teardown takes 2-2.5 s of every stage process on 2 cores, freeing what the process's end frees anyway.
    (CPython's own shutdown steps; where they are missing the interpreter ends the usual way.)"""
    import atexit
    import threading

    shutdown, run_exit_handlers = getattr(threading, "_shutdown", None), getattr(atexit, "_run_exitfuncs", None)
    if shutdown is None or run_exit_handlers is None:
        sys.exit(code)
    shutdown()  # what Python does first: threading's exit hooks, then join the non-daemon threads
    run_exit_handlers()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    os._exit(code)


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
