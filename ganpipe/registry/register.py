"""The `register` stage: register the trained generator, apply the gate, move the alias.

Tags each version with its lineage (data sha256, params hash, git commit, metrics, protocol
fingerprint). A champion scored under another protocol is re-scored under the current one.
"""

from __future__ import annotations

import mlflow
import torch
from mlflow.tracking import MlflowClient

from ganpipe.core import tracking
from ganpipe.core.device import resolve_device
from ganpipe.core.io import read_json, write_json
from ganpipe.core.locking import registry_lock
from ganpipe.core.params import EvalParams, RegistryParams, dumped_hash
from ganpipe.core.paths import Layout
from ganpipe.evaluation.evaluate import generated_features, score_generator, scores_of
from ganpipe.evaluation.features import build_extractor
from ganpipe.evaluation.metrics import paired_difference
from ganpipe.evaluation.refstats import load_ref_stats
from ganpipe.nets.checkpoint import G_EMA, GENERATOR_CONFIG, generator_from_checkpoint, load_checkpoint
from ganpipe.registry.aliases import CHALLENGER, current_holder, holder_before, move_alias, verify_alias
from ganpipe.registry.gate import gate
from ganpipe.registry.packaging import log_generator
from ganpipe.registry.refs import (
    WEIGHTS_SHA256_TAG,
    Scope,
    load_generator,
    logged_weights_sha256,
    stored_result,
    version_of_run,
)


def champion_result(
    client: MlflowClient, holder, G: torch.nn.Module, fp: str, p: EvalParams, extractor, ref, name: str
) -> dict:
    """The champion's scores under fingerprint `fp`: its own, a cached re-score, or a fresh re-score."""
    tags = holder.tags
    if tags.get("eval.fingerprint") == fp:
        return stored_result(tags, "metric.", fp)
    cached = stored_result(tags, f"rescore.{fp}.", fp)
    if len(cached) > 1:
        return cached
    print(
        f"champion v{holder.version} was scored under protocol {tags.get('eval.fingerprint')}; re-scoring it under {fp}"
    )
    result = score_generator(G, extractor, ref, p)
    for k, v in scores_of(result).items():
        client.set_model_version_tag(name, holder.version, f"rescore.{result['fingerprint']}.{k}", str(v))
    return result


def register(rp: RegistryParams, ep: EvalParams, layout: Layout) -> dict:
    """Register the trained generator and apply the promotion rule; write `registration.json`."""
    info = read_json(layout.run_info_path, "`ganpipe train`")
    metrics = read_json(layout.metrics_path, "`ganpipe evaluate`")
    ckpt = load_checkpoint(layout.checkpoint_path)
    candidate = {**scores_of(metrics), "fingerprint": metrics["fingerprint"], "protocol": metrics.get("protocol")}
    fp = metrics["fingerprint"]

    run_id = info["mlflow_run_id"]
    tracking_uri = tracking.configure(layout.root)
    client = MlflowClient()
    # One decision at a time per model and store: a pipeline finishing at the same moment waits, then is
    # compared with whatever this one leaves as champion (never both "first version", never the worse one).
    with registry_lock(tracking_uri, rp.model_name):
        # Decide first: a refused comparison (IncomparableError) leaves no half-registered version behind.
        # A retry of a failed attempt finds the version that attempt created for this training run and
        # finishes it: its tags, the gate and the alias; never a second version of one training.
        existing = version_of_run(client, rp.model_name, run_id)
        holder = current_holder(client, rp.model_name, rp.alias)
        if existing is not None and holder is not None and str(holder.version) == str(existing.version):
            holder = holder_before(client, rp.model_name, rp.alias, str(existing.version))  # judged against that one
        previous = None if holder is None else str(holder.version)
        champ, diff = None, None
        if holder is not None:
            device = resolve_device()
            extractor = build_extractor(ep, device)
            ref = load_ref_stats(layout.ref_stats_path)
            G_champ = load_generator(f"models:/{rp.model_name}/{holder.version}", Scope.only(rp.model_name), device)
            G_cand = generator_from_checkpoint(layout.checkpoint_path, device)[0]
            champ = champion_result(client, holder, G_champ, fp, ep, extractor, ref, rp.model_name)
            # Same seeds for both models: sample i of one pairs with sample i of the other (cached features).
            fa, _ = generated_features(G_champ, extractor, ep)
            fb, _ = generated_features(G_cand, extractor, ep)
            g = rp.gate
            diff = paired_difference(rp.primary_metric, ref.stats, fa, fb, g.bootstrap, g.confidence, ep.seed)
        decision = gate(candidate, champ, rp.primary_metric, diff, rp.gate)

        if existing is None:
            with mlflow.start_run(run_id=run_id):
                version, uri, weights_sha256 = log_generator(
                    ckpt[G_EMA], ckpt[GENERATOR_CONFIG], rp.model_name, info["data_sha256"]
                )
        else:
            version, uri = str(existing.version), f"models:/{rp.model_name}/{existing.version}"
            weights_sha256 = logged_weights_sha256(client, rp.model_name, version)
            print(f"{rp.model_name} v{version} was registered for run {run_id} by an earlier attempt: finishing it")
        tags = {
            WEIGHTS_SHA256_TAG: weights_sha256,
            "data_sha256": info["data_sha256"],
            "data_source": info.get("data_source", ""),
            "data_dvc_md5": info.get("data_dvc_md5", ""),
            "params_hash": dumped_hash(ckpt["params"]),
            "git_commit": info["git_commit"],
            "mlflow_run_id": info["mlflow_run_id"],
            "eval.fingerprint": fp,
            **{f"metric.{k}": str(v) for k, v in scores_of(candidate).items()},
            "gate.decision": "promoted" if decision.promote else "rejected",
            "gate.reason": decision.reason,
            **{f"gate.check.{c.name}": f"{'pass' if c.passed else 'fail'}: {c.detail}" for c in decision.checks},
            **({} if diff is None else {f"gate.{rp.primary_metric}_diff": "{:.6g} [{:.6g}, {:.6g}]".format(*diff)}),
        }
        for k, v in tags.items():
            client.set_model_version_tag(rp.model_name, version, k, v)
        alias = rp.alias if decision.promote else CHALLENGER
        now = current_holder(client, rp.model_name, alias)
        if now is None or str(now.version) != version:  # an earlier attempt may have moved it already
            move_alias(client, rp.model_name, alias, version, "register (gate)", decision.reason)
        if decision.promote:
            verify_alias(client, rp.model_name, rp.alias, version, previous)

    result = {
        "model_name": rp.model_name,
        "version": version,
        "model_uri": uri,
        "alias": rp.alias,
        "promoted": decision.promote,
        "reason": decision.reason,
        "previous_champion": previous,
        "champion": version if decision.promote else previous,
        "metrics": scores_of(candidate),
        "champion_metrics": None if champ is None else scores_of(champ),
        "fingerprint": fp,
        "interval": None
        if diff is None
        else {
            "metric": rp.primary_metric,
            "point": diff[0],
            "low": diff[1],
            "high": diff[2],
            "confidence": rp.gate.confidence,
        },
        "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in decision.checks],
    }
    write_json(layout.registration_path, result)
    return result
