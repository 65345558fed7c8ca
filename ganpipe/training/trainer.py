"""The training loop proper: steps over one `TrainState`, snapshots, rollbacks and the collapse alarm.

Exact resume rests on every random draw happening in the same order in a straight and a resumed run:
the data order comes from its own generator, each process's latents and augmentations from the
global RNGs seeded by `process_seed`, and measuring (the probe, the grids) draws from neither.
"""

from __future__ import annotations

import random
import time

import mlflow
import numpy as np
import torch
from tqdm import tqdm

from ganpipe.core import tracking
from ganpipe.core.errors import TrainingError
from ganpipe.core.images import grid, save_png
from ganpipe.core.params import TrainParams
from ganpipe.nets.checkpoint import load_checkpoint
from ganpipe.nets.models import sample
from ganpipe.training.batches import Batches
from ganpipe.training.distributed import World
from ganpipe.training.engine import Engine
from ganpipe.training.outputs import log_text
from ganpipe.training.probes import Probe, is_candidate, later_wins
from ganpipe.training.snapshots import Snapshots
from ganpipe.training.state import EngineState, RunRecord, TrainState, checkpoint, restore

GRID_SEED0 = 10_000_000  # fixed-noise grid seeds, far from evaluation seeds
DIVERGED = "non-finite loss or gradient norm over train.max_grad_norm"


