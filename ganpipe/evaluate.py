"""The `evaluate` stage: score the EMA generator against the reference statistics.

Every result carries its protocol (extractor, weights sha256, resize, reference data hash and N,
generated N, seeds): two scores are comparable only when their protocol fingerprints are equal.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import mlflow
import torch

from ganpipe import tracking
from ganpipe.checkpoint import load_generator
from ganpipe.device import resolve_device
from ganpipe.errors import DataError
from ganpipe.features import Extractor, build_extractor
from ganpipe.io import read_json, write_json
from ganpipe.metrics import FeatureSet, compute
from ganpipe.models import sample
from ganpipe.params import EvalParams
from ganpipe.refstats import RefStats, load_ref_stats


def protocol(p: EvalParams, ref: RefStats) -> dict:
    """Everything that must match for two scores to be comparable."""
    return {"metrics": ",".join(sorted(p.metrics)), "num_fake": p.num_fake, "seed": p.seed,
            "kid_subset_size": p.kid_subset_size, "kid_subsets": p.kid_subsets,
            "ref_data_sha256": ref.key["data_sha256"], "ref_split": ref.key["split"],
            "num_real": ref.key["num_real"], "extractor": ref.key["extractor"],
            "weights_sha256": ref.key["weights_sha256"], "resize": ref.key["resize"]}


def fingerprint(proto: dict) -> str:
    return hashlib.sha256(json.dumps(proto, sort_keys=True).encode()).hexdigest()[:16]


def score_generator(G: torch.nn.Module, extractor: Extractor, ref: RefStats, p: EvalParams) -> dict[str, float]:
    """Metrics of G under the protocol of `p` and `ref`; latents come from per-image seeds."""
    mine = extractor.fingerprint()
    theirs = {k: ref.key.get(k) for k in mine}
    if mine != theirs:
        raise DataError(f"reference statistics were computed with {theirs}, this evaluation uses {mine}; "
                        "re-run `ganpipe ref-stats`")
    seeds = list(range(p.seed, p.seed + p.num_fake))
    images = sample(G, seeds, batch_size=p.batch_size)
    fake = FeatureSet.from_features(extractor.extract(images, p.batch_size))
    return compute(list(p.metrics), ref.stats, fake, kid_subset_size=p.kid_subset_size,
                   kid_subsets=p.kid_subsets, seed=p.seed)


def evaluate(p: EvalParams, checkpoint_path: str | Path, ref_stats_path: str | Path, run_info_path: str | Path,
             metrics_path: str | Path, root: str | Path = ".") -> dict:
    """Score the checkpoint's EMA generator; write `metrics_path` and log to the training run."""
    ref = load_ref_stats(ref_stats_path)
    info = read_json(run_info_path, "`ganpipe train`")
    device = resolve_device()
    G, _ = load_generator(checkpoint_path, device)
    extractor = build_extractor(p, device)
    scores = score_generator(G, extractor, ref, p)
    proto = protocol(p, ref)
    result = {**scores, "fingerprint": fingerprint(proto), "protocol": proto,
              "weights_source": extractor.weights_source}
    write_json(metrics_path, result)

    tracking.configure(root)
    with mlflow.start_run(run_id=info["mlflow_run_id"]):
        mlflow.log_metrics(scores)
        # Tags, not params: a re-evaluation under a changed protocol must not clash with the old values.
        mlflow.set_tags({**{f"eval.{k}": v for k, v in p.model_dump(mode="json").items()},
                         "eval.fingerprint": result["fingerprint"],
                         "eval.weights_sha256": extractor.weights_sha256,
                         "eval.weights_source": extractor.weights_source,
                         "eval.extractor": extractor.name})
    return result
