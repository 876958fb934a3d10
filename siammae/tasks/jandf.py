"""Region (J) and boundary (F) measures, exactly as the official DAVIS-2017 semi-supervised evaluator.

Definitions (davisvideochallenge/davis2017-evaluation, ``davis2017/metrics.py``, ``utils.py``,
``evaluation.py``):

- Objects are ids 1..K, K = the largest id in the first ground-truth frame. Void (255) is background:
  the semi-supervised task does *not* ignore void pixels.
- The first and the last frame of each sequence are not scored.
- J = |P & G| / |P | G| per object and frame; 1 when both are empty.
- F: one-pixel boundary maps (a pixel is on the boundary when it differs from its right, lower or
  lower-right neighbour; the last row / column compare along the border only, the corner pixel is
  never a boundary), each matched against the other dilated by a disk of radius
  r = ceil(0.008 * sqrt(H^2 + W^2)) (``|dy|^2 + |dx|^2 <= r^2``). Precision and recall are the matched
  fractions; F = 2PR / (P + R); no boundary in either -> 1, in one only -> 0.
- Per object: mean, recall = fraction of frames > 0.5, decay = mean of the first minus the last of
  four (overlapping, as in the reference) bins of the scored frames.
- Global: plain means over all objects of all sequences; J&F = (J-Mean + F-Mean) / 2.

Speed: J for every object and frame comes from one ``bincount``; the disk dilation is replaced by an
exact Euclidean distance transform (a pixel lies in the dilation iff its distance to the nearest
boundary pixel is <= r), computed only on the box around the two boundaries. (Scoring times:
docs/benchmarks.md.)
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
from scipy import ndimage

from siammae.tasks.davis_files import DavisError, load_sequence, read_annotation, read_labels, select_sequences

BOUNDARY_FRACTION = 0.008
GLOBAL_COLUMNS = ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
SEQUENCE_COLUMNS = ["Sequence", "J-Mean", "F-Mean"]


# ----------------------------------------------------------------------------- per frame


def jaccard(gt: np.ndarray, pred: np.ndarray, num_objects: int) -> np.ndarray:
    """gt, pred: (T, H, W) integer ids (gt with void already 0) -> J (num_objects, T).

    Ids above ``num_objects`` in gt belong to no tracked object (background for every object).
    """
    T = gt.shape[0]
    n = num_objects + 1  # ids are uint8, so n * n < 2**16
    code = np.where(gt > num_objects, 0, gt).astype(np.uint16) * n + pred.astype(np.uint16)
    counts = np.stack([np.bincount(c.ravel(), minlength=n * n) for c in code]).reshape(T, n, n)
    inter = counts[:, np.arange(n), np.arange(n)][:, 1:]  # (T, K)
    area_g = counts.sum(axis=2)[:, 1:]
    area_p = counts.sum(axis=1)[:, 1:]
    union = area_g + area_p - inter
    j = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
    return j.T


def boundary_map(mask: np.ndarray) -> np.ndarray:
    """(..., H, W) bool -> (..., H, W) bool one-pixel boundaries (the reference's ``_seg2bmap``)."""
    m = mask.astype(bool)
    right = np.zeros_like(m)
    right[..., :, :-1] = m[..., :, 1:]
    below = np.zeros_like(m)
    below[..., :-1, :] = m[..., 1:, :]
    diag = np.zeros_like(m)
    diag[..., :-1, :-1] = m[..., 1:, 1:]
    b = (m != right) | (m != below) | (m != diag)
    # Along the last row only the right neighbour counts, along the last column only the one below.
    b[..., -1, :] = m[..., -1, :] != right[..., -1, :]
    b[..., :, -1] = m[..., :, -1] != below[..., :, -1]
    b[..., -1, -1] = False
    return b


def boundary_radius(height: int, width: int) -> int:
    """Match tolerance in pixels: ceil(0.008 * image diagonal) (8 for 480x854)."""
    return int(math.ceil(BOUNDARY_FRACTION * math.hypot(height, width)))


def _matched(src: np.ndarray, dst: np.ndarray, radius: int) -> int:
    """How many pixels of boundary ``src`` lie within ``radius`` (Euclidean) of a pixel of ``dst``."""
    # distance_transform_edt gives the distance to the nearest zero, so zeros mark dst's pixels.
    dist = ndimage.distance_transform_edt(~dst)
    return int(np.count_nonzero(src & (dist <= radius)))


def boundary_f(pred_b: np.ndarray, gt_b: np.ndarray, radius: int) -> float:
    """F of two boundary maps (H, W) with tolerance ``radius``."""
    n_pred, n_gt = int(pred_b.sum()), int(gt_b.sum())
    if n_pred == 0 and n_gt == 0:
        return 1.0
    if n_pred == 0 or n_gt == 0:
        return 0.0
    # Only the box around both boundaries matters: every pixel counted lies in it, and the nearest
    # pixel of the other boundary does too.
    rows = np.flatnonzero((pred_b | gt_b).any(axis=1))
    cols = np.flatnonzero((pred_b | gt_b).any(axis=0))
    box = (slice(rows[0], rows[-1] + 1), slice(cols[0], cols[-1] + 1))
    p, g = pred_b[box], gt_b[box]
    precision = _matched(p, g, radius) / n_pred
    recall = _matched(g, p, radius) / n_gt
    if precision + recall == 0:
        return 0.0
    return 2 * precision * recall / (precision + recall)


def f_measure(gt: np.ndarray, pred: np.ndarray, num_objects: int) -> np.ndarray:
    """gt, pred: (T, H, W) ids -> F (num_objects, T)."""
    radius = boundary_radius(*gt.shape[-2:])
    out = np.zeros((num_objects, gt.shape[0]))
    for k in range(1, num_objects + 1):
        gt_b = boundary_map(gt == k)
        pred_b = boundary_map(pred == k)
        for t in range(gt.shape[0]):
            out[k - 1, t] = boundary_f(pred_b[t], gt_b[t], radius)
    return out


# ----------------------------------------------------------------------------- statistics


def statistics(values: np.ndarray) -> tuple[float, float, float]:
    """Per-object (mean, recall, decay) over the scored frames, as the reference's ``db_statistics``.

    Decay: the frames are split at ``round(linspace(1, n, 5)) - 1`` and bin i covers indices
    ids[i]..ids[i+1] *inclusive* (neighbouring bins share a frame); decay = mean(bin 0) - mean(bin 3).
    """
    values = np.asarray(values, dtype=np.float64)
    mean = float(np.mean(values))
    recall = float(np.mean(values > 0.5))
    ids = (np.round(np.linspace(1, len(values), 5) + 1e-10) - 1).astype(np.int64)
    first = values[ids[0] : ids[1] + 1]
    last = values[ids[3] : ids[4] + 1]
    decay = float(np.mean(first) - np.mean(last))
    return mean, recall, decay


# ----------------------------------------------------------------------------- sequences


@dataclass
class ObjectScores:
    """Per-frame J and F of one object over the scored frames (first and last excluded)."""

    name: str  # "<seq>_<id>", the official per-object row name
    j: np.ndarray
    f: np.ndarray


def score_sequence(name: str, gt: np.ndarray, pred: np.ndarray, num_objects: int) -> List[ObjectScores]:
    """gt and pred (T, H, W) for the scored frames only -> one ObjectScores per object 1..num_objects."""
    j = jaccard(gt, pred, num_objects)
    f = f_measure(gt, pred, num_objects)
    return [ObjectScores(f"{name}_{k + 1}", j[k], f[k]) for k in range(num_objects)]


def _read_prediction(path: Path, shape: tuple, num_objects: int) -> np.ndarray:
    if not path.is_file():
        raise DavisError(f"missing prediction: {path}")
    labels = read_labels(path)
    if labels.shape != shape:
        raise DavisError(f"{path}: size {labels.shape[1]}x{labels.shape[0]}, ground truth is {shape[1]}x{shape[0]}")
    top = int(labels.max())
    if top > num_objects:
        raise DavisError(f"{path}: object id {top} but the first frame has only {num_objects} object(s)")
    return labels


def evaluate_sequence(davis_root, results_dir, name: str, resolution: str = "480p") -> List[ObjectScores]:
    """Score ``results_dir/<name>/*.png`` against the sequence's annotations.

    The scored frames are those with an annotation, minus the first and the last (as the reference).
    """
    seq = load_sequence(davis_root, name, resolution)
    ann = seq.annotations
    if len(ann) < 3:
        raise DavisError(f"sequence '{name}' has {len(ann)} annotation(s); need at least 3 to score")
    if len(ann) != len(seq.frames):
        raise DavisError(f"sequence '{name}': {len(seq.frames)} frames but {len(ann)} annotations")
    num_objects = int(read_annotation(ann[0]).max())
    res_dir = Path(results_dir) / name
    if not res_dir.is_dir():
        raise DavisError(f"no predictions for sequence '{name}': {res_dir} not found")
    gts, preds = [], []
    for path in ann[1:-1]:
        gt = read_annotation(path)
        gts.append(gt)
        preds.append(_read_prediction(res_dir / path.name, gt.shape, num_objects))
    if len({g.shape for g in gts}) > 1:
        raise DavisError(f"sequence '{name}': annotations of different sizes")
    return score_sequence(name, np.stack(gts), np.stack(preds), num_objects)


@dataclass
class Evaluation:
    objects: List[ObjectScores]

    def object_rows(self) -> List[dict]:
        rows = []
        for o in self.objects:
            jm, jr, jd = statistics(o.j)
            fm, fr, fd = statistics(o.f)
            rows.append(dict(name=o.name, jm=jm, jr=jr, jd=jd, fm=fm, fr=fr, fd=fd))
        return rows

    def global_row(self) -> dict:
        """The official global row: means over objects (not sequences)."""
        rows = self.object_rows()
        if not rows:
            raise DavisError("no objects to score")
        mean = {k: float(np.mean([r[k] for r in rows])) for k in ("jm", "jr", "jd", "fm", "fr", "fd")}
        values = [(mean["jm"] + mean["fm"]) / 2, mean["jm"], mean["jr"], mean["jd"], mean["fm"], mean["fr"], mean["fd"]]
        return dict(zip(GLOBAL_COLUMNS, values))


def evaluate(
    davis_root,
    results_dir,
    split: str = "val",
    sequences: Optional[Sequence[str]] = None,
    resolution: str = "480p",
    progress: Optional[Callable[[str], None]] = None,
) -> Evaluation:
    """Score every selected sequence; ``progress(name)`` is called after each."""
    objects: List[ObjectScores] = []
    for name in select_sequences(davis_root, split, sequences):
        objects += evaluate_sequence(davis_root, results_dir, name, resolution)
        if progress is not None:
            progress(name)
    return Evaluation(objects)


# ----------------------------------------------------------------------------- output


def write_csvs(evaluation: Evaluation, out_dir, split: str = "val") -> tuple[Path, Path]:
    """``global_results-<split>.csv`` and ``per-sequence_results-<split>.csv``, the official columns
    and three decimals (fractions in [0, 1], as the official tool writes them). Always rewritten."""
    out_dir = Path(out_dir)
    g_path = out_dir / f"global_results-{split}.csv"
    s_path = out_dir / f"per-sequence_results-{split}.csv"
    g = evaluation.global_row()
    with open(g_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(GLOBAL_COLUMNS)
        w.writerow([f"{g[c]:.3f}" for c in GLOBAL_COLUMNS])
    with open(s_path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(SEQUENCE_COLUMNS)
        for r in evaluation.object_rows():
            w.writerow([r["name"], f"{r['jm']:.3f}", f"{r['fm']:.3f}"])
    return g_path, s_path


def format_table(evaluation: Evaluation, split: str = "val") -> str:
    """A plain-text table: the global row, then J-Mean / F-Mean per object."""
    g = evaluation.global_row()
    width = max([len(c) for c in GLOBAL_COLUMNS] + [8])
    lines = [f"Global results ({split}, {len(evaluation.objects)} objects)"]
    lines.append("  ".join(c.rjust(width) for c in GLOBAL_COLUMNS))
    lines.append("  ".join(f"{g[c]:.3f}".rjust(width) for c in GLOBAL_COLUMNS))
    rows = evaluation.object_rows()
    name_w = max(len("Sequence"), *(len(r["name"]) for r in rows))
    lines.append("")
    lines.append(f"{'Sequence'.ljust(name_w)}  {'J-Mean':>7}  {'F-Mean':>7}")
    for r in rows:
        lines.append(f"{r['name'].ljust(name_w)}  {r['jm']:7.3f}  {r['fm']:7.3f}")
    return "\n".join(lines)
