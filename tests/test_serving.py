"""Serving: the champion answers MLflow's scoring protocol with base64 PNGs; bad requests get a 4xx."""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from ganpipe.core.images import png_text
from ganpipe.evaluation.evaluate import evaluate
from ganpipe.registry.register import register
from ganpipe.serving.generate import generate, replay
from ganpipe.serving.pyfunc import BadRequest, parse_records
from tests.conftest import free_port, wait_for_http


def test_records_are_validated_one_by_one():
    frame = pd.DataFrame([{"seed": 3, "psi": 0.5, "class": 2}, {"seed": 4}])
    assert parse_records(frame, 10, 8) == [(3, 0.5, 2), (4, 1.0, 4)]
    assert parse_records(pd.DataFrame({"seed": [7]}), 0, 8) == [(7, 1.0, None)]
    bad = [
        ([{"seed": 1, "colour": "red"}], 10, "unknown field 'colour'"),
        ([{"psi": 0.5}], 10, "needs a 'seed'"),
        ([{"seed": 1}, {"psi": 0.5}], 10, "record 1: missing 'seed'"),
        ([{"seed": "one"}], 10, "seed must be an integer, got 'one'"),
        ([{"seed": 1.5}], 10, "seed must be an integer"),
        ([{"seed": True}], 10, "seed must be an integer"),
        ([{"seed": -1}], 10, "outside 0.."),
        ([{"seed": 1, "psi": 0}], 10, "psi must be a number in"),
        ([{"seed": 1, "psi": "x"}], 10, "psi must be a number in"),
        ([{"seed": 1, "class": 10}], 10, "class 10 is outside 0..9"),
        ([{"seed": 1, "class": 1}], 0, "unconditional"),
        ([{"seed": i} for i in range(9)], 10, "at most 8 images"),
    ]
    for records, k, message in bad:
        with pytest.raises(BadRequest, match=message):
            parse_records(pd.DataFrame(records), k, 8)
    with pytest.raises(BadRequest, match="no records"):
        parse_records(pd.DataFrame({"seed": []}), 10, 8)
    with pytest.raises(BadRequest, match="expected records"):
        parse_records(np.zeros((2, 2)), 10, 8)


def _post(port: int, body, content_type: str = "application/json") -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    payload = body if isinstance(body, (str, bytes)) else json.dumps(body)
    conn.request("POST", "/invocations", payload, {"Content-Type": content_type})
    resp = conn.getresponse()
    text = resp.read().decode()
    conn.close()
    try:
        return resp.status, json.loads(text)
    except json.JSONDecodeError:
        return resp.status, {"raw": text}


@pytest.fixture(scope="module")
def server(conditional_project, tmp_path_factory):
    p, lay = conditional_project
    temp = tmp_path_factory.mktemp("serve-temp")  # the server's TMPDIR
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    r = register(p.registry, p.eval, lay)
    port = free_port()
    # as a user would start it, without the venv on PATH (mlflow looks uvicorn up by name)
    bindir = str(Path(sys.executable).parent)
    path = os.pathsep.join(d for d in os.environ["PATH"].split(os.pathsep) if d != bindir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(lay.root), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "PATH": path, "TMPDIR": str(temp)},
    )
    wait_for_http(proc, port, "/ping")
    assert [d.name[:14] for d in temp.iterdir()] == ["ganpipe-serve-"]  # the verified copy it serves
    yield p, lay, r, port
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert not list(temp.iterdir()), "a stopped server leaves its verified copy behind"


def test_champion_serves_png_images_with_provenance(server, tmp_path):
    p, lay, r, port = server
    status, body = _post(port, {"dataframe_records": [{"seed": 41, "psi": 0.7, "class": 3}, {"seed": 12}]})
    assert status == 200, body
    rows = body["predictions"]
    assert [(x["seed"], x["psi"], x["class"]) for x in rows] == [(41, 0.7, 3), (12, 1.0, 2)]
    served = tmp_path / "served.png"
    served.write_bytes(base64.b64decode(rows[0]["image"]))
    text = png_text(served)
    assert text["ganpipe:version"] == r["champion"] and text["ganpipe:alias"] == p.registry.alias
    assert text["ganpipe:model_uri"] == f"models:/{p.registry.model_name}/{r['champion']}"
    # the same pixels as `ganpipe generate` for that seed, psi and class, and replayable from the file
    local = generate(
        f"models:/{p.registry.model_name}@{p.registry.alias}",
        1,
        41,
        tmp_path / "local.png",
        psi=0.7,
        class_=3,
        root=lay.root,
    )[0]
    pixels = np.asarray(Image.open(io.BytesIO(served.read_bytes())))
    assert np.array_equal(pixels, np.asarray(Image.open(local)))
    assert np.array_equal(np.asarray(Image.open(replay(served, tmp_path / "again.png", lay.root))), pixels)
    # dataframe_split is the same protocol
    status, body = _post(port, {"dataframe_split": {"columns": ["seed"], "data": [[41]]}})
    assert status == 200 and body["predictions"][0]["class"] == 1


