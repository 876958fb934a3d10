"""DAVIS-2017-format sets composited from real videos: real textures, exact masks.

A sequence is a run of consecutive frames of one real video (the *background*, moving as it was filmed)
with a few *objects* drawn over it: each object is a region cut from a real frame, given a random shape
from :mod:`siammae.synth.scenes`, and moved, turned and scaled along a smooth path, occluding the background and
the objects drawn before it. The renderer is the synthetic one (:func:`siammae.synth.draw_object`), so
frames and masks agree to the pixel.

Variants (:data:`VARIANTS`, ``siammae synth davis --from-videos DIR --variant NAME``):

* ``default``: every object is cut from *another* video than its background (when there is more than
  one), so colour statistics often tell object from background, as in most of DAVIS;
* ``hard``: every object is cut from the background video itself (another place and time), so only
  the texture's correspondence over time separates them;
* ``colour``: as default, with each object's colours moved to the mean and spread of the background
  around where it starts (per channel), so colour alone does not tell it apart;
* ``fast``: as default, moving and turning 3x as fast (tens of pixels a frame at 480p);
* ``nonrigid``: as default, each object bending over time (its texture and outline together);
* ``scale``: as default, each object growing to twice its size (4x its area) over the sequence.

Use it to measure correspondence on real imagery without a DAVIS download; when the videos are also the
training videos, say so (the objects' motion and the composites are still never seen in training).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from siammae.errors import SiammaeError
from siammae.shard.decode import DecodeError, open_video
from siammae.shard.sources import walk_videos
from siammae.synth.scenes import (
    SHAPE_FNS,
    Path2D,
    SceneObject,
    Size,
    Warp,
    draw_object,
    rasterise,
    sprite_side,
    write_sequence,
)
from siammae.synth.variants import VARIANTS, Variant

_STREAM_COMPOSITE = 505
_STREAM_WARP = 506


def variant_named(name: str) -> Variant:
    if name not in VARIANTS:
        raise CompositeError(f"unknown set variant '{name}' (valid: {', '.join(VARIANTS)})")
    return VARIANTS[name]


class CompositeError(SiammaeError):
    """The videos cannot give the set asked for (too few, unreadable, too short); one line for the user."""


@dataclass
class SourceVideo:
    """A readable video of the collection: its path and frame count."""

    path: Path
    num_frames: int


def find_sources(videos_dir: str | os.PathLike) -> List[SourceVideo]:
    """Every readable video under ``videos_dir`` (recursive), sorted by path. Unreadable files are
    left out with a note on stderr; no readable video at all is a :class:`CompositeError`."""
    import sys

    root = Path(videos_dir)
    if not root.is_dir():
        raise CompositeError(f"videos folder not found: {root}")
    found = []
    for path in walk_videos(root):
        try:
            with open_video(str(path), 0) as reader:
                found.append(SourceVideo(path, reader.num_frames))
        except DecodeError as e:
            print(f"siammae: leaving out {path}: {e}", file=sys.stderr)
    if not found:
        raise CompositeError(f"no readable video under {root}")
    return found


def read_frames(video: SourceVideo, indices: Sequence[int]) -> List[np.ndarray]:
    """Frames ``indices`` (any order, repeats allowed) of ``video`` at their stored size, (H, W, 3) uint8."""
    wanted = sorted(set(int(i) for i in indices))
    for transcode in (False, True):  # ffmpeg's re-encode for files decord opens but cannot read
        try:
            with open_video(str(video.path), 0, transcode=transcode) as reader:
                got = dict(reader.read(wanted, 0))
            return [got[int(i)] for i in indices]
        except DecodeError as e:
            error = e
    raise CompositeError(f"{video.path}: {error}")


def cover(frame: np.ndarray, size: Size, offset: Tuple[float, float]) -> np.ndarray:
    """Scale ``frame`` so it covers ``size`` (H, W), then cut that size at ``offset`` (fractions of the
    spare rows and columns, in [0, 1])."""
    from PIL import Image

    h, w = size
    scale = max(h / frame.shape[0], w / frame.shape[1])
    sh, sw = max(h, round(frame.shape[0] * scale)), max(w, round(frame.shape[1] * scale))
    big = np.asarray(Image.fromarray(frame).resize((sw, sh), Image.BILINEAR))
    top, left = round(offset[0] * (sh - h)), round(offset[1] * (sw - w))
    return big[top : top + h, left : left + w]


def ping_pong(start: int, count: int, length: int) -> List[int]:
    """``count`` consecutive frame indices from ``start``, reflected at the ends of a video of ``length``
    frames, so a video shorter than a sequence plays forth and back."""
    if length == 1:
        return [0] * count
    period = 2 * (length - 1)
    out = []
    for i in range(start, start + count):
        k = i % period
        out.append(k if k < length else period - k)
    return out


def _cut_sprite(frame: np.ndarray, side: int, rng: np.random.Generator) -> np.ndarray:
    """A (side, side, 3) window of ``frame`` at a random place (mirrored past the edges if larger)."""
    h, w = frame.shape[:2]
    pad_y, pad_x = max(0, side - h), max(0, side - w)
    if pad_y or pad_x:
        frame = np.pad(frame, ((0, pad_y), (0, pad_x), (0, 0)), mode="reflect")
        h, w = frame.shape[:2]
    top, left = int(rng.integers(0, h - side + 1)), int(rng.integers(0, w - side + 1))
    return np.ascontiguousarray(frame[top : top + side, left : left + side])


def _real_object(
    rng: np.random.Generator,
    size: Size,
    texture: np.ndarray,
    variant: Variant = VARIANTS["default"],
    frames: int = 30,
    warp_rng: Optional[np.random.Generator] = None,
) -> SceneObject:
    """An object with a random shape and a texture cut from ``texture`` (a real frame at the sequence's
    scale), moving slower than the synthetic scenes' objects (real DAVIS motion: a few pixels a frame),
    changed as ``variant`` says. The draws from ``rng`` are the same for every variant (so default and
    hard sets stay as they were); a bending object's own draws come from ``warp_rng``."""
    h, w = size
    scale = min(h, w)
    radius = scale * rng.uniform(0.12, 0.22)
    breathe = rng.uniform(0.0, 0.1)
    if variant.grow:  # half a period of the breathing over the sequence: 1x -> 2x the drawn radius
        radius, breathe = 1.5 * radius, 1 / 3
    bend = variant.bend * radius
    side = sprite_side(radius + bend, breathe)
    shape = str(rng.choice(sorted(SHAPE_FNS)))
    margin = 0.1 * np.array([h, w])
    lo, hi = margin, np.array([h, w]) - margin
    centre = rng.uniform(lo, hi)
    room = np.minimum(centre - lo, hi - centre)
    path = Path2D(
        centre=centre,
        amplitude=room * rng.uniform(0.4, 1.0, 2),
        omega=rng.uniform(0.015, 0.05, 2) * rng.choice([-1, 1], 2) * variant.speed,
        phase=rng.uniform(0, 2 * np.pi, 2),
    )
    sprite = _cut_sprite(texture, side, rng)
    alpha = rasterise(SHAPE_FNS[shape](rng, radius), side)
    angle, spin = rng.uniform(0, 2 * np.pi), rng.uniform(-0.03, 0.03) * variant.speed
    breathe_omega, breathe_phase = rng.uniform(0.02, 0.06), rng.uniform(0, 2 * np.pi)
    if variant.grow:
        breathe_omega, breathe_phase = np.pi / max(1, frames - 1), -np.pi / 2
    warp = None
    if bend > 0:
        warp_rng = warp_rng if warp_rng is not None else rng
        warp = Warp(
            amplitude=bend,
            k=2 * np.pi / (radius * warp_rng.uniform(0.8, 1.4)),
            omega=warp_rng.uniform(0.15, 0.3),
            phase=warp_rng.uniform(0, 2 * np.pi, 2),
        )
    return SceneObject(
        sprite=sprite,
        alpha=alpha,
        radius=radius,
        path=path,
        angle=angle,
        spin=spin,
        breathe=breathe,
        breathe_omega=breathe_omega,
        breathe_phase=breathe_phase,
        warp=warp,
    )


