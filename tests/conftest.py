"""Shared fixtures: tiny params, throwaway projects (git + DVC) and one Prefect test harness."""

from __future__ import annotations

import atexit
import contextlib
import copy
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
import yaml

from tests.ordering import order
from tests.projects import copy_project  # noqa: F401 (tests import it from here)
from tests.sessions import keep_prefect_template_in, once_per_session, seed_prefect_home

REPO = Path(__file__).resolve().parents[1]

# Prefect's own home (its temporary server's database, profiles) for this test process alone, set before
# any test module imports Prefect: the tests never read or change the user's ~/.prefect, and parallel
# test processes (`pytest -n`) never share one SQLite database.
os.environ["PREFECT_HOME"] = tempfile.mkdtemp(prefix="ganpipe-test-prefect-")
atexit.register(shutil.rmtree, os.environ["PREFECT_HOME"], True)
# One intra-op thread per test process and per process it starts (set before anything imports torch):
# the tests' networks are tiny (as fast on one thread), and several processes each spinning up a thread per
# core on 2 cores slow each other down several-fold.
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")
# Prefect configures its logging once per process, when first needed, and its console handler keeps the
# sys.stderr of that moment. Configured first inside a test that captures output (capsys, `run_cli`), it kept
# that test's capture stream, closed when the test ended: every later flow run of the process then failed on
# "I/O operation on closed file" (the handler's error, logged again through the same handler: in the end a
# RecursionError). Configured here, after PREFECT_HOME, it keeps the session's stream.
from prefect.logging.configuration import ensure_logging_setup  # noqa: E402

ensure_logging_setup()

# Small enough for seconds on 2 CPU cores; same structure as the shipped params.yaml.
TINY_OVERRIDES = {
    "data": {"resolution": 16},
    "model": {"z_dim": 16, "g_channels": 8, "d_channels": 8},
    "train": {
        "batch_size": 32,
        "lr": 0.0002,  # the tests' tiny runs keep the rate they were written with (params.yaml's is for 200 kimg)
        "total_kimg": 0.256,
        "snapshot_kimg": 0.128,
        "log_every_steps": 2,
        "grid_size": 16,
        "snapshot_kid_images": 32,
        "snapshot_extractor": "tiny",
        "collapse_after_kimg": 1.0,  # a 0.256-kimg G is still near-constant
        "augment": False,  # DiffAugment pays off over many kimg; test_engine covers it
        "ema_rampup": None,
    },  # 8 steps: without ramp-up G_ema stays near the (diverse) initial G
    "eval": {
        "extractor": "tiny",
        "num_real": 120,
        "num_fake": 100,
        "batch_size": 40,
        "kid_subset_size": 50,
        "kid_subsets": 5,
        "bootstrap": 20,
    },
}


def pytest_collection_modifyitems(config, items):
    """The slow tests first, the longest of them first (tests/ordering.py)."""
    order(config, items)


def shipped_params() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def tiny_params_dict(**section_overrides: dict) -> dict:
    raw = shipped_params()
    for section, values in {**TINY_OVERRIDES}.items():
        raw[section].update(values)
    for section, values in section_overrides.items():
        raw[section].update(values)
    return raw


