"""Synthetic videos with known correspondence: training clips and DAVIS-2017-format validation sets.

A *scene* is a textured background canvas that pans under the camera plus a few textured objects, drawn
back to front, each following a smooth Lissajous path while it turns and breathes in scale. Because every
pixel is a texture lookup through a known motion, the scenes carry real, learnable correspondence, and
the renderer returns the exact instance masks with the frames (front-most object wins).

Train / validation separation (the held-out set must differ from the training videos in textures,
shapes and seeds, so that it scores scenes the encoder has never seen):

* texture and shape *families* are split: ``split="train"`` draws only from ``TEXTURES["train"]`` and
  ``SHAPES["train"]``, ``split="val"`` only from the disjoint ``"val"`` families (``"all"`` = both);
* every generator draws from its own random stream, ``SeedSequence([seed, stream, index])``, so
  ``synth_videos(seed=0)`` and ``synth_davis(seed=0)`` never share a scene, and video ``i`` does not
  depend on how many videos are made.

Everything is numpy-vectorised over time: one object costs a few array operations on a (T, B, B) window
around it, not a Python loop over frames.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from siammae.errors import SiammaeError
from siammae.ffmpeg import FfmpegError, ffmpeg_exe
from siammae.tasks.davis_files import save_indexed_png

TEXTURES = {"train": ("noise", "stripes", "checker", "gradient"), "val": ("blobs", "dots", "rings", "plaid")}
SHAPES = {"train": ("ellipse", "rectangle", "polygon"), "val": ("star", "blob", "cross")}
SPLITS = ("train", "val", "all")

# Random-stream ids: each generator gets its own stream so equal seeds never give equal scenes.
# siammae.synth.composite uses 505, the tests' in-memory clips 404.
_STREAM_VIDEOS, _STREAM_DAVIS_VAL, _STREAM_DAVIS_TRAIN = 101, 202, 303

Size = Tuple[int, int]  # (height, width)


def families(split: str) -> Tuple[Tuple[str, ...], Tuple[str, ...]]:
    """(texture families, shape families) drawn from by ``split`` ("train", "val" or "all")."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if split == "all":
        return TEXTURES["train"] + TEXTURES["val"], SHAPES["train"] + SHAPES["val"]
    return TEXTURES[split], SHAPES[split]


def scene_rng(seed: int, stream: int, index: int) -> np.random.Generator:
    """The generator for scene ``index`` of random stream ``stream`` under ``seed``."""
    return np.random.default_rng(np.random.SeedSequence([int(seed), int(stream), int(index)]))


# ---------------------------------------------------------------------------------------------------
# Textures: each family maps (rng, h, w, scale) -> float32 (h, w, 3) in [0, 1]; ``scale`` is the frame's
# shorter side, so pattern periods keep the same look at every resolution.


# Patterns with periods below this (pixels) alias, and 4:2:0 video or JPEG erases them: keep above it
# even in tiny frames.
_MIN_FEATURE = 6.0


def _length(rng: np.random.Generator, scale: float, lo: float, hi: float) -> float:
    """A random pattern length: a fraction in [lo, hi) of ``scale`` pixels, at least _MIN_FEATURE."""
    return max(_MIN_FEATURE, scale * rng.uniform(lo, hi))


def _colors(rng: np.random.Generator, n: int, min_distance: float = 0.45) -> np.ndarray:
    """``n`` random RGB colours (n, 3) in [0, 1], consecutive ones at least ``min_distance`` apart."""
    out = [rng.random(3)]
    while len(out) < n:
        c = rng.random(3)
        for _ in range(20):  # a few tries for contrast; low-contrast textures carry no correspondence
            if np.linalg.norm(c - out[-1]) >= min_distance:
                break
            c = rng.random(3)
        out.append(c)
    return np.stack(out).astype(np.float32)


