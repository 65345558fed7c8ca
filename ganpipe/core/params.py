"""Typed, strict view of params.yaml: the single source of types; params.yaml is the source of values.

Unknown keys, missing keys, wrong types and out-of-range values raise `ConfigError` naming the key
path, the value and what is allowed (DVC's `-S` happily adds misspelt keys; this is what catches them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from ganpipe.core.errors import ConfigError
from ganpipe.core.hashing import json_sha256
from ganpipe.core.metric_keys import DIRECTIONS, METRIC_NAMES

DEFAULT_PARAMS_PATH = Path("params.yaml")

# The allowed values of the keys other modules dispatch on: the code that dispatches takes its list
# from here (`typing.get_args`) or, in nets/ (which ships inside registered models), is tested against it.
TorchvisionDataset = Literal["mnist", "fashion_mnist", "cifar10", "cifar100", "stl10"]
Crop = Literal["center", "pad"]
Arch = Literal["dcgan", "resnet"]
Loss = Literal["nonsaturating", "wgan-gp", "hinge", "lsgan", "relativistic"]
SweepValue = bool | int | float | str | None


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, frozen=True)


class BaseParams(_Section):
    seed: int = Field(ge=0, description="seed for model init and training randomness")
    device: str = Field(pattern=r"^(auto|cpu|cuda(:\d+)?)$", description="auto | cpu | cuda | cuda:N")
    experiment: str = Field(min_length=1, description="MLflow experiment name")


class DataParams(_Section):
    source: Literal["digits", "openmoji", "imagefolder", "torchvision"]
    path: str = Field(min_length=1, description="imagefolder: a directory, .zip or .tar(.gz) of images")
    labels: Literal["none", "folders"] = Field(description="imagefolder: class = first-level sub-folder")
    licence: str = Field(description="imagefolder: licence / attribution of your images (manifest)")
    dataset: TorchvisionDataset
    download_dir: str | None = Field(description="torchvision cache; null: $GANPIPE_CACHE_DIR/torchvision")
    resolution: int = Field(ge=8, le=1024)
    channels: Literal[1, 3]
    crop: Crop
    hflip: bool = Field(description="add a mirrored copy of each training image")
    test_fraction: float = Field(gt=0.0, lt=1.0)
    split_seed: int = Field(ge=0)
    on_error: Literal["skip", "fail"]
    min_images: int = Field(ge=2)
    shard_size: int = Field(ge=1, le=1_000_000)
    workers: int = Field(ge=0, le=256, description="decode processes; 0: one per CPU core")

    @field_validator("resolution")
    @classmethod
    def _power_of_two(cls, v: int) -> int:
        if v & (v - 1):
            raise ValueError("must be a power of two between 8 and 1024")
        return v


class ModelParams(_Section):
    arch: Arch = Field(description="dcgan (Radford et al.) | resnet (SNGAN, spectral norm)")
    z_dim: int = Field(ge=1, le=4096)
    g_channels: int = Field(ge=1, le=2048)
    d_channels: int = Field(ge=1, le=2048)
    conditional: bool = Field(description="class-conditional G (conditional BN) and D; needs labels")


class TrainParams(_Section):
    loss: Loss
    d_steps: int = Field(ge=1, le=100, description="D (critic) updates per G update; WGAN-GP uses 5")
    gp_lambda: float = Field(ge=0, description="wgan-gp: weight of the gradient penalty")
    r1_gamma: float = Field(ge=0, description="R1 penalty on real images (Mescheder et al. 2018); 0 = off")
    r2_gamma: float = Field(0.0, ge=0, description="R2 penalty on generated images (R3GAN, Huang et al. 2024); 0 = off")
    batch_size: int = Field(ge=1, le=65536)
    total_kimg: float = Field(gt=0)
    snapshot_kimg: float = Field(gt=0)
    lr: float = Field(gt=0, le=1)
    beta1: float = Field(ge=0, lt=1)
    beta2: float = Field(ge=0, lt=1)
    ema_kimg: float = Field(ge=0, description="half-life of the EMA generator in kimg; 0 disables")
    ema_rampup: float | None = Field(ge=0, description="EMA half-life <= this x kimg seen (StyleGAN2-ADA); null = off")
    # booleans, not on/off: YAML 1.1 readers (PyYAML, DVC's -S) turn a bare on/off into true/false
    augment: Literal["auto"] | bool = Field(description="DiffAugment: true | false | auto (on under 10k images)")
    augment_policy: list[Literal["color", "translation", "cutout"]] = Field(min_length=1)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field(description="auto: bf16 on CUDA, fp32 on CPU")
    compile: bool = Field(description="torch.compile G and D (CUDA)")
    log_every_steps: int = Field(ge=1)
    grid_size: int = Field(ge=1, le=256)
    snapshot_kid_images: int = Field(
        ge=16, le=50000, description="fakes (and reals) of the quick KID at candidate snapshots"
    )
    snapshot_extractor: Literal["inception", "tiny"]
    snapshot_kid_last: int = Field(
        2, ge=0, description="quick KID at the last N snapshots, the candidates for best; 0 = at every snapshot"
    )
    keep_snapshots: int = Field(ge=1, le=1000, description="resumable checkpoints kept")
    max_rollbacks: int = Field(ge=0, le=100)
    max_grad_norm: float | None = Field(gt=0, description="a larger gradient norm counts as divergence")
    collapse_threshold: float = Field(ge=0, le=1, description="diversity of fakes / of reals that counts as collapse")
    collapse_patience: int = Field(ge=1, description="snapshots in a row under the threshold")
    collapse_after_kimg: float = Field(
        ge=0, description="the alarm counts snapshots from here on (G starts as a near-constant map)"
    )
    collapse_action: Literal["stop", "warn"]
    # how the data is read, not what is learned: both ways give the same training, bit for bit
    data_loading: Literal["auto", "memory", "stream"] = Field(
        "auto", description="memory (the split in one tensor) | stream (a DataLoader over the shards) | auto"
    )
    data_gpu_share: float = Field(0.5, gt=0, le=1, description="auto on CUDA: in GPU memory under this share of free")
    data_memory_mb: float = Field(1024, ge=0, description="auto on CPU: in memory up to this size, else streamed")
    data_workers: Literal["auto"] | int = Field(
        "auto", description="DataLoader worker processes when streaming; 0 = in-process; auto: 0 on CPU, 4 on CUDA"
    )

    @field_validator("data_workers")
    @classmethod
    def _workers_in_range(cls, v: str | int) -> str | int:
        if v != "auto" and not 0 <= v <= 64:
            raise ValueError("must be auto or 0..64")
        return v


class EvalParams(_Section):
    extractor: Literal["inception", "tiny"]
    inception_weights: str | None = Field(description="local path to torch-fidelity Inception weights")
    metrics: list[str] = Field(min_length=1)
    num_real: int = Field(ge=2)
    num_fake: int = Field(ge=2)
    batch_size: int = Field(ge=1)
    seed: int = Field(ge=0, description="first latent seed of the generated evaluation set")
    kid_subset_size: int = Field(ge=2)
    kid_subsets: int = Field(ge=1)
    is_splits: int = Field(ge=1)
    pr_k: int = Field(ge=1)
    dc_k: int = Field(ge=1)
    memorization_quantile: float = Field(gt=0, lt=1)
    bootstrap: int = Field(ge=0, description="bootstrap replicates for FID/KID intervals; 0 = none")
    confidence: float = Field(gt=0, lt=1)

    @field_validator("metrics")
    @classmethod
    def _known_metrics(cls, v: list[str]) -> list[str]:
        unknown = [m for m in v if m not in METRIC_NAMES]
        if unknown:
            raise ValueError(f"unknown metric {unknown[0]!r} (valid: {', '.join(METRIC_NAMES)})")
        if len(set(v)) != len(v):
            raise ValueError("lists a metric twice")
        return v


def _check_keys(keys: list[str]) -> list[str]:
    unknown = [k for k in keys if k not in DIRECTIONS]
    if unknown:
        raise ValueError(f"unknown metric key {unknown[0]!r} (valid: {', '.join(DIRECTIONS)})")
    return keys


class GateParams(_Section):
    """When a new version may take the alias: better with confidence, and no worse where it matters."""

    margin: float = Field(ge=0, description="the interval on (candidate - champion) must clear this")
    bootstrap: int = Field(ge=10, description="paired bootstrap resamples of the generated samples")
    confidence: float = Field(gt=0, lt=1)
    guard_metrics: list[str] = Field(description="may not be worse than the champion's beyond the tolerance")
    guard_tolerance: float = Field(ge=0)
    memorization_limit: float = Field(gt=0, le=1)

    @field_validator("guard_metrics")
    @classmethod
    def _known_guards(cls, v: list[str]) -> list[str]:
        return _check_keys(v)


class RegistryParams(_Section):
    model_name: str = Field(min_length=1)
    alias: str = Field(pattern=r"^[A-Za-z_][A-Za-z0-9_-]*$")
    primary_metric: Literal["fid", "kid"] = Field(description="compared with a paired bootstrap")
    gate: GateParams


class ServeParams(_Section):
    """`ganpipe serve`: the champion over MLflow's scoring protocol."""

    host: str = Field(min_length=1, description="interface to bind; 127.0.0.1 keeps it on this machine")
    workers: int = Field(ge=1, le=64)
    max_images: int = Field(ge=1, le=4096, description="records (images) per request")
    max_body_bytes: int = Field(ge=1024, description="request bodies over this are refused (413) before parsing")
    batch_size: int = Field(ge=1, le=1024, description="images through the generator at once")
    timeout_s: int = Field(ge=1, description="per request")


