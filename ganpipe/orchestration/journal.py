"""The sweep journal: params.yaml as it was before a sweep, so a sweep that dies never leaves a
candidate's values behind for the next nightly run.

`dvc exp run -S` writes each candidate's values into the workspace's params.yaml. A sweep puts the
original back between candidates and at its end, but a SIGKILL or an OOM kill skips that, and the next
scheduled `ganpipe run` would then train (and maybe promote) a candidate's configuration as if it were
the project's. So before its first candidate a sweep writes a journal, `.dvc/tmp/ganpipe-sweep.json`
(git-ignored with the rest of DVC's temp files): the original text, its sha256, the sweep's pid and
start time. It is removed when the sweep ends, after the winner has been applied on purpose. The next
sweep or run that finds a journal whose sweep is gone restores the original first, atomically, and
says so; while that sweep still runs, a run in the same project is refused (it would train on a
candidate's values).
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from ganpipe.core.errors import ConfigError
from ganpipe.core.io import atomic_path, write_json
from ganpipe.core.paths import Layout
from ganpipe.core.processes import alive, local_time, this_process


def journal_path(lay: Layout) -> Path:
    return lay.root / ".dvc" / "tmp" / "ganpipe-sweep.json"


def write_params(lay: Layout, text: str) -> None:
    """Replace params.yaml with `text` atomically: a kill leaves the old or the new file, never half of one."""
    with atomic_path(lay.params_path) as tmp:
        tmp.write_text(text)


def begin(lay: Layout) -> str:
    """Record params.yaml before a sweep changes it; returns its text."""
    text = lay.params_path.read_text()
    write_json(
        journal_path(lay),
        {"params_yaml": text, "sha256": hashlib.sha256(text.encode()).hexdigest(), **this_process()},
    )
    return text


def end(lay: Layout) -> None:
    journal_path(lay).unlink(missing_ok=True)


def recover(lay: Layout, *, by: str) -> str | None:
    """Before a sweep or a run (`by`): put back the params.yaml that a dead sweep found, and say so
    (returned, and printed). ConfigError while the journal's sweep still runs."""
    path = journal_path(lay)
    try:
        j = json.loads(path.read_text())
        text, pid, since = j["params_yaml"], int(j["pid"]), float(j["since"])
        if hashlib.sha256(text.encode()).hexdigest() != j["sha256"]:
            raise ValueError("checksum")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        path.unlink(missing_ok=True)  # written atomically, so damaged from outside: nothing to trust in it
        message = f"removed an unreadable sweep journal ({type(exc).__name__}); params.yaml left as it is"
        print(message, flush=True)
        return message
    when = local_time(since)
    if alive(pid, j.get("started")):
        if pid == os.getpid():
            return None  # this process's own sweep
        raise ConfigError(
            f"a sweep (pid {pid}, started {when}) is running in {lay.root}: params.yaml holds one of its "
            f"candidates' values until it ends; start the {by} after it (or stop it)"
        )
    current = lay.params_path.read_text() if lay.params_path.exists() else None
    if current != text:
        write_params(lay, text)
        message = (
            f"a sweep that died (pid {pid}, started {when}) had left a candidate's values in params.yaml: "
            f"restored params.yaml as it was before that sweep, before this {by}"
        )
    else:
        message = f"a sweep that died (pid {pid}, started {when}) left params.yaml as it was; journal removed"
    path.unlink(missing_ok=True)
    print(message, flush=True)
    return message
