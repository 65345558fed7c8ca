"""Where a training stands, and the layout of a training checkpoint, written down once.

A training checkpoint (`snapshot-<nimg>.pt`, `best.pt`, the stage's `checkpoint.pt` and `last.pt`) is
one flat dict, saved by `ganpipe.nets.checkpoint` (which adds `format_version`):

    G, D, G_ema, opt_G, opt_D, scaler   the engine's state_dicts (`Engine.state_dict`)
    nimg, step, perm, pos, best, log,   the loop's `TrainState`, one key per field
      collapse_streak, rollbacks
    shuffle_rng                         the data-order generator's state
    rng                                 torch (CPU, CUDA), numpy and Python RNG states
    generator_config                    what `build_generator` builds G_ema from
    params                              the run's params, dumped as JSON values (resume compares them)
    mlflow_run_id                       the MLflow run a resume continues
    data_sha256                         the prepared data it trained on
    code_sha256                         the ganpipe code that wrote it (`core.hashing.code_sha256`;
                                        absent before 2026-12-02): a resume without asking needs it equal
    world_size                          how many processes trained it
    augment                             {"enabled": bool, "policy": [str]}: DiffAugment as applied

`Key` names every key; `checkpoint` writes them (the engine's through `Engine.state_dict`) and
`restore` reads them back. Training code reads single keys through `Key`; code outside training reads
the generator through `ganpipe.nets.checkpoint`'s `G_EMA` / `GENERATOR_CONFIG` (which `Key` reuses), so
that evaluation and registration do not depend on training code. Renaming a key or changing what a
value means breaks old checkpoints: that needs a new `FORMAT_VERSION`.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, NotRequired, Protocol, TypedDict

import torch

from ganpipe.nets.checkpoint import G_EMA, GENERATOR_CONFIG, rng_states, set_rng_states


class Key:
    """Every key of a training checkpoint but TrainState's, which are its field names (plain strings:
    weights-only loading takes no enum)."""

    G, D, G_EMA, OPT_G, OPT_D, SCALER = "G", "D", G_EMA, "opt_G", "opt_D", "scaler"  # Engine.state_dict's
    SHUFFLE_RNG = "shuffle_rng"
    RNG = "rng"
    GENERATOR_CONFIG = GENERATOR_CONFIG
    PARAMS = "params"
    MLFLOW_RUN_ID = "mlflow_run_id"
    DATA_SHA256 = "data_sha256"
    CODE_SHA256 = "code_sha256"
    WORLD_SIZE = "world_size"
    AUGMENT = "augment"
    NIMG = "nimg"  # TrainState.nimg, read on its own (snapshot names, which snapshot best.pt is)


class Best(TypedDict):
    """The best snapshot so far (a plain dict on disk: weights-only loading takes no classes)."""

    kimg: float
    quick_kid: float
    lowest_quick_kid: NotRequired[float]  # the lowest among the candidates so far (absent before 2026-12-02)


@dataclass(kw_only=True)
class TrainState:
    """What the loop carries from step to step and a resume needs besides the networks and RNGs.
    Field order is the checkpoint's key order."""

    nimg: int = 0  # real images shown to D
    step: int = 0
    perm: torch.Tensor  # the data order of the current pass
    pos: int = 0  # where the next global batch starts in `perm`
    best: Best | None = None
    log: list[dict] = field(default_factory=list)  # one line per snapshot (`log.jsonl`)
    collapse_streak: int = 0  # snapshots in a row under train.collapse_threshold
    rollbacks: int = 0  # kept in snapshots: a resume does not reset the budget

    def entries(self) -> dict[str, Any]:
        """The checkpoint entries: one per field, under its name (no copies)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_checkpoint(cls, ckpt: dict[str, Any]) -> TrainState:
        """The TrainState a checkpoint holds (its tensors and lists, not copies)."""
        return cls(**{f.name: ckpt[f.name] for f in fields(cls)})


@dataclass(frozen=True)
class RunRecord:
    """What each checkpoint of a run records about the run itself (fixed for its length)."""

    generator_config: dict
    params: dict  # `Params.model_dump(mode="json")`
    mlflow_run_id: str  # "" on processes other than rank 0, which write no checkpoint
    data_sha256: str
    world_size: int
    augment: dict  # {"enabled": bool, "policy": [str]}
    code_sha256: str = ""


class EngineState(Protocol):
    """The part of `Engine` a checkpoint holds (a protocol: the engine imports the keys from here)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def checkpoint(engine: EngineState, state: TrainState, shuffle: torch.Generator, run: RunRecord) -> dict[str, Any]:
    """The full training checkpoint of this moment (the layout in this module's docstring)."""
    return {
        **engine.state_dict(),
        **state.entries(),
        Key.SHUFFLE_RNG: shuffle.get_state(),
        Key.RNG: rng_states(),
        Key.GENERATOR_CONFIG: run.generator_config,
        Key.PARAMS: run.params,
        Key.MLFLOW_RUN_ID: run.mlflow_run_id,
        Key.DATA_SHA256: run.data_sha256,
        Key.CODE_SHA256: run.code_sha256,
        Key.WORLD_SIZE: run.world_size,
        Key.AUGMENT: run.augment,
    }


def restore(ckpt: dict[str, Any], engine: EngineState, shuffle: torch.Generator) -> TrainState:
    """Load a checkpoint's engine state, data order and RNG states in place; return its TrainState.
    The RNG states are those of the process that wrote it (rank 0): other ranks reseed after this."""
    engine.load_state_dict(ckpt)
    state = TrainState.from_checkpoint(ckpt)
    shuffle.set_state(ckpt[Key.SHUFFLE_RNG])
    set_rng_states(ckpt[Key.RNG])
    return state
