"""Secrets never reach what ganpipe writes for people: a password planted in the tracking URI and a token
planted in the webhook URL are absent from every log line, artifact, run description, file and error."""

from __future__ import annotations

import json
import logging

import pytest
from mlflow.tracking import MlflowClient

from ganpipe.core.redact import redact, redact_url

PASSWORD = "S3cretPassw0rd"
TOKEN = "xoxbT0kenSecret42"


@pytest.mark.parametrize(
    "text, kept, gone",
    [
        ("postgresql://ganpipe:S3cret@db:5432/mlflow", "postgresql://ganpipe:***@db:5432/mlflow", "S3cret"),
        ("see https://hooks.slack.com/services/T0/B0/abc123", "https://hooks.slack.com/***", "abc123"),
        ("http://h:1/x?a=1&token=abc123&b=2", "token=***&b=2", "abc123"),
        ("sqlite:////tmp/p/mlflow.db", "sqlite:////tmp/p/mlflow.db", "***"),  # nothing secret: unchanged
    ],
)
def test_redact(text, kept, gone):
    assert kept in redact(text) and gone not in redact(text)


def test_redact_url_keeps_where_and_drops_the_credential():
    assert redact_url(f"http://127.0.0.1:8080/hooks/T0/{TOKEN}?x=1") == "http://127.0.0.1:8080/***"
    assert redact(f"POST http://127.0.0.1:9/a/{TOKEN} failed", [f"http://127.0.0.1:9/a/{TOKEN}"]).count(TOKEN) == 0


@pytest.mark.slow
def test_no_output_of_a_pipeline_names_the_password_or_the_token(
    mlflow_server, webhook, tmp_path_factory, monkeypatch, caplog, capsys
):
    from ganpipe.cli import main
    from ganpipe.core import tracking
    from ganpipe.evaluation.evaluate import evaluate
    from ganpipe.orchestration.notify import failure_notice
    from ganpipe.orchestration.report import registration_markdown
    from ganpipe.registry.register import register
    from tests.conftest import build_trained

    uri, server_dir = mlflow_server
    secret_uri = uri.replace("http://", f"http://ganpipe:{PASSWORD}@")  # the server ignores the credentials
    hook_url, received = webhook
    secret_hook = f"{hook_url}/T0/B0/{TOKEN}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", secret_uri)
    monkeypatch.setenv("GANPIPE_WEBHOOK_URL", secret_hook)
    caplog.set_level(logging.INFO)

    p, lay = build_trained(tmp_path_factory.mktemp("secrets"))
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    result = register(p.registry, p.eval, lay)
    run_id = result and json.loads(lay.run_info_path.read_text())["mlflow_run_id"]
    markdown = registration_markdown(result, run_id, tracking.tracking_uri(lay.root))  # what the flow publishes
    tracking.describe_run(run_id, markdown)
    assert "ganpipe:***@127.0.0.1" in markdown  # where it went stays readable
    # a failure whose message quotes the URI (as MLflow's connection errors do) and a failing webhook
    failure_notice("training-pipeline", "nightly", "id-1", "Failed", f"API request to {secret_uri}/x failed", None)
    monkeypatch.setenv("GANPIPE_WEBHOOK_URL", f"http://127.0.0.1:1/T0/B0/{TOKEN}")  # nothing listens there
    failure_notice("training-pipeline", "nightly", "id-2", "Crashed", "died", None)
    # an error line at the CLI boundary, against a store that does not answer
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://ganpipe:{PASSWORD}@127.0.0.1:1")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    assert main(["-C", str(lay.root), "history"]) == 2

    out = capsys.readouterr()
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    run = client.get_run(run_id)
    outputs = {
        "stdout": out.out,
        "stderr": out.err,
        "log": caplog.text,
        "webhook bodies": json.dumps(received),
        "run description, tags and params": json.dumps([run.data.tags, run.data.params]),
        "version tags": json.dumps([v.tags for v in client.search_model_versions(f"name='{p.registry.model_name}'")]),
        **{str(f): f.read_bytes().decode("latin-1") for f in lay.root.rglob("*") if f.is_file()},
    }
    assert received and "ganpipe:***@" in received[0]["message"] and "127.0.0.1:1" in out.err
    leaks = [where for where, text in outputs.items() if PASSWORD in text or TOKEN in text]
    assert leaks == []
