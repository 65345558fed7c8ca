"""`ganpipe studio`: its JSON API in-process (bad input, generation, comparison under one protocol, the
alias history and its changes, training runs) and the page in a real browser (Chromium driven by
Playwright) over a tiny project with three registered versions."""

from __future__ import annotations

import base64
import io
import json
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ganpipe.core.images import PROVENANCE
from ganpipe.evaluation.evaluate import evaluate
from ganpipe.registry.register import register
from tests.conftest import as_new_training, build_trained, copy_project, free_port, mlflow_client, wait_for_http
from tests.sessions import once_per_session
from tools import browser

P = PROVENANCE


def _register(p, ep, lay) -> dict:
    as_new_training(lay)
    evaluate(ep, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    return register(p.registry, ep, lay)


def _build(directory: Path) -> dict:
    p, lay = build_trained(directory / "project")
    r1, r2 = _register(p, p.eval, lay), _register(p, p.eval, lay)
    r3 = _register(p, p.eval.model_copy(update={"num_fake": p.eval.num_fake - 20}), lay)
    return {"root": str(lay.root), "registered": [r1, r2, r3]}


@pytest.fixture(scope="module")
def studio_project(tmp_path_factory):
    """v1 (champion) and v2 (challenger, a tie) scored under the project's protocol, then v3 scored under
    another one (eval.num_fake changed): registering v3 re-scores the champion v1 under v3's protocol,
    while v2 keeps only its own scores. Built once per test session; each module process gets a copy."""
    from ganpipe.core.params import load_params

    built = once_per_session(tmp_path_factory, "studio", _build)
    lay = copy_project(Path(built["root"]), tmp_path_factory.mktemp("studio") / "project")
    r1, r2, r3 = built["registered"]
    assert r1["promoted"] and not r2["promoted"] and r3["version"] == "3"
    assert r1["fingerprint"] == r2["fingerprint"] != r3["fingerprint"]
    return load_params(lay.params_path), lay, (r1, r2, r3)


@contextmanager
def _client(lay, **kw):
    """An HTTP client on the studio of `lay`, served from a thread of this process."""
    import httpx

    from ganpipe.studio.app import create_app, running

    with running(create_app(lay.root, **kw)) as url, httpx.Client(base_url=url, timeout=60) as c:
        yield c


def _png(b64: str) -> tuple[np.ndarray, dict]:
    img = Image.open(io.BytesIO(base64.b64decode(b64)))
    return np.asarray(img), dict(img.text)


@pytest.mark.parametrize(
    ("query", "status", "says"),
    [
        ("seed=abc", 400, "seed must be an integer"),
        ("seed=1.5", 400, "seed must be an integer"),
        ("seed=-1", 400, "seed -1 is outside"),
        ("psi=0", 400, "psi 0 is outside (0, 2]"),
        ("psi=2.5", 400, "psi 2.5 is outside"),
        ("psi=nan", 400, "psi"),
        ("n=0", 400, "n 0 is outside 1.."),
        ("n=100000", 400, "n 100000 is outside 1.."),
        ("class=3", 400, "unconditional"),
        ("model=99", 404, "has no version 99"),
        ("model=nightly", 404, "has no alias 'nightly'"),
        ("model=models:/other-model/1", 400, "a version number or an alias"),
        ("model=/etc/passwd", 400, "a version number or an alias"),
        ("model=runs:/abc/generator", 400, "a version number or an alias"),
        ("format=gif", 400, "format must be json or png"),
    ],
)
def test_bad_generate_requests_get_a_4xx_with_one_line(studio_project, query, status, says):
    _, lay, _ = studio_project
    with _client(lay) as c:
        r = c.get(f"/api/generate?{query}")
    assert r.status_code == status, r.text
    message = r.json()["error"]
    assert says in message and "\n" not in message and "Traceback" not in message


def test_generate_images_carry_provenance_and_depend_only_on_their_seed(studio_project):
    p, lay, (r1, _, _) = studio_project
    with _client(lay) as c:
        grid = c.get("/api/generate?model=champion&seed=5&n=16&psi=1.0").json()
        one = c.get("/api/generate?model=1&seed=12&n=1").json()
        low = c.get("/api/generate?model=champion&seed=5&n=16&psi=0.3").json()
        png = c.get("/api/generate?model=champion&seed=5&n=16&format=png")
    assert grid["model"]["model_uri"] == f"models:/{p.registry.model_name}/{r1['version']}"
    assert grid["model"]["alias"] == "champion"
    assert [i["seed"] for i in grid["images"]] == list(range(5, 21))
    pixels, text = _png(grid["images"][7]["png"])
    assert pixels.shape[:2] == (p.data.resolution, p.data.resolution)
    assert text[f"{P}seed"] == "12" and text[f"{P}model_uri"] == grid["model"]["model_uri"]
    assert text[f"{P}psi"] == "1.0" and text[f"{P}n"] == "1"
    assert np.array_equal(pixels, _png(one["images"][0]["png"])[0])  # seed 12 alone: the same image
    assert not np.array_equal(pixels, _png(low["images"][7]["png"])[0])  # truncation changes it
    assert png.headers["content-type"] == "image/png"
    whole = Image.open(io.BytesIO(png.content))
    assert whole.text[f"{P}n"] == "16" and whole.size[0] > 4 * p.data.resolution


def test_compare_puts_only_scores_of_one_protocol_side_by_side(studio_project):
    _, lay, (r1, r2, r3) = studio_project
    with _client(lay) as c:
        same = c.get("/api/compare?versions=1,2&n=4").json()
        apart = c.get("/api/compare?versions=2,3&n=4").json()
        rescored = c.get("/api/compare?versions=champion,3&n=4").json()
        default = c.get("/api/compare?n=2").json()
        one = c.get("/api/compare?versions=1,1")
    rows = {r["metric"]: r for r in same["table"]["rows"]}
    assert rows["fid"]["values"] == [r1["metrics"]["fid"], r2["metrics"]["fid"]]
    assert rows["fid"]["intervals"][0] == [r1["metrics"]["fid_ci_low"], r1["metrics"]["fid_ci_high"]]
    assert same["table"]["fingerprint"] == r2["fingerprint"] and same["table"]["gate"]["version"] == "2"
    assert same["table"]["gate"]["decision"] == "rejected" and same["table"]["gate"]["checks"]
    # the same seeds for every version: image i of one pairs with image i of the other
    assert [i["seed"] for i in same["images"]["1"]] == [i["seed"] for i in same["images"]["2"]] == [0, 1, 2, 3]

    cols = {c["version"]: c for c in apart["table"]["columns"]}
    assert not cols["2"]["comparable"] and cols["3"]["comparable"]
    assert r2["fingerprint"] in cols["2"]["scores_from"] and r3["fingerprint"] in cols["2"]["scores_from"]
    assert all(r["values"][0] is None for r in apart["table"]["rows"])  # no number of v2 beside v3's

    cols = {c["version"]: c for c in rescored["table"]["columns"]}
    assert cols["1"]["comparable"] and cols["1"]["scores_from"] == "re-scored at registration"
    fid = next(r for r in rescored["table"]["rows"] if r["metric"] == "fid")
    assert fid["values"][1] == r3["metrics"]["fid"] and fid["values"][0] == r3["champion_metrics"]["fid"]

    assert [v["version"] for v in default["versions"]] == ["2", "3"]  # the two latest
    assert one.status_code == 400 and "2 to 6 different versions" in one.json()["error"]


def test_promote_and_rollback_need_allow_changes_and_a_reason(studio_project):
    p, lay, _ = studio_project
    name, alias = p.registry.model_name, p.registry.alias
    client = mlflow_client(lay.root)
    champion = lambda: str(client.get_model_version_by_alias(name, alias).version)  # noqa: E731
    with _client(lay) as c:
        r = c.post("/api/promote", json={"version": 2, "reason": "looks better"})
        assert r.status_code == 403 and "--allow-changes" in r.json()["error"]
        assert "Read-only" in c.get("/").text
    assert champion() == "1"
    with _client(lay, allow_changes=True) as c:
        assert c.post("/api/promote", json={"version": 2, "reason": "  "}).status_code == 400
        bad = c.post("/api/promote", content=b"not json", headers={"content-type": "application/json"})
        assert bad.status_code == 400
        # what another web site could make a browser send: a form post, or JSON from a foreign origin
        form = c.post("/api/promote", content=b'{"version": 2, "reason": "x"}', headers={"content-type": "text/plain"})
        foreign = c.post("/api/promote", json={"version": 2, "reason": "x"}, headers={"origin": "http://evil.example"})
        assert form.status_code == 415 and foreign.status_code == 403 and champion() == "1"
        assert c.post("/api/promote", json={"version": 9, "reason": "x"}).status_code == 409
        done = c.post("/api/promote", json={"version": 2, "reason": "sharper strokes"}).json()
        assert done["move"]["to"] == "2" and done["aliases"][alias] == "2" and champion() == "2"
        back = c.post("/api/rollback", json={"reason": "v2 misbehaved"}).json()
        assert back["move"]["to"] == "1" and champion() == "1"
        h = c.get("/api/history").json()
    last = h["moves"][:2]  # newest first
    assert [(m["via"], m["to"], m["reason"]) for m in last] == [
        ("rollback (studio)", "1", "v2 misbehaved"),
        ("promote (studio)", "2", "sharper strokes"),
    ]
    assert last[0]["gate"]["decision"] == "promoted" and last[1]["gate"]["decision"] == "rejected"


def test_runs_show_the_training_curves_and_snapshots_of_the_project_only(studio_project):
    _, lay, _ = studio_project
    trained = json.loads(lay.run_info_path.read_text())  # the last registration's stand-in run
    client = mlflow_client(lay.root)
    with _client(lay) as c:
        runs = c.get("/api/runs").json()["runs"]
        assert runs, "the training run is listed"
        run_id = runs[-1]["run_id"]
        detail = c.get(f"/api/runs/{run_id}").json()
        snap = c.get(detail["snapshots"][0]["url"])
        sneaky = c.get(f"/api/runs/{run_id}/snapshot?path=../../mlflow.db")
        unknown = c.get("/api/runs/0123456789abcdef")
        other = client.create_run(client.create_experiment("someone-else")).info.run_id
        foreign = c.get(f"/api/runs/{other}")
    assert trained["mlflow_run_id"] not in {r["run_id"] for r in runs}  # not a training run
    history = client.get_metric_history(run_id, "quick_kid")
    assert detail["curves"]["quick_kid"]["kimg"] == [m.step / 1000 for m in sorted(history, key=lambda m: m.step)]
    assert {"loss_G", "loss_D", "diversity"} <= set(detail["curves"])
    kimgs = [s["kimg"] for s in detail["snapshots"]]
    assert kimgs == sorted(kimgs) and len(kimgs) == len(client.get_metric_history(run_id, "diversity"))
    assert snap.status_code == 200 and snap.content[:8] == b"\x89PNG\r\n\x1a\n"
    assert sneaky.status_code == 404 and unknown.status_code == 404 and foreign.status_code == 404
    assert "not a run of experiment" in foreign.json()["error"]


def test_a_project_with_nothing_registered_says_so(trained_project):
    _, lay = trained_project
    with _client(lay) as c:
        models = c.get("/api/models").json()
        champion = c.get("/api/generate?model=champion")
        assert c.get("/").status_code == 200
    assert models["versions"] == [] and models["aliases"] == {}
    assert champion.status_code == 404 and "has no alias 'champion'" in champion.json()["error"]


def test_runs_link_the_mlflow_and_prefect_uis_when_they_are_known(studio_project):
    from ganpipe.core.tracking import FLOW_RUN_TAG

    _, lay, _ = studio_project
    with _client(lay) as c:
        run_id = c.get("/api/runs").json()["runs"][0]["run_id"]
        unlinked = c.get(f"/api/runs/{run_id}").json()["links"]
    assert unlinked == {"mlflow": "", "prefect": ""}
    mlflow_client(lay.root).set_tag(run_id, FLOW_RUN_TAG, "0b6c3c1e-flow-run")  # what the pipeline flow sets
    with _client(lay, mlflow_ui="http://mlflow.example:5000/", prefect_ui="http://prefect.example:4200") as c:
        detail = c.get(f"/api/runs/{run_id}").json()
        page = c.get("/").text
    exp = detail["experiment_id"]
    assert detail["links"] == {
        "mlflow": f"http://mlflow.example:5000/#/experiments/{exp}/runs/{run_id}",
        "prefect": "http://prefect.example:4200/runs/flow-run/0b6c3c1e-flow-run",
    }
    assert "ganpipe studio" in page


def test_conditional_models_get_a_class_picker_and_refuse_a_class_they_lack(conditional_project):
    p, lay = conditional_project
    _register(p, p.eval, lay)
    with _client(lay) as c:
        info = c.get("/api/model?model=champion").json()
        sevens = c.get("/api/generate?model=champion&seed=0&n=4&class=7").json()
        wrong = c.get("/api/generate?model=champion&class=10")
        page = c.get("/").text
    assert info["num_classes"] == 10
    assert [i["class"] for i in sevens["images"]] == [7] * 4
    assert all(_png(i["png"])[1][f"{P}class"] == "7" for i in sevens["images"])
    assert wrong.status_code == 400 and "class 10 is outside 0..9" in wrong.json()["error"]
    assert 'id="gen-class"' in page


# ---- the page in a real browser ------------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium():
    why = browser.available()
    if why:
        if os.environ.get("GANPIPE_REQUIRE_BROWSER"):
            pytest.fail(f"the browser tests must run here: {why}")
        pytest.skip(why)
    with browser.browser_context() as ctx:
        yield ctx


def _open(ctx, url: str, tab: str):
    page = ctx.new_page()
    errors = []
    page.on("pageerror", lambda e: errors.append(str(e)))
    page.goto(f"{url}/#{tab}")
    page.wait_for_selector("body[data-ready=true]")
    return page, errors


@pytest.mark.slow
def test_the_page_generates_compares_and_changes_aliases_in_a_browser(studio_project, chromium, tmp_path, run_cli):
    from ganpipe.studio.app import create_app, running

    p, lay, (r1, r2, r3) = studio_project
    res = p.data.resolution
    with running(create_app(lay.root)) as url:
        page, errors = _open(chromium, url, "generate")
        assert page.locator("#gen-class-label").is_hidden()  # an unconditional model has no class picker
        page.click("#gen-go")
        page.wait_for_function("document.querySelectorAll('#gen-grid img').length == 16")
        widths = page.eval_on_selector_all("#gen-grid img", "els => els.map(e => e.naturalWidth)")
        assert widths == [res] * 16
        assert "16 images from v1 (champion)" in page.text_content("#gen-timing")

        page.fill("#gen-seed", "abc")  # bad input: a message on the page, the grid stays
        page.click("#gen-go")
        page.wait_for_selector("#gen-error:not([hidden])")
        assert "seed must be an integer" in page.text_content("#gen-error")
        page.fill("#gen-seed", "40")
        page.fill("#gen-n", "4")
        page.click("#gen-go")
        page.wait_for_function("document.querySelector('#gen-grid img').dataset.seed == '40'")
        assert page.locator("#gen-error").is_hidden()

        # an image opens large with its provenance and downloads as a PNG that replays to the same pixels
        page.click("#gen-grid figure:nth-child(2)")
        page.wait_for_selector("#viewer[open]")
        prov = page.text_content("#viewer-provenance")
        assert "seed41" in prov.replace(" ", "") and f"models:/{p.registry.model_name}/1" in prov
        with page.expect_download() as dl:
            page.click("#viewer-download")
        saved = tmp_path / dl.value.suggested_filename
        dl.value.save_as(saved)
        code, _, err = run_cli("-C", lay.root, "generate", "--replay", str(saved), "--out", str(tmp_path / "again.png"))
        assert code == 0, err
        assert np.array_equal(np.asarray(Image.open(saved)), np.asarray(Image.open(tmp_path / "again.png")))
        page.keyboard.press("Escape")

        page.click("#interp-go")  # interpolation plays in the page: the frame counter moves on
        page.wait_for_function("Number(document.querySelector('#interp-frame').dataset.frame) >= 3")
        page.click("#interp-pause")

        # compare: the two latest versions by default, on the same seeds; v2 and v3 are not comparable
        page.click("nav [data-tab=compare]")
        page.click("#cmp-go")
        page.wait_for_selector("#cmp-table tbody tr")
        assert page.locator("#cmp-columns .column").count() == 2
        assert page.locator("#cmp-columns .column[data-version='2'] img").count() == 8
        warning = page.text_content("#cmp-incomparable")
        assert "v2" in warning and "not comparable" in warning and r3["fingerprint"] in warning
        assert "not comparable" in page.text_content("#cmp-table tr[data-metric=fid]")
        page.uncheck("#compare-versions input[value='2']")
        page.check("#compare-versions input[value='1']")
        page.click("#cmp-go")
        page.wait_for_selector("#cmp-columns .column[data-version='1']")
        fid_row = page.text_content("#cmp-table tr[data-metric=fid]")
        assert f"{r3['metrics']['fid']:.4g}" in fid_row and "not comparable" not in fid_row
        gate = page.text_content("#cmp-gate")
        assert "Gate on v3" in gate and r3["reason"][:30] in gate

        # history: read-only here
        page.click("nav [data-tab=history]")
        page.wait_for_selector("#moves-table tbody tr")
        assert page.locator("#promote-go").is_disabled() and page.locator("#rollback-go").is_disabled()
        assert "--allow-changes" in page.text_content("#changes-note")
        assert "rejected" in page.text_content("#versions-table tr[data-version='2']")

        # runs: the curves are drawn and the snapshot grids load in order
        page.click("nav [data-tab=runs]")
        page.wait_for_selector("#plot-kid .main-svg")
        page.wait_for_function(
            "[...document.querySelectorAll('#run-snapshots img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        captions = page.eval_on_selector_all("#run-snapshots figcaption", "els => els.map(e => e.textContent)")
        assert captions == sorted(captions, key=lambda t: float(t.split()[0])) and captions
        assert page.locator("#plot-losses .scatterlayer .trace").count() == 2
        assert errors == []

    with running(create_app(lay.root, allow_changes=True)) as url:
        page, errors = _open(chromium, url, "history")
        page.wait_for_selector("#moves-table tbody tr")
        page.select_option("#promote-version", "2")
        page.click("#promote-go")  # no reason: refused, nothing moves
        page.wait_for_selector("#history-error:not([hidden])")
        assert "a reason is required" in page.text_content("#history-error")
        page.fill("#promote-reason", "cleaner sevens")
        page.click("#promote-go")
        page.wait_for_selector("#history-done:not([hidden])")
        assert "v1 → v2" in page.text_content("#history-done")
        page.wait_for_function("document.querySelector('#moves-table tbody tr').textContent.includes('cleaner sevens')")
        client = mlflow_client(lay.root)
        assert str(client.get_model_version_by_alias(p.registry.model_name, p.registry.alias).version) == "2"
        page.fill("#rollback-reason", "back to v1")
        page.click("#rollback-go")
        page.wait_for_function("document.querySelector('#history-done').textContent.includes('v2 → v1')")
        assert str(client.get_model_version_by_alias(p.registry.model_name, p.registry.alias).version) == "1"
        assert errors == []


@pytest.mark.slow
def test_ganpipe_studio_command_serves_the_page(studio_project):
    _, lay, _ = studio_project
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ganpipe", "-C", str(lay.root), "studio", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        wait_for_http(proc, port, "/api/models")
        import urllib.request

        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/").read().decode()
        models = json.loads(urllib.request.urlopen(f"http://127.0.0.1:{port}/api/models").read())
        assert "ganpipe studio" in page and "Read-only" in page
        assert models["aliases"]["champion"] == "1" and not models["allow_changes"]
    finally:
        proc.terminate()
        out, _ = proc.communicate(timeout=30)
    assert f"ganpipe studio on http://127.0.0.1:{port}/" in out and "Traceback" not in out
