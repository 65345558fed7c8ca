"""Model references: `models:/NAME/VERSION`, `models:/NAME@ALIAS`, `runs:/RUN_ID/generator` or a checkpoint
path, resolved to a generator, to provenance, or to the evaluation result stored with a version.

What ganpipe loads is data, never code: a registered generator's weights (safetensors) and config are
downloaded and the network is built with the installed ganpipe; the pyfunc stored beside them is for
other MLflow clients and is never executed here. References are limited to a `Scope`: the project's
registered model (`registry.model_name`), runs of the project's experiment, and checkpoint files; a
foreign model or run loads only when the user names it explicitly (`--allow-foreign-model`). The
weights' sha256, recorded at registration, is checked on every load.
"""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass
from pathlib import Path

import mlflow
import torch
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from ganpipe.core.environment import refuse_pickles
from ganpipe.core.errors import RegistryError
from ganpipe.core.hashing import file_sha256
from ganpipe.nets.checkpoint import generator_from_checkpoint, load_checkpoint
from ganpipe.nets.models import build_generator

ARTIFACT_NAME = "generator"  # the logged model's name in its training run
WEIGHTS_FILE, CONFIG_FILE = "generator.safetensors", "config.json"  # under the model's artifacts/
WEIGHTS_SHA256_TAG = "weights_sha256"  # version tag and model metadata key, written at registration


@dataclass(frozen=True)
class Scope:
    """The model references a command may load (see the module docstring)."""

    model_name: str
    experiment: str = ""  # runs:/ of this experiment only; "" = none
    allow_foreign: bool = False

    @classmethod
    def of(cls, params, allow_foreign: bool = False) -> Scope:
        return cls(params.registry.model_name, params.base.experiment, allow_foreign)

    @classmethod
    def project(cls, root: str | Path, allow_foreign: bool = False) -> Scope:
        """The scope of the project at `root` (its params.yaml)."""
        from ganpipe.core.params import load_params
        from ganpipe.core.paths import layout

        return cls.of(load_params(layout(root).params_path), allow_foreign)

    @classmethod
    def only(cls, model_name: str) -> Scope:
        """Versions of one registered model (what the registry's own bookkeeping loads)."""
        return cls(model_name)


def _refuse(ref: str, why: str) -> RegistryError:
    return RegistryError(f"{ref}: {why}; pass --allow-foreign-model to load it anyway")


def check_scope(ref: str, scope: Scope) -> None:
    """Refuse a reference outside `scope` (one line naming what is allowed)."""
    if scope.allow_foreign or not ref.startswith(("models:/", "runs:/")):
        return
    if ref.startswith("models:/"):
        name = ref[len("models:/") :].partition("@")[0].split("/", 1)[0]
        if name != scope.model_name:
            raise _refuse(ref, f"not this project's registered model {scope.model_name!r} (registry.model_name)")
        return
    run_id = ref[len("runs:/") :].split("/", 1)[0]
    try:
        exp_id = MlflowClient().get_run(run_id).info.experiment_id
        exp = MlflowClient().get_experiment(exp_id)
    except MlflowException as exc:
        raise RegistryError(f"{ref}: {exc.message.splitlines()[0]}") from None
    if not scope.experiment or exp.name != scope.experiment:
        raise _refuse(ref, f"a run of experiment {exp.name!r}, not of this project's {scope.experiment!r}")


def model_meta(ref: str, scope: Scope) -> dict:
    """Where a model comes from, for provenance: name, pinned version and URI, alias, run id, data sha256."""
    check_scope(ref, scope)
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


def load_generator(ref: str, scope: Scope, device: str | torch.device = "cpu") -> torch.nn.Module:
    """The generator behind `models:/NAME@ALIAS`, `models:/NAME/VERSION`, `runs:/RUN_ID/...` or a checkpoint
    path, in eval mode: weights and config read from the artifact store, network built with this code."""
    if not ref.startswith(("models:/", "runs:/")):
        return generator_from_checkpoint(ref, device)[0]
    with tempfile.TemporaryDirectory(prefix="ganpipe-model-") as tmp:
        return fetch_verified(ref, scope, tmp)[3].to(device)


