"""CLI surface: help, the MLflow UI on loopback."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time

from tests.conftest import REPO, free_port


def test_help_lists_every_stage_and_command():
    out = subprocess.run([sys.executable, "-m", "ganpipe", "--help"], capture_output=True, text=True, check=True).stdout
    for cmd in ["prepare", "ref-stats", "train", "evaluate", "register", "run", "generate", "ui"]:
        assert cmd in out


def test_ui_serves_the_project_store_on_loopback(tmp_path):
    (tmp_path / "params.yaml").write_text((REPO / "params.yaml").read_text())
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(tmp_path), "ui", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        deadline, status = time.time() + 90, None
        while time.time() < deadline and proc.poll() is None:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)  # loopback only
                conn.request("GET", "/health")
                status = conn.getresponse().status
                conn.close()
                break
            except OSError:
                time.sleep(1)
        assert status == 200, proc.stdout.read() if proc.poll() is not None else "no answer"
        assert (tmp_path / "mlflow.db").exists()  # the UI opened the project's own SQLite store
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # mlflow ui and its server workers
        proc.wait(timeout=30)
