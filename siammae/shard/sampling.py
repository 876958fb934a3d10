"""Deterministic choice of the frames that make each sample of a video.

A sample is ``frames`` consecutive-in-time frame indices ``t_0 < t_1 < ... < t_{K-1}``. Its *gap*
``t_{K-1} - t_0`` is drawn uniformly from a range given in frames at a reference rate (the paper:
4..48 frames at 30 fps, SiamMAE sec. 4) and scaled to the video's own frame rate, so the gap means
the same time span in a 25 fps and a 60 fps video. For K > 2 the inner frames are spread evenly
across the gap (rounded). The start is uniform over the positions where the whole sample fits.

The random stream depends only on (seed, video key), never on which worker or run draws it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import List, Tuple

import numpy as np

from siammae.errors import SiammaeError


class TooShort(SiammaeError):
    """The video has fewer frames than the smallest gap needs."""


@dataclass(frozen=True)
class SampleSpec:
    """What to draw from each video.

    ``gap`` = (min, max) frames at ``ref_fps``; ``frames`` = K frames per sample (2 = pairs);
    ``per_video`` = samples drawn from each video.
    """

    per_video: int = 8
    frames: int = 2
    gap: Tuple[int, int] = (4, 48)
    ref_fps: float = 30.0

    def gap_range(self, fps: float) -> Tuple[int, int]:
        """The (min, max) gap in frames of a video at ``fps`` (min >= K-1 so indices can increase)."""
        scale = fps / self.ref_fps if fps > 0 else 1.0
        lo = max(self.frames - 1, 1, int(round(self.gap[0] * scale)))
        hi = max(lo, int(round(self.gap[1] * scale)))
        return lo, hi


def video_rng(seed: int, key: str) -> np.random.Generator:
    """A generator seeded by ``seed`` and a stable hash of ``key`` (the video's path relative to SRC)."""
    digest = hashlib.sha1(key.encode("utf-8")).digest()
    return np.random.default_rng(np.random.SeedSequence([seed, int.from_bytes(digest[:8], "little")]))


def sample_indices(spec: SampleSpec, num_frames: int, fps: float, rng: np.random.Generator) -> List[List[int]]:
    """``spec.per_video`` lists of K strictly increasing frame indices in ``[0, num_frames)``.

    Gaps longer than the video are clipped to ``num_frames - 1``; a video shorter than the minimum
    gap raises :class:`TooShort`.
    """
    lo, hi = spec.gap_range(fps)
    if num_frames - 1 < lo:
        raise TooShort(f"too short for the minimum gap: {num_frames} frames, gap >= {lo} needed at {fps:g} fps")
    hi = min(hi, num_frames - 1)
    samples = []
    for _ in range(spec.per_video):
        gap = int(rng.integers(lo, hi + 1))
        start = int(rng.integers(0, num_frames - gap))
        offsets = np.round(np.linspace(0, gap, spec.frames)).astype(int)
        samples.append([start + int(o) for o in offsets])
    return samples
