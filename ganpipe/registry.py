"""The `register` stage and the only module that talks to the MLflow model registry.

Logs the EMA generator as a pickle-free pyfunc to the training run, registers it, tags the version
(data sha256, params hash, git commit, metrics, protocol fingerprint) and moves the alias when the
promotion rule says so. A champion scored under another protocol is re-scored under the current one.
"""

from __future__ import annotations

import getpass
import json
import shutil
import socket
import tempfile
import time
from datetime import datetime, timezone
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
from ganpipe.locking import registry_lock
from ganpipe.params import EvalParams, RegistryParams, dumped_hash
from ganpipe.paths import Layout
from ganpipe.metrics import paired_difference
from ganpipe.models import classes, latents
from ganpipe.promotion import gate
from ganpipe.refstats import load_ref_stats

PACKAGE_DIR = Path(ganpipe.__file__).parent
ENTRY = PACKAGE_DIR / "pyfunc_entry.py"
SHIPPED_MODULES = ("__init__.py", "models.py", "resnet.py", "serving.py", "images.py", "io.py")  # what it needs anywhere
ARTIFACT_NAME = "generator"
CHALLENGER = "challenger"  # the latest version that did not pass the gate
HISTORY_PREFIX = "alias_move."
POST_CHECK = "post-promotion check"
CHECK_IMAGES = 16
MIN_DIVERSITY = 1e-5  # mean pairwise RMS pixel distance (in [-1, 1] units) below which images are "all alike"


class PromotionCheckFailed(RegistryError):
    """The model an alias was just moved to failed its post-promotion check; the alias was moved back."""


def _signature(config: dict) -> ModelSignature:
    """Output columns only: an input schema would make MLflow drop unknown fields silently before the
    model sees them, and the model must refuse them (ganpipe.serving validates every record itself)."""
    cls = [ColSpec("long", "class")] if config.get("num_classes") else []
    return ModelSignature(inputs=None, outputs=Schema(
        [ColSpec("long", "seed"), ColSpec("double", "psi"), *cls, ColSpec("string", "image")]))


def _input_doc(config: dict) -> dict:
    """What the served model accepts, in the MLmodel file (the signature leaves inputs to the model)."""
    k = config.get("num_classes", 0)
    return {"seed": "integer, required: latent seed (0 <= seed < 2**63)",
            "psi": "number, optional: truncation 0 < psi <= 2 (default 1)",
            "class": (f"integer, optional: 0..{k - 1} (default seed mod {k})" if k
                      else "not accepted: the generator is unconditional"),
            "output": "one row per record: seed, psi, class, image (base64 PNG with provenance text chunks)"}


def log_generator(G_ema_state: dict, config: dict, model_name: str, data_sha256: str = "") -> tuple[str, str]:
    """Log the generator to the active run and register it; returns (version, model_uri)."""
    from safetensors.torch import save_file

    config = {**config, "provenance": {"run_id": mlflow.active_run().info.run_id, "data_sha256": data_sha256}}
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
            code_paths=[str(code)], signature=_signature(config), metadata={"ganpipe_input": _input_doc(config)},
            input_example=pd.DataFrame({"seed": [0, 1], "psi": [1.0, 0.7]}),
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


def _actor() -> str:
    return f"{getpass.getuser()}@{socket.gethostname()}"


def move_alias(client: MlflowClient, name: str, alias: str, version: str, via: str, reason: str) -> dict:
    """Point `alias` at `version` and record the move (who, when, from, to, how, why) as a tag of the
    registered model: `ganpipe history` reads them back."""
    holder = current_holder(client, name, alias)
    event = {"alias": alias, "from": None if holder is None else str(holder.version), "to": str(version),
             "at": datetime.now(timezone.utc).isoformat(timespec="seconds"), "by": _actor(), "via": via,
             "reason": reason}
    client.set_registered_model_alias(name, alias, str(version))
    client.set_registered_model_tag(name, f"{HISTORY_PREFIX}{time.time_ns()}", json.dumps(event))
    return event


