"""A retried `register` of the same training finishes the version its failed attempt created (tags,
gate, alias), never registers a second one; the post-promotion check moves the alias back on any error."""

from __future__ import annotations

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ganpipe.core import tracking
from ganpipe.evaluation.evaluate import evaluate
from ganpipe.registry import aliases
from ganpipe.registry import register as register_module
from ganpipe.registry.aliases import PromotionCheckFailed, history
from ganpipe.registry.register import register
from tests.conftest import as_new_training


@pytest.fixture
def evaluated(trained_project):
    p, lay = trained_project
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    tracking.configure(lay.root)
    return p, lay, MlflowClient()


def _versions(client, name) -> list[str]:
    return sorted(str(v.version) for v in client.search_model_versions(f"name = '{name}'"))


def _fail_once(monkeypatch, target, name, exc):
    real = getattr(target, name)
    calls = {"n": 0}

    def flaky(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise exc
        return real(*args, **kwargs)

    monkeypatch.setattr(target, name, flaky)
    return calls


def test_a_failed_tag_write_then_a_retry_leaves_one_complete_version(evaluated, monkeypatch):
    p, lay, client = evaluated
    name = p.registry.model_name
    calls = _fail_once(monkeypatch, MlflowClient, "set_model_version_tag", MlflowException("registry hiccup"))
    with pytest.raises(MlflowException, match="hiccup"):
        register(p.registry, p.eval, lay)
    assert _versions(client, name) == ["1"] and history(client, name) == []  # created, then the tag failed
    r = register(p.registry, p.eval, lay)  # the flow's retry
    assert calls["n"] > 1 and r["version"] == "1" and r["promoted"]
    assert _versions(client, name) == ["1"]
    tags = client.get_model_version(name, "1").tags
    assert tags["gate.decision"] == "promoted" and len(tags["weights_sha256"]) == 64
    assert [(e["alias"], e["to"]) for e in history(client, name)] == [(p.registry.alias, "1")]


def test_a_failed_alias_move_then_a_retry_moves_it_once(evaluated, monkeypatch):
    p, lay, client = evaluated
    name = p.registry.model_name
    _fail_once(monkeypatch, register_module, "move_alias", MlflowException("alias write refused"))
    with pytest.raises(MlflowException, match="alias write refused"):
        register(p.registry, p.eval, lay)
    r = register(p.registry, p.eval, lay)
    assert r["version"] == "1" and _versions(client, name) == ["1"]
    assert [(e["alias"], e["to"]) for e in history(client, name)] == [(p.registry.alias, "1")]
    assert str(client.get_model_version_by_alias(name, p.registry.alias).version) == "1"


def test_a_retry_after_the_alias_moved_is_judged_against_the_champion_before_it(evaluated, monkeypatch):
    p, lay, client = evaluated
    name = p.registry.model_name
    register(p.registry, p.eval, lay)  # v1, champion
    # the second training's attempt dies right after moving the alias, before its check
    as_new_training(lay)
    monkeypatch.setattr(register_module, "verify_alias", _raise(RuntimeError("killed")))
    monkeypatch.setattr(register_module, "gate", _promote_anyway(register_module.gate))
    with pytest.raises(RuntimeError, match="killed"):
        register(p.registry, p.eval, lay)
    assert str(client.get_model_version_by_alias(name, p.registry.alias).version) == "2"
    monkeypatch.undo()
    r = register(p.registry, p.eval, lay)
    assert r["version"] == "2" and r["previous_champion"] == "1" and _versions(client, name) == ["1", "2"]
    moves = [(e["alias"], e["from"], e["to"]) for e in history(client, name)]
    assert moves.count((p.registry.alias, "1", "2")) == 1  # the retry did not move it a second time


@pytest.mark.parametrize("error", [KeyError("G_ema"), OSError("disk gone"), ValueError("bad json")])
def test_the_post_promotion_check_moves_the_alias_back_on_any_error(evaluated, monkeypatch, error):
    p, lay, client = evaluated
    name = p.registry.model_name
    monkeypatch.setattr(aliases, "load_generator", _raise(error))
    for _ in range(2):  # the flow retries register: still one version, and no champion left on it
        with pytest.raises(PromotionCheckFailed, match=type(error).__name__):
            register(p.registry, p.eval, lay)
        assert _versions(client, name) == ["1"]
        with pytest.raises(MlflowException):
            client.get_model_version_by_alias(name, p.registry.alias)


def _raise(exc):
    def fail(*args, **kwargs):
        raise exc

    return fail


def _promote_anyway(gate):
    def always(*args, **kwargs):
        d = gate(*args, **kwargs)
        return type(d)(True, "promoted for the test", d.checks)

    return always
