"""Session-wide builds shared by all test processes (`pytest -n`)."""

from __future__ import annotations

import json
import os


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
