"""The ffmpeg binary, a stream probe, and a transcode helper.

There may be no system ffmpeg and there is no ffprobe on the machines this project runs on, so the
binary comes from PATH or else from the ``imageio-ffmpeg`` wheel, and :func:`probe` reads the stream
description that ``ffmpeg -i FILE`` prints instead of asking ffprobe.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from functools import lru_cache
from typing import Optional, Tuple

from siammae.errors import SiammaeError


class FfmpegError(SiammaeError):
    """ffmpeg could not read or write a file; the message ends with ffmpeg's own last error line."""


@lru_cache(maxsize=1)
def ffmpeg_exe() -> str:
    """Path of the ffmpeg binary: ``$SIAMMAE_FFMPEG``, else ``ffmpeg`` on PATH, else imageio-ffmpeg's."""
    override = os.environ.get("SIAMMAE_FFMPEG")
    if override:
        return override
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


@dataclass(frozen=True)
class StreamInfo:
    """The first video stream of a file as ffmpeg describes it.

    ``size`` is (W, H) in stored pixels; ``fps`` the stream's frame rate (0.0 when ffmpeg names none);
    ``duration`` in seconds (None when unknown).
    """

    codec: str
    size: Tuple[int, int]
    fps: float
    duration: Optional[float]


_VIDEO_LINE = re.compile(r"Stream #\S+.*?: Video: (?P<codec>[\w-]+)(?P<rest>.*)")
_SIZE = re.compile(r"[ ,](\d{2,5})x(\d{2,5})[ ,\[]")
_FPS = re.compile(r"([\d.]+)(k?) (?:fps|tbr)")
_DURATION = re.compile(r"Duration: (\d+):(\d\d):(\d\d(?:\.\d+)?)")


def _last_error_line(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    useful = [line for line in lines if "output file" not in line]
    return (useful or lines or ["no output"])[-1]


def parse_probe(stderr: str) -> StreamInfo:
    """Parse the ``ffmpeg -i FILE`` banner (its stderr) into a :class:`StreamInfo`; raise if no video."""
    for line in stderr.splitlines():
        match = _VIDEO_LINE.search(line)
        if not match:
            continue
        rest = match.group("rest") + " "
        size = _SIZE.search(rest)
        if not size:
            continue
        fps = 0.0
        for value, kilo in _FPS.findall(rest):  # "fps" comes before "tbr"; take the first one given
            fps = float(value) * (1000 if kilo else 1)
            break
        duration = _DURATION.search(stderr)
        seconds = None
        if duration:
            h, m, s = duration.groups()
            seconds = int(h) * 3600 + int(m) * 60 + float(s)
        return StreamInfo(match.group("codec"), (int(size.group(1)), int(size.group(2))), fps, seconds)
    raise FfmpegError(f"no video stream: {_last_error_line(stderr)}")


def probe(path: str | os.PathLike, timeout: float = 60) -> StreamInfo:
    """Describe the first video stream of ``path``; :class:`FfmpegError` if ffmpeg finds none."""
    command = [ffmpeg_exe(), "-hide_banner", "-nostdin", "-i", os.fspath(path)]
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise FfmpegError(f"ffmpeg probe timed out after {timeout:.0f} s") from error
    return parse_probe(result.stderr.decode(errors="replace"))


def transcode(
    src: str | os.PathLike, dst: str | os.PathLike, size: Optional[Tuple[int, int]] = None, timeout: float = 600
) -> None:
    """Re-encode the first video stream of ``src`` into ``dst`` (H.264, near-lossless, short GOP).

    Every decoded frame is kept (no frame-rate conversion), so frame ``i`` of ``dst`` is frame ``i``
    of ``src``; ``size`` (W, H) rescales on the way. Audio and subtitles are dropped. Used when decord
    cannot open a file that ffmpeg still can.
    """
    import ffmpeg  # ffmpeg-python: builds the command line; we run it with our own binary

    stream = ffmpeg.input(os.fspath(src))["v:0"]
    if size is not None:
        stream = stream.filter("scale", size[0], size[1], flags="area")
    stream = stream.output(
        os.fspath(dst), vcodec="libx264", preset="ultrafast", crf=12, g=16, pix_fmt="yuv420p",
        an=None, sn=None, fps_mode="passthrough",
    )  # fmt: skip
    command = ffmpeg.compile(stream, cmd=ffmpeg_exe(), overwrite_output=True)
    command[1:1] = ["-hide_banner", "-nostdin", "-loglevel", "error"]
    try:
        result = subprocess.run(command, capture_output=True, timeout=timeout)
    except subprocess.TimeoutExpired as error:
        raise FfmpegError(f"ffmpeg transcode timed out after {timeout:.0f} s") from error
    if result.returncode != 0:
        raise FfmpegError(f"ffmpeg transcode failed: {_last_error_line(result.stderr.decode(errors='replace'))}")
