"""The views of one training sample: which frames, which crop boxes and flips (drawn here), and the cut
that crops, resizes and flips them into the batch (OpenCV).

- Frames (SiamMAE, CMAE, the clip methods): the sample's first T frames, one random-resized crop box and
  one flip for all of them; CMAE's pixel shift moves the first frame's box alone.
- A pair drawn from a run of frames (``data.pair_gap``): the gap uniform over those the run offers, then
  the start.
- Crops (CropMAE, ``data.views: crops``): a global crop of the first frame and a local crop of it.

Boxes are (top, left, h, w) in the decoded frame's pixels; frames (H, W, 3) uint8, decoded by the
loader into reused buffers (:class:`FrameBuffers`).
"""

from __future__ import annotations

import json
import math
import random
from typing import List, NamedTuple, Optional, Sequence

import cv2
import numpy as np
import simplejpeg
import torch


def random_resized_crop(rng: random.Random, height: int, width: int, scale, ratio) -> tuple[int, int, int, int]:
    """A crop box (top, left, h, w) covering ``scale`` of the area with aspect ratio in ``ratio``
    (log-uniform); after 10 misses, the largest central crop with a ratio in range (the usual rule)."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(10):
        target = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return rng.randint(0, height - h), rng.randint(0, width - w), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


# A crop at least this many times the output side is shrunk with area averaging instead of bilinear
# sampling, which would alias (it reads 2x2 source pixels per output pixel and skips the rest).
AREA_FACTOR = 2.0


def crop_resize(frames: Sequence[np.ndarray], box, size: int, flip: bool, out: np.ndarray | None = None) -> np.ndarray:
    """T frames (H, W, 3) uint8 -> ``out``, (T, size, size, 3) uint8: one crop box, one resize and one
    flip for all frames, written into ``out`` (allocated when not given; the batch stage passes its slot).

    Bilinear with pixel centres aligned (``align_corners=False``), done as one affine map from output
    to crop pixels with the flip folded into it: with OpenCV 5.1 ``warpAffine`` is faster than
    ``resize`` plus ``flip``, and resizing is the largest cost of the pipeline after JPEG decoding;
    older releases' ``warpAffine`` was slower and rounded the sample positions to 1/32 pixel, hence the
    pinned version (docs/benchmarks.md, "Loading"). No low-pass filter below ``AREA_FACTOR``x
    downscaling, where bilinear aliasing is slight (crops of 256-px frames at scale [0.5, 1] are
    0.8x-1.5x the 224-px output); area averaging above it.
    """
    top, left, h, w = box
    if out is None:
        out = np.empty((len(frames), size, size, 3), dtype=np.uint8)
    if max(h, w) >= AREA_FACTOR * size:
        for t, frame in enumerate(frames):
            cv2.resize(frame[top : top + h, left : left + w], (size, size), dst=out[t], interpolation=cv2.INTER_AREA)
            if flip:
                cv2.flip(out[t], 1, dst=out[t])
        return out
    sx, sy = w / size, h / size
    # Output pixel (x, y) samples the crop at (sx * x + (sx - 1) / 2, sy * y + (sy - 1) / 2), mirrored in
    # x when flipped; edge pixels repeat at the crop's border, as resize does.
    x_row = [-sx, 0.0, sx * (size - 1) + (sx - 1) / 2] if flip else [sx, 0.0, (sx - 1) / 2]
    to_crop = np.array([x_row, [0.0, sy, (sy - 1) / 2]])
    for t, frame in enumerate(frames):
        cv2.warpAffine(
            frame[top : top + h, left : left + w],
            to_crop,
            (size, size),
            dst=out[t],
            flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
            borderMode=cv2.BORDER_REPLICATE,
        )
    return out


def to_chw(x: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) -> (..., 3, H, W) as a view: the bytes stay channels-last (cheap to copy to the
    device; normalisation and the patch embedding accept any strides)."""
    return x.movedim(-1, -3)


