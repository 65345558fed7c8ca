"""Screenshots of the studio's four tabs for docs/ (docs/studio-<tab>.png), over a project with a champion
and at least two versions (after `make run` and a second run with other params).

    .venv/bin/python tools/studio_screenshots.py --project . [--out docs]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tools import browser  # noqa: E402

READY = {  # what must be on the page before its screenshot
    "generate": "document.querySelectorAll('#gen-grid img').length >= 16",
    "compare": "document.querySelectorAll('#cmp-table tbody tr').length > 0",
    "history": "document.querySelectorAll('#moves-table tbody tr').length > 0",
    "runs": "[...document.querySelectorAll('#run-snapshots img')].every(i => i.complete && i.naturalWidth > 0)"
    " && document.querySelector('#plot-kid .main-svg') !== null",
}


def main() -> None:
    from ganpipe.studio.app import create_app, running

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", default=".")
    ap.add_argument("--out", default="docs")
    a = ap.parse_args()
    why = browser.available()
    if why:
        raise SystemExit(f"no browser: {why}")
    out = Path(a.out)
    with running(create_app(a.project)) as url, browser.browser_context(1280, 900) as ctx:
        page = ctx.new_page()
        page.goto(f"{url}/#generate")
        page.wait_for_selector("body[data-ready=true]")
        page.fill("#gen-n", "32")
        page.click("#gen-go")
        page.wait_for_function(READY["generate"])
        page.fill("#interp-frames", "24")
        page.click("#interp-go")
        page.wait_for_function("Number(document.querySelector('#interp-frame').dataset.frame) >= 8")
        page.click("#interp-pause")
        for tab in ("generate", "compare", "history", "runs"):
            if tab != "generate":
                page.click(f"nav [data-tab={tab}]")
            if tab == "compare":
                page.click("#cmp-go")
            page.wait_for_function(READY[tab])
            page.wait_for_timeout(300)  # let Plotly finish its transitions
            path = out / f"studio-{tab}.png"
            page.screenshot(path=str(path), full_page=True)
            print(f"wrote {path}")


if __name__ == "__main__":
    main()
