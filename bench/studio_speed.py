"""How fast a 16-image grid appears in `ganpipe studio`, on the project's champion (default params: 32 px).

Side by side in one run, on one machine:
- `direct`: the same 16 images rendered and PNG-encoded in this process (`Generators.images`, the studio's
  own code, no HTTP): the floor;
- `api`: GET /api/generate?n=16 over HTTP to a real `ganpipe studio` process, after the model's first load;
- `page`: in Chromium, from the click on Generate until all 16 images are decoded on the page.
The ratios api/direct and page/direct are what the studio adds. The first load (download, sha256 check,
build) is measured apart.

    .venv/bin/python bench/studio_speed.py [--project .] [--repeats 20]   (after `make run`)
Results: bench/results/studio_speed-cpu-DATE.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _stats(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {
        "median_s": round(statistics.median(xs), 4),
        "p90_s": round(xs[int(0.9 * (len(xs) - 1))], 4),
        "max_s": round(xs[-1], 4),
    }


def direct(project: Path, repeats: int) -> dict:
    from ganpipe.core import tracking
    from ganpipe.core.params import load_params
    from ganpipe.studio.models import Generators

    p = load_params(project / "params.yaml")
    tracking.configure(project)
    gens = Generators(p.registry.model_name, p.serve.max_images, p.serve.batch_size)
    t = time.perf_counter()
    info = gens.info("champion")
    first = time.perf_counter() - t
    times = []
    for i in range(repeats):
        t = time.perf_counter()
        gens.images("champion", 1000 + 16 * i, 16)
        times.append(time.perf_counter() - t)
    return {"first_load_s": round(first, 3), "resolution": info["resolution"], **_stats(times)}


def over_http(url: str, repeats: int) -> dict:
    import httpx

    with httpx.Client(base_url=url, timeout=120) as c:
        t = time.perf_counter()
        c.get("/api/generate?model=champion&seed=0&n=16").raise_for_status()
        first = time.perf_counter() - t
        times = []
        for i in range(repeats):
            t = time.perf_counter()
            r = c.get(f"/api/generate?model=champion&seed={1000 + 16 * i}&n=16")
            r.raise_for_status()
            times.append(time.perf_counter() - t)
            assert len(r.json()["images"]) == 16
    return {"first_request_s": round(first, 3), **_stats(times)}


def in_page(url: str, repeats: int) -> dict:
    from tools import browser

    why = browser.available()
    if why:
        return {"skipped": why}
    times = []
    with browser.browser_context() as ctx:
        page = ctx.new_page()
        page.goto(f"{url}/#generate")
        page.wait_for_selector("body[data-ready=true]")
        for i in range(repeats + 1):
            page.fill("#gen-seed", str(5000 + 16 * i))
            page.evaluate("document.querySelector('#gen-grid').replaceChildren()")
            t = time.perf_counter()
            page.click("#gen-go")
            page.wait_for_function(
                "(() => { const im = [...document.querySelectorAll('#gen-grid img')];"
                " return im.length == 16 && im.every(i => i.complete && i.naturalWidth > 0); })()",
                polling="raf",
            )
            if i:  # the first click also warms the page
                times.append(time.perf_counter() - t)
    return _stats(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--project", default=".", help="a project with a champion (after `make run`)")
    ap.add_argument("--repeats", type=int, default=20)
    a = ap.parse_args()
    project = Path(a.project).resolve()
    floor = direct(project, a.repeats)
    port = _free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(project), "studio", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        import httpx

        deadline = time.monotonic() + 120
        while True:
            try:
                httpx.get(f"{url}/api/models", timeout=5).raise_for_status()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the studio did not start:\n{server.stdout.read()}") from None
                time.sleep(0.2)
        api = over_http(url, a.repeats)
        page = in_page(url, a.repeats)
    finally:
        server.terminate()
        server.wait(30)
    result = {
        "date": date.today().isoformat(),
        "machine": f"{__import__('os').cpu_count()} CPU cores, no GPU",
        "images": 16,
        "resolution": floor["resolution"],
        "repeats": a.repeats,
        "direct": floor,
        "api": api,
        "page": page,
        "api_over_direct": round(api["median_s"] / floor["median_s"], 2),
        "page_over_direct": round(page["median_s"] / floor["median_s"], 2) if "median_s" in page else None,
    }
    out = ROOT / "bench" / "results" / f"studio_speed-cpu-{result['date']}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
