"""DAVIS-format sets composited from real videos: real backgrounds, exact masks, provenance.

The "real" videos here are synthetic files (tests need no data outside the repository); what is checked
is that every background pixel is the source video's frame and that the hard variant cuts objects from
that same video.
"""

import json

import numpy as np
import pytest
from click.testing import CliRunner
from test_synth import check_davis_layout

from siammae.cli.synth import synth as synth_group
from siammae.synth import composite
from siammae.synth import scenes as synth

pytest.importorskip("decord")


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    synth.synth_videos(folder, num_videos=3, frames=12, size=(48, 64), seed=3)
    (folder / "broken.mp4").write_bytes(b"\x00not a video" * 100)
    return folder


def test_ping_pong_plays_short_videos_forth_and_back():
    assert composite.ping_pong(2, 4, 10) == [2, 3, 4, 5]
    assert composite.ping_pong(0, 7, 3) == [0, 1, 2, 1, 0, 1, 2]
    assert composite.ping_pong(0, 3, 1) == [0, 0, 0]


def test_backgrounds_are_the_video_frames_and_masks_cover_the_objects(videos):
    sources = composite.find_sources(videos)
    assert [s.path.name for s in sources] == ["video_0000.mp4", "video_0001.mp4", "video_0002.mp4"]
    frames, masks, record = composite.compose_sequence(sources, 1, 8, (64, 112), seed=0, hard=False, objects=(2, 2))
    assert frames.shape == (8, 64, 112, 3) and masks.shape == (8, 64, 112)
    assert set(np.unique(masks[0])) == {0, 1, 2}
    bg = next(s for s in sources if str(s.path) == record["background"])
    first, last = record["background_frames"]
    assert last - first == 7
    offset = None
    for t, raw in enumerate(composite.read_frames(bg, list(range(first, last + 1)))):
        # The cover crop's offset is drawn per sequence; find it once by matching the first frame.
        if offset is None:
            offset = next(
                o
                for o in [(a, b) for a in np.linspace(0, 1, 101) for b in np.linspace(0, 1, 101)]
                if np.array_equal(composite.cover(raw, (64, 112), o)[masks[0] == 0], frames[0][masks[0] == 0])
            )
        background = composite.cover(raw, (64, 112), offset)
        assert np.array_equal(frames[t][masks[t] == 0], background[masks[t] == 0])
        assert not np.array_equal(frames[t][masks[t] > 0], background[masks[t] > 0])
    assert all(o["video"] != record["background"] for o in record["objects"])


def test_hard_objects_come_from_their_background_video(videos):
    sources = composite.find_sources(videos)
    for i in range(3):
        _, _, record = composite.compose_sequence(sources, i, 4, (64, 112), seed=1, hard=True, objects=(2, 3))
        assert {o["video"] for o in record["objects"]} == {record["background"]}


def test_composite_davis_layout_provenance_and_determinism(videos, tmp_path, capsys):
    names = composite.composite_davis(videos, tmp_path / "a", num_sequences=2, frames=5, size=(64, 112), seed=2)
    assert names == ["real-000", "real-001"]
    assert check_davis_layout(tmp_path / "a", 5, (64, 112)) == names
    assert "broken.mp4" in capsys.readouterr().err  # left out, and said so
    info = json.loads((tmp_path / "a" / "composite.json").read_text())
    assert set(info["sequences"]) == set(names) and info["settings"]["hard"] is False
    composite.composite_davis(videos, tmp_path / "b", num_sequences=2, frames=5, size=(64, 112), seed=2)
    for name in names:
        for sub in ("JPEGImages", "Annotations"):
            a = sorted((tmp_path / "a" / sub / "480p" / name).iterdir())
            b = sorted((tmp_path / "b" / sub / "480p" / name).iterdir())
            assert [p.read_bytes() for p in a] == [p.read_bytes() for p in b]


