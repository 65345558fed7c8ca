"""Real training batches in a seeded, resumable order, from memory or streamed from the shards.

Each pass over the data is a new permutation drawn from one `torch.Generator` (its state is in every
checkpoint); the position in the current pass is `TrainState.perm` / `TrainState.pos`. Under torchrun
every process walks the same global order and takes its own slice of each global batch.

Two ways to get the images of a batch, with the same order and so the same training, bit for bit:
- in memory (`Batches`): the whole split is read once into one tensor, on the GPU when it fits
  `train.data_gpu_share` of its free memory (no copies at all during training);
- streamed (`StreamedBatches`): a torch `DataLoader` gathers each batch from the memory-mapped shards in
  `train.data_workers` worker processes (pinned memory on CUDA, `prefetch_factor` batches ahead per
  worker). The loader reads the order ahead on a copy of the data-order generator, so the generator
  itself is drawn exactly when the in-memory path draws it and checkpoints are the same; a resume or a
  rollback (a new `TrainState`) restarts the loader at the new position.
`train.data_loading: auto` streams when the split is larger than that share of the GPU, or on CPU than
`train.data_memory_mb`.
"""

from __future__ import annotations

import os

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from ganpipe.core.params import TrainParams
from ganpipe.data.shards import ShardedImages
from ganpipe.training.distributed import World
from ganpipe.training.engine import Batch
from ganpipe.training.state import TrainState

PREFETCH_BATCHES = 2  # per worker
CUDA_WORKERS = 4  # train.data_workers: auto on CUDA (on CPU: none, bench/data_scale.py)


def workers_of(tp: TrainParams, device: torch.device) -> int:
    """DataLoader workers of this process: train.data_workers, or for auto none on CPU and on CUDA up
    to CUDA_WORKERS from the cores this machine's training processes share."""
    if tp.data_workers != "auto":
        return tp.data_workers
    if device.type != "cuda":
        return 0
    per_process = (os.cpu_count() or 1) // int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, min(CUDA_WORKERS, per_process - 1))


def fits_gpu(tp: TrainParams, nbytes: int, device: torch.device) -> tuple[bool, float]:
    """Whether `nbytes` fit train.data_gpu_share of the GPU's free memory, and that free memory in MB."""
    free = torch.cuda.mem_get_info(device)[0]
    return nbytes < tp.data_gpu_share * free, free / 2**20


def loading_of(tp: TrainParams, nbytes: int, device: torch.device) -> str:
    """'memory' or 'stream' for a split of `nbytes`, with the reason: what `train.data_loading` chose."""
    if tp.data_loading != "auto":
        return f"{tp.data_loading} (train.data_loading)"
    mb = nbytes / 2**20
    if device.type == "cuda":
        fits, free_mb = fits_gpu(tp, nbytes, device)
        if fits:
            return f"memory (the split's {mb:.0f} MB fit train.data_gpu_share of {free_mb:.0f} MB free on the GPU)"
        return f"stream (the split's {mb:.0f} MB exceed train.data_gpu_share of {free_mb:.0f} MB free on the GPU)"
    if mb <= tp.data_memory_mb:
        return f"memory (the split's {mb:.0f} MB <= train.data_memory_mb)"
    return f"stream (the split's {mb:.0f} MB > train.data_memory_mb)"


def batches_of(
    tp: TrainParams,
    images: ShardedImages,
    labels: np.ndarray,
    conditional: bool,
    seed: int,
    world: World,
    device: torch.device,
    channels_last: bool,
) -> tuple[Batches, str]:
    """The batches of the prepared split as `train.data_loading` says, and why that way."""
    how = loading_of(tp, images.shape[0] * int(np.prod(images.shape[1:])), device)
    shuffle = torch.Generator().manual_seed(seed)
    args = (conditional, shuffle, tp.batch_size, world, device, channels_last)
    if how.startswith("stream"):
        workers = workers_of(tp, device)
        return StreamedBatches(images, labels, *args, workers=workers), f"{how} with {workers} DataLoader workers"
    x = torch.from_numpy(np.asarray(images))
    if device.type == "cuda" and fits_gpu(tp, x.nbytes, device)[0]:
        x = x.to(device)
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64)).to(x.device)
    return Batches(x, y, *args), how