def match_colour(
    sprite: np.ndarray, alpha: np.ndarray, frame: np.ndarray, centre: np.ndarray, radius: float
) -> np.ndarray:
    """``sprite`` (S, S, 3) with the per-channel mean and standard deviation of its shape's texels
    (``alpha``) moved to those of ``frame`` in a (4 radius)-wide window around ``centre`` (y, x)."""
    h, w = frame.shape[:2]
    r = int(np.ceil(2 * radius))
    cy, cx = int(np.clip(round(centre[0]), 0, h - 1)), int(np.clip(round(centre[1]), 0, w - 1))
    around = frame[max(0, cy - r) : cy + r + 1, max(0, cx - r) : cx + r + 1].reshape(-1, 3).astype(np.float32)
    inside = sprite[alpha].astype(np.float32)
    if len(inside) < 2:
        return sprite
    mean, std = inside.mean(0), inside.std(0) + 1e-3
    out = (sprite.astype(np.float32) - mean) / std * around.std(0) + around.mean(0)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def compose_sequence(
    sources: List[SourceVideo],
    index: int,
    frames: int,
    size: Size,
    seed: int,
    hard: bool,
    objects: Tuple[int, int],
    variant: Optional[Variant] = None,
) -> Tuple[np.ndarray, np.ndarray, dict]:
    """Sequence ``index``: (frames (T, H, W, 3) uint8, masks (T, H, W) uint8, where it came from).

    ``variant`` (default: ``hard`` when ``hard`` else ``default``) says how objects are made.
    Backgrounds take the videos in turn; objects are redrawn until each shows at least ~0.5% of the
    frame in the first frame (DAVIS tracks the ids of the first annotation)."""
    variant = variant or VARIANTS["hard" if hard else "default"]
    hard = variant.own_video
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM_COMPOSITE, int(index)]))
    warp_rng = np.random.default_rng(np.random.SeedSequence([int(seed), _STREAM_WARP, int(index)]))
    bg = sources[index % len(sources)]
    start = int(rng.integers(0, max(1, bg.num_frames - frames + 1)))
    bg_indices = ping_pong(start, frames, bg.num_frames)
    offset = tuple(rng.uniform(0, 1, 2))
    background = np.stack([cover(f, size, offset) for f in read_frames(bg, bg_indices)])
    others = [s for s in sources if s.path != bg.path] or [bg]
    min_pixels = max(16, int(0.005 * size[0] * size[1]))
    for _ in range(100):
        count = int(rng.integers(objects[0], objects[1] + 1))
        picks = []
        for _k in range(count):
            src = bg if hard else others[int(rng.integers(len(others)))]
            picks.append((src, int(rng.integers(src.num_frames))))
        textures = [cover(f, size, tuple(rng.uniform(0, 1, 2))) for f in read_frames_grouped(picks)]
        scene_objects = [_real_object(rng, size, tex, variant, frames, warp_rng) for tex in textures]
        if variant.match_colour:
            for obj in scene_objects:
                obj.sprite = match_colour(obj.sprite, obj.alpha, background[0], obj.path.at(np.zeros(1))[0], obj.radius)
        video, masks = background.copy(), np.zeros(background.shape[:3], dtype=np.uint8)
        t = np.arange(frames, dtype=np.float64)
        for label, obj in enumerate(scene_objects, start=1):
            draw_object(obj, t, label, video, masks)
        counts = np.bincount(masks[0].ravel(), minlength=count + 1)
        if counts[1:].min() >= min_pixels:
            record = dict(
                background=str(bg.path),
                background_frames=[bg_indices[0], bg_indices[-1]],
                objects=[dict(video=str(s.path), frame=f) for s, f in picks],
                variant=variant.name,
            )
            return video, masks, record
    raise CompositeError(f"could not place {objects} visible objects in a {size[0]}x{size[1]} frame")


