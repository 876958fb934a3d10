"""Synthetic data generators: scenes, masks, video files and the DAVIS-2017 layout."""

import dataclasses

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from siammae.cli.synth import synth as synth_group
from siammae.synth import scenes as synth
from siammae.tasks.davis_files import PALETTE, save_indexed_png

decord = pytest.importorskip("decord")


_STREAM_CLIP = 404  # a random stream of its own (see siammae.synth.scenes' stream ids)


def synth_clip(frames=16, size=(64, 64), seed=0, split="train", objects=(2, 4)):
    """One in-memory clip: (frames (T, H, W, 3) uint8, masks (T, H, W) uint8)."""
    scene = synth.sample_scene(synth.scene_rng(seed, _STREAM_CLIP, 0), size, split, objects)
    return synth.render_scene(scene, frames)


def decode(path):
    """All frames (T, H, W, 3) uint8 and the frame rate of a video file, read with decord."""
    reader = decord.VideoReader(str(path))
    return reader.get_batch(list(range(len(reader)))).asnumpy(), reader.get_avg_fps()


# ----------------------------------------------------------------------------------------- palette


def test_palette_is_the_standard_davis_voc_colormap():
    assert len(PALETTE) == 768 and all(0 <= c <= 255 for c in PALETTE)
    colour = lambda i: tuple(PALETTE[3 * i : 3 * i + 3])  # noqa: E731
    assert colour(0) == (0, 0, 0)
    assert colour(1) == (128, 0, 0)
    assert colour(2) == (0, 128, 0)
    assert colour(3) == (128, 128, 0)
    assert colour(4) == (0, 0, 128)
    assert colour(255) == (224, 224, 192)


def test_save_indexed_png_keeps_indices_and_palette(tmp_path):
    labels = np.random.default_rng(0).integers(0, 5, (7, 9)).astype(np.uint8)
    labels[0, 0] = 255
    save_indexed_png(tmp_path / "a.png", labels)
    image = Image.open(tmp_path / "a.png")
    assert image.mode == "P" and image.size == (9, 7)
    assert np.array_equal(np.array(image), labels)
    assert image.getpalette()[:768] == PALETTE
    with pytest.raises(ValueError):
        save_indexed_png(tmp_path / "b.png", labels.astype(np.int64))
    with pytest.raises(ValueError):
        save_indexed_png(tmp_path / "c.png", np.zeros((4, 4, 3), np.uint8))


# ----------------------------------------------------------------------------------------- scenes


def test_clip_shapes_and_determinism():
    frames, masks = synth_clip(frames=6, size=(40, 56), seed=3)
    assert frames.shape == (6, 40, 56, 3) and frames.dtype == np.uint8
    assert masks.shape == (6, 40, 56) and masks.dtype == np.uint8
    again = synth_clip(frames=6, size=(40, 56), seed=3)
    assert np.array_equal(frames, again[0]) and np.array_equal(masks, again[1])
    assert not np.array_equal(frames, synth_clip(frames=6, size=(40, 56), seed=4)[0])