class View(NamedTuple):
    """One augmented view of a decoded sample, not yet cut out: the T decoded frames (H, W, 3) uint8 and
    the crop box (top, left, h, w) and flip that apply to all of them (``first_box``, when given, is the
    first frame's own box: CMAE's pixel shift, CropMAE's global crop). The batch stage cuts it straight
    into its batch, which saves copying every view once more (docs/benchmarks.md, "Loading")."""

    frames: List[np.ndarray]
    box: tuple
    flip: bool
    key: str
    first_box: Optional[tuple] = None
    first_flip: Optional[bool] = None  # the first frame's own flip (CropMAE's crops); None: ``flip``


def shifted_box(rng: random.Random, box, shift: int, height: int, width: int) -> tuple:
    """``box`` moved by uniform integers in [-shift, shift] in y and x, then kept inside the frame."""
    top, left, h, w = box
    top = min(max(0, top + rng.randint(-shift, shift)), height - h)
    left = min(max(0, left + rng.randint(-shift, shift)), width - w)
    return top, left, h, w


REF_FPS = 30.0  # data.pair_gap is in frames at this rate, as siammae shard --gap


def draw_pair(record: dict, rng: random.Random, gap: Sequence[int]) -> tuple[int, int]:
    """Positions (i, j), i < j, of two frames of a stored run (``record``: the sample's json, with the
    run's video frame indices ``frames`` and the video's ``fps``) whose gap, in frames at 30 fps, lies
    in ``gap`` = [min, max]: a gap drawn uniformly among those the run offers, then a start uniformly
    among the pairs with that gap (the paper: gap uniform, then start uniform). Raises ValueError
    when the run offers none."""
    frames = np.asarray(record["frames"], dtype=np.int64)
    scale = REF_FPS / record["fps"] if record.get("fps") else 1.0
    lo, hi = int(round(gap[0] / scale)), int(round(gap[1] / scale))  # the range in the video's own frames
    lo = max(lo, 1)
    diff = frames[None, :] - frames[:, None]  # (n, n): frames[j] - frames[i]
    ok = (diff >= lo) & (diff <= hi)
    if not ok.any():
        raise ValueError(f"a run spanning {int(frames[-1] - frames[0])} frames has no pair {lo}-{hi} frames apart")
    gaps = np.unique(diff[ok])
    chosen = int(gaps[rng.randrange(len(gaps))])
    starts = np.flatnonzero((diff == chosen).any(axis=1))
    i = int(starts[rng.randrange(len(starts))])
    return i, int(np.flatnonzero(diff[i] == chosen)[0])


LOCAL_GRID = 1000  # the square the global crop is resized to before the local crop is drawn in it (any size)


def global_and_local(rng: random.Random, height: int, width: int, scale, ratio, local_scale, local_ratio):
    """CropMAE's two views of one frame: a global crop of the frame, then a local crop of the global crop
    *as resized to a square* (area and aspect ratio measured there, as CropMAE crops its resized global
    view), mapped back to the frame's pixels so that each view is cut from the frame in one resize.
    -> (global box, local box), boxes (top, left, h, w) in the frame."""
    top, left, h, w = random_resized_crop(rng, height, width, scale, ratio)
    t, lf, lh, lw = random_resized_crop(rng, LOCAL_GRID, LOCAL_GRID, local_scale, local_ratio)
    sy, sx = h / LOCAL_GRID, w / LOCAL_GRID
    lh, lw = max(1, round(lh * sy)), max(1, round(lw * sx))
    ltop, lleft = min(top + round(t * sy), top + h - lh), min(left + round(lf * sx), left + w - lw)
    return (top, left, h, w), (ltop, lleft, lh, lw)


