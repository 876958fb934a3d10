"""Small file helpers shared by the run folder, the shard folder and the propagation output.

The JSON-lines reader and the atomic writer exist because runs are killed: a JSON-lines log may end in a
torn line, and a file that other tools read (a manifest, propagation.json, an exported encoder) must
never be seen half-written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Callable, List

import numpy as np


def read_jsonl(path) -> List[dict]:
    """The records of a JSON-lines file (none if it does not exist). Lines that do not parse, such as a
    last line torn by a kill, are left out."""
    path = Path(path)
    if not path.is_file():
        return []
    records = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


def write_atomic(path, data: bytes | str | Callable[[Path], None]) -> Path:
    """Write ``path`` through a temporary file next to it, fsync, then rename over ``path``: readers
    see the old file or the new one, never a part. ``data`` is the content, or a function that writes
    the temporary file it is given (for libraries that write files themselves, e.g. safetensors)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        if callable(data):
            data(tmp)
        else:
            with open(tmp, "wb") as handle:
                handle.write(data.encode() if isinstance(data, str) else data)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:  # a full disk, an interrupt: no partial temporary file stays behind
        tmp.unlink(missing_ok=True)
        raise
    return path


def read_frame(path) -> np.ndarray:
    """An image file (a video frame) as RGB (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))