def seed_all(seed: int) -> None:
    """Seed every global RNG a training step draws from: torch, numpy and Python."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


def process_seed(seed: int, rank: int, rollbacks: int = 0, nimg: int = 0) -> int:
    """The seed of a process's latents and augmentations: each rank draws its own, and a rollback draws
    differently from the run that diverged."""
    return seed + 7919 * rank + 104_729 * rollbacks + nimg


def resume_from(
    ckpt: dict, engine: EngineState, shuffle: torch.Generator, seed: int, world: World, rollbacks: int = 0
) -> TrainState:
    """Continue from a checkpoint (rank 0's RNG states); other ranks, and a rollback, reseed."""
    state = restore(ckpt, engine, shuffle)
    if rollbacks or world.rank:
        seed_all(process_seed(seed, world.rank, rollbacks, int(state.nimg)))
    return state


class Trainer:
    """One process's training: it advances `state` with `engine` on `batches`. Rank 0 alone (with a
    `probe`) measures, snapshots into `snaps` and logs to MLflow."""

    def __init__(
        self,
        tp: TrainParams,
        seed: int,
        world: World,
        engine: Engine,
        batches: Batches,
        snaps: Snapshots,
        state: TrainState,
        probe: Probe | None,
    ):
        self.tp, self.seed, self.world = tp, seed, world
        self.engine, self.batches, self.snaps, self.state, self.probe = engine, batches, snaps, state, probe
        self.grid_seeds = list(range(GRID_SEED0, GRID_SEED0 + tp.grid_size))
        self.pending: list[tuple[int, torch.Tensor]] = []  # (nimg, [loss_G, loss_D]) not logged yet
        self.record: RunRecord | None = None  # set by `run`: checkpoints need the MLflow run id
        self.t0 = 0.0  # when training would have started, had it never stopped

    def checkpoint(self) -> dict:
        """The full training checkpoint of this moment."""
        return checkpoint(self.engine, self.state, self.batches.shuffle, self.record)

    def mark_best_if_missed(self) -> None:
        """Rank 0 on resume: mark the newest snapshot best when the process was killed between writing it
        and marking it."""
        st = self.state
        if st.best and round(st.best["kimg"] * 1000) == st.nimg and self.snaps.best_nimg() != st.nimg:
            save_png(grid(sample(self.engine.G_ema, self.grid_seeds).numpy()), self.snaps.path / "latest.png")
            self.snaps.mark_best(self.snaps.latest(), self.snaps.path / "latest.png")

    def run(self, record: RunRecord, fresh: bool) -> None:
        """Train to train.total_kimg. `fresh`: no snapshot exists yet, so rank 0 writes the first
        rollback point."""
        tp, world = self.tp, self.world
        self.record = record
        self.t0 = time.perf_counter() - (self.state.log[-1]["seconds"] if self.state.log else 0.0)
        if fresh and world.main:
            self.snaps.save(self.checkpoint())
        world.barrier()
        total_img = int(round(tp.total_kimg * 1000))
        snapshot_img = int(round(tp.snapshot_kimg * 1000))
        step_img = tp.batch_size * tp.d_steps
        next_snapshot = (self.state.nimg // snapshot_img + 1) * snapshot_img
        bar = tqdm(
            total=total_img,
            initial=self.state.nimg,
            unit="img",
            unit_scale=True,
            desc="train",
            mininterval=2.0,
            disable=not world.main,
        )
        with bar:
            while self.state.nimg < total_img:
                loss = self.engine.step([self.batches.next(self.state) for _ in range(tp.d_steps)])
                self.engine.update_ema(self.state.nimg, step_img)  # half-life in images shown
                self.state.nimg += step_img
                self.state.step += 1
                bar.update(step_img)
                at_snapshot = self.state.nimg >= next_snapshot or self.state.nimg >= total_img
                log_step = self.state.step % tp.log_every_steps == 0
                if log_step or at_snapshot:  # the only steps that wait for the device
                    if log_step and world.main:
                        self.pending.append((self.state.nimg, loss))
                    if world.any(self.engine.bad):
                        self.rollback(DIVERGED)
                        next_snapshot = (self.state.nimg // snapshot_img + 1) * snapshot_img
                        bar.n = self.state.nimg
                        continue
                if at_snapshot:
                    if world.main:
                        self.snapshot()
                    next_snapshot += snapshot_img
                    self.check_collapse()

    def snapshot(self) -> None:
        """Rank 0: log the pending losses, measure, log and save the grid, write a snapshot (and mark it
        best when it is a candidate and `later_wins`), append a line to the log."""
        st, tp, G_ema = self.state, self.tp, self.engine.G_ema
        losses = self._log_pending_losses()
        total_img, snapshot_img = int(round(tp.total_kimg * 1000)), int(round(tp.snapshot_kimg * 1000))
        candidate = is_candidate(st.nimg, total_img, snapshot_img, tp.snapshot_kid_last)
        m = self.probe.measure(G_ema, kid=candidate)
        mlflow.log_metrics(m, step=st.nimg)
        img = grid(sample(G_ema, self.grid_seeds).numpy())
        mlflow.log_image(np.asarray(img), key="samples", step=st.nimg)
        save_png(img, self.snaps.path / "latest.png")
        lowest = None if st.best is None else st.best.get("lowest_quick_kid", st.best["quick_kid"])
        best = candidate and later_wins(m["quick_kid"], m["quick_kid_std"], lowest)
        if best:
            lowest = m["quick_kid"] if lowest is None else min(lowest, m["quick_kid"])
            st.best = {"kimg": st.nimg / 1000, "quick_kid": m["quick_kid"], "lowest_quick_kid": lowest}
        low = m["diversity"] < tp.collapse_threshold and st.nimg >= tp.collapse_after_kimg * 1000
        st.collapse_streak = st.collapse_streak + 1 if low else 0
        line = {
            "kimg": st.nimg / 1000,
            "step": st.step,
            "seconds": round(time.perf_counter() - self.t0, 3),
            **losses,
            **m,
            "best": best,
        }
        st.log.append(line)
        path = self.snaps.save(self.checkpoint())
        if best:
            self.snaps.mark_best(path, self.snaps.path / "latest.png")
        self.snaps.log_path.write_text(log_text(st.log))

    def _log_pending_losses(self) -> dict[str, float]:
        """Log the losses gathered since the last snapshot; return the newest ({} when none)."""
        series = []
        if self.pending:
            values = torch.stack([v for _, v in self.pending]).cpu().tolist()  # one host sync per snapshot
            for (n, _), (lg, ld) in zip(self.pending, values):
                series += [("loss_G", lg, n), ("loss_D", ld, n)]
            self.pending.clear()
        tracking.log_metric_series(self.record.mlflow_run_id, series)
        return {"loss_G": series[-2][1], "loss_D": series[-1][1]} if series else {}

    def rollback(self, reason: str) -> None:
        """Go back to the newest snapshot and draw anew; fail past train.max_rollbacks."""
        tp, rank0 = self.tp, self.world.main
        rollbacks = self.state.rollbacks + 1
        latest = self.snaps.latest()
        if rollbacks > tp.max_rollbacks or latest is None:
            message = (
                f"training diverged ({reason}) at {self.state.nimg / 1000:g} kimg after {rollbacks - 1} "
                f"rollback(s) (train.max_rollbacks = {tp.max_rollbacks}); try a lower train.lr or "
                "another train.loss"
            )
            if rank0:
                mlflow.set_tag("ganpipe.failure", message)
            raise TrainingError(message)
        self.state = resume_from(
            load_checkpoint(latest), self.engine, self.batches.shuffle, self.seed, self.world, rollbacks
        )
        self.state.rollbacks = rollbacks
        self.pending = [p for p in self.pending if p[0] <= self.state.nimg]
        if rank0:
            print(f"diverged ({reason}); rolled back to {self.state.nimg / 1000:g} kimg (rollback {rollbacks})")
            mlflow.log_metric("rollbacks", rollbacks, step=self.state.nimg)

    def check_collapse(self) -> None:
        """Every rank, after a snapshot: act on rank 0's collapse streak (stop or warn)."""
        tp, world = self.tp, self.world
        collapsed = world.decide(self.state.collapse_streak >= tp.collapse_patience, self.engine.device)
        world.barrier()
        if not collapsed:
            return
        message = (
            f"mode collapse: diversity under train.collapse_threshold = {tp.collapse_threshold} at "
            f"{tp.collapse_patience} snapshots in a row (kimg {self.state.nimg / 1000:g})"
        )
        if tp.collapse_action == "stop":
            if world.main:
                mlflow.set_tag("ganpipe.failure", message)
            raise TrainingError(message + "; the run stops (train.collapse_action: stop)")
        if world.main:
            print(f"warning: {message}")
            mlflow.set_tag("ganpipe.warning", message)
