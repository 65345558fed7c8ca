"""The pipeline against a real MLflow tracking server on loopback (what a team shares), not only SQLite."""

from __future__ import annotations

import pytest
from mlflow.tracking import MlflowClient

pytestmark = pytest.mark.slow  # whole pipelines, servers or killed processes: `make test`, not `make test-fast`


def test_pipeline_logs_and_registers_on_a_tracking_server(mlflow_server, tmp_path_factory, monkeypatch):
    from ganpipe.evaluation.evaluate import evaluate
    from ganpipe.registry.register import register
    from ganpipe.serving.generate import generate
    from tests.conftest import build_trained

    uri, server_dir = mlflow_server
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    p, lay = build_trained(tmp_path_factory.mktemp("remote"))
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    r = register(p.registry, p.eval, lay)
    assert r["promoted"] and r["version"] == "1"

    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    mv = client.get_model_version_by_alias(p.registry.model_name, p.registry.alias)
    run = client.get_run(mv.run_id)
    assert run.data.params["train.lr"] == str(p.train.lr) and "kid" in run.data.metrics
    # nothing went to a local store: runs, model and artifacts live on the server
    assert not (lay.root / "mlflow.db").exists() and not (lay.root / "mlartifacts").exists()
    assert any((server_dir / "server-artifacts").rglob("generator.safetensors"))
    out = generate(
        f"models:/{p.registry.model_name}@{p.registry.alias}",
        4,
        0,
        tmp_path_factory.mktemp("g") / "g.png",
        root=lay.root,
    )
    assert out[0].stat().st_size > 0
