"""Real servers on loopback for the tests, each started and stopped by the test that needs it: an MLflow
tracking server, a Prefect server, and a throwaway PostgreSQL 15 cluster."""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pytest

from tests.conftest import free_port, wait_for_http

PG_VERSION = "15"


def _spawn(cmd: list[str], env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,  # stopped with everything it started (uvicorn, gunicorn workers)
        env=None if env is None else {**os.environ, **env},
    )


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)


@contextmanager
def mlflow_server(backend_store_uri: str, artifacts_dir: Path):
    """`mlflow server` with proxied artifacts (clients upload through the server); yields its URL."""
    port = free_port()
    proc = _spawn(
        [
            sys.executable,
            "-m",
            "mlflow",
            "server",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--backend-store-uri",
            backend_store_uri,
            "--artifacts-destination",
            str(artifacts_dir),
            "--workers",
            "1",
        ],
        # no job runner: seven huey consumers for MLflow's GenAI jobs, which ganpipe never submits (~15 s of CPU)
        {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
    )
    try:
        wait_for_http(proc, port, "/health", timeout_s=120)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


@contextmanager
def prefect_server(home: Path, database_url: str | None = None):
    """`ganpipe server` (Prefect's server) with its own PREFECT_HOME, on SQLite there or on `database_url`
    (`postgresql+asyncpg://...`); yields its API URL."""
    port = free_port()
    env = {"PREFECT_HOME": str(home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    if database_url:
        env["PREFECT_API_DATABASE_CONNECTION_URL"] = database_url
    proc = _spawn([sys.executable, "-m", "ganpipe", "server", "--port", str(port)], env)
    try:
        wait_for_http(proc, port, "/api/health", timeout_s=180)
        yield f"http://127.0.0.1:{port}/api"
    finally:
        _stop(proc)


def pg_tool(name: str) -> str | None:
    """A PostgreSQL program: on PATH, or where Debian's `postgresql` package puts it."""
    found = shutil.which(name)
    if found:
        return found
    debian = Path(f"/usr/lib/postgresql/{PG_VERSION}/bin/{name}")
    return str(debian) if debian.exists() else None


@contextmanager
def postgres(databases: tuple[str, ...]):
    """A PostgreSQL cluster in a temp dir, listening on 127.0.0.1 only, trust authentication for user
    `postgres`, with `databases` created; yields `host:port`. initdb refuses to run as root: as root it runs
    as the `postgres` system user (`runuser`). Skipped when PostgreSQL is not installed, unless
    GANPIPE_REQUIRE_POSTGRES=1 (CI)."""
    missing = [t for t in ("initdb", "pg_ctl", "createdb") if pg_tool(t) is None]
    if missing:
        why = f"PostgreSQL is not installed here ({', '.join(missing)} missing: apt-get install -y postgresql)"
        if os.environ.get("GANPIPE_REQUIRE_POSTGRES"):
            pytest.fail(why)
        pytest.skip(why)
    as_user: list[str] = []
    directory = Path(tempfile.mkdtemp(prefix="ganpipe-pg-"))  # under /tmp: reachable by the postgres user
    if os.geteuid() == 0:
        user = pwd.getpwnam("postgres")
        os.chown(directory, user.pw_uid, user.pw_gid)
        as_user = ["runuser", "-u", "postgres", "--"]
    data, port = directory / "data", free_port()

    def pg(*cmd: str) -> None:
        proc = subprocess.run([*as_user, pg_tool(cmd[0]), *cmd[1:]], capture_output=True, text=True)
        if proc.returncode != 0:
            raise AssertionError(
                f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}"
            )

    try:
        pg("initdb", "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8")
        options = f"-p {port} -k {directory} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        pg("pg_ctl", "-D", str(data), "-o", options, "-l", str(directory / "log"), "-w", "start")
        try:
            for db in databases:
                pg("createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "postgres", db)
            yield f"127.0.0.1:{port}"
        finally:
            pg("pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop")
    finally:
        shutil.rmtree(directory, ignore_errors=True)


SSHD = Path("/usr/sbin/sshd")


@contextmanager
def ssh_server(directory: Path):
    """OpenSSH's sshd on 127.0.0.1 for the current user, key authentication only; yields (port, the path of
    the client key it accepts). Skipped when openssh-server is missing or the user is not root
    (sshd's privilege separation), unless GANPIPE_REQUIRE_SSH=1 (CI)."""
    why = "" if SSHD.exists() else f"{SSHD} is missing (apt-get install -y openssh-server)"
    why = why or ("" if os.geteuid() == 0 else "sshd on loopback needs root here")
    if why:
        if os.environ.get("GANPIPE_REQUIRE_SSH"):
            pytest.fail(why)
        pytest.skip(why)
    directory.mkdir(parents=True, exist_ok=True)
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(directory / key)], check=True)
    (directory / "authorized_keys").write_text((directory / "client.pub").read_text())
    port = free_port()
    config = directory / "sshd_config"
    config.write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {directory / 'host'}\n"
        f"AuthorizedKeysFile {directory / 'authorized_keys'}\nPidFile {directory / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nPubkeyAuthentication yes\n"
        "PermitRootLogin prohibit-password\nStrictModes no\nUsePAM no\nSubsystem sftp internal-sftp\n"
    )
    Path("/run/sshd").mkdir(exist_ok=True)  # sshd's privilege separation directory
    proc = _spawn([str(SSHD), "-D", "-e", "-f", str(config)])
    try:
        import socket
        import time

        deadline = time.monotonic() + 30
        while True:
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"sshd did not start:\n{proc.stdout.read()[-3000:]}")
            time.sleep(0.1)
        yield port, directory / "client"
    finally:
        _stop(proc)
