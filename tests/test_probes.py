"""The snapshot probes: collapse watch at every snapshot, quick KID at the last ones, cached real features."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ganpipe.core.paths import layout
from ganpipe.data.prepare import load_split, prepare
from ganpipe.evaluation import features
from ganpipe.training.loop import train
from ganpipe.training.probes import WATCH_IMAGES, Probe, is_candidate, later_wins


def test_the_candidates_are_the_last_snapshots():
    # snapshots at 10, 20, ..., 100 kimg; a snapshot's nimg may overshoot its point by part of a step
    picked = [n for n in [10_000, 20_032, 80_000, 90_048, 100_000] if is_candidate(n, 100_000, 10_000, 2)]
    assert picked == [90_048, 100_000]
    # a last interval shorter than the cadence is still one snapshot: 30, 60, 90, 100 -> 90 and 100
    assert [n for n in (30_000, 60_000, 90_000, 100_000) if is_candidate(n, 100_000, 30_000, 2)] == [90_000, 100_000]
    assert all(is_candidate(n, 100_000, 10_000, 0) for n in (10_000, 50_000))  # 0: every snapshot
    assert is_candidate(10_000, 20_000, 10_000, 5)  # more candidates than snapshots


def test_quick_kid_only_at_the_last_snapshots_and_the_best_is_one_of_them(tmp_path, tiny):
    p = tiny.model_copy(update={"train": tiny.train.model_copy(update={"total_kimg": 0.512, "snapshot_kid_last": 2})})
    lay = layout(tmp_path)
    prepare(p.data, lay.prepared_dir)
    info = train(p, lay.prepared_dir, lay.models_dir, lay.root)
    lines = [json.loads(s) for s in (lay.models_dir / "log.jsonl").read_text().splitlines()]
    assert [round(x["kimg"], 3) for x in lines] == [0.128, 0.256, 0.384, 0.512]
    assert all({"diversity", "duplicate_rate"} <= x.keys() for x in lines)  # the collapse watch: every snapshot
    assert ["quick_kid" in x for x in lines] == [False, False, True, True]
    assert all(x["quick_kid_std"] > 0 for x in lines[2:])
    # the later candidate unless clearly worse than the earlier one; the log marks the one chosen
    later_is_best = lines[3]["quick_kid"] <= lines[2]["quick_kid"] + lines[3]["quick_kid_std"]
    best = lines[3] if later_is_best else lines[2]
    assert [x["best"] for x in lines[2:]] == [True, later_is_best]
    assert info["best_kimg"] == best["kimg"] and info["best_quick_kid"] == best["quick_kid"]


def test_a_later_snapshot_wins_unless_clearly_worse_than_the_lowest_so_far():
    assert later_wins(0.030, 0.005, None)  # the first candidate
    assert later_wins(0.024, 0.005, 0.020)  # worse by less than its noise: the later one
    assert later_wins(0.010, 0.005, 0.020)  # better
    assert not later_wins(0.030, 0.005, 0.020)  # clearly worse: a run gone bad keeps the earlier snapshot


@pytest.mark.slow
def test_the_real_features_of_the_quick_kid_come_from_the_cache_after_the_first_run(tmp_path, tiny, monkeypatch):
    lay = layout(tmp_path)
    prepare(tiny.data, lay.prepared_dir)
    images, _ = load_split(lay.prepared_dir, "train")
    first = Probe.build(tiny.eval, "inception", images, 16, 0, "sha-of-the-data")
    assert first.kid is not first.watch and first.kid_real.shape == (16, 2048)
    assert first.watch_real.shape == (WATCH_IMAGES, 64)  # the collapse watch's own, larger, sample

    def no_inception(self, images, batch_size):
        if self.dim == 2048:
            raise AssertionError("InceptionV3 ran although its real features were cached")
        return original(self, images, batch_size)

    original = features.Extractor.extract
    monkeypatch.setattr(features.Extractor, "extract", no_inception)
    again = Probe.build(tiny.eval, "inception", images, 16, 0, "sha-of-the-data")
    np.testing.assert_array_equal(again.kid_real, first.kid_real)
    with pytest.raises(AssertionError, match="InceptionV3 ran"):  # other data: computed, not served
        Probe.build(tiny.eval, "inception", images, 16, 0, "sha-of-other-data")
