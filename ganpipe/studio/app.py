"""`ganpipe studio`: the web page over the project's tracking store and registry, and its JSON API.

The page (one Jinja2 template, plain JavaScript, Plotly for the curves; no front-end build step) calls
the same `/api/` that scripts can use:

    GET  /api/models                         the registered versions, aliases, scores and gate verdicts
    GET  /api/model?model=champion           one model choice: pinned version, classes, resolution
    GET  /api/generate?model=champion&seed=0&n=16&psi=1.0[&class=3][&format=png]
                                             base64 PNGs with provenance (JSON), or one PNG (a grid for n > 1)
    GET  /api/interpolate?model=3&a=0&b=1&frames=24
    GET  /api/compare?versions=1,2&seed=0&n=8&psi=1.0
    GET  /api/history                        versions and every alias move, newest first
    POST /api/promote   {"version": 3, "reason": "..."}   only with --allow-changes
    POST /api/rollback  {"reason": "..."}                 only with --allow-changes
    GET  /api/runs, /api/runs/{run_id}, /api/runs/{run_id}/snapshot?path=images/...

Bad input is a 4xx with `{"error": "<one line>"}`, never a stack trace. Generation and registry writes
run off the event loop. Promote and rollback are `ganpipe promote` / `ganpipe rollback`: the same
functions, registry lock and post-promotion check.
"""

from __future__ import annotations

import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import quote, urlsplit

import mlflow
from fastapi import FastAPI, Query, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from starlette.concurrency import run_in_threadpool

from ganpipe.core import tracking
from ganpipe.core.errors import RegistryError
from ganpipe.core.params import load_params
from ganpipe.core.paths import layout
from ganpipe.core.redact import redact
from ganpipe.registry import aliases
from ganpipe.studio import catalog
from ganpipe.studio.models import BadInput, Generators, integer

HERE = Path(__file__).parent
MAX_COMPARED = 6
MAX_REASON = 500


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": " ".join(str(message).split())[:1000]}, status_code=status)


def plotly_js() -> Path:
    """Plotly's browser bundle, shipped inside the plotly package (no CDN: the page works offline)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def links(mlflow_ui: str | None, prefect_ui: str | None, uri: str) -> dict:
    """Where the MLflow and Prefect UIs are, when known: given, or the tracking server itself (an http
    tracking URI), or Prefect's PREFECT_UI_URL setting when a Prefect server is configured."""
    if not mlflow_ui and uri.startswith(("http://", "https://")):
        mlflow_ui = uri
    if not prefect_ui:
        from prefect.settings import get_current_settings

        s = get_current_settings()
        prefect_ui = (s.ui_url or "") if s.api.url else ""
    return {"mlflow": (mlflow_ui or "").rstrip("/"), "prefect": (prefect_ui or "").rstrip("/")}