@pytest.mark.parametrize(
    "body,message",
    [
        ({"dataframe_records": [{"seed": 1, "colour": "red"}]}, "unknown field"),
        ({"dataframe_records": [{"seed": "one"}]}, "integer"),
        ({"dataframe_records": [{"seed": 2.5}]}, "integer"),
        ({"dataframe_records": [{"seed": 1, "class": 99}]}, "outside"),
        ({"dataframe_records": [{"seed": 1, "psi": -1}]}, "psi"),
        ({"dataframe_records": [{"seed": i} for i in range(65)]}, "at most 64"),
        ({"dataframe_records": []}, ""),
        ({"something": [1]}, "expected a JSON object with one of"),
        ("{not json", "not valid JSON"),
        # MLflow's own parser raised on these (HTTP 400 with a stack trace naming server paths)
        (
            {"inputs": {"seed": [1, 2], "psi": [1.0]}},
            "columns must be lists of equal length (seed: 2 values, psi: 1 values)",
        ),
        ({"inputs": {"seed": [[1, 2], [3, 4]]}}, "must hold single values"),
        ({"inputs": [[1, 2], [3, 4]]}, "must be an object"),
        ({"dataframe_records": [{"seed": [1, 2]}]}, "must be a single value"),
        ({"dataframe_split": {"columns": ["seed"], "data": [[1, 2]]}}, "must be a list of 1 single values"),
        ({"dataframe_split": {"columns": ["seed"]}}, "needs 'columns'"),
        ({"dataframe_records": 5}, "must be a non-empty list of records"),
        ("42", "expected a JSON object"),
        ("[1, 2, 3]", "expected a JSON object"),
        ({"dataframe_records": [{"seed": 1}], "extra": 1}, "unknown top-level field 'extra'"),
    ],
)
def test_bad_requests_get_a_4xx_never_a_500(server, body, message):
    *_, port = server
    status, reply = _post(port, body)
    assert status == 400, (status, reply)
    assert message in reply["message"] and "\n" not in reply["message"]
    assert set(reply) == {"error_code", "message"}  # no stack trace
    assert not any(s in reply["message"] for s in ("/work", "site-packages", ".py", "Traceback"))


def test_a_scalar_column_set_is_one_record_and_columns_are_records(server):
    *_, port = server
    status, body = _post(port, {"inputs": {"seed": 5, "psi": 0.5}})
    assert status == 200 and [(r["seed"], r["psi"]) for r in body["predictions"]] == [(5, 0.5)]
    status, body = _post(port, {"inputs": {"seed": [5, 6]}})
    assert status == 200 and [r["seed"] for r in body["predictions"]] == [5, 6]


def test_wrong_content_type_and_oversized_bodies_are_refused_before_parsing(server):
    p, *_, port = server
    status, reply = _post(port, "seed\n1\n", content_type="text/csv")
    assert status == 415 and "application/json" in reply["message"]
    big = json.dumps({"dataframe_records": [{"seed": 1}], "pad": "x" * p.serve.max_body_bytes})
    status, reply = _post(port, big)
    assert status == 413 and "serve.max_body_bytes" in reply["message"]


def test_batches_give_the_same_images_as_one_pass(conditional_project):
    from ganpipe.nets.checkpoint import generator_from_checkpoint
    from ganpipe.serving.pyfunc import generate_rows

    p, lay = conditional_project
    G, _ = generator_from_checkpoint(lay.checkpoint_path)
    records = [(s, 0.8, s % G.num_classes) for s in range(10)]
    assert generate_rows(G, records, {}, 3) == generate_rows(G, records, {}, 10)
