"""Session-wide builds shared by all test processes (`pytest -n`)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path


def once_per_session(tmp_path_factory, name: str, build):
    """`build(directory)`'s JSON result, built once per test session even across test processes
    (`pytest -n`): the first process to get here builds it under a file lock, the others wait and reuse
    it. Per-process session fixtures would each build their own."""
    from filelock import FileLock

    shared = tmp_path_factory.getbasetemp()
    if os.environ.get("PYTEST_XDIST_WORKER"):
        shared = shared.parent  # the run's directory, above each process's own
    done = shared / f"{name}.json"
    with FileLock(str(shared / f"{name}.lock")):
        if not done.exists():
            result = build(shared / name)
            tmp = done.with_suffix(".tmp")
            tmp.write_text(json.dumps(result))
            tmp.replace(done)
    return json.loads(done.read_text())


PREFECT_DB = "prefect.db"  # the database file Prefect's default URL names under PREFECT_HOME
_prefect_cache: list[Path] = []  # where the migrated database is kept: set once per test process


def keep_prefect_template_in(cache_dir: Path) -> None:
    """Where `prefect_template` keeps its database (pytest's cache directory: across sessions)."""
    _prefect_cache[:] = [cache_dir]


def prefect_template() -> Path:
    """A Prefect SQLite database already migrated to the installed Prefect's schema head, built on first
    need and kept across test sessions (by Prefect's version). A new database runs Prefect's 100+
    migrations on its first start: ~8 s of each test server's start on 2 cores, paid by every test
    process's harness and every test's own PREFECT_HOME. Copies start at the head."""
    import prefect
    from filelock import FileLock

    cache_dir = _prefect_cache[0]
    cache_dir.mkdir(parents=True, exist_ok=True)
    template = cache_dir / f"prefect-{prefect.__version__}.db"
    with FileLock(str(template) + ".lock"):
        if not template.exists():
            tmp = template.with_suffix(".tmp")
            tmp.unlink(missing_ok=True)
            env = {
                **os.environ,
                "PREFECT_SERVER_DATABASE_CONNECTION_URL": f"sqlite+aiosqlite:///{tmp}",
                "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
            }
            env.pop("PREFECT_API_URL", None)
            subprocess.run(
                [sys.executable, "-m", "prefect", "server", "database", "upgrade", "-y"],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            tmp.replace(template)
    return template


def seed_prefect_home(home: Path, name: str = PREFECT_DB) -> Path:
    """`home` (a PREFECT_HOME, or the harness's database directory) with a migrated database in it, unless
    it has one."""
    home.mkdir(parents=True, exist_ok=True)
    if not (home / name).exists():
        shutil.copyfile(prefect_template(), home / name)
    return home
