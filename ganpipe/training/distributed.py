"""Multi-process data-parallel training under `torchrun` (NCCL on GPUs, gloo on CPU).

`torchrun --nproc_per_node N -m ganpipe train` sets RANK / WORLD_SIZE / LOCAL_RANK; without them the
world is one process and nothing here touches torch.distributed. Rank 0 alone logs and checkpoints.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from ganpipe.core.device import resolve_device
from ganpipe.core.errors import ConfigError


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
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=world.rank, world_size=size)
    return world, device


def shutdown(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()
