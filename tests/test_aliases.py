"""Alias moves with history, manual promotion, rollback and the post-promotion check (real registry)."""

from __future__ import annotations

import pytest
import torch

from ganpipe.evaluation.evaluate import evaluate
from ganpipe.nets.checkpoint import load_checkpoint, save_checkpoint
from ganpipe.registry.aliases import PromotionCheckFailed, history, promote, rollback
from ganpipe.registry.register import register
from tests.conftest import as_new_training, last_conv_key, mlflow_client


def _evaluate_and_register(p, lay):
    as_new_training(lay)  # each registration here stands for another training
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    return register(p.registry, p.eval, lay)


def test_history_promote_rollback_and_post_promotion_check(trained_project, run_cli):
    p, lay = trained_project
    name, alias = p.registry.model_name, p.registry.alias
    client = mlflow_client(lay.root)
    champion = lambda: str(client.get_model_version_by_alias(name, alias).version)  # noqa: E731

    assert _evaluate_and_register(p, lay)["promoted"]  # v1: first version
    assert not _evaluate_and_register(p, lay)["promoted"]  # v2: same weights, a tie
    assert str(client.get_model_version_by_alias(name, "challenger").version) == "2"

    promote(client, name, alias, "2", "ops: v2 was tested by hand")
    assert champion() == "2"
    rollback(client, name, alias, "v2 misbehaved")
    assert champion() == "1"

    moves = history(client, name)
    assert [(m["alias"], m["from"], m["to"], m["via"]) for m in moves] == [
        ("champion", None, "1", "register (gate)"),
        ("challenger", None, "2", "register (gate)"),
        ("champion", "1", "2", "promote (manual)"),
        ("champion", "2", "1", "rollback"),
    ]
    assert moves[2]["reason"] == "ops: v2 was tested by hand" and moves[3]["reason"] == "v2 misbehaved"
    assert all(m["by"] and m["at"] for m in moves)

    # A broken generator (output layer zeroed: every image the same grey) is rejected by the gate,
    # and a manual promotion of it fails the post-promotion check: the alias goes back.
    original = lay.checkpoint_path.read_bytes()
    ckpt = load_checkpoint(lay.checkpoint_path)
    key = last_conv_key(ckpt["G_ema"])
    ckpt["G_ema"][key] = torch.zeros_like(ckpt["G_ema"][key])
    save_checkpoint(lay.checkpoint_path, {k: v for k, v in ckpt.items() if k != "format_version"})
    try:
        r3 = _evaluate_and_register(p, lay)
        assert not r3["promoted"] and r3["version"] == "3"
        with pytest.raises(PromotionCheckFailed, match="identical"):
            promote(client, name, alias, "3", "force it")
        assert champion() == "1"
        assert history(client, name)[-1]["via"] == "post-promotion check"

        code, _, err = run_cli("-C", lay.root, "promote", "--version", "3", "--reason", "again")
        assert code == 2 and "post-promotion check" in err and "Traceback" not in err
        assert champion() == "1"
    finally:
        lay.checkpoint_path.write_bytes(original)

    code, shown, err = run_cli("-C", lay.root, "history")
    assert code == 0, err
    assert "v1 -> v2" in shown and "via rollback: v2 misbehaved" in shown and "v3  rejected" in shown
    assert "aliases=champion" in shown and "aliases=challenger" in shown
    # rollback skips the revert of the failed promotion and goes to the champion before v1's return
    assert rollback(client, name, alias, "back to v2")["to"] == "2"
    rollback(client, name, alias, "and back")  # v2 came from v1 (manual promotion)
    assert champion() == "1"
    # the very first champion has nothing before it
    fresh = [m for m in history(client, name) if m["alias"] == alias]
    assert fresh[0]["from"] is None
