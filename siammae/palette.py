"""The DAVIS / Pascal VOC colour map and indexed-PNG writing.

DAVIS-2017 annotations (and the predictions the official evaluator reads) are palette ("P" mode) PNGs
whose pixel values are object ids: 0 = background, 1..K = objects, 255 = void. The evaluator reads the
indices, never the colours, but people look at these files, so they carry the standard colour map. It is
computed here, never downloaded at run time.
"""

from __future__ import annotations

import os
from typing import List

import numpy as np


def _voc_colormap(num_colors: int = 256) -> List[int]:
    """The standard VOC colour map as a flat list ``[r0, g0, b0, r1, ...]`` of ``3 * num_colors`` ints.

    Each index spreads its bits over the three channels, three bits at a time, filling each channel from
    its most significant bit down: bit 0 of the index goes to red, bit 1 to green, bit 2 to blue, then
    the next three bits one position lower, and so on. So 1 -> (128, 0, 0), 2 -> (0, 128, 0),
    3 -> (128, 128, 0), ..., 255 -> (224, 224, 192).
    """
    flat = []
    for index in range(num_colors):
        rgb = [0, 0, 0]
        bits = index
        shift = 7
        while bits:
            for channel in range(3):
                rgb[channel] |= ((bits >> channel) & 1) << shift
            bits >>= 3
            shift -= 1
        flat.extend(rgb)
    return flat


# 768 ints: 256 RGB triples, index i -> PALETTE[3*i : 3*i + 3].
PALETTE: List[int] = _voc_colormap(256)


def save_indexed_png(path: str | os.PathLike, labels: np.ndarray) -> None:
    """Write ``labels`` (H, W) uint8 as a palette PNG whose pixel values are exactly ``labels``.

    Raises ValueError for anything but a 2-D uint8 array: a silent cast (say of int64 ids above 255, or
    an RGB image) would write a file the DAVIS evaluator misreads.
    """
    from PIL import Image

    labels = np.asarray(labels)
    if labels.ndim != 2 or labels.dtype != np.uint8:
        raise ValueError(f"expected a 2-D uint8 label map, got shape {labels.shape} dtype {labels.dtype}")
    image = Image.fromarray(np.ascontiguousarray(labels))  # mode "L"
    image.putpalette(PALETTE)  # turns "L" into "P" without touching the indices
    image.save(os.fspath(path), format="PNG")
