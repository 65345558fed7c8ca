"""Real training batches in a seeded, resumable order.

Each pass over the data is a new permutation drawn from one `torch.Generator` (its state is in every
checkpoint); the position in the current pass is `TrainState.perm` / `TrainState.pos`. Under torchrun
every process walks the same global order and takes its own slice of each global batch.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ganpipe.training.distributed import World
from ganpipe.training.engine import Batch
from ganpipe.training.state import TrainState


@dataclass
class Batches:
    x: torch.Tensor  # uint8 [N, C, H, W]; on the device when it fits
    y: torch.Tensor  # int64 classes, next to x
    conditional: bool
    shuffle: torch.Generator
    batch_size: int  # the global batch, over all processes
    world: World
    device: torch.device
    channels_last: bool

    @classmethod
    def of(
        cls,
        images: np.ndarray,
        labels: np.ndarray,
        conditional: bool,
        seed: int,
        batch_size: int,
        world: World,
        device: torch.device,
        channels_last: bool,
    ) -> Batches:
        """Batches of the prepared split, shuffled by a generator seeded with `seed` (draws nothing yet)."""
        x = torch.from_numpy(np.array(images))
        if device.type == "cuda" and x.nbytes < 0.5 * torch.cuda.mem_get_info(device)[0]:
            x = x.to(device)
        y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(x.device)
        shuffle = torch.Generator().manual_seed(seed)
        return cls(x, y, conditional, shuffle, batch_size, world, device, channels_last)

    def permutation(self) -> torch.Tensor:
        """The next pass's data order."""
        return torch.randperm(len(self.x), generator=self.shuffle)

    def next(self, state: TrainState) -> Batch:
        """This process's share of the next global batch in `state`'s order, in [-1, 1]; advances
        `state.pos` (and starts a new pass when the current one has no full batch left)."""
        if state.pos + self.batch_size > len(state.perm):
            state.perm, state.pos = self.permutation(), 0
        per_rank = self.batch_size // self.world.size
        mine = slice(self.world.rank * per_rank, (self.world.rank + 1) * per_rank)
        idx = state.perm[state.pos : state.pos + self.batch_size][mine].to(self.x.device)
        state.pos += self.batch_size
        real = self.x[idx].to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        # fakes get the real batch's classes: G sees the data's class frequencies
        return real, (self.y[idx].to(self.device) if self.conditional else None)
