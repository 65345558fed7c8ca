"""Streaming training data: the DataLoader over the shards walks the in-memory path's order, batch for
batch and across restarts; reading a split keeps a reader's memory bounded; the choice of path."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from ganpipe.core.params import parse_params
from ganpipe.data import shards
from ganpipe.training.batches import StreamedBatches, batches_of, loading_of
from ganpipe.training.distributed import World
from ganpipe.training.state import TrainState
from tests.conftest import tiny_params_dict


def _split(tmp_path, n=300, shape=(3, 8, 8), shard_size=64):
    tmp_path.mkdir(parents=True, exist_ok=True)
    w = shards.ShardWriter(tmp_path, "train", shard_size, shape)
    rng = np.random.default_rng(0)
    for i in range(n):
        w.add(rng.integers(0, 256, shape, dtype=np.uint8), i % 7)
    return shards.open_split(tmp_path, w.close())


def _both(tmp_path, workers, world=World(), batch_size=32):
    images, labels = _split(tmp_path)
    made = {}
    for how in ("memory", "stream"):
        tp = parse_params(
            tiny_params_dict(train={"data_loading": how, "data_workers": workers, "batch_size": batch_size})
        ).train
        made[how], why = batches_of(tp, images, labels, True, 5, world, torch.device("cpu"), False)
        assert why.startswith(how) and isinstance(made[how], StreamedBatches) == (how == "stream")
    return made["memory"], made["stream"]


def _walk(batches, state, steps):
    return [batches.next(state) for _ in range(steps)]


@pytest.mark.parametrize("workers", [0, 2])
def test_streamed_batches_are_the_in_memory_ones_across_passes_and_restarts(tmp_path, workers):
    mem, stream = _both(tmp_path, workers)
    torch_rng = torch.get_rng_state()
    try:
        s_mem, s_str = TrainState(perm=mem.permutation()), TrainState(perm=stream.permutation())
        assert torch.equal(s_mem.perm, s_str.perm)
        # 25 batches of 32 from 300 images: three passes, each a new draw of the order
        for (xa, ya), (xb, yb) in zip(_walk(mem, s_mem, 25), _walk(stream, s_str, 25), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert s_mem.pos == s_str.pos and torch.equal(s_mem.perm, s_str.perm)
        assert torch.equal(mem.shuffle.get_state(), stream.shuffle.get_state())  # drawn at the same moments

        # a rollback or resume: a new state (and generator state) from a checkpoint taken earlier
        saved = (s_mem.perm.clone(), 96, mem.shuffle.get_state())
        _walk(mem, s_mem, 4), _walk(stream, s_str, 4)
        for b in (mem, stream):
            b.shuffle.set_state(saved[2])
        s_mem, s_str = TrainState(perm=saved[0].clone(), pos=96), TrainState(perm=saved[0].clone(), pos=96)
        for (xa, ya), (xb, yb) in zip(_walk(mem, s_mem, 12), _walk(stream, s_str, 12), strict=True):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        # the loader (and its workers' seeds) never drew from torch's RNG, which latents and augmentations use
        assert torch.equal(torch.get_rng_state(), torch_rng)
    finally:
        stream.close()


def test_each_process_streams_its_own_slice_of_the_global_batch(tmp_path):
    parts = []
    for rank in (0, 1):
        mem, stream = _both(tmp_path / str(rank), 0, World(rank, 2), batch_size=32)
        s_mem, s_str = TrainState(perm=mem.permutation()), TrainState(perm=stream.permutation())
        got = _walk(stream, s_str, 3)
        assert all(torch.equal(a[0], b[0]) for a, b in zip(_walk(mem, s_mem, 3), got, strict=True))
        parts.append(got)
    whole, _ = _both(tmp_path / "whole", 0, World(), batch_size=32)
    s = TrainState(perm=whole.permutation())
    for (x, _), (x0, _), (x1, _) in zip(_walk(whole, s, 3), *parts, strict=True):
        assert len(x0) == len(x1) == 16 and torch.equal(torch.cat([x0, x1]), x)


def test_reading_a_split_hands_its_mapped_pages_back(tmp_path, monkeypatch):
    def rss_file_kb() -> int:
        fields = dict(line.split(":", 1) for line in open("/proc/self/status").read().splitlines())
        return int(fields["RssFile"].split()[0])

    images, _ = _split(tmp_path, n=2048, shape=(3, 64, 64), shard_size=512)  # 24 MiB in 4 shards
    total_kb = len(images) * 3 * 64 * 64 // 1024
    monkeypatch.setattr(shards, "RELEASE_BYTES", 2 << 20)
    images.release()
    before = rss_file_kb()
    order = np.random.default_rng(1).permutation(len(images))
    for i in range(0, len(order), 64):
        images[order[i : i + 64]]
    grown_kb = rss_file_kb() - before
    assert grown_kb < total_kb / 4, (grown_kb, total_kb)  # without the release: the whole split

    monkeypatch.setattr(shards, "RELEASE_BYTES", 1 << 40)  # the same walk, never handing pages back
    images.release()
    before = rss_file_kb()
    for i in range(0, len(order), 64):
        images[order[i : i + 64]]
    assert rss_file_kb() - before > total_kb * 3 / 4  # what the release saves


def test_a_split_pickles_as_its_paths_not_its_data(tmp_path):
    images, _ = _split(tmp_path)
    blob = pickle.dumps(images)
    assert len(blob) < 4096 < images.shape[0] * int(np.prod(images.shape[1:]))
    again = pickle.loads(blob)
    assert np.array_equal(np.asarray(again), np.asarray(images))


@pytest.mark.parametrize(
    "setting, mb, want",
    [("auto", 10, "memory"), ("auto", 5000, "stream"), ("stream", 10, "stream"), ("memory", 5000, "memory")],
)
def test_auto_streams_on_cpu_by_size(setting, mb, want):
    tp = parse_params(tiny_params_dict(train={"data_loading": setting, "data_memory_mb": 1024})).train
    why = loading_of(tp, mb * 2**20, torch.device("cpu"))
    assert why.split()[0] == want and ("train.data_memory_mb" in why) == (setting == "auto")
