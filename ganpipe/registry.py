"""The `register` stage and the only module that talks to the MLflow model registry.

Logs the EMA generator as a pickle-free pyfunc to the training run, registers it, tags the version
(data sha256, params hash, git commit, metrics, protocol fingerprint) and moves the alias when the
promotion rule says so. A champion scored under another protocol is re-scored under the current one.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema, TensorSpec

import ganpipe
from ganpipe import tracking
from ganpipe.checkpoint import load_checkpoint
from ganpipe.checkpoint import load_generator as load_checkpoint_generator
from ganpipe.device import resolve_device
from ganpipe.errors import RegistryError
from ganpipe.evaluate import generated_features, score_generator, scores_of
from ganpipe.features import build_extractor
from ganpipe.io import read_json, write_json
from ganpipe.params import EvalParams, RegistryParams, parse_params
from ganpipe.paths import Layout
from ganpipe.metrics import paired_difference
from ganpipe.promotion import gate
from ganpipe.refstats import load_ref_stats

PACKAGE_DIR = Path(ganpipe.__file__).parent
ENTRY = PACKAGE_DIR / "pyfunc_entry.py"
SHIPPED_MODULES = ("__init__.py", "models.py", "serving.py")  # what the model needs to load anywhere
ARTIFACT_NAME = "generator"


def _signature(config: dict) -> ModelSignature:
    shape = (-1, config["resolution"], config["resolution"], config["channels"])
    return ModelSignature(inputs=Schema([ColSpec("long", "seed")]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), shape)]))


def log_generator(G_ema_state: dict, config: dict, model_name: str) -> tuple[str, str]:
    """Log the generator to the active run and register it; returns (version, model_uri)."""
    from safetensors.torch import save_file

    with tempfile.TemporaryDirectory() as d:
        d = Path(d)
        save_file({k: v.contiguous() for k, v in G_ema_state.items()}, d / "generator.safetensors")
        (d / "config.json").write_text(json.dumps(config, indent=2))
        code = d / "code" / "ganpipe"
        code.mkdir(parents=True)
        for name in SHIPPED_MODULES:
            shutil.copy(PACKAGE_DIR / name, code / name)
        info = mlflow.pyfunc.log_model(
            name=ARTIFACT_NAME, python_model=str(ENTRY),
            artifacts={"weights": str(d / "generator.safetensors"), "config": str(d / "config.json")},
            code_paths=[str(code)], signature=_signature(config),
            input_example=pd.DataFrame({"seed": [0, 1]}),
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", f"mlflow=={mlflow.__version__}",
                              "safetensors", "numpy", "pandas"],
            registered_model_name=model_name)
    return str(info.registered_model_version), f"models:/{model_name}/{info.registered_model_version}"


def current_holder(client: MlflowClient, name: str, alias: str):
    """The model version holding `alias`, or None."""
    try:
        return client.get_model_version_by_alias(name, alias)
    except MlflowException:
        return None


def load_generator(ref: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The generator behind `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/...` or a checkpoint path."""
    if ref.startswith(("models:/", "runs:/")):
        try:
            model = mlflow.pyfunc.load_model(ref)
        except MlflowException as exc:
            raise RegistryError(f"{ref}: {exc.message.splitlines()[0]}") from None
        return model.unwrap_python_model().G.to(device)
    return load_checkpoint_generator(ref, device)[0]


def version_result(uri: str) -> dict:
    """The evaluation result stored on a registered version (`models:/NAME/VERSION` or `@ALIAS`)."""
    ref = uri[len("models:/"):]
    name, sep, alias = ref.partition("@")
    client = MlflowClient()
    try:
        mv = client.get_model_version_by_alias(name, alias) if sep else client.get_model_version(*ref.split("/", 1))
    except (MlflowException, TypeError) as exc:
        raise RegistryError(f"{uri}: {getattr(exc, 'message', str(exc)).splitlines()[0]}") from None
    return _stored_result(mv.tags, "metric.", mv.tags.get("eval.fingerprint", ""))


def _stored_result(tags: dict, prefix: str, fp: str) -> dict:
    """An evaluation result reconstructed from version tags `<prefix><key>`."""
    scores = {k[len(prefix):]: float(v) for k, v in tags.items() if k.startswith(prefix)}
    return {**scores, "fingerprint": fp}


