"""The prepare stage: deterministic arrays, a truthful manifest, atomic output."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ganpipe import data
from ganpipe.data import load_split, prepare, read_manifest
from ganpipe.errors import DataError


def test_prepare_digits_is_deterministic_and_manifest_matches_arrays(tmp_path, tiny):
    m1 = prepare(tiny.data, tmp_path / "a")
    m2 = prepare(tiny.data, tmp_path / "b")
    assert m1 == m2
    for split in data.SPLITS:
        x1, y1 = load_split(tmp_path / "a", split)
        x2, y2 = load_split(tmp_path / "b", split)
        assert np.array_equal(x1, x2) and np.array_equal(y1, y2)
        res = tiny.data.resolution
        assert x1.shape[1:] == (tiny.data.channels, res, res) and x1.dtype == np.uint8
        assert m1["counts"][split]["images"] == len(y1)
        assert sum(m1["counts"][split]["per_class"].values()) == len(y1)
    assert m1["counts"]["train"]["images"] + m1["counts"]["test"]["images"] == 1797
    assert m1 == read_manifest(tmp_path / "a")
    # The sha256 covers the content: recomputing it from the files gives the same hash.
    arrays = {f"{s}_{k}": np.load(tmp_path / "a" / f"{s}_{k}.npy") for s in data.SPLITS for k in ("images", "labels")}
    assert data.content_sha256(arrays) == m1["sha256"]


def test_split_is_stratified_and_seeded(tiny):
    labels = data.load_digits_source().labels
    train, test = data.split_indices(labels, 0.2, seed=0)
    assert len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
    share = np.bincount(labels[test]) / np.bincount(labels)
    assert np.all(np.abs(share - 0.2) < 0.02)
    assert np.array_equal(test, data.split_indices(labels, 0.2, seed=0)[1])
    assert not np.array_equal(test, data.split_indices(labels, 0.2, seed=1)[1])


def test_images_are_real_digits_not_blank(tmp_path, tiny):
    prepare(tiny.data, tmp_path)
    x, y = load_split(tmp_path, "train")
    assert x.max() == 255 and x.min() == 0
    # class means differ: the labels go with the pictures
    means = np.stack([x[y == k].mean(axis=0) for k in range(10)]).reshape(10, -1)
    assert np.min(np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(10) * 1e9) > 50


def test_rgb_channels_option(tmp_path, tiny):
    p = tiny.data.model_copy(update={"channels": 3})
    m = prepare(p, tmp_path)
    x, _ = load_split(tmp_path, "test")
    assert m["channels"] == 3 and x.shape[1] == 3
    assert np.array_equal(x[:, 0], x[:, 1])  # grey digits stay grey


def test_failed_prepare_leaves_previous_output_intact(tmp_path, tiny, monkeypatch):
    out = tmp_path / "prepared"
    before = prepare(tiny.data, out)
    calls = {"n": 0}
    real_save = np.save

    def flaky_save(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 3:
            raise OSError("disk full")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(data.np, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        prepare(tiny.data.model_copy(update={"split_seed": 7}), out)
    assert json.loads((out / "manifest.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temp leftovers


def test_missing_prepared_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="run `ganpipe prepare` first"):
        load_split(tmp_path, "train")
    with pytest.raises(DataError, match="run `ganpipe prepare` first"):
        read_manifest(tmp_path)