def _grid(rng: np.random.Generator, h: int, w: int) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates (h, w) rotated by a random angle: (along, across), float32."""
    angle = rng.uniform(0, np.pi)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    c, s = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    return c * x + s * y, -s * x + c * y


def _upsample_matrix(n: int, cell: float, offset: float) -> np.ndarray:
    """(n, g) weights that interpolate g coarse samples, one every ``cell`` pixels, at n pixels.

    Cubic B-spline weights over the four nearest samples: smooth, with no blocky cell edges, and a
    single matrix product, much faster than ``scipy.ndimage.zoom``.
    """
    pos = (np.arange(n) + offset) / cell + 1.0  # + 1: the left-most sample used is left - 1 >= 0
    left = np.floor(pos).astype(np.int64)
    f = pos - left
    weights = np.zeros((n, left.max() + 3), dtype=np.float32)
    rows = np.arange(n)
    weights[rows, left - 1] = (1 - f) ** 3 / 6
    weights[rows, left] = (3 * f**3 - 6 * f**2 + 4) / 6
    weights[rows, left + 1] = (-3 * f**3 + 3 * f**2 + 3 * f + 1) / 6
    weights[rows, left + 2] = f**3 / 6
    return weights


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: float) -> np.ndarray:
    """Smooth noise (h, w) in [0, 1], one random value per ``cell`` pixels, stretched to the full range."""
    cell = max(float(cell), 1.0)
    rows = _upsample_matrix(h, cell, rng.uniform(0, cell))
    cols = _upsample_matrix(w, cell, rng.uniform(0, cell))
    coarse = rng.random((rows.shape[1], cols.shape[1]), dtype=np.float32)
    field = rows @ coarse @ cols.T
    return (field - field.min()) / (np.ptp(field) + 1e-6)


def _ramp(colors: np.ndarray, t: np.ndarray) -> np.ndarray:
    """Map a scalar field ``t`` (h, w) in [0, 1] through a piecewise-linear colour ramp -> (h, w, 3)."""
    pos = np.clip(t, 0, 1) * (len(colors) - 1)
    lo = np.minimum(pos.astype(np.int32), len(colors) - 2)
    frac = (pos - lo)[..., None]
    return colors[lo] * (1 - frac) + colors[lo + 1] * frac


def _sharpen(wave: np.ndarray, sharpness: float) -> np.ndarray:
    """A wave in [-1, 1] -> [0, 1], from soft (sharpness 1) to nearly binary (large sharpness)."""
    return np.clip(0.5 + 0.5 * sharpness * wave, 0, 1)


def _tex_noise(rng, h, w, scale):
    cell = _length(rng, scale, 0.03, 0.12)
    field = 0.65 * _smooth_noise(rng, h, w, cell) + 0.35 * _smooth_noise(rng, h, w, max(_MIN_FEATURE, cell / 3))
    return _ramp(_colors(rng, 3), (field - field.min()) / (np.ptp(field) + 1e-6))


def _tex_stripes(rng, h, w, scale):
    along, _ = _grid(rng, h, w)
    period = _length(rng, scale, 0.05, 0.2)
    wave = np.sin(2 * np.pi * along / period + rng.uniform(0, 2 * np.pi))
    return _ramp(_colors(rng, 2), _sharpen(wave, rng.uniform(1, 6)))


def _tex_checker(rng, h, w, scale):
    along, across = _grid(rng, h, w)
    period = _length(rng, scale, 0.06, 0.2)
    parity = (np.floor(along / period) + np.floor(across / period)) % 2
    return _ramp(_colors(rng, 2), parity)


def _tex_gradient(rng, h, w, scale):
    along, _ = _grid(rng, h, w)
    ramp = (along - along.min()) / (np.ptp(along) + 1e-6)
    # A bare gradient has no local structure to match; fine noise on top gives it some.
    grain = _smooth_noise(rng, h, w, _length(rng, scale, 0.02, 0.05))
    return _ramp(_colors(rng, 3), 0.75 * ramp + 0.25 * grain)


def _tex_blobs(rng, h, w, scale):
    field = _smooth_noise(rng, h, w, _length(rng, scale, 0.05, 0.15))
    return _ramp(_colors(rng, 2), _sharpen(2 * field - 1, rng.uniform(3, 10)))


def _tex_dots(rng, h, w, scale):
    along, across = _grid(rng, h, w)
    period = _length(rng, scale, 0.06, 0.16)
    du = (along % period) - period / 2
    dv = (across % period) - period / 2
    radius = period * rng.uniform(0.2, 0.4)
    return _ramp(_colors(rng, 2), (du * du + dv * dv < radius * radius).astype(np.float32))


def _tex_rings(rng, h, w, scale):
    cy, cx = rng.uniform(-0.5, 1.5, size=2) * (h, w)
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    dist = np.hypot(y - cy, x - cx)
    wave = np.sin(2 * np.pi * dist / (_length(rng, scale, 0.05, 0.18)))
    return _ramp(_colors(rng, 2), _sharpen(wave, rng.uniform(1, 6)))


def _tex_plaid(rng, h, w, scale):
    along, across = _grid(rng, h, w)
    c0, c1, c2 = _colors(rng, 3)
    a = _sharpen(np.sin(2 * np.pi * along / (_length(rng, scale, 0.06, 0.2))), 4)[..., None]
    b = _sharpen(np.sin(2 * np.pi * across / (_length(rng, scale, 0.06, 0.2))), 4)[..., None]
    return c0 + 0.55 * a * (c1 - c0) + 0.55 * b * (c2 - c0)


_TEXTURE_FNS = {
    "noise": _tex_noise,
    "stripes": _tex_stripes,
    "checker": _tex_checker,
    "gradient": _tex_gradient,
    "blobs": _tex_blobs,
    "dots": _tex_dots,
    "rings": _tex_rings,
    "plaid": _tex_plaid,
}


def make_texture(rng: np.random.Generator, family: str, h: int, w: int, scale: float) -> np.ndarray:
    """A texture of ``family``: uint8 (h, w, 3).

    A faint smooth shading field multiplies every family, so even flat colour regions vary slightly
    from place to place (as lit surfaces do).
    """
    rgb = _TEXTURE_FNS[family](rng, h, w, scale)
    shade = 0.85 + 0.3 * _smooth_noise(rng, h, w, scale * 0.25)[..., None]
    return (np.clip(rgb * shade, 0, 1) * 255 + 0.5).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------
# Shapes: each family maps (rng, radius) -> inside(u, v), a boolean test in the object's own frame,
# in pixels, where the whole shape fits in the disc of ``radius`` around the origin.

Inside = Callable[[np.ndarray, np.ndarray], np.ndarray]


def _shape_ellipse(rng, radius) -> Inside:
    a, b = radius, radius * rng.uniform(0.45, 1.0)
    return lambda u, v: (u / a) ** 2 + (v / b) ** 2 <= 1


def _shape_rectangle(rng, radius) -> Inside:
    corner = rng.uniform(0.3, np.pi / 4)  # angle of the corner: aspect from ~3:1 to square
    a, b = radius * np.cos(corner), radius * np.sin(corner)
    return lambda u, v: (np.abs(u) <= a) & (np.abs(v) <= b)


def _shape_polygon(rng, radius) -> Inside:
    """A convex polygon of 3-7 vertices on the circle, spread so that no sliver triangles appear."""
    n = int(rng.integers(3, 8))
    angles = (np.arange(n) + rng.uniform(-0.3, 0.3, n)) * (2 * np.pi / n) + rng.uniform(0, 2 * np.pi)
    px, py = radius * np.cos(angles), radius * np.sin(angles)
    qx, qy = np.roll(px, -1), np.roll(py, -1)

    def inside(u, v):
        result = np.ones(np.broadcast(u, v).shape, dtype=bool)
        for x0, y0, x1, y1 in zip(px, py, qx, qy):  # counter-clockwise: inside is left of every edge
            result &= (x1 - x0) * (v - y0) - (y1 - y0) * (u - x0) >= 0
        return result

    return inside


def _polar(u, v):
    return np.hypot(u, v), np.arctan2(v, u)


def _shape_star(rng, radius) -> Inside:
    spikes = int(rng.integers(4, 8))
    inner = rng.uniform(0.4, 0.65)

    def inside(u, v):
        r, phi = _polar(u, v)
        tooth = np.abs(((phi * spikes / (2 * np.pi)) % 1.0) * 2 - 1)  # 1 at the spike tips, 0 between
        return r <= radius * (inner + (1 - inner) * tooth)

    return inside


def _shape_blob(rng, radius) -> Inside:
    """A wobbly closed outline: radius modulated by a few low harmonics, never above ``radius``."""
    ks = np.arange(2, 6)
    amps = rng.uniform(0, 1, ks.size) / ks
    amps /= amps.sum()
    phases = rng.uniform(0, 2 * np.pi, ks.size)

    def inside(u, v):
        r, phi = _polar(u, v)
        wobble = sum(a * np.cos(k * phi + p) for k, a, p in zip(ks, amps, phases))  # in [-1, 1]
        return r <= radius * (0.7 + 0.3 * wobble)

    return inside


def _shape_cross(rng, radius) -> Inside:
    arm = radius * 0.95 / np.sqrt(1 + 0.35**2)  # arm tips stay inside the disc
    width = arm * rng.uniform(0.2, 0.35)
    return lambda u, v: ((np.abs(u) <= arm) & (np.abs(v) <= width)) | ((np.abs(u) <= width) & (np.abs(v) <= arm))


SHAPE_FNS = {
    "ellipse": _shape_ellipse,
    "rectangle": _shape_rectangle,
    "polygon": _shape_polygon,
    "star": _shape_star,
    "blob": _shape_blob,
    "cross": _shape_cross,
}


# ---------------------------------------------------------------------------------------------------
# Scenes


@dataclass
class Path2D:
    """A smooth 2-D trajectory (y, x): ``centre + amplitude * sin(omega * t + phase)`` per axis."""

    centre: np.ndarray  # (2,)
    amplitude: np.ndarray  # (2,)
    omega: np.ndarray  # (2,) radians per frame
    phase: np.ndarray  # (2,)

    def at(self, t: np.ndarray) -> np.ndarray:
        """Positions (T, 2) at frame times ``t`` (T,)."""
        return self.centre + self.amplitude * np.sin(np.outer(t, self.omega) + self.phase)


@dataclass
class SceneObject:
    """One textured object, stored as a sprite in its own (unrotated, unscaled) frame.

    Sprite texel ``(a, b)`` covers object-frame coordinates ``v in [a - c, a - c + 1)``,
    ``u in [b - c, b - c + 1)`` with ``c = sprite.shape[0] // 2``; ``alpha`` says which texels belong to
    the shape. The sprite is large enough that every pixel of the drawing window maps inside it.
    """

    sprite: np.ndarray  # (S, S, 3) uint8
    alpha: np.ndarray  # (S, S) bool
    radius: float  # the shape fits in this disc (pixels at scale 1)
    path: Path2D
    angle: float  # radians at t = 0
    spin: float  # radians per frame
    breathe: float  # relative scale amplitude, < 1
    breathe_omega: float
    breathe_phase: float
    warp: Optional["Warp"] = None  # non-rigid: the sprite itself bends over time

    def pose(self, t: np.ndarray) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """centre (T, 2), angle (T,), scale (T,) at frame times ``t`` (T,)."""
        scale = 1.0 + self.breathe * np.sin(self.breathe_omega * t + self.breathe_phase)
        return self.path.at(t), self.angle + self.spin * t, scale

    def window_half(self) -> int:
        """Half the side of the square drawing window that holds the object at any scale."""
        bend = self.warp.amplitude if self.warp is not None else 0.0  # texels, drawn at scale <= 1 + breathe
        return int(np.ceil((self.radius + bend) * (1 + self.breathe))) + 1


@dataclass
class Warp:
    """A non-rigid deformation of a sprite: texel ``(v, u)`` (object frame) is read from
    ``(v + amplitude * sin(k * u + omega * t + phase[0]), u + amplitude * sin(k * v + omega * t + phase[1]))``,
    so the shape and its texture bend together and the mask stays exact."""

    amplitude: float  # texels
    k: float  # radians per texel (2 pi / wavelength)
    omega: float  # radians per frame
    phase: np.ndarray  # (2,)


@dataclass
class Scene:
    """A background canvas panned under an (H, W) camera, and objects drawn back to front."""

    size: Size
    background: np.ndarray  # (H + 2 * margin, W + 2 * margin, 3) uint8
    pan: Path2D  # top-left corner of the camera inside the canvas
    objects: List[SceneObject]


def _sample_path(rng, lo: np.ndarray, hi: np.ndarray, omega: Tuple[float, float]) -> Path2D:
    """A path whose positions stay inside the box [lo, hi] (2,) for all time."""
    centre = rng.uniform(lo, hi)
    room = np.minimum(centre - lo, hi - centre)
    return Path2D(
        centre=centre,
        amplitude=room * rng.uniform(0.5, 1.0, 2),
        omega=rng.uniform(*omega, size=2) * rng.choice([-1, 1], 2),
        phase=rng.uniform(0, 2 * np.pi, 2),
    )


def sprite_side(radius: float, breathe: float) -> int:
    """Sprite side S (odd) such that every drawing-window pixel maps inside the sprite: the window's
    corners lie sqrt(2) * half away from the centre, and shrinking by (1 - breathe) magnifies that."""
    half = int(np.ceil(radius * (1 + breathe))) + 1
    return 2 * int(np.ceil(np.sqrt(2) * (half + 1) / (1 - breathe)) + 1) + 1


def rasterise(inside: Inside, side: int) -> np.ndarray:
    """Evaluate a shape test at the texel centres of a (side, side) sprite -> bool (side, side)."""
    centres = np.arange(side, dtype=np.float32) - side // 2 + 0.5
    return inside(centres[None, :], centres[:, None])


def _sample_object(rng, size: Size, textures: Sequence[str], shapes: Sequence[str]) -> SceneObject:
    h, w = size
    scale = min(h, w)
    radius = scale * rng.uniform(0.14, 0.28)
    breathe = rng.uniform(0.0, 0.15)
    side = sprite_side(radius, breathe)
    # Centres may leave the frame by a little, so objects are sometimes cut by the border.
    margin = 0.08 * np.array([h, w])
    return SceneObject(
        sprite=make_texture(rng, str(rng.choice(textures)), side, side, scale),
        alpha=rasterise(SHAPE_FNS[str(rng.choice(shapes))](rng, radius), side),
        radius=radius,
        path=_sample_path(rng, margin, np.array([h, w]) - margin, omega=(0.03, 0.1)),
        angle=rng.uniform(0, 2 * np.pi),
        spin=rng.uniform(-0.06, 0.06),
        breathe=breathe,
        breathe_omega=rng.uniform(0.02, 0.08),
        breathe_phase=rng.uniform(0, 2 * np.pi),
    )


def sample_scene(
    rng: np.random.Generator, size: Size, split: str = "train", objects: Tuple[int, int] = (2, 4)
) -> Scene:
    """A random scene for an (H, W) camera with between ``objects[0]`` and ``objects[1]`` objects."""
    if not 0 <= objects[0] <= objects[1] <= 254:
        raise ValueError(f"objects must be (min, max) with 0 <= min <= max <= 254, got {objects}")
    textures, shapes = families(split)
    h, w = size
    margin = int(np.ceil(0.25 * min(h, w)))  # how far the camera may pan from the canvas centre
    background = make_texture(rng, str(rng.choice(textures)), h + 2 * margin, w + 2 * margin, min(h, w))
    pan = _sample_path(rng, np.zeros(2), np.full(2, 2.0 * margin), omega=(0.01, 0.06))
    count = int(rng.integers(objects[0], objects[1] + 1))
    return Scene(size, background, pan, [_sample_object(rng, size, textures, shapes) for _ in range(count)])


def _draw_background(scene: Scene, t: np.ndarray, frames: np.ndarray) -> None:
    """Copy each frame's camera window out of the background canvas into ``frames`` (T, H, W, 3)."""
    h, w = scene.size
    corners = np.rint(scene.pan.at(t)).astype(np.int64)
    for i, (y, x) in enumerate(corners):
        frames[i] = scene.background[y : y + h, x : x + w]