def champion_result(client: MlflowClient, holder, G: torch.nn.Module, fp: str, p: EvalParams, extractor,
                    ref, name: str) -> dict:
    """The champion's scores under fingerprint `fp`: its own, a cached re-score, or a fresh re-score."""
    tags = holder.tags
    if tags.get("eval.fingerprint") == fp:
        return _stored_result(tags, "metric.", fp)
    cached = _stored_result(tags, f"rescore.{fp}.", fp)
    if len(cached) > 1:
        return cached
    print(f"champion v{holder.version} was scored under protocol {tags.get('eval.fingerprint')}; "
          f"re-scoring it under {fp}")
    result = score_generator(G, extractor, ref, p)
    for k, v in scores_of(result).items():
        client.set_model_version_tag(name, holder.version, f"rescore.{result['fingerprint']}.{k}", str(v))
    return result


def register(rp: RegistryParams, ep: EvalParams, layout: Layout) -> dict:
    """Register the trained generator and apply the promotion rule; write `registration.json`."""
    info = read_json(layout.run_info_path, "`ganpipe train`")
    metrics = read_json(layout.metrics_path, "`ganpipe evaluate`")
    ckpt = load_checkpoint(layout.checkpoint_path)
    train_params = parse_params(ckpt["params"], "checkpoint params")
    candidate = {**scores_of(metrics), "fingerprint": metrics["fingerprint"], "protocol": metrics.get("protocol")}
    fp = metrics["fingerprint"]

    tracking.configure(layout.root)
    client = MlflowClient()
    # Decide first: a refused comparison (IncomparableError) leaves no half-registered version behind.
    holder = current_holder(client, rp.model_name, rp.alias)
    previous = None if holder is None else str(holder.version)
    champ, diff = None, None
    if holder is not None:
        device = resolve_device()
        extractor = build_extractor(ep, device)
        ref = load_ref_stats(layout.ref_stats_path)
        G_champ = load_generator(f"models:/{rp.model_name}/{holder.version}", device)
        G_cand = load_checkpoint_generator(layout.checkpoint_path, device)[0]
        champ = champion_result(client, holder, G_champ, fp, ep, extractor, ref, rp.model_name)
        # Same seeds for both models: sample i of one pairs with sample i of the other (cached features).
        fa, _ = generated_features(G_champ, extractor, ep)
        fb, _ = generated_features(G_cand, extractor, ep)
        g = rp.gate
        diff = paired_difference(rp.primary_metric, ref.stats, fa, fb, g.bootstrap, g.confidence, ep.seed)
    decision = gate(candidate, champ, rp.primary_metric, diff, rp.gate)

    with mlflow.start_run(run_id=info["mlflow_run_id"]):
        version, uri = log_generator(ckpt["G_ema"], ckpt["generator_config"], rp.model_name)
    tags = {"data_sha256": info["data_sha256"], "params_hash": train_params.section_hash(),
            "git_commit": info["git_commit"], "mlflow_run_id": info["mlflow_run_id"],
            "eval.fingerprint": fp, **{f"metric.{k}": str(v) for k, v in scores_of(candidate).items()},
            "gate.decision": "promoted" if decision.promote else "rejected", "gate.reason": decision.reason,
            **{f"gate.check.{c.name}": f"{'pass' if c.passed else 'fail'}: {c.detail}" for c in decision.checks},
            **({} if diff is None else {f"gate.{rp.primary_metric}_diff": "{:.6g} [{:.6g}, {:.6g}]".format(*diff)})}
    for k, v in tags.items():
        client.set_model_version_tag(rp.model_name, version, k, v)
    if decision.promote:
        client.set_registered_model_alias(rp.model_name, rp.alias, version)

    result = {"model_name": rp.model_name, "version": version, "model_uri": uri, "alias": rp.alias,
              "promoted": decision.promote, "reason": decision.reason, "previous_champion": previous,
              "champion": version if decision.promote else previous, "metrics": scores_of(candidate),
              "champion_metrics": None if champ is None else scores_of(champ), "fingerprint": fp,
              "interval": None if diff is None else {"metric": rp.primary_metric, "point": diff[0], "low": diff[1],
                                                     "high": diff[2], "confidence": rp.gate.confidence},
              "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in decision.checks]}
    write_json(layout.registration_path, result)
    return result
