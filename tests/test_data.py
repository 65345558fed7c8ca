"""The prepare stage: every source, bad inputs skipped and listed, deterministic shards, atomic output."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
import zipfile

import numpy as np
import pytest
from PIL import Image

from ganpipe.core.errors import DataError
from ganpipe.data import prepare as data
from ganpipe.data import shards
from ganpipe.data.prepare import load_split, prepare, read_manifest


def _folder_params(tiny, path, **update):
    return tiny.data.model_copy(
        update={
            "source": "imagefolder",
            "path": str(path),
            "labels": "folders",
            "channels": 3,
            "resolution": 16,
            "min_images": 4,
            **update,
        }
    )


def _encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def _noise(seed: int, w: int = 40, h: int = 30, mode: str = "RGB") -> Image.Image:
    a = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    return Image.fromarray(a).convert(mode)


GOOD_FORMATS = [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP"), ("bmp", "BMP"), ("gif", "GIF"), ("tif", "TIFF")]


def make_folder(root, per_class: int = 6):
    """Two class folders of good images in every format, plus one of each bad input in cats/."""
    for c, name in enumerate(("cats", "dogs")):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            ext, fmt = GOOD_FORMATS[i % len(GOOD_FORMATS)]
            (root / name / f"{i:02d}.{ext}").write_bytes(_encode(_noise(100 * c + i), fmt))
    cats = root / "cats"
    good = {  # unusual but valid: converted, not skipped
        "cmyk.jpg": _encode(_noise(1).convert("CMYK"), "JPEG"),
        "gray16.png": _encode(Image.fromarray(np.tile(np.arange(0, 65536, 1024, dtype=np.uint16), (8, 1))), "PNG"),
        "palette.png": _encode(_noise(2).convert("P"), "PNG", transparency=0),
        "alpha.png": _encode(_noise(3, mode="RGBA"), "PNG"),
        "gray.png": _encode(_noise(4, mode="L"), "PNG"),
    }
    bad = {
        "zero.png": b"",
        "truncated.jpg": _encode(_noise(5), "JPEG")[:300],
        "truncated.png": _encode(_noise(6), "PNG")[:200],
        "text.png": b"this is not a picture\n",
        "notes.txt": b"hello",
        "duplicate.png": (root / "dogs" / "00.png").read_bytes(),
        "bomb.png": _encode(_noise(7, 200, 200), "PNG"),
    }
    for name, content in {**good, **bad}.items():
        (cats / name).write_bytes(content)
    (root / "README.md").write_text("top-level file, in no class folder")
    return len(good) + 2 * per_class, bad


def test_image_folder_skips_each_bad_input_and_lists_why(tmp_path, tiny, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10_000)  # bomb.png (40,000 px) is a bomb, the others are not
    n_good, bad = make_folder(tmp_path / "raw")
    m = prepare(_folder_params(tiny, tmp_path / "raw"), tmp_path / "prepared")
    reasons = {s["key"]: s["reason"] for s in m["skipped"]["items"]}
    assert reasons["cats/zero.png"] == "zero-byte file"
    assert reasons["cats/truncated.jpg"].startswith("truncated or corrupt image")
    assert reasons["cats/truncated.png"].startswith("truncated or corrupt image")
    assert reasons["cats/text.png"] == "not an image"
    assert reasons["cats/notes.txt"].startswith("not an image (suffix '.txt')")
    # the first in listing order stays: cats/ sorts before dogs/
    assert reasons["dogs/00.png"] == "duplicate (same content as cats/duplicate.png)"
    assert reasons["cats/bomb.png"].startswith("decompression bomb")
    assert reasons["README.md"].startswith("not an image")
    assert set(reasons) == {f"cats/{k}" for k in bad if k != "duplicate.png"} | {"dogs/00.png", "README.md"}
    assert m["skipped"]["count"] == len(bad) + 1 and m["skipped"]["by_reason"]["duplicate"] == 1
    assert m["counts"]["train"]["images"] + m["counts"]["test"]["images"] == n_good
    assert m["class_names"] == ["cats", "dogs"] and m["split"]["stratified"]
    x, y = load_split(tmp_path / "prepared", "train")
    assert x.shape[1:] == (3, 16, 16) and set(y.tolist()) == {0, 1}


def test_on_error_fail_stops_at_the_first_bad_file_and_keeps_the_old_output(tmp_path, tiny):
    make_folder(tmp_path / "raw")
    (tmp_path / "raw" / "README.md").unlink()
    for f in (tmp_path / "raw" / "cats").glob("*"):
        if f.name in ("notes.txt", "text.png", "zero.png", "truncated.png", "bomb.png"):
            f.unlink()  # duplicate.png stays: a duplicate is dropped, never an error
    p = _folder_params(tiny, tmp_path / "raw")
    before = prepare(p, tmp_path / "prepared")
    with pytest.raises(DataError, match=r"cats/truncated.jpg: truncated or corrupt image.*\(data.on_error: fail\)"):
        prepare(p.model_copy(update={"on_error": "fail"}), tmp_path / "prepared")
    assert read_manifest(tmp_path / "prepared") == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared", "raw"]  # no temp leftovers


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root reads anything")
def test_unreadable_file_is_skipped(tmp_path, tiny):
    make_folder(tmp_path / "raw")
    locked = tmp_path / "raw" / "dogs" / "00.png"
    locked.chmod(0)
    try:
        m = prepare(_folder_params(tiny, tmp_path / "raw"), tmp_path / "prepared")
    finally:
        locked.chmod(0o644)
    assert {s["key"]: s["reason"] for s in m["skipped"]["items"]}["dogs/00.png"] == "unreadable (permission denied)"


def test_empty_missing_and_too_small_inputs_are_one_line_errors(tmp_path, tiny):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image files"):
        prepare(_folder_params(tiny, tmp_path / "empty"), tmp_path / "out")
    with pytest.raises(DataError, match="no such file or directory"):
        prepare(_folder_params(tiny, tmp_path / "nowhere"), tmp_path / "out")
    make_folder(tmp_path / "raw", per_class=2)
    with pytest.raises(DataError, match=r"usable images of .* data.min_images = 500"):
        prepare(_folder_params(tiny, tmp_path / "raw", min_images=500), tmp_path / "out")
    shutil.copytree(tmp_path / "raw" / "cats", tmp_path / "one" / "cats")
    with pytest.raises(DataError, match="there is 1 class folder; need at least 2"):
        prepare(_folder_params(tiny, tmp_path / "one"), tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_zip_and_tar_archives_prepare_like_the_folder(tmp_path, tiny):
    make_folder(tmp_path / "raw")
    files = sorted(p for p in (tmp_path / "raw").rglob("*") if p.is_file())
    with zipfile.ZipFile(tmp_path / "raw.zip", "w") as z:
        for f in files:
            z.write(f, f.relative_to(tmp_path / "raw").as_posix())
    with tarfile.open(tmp_path / "raw.tar.gz", "w:gz") as t:
        for f in files:
            t.add(f, f.relative_to(tmp_path / "raw").as_posix())
    folder = prepare(_folder_params(tiny, tmp_path / "raw"), tmp_path / "a")
    for name in ("raw.zip", "raw.tar.gz"):
        m = prepare(_folder_params(tiny, tmp_path / name), tmp_path / name.replace(".", "_"))
        assert m["sha256"] == folder["sha256"] and m["skipped"]["items"] == folder["skipped"]["items"]
    (tmp_path / "broken.zip").write_bytes(b"PK\x03\x04 not really")
    with pytest.raises(DataError, match="unreadable archive"):
        prepare(_folder_params(tiny, tmp_path / "broken.zip"), tmp_path / "c")


def test_unlabelled_folder_mirrors_and_shards(tmp_path, tiny):
    make_folder(tmp_path / "raw")
    p = _folder_params(tiny, tmp_path / "raw", labels="none", shard_size=4, hflip=True)
    m = prepare(p, tmp_path / "prepared")
    plain = prepare(p.model_copy(update={"hflip": False}), tmp_path / "plain")
    assert m["num_classes"] == 0 and m["counts"]["train"]["per_class"] == {}
    assert m["counts"]["train"]["images"] == 2 * plain["counts"]["train"]["images"]
    assert m["counts"]["test"]["images"] == plain["counts"]["test"]["images"]  # test images are not mirrored
    assert len(m["shards"]["train"]["files"]) == -(-m["counts"]["train"]["images"] // 4)
    x, y = load_split(tmp_path / "prepared", "train")
    assert np.array_equal(x[1], x[0][:, :, ::-1]) and (y == -1).all()
    assert np.array_equal(np.asarray(x)[[5, 2, 9]], x[[5, 2, 9]]) and np.array_equal(np.asarray(x)[3:7], x[3:7])


def test_sharded_images_read_like_one_array(tmp_path):
    w = shards.ShardWriter(tmp_path, "train", 3, (1, 2, 2))
    full = np.arange(8 * 4, dtype=np.uint8).reshape(8, 1, 2, 2)
    for i, img in enumerate(full):
        w.add(img, i % 2)
    info = w.close()
    x, y = shards.open_split(tmp_path, info)
    assert [f["images"] for f in info["files"]] == [3, 3, 2] and len(x) == 8 and x.shape == full.shape
    assert np.array_equal(np.asarray(x), full) and np.array_equal(x[-1], full[-1])
    assert np.array_equal(x[np.array([7, 0, 4, 4])], full[[7, 0, 4, 4]]) and np.array_equal(x[y == 1], full[1::2])
    with pytest.raises(IndexError):
        x[8]
    (tmp_path / info["files"][1]["file"]).unlink()
    with pytest.raises(DataError, match="re-run `ganpipe prepare`"):
        shards.open_split(tmp_path, info)


def test_prepare_digits_is_deterministic_and_manifest_matches_shards(tmp_path, tiny):
    m1 = prepare(tiny.data, tmp_path / "a")
    m2 = prepare(tiny.data.model_copy(update={"workers": 1}), tmp_path / "b")  # in-process = worker pool
    assert m1 == m2
    for split in data.SPLITS:
        x1, y1 = load_split(tmp_path / "a", split)
        x2, y2 = load_split(tmp_path / "b", split)
        assert np.array_equal(np.asarray(x1), np.asarray(x2)) and np.array_equal(y1, y2)
        res = tiny.data.resolution
        assert x1.shape[1:] == (tiny.data.channels, res, res) and x1.dtype == np.uint8
        assert m1["counts"][split]["images"] == len(y1) == sum(m1["counts"][split]["per_class"].values())
    assert m1["counts"]["train"]["images"] + m1["counts"]["test"]["images"] == 1797
    assert m1 == read_manifest(tmp_path / "a")
    # the sha256 covers the content: recomputed from the files, it is the same
    for split in data.SPLITS:
        x, y = load_split(tmp_path / "a", split)
        import hashlib

        assert hashlib.sha256(np.asarray(x).tobytes() + y.tobytes()).hexdigest() == m1["shards"][split]["sha256"]


def test_split_is_stratified_and_seeded():
    labels = np.repeat(np.arange(10), 50)
    train, test, stratified = data.split_indices(labels, 0.2, seed=0)
    assert stratified and len(np.intersect1d(train, test)) == 0 and len(train) + len(test) == len(labels)
    assert np.all(np.bincount(labels[test]) == 10)
    assert np.array_equal(test, data.split_indices(labels, 0.2, seed=0)[1])
    assert not np.array_equal(test, data.split_indices(labels, 0.2, seed=1)[1])
    assert not data.split_indices(np.array([0, 0, 0, 1]), 0.5, 0)[2]  # a class of one cannot be stratified


def test_images_are_real_digits_not_blank(tmp_path, tiny):
    prepare(tiny.data, tmp_path)
    x, y = load_split(tmp_path, "train")
    x = np.asarray(x)
    assert x.max() == 255 and x.min() == 0
    means = np.stack([x[y == k].mean(axis=0) for k in range(10)]).reshape(10, -1)
    assert np.min(np.linalg.norm(means[:, None] - means[None], axis=-1) + np.eye(10) * 1e9) > 50


def test_rgb_channels_option(tmp_path, tiny):
    m = prepare(tiny.data.model_copy(update={"channels": 3}), tmp_path)
    x, _ = load_split(tmp_path, "test")
    x = np.asarray(x)
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

    monkeypatch.setattr(shards.np, "save", flaky_save)
    with pytest.raises(OSError, match="disk full"):
        prepare(tiny.data.model_copy(update={"split_seed": 7}), out)
    assert json.loads((out / "manifest.json").read_text()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["prepared"]  # no temp leftovers


def test_missing_or_old_prepared_data_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="run `ganpipe prepare` first"):
        load_split(tmp_path, "train")
    (tmp_path / "manifest.json").write_text('{"source": "digits"}')
    with pytest.raises(DataError, match="older ganpipe"):
        read_manifest(tmp_path)


def test_openmoji_renders_every_listed_emoji(tmp_path, tiny):
    from ganpipe.data import emoji

    m = prepare(tiny.data.model_copy(update={"source": "openmoji", "channels": 3, "resolution": 16}), tmp_path)
    total = m["counts"]["train"]["images"] + m["counts"]["test"]["images"]
    assert total == len(emoji.list_glyphs()) and m["skipped"]["count"] == 0
    assert m["licence"] == "CC BY-SA 4.0" and "OpenMoji" in m["attribution"]
    x, y = load_split(tmp_path, "train")
    x = np.asarray(x)
    assert (x[:, :, 0, 0] == 255).mean() > 0.9  # white corners
    assert np.abs(x[:, 0].astype(int) - x[:, 2]).mean() > 5  # colour, not grey
    assert m["num_classes"] == len(emoji.group_names(emoji.list_glyphs())) and y.min() >= 0


@pytest.mark.parametrize("name", ["mnist", "cifar10"])
def test_torchvision_datasets_keep_their_own_split(name, tmp_path, tiny, monkeypatch):
    from tests.test_tvdata import _fixture

    (tmp_path / "tv").mkdir()
    expected = _fixture(name, tmp_path / "tv", monkeypatch)
    p = tiny.data.model_copy(
        update={
            "source": "torchvision",
            "dataset": name,
            "download_dir": str(tmp_path / "tv"),
            "channels": 3,
            "resolution": 8,
            "min_images": 2,
        }
    )
    m = prepare(p, tmp_path / "prepared")
    assert m["split"]["kind"] == "the source's own" and m["dataset"] == name
    for split in data.SPLITS:
        assert m["counts"][split]["images"] == len(expected[split][1])
        _, y = load_split(tmp_path / "prepared", split)
        assert np.array_equal(y, expected[split][1])


def test_outputs_get_ordinary_permissions(tmp_path, tiny):
    """Temp files and directories are private (0600/0700); the renamed results follow the umask."""
    old = os.umask(0o022)
    try:
        prepare(tiny.data, tmp_path / "prepared")
    finally:
        os.umask(old)
    assert (tmp_path / "prepared").stat().st_mode & 0o777 == 0o755
    assert (tmp_path / "prepared" / "manifest.json").stat().st_mode & 0o777 == 0o644


def test_cli_prepare_and_data_show(tmp_path, tiny_raw, run_cli):
    """`ganpipe prepare` stops a fatal problem with one line and exit 2; `ganpipe data show` summarises
    the manifest and writes a contact sheet with a row of samples per class."""
    import subprocess
    import sys

    import yaml

    (tmp_path / "empty").mkdir()
    tiny_raw["data"].update(source="imagefolder", path=str(tmp_path / "empty"))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw))
    code, _, err = run_cli("-C", tmp_path, "prepare")
    assert code == 2 and err.strip().count("\n") == 0 and "no image files" in err
    assert not (tmp_path / "data" / "prepared").exists()  # nothing half-written

    cli = [sys.executable, "-m", "ganpipe", "-C", str(tmp_path)]
    make_folder(tmp_path / "raw")
    tiny_raw["data"].update(path=str(tmp_path / "raw"), labels="folders", min_images=4)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(tiny_raw))
    ok = subprocess.run(cli + ["prepare"], capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    show = subprocess.run(
        cli + ["data", "show", "--out", str(tmp_path / "sheet.png"), "--per-class", "3"], capture_output=True, text=True
    )
    assert show.returncode == 0, show.stderr
    assert "imagefolder:" in show.stdout and "2 classes" in show.stdout and "skipped" in show.stdout
    res = tiny_raw["data"]["resolution"]
    with Image.open(tmp_path / "sheet.png") as sheet:  # 2 classes x 3 samples, 2 px padding
        assert sheet.size == (3 * (res + 2) + 2, 2 * (res + 2) + 2)
