"""`ganpipe serve`: one registered generator over HTTP, MLflow's scoring protocol (`ganpipe.serving.http`).

What is served is built from the version's weights and config (sha256-checked) with the installed
ganpipe code; the code stored with the version is never run. The alias is resolved once, at start, and
the pinned version is served (and printed): moving the alias later does not change what a running
server answers with. Other MLflow clients can still serve the registry's pyfunc with
`mlflow models serve`, which runs the code stored with the version.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ganpipe.core import tracking
from ganpipe.core.errors import RegistryError
from ganpipe.core.params import ServeParams

SERVE_DIR_ENV = "GANPIPE_SERVE_DIR"  # what each server worker loads: verified weights, config, serve.json


def prepare(sp: ServeParams, model: str, root: str | Path = ".", allow_foreign: bool = False) -> tuple[Path, dict]:
    """Resolve `model` within the project's scope, download and verify its weights and config into a
    fresh directory with the serving settings; (that directory, model meta). A corrupt or swapped file
    is refused here, before the server starts, never as a 5xx per request."""
    from ganpipe.registry.refs import Scope, fetch_verified, model_meta

    tracking.configure(root)
    scope = Scope.project(root, allow_foreign)
    meta = model_meta(model, scope)  # also: one clear error for an unknown model, version or alias
    if not meta["model_uri"].startswith(("models:/", "runs:/")):
        raise RegistryError(f"{model}: serve a registered model (models:/NAME@ALIAS or models:/NAME/VERSION)")
    work = Path(tempfile.mkdtemp(prefix="ganpipe-serve-"))
    try:
        weights, config, label, _ = fetch_verified(meta["model_uri"], scope, work / "download")
        shutil.move(weights, work / "generator.safetensors")
        settings = {
            "meta": meta,
            "label": label,
            "config": config,
            "max_images": sp.max_images,
            "max_body_bytes": sp.max_body_bytes,
            "batch_size": sp.batch_size,
            "timeout_s": sp.timeout_s,
        }
        (work / "serve.json").write_text(json.dumps(settings))
        shutil.rmtree(work / "download", ignore_errors=True)
    except BaseException:  # a refused (corrupt, swapped) model leaves nothing behind in the temp dir
        shutil.rmtree(work, ignore_errors=True)
        raise
    return work, meta


def serve(sp: ServeParams, model: str, port: int, root: str | Path = ".", allow_foreign: bool = False) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM stops it; either way the verified copy is deleted:
    uvicorn shuts down on the signal, then raises it again, which here is an exception, not death)."""
    import uvicorn

    from ganpipe.core.processes import interrupts_raise

    work, meta = prepare(sp, model, root, allow_foreign)
    pinned = meta["model_uri"] + (f" (= @{meta['alias']} now)" if meta["alias"] else "")
    print(f"serving {pinned} on http://{sp.host}:{port}/invocations (max {sp.max_images} images a request)", flush=True)
    os.environ[SERVE_DIR_ENV] = str(work)  # the workers are other processes when sp.workers > 1
    try:
        with interrupts_raise():
            uvicorn.run(
                "ganpipe.serving.http:app_from_env",
                factory=True,
                host=sp.host,
                port=port,
                workers=sp.workers,
                log_level="warning",
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