def history(client: MlflowClient, name: str) -> list[dict]:
    """Every recorded alias move, oldest first."""
    try:
        tags = client.get_registered_model(name).tags
    except MlflowException as exc:
        raise RegistryError(f"{name}: {exc.message.splitlines()[0]}") from None
    return [json.loads(tags[k]) for k in sorted((k for k in tags if k.startswith(HISTORY_PREFIX)),
                                                 key=lambda k: int(k[len(HISTORY_PREFIX):]))]


def verify_alias(client: MlflowClient, name: str, alias: str, expected: str, previous: str | None) -> None:
    """Post-promotion check: what `models:/NAME@ALIAS` serves now is `expected`, its raw output is
    finite and its images are not all alike. On failure the alias goes back and PromotionCheckFailed."""
    problem = None
    try:
        served = current_holder(client, name, alias)
        if served is None or str(served.version) != str(expected):
            problem = f"alias {alias} points at {None if served is None else served.version}, not v{expected}"
        else:
            G = load_generator(f"models:/{name}@{alias}")
            with torch.no_grad():
                x = G(latents(range(CHECK_IMAGES), G.z_dim), classes(G, range(CHECK_IMAGES)))
            if not torch.isfinite(x).all():
                problem = "the generator's output is not finite"
            elif (diversity := float(torch.pdist(x.flatten(1)).mean() / x[0].numel() ** 0.5)) < MIN_DIVERSITY:
                problem = f"{CHECK_IMAGES} images are (nearly) identical (diversity {diversity:.2g} < {MIN_DIVERSITY:g})"
    except (MlflowException, RegistryError, RuntimeError) as exc:
        problem = f"cannot load and run it ({type(exc).__name__}: {exc})"
    if problem is None:
        return
    if previous is not None:
        move_alias(client, name, alias, previous, POST_CHECK, f"v{expected} failed: {problem}")
    else:
        client.delete_registered_model_alias(name, alias)
    raise PromotionCheckFailed(f"post-promotion check of {name}@{alias} = v{expected} failed: {problem}; "
                               f"{alias} is back on {'v' + previous if previous else 'no version'}")


def promote(client: MlflowClient, name: str, alias: str, version: str, reason: str) -> dict:
    """Manual override: move `alias` to `version` (no gate), then the post-promotion check."""
    try:
        client.get_model_version(name, str(version))
    except MlflowException as exc:
        raise RegistryError(f"{name} v{version}: {exc.message.splitlines()[0]}") from None
    with registry_lock(mlflow.get_tracking_uri(), name):
        event = move_alias(client, name, alias, str(version), "promote (manual)", reason)
        verify_alias(client, name, alias, str(version), event["from"])
    return event


def rollback(client: MlflowClient, name: str, alias: str, reason: str) -> dict:
    """Move `alias` back to the version it held before its current one."""
    with registry_lock(mlflow.get_tracking_uri(), name):
        return _rollback(client, name, alias, reason)


def _rollback(client: MlflowClient, name: str, alias: str, reason: str) -> dict:
    holder = current_holder(client, name, alias)
    if holder is None:
        raise RegistryError(f"{name} has no {alias} to roll back")
    events = [e for e in history(client, name) if e["alias"] == alias]
    failed = {e["from"] for e in events if e["via"] == POST_CHECK}  # never roll back onto a broken version
    moves = [e for e in events if e["to"] == str(holder.version) and e["from"] and e["via"] != POST_CHECK
             and e["from"] not in failed]
    if not moves:
        raise RegistryError(f"{name}@{alias} = v{holder.version} has no previous version to roll back to")
    event = move_alias(client, name, alias, moves[-1]["from"], "rollback", reason)
    verify_alias(client, name, alias, event["to"], event["from"])
    return event


def model_meta(ref: str) -> dict:
    """Where a model comes from, for provenance: name, pinned version and URI, alias, run id, data sha256."""
    if ref.startswith("runs:/"):
        run_id = ref[len("runs:/"):].split("/", 1)[0]
        try:
            tags = MlflowClient().get_run(run_id).data.tags
        except MlflowException as exc:
            raise RegistryError(f"{ref}: {exc.message.splitlines()[0]}") from None
        return {"model": ref, "model_uri": ref, "version": "", "alias": "", "run_id": run_id,
                "data_sha256": tags.get("ganpipe.data_sha256", "")}
    if not ref.startswith("models:/"):
        ckpt = load_checkpoint(ref)
        return {"model": str(Path(ref).resolve()), "model_uri": str(Path(ref).resolve()), "version": "",
                "alias": "", "run_id": ckpt.get("mlflow_run_id", ""), "data_sha256": ckpt.get("data_sha256", "")}
    mv = _model_version(MlflowClient(), ref)
    alias = ref.partition("@")[2]
    return {"model": mv.name, "model_uri": f"models:/{mv.name}/{mv.version}", "version": str(mv.version),
            "alias": alias, "run_id": mv.run_id or "", "data_sha256": mv.tags.get("data_sha256", "")}