def read_frames_grouped(picks: List[Tuple[SourceVideo, int]]) -> List[np.ndarray]:
    """Frames for (video, index) pairs, each video opened once; results in the order of ``picks``."""
    out: List[Optional[np.ndarray]] = [None] * len(picks)
    by_video: dict = {}
    for i, (video, frame) in enumerate(picks):
        by_video.setdefault(video.path, (video, []))[1].append((i, frame))
    for video, wanted in by_video.values():
        for (i, _), frame in zip(wanted, read_frames(video, [f for _, f in wanted])):
            out[i] = frame
    return out


def composite_davis(
    videos_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    num_sequences: int = 6,
    frames: int = 30,
    size: Size = (480, 854),
    seed: int = 0,
    hard: bool = False,
    objects: Tuple[int, int] = (2, 3),
    resolution: str = "480p",
    quality: int = 95,
    progress: Optional[Callable[[str], None]] = None,
    variant: Optional[str] = None,
) -> List[str]:
    """Write a DAVIS-2017-format set composited from the videos under ``videos_dir``; returns the names.

    ``variant`` names one of :data:`VARIANTS` (``hard=True`` is ``variant="hard"``). Sequences are
    ``real-000 ...`` (``real-hard-000``, ``real-colour-000``, ... for the other variants), all listed in
    ``ImageSets/2017/val.txt``; ``OUT/composite.json`` records every sequence's background video and
    frames and where each object's texture was cut. Deterministic for a seed and a set of videos.
    """
    chosen = variant_named(variant or ("hard" if hard else "default"))
    if hard and chosen.name != "hard":
        raise CompositeError(f"hard and variant={chosen.name} exclude each other")
    sources = find_sources(videos_dir)
    root = Path(out_dir)
    names, records = [], {}
    for i in range(num_sequences):
        name = f"{chosen.prefix}-{i:03d}"
        video, masks, records[name] = compose_sequence(sources, i, frames, size, seed, hard, objects, chosen)
        write_sequence(root, resolution, name, video, masks, quality)
        names.append(name)
        if progress is not None:
            progress(name)
    list_dir = root / "ImageSets" / "2017"
    list_dir.mkdir(parents=True, exist_ok=True)
    (list_dir / "val.txt").write_text("".join(f"{n}\n" for n in names))
    if not (list_dir / "train.txt").exists():
        (list_dir / "train.txt").write_text("")
    settings = dict(
        videos=str(videos_dir),
        num_sequences=num_sequences,
        frames=frames,
        size=list(size),
        seed=seed,
        hard=chosen.own_video,
        variant=chosen.name,
        objects=list(objects),
    )
    (root / "composite.json").write_text(json.dumps(dict(settings=settings, sequences=records), indent=2) + "\n")
    return names
