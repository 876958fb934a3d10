"""Tiny test videos whose frames say their own index, for the `siammae shard` tests.

Frame ``t`` (H x W, default 96 x 128) shows the 8 bits of ``t`` as black/white blocks in a 2 x 4 grid
over its top half, above a gradient that moves with ``t``. :func:`read_index` recovers ``t`` from a
decoded (possibly resized, JPEG-compressed) frame, so a test can check that the frames in a shard
are the frames its json names.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import numpy as np

from siammae.ffmpeg import ffmpeg_exe

CODECS = {
    ".mp4": ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-pix_fmt", "yuv420p"],
    ".mkv": ["-c:v", "libx264", "-preset", "ultrafast", "-crf", "12", "-pix_fmt", "yuv420p"],
    ".avi": ["-c:v", "mpeg4", "-q:v", "2", "-pix_fmt", "yuv420p"],
}


def frames_with_index(num_frames: int, height: int = 96, width: int = 128) -> np.ndarray:
    """(T, H, W, 3) uint8 frames; see the module docstring."""
    t = np.arange(num_frames)
    y, x = np.mgrid[0:height, 0:width]
    video = np.empty((num_frames, height, width, 3), np.uint8)
    video[...] = ((x[None] * 2 + y[None] + t[:, None, None] * 3) % 256)[..., None].astype(np.uint8) // 2 + 64
    bh, bw = height // 4, width // 4
    for bit in range(8):
        row, col = divmod(bit, 4)
        on = ((t >> bit) & 1).astype(np.uint8) * 255
        video[:, row * bh : (row + 1) * bh, col * bw : (col + 1) * bw, :] = on[:, None, None, None]
    return video


def read_index(frame: np.ndarray) -> int:
    """The index drawn into ``frame`` (H, W, 3) by :func:`frames_with_index`, at any size."""
    height, width = frame.shape[:2]
    index = 0
    for bit in range(8):
        row, col = divmod(bit, 4)
        cy, cx = int((row + 0.5) * height / 4), int((col + 0.5) * width / 4)
        if frame[cy, cx].mean() > 127:
            index |= 1 << bit
    return index


def make_video(path, num_frames: int = 64, fps: float = 30, height: int = 96, width: int = 128) -> Path:
    """Encode :func:`frames_with_index` into ``path`` (codec by suffix: mp4/mkv x264, avi mpeg4)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    frames = frames_with_index(num_frames, height, width)
    command = [
        ffmpeg_exe(), "-hide_banner", "-loglevel", "error", "-y", "-f", "rawvideo", "-pix_fmt", "rgb24",
        "-s", f"{width}x{height}", "-r", str(fps), "-i", "pipe:0", "-an", *CODECS[path.suffix], "-g", "24",
        os.fspath(path),
    ]  # fmt: skip
    subprocess.run(command, input=frames.tobytes(), check=True, capture_output=True)
    return path


def make_bad_files(folder) -> dict:
    """One file of each kind of bad video in ``folder``; returns {name: expected failure reason}."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "zero.mp4").write_bytes(b"")
    (folder / "text.mp4").write_text("this is not a video\n")
    good = make_video(folder / "whole.mp4", num_frames=48)
    data = good.read_bytes()
    good.unlink()
    (folder / "truncated.mp4").write_bytes(data[: len(data) // 3])
    make_video(folder / "short.mp4", num_frames=3)
    return {"zero.mp4": "empty", "text.mp4": "unreadable", "truncated.mp4": "unreadable", "short.mp4": "too_short"}
