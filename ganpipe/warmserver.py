"""The warm server (`python -P -m ganpipe.warmserver FD`, started by `ganpipe.warmstart.warm_server`):
imports what the stage processes import, then forks a process for each client's command, which takes on
the client's arguments, directory, environment, umask and standard streams and runs `ganpipe.cli.main`
(or DVC's `main`, for a run's `dvc` commands). Each fork leads a process group of its own.

Forking is safe only while the server has one thread and no CUDA context (tests/test_warmstart.py checks
what PRELOAD leaves behind); Prefect stays unimported (it reads its settings at import). A client that
goes away (killed) has its fork SIGKILLed at once; a server that stops waits for its forks.
"""

from __future__ import annotations

import contextlib
import gc
import os
import selectors
import signal
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import NoReturn

from ganpipe.core.processes import die_with_parent, exit_now
from ganpipe.warmstart import STOP_GRACE_S, forward, read_request, reply

# Read by torch's OpenMP and MKL runtimes when torch loads: a client whose value differs starts cold
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
# What the stage processes import; not Prefect (see above)
PRELOAD = (
    "torch",
    "torch._dynamo",  # torch.optim imports it on an optimiser's first use: 2-4 s
    "mlflow",
    "mlflow.pyfunc",
    "mlflow.store.tracking.sqlalchemy_store",
    "mlflow.store.model_registry.sqlalchemy_store",
    "sklearn.datasets",  # the bundled digits
    "torch_fidelity",  # InceptionV3
    "ganpipe.commands",
    "ganpipe.data.prepare",
    "ganpipe.evaluation.refstats",
    "ganpipe.training.loop",
    "ganpipe.evaluation.evaluate",
    "ganpipe.registry.register",
    "dvc.cli",  # a run's `dvc status`, `repro`, `push`, `plots show`... (ganpipe.core.dvc.WARM_DVC)
    "dvc.cli.parser",
    "dvc.repo",
)


def _source_stamps() -> dict[str, tuple[int, int]]:
    """(mtime, size) of every ganpipe source file imported so far."""
    package = Path(__file__).resolve().parent
    stamps = {}
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None)
        if f and Path(f).resolve().is_relative_to(package):
            st = os.stat(f)
            stamps[f] = (st.st_mtime_ns, st.st_size)
    return stamps


def _changed(stamps: dict[str, tuple[int, int]]) -> str | None:
    for f, stamp in stamps.items():
        try:
            st = os.stat(f)
        except OSError:
            return f
        if (st.st_mtime_ns, st.st_size) != stamp:
            return f
    return None


class Job:
    """A client's command in the fork that runs it."""

    def __init__(self, request: dict, fds: list[int]):
        self.request, self.fds = request, fds

    def run(self) -> NoReturn:
        req = self.request
        for fd, target in zip(self.fds, (0, 1, 2), strict=True):
            os.dup2(fd, target)
        for fd in set(self.fds) - {0, 1, 2}:
            os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        os.umask(req["umask"])
        sys.argv = [req["argv0"], *req["argv"]]
        tempfile.tempdir = None
        time.tzset()
        # (`random` reseeds itself in a fork; numpy's global generator does not)
        if "numpy" in sys.modules:
            sys.modules["numpy"].random.seed()
        # as Python sets them up: stdout line-buffered on a terminal (or with PYTHONUNBUFFERED), stderr always
        sys.stdout.reconfigure(line_buffering=sys.stdout.isatty() or bool(os.environ.get("PYTHONUNBUFFERED")))
        sys.stderr.reconfigure(line_buffering=True)

        if req.get("program") == "dvc":  # a run's `dvc` command (ganpipe.core.dvc.WARM_DVC)
            from dvc.cli import main as dvc_main

            exit_now(dvc_main(req["argv"]))
        from ganpipe.cli import main

        exit_now(main(req["argv"]))


