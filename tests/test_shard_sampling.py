"""Frame-index sampling of `siammae shard`: gap range and its fps scaling, clips, determinism."""

import numpy as np
import pytest

from siammae.shard.sampling import SampleSpec, TooShort, sample_indices, video_rng


def draw(spec, num_frames, fps, key="a/b.mp4", seed=0):
    return sample_indices(spec, num_frames, fps, video_rng(seed, key))


@pytest.mark.parametrize("fps, expected", [(30, (4, 48)), (25, (3, 40)), (60, (8, 96)), (15, (2, 24))])
def test_gap_range_scales_with_fps(fps, expected):
    assert SampleSpec().gap_range(fps) == expected


def test_pairs_are_ordered_in_range_and_cover_the_range():
    spec = SampleSpec(per_video=4000)
    pairs = np.array(draw(spec, 300, 25.0))
    gaps = pairs[:, 1] - pairs[:, 0]
    assert pairs.shape == (4000, 2)
    assert gaps.min() == 3 and gaps.max() == 40  # uniform over the scaled range, both ends reached
    assert pairs.min() >= 0 and pairs.max() <= 299


def test_long_gaps_are_clipped_to_the_video_and_too_short_raises():
    pairs = np.array(draw(SampleSpec(per_video=200), 10, 30.0))
    assert (pairs[:, 1] - pairs[:, 0]).max() <= 9 and pairs.max() <= 9
    with pytest.raises(TooShort, match="4 frames"):
        draw(SampleSpec(), 4, 30.0)  # 3 frames of gap < 4


def test_clips_strictly_increase_and_span_the_gap():
    spec = SampleSpec(per_video=500, frames=5, gap=(4, 48))
    for clip in draw(spec, 120, 30.0):
        assert all(b > a for a, b in zip(clip, clip[1:]))
        assert 4 <= clip[-1] - clip[0] <= 48


def test_same_seed_and_key_same_indices():
    spec = SampleSpec()
    assert draw(spec, 300, 30.0) == draw(spec, 300, 30.0)
    assert draw(spec, 300, 30.0) != draw(spec, 300, 30.0, key="a/c.mp4")
    assert draw(spec, 300, 30.0) != draw(spec, 300, 30.0, seed=1)