class FrameBuffers:
    """Reusable memory for decoded frames, two samples deep: the frames of each sample are decoded into
    one of two sets of buffers in turn, so a sample's frames stay intact while the next sample is
    decoded and are overwritten by the one after. The loader's batch stage cuts every view of a
    sample before the next is decoded (its stages are generators pulled one item at a time), so its
    frames are dead by then.

    Why: with each frame decoded into a fresh array, the crops of a pipeline ran at one of two speeds,
    which one by chance (OpenCV's ``warpAffine`` ~65 or 135-180 us a 224-px frame; cause not found);
    with reused buffers at the fast one in every run measured (docs/benchmarks.md, "Loading")."""

    def __init__(self):
        self.sets: tuple[list, list] = ([], [])
        self.turn = 0

    def decode(self, jpegs: Sequence[bytes]) -> List[np.ndarray]:
        """JPEG bytes -> (H, W, 3) uint8 RGB frames, views of this turn's buffers."""
        self.turn ^= 1
        buffers, frames = self.sets[self.turn], []
        for i, data in enumerate(jpegs):
            height, width, _, _ = simplejpeg.decode_jpeg_header(data)
            size = height * width * 3
            if i == len(buffers):
                buffers.append(np.empty(size, dtype=np.uint8))
            elif buffers[i].size < size:
                buffers[i] = np.empty(size, dtype=np.uint8)
            frames.append(simplejpeg.decode_jpeg(data, colorspace="RGB", buffer=buffers[i][:size]))
        return frames


def decode(jpegs: Sequence[bytes], buffers: Optional[FrameBuffers] = None) -> List[np.ndarray]:
    """JPEG bytes -> (H, W, 3) uint8 RGB frames: into ``buffers`` when given, else fresh arrays."""
    if buffers is not None:
        return buffers.decode(jpegs)
    return [simplejpeg.decode_jpeg(data, colorspace="RGB") for data in jpegs]


def make_sample(
    sample: dict,
    rng: random.Random,
    *,
    num_frames: int,
    repeats: int,
    scale=(0.5, 1.0),
    ratio=(3 / 4, 4 / 3),
    hflip: float = 0.5,
    view_shift: int = 0,
    pair_gap: Sequence[int] = (),
    views: str = "frames",
    local_scale=(0.3, 0.6),
    local_ratio=(3 / 4, 4 / 3),
    buffers: Optional[FrameBuffers] = None,
) -> List[View]:
    """One shard sample -> ``repeats`` views of its first ``num_frames`` frames, or with ``pair_gap`` of
    a pair drawn from its run of frames (:func:`draw_pair`; only those two JPEGs are decoded).

    Every view draws one crop box and one flip for all T frames, so the frames stay aligned (the
    correspondence the model learns is in the motion, not in the augmentation); with ``view_shift``
    the first frame's box alone moves by up to that many pixels (CMAE's pixel shift). With ``views`` =
    "crops" the two views are CropMAE's: a global crop (``scale``, ``ratio``) and a local crop of it
    (``local_scale``, ``local_ratio``) of the sample's first frame, each flipped on its own.
    Frames are decoded into ``buffers`` when given (:class:`FrameBuffers`: the views are then valid
    until the sample after next is decoded). Raises on a missing or undecodable frame; the caller
    counts and skips the sample.
    """
    if views == "crops":
        (frame,) = decode([sample["f0.jpg"]], buffers)
        key = f"{sample.get('__url__')}#{sample.get('__key__')}"
        out = []
        for _ in range(repeats):
            big, small = global_and_local(rng, *frame.shape[:2], scale, ratio, local_scale, local_ratio)
            big_flip, small_flip = rng.random() < hflip, rng.random() < hflip
            out.append(View([frame, frame], small, small_flip, key, big, big_flip))
        return out
    positions = range(num_frames)
    if pair_gap:
        positions = draw_pair(json.loads(sample["json"]), rng, pair_gap)
    frames = decode([sample[f"f{t}.jpg"] for t in positions], buffers)
    height, width = frames[0].shape[:2]
    if any(f.shape[:2] != (height, width) for f in frames):
        raise ValueError(f"frames of different sizes in sample {sample.get('__key__')}")
    key = f"{sample.get('__url__')}#{sample.get('__key__')}"
    views = []
    for _ in range(repeats):
        box, flip = random_resized_crop(rng, height, width, scale, ratio), rng.random() < hflip
        first = shifted_box(rng, box, view_shift, height, width) if view_shift else None
        views.append(View(frames, box, flip, key, first))
    return views
