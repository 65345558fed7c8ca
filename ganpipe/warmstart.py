"""Stage commands started warm: one process imports torch, MLflow and the stages once, and each
`ganpipe <stage>` that DVC starts runs in a fork of it instead of importing them all again.

Every DVC stage is a new process, and importing torch, the optimiser's torch._dynamo, MLflow and its SQL
store costs 6-9 s of each on 2 cores: more than the whole work of a small stage. `ganpipe run` and
`ganpipe sweep` start a warm server for the run (`warm_server()`, Linux) and name its socket in
GANPIPE_WARM_SOCKET. A stage command started with that variable (the client, which imports none of
that) sends its arguments, working directory, environment, umask and standard streams (the file
descriptors themselves) to the server; the server forks; the fork takes them on and runs the command;
the client waits, passes on the signals it gets (Ctrl-C, SIGTERM) and exits as the fork did, with its
code or of its signal. DVC, Prefect and `timeout` see the process they started behave as a cold one.

The fork is the process the cold start would be: the client's environment (read again by everything
the fork imports from then on), random seeds drawn anew, the temp dir and time zone looked up again. Prefect is not imported by the server: it reads
its settings once, at import. A fork dies with its client (a SIGKILLed client is a killed stage: the
server kills its fork at once) and with the server (PR_SET_PDEATHSIG).

A command starts cold (in the client, as without a server) when no server answers, when a ganpipe
source file changed after the server imported it (it would run the old code), when its OMP_NUM_THREADS
or MKL_NUM_THREADS differs from the server's (torch reads them once, when it loads), under torchrun, or
for commands that are not stages. GANPIPE_WARM_START=0 turns it off.

The `dvc` commands of a run (`status`, `repro --single-item`, `push`, `plots show`, `exp show`:
ganpipe.core.dvc.WARM_DVC) go the same way, through `python -P -m ganpipe.warmstart dvc ARGS` (the server
has DVC imported). Each fork leads a process group of its own and the client passes its signals to the
whole group, so the stage processes a warm `dvc repro` starts get a Ctrl-C or a `timeout` of the run as they
would cold, in the caller's group; a SIGKILLed client has its fork's whole group SIGKILLed.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator

from ganpipe.core.processes import WARM_SOCKET_ENV, die_with_parent, exit_now, stop

SOCKET_ENV = WARM_SOCKET_ENV
SWITCH_ENV = "GANPIPE_WARM_START"  # "0": every command starts cold
COMMANDS = frozenset({"prepare", "ref-stats", "train", "evaluate", "register", "generate"})
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGUSR1, signal.SIGUSR2)
LAUNCHER_ENV = ("RANK", "LOCAL_RANK", "TORCHELASTIC_RUN_ID")  # a torchrun worker: torchrun watches that pid
STOP_GRACE_S = 60.0  # a stopped server waits this long for its forks (their clients pass on the signal)
HEADER = struct.Struct("!I")


# ---- the client: a `ganpipe` process started with GANPIPE_WARM_SOCKET ----


def run_warm(argv: list[str], program: str = "ganpipe") -> int | None:
    """Run `ganpipe <argv>` (or `dvc <argv>`) in the warm server and return its exit code (or die of the
    fork's signal); None when this command should start cold."""
    path = os.environ.get(SOCKET_ENV)
    if not path or os.environ.get(SWITCH_ENV) == "0" or any(k in os.environ for k in LAUNCHER_ENV):
        return None
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.connect(path)
        request = {
            "program": program,
            "argv": argv,
            "argv0": sys.argv[0],
            "cwd": os.getcwd(),
            "env": dict(os.environ),
            "umask": _umask(),
        }
        _send_request(sock, request)
        replies = sock.makefile("rb")
        first = _read(replies)
    except OSError:
        sock.close()
        return None  # no server (a stale variable, the run has ended): start cold
    if first is None or "pid" not in first:
        if first and first.get("cold"):
            print(f"ganpipe: starting cold: {first['cold']}", file=sys.stderr)
        sock.close()
        return None
    pid = first["pid"]
    for sig in FORWARDED:
        signal.signal(sig, lambda signum, frame: forward(pid, signum))
    try:
        last = _read(replies)
    except OSError:
        last = None
    if last is None or "status" not in last:
        print("ganpipe: the warm-start server stopped while the command ran", file=sys.stderr)
        return 1
    code = os.waitstatus_to_exitcode(last["status"])
    if code < 0:  # the fork died of a signal: so does this process, for whoever waits on it
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
        return 128 - code
    return code


def forward(pid: int, signum: int) -> None:
    """Signal fork `pid` and what it started: each fork leads a process group of its own (the server makes it
    one before it answers), as the cold command and its children share the caller's group, where a Ctrl-C,
    a `timeout` or a kill of the whole tree reaches them all (a `dvc repro` fork's stage processes too)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _send_request(sock: socket.socket, request: dict) -> None:
    payload = json.dumps(request).encode()
    fds, opened = [], []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
            fds.append(fd)
        except OSError:  # a closed standard stream: the fork gets /dev/null there, as a redirect would
            opened.append(os.open(os.devnull, os.O_RDWR))
            fds.append(opened[-1])
    try:
        socket.send_fds(sock, [HEADER.pack(len(payload))], fds)
        sock.sendall(payload)
    finally:
        for fd in opened:
            os.close(fd)


def _read(stream) -> dict | None:
    line = stream.readline()
    return json.loads(line) if line else None


# ---- the protocol ----


def read_request(conn: socket.socket) -> tuple[dict, list[int]] | None:
    """A client's request and its standard streams; None for a connection closed without one (a probe)."""
    head, fds, flags, _ = socket.recv_fds(conn, HEADER.size, 3)
    if not head:
        return None
    if flags & socket.MSG_CTRUNC or len(fds) != 3:
        for fd in fds:
            os.close(fd)
        raise OSError("the request's file descriptors did not arrive")
    while len(head) < HEADER.size:
        head += conn.recv(HEADER.size - len(head))
    (size,) = HEADER.unpack(head)
    payload = b""
    while len(payload) < size:
        chunk = conn.recv(size - len(payload))
        if not chunk:
            raise OSError("the request ended early")
        payload += chunk
    return json.loads(payload), fds


def reply(conn: socket.socket, message: dict) -> None:
    with contextlib.suppress(OSError):
        conn.sendall(json.dumps(message).encode() + b"\n")


# ---- the run's server ----


def _answers(path: str | None) -> bool:
    if not path:
        return False
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(path)
        except OSError:
            return False
    return True


@contextlib.contextmanager
def warm_server() -> Iterator[str | None]:
    """A warm server for the `ganpipe` stage commands started inside the block (GANPIPE_WARM_SOCKET);
    yields its socket's path. Nothing is started where one already answers at GANPIPE_WARM_SOCKET (a
    sweep's runs, a test session's), where GANPIPE_WARM_START=0, or off Linux."""
    current = os.environ.get(SOCKET_ENV)
    if _answers(current):
        yield current
        return
    if os.environ.get(SWITCH_ENV) == "0" or not sys.platform.startswith("linux"):
        yield None
        return
    directory = tempfile.mkdtemp(prefix="ganpipe-warm-")  # 0700: this user's processes only
    path = os.path.join(directory, "socket")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        listener.bind(path)
        listener.listen(64)  # clients wait here while the server imports
        proc = subprocess.Popen(
            [sys.executable, "-P", "-m", "ganpipe.warmserver", str(listener.fileno())],
            pass_fds=[listener.fileno()],
            stdin=subprocess.DEVNULL,
            preexec_fn=die_with_parent,
        )
    except BaseException:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    finally:
        listener.close()
    os.environ[SOCKET_ENV] = path
    try:
        yield path
    finally:
        if current is None:
            os.environ.pop(SOCKET_ENV, None)
        else:
            os.environ[SOCKET_ENV] = current
        stop(proc, STOP_GRACE_S + 10)
        shutil.rmtree(directory, ignore_errors=True)


# ---- `dvc` through the warm server (ganpipe.core.dvc.dvc_command) ----


def dvc_main(argv: list[str]) -> int:
    """`python -P -m ganpipe.warmstart dvc ARGS`: `dvc ARGS` in a fork of the warm server, else here."""
    code = run_warm(argv, program="dvc")
    if code is None:
        from dvc.cli import main

        code = main(argv)
    return code


if __name__ == "__main__":
    if sys.argv[1:2] != ["dvc"]:
        sys.exit("usage: python -P -m ganpipe.warmstart dvc ARGS...")
    exit_now(dvc_main(sys.argv[2:]))