def draw_object(obj: SceneObject, t: np.ndarray, label: int, frames: np.ndarray, masks: np.ndarray) -> None:
    """Paint ``obj`` over ``frames`` (T, H, W, 3) and write ``label`` into ``masks`` (T, H, W).

    Works on a (T, B, B) window that follows the object, so the cost is the object's area, not the
    frame's. Each window pixel maps back into the sprite (inverse rotation and scale, nearest texel);
    the texel's alpha decides coverage and its colour is painted, so frames and masks agree exactly.
    """
    num_frames, h, w = masks.shape
    side = obj.sprite.shape[0]
    centre, angle, scale = obj.pose(t)
    offsets = np.arange(-obj.window_half(), obj.window_half() + 1)
    ys = np.rint(centre[:, :1]).astype(np.int64) + offsets  # (T, B) frame rows of the window
    xs = np.rint(centre[:, 1:]).astype(np.int64) + offsets  # (T, B) frame columns
    dy = (ys - centre[:, :1]).astype(np.float32)[:, :, None]  # (T, B, 1)
    dx = (xs - centre[:, 1:]).astype(np.float32)[:, None, :]  # (T, 1, B)
    cos = (np.cos(angle) / scale).astype(np.float32)[:, None, None]
    sin = (np.sin(angle) / scale).astype(np.float32)[:, None, None]
    # Sprite coordinates, shifted by side // 2 so they are positive and int truncation is floor; the
    # small (T, B, 1) / (T, 1, B) terms are formed first so each full-size array costs one addition.
    c = np.float32(side // 2)
    col = (cos * dx + c) + sin * dy  # (T, B, B)
    row = (cos * dy + c) - sin * dx
    if obj.warp is not None:
        col, row = _warped(obj.warp, t, col, row, c, side)
    col, row = col.astype(np.int32), row.astype(np.int32)
    texel = row * side + col
    covered = np.take(obj.alpha.ravel(), texel)
    covered &= ((ys >= 0) & (ys < h))[:, :, None] & ((xs >= 0) & (xs < w))[:, None, :]
    pixel = ((np.arange(num_frames)[:, None] * h + ys) * w)[:, :, None] + xs[:, None, :]  # flat (T, H, W)
    hits = np.flatnonzero(covered)
    pixel, texel = np.take(pixel, hits), np.take(texel, hits)
    # Colours move as 3-byte items (void views): about twice as fast as (N, 3) fancy indexing.
    np.put(frames.view("V3").reshape(-1), pixel, np.take(obj.sprite.view("V3").reshape(-1), texel))
    np.put(masks.reshape(-1), pixel, label)


def _warped(warp: Warp, t: np.ndarray, col: np.ndarray, row: np.ndarray, c: np.float32, side: int):
    """Sprite coordinates (T, B, B) displaced by ``warp`` at frame times ``t``, kept inside the sprite."""
    wave = (warp.omega * t).astype(np.float32)[:, None, None]
    k, a = np.float32(warp.k), np.float32(warp.amplitude)
    new_col = col + a * np.sin(k * (row - c) + wave + np.float32(warp.phase[1]))
    new_row = row + a * np.sin(k * (col - c) + wave + np.float32(warp.phase[0]))
    return np.clip(new_col, 0, side - 1), np.clip(new_row, 0, side - 1)


_WINDOW_BUDGET = 1 << 20


def render_scene(scene: Scene, num_frames: int, start: int = 0) -> Tuple[np.ndarray, np.ndarray]:
    """Render frames ``start .. start + num_frames - 1`` of ``scene``.

    Returns ``frames`` (T, H, W, 3) uint8 and ``masks`` (T, H, W) uint8: 0 = background, k = the k-th
    object (1-based, in drawing order, so the front-most object wins where they overlap).
    """
    if len(scene.objects) > 254:  # mask ids are uint8, and 255 means void in DAVIS
        raise ValueError(f"at most 254 objects, got {len(scene.objects)}")
    h, w = scene.size
    t = np.arange(start, start + num_frames, dtype=np.float64)
    frames = np.empty((num_frames, h, w, 3), dtype=np.uint8)
    masks = np.zeros((num_frames, h, w), dtype=np.uint8)
    # Time chunks keep the (T, B, B) index arrays of the largest object near _WINDOW_BUDGET elements,
    # so long or large videos do not need gigabytes.
    widest = max([2 * obj.window_half() + 1 for obj in scene.objects], default=1)
    step = max(1, _WINDOW_BUDGET // widest**2)
    for lo in range(0, num_frames, step):
        chunk = slice(lo, lo + step)
        _draw_background(scene, t[chunk], frames[chunk])
        for label, obj in enumerate(scene.objects, start=1):
            draw_object(obj, t[chunk], label, frames[chunk], masks[chunk])
    return frames, masks


# ---------------------------------------------------------------------------------------------------
# Video files

# Codec and the encoder options that make a small, widely decodable file.
_CODECS = {
    "libx264": ["-pix_fmt", "yuv420p", "-preset", "veryfast", "-crf", "18"],
    "mpeg4": ["-pix_fmt", "yuv420p", "-q:v", "2"],
    "libvpx-vp9": ["-pix_fmt", "yuv420p", "-crf", "30", "-b:v", "0", "-deadline", "realtime"],
    "mjpeg": ["-pix_fmt", "yuvj420p", "-q:v", "2"],
}
_CODEC_BY_SUFFIX = {".mp4": "libx264", ".mkv": "libx264", ".mov": "libx264", ".avi": "mpeg4", ".webm": "libvpx-vp9"}


def encode_video(frames: np.ndarray, path: str | os.PathLike, fps: float = 30, codec: Optional[str] = None) -> Path:
    """Encode ``frames`` (T, H, W, 3) uint8 RGB into the video file ``path`` with the ffmpeg binary
    (:func:`siammae.ffmpeg.ffmpeg_exe`: ``$SIAMMAE_FFMPEG``, else PATH, else imageio-ffmpeg's).

    ``codec`` defaults from the suffix: .mp4/.mkv/.mov -> libx264, .avi -> mpeg4, .webm -> libvpx-vp9
    (also "mjpeg"). All use 4:2:0 chroma, which needs an even height and width. Returns ``path``.
    """
    frames = np.asarray(frames)
    if frames.ndim != 4 or frames.shape[-1] != 3 or frames.dtype != np.uint8 or len(frames) == 0:
        raise ValueError(f"expected frames (T, H, W, 3) uint8 with T >= 1, got {frames.shape} {frames.dtype}")
    path = Path(path)
    codec = codec or _CODEC_BY_SUFFIX.get(path.suffix.lower())
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r} for {path.name}; choose one of {sorted(_CODECS)}")
    _, h, w, _ = frames.shape
    if h % 2 or w % 2:
        raise ValueError(f"4:2:0 video needs an even height and width, got {h}x{w}")
    path.parent.mkdir(parents=True, exist_ok=True)
    command = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y",
        "-f", "rawvideo", "-pix_fmt", "rgb24", "-s", f"{w}x{h}", "-r", str(fps), "-i", "pipe:0",
        "-an", "-c:v", codec, *_CODECS[codec], str(path),
    ]  # fmt: skip
    result = subprocess.run(command, input=np.ascontiguousarray(frames).tobytes(), capture_output=True)
    if result.returncode != 0:
        raise FfmpegError(f"ffmpeg failed writing {path}: {result.stderr.decode(errors='replace').strip()}")
    return path


