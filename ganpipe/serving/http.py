"""`ganpipe serve`'s HTTP server: MLflow's scoring protocol for one generator, with ganpipe's own handling
of what arrives over the wire.

- The body is read up to `serve.max_body_bytes` and refused with 413 past it, before any parsing.
- Every malformed request gets HTTP 400 (415 for a body that is not JSON by its content type) and a JSON
  body `{"error_code": "BAD_REQUEST", "message": "<one line>"}`: no stack trace, no server path.
- The accepted bodies are MLflow's: `dataframe_records` (a list of records), `dataframe_split`
  (`columns` + `data` rows), `inputs` / `instances` (records, or columns of equal length).
- Images are generated `serve.batch_size` at a time, off the event loop, so a request of
  `serve.max_images` at the largest resolution stays within bounded memory.

Responses are what `mlflow models serve` of the same model answers: `{"predictions": [rows]}`.
"""

from __future__ import annotations

import asyncio
import json
import os
from pathlib import Path

import pandas as pd
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse
from starlette.concurrency import run_in_threadpool

from ganpipe.serving.pyfunc import FIELDS, BadRequest, generate_rows, parse_records

FORMATS = ("dataframe_records", "dataframe_split", "inputs", "instances")


class TooLarge(BadRequest):
    """The body is over the byte limit."""


def _bad(status: int, message: str) -> JSONResponse:
    code = {413: "REQUEST_TOO_LARGE", 415: "UNSUPPORTED_MEDIA_TYPE", 503: "TIMEOUT"}.get(status, "BAD_REQUEST")
    return JSONResponse({"error_code": code, "message": " ".join(message.split())}, status_code=status)


def _scalar(v) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def _records(rows, where: str) -> list[dict]:
    if not isinstance(rows, list) or not rows:
        raise BadRequest(f"{where} must be a non-empty list of records")
    for i, r in enumerate(rows):
        if not isinstance(r, dict):
            raise BadRequest(f'{where}[{i}] must be an object like {{"seed": 1}}, got {type(r).__name__}')
        for k, v in r.items():
            if not _scalar(v):
                raise BadRequest(f"{where}[{i}].{k} must be a single value, got {type(v).__name__}")
    return rows


def _columns(cols: dict, where: str) -> list[dict]:
    """Columns (lists of equal length, or single values for one record) as records."""
    if not cols:
        raise BadRequest(f"{where} has no columns")
    if all(_scalar(v) for v in cols.values()):
        return [dict(cols)]
    lengths = {k: len(v) if isinstance(v, list) else None for k, v in cols.items()}
    if None in lengths.values() or len(set(lengths.values())) != 1:
        shown = ", ".join(f"{k}: {'a single value' if n is None else f'{n} values'}" for k, n in lengths.items())
        raise BadRequest(f"{where}: columns must be lists of equal length ({shown})")
    for k, v in cols.items():
        if not all(_scalar(x) for x in v):
            raise BadRequest(f"{where}.{k} must hold single values, not nested arrays or objects")
    n = next(iter(lengths.values()))
    return [{k: v[i] for k, v in cols.items()} for i in range(n)]


def records_of(payload) -> pd.DataFrame:
    """The records of an MLflow scoring body, as a frame for `parse_records`; BadRequest when malformed."""
    if not isinstance(payload, dict) or len([k for k in payload if k in FORMATS]) != 1:
        raise BadRequest(
            f'expected a JSON object with one of {", ".join(FORMATS)} (e.g. {{"dataframe_records": [{{"seed": 1}}]}})'
        )
    (key,) = [k for k in payload if k in FORMATS]
    unknown = [k for k in payload if k not in (key, "params")]
    if unknown:
        raise BadRequest(f"unknown top-level field {unknown[0]!r} beside {key!r}")
    body = payload[key]
    if key == "dataframe_split":
        if (
            not isinstance(body, dict)
            or not isinstance(body.get("columns"), list)
            or not isinstance(body.get("data"), list)
        ):
            raise BadRequest("dataframe_split needs 'columns' (a list of names) and 'data' (a list of rows)")
        cols = body["columns"]
        if not all(isinstance(c, str) for c in cols):
            raise BadRequest("dataframe_split.columns must be field names")
        for i, row in enumerate(body["data"]):
            if not isinstance(row, list) or len(row) != len(cols) or not all(_scalar(v) for v in row):
                raise BadRequest(f"dataframe_split.data[{i}] must be a list of {len(cols)} single values")
        rows = [dict(zip(cols, row)) for row in body["data"]]
    elif isinstance(body, dict):
        rows = _columns(body, key)
    else:
        rows = _records(body, key)
    if not rows:
        raise BadRequest("no records")
    return pd.DataFrame.from_records(rows, columns=list(dict.fromkeys(k for r in rows for k in r)) or list(FIELDS))


async def _body(request: Request, limit: int) -> bytes:
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge(f"the body is {declared} bytes; the limit is {limit} (serve.max_body_bytes)")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge(f"the body is over {limit} bytes (serve.max_body_bytes)")
    return bytes(body)


def app_from_env() -> FastAPI:
    """The app of the directory `ganpipe serve` prepared (`$GANPIPE_SERVE_DIR`): uvicorn's factory, so that
    each worker process builds the generator itself."""
    from ganpipe.registry.refs import build_verified
    from ganpipe.serving.server import SERVE_DIR_ENV

    work = Path(os.environ[SERVE_DIR_ENV])
    s = json.loads((work / "serve.json").read_text())
    G = build_verified(work / "generator.safetensors", s["config"], s["label"], "")
    return create_app(G, s["meta"], s["max_images"], s["max_body_bytes"], s["batch_size"], s["timeout_s"])


def create_app(G, meta: dict, max_images: int, max_body_bytes: int, batch_size: int, timeout_s: float) -> FastAPI:
    """The scoring app for generator `G` (eval mode), whose images carry provenance `meta`."""
    app = FastAPI(title="ganpipe generator", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/ping")
    @app.get("/health")
    def ping() -> PlainTextResponse:
        return PlainTextResponse("\n")

    @app.get("/version")
    def version() -> dict:
        from importlib.metadata import version as dist_version

        return {"ganpipe": dist_version("ganpipe"), **{k: meta.get(k, "") for k in ("model", "version", "alias")}}

    @app.post("/invocations")
    async def invocations(request: Request):
        content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if content_type != "application/json":
            return _bad(415, f"Content-Type must be application/json, got {content_type or 'none'!r}")
        try:
            raw = await _body(request, max_body_bytes)
            try:
                payload = json.loads(raw)
            except (ValueError, UnicodeDecodeError) as exc:
                raise BadRequest(f"the body is not valid JSON ({exc})") from None
            records = parse_records(records_of(payload), G.num_classes, max_images)
        except TooLarge as exc:
            return _bad(413, str(exc))
        except BadRequest as exc:
            return _bad(400, str(exc))
        try:
            rows = await asyncio.wait_for(run_in_threadpool(generate_rows, G, records, meta, batch_size), timeout_s)
        except TimeoutError:
            return _bad(503, f"generating {len(records)} images took over {timeout_s} s (serve.timeout_s)")
        return JSONResponse({"predictions": rows})

    return app