def fetch_verified(ref: str, scope: Scope, dst: str | Path) -> tuple[Path, dict, str, torch.nn.Module]:
    """Download the weights and config of a registered version or run's model into `dst`, check them
    against the recorded sha256, and build the network: (weights path, config, label, generator)."""
    check_scope(ref, scope)
    refuse_pickles()
    if ref.startswith("models:/"):
        mv = model_version(MlflowClient(), ref)
        label = f"{mv.name} v{mv.version}"
        try:
            model_dir = MlflowClient().get_model_version_download_uri(mv.name, mv.version)
        except MlflowException as exc:
            raise RegistryError(f"{ref}: {exc.message.splitlines()[0]}") from None
        recorded = mv.tags.get(WEIGHTS_SHA256_TAG, "")
    else:
        run_id = ref[len("runs:/") :].split("/", 1)[0]
        label, model_dir, recorded = f"run {run_id}", f"runs:/{run_id}/{ARTIFACT_NAME}", ""
    weights, config = _download(model_dir, label, str(dst))
    G = build_verified(weights, config, label, recorded or _metadata_sha256(model_dir, str(dst)))
    return weights, config, label, G


def _download(model_dir: str, label: str, dst: str) -> tuple[Path, dict]:
    """The weights file and the config of the model at `model_dir` (an artifact URI), downloaded only."""
    files = {}
    for name in (WEIGHTS_FILE, CONFIG_FILE):
        try:
            files[name] = Path(mlflow.artifacts.download_artifacts(f"{model_dir}/artifacts/{name}", dst_path=dst))
        except (MlflowException, OSError) as exc:
            raise RegistryError(f"{label}: {name} cannot be read ({str(exc).splitlines()[0]})") from None
    try:
        config = json.loads(files[CONFIG_FILE].read_text())
    except (ValueError, OSError) as exc:
        raise RegistryError(f"{label}: {CONFIG_FILE} is not valid JSON ({exc})") from None
    return files[WEIGHTS_FILE], config


def version_of_run(client: MlflowClient, name: str, run_id: str):
    """The version of `name` registered from training run `run_id`, or None."""
    try:
        found = client.search_model_versions(f"name = '{name}' and run_id = '{run_id}'")
    except MlflowException:  # the registered model does not exist yet
        return None
    return min(found, key=lambda mv: int(mv.version)) if found else None


def logged_weights_sha256(client: MlflowClient, name: str, version: str) -> str:
    """The weights' sha256 that packaging recorded in the version's model metadata."""
    with tempfile.TemporaryDirectory(prefix="ganpipe-model-") as tmp:
        return _metadata_sha256(client.get_model_version_download_uri(name, version), tmp)


def _metadata_sha256(model_dir: str, dst: str) -> str:
    """The weights' sha256 recorded in the logged model's metadata (MLmodel), or '' (versions logged
    before ganpipe recorded it)."""
    import yaml

    try:
        path = mlflow.artifacts.download_artifacts(f"{model_dir}/MLmodel", dst_path=dst)
        return str((yaml.safe_load(Path(path).read_text()).get("metadata") or {}).get(WEIGHTS_SHA256_TAG, ""))
    except (MlflowException, OSError, ValueError, AttributeError):
        return ""


def build_verified(weights: Path, config: dict, label: str, recorded: str) -> torch.nn.Module:
    """The generator of `config` with `weights`, after checking them against the recorded sha256 (when one
    was recorded). A corrupt, truncated or swapped file is refused in one line naming the model and file."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if recorded and (actual := file_sha256(weights)) != recorded:
        raise RegistryError(
            f"{label}: {weights.name} does not match the sha256 recorded at registration "
            f"({actual[:12]}... != {recorded[:12]}...): the file is corrupt or was replaced"
        )
    try:
        G = build_generator(config)
        G.load_state_dict(load_file(weights))
    except (SafetensorError, RuntimeError, KeyError, TypeError, ValueError, OSError) as exc:
        raise RegistryError(f"{label}: {weights.name} cannot be loaded ({str(exc).splitlines()[0]})") from None
    return G.eval().requires_grad_(False)


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