def create_app(
    root: str | Path = ".", allow_changes: bool = False, mlflow_ui: str | None = None, prefect_ui: str | None = None
) -> FastAPI:
    """The studio of the project at `root`."""
    lay = layout(root)
    p = load_params(lay.params_path)
    reg = p.registry
    uri = tracking.configure(lay.root)
    gens = Generators(reg.model_name, p.serve.max_images, p.serve.batch_size)
    where = links(mlflow_ui, prefect_ui, uri)
    page = Jinja2Templates(directory=str(HERE / "templates"))
    app = FastAPI(title="ganpipe studio", docs_url=None, redoc_url=None, openapi_url=None)
    app.mount("/static", StaticFiles(directory=str(HERE / "static")), name="static")

    def client() -> MlflowClient:
        return MlflowClient()

    @app.exception_handler(BadInput)
    async def _bad(request: Request, exc: BadInput):
        return _error(400, str(exc))

    @app.exception_handler(catalog.NotFound)
    async def _missing(request: Request, exc: catalog.NotFound):
        return _error(404, str(exc))

    @app.exception_handler(RegistryError)
    async def _refused(request: Request, exc: RegistryError):
        return _error(409, str(exc))

    @app.exception_handler(MlflowException)
    async def _store(request: Request, exc: MlflowException):
        return _error(502, f"the tracking store answered: {exc.message.splitlines()[0]}")

    @app.get("/")
    def index(request: Request):
        return page.TemplateResponse(
            request,
            "studio.html",
            {
                "project": lay.root.name,
                "model_name": reg.model_name,
                "alias": reg.alias,
                "primary": reg.primary_metric,
                "tracking": redact(uri),
                "allow_changes": allow_changes,
                "max_images": p.serve.max_images,
                "links": where,
            },
        )

    @app.get("/static-lib/plotly.min.js")
    def plotly_bundle():
        return FileResponse(plotly_js(), media_type="text/javascript")

    @app.get("/api/models")
    def models():
        return {
            "model_name": reg.model_name,
            "alias": reg.alias,
            "primary": reg.primary_metric,
            "aliases": catalog.aliases(client(), reg.model_name),
            "versions": catalog.versions(client(), reg.model_name, reg.primary_metric),
            "allow_changes": allow_changes,
            "links": where,
            "max_images": p.serve.max_images,
        }

    @app.get("/api/model")
    async def model(model: str = reg.alias):
        return await run_in_threadpool(gens.info, model)

    @app.get("/api/generate")
    async def generate(
        model: str = reg.alias,
        seed: str = "0",
        n: str = "16",
        psi: str = "1.0",
        class_: str = Query("", alias="class"),
        format: str = "json",
    ):
        if format == "png":
            png = await run_in_threadpool(gens.grid_png, model, seed, n, psi, class_)
            return Response(png, media_type="image/png")
        if format != "json":
            raise BadInput(f"format must be json or png, got {format[:20]!r}")
        return await run_in_threadpool(gens.images, model, seed, n, psi, class_)

    @app.get("/api/interpolate")
    async def interpolate(
        model: str = reg.alias,
        a: str = "0",
        b: str = "1",
        frames: str = "24",
        psi: str = "1.0",
        class_: str = Query("", alias="class"),
    ):
        return await run_in_threadpool(gens.interpolation, model, a, b, frames, psi, class_)

    @app.get("/api/compare")
    async def compare(versions: str = "", seed: str = "0", n: str = "8", psi: str = "1.0"):
        return await run_in_threadpool(_compare, versions, seed, n, psi)

    def _compare(chosen: str, seed: str, n: str, psi: str) -> dict:
        described = catalog.versions(client(), reg.model_name, reg.primary_metric)
        by_version = {d["version"]: d for d in described}
        names = [v.strip() for v in chosen.split(",") if v.strip()]
        if not names:  # the two latest versions
            names = [d["version"] for d in described[:2]]
        picked = []
        for name in names:
            version, _ = gens.resolve(name)
            if version not in (d["version"] for d in picked):
                picked.append(by_version[version])
        if not 2 <= len(picked) <= MAX_COMPARED:
            raise BadInput(f"compare 2 to {MAX_COMPARED} different versions, got {len(picked)}")
        picked.sort(key=lambda d: int(d["version"]))
        images = {d["version"]: gens.images(d["version"], seed, n, psi)["images"] for d in picked}
        return {
            "versions": picked,
            "images": images,
            "table": catalog.comparison(picked),
            "seed": integer(seed, "seed", 0, 2**63),
            "psi": float(psi),
        }

    @app.get("/api/history")
    def history():
        described = catalog.versions(client(), reg.model_name, reg.primary_metric)
        return {
            "versions": described,
            "aliases": catalog.aliases(client(), reg.model_name),
            "moves": catalog.timeline(client(), reg.model_name, described),
            "allow_changes": allow_changes,
        }

    async def _change(request: Request, action):
        if not allow_changes:
            return _error(403, "changes are off: start the studio with `ganpipe studio --allow-changes` to promote")
        # Only the page itself (or a script) may change aliases: a JSON body cannot be sent cross-site without
        # a CORS preflight, which this app never grants, and a browser names the page's origin.
        if request.headers.get("content-type", "").split(";")[0].strip().lower() != "application/json":
            return _error(415, "send the change as JSON (Content-Type: application/json)")
        origin = request.headers.get("origin")
        if origin and urlsplit(origin).netloc != request.headers.get("host"):
            return _error(403, f"a change from another site ({origin[:80]}) is refused")
        try:
            body = await request.json()
        except (ValueError, UnicodeDecodeError):
            raise BadInput("the body must be a JSON object") from None
        if not isinstance(body, dict):
            raise BadInput("the body must be a JSON object")
        reason = str(body.get("reason") or "").strip()
        if not reason:
            raise BadInput("a reason is required (it is recorded in the history)")
        if len(reason) > MAX_REASON:
            raise BadInput(f"the reason is longer than {MAX_REASON} characters")
        event = await run_in_threadpool(action, body, reason)
        return {"move": event, "aliases": catalog.aliases(client(), reg.model_name)}

    @app.post("/api/promote")
    async def promote(request: Request):
        def act(body: dict, reason: str) -> dict:
            version = integer(body.get("version"), "version", 1, 2**31)
            return aliases.promote(client(), reg.model_name, reg.alias, str(version), reason, via="promote (studio)")

        return await _change(request, act)

    @app.post("/api/rollback")
    async def rollback(request: Request):
        def act(body: dict, reason: str) -> dict:
            return aliases.rollback(client(), reg.model_name, reg.alias, reason, via="rollback (studio)")

        return await _change(request, act)

    @app.get("/api/runs")
    def runs():
        return {"runs": catalog.runs(client(), p.base.experiment), "links": where}

    @app.get("/api/runs/{run_id}")
    def run(run_id: str):
        detail = catalog.run_detail(client(), run_id, p.base.experiment)
        for s in detail["snapshots"]:
            s["url"] = f"/api/runs/{run_id}/snapshot?path={quote(s['path'], safe='/')}"
        detail["links"] = {
            "mlflow": f"{where['mlflow']}/#/experiments/{detail['experiment_id']}/runs/{run_id}"
            if where["mlflow"]
            else "",
            "prefect": f"{where['prefect']}/runs/flow-run/{detail['flow_run_id']}"
            if where["prefect"] and detail["flow_run_id"]
            else "",
        }
        return detail

    @app.get("/api/runs/{run_id}/snapshot")
    async def snapshot(run_id: str, path: str):
        return await run_in_threadpool(_snapshot, run_id, path)

    def _snapshot(run_id: str, path: str) -> Response:
        catalog.run_in(client(), run_id, p.base.experiment)
        if path not in {s["path"] for s in catalog.snapshots(client(), run_id)}:  # only what the run logged
            raise catalog.NotFound(f"run {run_id} has no snapshot {path[:80]!r}")
        with tempfile.TemporaryDirectory(prefix="ganpipe-studio-") as tmp:
            local = mlflow.artifacts.download_artifacts(run_id=run_id, artifact_path=path, dst_path=tmp)
            data = Path(local).read_bytes()
        return Response(data, media_type="image/png", headers={"Cache-Control": "max-age=86400"})

    return app


@contextmanager
def running(app: FastAPI, host: str = "127.0.0.1", port: int = 0, timeout_s: float = 30):
    """Serve `app` from a thread of this process (tests, benchmarks, screenshots); yields its base URL.
    Port 0 takes a free one."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=host, port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, name="ganpipe-studio", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError(f"the studio did not start on {host}:{port}")
        time.sleep(0.02)
    bound = server.servers[0].sockets[0].getsockname()[1]
    try:
        yield f"http://{host}:{bound}"
    finally:
        server.should_exit = True
        thread.join(timeout_s)


def serve(
    root: str | Path, host: str, port: int, allow_changes: bool, mlflow_ui: str | None, prefect_ui: str | None
) -> None:
    """Serve the studio until interrupted (Ctrl-C stops it)."""
    import uvicorn

    app = create_app(root, allow_changes, mlflow_ui, prefect_ui)
    mode = "promote and rollback on (--allow-changes)" if allow_changes else "read-only (--allow-changes to promote)"
    print(f"ganpipe studio on http://{host}:{port}/ ({mode}); Ctrl-C stops it", flush=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
