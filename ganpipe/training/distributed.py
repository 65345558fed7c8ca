"""Multi-process data-parallel training under `torchrun` (NCCL on GPUs, gloo on CPU).

`torchrun --nproc_per_node N -m ganpipe train` sets RANK / WORLD_SIZE / LOCAL_RANK; without them the
world is one process and nothing here touches torch.distributed. Rank 0 alone logs and checkpoints.

Several machines: `torchrun --nnodes N --rdzv-backend c10d --rdzv-endpoint HOST:PORT`; only rank 0's
machine holds the snapshots, so rank 0 sends the one to resume from (`share_checkpoint`). A collective
that waits longer than GANPIPE_DIST_TIMEOUT_S (default 600 s, torch's own is 30 min) fails the process;
it must exceed the longest stretch rank 0 works alone while the others wait: a snapshot (grid, probe,
checkpoint, MLflow logging).

$GANPIPE_TORCHRUN holds torchrun's options for `ganpipe train` to run itself under (`torchrun_command`):
so the DVC stage (`cmd: ganpipe train`) and the Prefect flow's train task, with its retries, start a
multi-process or multi-machine training unchanged, e.g. on the flow's machine, node 0 of two,
GANPIPE_TORCHRUN="--nnodes 2 --nproc-per-node 1 --node-rank 0 --master-addr trainer-1 --master-port 29400".
"""

from __future__ import annotations

import io
import os
import shlex
import sys
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist

from ganpipe.core.device import resolve_device
from ganpipe.core.errors import ConfigError

TIMEOUT_ENV = "GANPIPE_DIST_TIMEOUT_S"
DEFAULT_TIMEOUT_S = 600.0
LAUNCH_ENV = "GANPIPE_TORCHRUN"


def torchrun_command(argv: list[str]) -> list[str] | None:
    """The command that runs `ganpipe <argv>` under torchrun with $GANPIPE_TORCHRUN's options; None when
    that is unset or this process is already one of torchrun's workers."""
    options = shlex.split(os.environ.get(LAUNCH_ENV, ""))
    if not options or "RANK" in os.environ:
        return None
    return [sys.executable, "-m", "torch.distributed.run", *options, "-m", "ganpipe", *argv]


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def any(self, flag: torch.Tensor) -> bool:
        """True on every rank when `flag` (a bool scalar tensor) is true on any rank (one host sync)."""
        if self.distributed:
            flag = flag.to(torch.int32)
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())

    def decide(self, flag: bool, device: torch.device) -> bool:
        """Rank 0's decision, on every rank."""
        if not self.distributed:
            return flag
        t = torch.tensor([int(flag)], device=device)
        dist.broadcast(t, src=0)
        return bool(t.item())


# what torch's collectives say when another process of the job is gone or does not answer (gloo raises
# plain RuntimeErrors; NCCL, the store and the network raise DistError's subclasses)
LOST_PROCESS_SIGNS = ("gloo/transport", "Connection reset by peer", "Connection closed by peer", "timed out")


def lost_process(exc: BaseException) -> bool:
    """Whether an exception of a multi-process training says that another process of the job is lost."""
    return isinstance(exc, dist.DistError) or (
        isinstance(exc, RuntimeError) and any(sign in str(exc) for sign in LOST_PROCESS_SIGNS)
    )


def setup(device_name: str) -> tuple[World, torch.device]:
    """The process's world and device; joins the process group when launched by torchrun."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), resolve_device(device_name)
    world = World(int(os.environ["RANK"]), size, int(os.environ.get("LOCAL_RANK", "0")))
    device = resolve_device(device_name)
    if device.type == "cuda":
        if world.local_rank >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK {world.local_rank}: this machine has {torch.cuda.device_count()} GPUs")
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=size, timeout=collective_timeout()
        )
    return world, device


def share_checkpoint(ckpt: dict | None, world: World, device: torch.device, failed: bool = False) -> dict | None:
    """Rank 0's checkpoint (or None) on every rank: on several machines only rank 0's disk holds the
    snapshots. Sent as the bytes `torch.save` writes and read back with `weights_only=True` (tensors and
    plain values, never code). `failed` on rank 0 tells the others that it could not decide (it raises
    its own error); they raise ConfigError instead of waiting for the collectives' timeout."""
    if not world.distributed:
        return ckpt
    payload = b""
    if world.main and ckpt is not None:
        buf = io.BytesIO()
        torch.save(ckpt, buf)
        payload = buf.getvalue()
    length = torch.tensor([-1 if failed else len(payload)], dtype=torch.int64, device=device)
    dist.broadcast(length, src=0)
    n = int(length.item())
    if n < 0:
        if world.main:
            return None
        raise ConfigError("rank 0 could not decide where training starts (see its output)")
    if n == 0 or world.main:
        if n:
            dist.broadcast(torch.frombuffer(bytearray(payload), dtype=torch.uint8).to(device), src=0)
        return ckpt
    data = torch.empty(n, dtype=torch.uint8, device=device)
    dist.broadcast(data, src=0)
    return torch.load(io.BytesIO(data.cpu().numpy().tobytes()), map_location="cpu", weights_only=True)


def collective_timeout() -> timedelta:
    """How long a collective may wait for the other processes ($GANPIPE_DIST_TIMEOUT_S)."""
    raw = os.environ.get(TIMEOUT_ENV, "")
    try:
        seconds = float(raw) if raw else DEFAULT_TIMEOUT_S
    except ValueError:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: seconds, e.g. 600") from None
    if seconds <= 0:
        raise ConfigError(f"{TIMEOUT_ENV}={raw!r}: must be > 0")
    return timedelta(seconds=seconds)


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