@pytest.fixture(autouse=True, scope="session")
def _quiet_env(tmp_path_factory, pytestconfig):
    # A private cache (reference statistics, generated features): runs do not see each other's entries.
    os.environ["GANPIPE_CACHE_DIR"] = str(tmp_path_factory.mktemp("ganpipe-cache"))
    os.environ["GANPIPE_DVC_REMOTE"] = str(tmp_path_factory.mktemp("dvc-remote"))  # where flows push data
    os.environ.update(
        MLFLOW_DISABLE_TELEMETRY="true",
        DO_NOT_TRACK="1",
        DVC_NO_ANALYTICS="1",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    # Stage commands run as `ganpipe ...` from DVC: resolve them in this interpreter's environment.
    os.environ["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    # Prefect's database at its schema head, built when a test first needs a Prefect server, for the harness,
    # this process's PREFECT_HOME and the tests' own homes (`seed_prefect_home`)
    keep_prefect_template_in(Path(pytestconfig.cache.mkdir("ganpipe-prefect-db")))
    # One warm server (ganpipe/warmstart.py) for every `ganpipe` stage process the tests start, directly or
    # through DVC and flows, as `ganpipe run` starts one for its stages: imported once for the session
    # instead of 5-9 s of imports and teardown in each of hundreds of processes. tests/test_warmstart.py
    # checks that a stage behaves the same started warm and cold; GANPIPE_WARM_START=0 runs them all cold.
    # Not for `make test-fast` (`-m "not slow"`): its tests run in-process, and the server's imports would
    # cost each test process seconds of its 2 cores.
    from ganpipe.warmstart import warm_server

    with warm_server() if pytestconfig.option.markexpr != "not slow" else contextlib.nullcontext():
        yield


@pytest.fixture
def tiny_raw() -> dict:
    return copy.deepcopy(tiny_params_dict())


@pytest.fixture
def tiny(tiny_raw):
    from ganpipe.core.params import parse_params

    return parse_params(tiny_raw)


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_http(proc: subprocess.Popen, port: int, path: str, timeout_s: float = 180) -> None:
    """Poll GET http://127.0.0.1:port/path until it answers 200; fail with the server's output if the
    process exits or the time runs out."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("GET", path)
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            pytest.fail(f"server on port {port} did not come up:\n{proc.stdout.read()[-3000:]}")
        time.sleep(0.5)


def run(cmd: list[str], cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def make_project(root: Path, raw_params: dict) -> Path:
    """A fresh git + DVC project with this repo's stage graph and code, and the given params."""
    root.mkdir(parents=True, exist_ok=True)
    shutil.copytree(REPO / "ganpipe", root / "ganpipe", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    shutil.copytree(REPO / "raw", root / "raw")  # data.path: a dependency of the prepare stage
    shutil.copy(REPO / ".gitignore", root / ".gitignore")
    (root / "params.yaml").write_text(yaml.safe_dump(raw_params, sort_keys=False))
    git = ["git", "-c", "user.email=test@example.com", "-c", "user.name=test"]
    run(["git", "init", "-q", "-b", "main"], root)
    run([sys.executable, "-m", "dvc", "init", "-q"], root)
    run([sys.executable, "-m", "dvc", "config", "core.analytics", "false"], root)
    run(git + ["add", "-A"], root)
    run(git + ["commit", "-q", "-m", "init"], root)
    return root


@pytest.fixture
def project(tmp_path, tiny_raw) -> Path:
    return make_project(tmp_path / "project", tiny_raw)


def mlflow_client(root: Path):
    """A client on a project's store that leaves MLflow's global tracking URI alone."""
    from mlflow.tracking import MlflowClient

    from ganpipe.core.tracking import tracking_uri

    uri = tracking_uri(root)
    return MlflowClient(tracking_uri=uri, registry_uri=uri)


def as_new_training(lay) -> str:
    """Make the project's outputs look like another training's: a new MLflow run in the same experiment,
    named in run.json. `register` reuses the version of a training it already registered (a retry), so
    tests that register several generators from one project give each its own training run."""
    info = json.loads(lay.run_info_path.read_text())
    client = mlflow_client(lay.root)
    run = client.create_run(client.get_run(info["mlflow_run_id"]).info.experiment_id)
    client.set_terminated(run.info.run_id)
    lay.run_info_path.write_text(json.dumps({**info, "mlflow_run_id": run.info.run_id}))
    return run.info.run_id


def last_conv_key(state: dict) -> str:
    """The generator's output layer weight (zeroing it gives flat grey images)."""
    return [k for k in state if k.endswith("weight") and state[k].ndim == 4][-1]


def build_trained(root: Path, **section_overrides: dict):
    """Prepare, reference statistics and a tiny training run in-process; returns (params, layout)."""
    from ganpipe.core.params import parse_params
    from ganpipe.core.paths import layout
    from ganpipe.data.prepare import prepare
    from ganpipe.evaluation.features import build_extractor
    from ganpipe.evaluation.refstats import compute_ref_stats
    from ganpipe.training.loop import train

    raw = tiny_params_dict(**section_overrides)
    p = parse_params(raw)
    lay = layout(root)
    lay.root.mkdir(parents=True, exist_ok=True)
    lay.params_path.write_text(yaml.safe_dump(raw, sort_keys=False))
    prepare(p.data, lay.prepared_dir)
    compute_ref_stats(build_extractor(p.eval), p.eval.num_real, p.eval.batch_size, lay.prepared_dir, lay.ref_stats_path)
    train(p, lay.prepared_dir, lay.models_dir, lay.root)
    return p, lay


def _built_once(tmp_path_factory, name: str, **section_overrides: dict):
    """`build_trained(...)` once for all test processes (`once_per_session`): (params, layout)."""
    from ganpipe.core.params import load_params
    from ganpipe.core.paths import layout

    def build(directory: Path) -> str:
        return str(build_trained(directory / "project", **section_overrides)[1].root)

    lay = layout(Path(once_per_session(tmp_path_factory, name, build)))
    return load_params(lay.params_path), lay


@pytest.fixture(scope="session")
def _trained_once(tmp_path_factory):
    """The tiny training, once per session. Tests use copies of it (`trained_project`), never this one."""
    return _built_once(tmp_path_factory, "trained")


@pytest.fixture
def trained_project(_trained_once, tmp_path_factory):
    """A trained project of this test's own: tests register versions, move aliases and rewrite its files,
    and no other test sees it. (params, layout), like `build_trained`."""
    p, lay = _trained_once
    return p, copy_project(lay.root, tmp_path_factory.mktemp("trained-copy") / "project")


def _reproduce(directory: Path) -> list[str]:
    root = make_project(directory / "project", tiny_params_dict())
    return [str(root), run([sys.executable, "-m", "dvc", "repro"], root).stdout]


@pytest.fixture(scope="session")
def _reproduced_once(tmp_path_factory):
    """A tiny project after `dvc repro` (git + DVC, every stage in dvc.lock, v1 the champion), built
    once for all test processes; returns (root, the output of that `dvc repro`). Tests use copies
    (`reproduced_project`), never this one."""
    root, stdout = once_per_session(tmp_path_factory, "reproduced", _reproduce)
    return Path(root), stdout


@pytest.fixture
def reproduced_project(_reproduced_once, tmp_path_factory) -> Path:
    """A copy of the reproduced project of this test's own: `dvc status` finds nothing to do, so a
    pipeline run on it is quick (Skipped) until the test changes something."""
    src, _ = _reproduced_once
    # .dvc/tmp: DVC's caches of hashes by inode and of its lock holders, rebuilt on use
    skip = lambda d, names: ["tmp"] if Path(d).name == ".dvc" else []  # noqa: E731
    return copy_project(src, tmp_path_factory.mktemp("reproduced-copy") / "project", ignore=skip).root


@pytest.fixture(scope="session")
def _conditional_once(tmp_path_factory):
    return _built_once(tmp_path_factory, "conditional", model={"conditional": True})


@pytest.fixture(scope="module")
def conditional_project(_conditional_once, tmp_path_factory):
    """A tiny class-conditional generator trained on the digits (10 classes), copied for each module
    (the modules register it)."""
    p, lay = _conditional_once
    return p, copy_project(lay.root, tmp_path_factory.mktemp("conditional-copy") / "project")


@pytest.fixture(scope="session")
def prefect_harness():
    """Prefect's test harness (its API server in a subprocess on a temporary SQLite database), started
    on a copy of the migrated database: the harness names its directory with `mkdtemp()`, given here."""
    from unittest import mock

    from prefect.testing import utilities

    directory = seed_prefect_home(Path(tempfile.mkdtemp(prefix="ganpipe-test-harness-")), "prefect-test.db")
    seed_prefect_home(Path(os.environ["PREFECT_HOME"]))  # the temporary servers of `ganpipe run`s without it
    with contextlib.ExitStack() as stack:
        with mock.patch.object(utilities, "mkdtemp", lambda: str(directory)):
            stack.enter_context(utilities.prefect_test_harness(server_startup_timeout=120))
        yield


@pytest.fixture
def webhook():
    """A failure webhook on loopback: (its URL, the JSON bodies POSTed to it so far)."""
    received: list[dict] = []

    class Hook(BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802
            received.append(json.loads(self.rfile.read(int(self.headers["Content-Length"]))))
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args):
            pass

    server = HTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/hook", received
    finally:
        server.shutdown()
        server.server_close()


def nightly_deployment(client):
    """Deployment training-pipeline/nightly on the test server, or None."""
    from prefect.exceptions import ObjectNotFound

    try:
        return client.read_deployment_by_name("training-pipeline/nightly")
    except ObjectNotFound:
        return None


def forget_nightly(client) -> None:
    """Remove deployment training-pipeline/nightly and the watchdog's automations from the shared test
    server: its other flows send heartbeats at Prefect's default 180 s, longer than a test's crash window."""
    from ganpipe.orchestration.watchdog import AUTOMATION, NOTIFIER

    for a in [*client.read_automations_by_name(AUTOMATION), *client.read_automations_by_name(NOTIFIER)]:
        client.delete_automation(a.id)
    if (dep := nightly_deployment(client)) is not None:
        client.delete_deployment(dep.id)


@pytest.fixture
def mlflow_server(tmp_path):
    """An `mlflow server` on a SQLite store in tmp_path (proxied artifacts): (its URL, tmp_path)."""
    from tests.servers import mlflow_server as server

    with server(f"sqlite:///{tmp_path / 'server.db'}", tmp_path / "server-artifacts") as url:
        yield url, tmp_path


@pytest.fixture
def run_cli(capsys):
    """`ganpipe ARGV...` in this process (tests/cli_inprocess.py): a function
    `(*argv) -> (exit code, stdout, stderr)` for the CLI's error paths."""
    from tests.cli_inprocess import run_in_process

    return lambda *argv: run_in_process(capsys, *argv)
