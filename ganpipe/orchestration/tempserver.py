"""The Prefect API of one `ganpipe run` when no PREFECT_API_URL is set: a temporary server of our own.

Prefect starts a temporary server itself in that case, but as a plain child process: a Ctrl-C or a
`timeout` (which signals its whole process group) stopped the server at the same moment as the run, so
the run could no longer release its training slot nor record how it ended ("Failed to release
concurrency lease ... during cleanup"). This one is the same server (Prefect's API app with its
SQLite database under PREFECT_HOME, no UI, no services), started in its own session so that signals
for the run's process group do not reach it, and stopped only after the run has cleaned up. The kernel
stops it when the run's process dies (PR_SET_PDEATHSIG), so a SIGKILLed run leaves no server behind.

`ganpipe.core.processes.interrupts_raise()` turns SIGTERM into the same exception as Ctrl-C, so
`finally` blocks (the slot's release, the flow run's final state) run for both.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ganpipe.core.leases import TEMPORARY_SERVER_ENV
from ganpipe.core.processes import die_with_parent, stop
from ganpipe.orchestration.slots import temporary_identity

STARTUP_TIMEOUT_S = 120.0  # a first start creates the database (migrations): seconds, more on a loaded machine


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _command(port: int) -> list[str]:
    import prefect

    return [
        sys.executable,
        "-m",
        "uvicorn",
        "--app-dir",
        str(Path(prefect.__file__).parent.parent),
        "--factory",
        "prefect.server.api.server:create_app",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--log-level",
        "error",
        "--lifespan",
        "on",
    ]


def _wait_healthy(proc: subprocess.Popen, url: str) -> None:
    """Poll GET /health until it answers 200. One client for all the polls: a new httpx client per poll
    built a TLS context each time (the CA bundle parsed anew, ~30 ms of CPU), about 2 s of CPU per start
    taken from the server starting on the same cores."""
    import httpx

    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    with httpx.Client(timeout=5) as client:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"the temporary Prefect server exited with code {proc.returncode} while starting")
            with contextlib.suppress(httpx.HTTPError):
                if client.get(f"{url}/health").status_code == 200:
                    return
            time.sleep(0.1)
    raise RuntimeError(f"the temporary Prefect server did not answer on {url} within {STARTUP_TIMEOUT_S:.0f} s")


@contextlib.contextmanager
def prefect_api(while_starting: Callable[[], object] = lambda: None) -> Iterator[str | None]:
    """Yield the API URL the run talks to: PREFECT_API_URL when set (yields it, starts nothing), else a
    temporary server that lives until the block has exited. `while_starting` runs while the server
    starts (importing the flow there overlaps the two: seconds of each `ganpipe run` on 2 cores)."""
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_SERVER_ALLOW_EPHEMERAL_MODE,
        get_current_settings,
        temporary_settings,
    )

    if url := PREFECT_API_URL.value():
        while_starting()
        yield url
        return
    if not sys.platform.startswith("linux"):
        while_starting()
        yield None  # Prefect's own temporary server (no PR_SET_PDEATHSIG to tie a detached one to this process)
        return
    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    env = {
        **os.environ,
        **get_current_settings().to_environment_variables(exclude_unset=True),  # as Prefect passes them
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
    }
    env.pop("PREFECT_API_URL", None)
    proc = subprocess.Popen(_command(port), env=env, stdin=subprocess.DEVNULL, preexec_fn=die_with_parent)
    saved = os.environ.get(TEMPORARY_SERVER_ENV)
    try:
        while_starting()
        _wait_healthy(proc, url)
        os.environ[TEMPORARY_SERVER_ENV] = temporary_identity()
        with temporary_settings(updates={PREFECT_API_URL: url, PREFECT_SERVER_ALLOW_EPHEMERAL_MODE: False}):
            yield url
    finally:
        _drain_prefect_workers()
        if saved is None:
            os.environ.pop(TEMPORARY_SERVER_ENV, None)
        else:
            os.environ[TEMPORARY_SERVER_ENV] = saved
        stop(proc, 10)


def _drain_prefect_workers() -> None:
    """Send the logs and events Prefect still holds before the server stops (what its test harness
    does): at exit they would be retried against a stopped server for over a minute."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    for worker in (APILogWorker, EventsWorker):
        with contextlib.suppress(Exception):
            worker.drain_all(timeout=30)