def synth_videos(
    out_dir: str | os.PathLike,
    num_videos: int = 16,
    frames: int = 96,
    size: Size = (128, 160),
    fps: float = 30,
    seed: int = 0,
    split: str = "train",
    objects: Tuple[int, int] = (2, 5),
    suffix: str = ".mp4",
    progress: Optional[Callable[[Path], None]] = None,
) -> List[Path]:
    """Write ``num_videos`` synthetic videos ``out_dir/video_0000.mp4 ...`` (flat); returns their paths.

    Video ``i`` depends only on (seed, i, frames, size, split, objects): making more videos adds files
    without changing the earlier ones. Files of the same name are replaced. ``progress(path)`` is
    called after each file.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    paths: List[Path] = []
    pending: "deque[Future]" = deque()

    def finish_oldest():
        paths.append(pending.popleft().result())
        if progress is not None:
            progress(paths[-1])

    # ffmpeg encodes in worker threads (the GIL is free while it runs) as the next scenes render; at
    # most a few rendered videos wait in memory.
    with ThreadPoolExecutor(max_workers=2) as pool:
        for index in range(num_videos):
            scene = sample_scene(scene_rng(seed, _STREAM_VIDEOS, index), size, split, objects)
            video, _ = render_scene(scene, frames)
            pending.append(pool.submit(encode_video, video, out_dir / f"video_{index:04d}{suffix}", fps))
            if len(pending) > 2:
                finish_oldest()
        while pending:
            finish_oldest()
    return paths


# ---------------------------------------------------------------------------------------------------
# DAVIS-2017 layout


def _sample_davis_scene(rng, size: Size, split: str, objects: Tuple[int, int], num_frames: int):
    """Sample scenes until every object shows at least ~0.5% of the frame in the first frame.

    DAVIS tracks exactly the ids present in the first annotation, and an object smaller than a patch
    or two vanishes when that mask is downsampled to the feature grid; both would make the set test
    something other than propagation.
    """
    min_pixels = max(16, int(0.005 * size[0] * size[1]))
    for _ in range(100):
        scene = sample_scene(rng, size, split, objects)
        frames, masks = render_scene(scene, num_frames)
        counts = np.bincount(masks[0].ravel(), minlength=len(scene.objects) + 1)
        if counts[1:].min() >= min_pixels:
            return frames, masks
    raise SiammaeError(f"could not place {objects} visible objects in a {size} frame; use a larger size")


def write_sequence(root: Path, resolution: str, name: str, frames: np.ndarray, masks: np.ndarray, quality: int):
    """Write one sequence's JPEG frames and palette PNG annotations, replacing any older copy."""
    from PIL import Image

    image_dir = root / "JPEGImages" / resolution / name
    label_dir = root / "Annotations" / resolution / name
    for folder in (image_dir, label_dir):
        shutil.rmtree(folder, ignore_errors=True)  # stale frames from a longer earlier run would count
        folder.mkdir(parents=True)
    for i, (frame, mask) in enumerate(zip(frames, masks)):
        # Full-resolution chroma: at ~128 px, 4:2:0 would smear colour-only texture edges.
        Image.fromarray(frame).save(image_dir / f"{i:05d}.jpg", quality=quality, subsampling=0)
        save_indexed_png(label_dir / f"{i:05d}.png", mask)