def test_train_and_val_families_are_disjoint_and_all_render():
    (train_tex, train_shapes), (val_tex, val_shapes) = synth.families("train"), synth.families("val")
    assert not set(train_tex) & set(val_tex) and not set(train_shapes) & set(val_shapes)
    rng = np.random.default_rng(0)
    for family in train_tex + val_tex:
        texture = synth.make_texture(rng, family, 30, 40, scale=64)
        assert texture.shape == (30, 40, 3) and texture.dtype == np.uint8
        assert texture.std() > 5, f"{family} is nearly flat"
    for name, make_shape in synth.SHAPE_FNS.items():
        radius, side = 12.0, synth.sprite_side(12.0, 0.15)
        alpha = synth.rasterise(make_shape(rng, radius), side)
        assert alpha.sum() > 0.2 * np.pi * radius**2, f"{name} is too thin"
        yy, xx = np.nonzero(alpha)
        assert np.hypot(yy - side // 2 + 0.5, xx - side // 2 + 0.5).max() <= radius + 1, f"{name} leaves its disc"
    with pytest.raises(ValueError):
        synth.families("test")


def test_masks_match_rendered_objects_and_front_most_wins():
    """Each object alone, rendered over the same background, must reproduce the full render exactly
    where the mask names it; mask 0 must show the bare background; no later object may cover a pixel
    labelled with an earlier one."""
    scene = synth.sample_scene(synth.scene_rng(1, 0, 0), (48, 64), "all", objects=(4, 4))
    frames, masks = synth.render_scene(scene, 12)
    bare, bare_masks = synth.render_scene(dataclasses.replace(scene, objects=[]), 12)
    assert not bare_masks.any()
    assert np.array_equal(frames[masks == 0], bare[masks == 0])
    alone = [synth.render_scene(dataclasses.replace(scene, objects=[obj]), 12) for obj in scene.objects]
    for k, (obj_frames, obj_masks) in enumerate(alone, start=1):
        here = masks == k
        assert here.any(), f"object {k} never visible"
        assert np.array_equal(frames[here], obj_frames[here])
        assert obj_masks[here].all()
        for _, later_masks in alone[k:]:
            assert not later_masks[here].any()
    assert masks.max() == len(scene.objects)


def test_time_windows_and_chunks_render_the_same(monkeypatch):
    scene = synth.sample_scene(synth.scene_rng(4, 0, 0), (32, 48), "all", objects=(3, 3))
    frames, masks = synth.render_scene(scene, 20)
    later = synth.render_scene(scene, 8, start=12)
    assert np.array_equal(frames[12:], later[0]) and np.array_equal(masks[12:], later[1])
    monkeypatch.setattr(synth, "_WINDOW_BUDGET", 1)  # one frame per chunk
    chunked = synth.render_scene(scene, 20)
    assert np.array_equal(frames, chunked[0]) and np.array_equal(masks, chunked[1])


def test_objects_and_background_move():
    scene = synth.sample_scene(synth.scene_rng(2, 0, 0), (64, 64), "train", objects=(3, 3))
    frames, masks = synth.render_scene(scene, 30)
    for k in range(1, 4):
        ys, xs = np.nonzero(masks[0] == k)
        ye, xe = np.nonzero(masks[-1] == k)
        if len(ys) and len(ye):
            assert np.hypot(ys.mean() - ye.mean(), xs.mean() - xe.mean()) > 1.0
    corners = np.rint(scene.pan.at(np.array([0.0, 29.0])))
    assert np.abs(corners[0] - corners[1]).max() >= 1


# ----------------------------------------------------------------------------------------- video files


@pytest.mark.parametrize("suffix", [".mp4", ".avi"])
def test_encode_video_round_trip(tmp_path, suffix):
    frames, _ = synth_clip(frames=9, size=(48, 64))
    path = synth.encode_video(frames, tmp_path / f"clip{suffix}", fps=25)
    decoded, fps = decode(path)
    assert decoded.shape == frames.shape and fps == pytest.approx(25)
    # Lossy, and 4:2:0 halves colour resolution, so compare brightness: the same pictures.
    luma = np.array([0.299, 0.587, 0.114])
    assert np.abs(decoded @ luma - frames @ luma).mean() < 6


def test_encode_video_rejects_bad_input(tmp_path):
    frames, _ = synth_clip(frames=2, size=(48, 64))
    with pytest.raises(ValueError, match="even"):
        synth.encode_video(frames[:, :47], tmp_path / "odd.mp4")
    with pytest.raises(ValueError):
        synth.encode_video(frames.astype(np.float32), tmp_path / "float.mp4")
    with pytest.raises(ValueError, match="codec"):
        synth.encode_video(frames, tmp_path / "clip.xyz")


def test_synth_videos_are_valid_and_deterministic(tmp_path):
    kwargs = dict(frames=10, size=(48, 64), fps=30, seed=5)
    first = synth.synth_videos(tmp_path / "a", num_videos=3, **kwargs)
    assert [p.name for p in first] == ["video_0000.mp4", "video_0001.mp4", "video_0002.mp4"]
    for path in first:
        decoded, fps = decode(path)
        assert decoded.shape == (10, 48, 64, 3) and fps == pytest.approx(30)
    again = synth.synth_videos(tmp_path / "b", num_videos=2, **kwargs)  # fewer videos: same prefix
    for p, q in zip(first, again):
        assert np.array_equal(decode(p)[0], decode(q)[0])
    other = synth.synth_videos(tmp_path / "c", num_videos=1, **{**kwargs, "seed": 6})
    assert not np.array_equal(decode(first[0])[0], decode(other[0])[0])


# ----------------------------------------------------------------------------------------- DAVIS layout


def check_davis_layout(root, frames, size):
    """Assert ``root`` is a valid DAVIS-2017 layout; returns the sequence names from val.txt."""
    names = (root / "ImageSets/2017/val.txt").read_text().split()
    assert (root / "ImageSets/2017/train.txt").exists()
    assert names
    for name in names:
        jpegs = sorted((root / "JPEGImages/480p" / name).glob("*.jpg"))
        pngs = sorted((root / "Annotations/480p" / name).glob("*.png"))
        assert [p.name for p in jpegs] == [f"{i:05d}.jpg" for i in range(frames)]
        assert [p.stem for p in pngs] == [p.stem for p in jpegs]
        first_ids = None
        for jpeg, png in zip(jpegs, pngs):
            image, labels = Image.open(jpeg), Image.open(png)
            assert image.mode == "RGB" and image.size == (size[1], size[0])
            assert labels.mode == "P" and labels.size == image.size
            ids = set(np.unique(np.array(labels)).tolist()) - {0}
            if first_ids is None:
                first_ids = ids
                assert ids == set(range(1, len(ids) + 1)) and len(ids) >= 2
            assert ids <= first_ids
    return names


def test_synth_davis_layout(tmp_path):
    names = synth.synth_davis(tmp_path, num_sequences=2, frames=5, size=(48, 80), seed=1, num_train=1)
    assert names == ["synth-000", "synth-001"]
    assert check_davis_layout(tmp_path, 5, (48, 80)) == names
    assert (tmp_path / "ImageSets/2017/train.txt").read_text().split() == ["synth-train-000"]
    # A rerun with fewer frames must not leave stale frames behind.
    synth.synth_davis(tmp_path, num_sequences=2, frames=3, size=(48, 80), seed=1)
    check_davis_layout(tmp_path, 3, (48, 80))
    assert (tmp_path / "ImageSets/2017/train.txt").read_text() == ""


def test_davis_frames_match_masks(tmp_path):
    """The JPEG frames are the rendered scene, and the annotations the same scene's masks."""
    synth.synth_davis(tmp_path, num_sequences=1, frames=4, size=(48, 80), seed=2)
    rng = synth.scene_rng(2, synth._STREAM_DAVIS_VAL, 0)
    frames, masks = synth._sample_davis_scene(rng, (48, 80), "val", (2, 4), 4)
    for i in range(4):
        jpeg = np.array(Image.open(tmp_path / f"JPEGImages/480p/synth-000/{i:05d}.jpg")).astype(int)
        png = np.array(Image.open(tmp_path / f"Annotations/480p/synth-000/{i:05d}.png"))
        assert np.array_equal(png, masks[i])
        assert np.abs(jpeg - frames[i]).mean() < 8


# ----------------------------------------------------------------------------------------- CLI


def test_cli_videos_and_davis(tmp_path):
    runner = CliRunner()
    result = runner.invoke(
        synth_group, ["videos", str(tmp_path / "v"), "--num", "2", "--frames", "6", "--size", "32x48"]
    )
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "v").iterdir()) == ["video_0000.mp4", "video_0001.mp4"]
    result = runner.invoke(
        synth_group, ["davis", str(tmp_path / "d"), "--sequences", "2", "--frames", "4", "--size", "48x64"]
    )
    assert result.exit_code == 0, result.output
    assert len(check_davis_layout(tmp_path / "d", 4, (48, 64))) == 2


@pytest.mark.parametrize("args", [["--size", "33x48"], ["--size", "big"], ["--objects", "4-2"]])
def test_cli_rejects_bad_arguments(tmp_path, args):
    result = CliRunner().invoke(synth_group, ["videos", str(tmp_path / "v"), *args])
    assert result.exit_code == 2 and "Invalid value" in result.output
