"""Content generation: grids, per-image PNGs with provenance, replay, truncation, animations."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ganpipe.core.errors import DataError
from ganpipe.core.images import png_text
from ganpipe.evaluation.evaluate import evaluate
from ganpipe.registry.register import register
from ganpipe.serving.generate import animate, generate, replay


@pytest.fixture(scope="module")
def champion(conditional_project):
    p, lay = conditional_project
    evaluate(p.eval, lay.checkpoint_path, lay.ref_stats_path, lay.run_info_path, lay.metrics_path, lay.root)
    r = register(p.registry, p.eval, lay)
    return p, lay, f"models:/{p.registry.model_name}@{p.registry.alias}", r


def _pixels(path):
    return np.asarray(Image.open(path))


def test_individual_pngs_carry_provenance_and_replay_to_identical_pixels(champion, tmp_path):
    p, lay, uri, r = champion
    files = generate(uri, 3, 40, f"{tmp_path}/out/", psi=0.7, root=lay.root)
    assert [f.name for f in files] == ["seed000040.png", "seed000041.png", "seed000042.png"]
    text = png_text(files[1])
    assert text["ganpipe:seed"] == "41" and text["ganpipe:psi"] == "0.7" and text["ganpipe:alias"] == "champion"
    assert text["ganpipe:version"] == r["champion"] and text["ganpipe:model"] == p.registry.model_name
    assert text["ganpipe:run_id"] and len(text["ganpipe:data_sha256"]) == 64
    again = replay(files[1], tmp_path / "replayed.png", lay.root)
    assert np.array_equal(_pixels(again), _pixels(files[1]))
    # image 41 of a batch that starts at 40 is the image of seed 41 alone
    alone = generate(uri, 1, 41, tmp_path / "alone.png", psi=0.7, root=lay.root)[0]
    assert np.array_equal(_pixels(alone), _pixels(files[1]))


def test_grid_replay_and_truncation(champion, tmp_path):
    p, lay, uri, _ = champion
    g = generate(uri, 9, 0, tmp_path / "grid.png", root=lay.root)[0]
    assert np.array_equal(_pixels(replay(g, tmp_path / "grid2.png", lay.root)), _pixels(g))
    spread = [
        np.asarray([_pixels(f) for f in generate(uri, 16, 0, f"{tmp_path}/psi{psi}/", psi=psi, root=lay.root)])
        .astype(float)
        .std(axis=0)
        .mean()
        for psi in (1.0, 0.1)
    ]
    assert spread[1] < spread[0]  # truncation trades variety for typicality


def test_animations_and_bad_requests(champion, tmp_path, run_cli):
    p, lay, uri, _ = champion
    gif = animate(uri, [1, 2], 6, tmp_path / "a.gif", root=lay.root)
    with Image.open(gif) as im:
        assert im.n_frames == 6
    mp4 = animate(uri, [1, 2, 3], 4, tmp_path / "walk.mp4", root=lay.root)
    import imageio.v3 as iio

    assert len(iio.imread(mp4)) == 3 + 3 + 4  # 1 -> 2 -> 3 -> back to 1, shared endpoints once
    with pytest.raises(DataError, match=".gif or .mp4"):
        animate(uri, [1, 2], 6, tmp_path / "a.avi", root=lay.root)
    with pytest.raises(DataError, match="classes 0..9"):
        generate(uri, 1, 0, tmp_path / "c.png", class_=10, root=lay.root)
    with pytest.raises(DataError, match="no ganpipe provenance"):
        Image.new("L", (4, 4)).save(tmp_path / "plain.png")
        replay(tmp_path / "plain.png", tmp_path / "x.png", lay.root)
    code, _, err = run_cli("-C", lay.root, "generate", "--psi", "0", "--out", tmp_path / "psi0.png")
    assert code == 2 and "--psi" in err and not (tmp_path / "psi0.png").exists()


def test_class_of_a_conditional_champion_is_recorded_and_replayed(champion, tmp_path):
    p, lay, uri, _ = champion
    threes = generate(uri, 2, 5, f"{tmp_path}/threes/", class_=3, root=lay.root)
    fours = generate(uri, 2, 5, f"{tmp_path}/fours/", class_=4, root=lay.root)
    assert [png_text(f)["ganpipe:class"] for f in threes] == ["3", "3"]
    # same latents, another class: another image
    assert not np.array_equal(_pixels(threes[0]), _pixels(fours[0]))
    assert np.array_equal(_pixels(replay(threes[1], tmp_path / "r.png", lay.root)), _pixels(threes[1]))
    # without --class, image i has class (seed + i) mod 10, and each file records its own
    default = generate(uri, 2, 13, f"{tmp_path}/default/", root=lay.root)
    assert [png_text(f)["ganpipe:class"] for f in default] == ["3", "4"]
    assert np.array_equal(
        _pixels(default[0]), _pixels(generate(uri, 1, 13, tmp_path / "c3.png", class_=3, root=lay.root)[0])
    )
    gif = animate(uri, [1, 2], 3, tmp_path / "a3.gif", root=lay.root, class_=3)
    assert gif.stat().st_size > 0