def synth_davis(
    out_dir: str | os.PathLike,
    num_sequences: int = 8,
    frames: int = 32,
    size: Size = (128, 224),
    seed: int = 0,
    split: str = "val",
    objects: Tuple[int, int] = (2, 4),
    num_train: int = 0,
    resolution: str = "480p",
    quality: int = 95,
    progress: Optional[Callable[[str], None]] = None,
) -> List[str]:
    """Write a synthetic DAVIS-2017-format set under ``out_dir``; returns the validation sequence names.

    Layout: ``JPEGImages/<resolution>/<seq>/00000.jpg``, ``Annotations/<resolution>/<seq>/00000.png``
    (palette PNGs, pixel = object id, ids 1..K all present in frame 0), ``ImageSets/2017/val.txt`` and
    ``train.txt``. ``resolution`` is only the folder name; frames are ``size`` (H, W). Validation
    sequences are ``synth-000 ...``; ``num_train`` extra ``synth-train-000 ...`` sequences (other
    random streams) go into train.txt, which is written empty by default. ``progress(name)`` is
    called after each sequence.
    """
    root = Path(out_dir)
    groups = {
        "val": [(f"synth-{i:03d}", scene_rng(seed, _STREAM_DAVIS_VAL, i)) for i in range(num_sequences)],
        "train": [(f"synth-train-{i:03d}", scene_rng(seed, _STREAM_DAVIS_TRAIN, i)) for i in range(num_train)],
    }
    for group, members in groups.items():
        for name, rng in members:
            video, masks = _sample_davis_scene(rng, size, split, objects, frames)
            write_sequence(root, resolution, name, video, masks, quality)
            if progress is not None:
                progress(name)
        list_dir = root / "ImageSets" / "2017"
        list_dir.mkdir(parents=True, exist_ok=True)
        (list_dir / f"{group}.txt").write_text("".join(f"{name}\n" for name, _ in members))
    return [name for name, _ in groups["val"]]
