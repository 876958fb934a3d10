"""Read chosen frames of a video, resized, with bounded memory: decord or PyAV.

Two decoders (``DECODERS``), the same frames for the same indices (frame i = the i-th frame in
presentation order) and pixels within a few levels (both convert with FFmpeg's libraries):

- ``decord`` (x86-64 wheels only; the fast path): given the wanted indices in ascending order it
  decodes forward from the current position inside a keyframe run and seeks only when the next wanted
  frame lies in a later run (docs/benchmarks.md, "Sharding"). Frames are fetched a few at a time and
  resized at once, so a worker holds at most ``MAX_BATCH_BYTES`` of full-size frames whatever the
  video's length or resolution.
- ``pyav`` (PyAV, wheels for every platform: ARM servers, Apple silicon): decodes forward from the
  start to the last wanted frame, converting only the wanted ones, one frame held at a time.

``auto`` (:func:`choose_decoder`) is decord where it is installed, else PyAV. Files the decoder cannot
open or read are transcoded by ffmpeg (:func:`siammae.ffmpeg.transcode`) into a temporary H.264 file
at the output size, and that file is read with the same decoder instead.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from typing import Iterator, List, Optional, Sequence, Tuple

import numpy as np

from siammae import ffmpeg
from siammae.errors import SiammaeError

MAX_BATCH_BYTES = 64 << 20  # full-size RGB frames held at once per worker


class DecodeError(SiammaeError):
    """The video cannot be decoded (the message says why)."""


def output_size(size: Tuple[int, int], short_side: int) -> Tuple[int, int]:
    """(W, H) scaled so that min(W, H) == ``short_side``, aspect kept (rounded); 0 keeps ``size``."""
    w, h = size
    if short_side <= 0 or min(w, h) == short_side:
        return w, h
    scale = short_side / min(w, h)
    if w <= h:
        return short_side, max(1, int(round(h * scale)))
    return max(1, int(round(w * scale))), short_side


def resize(frame: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Resize an (H, W, 3) uint8 frame to ``size`` = (W, H) (PIL bilinear, antialiased when shrinking)."""
    if (frame.shape[1], frame.shape[0]) == tuple(size):
        return frame
    from PIL import Image

    return np.asarray(Image.fromarray(frame).resize(size, Image.BILINEAR))