def load_generator(ref: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The generator behind `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/...` or a checkpoint path."""
    if ref.startswith(("models:/", "runs:/")):
        try:
            model = mlflow.pyfunc.load_model(ref)
        except MlflowException as exc:
            raise RegistryError(f"{ref}: {exc.message.splitlines()[0]}") from None
        return model.unwrap_python_model().G.to(device)
    return load_checkpoint_generator(ref, device)[0]


def _model_version(client: MlflowClient, ref: str):
    """The model version behind `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
    name, sep, alias = ref[len("models:/"):].partition("@")
    try:
        return client.get_model_version_by_alias(name, alias) if sep else client.get_model_version(*name.split("/", 1))
    except (MlflowException, TypeError) as exc:
        raise RegistryError(f"{ref}: {getattr(exc, 'message', str(exc)).splitlines()[0]}") from None


def version_result(uri: str) -> dict:
    """The evaluation result stored on a registered version (`models:/NAME/VERSION` or `@ALIAS`)."""
    mv = _model_version(MlflowClient(), uri)
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
    candidate = {**scores_of(metrics), "fingerprint": metrics["fingerprint"], "protocol": metrics.get("protocol")}
    fp = metrics["fingerprint"]

    tracking_uri = tracking.configure(layout.root)
    client = MlflowClient()
    # One decision at a time per model and store: a pipeline finishing at the same moment waits, then is
    # compared with whatever this one leaves as champion (never both "first version", never the worse one).
    with registry_lock(tracking_uri, rp.model_name):
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
            version, uri = log_generator(ckpt["G_ema"], ckpt["generator_config"], rp.model_name,
                                         info["data_sha256"])
        tags = {"data_sha256": info["data_sha256"], "data_source": info.get("data_source", ""),
                "data_dvc_md5": info.get("data_dvc_md5", ""), "params_hash": dumped_hash(ckpt["params"]),
                "git_commit": info["git_commit"], "mlflow_run_id": info["mlflow_run_id"],
                "eval.fingerprint": fp, **{f"metric.{k}": str(v) for k, v in scores_of(candidate).items()},
                "gate.decision": "promoted" if decision.promote else "rejected", "gate.reason": decision.reason,
                **{f"gate.check.{c.name}": f"{'pass' if c.passed else 'fail'}: {c.detail}" for c in decision.checks},
                **({} if diff is None else {f"gate.{rp.primary_metric}_diff": "{:.6g} [{:.6g}, {:.6g}]".format(*diff)})}
        for k, v in tags.items():
            client.set_model_version_tag(rp.model_name, version, k, v)
        if decision.promote:
            move_alias(client, rp.model_name, rp.alias, version, "register (gate)", decision.reason)
            verify_alias(client, rp.model_name, rp.alias, version, previous)
        else:
            move_alias(client, rp.model_name, CHALLENGER, version, "register (gate)", decision.reason)

    result = {"model_name": rp.model_name, "version": version, "model_uri": uri, "alias": rp.alias,
              "promoted": decision.promote, "reason": decision.reason, "previous_champion": previous,
              "champion": version if decision.promote else previous, "metrics": scores_of(candidate),
              "champion_metrics": None if champ is None else scores_of(champ), "fingerprint": fp,
              "interval": None if diff is None else {"metric": rp.primary_metric, "point": diff[0], "low": diff[1],
                                                     "high": diff[2], "confidence": rp.gate.confidence},
              "checks": [{"name": c.name, "passed": c.passed, "detail": c.detail} for c in decision.checks]}
    write_json(layout.registration_path, result)
    return result
