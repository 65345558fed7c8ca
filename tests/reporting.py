"""What a failed test's report says beyond pytest's own."""

from __future__ import annotations

import traceback
from pathlib import Path


def name_repeating_frames(call, report) -> None:
    """A RecursionError's one-line summary names the frames that repeat: CI shows the summary lines, and
    pytest's long traceback of a recursion (cut at "Recursion detected") may be out of its sight."""
    excinfo = call.excinfo
    if excinfo is None or not excinfo.errisinstance(RecursionError) or report.longrepr is None:
        return
    frames = traceback.extract_tb(excinfo.tb)
    seen: list[str] = []
    for f in frames[-60:]:
        where = f"{Path(f.filename).name}:{f.lineno} {f.name}"
        if where not in seen:
            seen.append(where)
    crash = getattr(report.longrepr, "reprcrash", None)
    if crash is not None:
        crash.message += f" [{len(frames)} frames; the last ones: {' <- '.join(reversed(seen[-8:]))}]"