class DecordReader:
    """decord over one file. ``num_frames``, ``fps``; :meth:`read` yields resized frames.

    ``source_size`` (W, H) of the original video is known after the first :meth:`read` unless given;
    ``source_size`` and ``source_fps`` override what the file says (for transcoded files, which carry
    the original's frames at another size). Output sizes derive from ``source_size``, so a
    transcoded file gives frames of the same size as the original would.
    """

    def __init__(self, path: str, source_size: Optional[Tuple[int, int]] = None, source_fps: Optional[float] = None):
        import decord

        decord.logging.set_level(decord.logging.QUIET)  # failures are reported in failed.jsonl instead
        self._decord_error = decord.DECORDError
        try:
            # One thread: a worker per core is the parallelism; decoder threads would oversubscribe.
            with _quiet_stderr():
                self._reader = decord.VideoReader(path, num_threads=1)
            self.num_frames = len(self._reader)
            self.fps = float(source_fps if source_fps else self._reader.get_avg_fps())
        except (self._decord_error, RuntimeError) as error:
            raise DecodeError(f"decord cannot open: {_first_line(error)}") from None
        if self.num_frames <= 0:
            raise DecodeError("decord finds no frames")
        if not (math.isfinite(self.fps) and 0 < self.fps < 1000):
            raise DecodeError(f"no usable frame rate ({self.fps})")
        self.source_size = source_size

    def read(self, indices: Sequence[int], short_side: int) -> Iterator[Tuple[int, np.ndarray]]:
        """Yield ``(index, frame)`` for ascending unique ``indices``; frames (H', W', 3) uint8 RGB with
        short side ``short_side`` (0 = stored size)."""
        indices = sorted(set(int(i) for i in indices))
        if indices and not 0 <= indices[0] <= indices[-1] < self.num_frames:
            raise ValueError(f"frame indices {indices[0]}..{indices[-1]} outside 0..{self.num_frames - 1}")
        position, batch = 0, 1  # the first frame alone tells the frame size, hence the batch size
        while position < len(indices):
            chunk = indices[position : position + batch]
            try:
                frames = self._reader.get_batch(chunk).asnumpy()
            except (self._decord_error, RuntimeError) as error:
                raise DecodeError(f"decord cannot read frames {chunk[0]}..{chunk[-1]}: {_first_line(error)}") from None
            if self.source_size is None:
                self.source_size = (frames.shape[2], frames.shape[1])
            target = output_size(self.source_size, short_side)
            for index, frame in zip(chunk, frames):
                yield index, resize(frame, target)
            position += len(chunk)
            batch = max(1, MAX_BATCH_BYTES // max(1, frames[0].nbytes))
            del frames

    def close(self) -> None:
        self._reader = None


class PyAVReader:
    """PyAV over one file, with :class:`DecordReader`'s interface and meaning: ``num_frames`` counts
    the video stream's packets (as decord's index does), ``fps`` is the stream's average rate."""

    def __init__(self, path: str, source_size: Optional[Tuple[int, int]] = None, source_fps: Optional[float] = None):
        import av

        self._path, self._error = path, (av.FFmpegError, ValueError, IndexError, EOFError)
        try:
            with av.open(path) as container:
                stream = container.streams.video[0]
                rate = stream.average_rate or stream.guessed_rate
                self.fps = float(source_fps if source_fps else (rate or 0))
                self.num_frames = sum(1 for packet in container.demux(stream) if packet.size)
        except self._error as error:
            raise DecodeError(f"PyAV cannot open: {_first_line(error)}") from None
        if self.num_frames <= 0:
            raise DecodeError("PyAV finds no frames")
        if not (math.isfinite(self.fps) and 0 < self.fps < 1000):
            raise DecodeError(f"no usable frame rate ({self.fps})")
        self.source_size = source_size

    def read(self, indices: Sequence[int], short_side: int) -> Iterator[Tuple[int, np.ndarray]]:
        """As :meth:`DecordReader.read`: ``(index, frame)`` for ascending unique ``indices``."""
        import av

        wanted = sorted(set(int(i) for i in indices))
        if wanted and not 0 <= wanted[0] <= wanted[-1] < self.num_frames:
            raise ValueError(f"frame indices {wanted[0]}..{wanted[-1]} outside 0..{self.num_frames - 1}")
        if not wanted:
            return
        pending, index = iter(wanted), -1
        target = next(pending)
        try:
            with av.open(self._path) as container:
                stream = container.streams.video[0]
                stream.codec_context.thread_count = 1  # one worker per core is the parallelism (as decord's)
                for frame in container.decode(stream):
                    index += 1
                    if index < target:
                        continue
                    rgb = frame.to_ndarray(format="rgb24")
                    if self.source_size is None:
                        self.source_size = (rgb.shape[1], rgb.shape[0])
                    yield index, resize(rgb, output_size(self.source_size, short_side))
                    target = next(pending, None)
                    if target is None:
                        return
        except self._error as error:
            raise DecodeError(f"PyAV cannot read frame {index + 1}: {_first_line(error)}") from None
        raise DecodeError(f"PyAV decoded {index + 1} frames, fewer than the {self.num_frames} packets counted")

    def close(self) -> None:
        pass


DECODERS = {"decord": DecordReader, "pyav": PyAVReader}


def choose_decoder(name: str = "auto") -> str:
    """``auto`` -> decord where it is installed, else pyav; a named decoder must be installed."""
    import importlib.util

    installed = [d for d in ("decord", "av") if importlib.util.find_spec(d) is not None]
    if name == "auto":
        if not installed:
            raise SiammaeError("no video decoder installed: pip install av (any platform) or decord (x86-64)")
        return "decord" if "decord" in installed else "pyav"
    if {"decord": "decord", "pyav": "av"}[name] not in installed:
        raise SiammaeError(
            f"--decoder {name}: the package is not installed: pip install "
            f"{'decord (x86-64 wheels only)' if name == 'decord' else 'av'}"
        )
    return name


@contextlib.contextmanager
def _quiet_stderr():
    """Silence file descriptor 2 (decord logs an ERROR line for every file it cannot open, which
    would bury the progress bar; the reason goes to failed.jsonl instead)."""
    try:
        saved = os.dup(2)
    except OSError:
        yield
        return
    null = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(null, 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(null)


def _first_line(error: BaseException) -> str:
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:300]


@contextlib.contextmanager
def open_video(
    path: str, short_side: int, transcode: bool = False, tmp_dir: Optional[str] = None, decoder: str = "auto"
):
    """A reader (``DECODERS[decoder]``, ``auto``: :func:`choose_decoder`) for ``path``: the file
    directly, or (``transcode=True``) an ffmpeg re-encode of it at the output size. Raises
    :class:`DecodeError`."""
    reader_class = DECODERS[choose_decoder(decoder)]
    if not os.path.isfile(path):
        raise DecodeError("file not found")
    if os.path.getsize(path) == 0:
        raise DecodeError("empty file (0 bytes)")
    if not transcode:
        reader = reader_class(path)
        try:
            yield reader
        finally:
            reader.close()
        return
    try:
        info = ffmpeg.probe(path)
    except ffmpeg.FfmpegError as error:
        raise DecodeError(f"ffmpeg: {error}") from None
    with tempfile.TemporaryDirectory(prefix="siammae-transcode-", dir=tmp_dir) as tmp:
        target = os.path.join(tmp, "video.mp4")
        size = output_size(info.size, short_side)
        try:
            # H.264 needs even sides; the reader resizes the odd pixel back.
            ffmpeg.transcode(path, target, (size[0] + size[0] % 2, size[1] + size[1] % 2))
        except ffmpeg.FfmpegError as error:
            raise DecodeError(str(error)) from None
        reader = reader_class(target, source_size=info.size, source_fps=info.fps or None)
        try:
            yield reader
        finally:
            reader.close()


def unique_sorted(samples: Sequence[Sequence[int]]) -> List[int]:
    return sorted({i for sample in samples for i in sample})