class _Server:
    def __init__(self, listener: socket.socket):
        self.listener = listener
        self.children: dict[int, socket.socket] = {}
        self.stopping = False
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)

    def serve(self) -> Job | None:
        """Fork a job for each request until stopped; returns in a fork only (its job), None in the server."""
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        signal.signal(signal.SIGTERM, self._stop)
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # the run's Ctrl-C reaches stages through their clients
        for name in PRELOAD:
            __import__(name)
        stamps = _source_stamps()
        # What the imports made lives as long as the forks: out of the collector's sight, so that a fork's
        # collections neither walk it (~1 s of CPU per full collection of that heap) nor write to its pages
        # (copy-on-write would duplicate them in every fork)
        gc.collect()
        gc.freeze()
        self.sel.register(self.listener, selectors.EVENT_READ, "accept")
        self.sel.register(self.wake_r, selectors.EVENT_READ, "wake")
        deadline = None
        while True:
            if self.stopping:
                if self.listener.fileno() >= 0:
                    self.sel.unregister(self.listener)
                    self.listener.close()
                if not self.children:
                    return None
                deadline = deadline or time.monotonic() + STOP_GRACE_S
                if time.monotonic() > deadline:
                    for pid in self.children:
                        forward(pid, signal.SIGKILL)
            for key, _ in self.sel.select(timeout=1.0 if self.stopping else None):
                if key.data == "accept":
                    job = self._accept(stamps)
                    if job is not None:
                        return job
                elif key.data == "wake":
                    with contextlib.suppress(BlockingIOError):
                        while os.read(self.wake_r, 512):
                            pass
                elif self._client_gone(key.fileobj):  # a client's connection: readable when it has gone
                    self.sel.unregister(key.fileobj)
                    forward(key.data, signal.SIGKILL)  # its stage was killed with it
            self._reap()

    @staticmethod
    def _client_gone(conn: socket.socket) -> bool:
        try:
            return not conn.recv(64)
        except OSError:
            return True

    def _stop(self, signum, frame) -> None:
        self.stopping = True

    def _accept(self, stamps) -> Job | None:
        conn, _ = self.listener.accept()
        try:
            conn.settimeout(10)
            got = read_request(conn)
        except (OSError, ValueError):
            conn.close()
            return None
        if got is None:
            conn.close()
            return None
        request, fds = got
        cold = None
        if changed := _changed(stamps):
            cold = f"{changed} changed after the warm-start server imported it"
        elif (torch := sys.modules.get("torch")) and torch.cuda.is_initialized():
            cold = "CUDA is initialised in the warm-start server"
        elif differs := [k for k in THREAD_ENV if request["env"].get(k) != os.environ.get(k)]:
            cold = f"{', '.join(differs)} differs from the warm-start server's (read once, when torch loads)"
        if cold:
            reply(conn, {"cold": cold})
            conn.close()
        else:
            pid = os.fork()
            if pid == 0:
                self._become_fork(conn)
                return Job(request, fds)
            with contextlib.suppress(OSError):  # (the fork does it too: whichever runs first)
                os.setpgid(pid, pid)
            self.children[pid] = conn
            conn.settimeout(None)
            reply(conn, {"pid": pid})
            self.sel.register(conn, selectors.EVENT_READ, pid)
        for fd in fds:  # the fork has them now, or the client keeps its own
            os.close(fd)
        return None

    def _become_fork(self, conn: socket.socket) -> None:
        """In a new fork: none of the server's descriptors, handlers or duties."""
        os.setpgid(0, 0)  # a process group of its own: signals reach what it starts (`forward`)
        die_with_parent(signal.SIGKILL, new_session=False)
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGINT, signal.default_int_handler)
        self.sel.close()
        for c in (self.listener, conn, *self.children.values()):
            c.close()
        os.close(self.wake_r)
        os.close(self.wake_w)

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.children.pop(pid, None)
            if conn is not None:
                reply(conn, {"status": status})
                with contextlib.suppress(KeyError, ValueError):
                    self.sel.unregister(conn)
                conn.close()


def _serve_main(argv: list[str]) -> int:
    """`python -P -m ganpipe.warmserver FD`: serve on the listening socket FD (made by `warm_server`)."""
    listener = socket.socket(fileno=int(argv[0]))
    job = _Server(listener).serve()
    if job is not None:
        job.run()
    return 0


if __name__ == "__main__":
    sys.exit(_serve_main(sys.argv[1:]))