class Batches:
    """The split in one tensor (`x` uint8 [N, C, H, W], `y` int64 classes), on the device when it fits."""

    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        conditional: bool,
        shuffle: torch.Generator,
        batch_size: int,
        world: World,
        device: torch.device,
        channels_last: bool,
    ):
        self.x, self.y, self.num_images = x, y, len(x)
        self.conditional, self.shuffle, self.batch_size = conditional, shuffle, batch_size
        self.world, self.device, self.channels_last = world, device, channels_last

    def permutation(self) -> torch.Tensor:
        """The next pass's data order."""
        return torch.randperm(self.num_images, generator=self.shuffle)

    def mine(self) -> slice:
        """This process's part of a global batch."""
        per_rank = self.batch_size // self.world.size
        return slice(self.world.rank * per_rank, (self.world.rank + 1) * per_rank)

    def advance(self, state: TrainState) -> torch.Tensor:
        """This process's indices of the next global batch in `state`'s order; advances `state.pos`
        (and starts a new pass when the current one has no full batch left)."""
        if state.pos + self.batch_size > len(state.perm):
            state.perm, state.pos = self.permutation(), 0
        idx = state.perm[state.pos : state.pos + self.batch_size][self.mine()]
        state.pos += self.batch_size
        return idx

    def next(self, state: TrainState) -> Batch:
        """This process's share of the next global batch in `state`'s order, in [-1, 1]."""
        idx = self.advance(state).to(self.x.device)
        return self.batch(self.x[idx], self.y[idx])

    def batch(self, x: torch.Tensor, y: torch.Tensor) -> Batch:
        real = x.to(self.device, non_blocking=True).float().div_(127.5).sub_(1.0)
        if self.channels_last:
            real = real.contiguous(memory_format=torch.channels_last)
        # fakes get the real batch's classes: G sees the data's class frequencies
        return real, (y.to(self.device, non_blocking=True) if self.conditional else None)

    def close(self) -> None:
        """Stop any worker processes (in-memory batches have none)."""


class _Gather(Dataset):
    """Items are whole batches: an index tensor -> (the indices, uint8 images, int64 labels)."""

    def __init__(self, images: ShardedImages, labels: np.ndarray):
        self.images, self.labels = images, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        i = idx.numpy()
        return idx, torch.from_numpy(self.images[i]), torch.from_numpy(self.labels[i])


class _Ahead:
    """The sampler: this process's indices of every global batch from (perm, pos) on, drawing later
    passes from a copy of the data-order generator (the same draws the training makes later)."""

    def __init__(self, batches: Batches, state: TrainState):
        self.batches, self.perm, self.pos = batches, state.perm, state.pos
        self.shuffle_state = batches.shuffle.get_state()

    def __iter__(self):
        shuffle = torch.Generator()
        shuffle.set_state(self.shuffle_state)
        perm, pos, size, mine = self.perm, self.pos, self.batches.batch_size, self.batches.mine()
        while True:
            if pos + size > len(perm):
                perm, pos = torch.randperm(self.batches.num_images, generator=shuffle), 0
            yield perm[pos : pos + size][mine].clone()  # not a view: workers would get all of perm
            pos += size


class StreamedBatches(Batches):
    """Batches gathered from the memory-mapped shards by a DataLoader, in the same order as `Batches`."""

    def __init__(self, images: ShardedImages, labels: np.ndarray, *args, workers: int):
        super().__init__(torch.empty(0, dtype=torch.uint8), torch.empty(0, dtype=torch.int64), *args)
        self.num_images, self.workers = len(images), workers
        self.dataset = _Gather(images, labels)
        self._it, self._at = None, None  # the loader's iterator and the (perm, pos) it is at (None: none yet)

    def next(self, state: TrainState) -> Batch:
        if self._at is None or self._at[0] is not state.perm or self._at[1] != state.pos:  # new, resumed, rolled back
            self._restart(state)
        idx = self.advance(state)
        got, x, y = next(self._it)
        if not torch.equal(got, idx):  # an invariant: the loader walks the order the state walks
            raise RuntimeError(f"streamed batch out of order at pos {state.pos} (a bug in ganpipe)")
        self._at = (state.perm, state.pos)
        return self.batch(x, y)

    def _restart(self, state: TrainState) -> None:
        self.close()
        loader = DataLoader(
            self.dataset,
            sampler=_Ahead(self, state),
            batch_size=None,
            num_workers=self.workers,
            pin_memory=self.device.type == "cuda",
            prefetch_factor=PREFETCH_BATCHES if self.workers else None,
            # its own generator: a loader draws its workers' base seed, which from torch's global RNG
            # would shift every later latent and augmentation of the training
            generator=torch.Generator().manual_seed(0),
        )
        self._it = iter(loader)

    def close(self) -> None:
        if self._it is not None and hasattr(self._it, "_shutdown_workers"):
            self._it._shutdown_workers()
        self._it, self._at = None, None
