"""The `evaluate` stage and scoring of any generator under the current protocol.

Each image set goes through the extractor once; every selected metric uses those features. Generated
features are cached by (generator weights sha256, seeds, N, extractor), so re-scoring an unchanged
champion every night costs a cache read. Every result carries its protocol and fingerprint.
"""

from __future__ import annotations

from pathlib import Path

import mlflow
import torch

from ganpipe.core import cache, tracking
from ganpipe.core.device import resolve_device
from ganpipe.core.errors import DataError
from ganpipe.core.hashing import state_sha256
from ganpipe.core.io import read_json, write_json
from ganpipe.core.params import EvalParams
from ganpipe.evaluation.features import Extractor, build_extractor
from ganpipe.evaluation.metrics import FeatureSet, Options, compute
from ganpipe.evaluation.protocol import fingerprint, protocol
from ganpipe.evaluation.refstats import RefStats, load_ref_stats
from ganpipe.nets.checkpoint import generator_from_checkpoint
from ganpipe.nets.models import sample

CACHE_KIND = "generated-features"


def options(p: EvalParams) -> Options:
    return Options(
        kid_subset_size=p.kid_subset_size,
        kid_subsets=p.kid_subsets,
        is_splits=p.is_splits,
        pr_k=p.pr_k,
        dc_k=p.dc_k,
        memorization_quantile=p.memorization_quantile,
        bootstrap=p.bootstrap,
        confidence=p.confidence,
        seed=p.seed,
    )


def generated_features(G: torch.nn.Module, extractor: Extractor, p: EvalParams) -> tuple[FeatureSet, bool]:
    """Features (and logits) of G's images for seeds seed..seed+N-1, and whether they came from the cache.

    Latents come from per-image seeds before batching: results do not depend on batch size or device.
    """
    key = {"model_sha256": state_sha256(G), "seed": p.seed, "num_fake": p.num_fake, **extractor.fingerprint()}
    arrays = cache.get(CACHE_KIND, key)
    hit = arrays is not None
    if not hit:
        images = sample(G, list(range(p.seed, p.seed + p.num_fake)), batch_size=p.batch_size)
        feats, logits = extractor.extract_all(images, p.batch_size)
        arrays = {"features": feats, **({"logits": logits} if logits is not None else {})}
        cache.put(CACHE_KIND, key, arrays)
    return FeatureSet.from_features(arrays["features"], arrays.get("logits")), hit


def score_generator(G: torch.nn.Module, extractor: Extractor, ref: RefStats, p: EvalParams) -> dict:
    """Metrics of G under the protocol of `p` and `ref`: scores, unavailable metrics, protocol, fingerprint."""
    mine = extractor.fingerprint()
    theirs = {k: ref.key.get(k) for k in mine}
    if mine != theirs:
        raise DataError(
            f"reference statistics were computed with {theirs}, this evaluation uses {mine}; re-run `ganpipe ref-stats`"
        )
    fake, hit = generated_features(G, extractor, p)
    scores, unavailable = compute(list(p.metrics), ref.stats, fake, options(p))
    proto = protocol(p, ref.key)
    return {
        **scores,
        "unavailable": unavailable,
        "fingerprint": fingerprint(proto),
        "protocol": proto,
        "weights_source": extractor.weights_source,
        "generated_features_cached": hit,
    }


def scores_of(result: dict) -> dict[str, float]:
    """The numeric scores of a result (metric values, stds and interval bounds)."""
    return {k: v for k, v in result.items() if isinstance(v, float)}


def log_result(run_id: str, result: dict, p: EvalParams) -> None:
    """Scores as metrics; protocol, fingerprint and unavailable metrics as tags of the run."""
    with mlflow.start_run(run_id=run_id):
        mlflow.log_metrics(scores_of(result))
        # Tags, not params: a re-evaluation under a changed protocol must not clash with the old values.
        tags = {f"eval.{k}": v for k, v in p.model_dump(mode="json").items()}
        tags.update({f"eval.protocol.{k}": v for k, v in result["protocol"].items()})
        tags.update({f"eval.unavailable.{k}": why for k, why in result["unavailable"].items()})
        tags.update({"eval.fingerprint": result["fingerprint"], "eval.weights_source": result["weights_source"]})
        mlflow.set_tags(tags)


def evaluate(
    p: EvalParams,
    checkpoint_path: str | Path,
    ref_stats_path: str | Path,
    run_info_path: str | Path,
    metrics_path: str | Path,
    root: str | Path = ".",
) -> dict:
    """Score the checkpoint's EMA generator; write `metrics_path` and log to the training run."""
    ref = load_ref_stats(ref_stats_path)
    info = read_json(run_info_path, "`ganpipe train`")
    device = resolve_device()
    G, _ = generator_from_checkpoint(checkpoint_path, device)
    result = score_generator(G, build_extractor(p, device), ref, p)
    write_json(metrics_path, result)
    tracking.configure(root)
    log_result(info["mlflow_run_id"], result, p)
    return result
