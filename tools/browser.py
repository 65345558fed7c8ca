"""A headless Chromium for the studio's browser tests and screenshots: Playwright driving Debian's
`chromium` package (Playwright's own browser download needs the internet, which these machines lack).

`apt-get install -y chromium` provides /usr/bin/chromium (`.ci/run` and `make test` install it when missing).
Each browser gets a fresh user-data directory: no profile, cache or cookies from another run.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = Path(os.environ.get("GANPIPE_CHROMIUM", "/usr/bin/chromium"))
ARGS = [
    "--headless",
    "--no-sandbox",  # CI runs as root, where Chromium's sandbox refuses to start
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def available() -> str:
    """'' when the browser can be started here, else why not."""
    if not CHROMIUM.exists():
        return f"{CHROMIUM} is missing (apt-get install -y chromium)"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed (pip install -e '.[dev]')"
    return ""


@contextmanager
def browser_context(width: int = 1280, height: int = 860):
    """A Playwright browser context on a fresh profile; closed and deleted afterwards."""
    from playwright.sync_api import sync_playwright

    profile = tempfile.mkdtemp(prefix="ganpipe-chromium-")
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                profile,
                executable_path=str(CHROMIUM),
                headless=True,
                args=ARGS,
                viewport={"width": width, "height": height},
                accept_downloads=True,
            )
            try:
                yield ctx
            finally:
                ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
