"""Turn one video into its WebDataset samples (the sample format the trainer reads).

Sample ``j`` of a video is::

    <key>.f0.jpg ... <key>.f{K-1}.jpg   frames in time order (f0 earliest), JPEG
    <key>.json                          {"src", "label", "split", "fps", "frames", "gap", "size", "num_frames"}

``key`` = ``<file stem, [A-Za-z0-9_-] only, <= 48 chars>-<12 hex of sha1(src)>-<j:03d>``: no dots
(WebDataset cuts keys at the first dot), unique per (src, j), stable across runs. In the json,
``src`` is the path relative to SRC (posix), ``label``/``split`` strings or null, ``fps`` the video's
frame rate, ``frames`` the ascending frame indices, ``gap`` = frames[-1] - frames[0], ``size`` the
original [W, H], ``num_frames`` the frames in the video.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass, fields
from pathlib import PurePosixPath
from typing import Dict, List, Optional, Tuple

import numpy as np

from siammae.errors import SiammaeError
from siammae.shard.decode import DecodeError, open_video, output_size, resize, unique_sorted
from siammae.shard.sampling import SampleSpec, TooShort, sample_indices, video_rng
from siammae.shard.sources import Video, is_image

Sample = Tuple[str, List[Tuple[str, bytes]]]  # (key, [(extension, payload), ...]) in tar order

JSON_MEMBER = "json"


def frame_member(i: int) -> str:
    """The member name (extension) of a sample's frame ``i``."""
    return f"f{i}.jpg"


@dataclass(frozen=True)
class SampleRecord:
    """The ``json`` member of a sample (see the module docstring); fields in the order written."""

    src: str
    label: Optional[str]
    split: Optional[str]
    fps: float
    frames: List[int]
    gap: int
    size: List[int]
    num_frames: int

    def to_json(self) -> bytes:
        return json.dumps(asdict(self), ensure_ascii=False).encode("utf-8")


FIELDS = tuple(f.name for f in fields(SampleRecord))  # the keys every sample's json holds


class VideoFailed(SiammaeError):
    """A video yields no samples. ``reason`` is a short code for failed.jsonl, the message the detail."""

    def __init__(self, reason: str, message: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class EncodeSpec:
    """Output frames: short side in pixels (0 keeps the size), JPEG quality and chroma subsampling."""

    short_side: int = 256
    quality: int = 90
    subsampling: str = "420"


def video_key(src: str) -> str:
    """The dot-free key prefix of a video (see the module docstring)."""
    stem = re.sub(r"[^A-Za-z0-9_-]", "_", PurePosixPath(src).stem)[:48]
    return f"{stem}-{hashlib.sha1(src.encode('utf-8')).hexdigest()[:12]}"


def encode_jpeg(frame, spec: EncodeSpec) -> bytes:
    import simplejpeg

    # simplejpeg defaults to 4:4:4 chroma (+25% bytes, slower decode): always pass the subsampling.
    return simplejpeg.encode_jpeg(
        frame, quality=spec.quality, colorspace="RGB", colorsubsampling=spec.subsampling, fastdct=True
    )


def _encode_video(video: Video, reader, sample_spec: SampleSpec, encode_spec: EncodeSpec, seed: int) -> List[Sample]:
    chosen = sample_indices(sample_spec, reader.num_frames, reader.fps, video_rng(seed, video.src))
    jpegs: Dict[int, bytes] = {}
    for index, frame in reader.read(unique_sorted(chosen), encode_spec.short_side):
        jpegs[index] = encode_jpeg(frame, encode_spec)
    prefix = video_key(video.src)
    samples = []
    for j, frames in enumerate(chosen):
        record = SampleRecord(
            src=video.src,
            label=video.label,
            split=video.split,
            fps=float(reader.fps),
            frames=frames,
            gap=frames[-1] - frames[0],
            size=list(reader.source_size),
            num_frames=int(reader.num_frames),
        )
        members = [(frame_member(i), jpegs[t]) for i, t in enumerate(frames)]
        members.append((JSON_MEMBER, record.to_json()))
        samples.append((f"{prefix}-{j:03d}", members))
    return samples


def _encode_image(video: Video, encode_spec: EncodeSpec) -> Sample:
    """An image as one sample: ``f0.jpg`` (short side ``encode_spec.short_side``) and its record (fps 0,
    frames [0], gap 0, one frame)."""
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(video.path) == 0:
            raise VideoFailed("empty", "empty file (0 bytes)")
        with Image.open(video.path) as image:
            frame = np.asarray(image.convert("RGB"))
    except FileNotFoundError:
        raise VideoFailed("missing", "file not found") from None
    except (UnidentifiedImageError, OSError, ValueError) as error:
        raise VideoFailed("unreadable", f"not a readable image: {error}") from None
    height, width = frame.shape[:2]
    if encode_spec.short_side:
        frame = resize(frame, output_size((width, height), encode_spec.short_side))
    record = SampleRecord(video.src, video.label, video.split, 0.0, [0], 0, [width, height], 1)
    return f"{video_key(video.src)}-000", [
        (frame_member(0), encode_jpeg(frame, encode_spec)),
        (JSON_MEMBER, record.to_json()),
    ]


def make_samples(
    video: Video,
    sample_spec: SampleSpec,
    encode_spec: EncodeSpec,
    seed: int = 0,
    tmp_dir: Optional[str] = None,
    decoder: str = "auto",
) -> List[Sample]:
    """All samples of ``video``; raises :class:`VideoFailed`. ``decoder`` (see
    :mod:`siammae.shard.decode`) on the file first, then on an ffmpeg transcode of it. An image (the
    ``images`` layout) is one sample of one frame, whatever ``sample_spec`` says."""
    if is_image(video.path):
        return [_encode_image(video, encode_spec)]
    errors = []
    for transcode in (False, True):
        try:
            with open_video(video.path, encode_spec.short_side, transcode, tmp_dir, decoder) as reader:
                return _encode_video(video, reader, sample_spec, encode_spec, seed)
        except TooShort as error:
            raise VideoFailed("too_short", str(error)) from None
        except DecodeError as error:
            message = str(error)
            if message in ("file not found", "empty file (0 bytes)"):
                raise VideoFailed("missing" if "found" in message else "empty", message) from None
            errors.append(("ffmpeg fallback: " if transcode else "") + message)
    raise VideoFailed("unreadable", "; ".join(errors))
