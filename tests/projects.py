"""Copies of the tests' trained projects (a project's files and its MLflow store, paths rewritten)."""

from __future__ import annotations

import shutil
from pathlib import Path


def copy_project(src: Path, dst: Path, stored_as: Path | None = None, ignore=None):
    """A copy at `dst` of a project made by `build_trained`, its MLflow store included; returns its layout.

    MLflow keeps absolute paths in its store (artifact locations, dataset sources): they are rewritten to
    the copy's, so the copy never reads or writes the original's files. `stored_as`: the directory the
    store was made in, when not `src` (a committed fixture store)."""
    import sqlite3

    from mlflow.tracking._tracking_service import utils as mlflow_utils

    from ganpipe.core.paths import layout

    src, dst = src.resolve(), dst.resolve()
    shutil.copytree(src, dst, ignore=ignore)
    src = stored_as or src
    db = sqlite3.connect(dst / "mlflow.db")
    try:
        tables = [t for (t,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
        for table in tables:
            for column in [row[1] for row in db.execute(f'PRAGMA table_info("{table}")')]:
                for old, new in ((src.as_uri(), dst.as_uri()), (str(src), str(dst))):
                    db.execute(
                        f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) '
                        f"""WHERE typeof("{column}") = 'text' AND instr("{column}", ?) > 0""",
                        (old, new, old),
                    )
        db.commit()
    finally:
        db.close()
    for f in dst.rglob("MLmodel"):  # a logged model's own record of where it was logged
        f.write_text(f.read_text().replace(src.as_uri(), dst.as_uri()).replace(str(src), str(dst)))
    stale = [f for f in dst.rglob("*") if f.is_file() and str(src).encode() in f.read_bytes()]
    assert not stale, f"{stale} still name {src}: copy_project must rewrite them too"
    # MLflow caches a run's artifact location by run id in this process; the copies share run ids.
    mlflow_utils._artifact_repos_cache.clear()
    return layout(dst)
