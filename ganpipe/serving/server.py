"""`ganpipe serve`: the champion over HTTP, as a thin wrapper around `mlflow models serve`.

The alias is resolved once, at start, and the pinned version is served (and printed): moving the
alias later does not change what a running server answers with. The request cap and the served
name/version/alias reach the model through environment variables (see ganpipe.serving).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from ganpipe.core import tracking
from ganpipe.core.errors import RegistryError
from ganpipe.core.params import ServeParams
from ganpipe.serving.pyfunc import MAX_IMAGES_ENV, SERVED_AS_ENV


def serve_command(sp: ServeParams, model: str, port: int, root: str | Path = ".") -> tuple[list[str], dict, dict]:
    """(argv, environment, model meta) of the `mlflow models serve` process for `model`."""
    from ganpipe.registry.refs import model_meta

    uri = tracking.configure(root)
    meta = model_meta(model)  # also: one clear error for an unknown model, version or alias
    if not meta["model_uri"].startswith(("models:/", "runs:/")):
        raise RegistryError(f"{model}: serve a registered model (models:/NAME@ALIAS or models:/NAME/VERSION)")
    argv = [
        sys.executable,
        "-m",
        "mlflow",
        "models",
        "serve",
        "-m",
        meta["model_uri"],
        "--env-manager",
        "local",
        "-h",
        sp.host,
        "-p",
        str(port),
        "-w",
        str(sp.workers),
        "-t",
        str(sp.timeout_s),
    ]
    # mlflow starts `uvicorn` by name: find it next to this interpreter even when the venv is not active
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {
        **os.environ,
        "PATH": path,
        "MLFLOW_TRACKING_URI": uri,
        "MLFLOW_REGISTRY_URI": uri,
        MAX_IMAGES_ENV: str(sp.max_images),
        SERVED_AS_ENV: json.dumps({k: meta[k] for k in ("model", "version", "alias")}),
    }
    return argv, env, meta


def serve(sp: ServeParams, model: str, port: int, root: str | Path = ".") -> None:
    """Replace this process with the model server (Ctrl-C stops it)."""
    argv, env, meta = serve_command(sp, model, port, root)
    pinned = meta["model_uri"] + (f" (= @{meta['alias']} now)" if meta["alias"] else "")
    print(f"serving {pinned} on http://{sp.host}:{port}/invocations (max {sp.max_images} images a request)", flush=True)
    os.execvpe(argv[0], argv, env)
