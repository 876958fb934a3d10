"""Synthetic videos in the JHMDB and VIP layouts' terms, for the tests of those tasks."""

from typing import List, Tuple

import numpy as np

from siammae.tasks.jhmdb import NUM_JOINTS


def translating_video(
    num_frames: int = 5, size: Tuple[int, int] = (240, 320), shift: Tuple[int, int] = (3, 2), seed: int = 0
) -> Tuple[List[np.ndarray], np.ndarray]:
    """A blocky random texture panning by ``shift`` = (dx, dy) whole pixels per frame, and 15 joints
    moving with it: ``(frames [(H, W, 3) uint8], joints (T, 15, 2))``. Frame 0's joints lie in the
    middle 40% x 50% of the frame."""
    rng = np.random.default_rng(seed)
    (height, width), (dx, dy) = size, (int(shift[0]), int(shift[1]))
    my, mx = (num_frames - 1) * abs(dy), (num_frames - 1) * abs(dx)
    blocks = rng.integers(0, 256, ((height + 2 * my) // 8 + 1, (width + 2 * mx) // 8 + 1, 3))
    canvas = np.kron(blocks, np.ones((8, 8, 1), dtype=np.int64))  # 8-px blocks: trackable at any patch
    canvas = np.clip(canvas + rng.integers(-20, 21, canvas.shape), 0, 255).astype(np.uint8)
    frames = [
        canvas[my - t * dy : my - t * dy + height, mx - t * dx : mx - t * dx + width].copy() for t in range(num_frames)
    ]
    start = rng.uniform([0.3 * width, 0.25 * height], [0.7 * width, 0.75 * height], (NUM_JOINTS, 2))
    steps = np.arange(num_frames)[:, None, None] * np.array([dx, dy], dtype=np.float64)
    return frames, start[None] + steps


def moving_parts(
    num_frames: int = 4, size: tuple[int, int] = (64, 96), shift: tuple[int, int] = (0, 2), seed: int = 0
) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """A textured scene with four part regions, translating ``shift`` (dy, dx) pixels a frame.

    Returns ``num_frames`` frames (H, W, 3) uint8 and their ids (H, W) uint8 (0, 2 hair, 13 face,
    4 upper-clothes, 8 pants). The scene wraps around (np.roll), so the labels of frame t are exactly
    those of frame 0 rolled by t * shift. Texture is 4-pixel blocks, coarse enough to survive JPEG.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    blocks = rng.integers(0, 256, ((h + 3) // 4, (w + 3) // 4, 3), dtype=np.uint8)
    image = np.kron(blocks, np.ones((4, 4, 1), dtype=np.uint8))[:h, :w]
    ids = np.zeros((h, w), dtype=np.uint8)
    for k, (y0, y1, x0, x1) in zip(
        (2, 13, 4, 8), ((0.1, 0.25, 0.4, 0.6), (0.25, 0.4, 0.42, 0.58), (0.4, 0.65, 0.3, 0.7), (0.65, 0.9, 0.35, 0.65))
    ):
        ids[int(y0 * h) : int(y1 * h), int(x0 * w) : int(x1 * w)] = k
    # A tint per part so each part's texture differs from the background's.
    image = np.clip(image.astype(np.int16) // 2 + (ids[..., None] * np.array([9, 5, 3])), 0, 255)
    frames, labels = [], []
    for t in range(num_frames):
        dy, dx = t * shift[0], t * shift[1]
        frames.append(np.roll(image, (dy, dx), axis=(0, 1)).astype(np.uint8))
        labels.append(np.roll(ids, (dy, dx), axis=(0, 1)))
    return frames, labels
