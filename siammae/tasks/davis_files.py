"""DAVIS-2017 on disk: reading sequences, frames and annotations, writing predicted masks, the colours.

Layout (``resolution`` is ``480p`` or ``Full-Resolution``)::

    ROOT/JPEGImages/<resolution>/<seq>/00000.jpg ...   frames, sorted by name
    ROOT/Annotations/<resolution>/<seq>/00000.png ...  palette PNGs: 0 background, 1..K objects, 255 void
    ROOT/ImageSets/2017/<split>.txt                    one sequence name a line

Predictions are palette PNGs at exactly the annotation size, named like the frames, in ``OUT/<seq>/``.
Everything that is wrong on disk is a :class:`DavisError` with a one-line message naming the file: the
official evaluator instead exits 0 without writing results on some of these (a missing frame, an unknown
object id), which is how stale numbers end up in papers.

Annotations and predictions are palette ("P" mode) PNGs whose pixel values are object ids. The
evaluator reads the indices, never the colours, but people look at these files, so they carry the
standard DAVIS / Pascal VOC colour map (:data:`PALETTE`), computed here, never downloaded at run time.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from siammae.errors import SiammaeError

VOID = 255


class DavisError(SiammaeError):
    """Something about a DAVIS folder or a results folder that the user has to fix; one line."""


@dataclass(frozen=True)
class DavisSequence:
    """One sequence's files. ``annotations`` may hold only the first frame's (test-dev)."""

    name: str
    frames: List[Path]
    annotations: List[Path]

    @property
    def first_annotation(self) -> Path:
        return self.annotations[0]


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise DavisError(f"{what} not found: {path}")
    return path


def list_sequences(root: str | os.PathLike, split: str = "val") -> List[str]:
    """Sequence names from ``ImageSets/2017/<split>.txt`` (order kept, blank lines skipped)."""
    root = _need_dir(Path(root), "DAVIS folder")
    listing = root / "ImageSets" / "2017" / f"{split}.txt"
    if not listing.is_file():
        raise DavisError(f"sequence list for split '{split}' not found: {listing}")
    names = [line.strip() for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise DavisError(f"sequence list {listing} is empty")
    return names


def select_sequences(
    root: str | os.PathLike, split: str = "val", sequences: Optional[Sequence[str]] = None
) -> List[str]:
    """The split's sequences, or the named subset of them (an unknown name is an error)."""
    names = list_sequences(root, split)
    if not sequences:
        return names
    unknown = [s for s in sequences if s not in names]
    if unknown:
        raise DavisError(f"sequence(s) not in ImageSets/2017/{split}.txt: {', '.join(unknown)}")
    return list(sequences)


def load_sequence(root: str | os.PathLike, name: str, resolution: str = "480p") -> DavisSequence:
    """Frame and annotation paths of one sequence; needs at least the first frame's annotation."""
    root = Path(root)
    image_dir = _need_dir(root / "JPEGImages" / resolution, "frames folder") / name
    label_dir = _need_dir(root / "Annotations" / resolution, "annotations folder") / name
    _need_dir(image_dir, f"frames of sequence '{name}'")
    _need_dir(label_dir, f"annotations of sequence '{name}'")
    frames = sorted(image_dir.glob("*.jpg"))
    if not frames:
        raise DavisError(f"no .jpg frames in {image_dir}")
    annotations = sorted(label_dir.glob("*.png"))
    if not annotations or annotations[0].stem != frames[0].stem:
        raise DavisError(f"first-frame annotation missing: {label_dir / (frames[0].stem + '.png')}")
    return DavisSequence(name, frames, annotations)


def require_annotations(seqs: List[DavisSequence], hint: str = "") -> None:
    """J&F needs a ground-truth mask for every frame (the val split has them, test-dev does not)."""
    missing = [s.name for s in seqs if len(s.annotations) != len(s.frames)]
    if missing:
        raise DavisError(
            f"sequence(s) without an annotation for every frame cannot be scored: "
            f"{', '.join(missing[:5])}{'; ' + hint if hint else ''}"
        )


def read_labels(path: Path) -> np.ndarray:
    """A palette/greyscale PNG as its (H, W) uint8 indices; an RGB PNG is an error, not a guess."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("P", "L"):
                raise DavisError(f"{path}: a {im.mode} image; expected an indexed ('P') PNG of object ids")
            return np.asarray(im)
    except FileNotFoundError:
        raise DavisError(f"missing mask: {path}") from None
    except OSError as e:
        raise DavisError(f"{path}: cannot be read as a PNG ({e})") from None


def read_annotation(path: Path) -> np.ndarray:
    """Ground-truth ids with void (255) turned into background, as the semi-supervised evaluator does."""
    labels = read_labels(path).copy()
    labels[labels == VOID] = 0
    return labels


def write_labels(path: Path, labels: np.ndarray) -> None:
    """Write predicted ids as a palette PNG (the standard DAVIS colours, indices unchanged)."""
    save_indexed_png(path, np.asarray(labels, dtype=np.uint8))


# ----------------------------------------------------------------------------- colours


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