def test_cli_from_videos_hard_and_errors(videos, tmp_path):
    runner = CliRunner()
    options = "--hard --sequences 2 --frames 4 --size 48x80".split()
    r = runner.invoke(synth_group, ["davis", str(tmp_path / "d"), "--from-videos", str(videos), *options])
    assert r.exit_code == 0, r.output
    assert check_davis_layout(tmp_path / "d", 4, (48, 80)) == ["real-hard-000", "real-hard-001"]
    r = runner.invoke(synth_group, ["davis", str(tmp_path / "e"), "--hard"])
    assert r.exit_code == 2 and "--hard needs --from-videos" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(synth_group, ["davis", str(tmp_path / "e"), "--from-videos", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "no readable video" in r.output


def _object_stats(frames, masks, label):
    """Centroid per frame (T, 2), area per frame (T,) of object ``label``."""
    ys, xs = np.indices(masks.shape[1:])
    cover = masks == label
    area = cover.sum((1, 2))
    centroid = np.stack([(cover * ys).sum((1, 2)) / area, (cover * xs).sum((1, 2)) / area], 1)
    return centroid, area


def test_variants_change_only_what_they_name(videos):
    """Every variant draws the same objects at the same places as default (same seed), then: colour
    matches the background around them, fast moves 3x as far, scale grows, nonrigid bends."""
    sources = composite.find_sources(videos)
    size = (96, 160)

    def sequence(name):
        return composite.compose_sequence(
            sources, 0, 12, size, seed=4, hard=False, objects=(1, 1), variant=composite.VARIANTS[name]
        )

    base_frames, base_masks, base_record = sequence("default")
    assert base_record["variant"] == "default"

    # colour: the object's mean colour in frame 0 moves towards its background surroundings.
    colour_frames, colour_masks, _ = sequence("colour")
    assert np.array_equal(colour_masks, base_masks)
    inside = base_masks[0] == 1
    ring = np.zeros_like(inside)
    ys, xs = np.nonzero(inside)
    ring[max(0, ys.min() - 8) : ys.max() + 9, max(0, xs.min() - 8) : xs.max() + 9] = True
    ring &= ~inside

    def gap(frame):
        return np.abs(frame[inside].mean(0) - frame[ring].mean(0)).mean()

    assert gap(colour_frames[0]) < 0.6 * gap(base_frames[0])

    # fast: the same path three times as fast.
    _, fast_masks, _ = sequence("fast")
    base_path, _ = _object_stats(base_frames, base_masks, 1)
    fast_path, _ = _object_stats(None, fast_masks, 1)
    step = lambda path: np.linalg.norm(np.diff(path, axis=0), axis=1).mean()  # noqa: E731
    assert step(fast_path) > 2 * step(base_path)

    # scale: the object covers several times its first area at the end (before borders cut it).
    _, scale_masks, _ = sequence("scale")
    _, area = _object_stats(None, scale_masks, 1)
    assert area[-1] > 3 * area[0] and np.all(np.diff(area[:8]) > 0)

    # nonrigid: the outline changes beyond what a rigid motion keeps (area varies), and frames and
    # masks still agree (every object pixel differs from the plain background where the masks say so).
    bent_frames, bent_masks, _ = sequence("nonrigid")
    assert not np.array_equal(bent_masks, base_masks)
    assert bent_masks.shape == base_masks.shape and set(np.unique(bent_masks[0])) == {0, 1}


def test_warp_bends_shape_and_texture_together_and_zero_warp_changes_nothing():
    side = 41
    sprite = np.zeros((side, side, 3), np.uint8)
    sprite[..., 0] = np.arange(side, dtype=np.uint8)[None, :] * 5 + 40  # a ramp: every texel its own colour
    sprite[..., 1] = np.arange(side, dtype=np.uint8)[:, None] * 5 + 40
    alpha = synth.rasterise(lambda u, v: u * u + v * v <= 10.0**2, side)
    path = synth.Path2D(np.array([32.0, 32.0]), np.zeros(2), np.zeros(2), np.zeros(2))

    def draw(warp):
        obj = synth.SceneObject(sprite, alpha, 10.0, path, 0.3, 0.0, 0.0, 0.0, 0.0, warp=warp)
        frames = np.zeros((6, 64, 64, 3), np.uint8)
        masks = np.zeros((6, 64, 64), np.uint8)
        synth.draw_object(obj, np.arange(6, dtype=np.float64), 1, frames, masks)
        return frames, masks

    plain = draw(None)
    still = draw(synth.Warp(0.0, 0.5, 0.3, np.zeros(2)))
    assert all(np.array_equal(a, b) for a, b in zip(plain, still))
    frames, masks = draw(synth.Warp(2.5, 0.5, 0.6, np.array([0.0, 1.0])))
    # Painted exactly where the mask says (the sprite has no black texel inside the shape).
    assert np.array_equal(masks > 0, frames.any(-1))
    assert len({int(m.sum()) for m in masks}) > 1  # the outline bends from frame to frame
    assert not np.array_equal(frames[0], frames[3])  # so does the texture, with the camera still


def test_cli_variant_and_its_errors(videos, tmp_path):
    runner = CliRunner()
    options = "--variant colour --sequences 1 --frames 4 --size 48x80".split()
    r = runner.invoke(synth_group, ["davis", str(tmp_path / "d"), "--from-videos", str(videos), *options])
    assert r.exit_code == 0, r.output
    assert check_davis_layout(tmp_path / "d", 4, (48, 80)) == ["real-colour-000"]
    info = json.loads((tmp_path / "d" / "composite.json").read_text())
    assert info["settings"]["variant"] == "colour" and info["sequences"]["real-colour-000"]["variant"] == "colour"
    r = runner.invoke(synth_group, ["davis", str(tmp_path / "e"), "--variant", "fast"])
    assert r.exit_code == 2 and "--variant needs --from-videos" in r.output
    r = runner.invoke(
        synth_group, ["davis", str(tmp_path / "f"), "--from-videos", str(videos), "--hard", "--variant", "scale"]
    )
    assert r.exit_code == 2 and "excludes --variant scale" in r.output