class ScheduleParams(_Section):
    """`ganpipe schedule`: the nightly deployment of the training-pipeline flow."""

    deployment: str = Field(pattern=r"^[A-Za-z0-9_.-]+$")
    cron: str = Field(pattern=r"^\S+( \S+){4}$", description="five-field cron, e.g. '0 2 * * *'")
    timezone: str = Field(min_length=1, description="IANA time zone of the cron, e.g. UTC or Europe/Berlin")
    train_retries: int = Field(ge=0, le=20, description="retries of a crashed training task (each resumes)")
    io_retries: int = Field(ge=0, le=20, description="retries of DVC push and registry calls, backing off")
    webhook_url: str | None = Field(pattern=r"^https?://\S+$", description="POSTed a JSON note when a run fails")
    heartbeat_s: int = Field(ge=30, le=3600, description="seconds between a running flow's heartbeats")
    crashed_after_s: int = Field(ge=60, le=86400, description="a run silent this long is marked Crashed")

    @model_validator(mode="after")
    def _window_after_heartbeat(self) -> ScheduleParams:
        if self.crashed_after_s < 2 * self.heartbeat_s:  # one late or lost heartbeat must not crash a live run
            raise ValueError(
                f"crashed_after_s ({self.crashed_after_s}) must be at least twice heartbeat_s "
                f"({self.heartbeat_s}): one late heartbeat would mark a live run Crashed"
            )
        return self

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, v: str) -> str:
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(v)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError("is not an IANA time zone (e.g. UTC, Europe/Berlin)") from None
        return v


