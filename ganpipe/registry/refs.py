"""Model references: `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/RUN_ID/...` or a checkpoint
path, resolved to a generator, to provenance, or to the evaluation result stored with a version."""

from __future__ import annotations

from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ganpipe.core.errors import RegistryError
from ganpipe.nets.checkpoint import generator_from_checkpoint, load_checkpoint


def model_meta(ref: str) -> dict:
    """Where a model comes from, for provenance: name, pinned version and URI, alias, run id, data sha256."""
    if ref.startswith("runs:/"):
        run_id = ref[len("runs:/") :].split("/", 1)[0]
        try:
            tags = MlflowClient().get_run(run_id).data.tags
        except MlflowException as exc:
            raise RegistryError(f"{ref}: {exc.message.splitlines()[0]}") from None
        return {
            "model": ref,
            "model_uri": ref,
            "version": "",
            "alias": "",
            "run_id": run_id,
            "data_sha256": tags.get("ganpipe.data_sha256", ""),
        }
    if not ref.startswith("models:/"):
        ckpt = load_checkpoint(ref)
        return {
            "model": str(Path(ref).resolve()),
            "model_uri": str(Path(ref).resolve()),
            "version": "",
            "alias": "",
            "run_id": ckpt.get("mlflow_run_id", ""),
            "data_sha256": ckpt.get("data_sha256", ""),
        }
    mv = model_version(MlflowClient(), ref)
    alias = ref.partition("@")[2]
    return {
        "model": mv.name,
        "model_uri": f"models:/{mv.name}/{mv.version}",
        "version": str(mv.version),
        "alias": alias,
        "run_id": mv.run_id or "",
        "data_sha256": mv.tags.get("data_sha256", ""),
    }


def load_generator(ref: str, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The generator behind `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/...` or a checkpoint path."""
    if ref.startswith(("models:/", "runs:/")):
        try:
            model = mlflow.pyfunc.load_model(ref)
        except MlflowException as exc:
            raise RegistryError(f"{ref}: {exc.message.splitlines()[0]}") from None
        return model.unwrap_python_model().G.to(device)
    return generator_from_checkpoint(ref, device)[0]


def model_version(client: MlflowClient, ref: str):
    """The model version behind `models:/NAME/VERSION` or `models:/NAME@ALIAS`."""
    name, sep, alias = ref[len("models:/") :].partition("@")
    try:
        return client.get_model_version_by_alias(name, alias) if sep else client.get_model_version(*name.split("/", 1))
    except (MlflowException, TypeError) as exc:
        raise RegistryError(f"{ref}: {getattr(exc, 'message', str(exc)).splitlines()[0]}") from None


def version_result(uri: str) -> dict:
    """The evaluation result stored on a registered version (`models:/NAME/VERSION` or `@ALIAS`)."""
    mv = model_version(MlflowClient(), uri)
    return stored_result(mv.tags, "metric.", mv.tags.get("eval.fingerprint", ""))


def stored_result(tags: dict, prefix: str, fp: str) -> dict:
    """An evaluation result reconstructed from version tags `<prefix><key>`."""
    scores = {k[len(prefix) :]: float(v) for k, v in tags.items() if k.startswith(prefix)}
    return {**scores, "fingerprint": fp}
