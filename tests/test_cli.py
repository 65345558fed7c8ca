"""CLI surface: help, the MLflow UI on loopback."""

from __future__ import annotations

import argparse
import os
import re
import signal
import subprocess
import sys

import pytest
import yaml

from ganpipe.cli import build_parser
from tests.conftest import REPO, free_port, wait_for_http

COMMANDS = (
    "prepare ref-stats train evaluate register run sweep data compare history promote rollback generate serve "
    "server schedule watchdog ui"
).split()


def help_commands(text: str) -> list[str]:
    """The commands that `ganpipe --help` lists: the entries under COMMAND, not words of their help texts."""
    section = text.split("\n  COMMAND\n", 1)[1].split("\n\n", 1)[0]
    return re.findall(r"^ {4}(\S+)", section, flags=re.MULTILINE)


def test_help_lists_every_stage_and_command():
    env = {**os.environ, "COLUMNS": "100"}  # argparse wraps to the terminal width
    proc = subprocess.run(
        [sys.executable, "-m", "ganpipe", "--help"], capture_output=True, text=True, env=env, check=True
    )
    listed = help_commands(proc.stdout)
    stages = [s["cmd"].split()[1] for s in yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"].values()]
    missing = {*COMMANDS, *stages} - set(listed)  # each DVC stage runs `ganpipe <stage>`
    assert not missing, f"`ganpipe --help` does not list {sorted(missing)}"
    # and nothing the parser accepts is left out of the help (as a subcommand with help=SUPPRESS would be)
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    assert listed == list(sub.choices)


@pytest.mark.slow
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
        # MLflow's first start migrates a new SQLite store: a minute or more on a loaded 2-core machine
        wait_for_http(proc, port, "/health", timeout_s=600)
        assert (tmp_path / "mlflow.db").exists()  # the UI opened the project's own SQLite store
        import psutil

        tree = [" ".join(c.cmdline()) for c in psutil.Process(proc.pid).children(recursive=True)]
        assert len(tree) == 1 and "uvicorn" in tree[0], tree  # one server worker, no job runner
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # mlflow ui and its server workers
        proc.wait(timeout=30)


def test_stage_times_read_as_minutes_and_seconds_with_a_total():
    from ganpipe.orchestration.report import stage_times

    text = stage_times({"prefect start": 21.04, "train": 306.5})
    assert text.splitlines() == [
        "stage times:",
        "  prefect start  21.0 s",
        "  train          5 min  6.5 s",
        "  total          5 min 27.5 s",
    ]