class SweepParams(_Section):
    """`ganpipe sweep`: candidates trained through `dvc exp run`; the best goes through the gate."""

    grid: dict[str, list[SweepValue]] = Field(description="params key -> values; every combination")
    candidates: list[dict[str, SweepValue]] = Field(description="explicit override sets")
    jobs: int = Field(ge=1, le=64, description="candidates trained at once (DVC's queue, temp directories)")

    @field_validator("grid")
    @classmethod
    def _non_empty_lists(cls, v: dict[str, list]) -> dict[str, list]:
        for key, values in v.items():
            if not values:
                raise ValueError(f"{key!r} has no values")
        return v


class Params(_Section):
    base: BaseParams
    data: DataParams
    model: ModelParams
    train: TrainParams
    eval: EvalParams
    registry: RegistryParams
    serve: ServeParams
    schedule: ScheduleParams
    sweep: SweepParams

    def section_hash(self, *sections: str) -> str:
        """sha256 of the canonical JSON of the named sections (all when none are named)."""
        return dumped_hash(self.model_dump(mode="json"), *sections)

    def flat(self, *sections: str) -> dict[str, Any]:
        """`section.key -> value` for logging as MLflow params."""
        return dumped_flat(self.model_dump(mode="json"), *(sections or tuple(type(self).model_fields)))


# Params stored in a checkpoint are compared and hashed as they were dumped, not re-validated: a
# checkpoint from before a schema change (a key added since) must still resume with its differences
# named, and still register.


def dumped_hash(dumped: dict, *sections: str) -> str:
    """`Params.section_hash` of params stored as `model_dump(mode="json")`."""
    payload = {name: dumped.get(name) for name in sections or tuple(dumped)}
    return json_sha256(payload)


def dumped_flat(dumped: dict, *sections: str) -> dict[str, Any]:
    """`Params.flat` of params stored as `model_dump(mode="json")`."""
    return {
        f"{name}.{key}": value for name in sections or tuple(dumped) for key, value in (dumped.get(name) or {}).items()
    }


def _allowed(model: type[BaseModel], loc: tuple) -> str:
    """Names allowed at `loc` (the parent of an unknown key)."""
    for part in loc:
        field = model.model_fields.get(str(part))
        if field is None or not (isinstance(field.annotation, type) and issubclass(field.annotation, BaseModel)):
            return ""
        model = field.annotation
    return ", ".join(model.model_fields)


def _describe(err: dict, source: str) -> str:
    loc = tuple(err["loc"])
    path = ".".join(str(p) for p in loc)
    kind = err["type"]
    if kind == "missing":
        return f"{source}: missing key '{path}'"
    if kind == "extra_forbidden":
        return f"{source}: unknown key '{path}' (allowed: {_allowed(Params, loc[:-1])})"
    if kind == "value_error" and len(loc) == 1:  # a check across a section's keys: they are in the message
        return f"{source}: {path}: {err['msg'].removeprefix('Value error, ')}"
    return f"{source}: {path} = {err.get('input')!r}: {err['msg'].lower()}"


def parse_params(raw: Any, source: str = "params") -> Params:
    """Validate an already-loaded mapping; raise ConfigError describing every problem."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections, got {type(raw).__name__}")
    try:
        return Params.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError("; ".join(_describe(e, source) for e in exc.errors())) from None


def load_params(path: str | Path = DEFAULT_PARAMS_PATH) -> Params:
    """Read and validate params.yaml."""
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such params file") from None
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({' '.join(str(exc).split())})") from None
    return parse_params(raw, str(path))
