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

from siammae import composite, synth
from siammae.cli.synth import synth as synth_group

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
            offset = next(o for o in [(a, b) for a in np.linspace(0, 1, 101) for b in np.linspace(0, 1, 101)]
                          if np.array_equal(composite.cover(raw, (64, 112), o)[masks[0] == 0], frames[0][masks[0] == 0]))
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
    r = runner.invoke(synth_group, ["davis", str(tmp_path / "d"), "--from-videos", str(videos), "--hard",
                                    "--sequences", "2", "--frames", "4", "--size", "48x80"])
    assert r.exit_code == 0, r.output
    assert check_davis_layout(tmp_path / "d", 4, (48, 80)) == ["real-hard-000", "real-hard-001"]
    r = runner.invoke(synth_group, ["davis", str(tmp_path / "e"), "--hard"])
    assert r.exit_code == 2 and "--hard needs --from-videos" in r.output
    (tmp_path / "empty").mkdir()
    r = runner.invoke(synth_group, ["davis", str(tmp_path / "e"), "--from-videos", str(tmp_path / "empty")])
    assert r.exit_code == 1 and "no readable video" in r.output
