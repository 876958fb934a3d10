"""JHMDB pose propagation: the dataset on disk, joints as heat maps on the token grid, PCK.

Layout (the JHMDB release, unpacked under one ROOT)::

    ROOT/Rename_Images/<action>/<video>/00001.png ...            frames, 320x240, numbered from 1
    ROOT/joint_positions/<action>/<video>/joint_positions.mat    field ``pos_img``: 2 x 15 x T
    ROOT/splits/<action>_test_split1.txt                          optional: ``<video>.avi <id>``, 2 = test

``pos_img`` holds 1-based (x, y) pixel positions of 15 joints (:data:`JOINTS`) in every frame; we keep
them 0-based (``pos_img - 1``, as CRW and UVC do) as ``(T, 15, 2)`` arrays. JHMDB annotates every joint
in every frame (a fitted puppet), also joints outside the image; there is no visibility flag.

Video lists. The standard test set is split 1's 268 test videos. Two list formats circulate, both read
here, one video a line, blank lines and ``#`` comments skipped:

* UVC ``testlist_split1.txt`` and CropMAE ``jhmdb_vallist.txt`` (268 lines each):
  ``<...>/joint_positions/<action>/<video>/joint_positions.mat <...>/Rename_Images/<action>/<video>``;
* CRW (ajabri/videowalk ``data/jhmdb.py``, ``eval/eval_pck.py``): the same two paths the other way round;

and a line may also be a bare ``<action>/<video>``. The paths in those lists are from their authors'
machines, so only their last ``<action>/<video>`` is kept and files are always read under ROOT. With
no list: the split-1 test videos of ``ROOT/splits`` if that folder is there, otherwise every video.

Conventions, all from CRW's ``data/jhmdb.py`` + ``utils/test_utils.py`` + ``eval/eval_pck.py`` (UVC's
and CropMAE's ``eval_pck.py`` are the same script):

* Grid: a joint at pixel p sits at grid position ``p / stride``, stride = frame size / grid size per
  axis (CRW resizes frames to 320x320, so the stride is not square). Cell (i, j) *is* grid position
  (i, j), i.e. pixel ``(i * sy, j * sx)``: cell indices, not cell centres (not ``index + 0.5``).
* Heat map: one unnormalised Gaussian per joint (peak 1), sigma 0.5 cells. CRW centres it on a whole
  cell, ``trunc(p - 1.5) + 2``: the nearest cell, but one further right/down when p < 1.5 (``int()``
  truncates toward zero), and cuts it to the 4x4 cells at offsets -2..+1; that is the default here.
  ``subcell=True`` instead centres it exactly at p and cuts it at 3 sigma, so a first-frame position
  survives encoding to ~0.1 cell instead of up to 0.5 cell (our option, not the reference's). A joint
  whose window misses the grid (off frame 0) gets no mass.
* Background: channel 0 is 1 on cells where no joint has any mass and 0 elsewhere (CRW).
* Decoding: per joint, the 3 cells with the highest propagated values; their grid positions averaged,
  weighted by those values, times the stride. A joint whose propagated map is all zero has no
  prediction (CRW writes -1; here NaN).
* Which joints are scored: CRW/UVC score joint j in frame t iff it *has a prediction* there, which in
  practice means its frame-0 heat map touched the grid; a joint that leaves the frame later is still
  scored. Frame 0 is never scored. ``visible`` (here: the joint is annotated, always true in JHMDB)
  can only remove more.
* PCK@a: correct iff ``|pred - gt| / (0.6 * diag) <= a``, diag = diagonal of the box around the
  ground truth of that frame's scored joints. A degenerate box (one joint) scores as wrong.
* Averaging: every scored (video, frame) instance of a joint is pooled over the whole set, PCK is
  taken per joint, and the figure is the mean over the 15 joints (not the pooled fraction over all
  joints; not a mean over videos). Per-video figures use the same rule within the video.
* Thresholds: 0.1 and 0.2 are the headline; CRW prints 0.1..0.5, we keep the curve 0.01..0.50.
"""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from siammae.errors import SiammaeError
from siammae.files import write_atomic
from siammae.propagate.features import FeatureExtractor
from siammae.propagate.loop import propagate_video
from siammae.propagate.protocol import Protocol
from siammae.tasks.common import refuse_first_frame_scored, task_record

JOINTS = (
    "neck",
    "belly",
    "face",
    "right shoulder",
    "left shoulder",
    "right hip",
    "left hip",
    "right elbow",
    "left elbow",
    "right knee",
    "left knee",
    "right wrist",
    "left wrist",
    "right ankle",
    "left ankle",
)
NUM_JOINTS = len(JOINTS)
ALPHAS = tuple(i / 100 for i in range(1, 51))  # 0.01 .. 0.50; 10 / 100 is exactly the literal 0.1
REPORT_ALPHAS = (0.1, 0.2, 0.3, 0.4, 0.5)  # the thresholds CRW's eval_pck.py prints
BOX_SCALE = 0.6  # PCK normaliser: 0.6 x the diagonal of the joints' box (CRW/UVC)
LIST_NAME = "testlist.txt"  # the list write_jhmdb appends to
AVERAGING = "pooled per joint over all scored (video, frame) instances, then the mean over joints (CRW/UVC eval_pck.py)"


class JhmdbError(SiammaeError):
    """Something about a JHMDB folder or list the user has to fix; one line naming the file."""


@dataclass
class JhmdbVideo:
    """One video: frame paths in order and the ground truth of every frame."""

    name: str  # "<action>/<video>"
    frames: List[Path]
    joints: np.ndarray  # (T, 15, 2) float64, 0-based (x, y) pixels
    visible: np.ndarray  # (T, 15) bool: annotated (finite); all True in JHMDB
    size: Optional[Tuple[int, int]] = None  # (H, W) of the frames


# ----------------------------------------------------------------------------- lists


def _name_from(token: str, is_mat: bool) -> Optional[str]:
    """``<action>/<video>`` from a list path: the mat's two parent folders, or a folder's last two."""
    parts = PurePosixPath(token.replace("\\", "/")).parts
    parts = parts[-3:-1] if is_mat else parts[-2:]
    return "/".join(parts) if len(parts) == 2 else None


def _parse_line(line: str, where: str) -> str:
    tokens = line.split()
    mats = [t for t in tokens if t.lower().endswith(".mat")]
    if len(tokens) > 2 or (len(tokens) == 2 and len(mats) != 1):
        raise JhmdbError(
            f"{where}: expected '<joint_positions.mat> <image folder>' (either order) or "
            f"'<action>/<video>', got: {line.strip()}"
        )
    names = {_name_from(t, t in mats) for t in tokens}
    if None in names:
        raise JhmdbError(f"{where}: cannot tell '<action>/<video>' from: {line.strip()}")
    if len(names) != 1:
        raise JhmdbError(f"{where}: the .mat and the image folder name different videos: {line.strip()}")
    return names.pop()


def read_list(list_file) -> List[str]:
    """Video names ``<action>/<video>`` from a UVC/CropMAE, CRW or plain list (see module doc)."""
    path = Path(list_file)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JhmdbError(f"JHMDB list file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise JhmdbError(f"{path}: cannot be read as a text list ({e})") from None
    names = [
        _parse_line(line, f"{path} line {n}")
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not names:
        raise JhmdbError(f"JHMDB list file is empty: {path}")
    return names


def _split_test_videos(splits: Path, split: int = 1) -> List[str]:
    """JHMDB's own split files: ``<action>_test_split<k>.txt``, lines ``<video>.avi <id>``, 2 = test."""
    suffix = f"_test_split{split}.txt"
    names = []
    for path in sorted(splits.glob(f"*{suffix}")):
        action = path.name[: -len(suffix)]
        for n, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            tokens = line.split()
            if len(tokens) != 2:
                if tokens:
                    raise JhmdbError(f"{path} line {n}: expected '<video>.avi <id>', got: {line.strip()}")
                continue
            if tokens[1] == "2":
                names.append(f"{action}/{Path(tokens[0]).stem}")
    return names


def list_videos(root, list_file=None) -> List[str]:
    """The videos to score: ``list_file``'s, else split 1's test videos from ``ROOT/splits``, else all
    videos under ``ROOT/joint_positions`` (sorted). Duplicates are an error (results are per name)."""
    root = _need_dir(Path(root), "JHMDB folder")
    if list_file is not None:
        names = read_list(list_file)
    else:
        names = _split_test_videos(root / "splits") if (root / "splits").is_dir() else []
        if not names:
            names = sorted(
                f"{p.parent.parent.name}/{p.parent.name}"
                for p in (root / "joint_positions").glob("*/*/joint_positions.mat")
            )
        if not names:
            raise JhmdbError(f"no videos in {root / 'joint_positions'} (expected <action>/<video>/joint_positions.mat)")
    dupes = [name for name, count in Counter(names).items() if count > 1]
    if dupes:
        raise JhmdbError(f"video(s) listed twice in {list_file or root}: {', '.join(dupes[:5])}")
    return names


# ----------------------------------------------------------------------------- videos


def _need_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        raise JhmdbError(f"{what} not found: {path}")
    return path


def read_pos_img(path: Path) -> np.ndarray:
    """``pos_img`` of a ``joint_positions.mat`` as 0-based (T, 15, 2) float64 (x, y) pixels."""
    from scipy.io import loadmat

    if not path.is_file():
        raise JhmdbError(f"joint positions not found: {path}")
    try:
        mat = loadmat(str(path))
    except Exception as e:  # scipy raises many types for a file that is not a (v5) .mat
        raise JhmdbError(f"{path}: cannot be read as a MATLAB file ({type(e).__name__}: {e})") from None
    if "pos_img" not in mat:
        fields = ", ".join(k for k in mat if not k.startswith("__")) or "none"
        raise JhmdbError(f"{path}: no 'pos_img' field (fields: {fields})")
    pos = mat["pos_img"]
    shape = "x".join(map(str, pos.shape))
    if pos.ndim == 2:  # MATLAB drops a trailing singleton dimension: a one-frame video is 2 x 15
        pos = pos[:, :, None]
    if pos.ndim != 3 or pos.shape[:2] != (2, NUM_JOINTS) or pos.shape[2] < 1 or pos.dtype.kind not in "iuf":
        raise JhmdbError(f"{path}: 'pos_img' is {pos.dtype} {shape}; expected numbers, 2 x {NUM_JOINTS} x frames")
    return np.ascontiguousarray(pos.transpose(2, 1, 0), dtype=np.float64) - 1.0


def _frame_paths(folder: Path) -> List[Path]:
    """The folder's PNGs in frame order: numerically when every stem is a number (00001.png ...)."""
    frames = [p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file()]
    if not frames:
        raise JhmdbError(f"no .png frames in {folder}")
    if all(p.stem.isdigit() for p in frames):
        return sorted(frames, key=lambda p: int(p.stem))
    return sorted(frames)


def _frame_size(frames: Sequence[Path]) -> Tuple[int, int]:
    """(H, W) shared by all frames; reads only the headers, so an unreadable frame fails here, first."""
    from PIL import Image

    size = None
    for path in frames:
        try:
            with Image.open(path) as im:
                this = (im.height, im.width)
        except (OSError, ValueError) as e:
            raise JhmdbError(f"{path}: cannot be read as an image ({e})") from None
        if size is not None and this != size:
            raise JhmdbError(f"{path}: {this[1]}x{this[0]} while the video's first frame is {size[1]}x{size[0]}")
        size = this
    return size


def load_video(root, name: str) -> JhmdbVideo:
    """One video's frames and ground truth, every file checked (see :func:`load_videos`)."""
    root = Path(root)
    folder = _need_dir(root / "Rename_Images" / name, f"frames of video '{name}'")
    frames = _frame_paths(folder)
    mat = root / "joint_positions" / name / "joint_positions.mat"
    joints = read_pos_img(mat)
    if len(joints) != len(frames):
        raise JhmdbError(f"{mat}: 'pos_img' has {len(joints)} frames but {folder} has {len(frames)} .png")
    size = _frame_size(frames)
    return JhmdbVideo(name, frames, joints, np.isfinite(joints).all(-1), size)


def load_videos(root, list_file=None) -> List[JhmdbVideo]:
    """Every listed video (:func:`list_videos`), loaded and checked before any work is done."""
    root = _need_dir(Path(root), "JHMDB folder")
    _need_dir(root / "Rename_Images", "JHMDB frames folder")
    _need_dir(root / "joint_positions", "JHMDB joint positions folder")
    return [load_video(root, name) for name in list_videos(root, list_file)]


# ----------------------------------------------------------------------------- heat maps


def _axis_profile(centre: np.ndarray, lo: np.ndarray, hi: np.ndarray, cells: int, sigma: float) -> np.ndarray:
    """(J, cells): exp(-d^2 / 2 sigma^2) from each joint's centre, zero outside [lo, hi)."""
    idx = np.arange(cells, dtype=np.float64)[None]
    inside = (idx >= lo[:, None]) & (idx < hi[:, None])
    return np.exp(-((idx - centre[:, None]) ** 2) / (2 * sigma * sigma)) * inside


def joint_heatmaps(
    joints, visible, grid: Tuple[int, int], stride: Tuple[float, float], sigma: float = 0.5, subcell: bool = False
) -> torch.Tensor:
    """Frame-0 labels on the token grid: (1 + J, h * w) float32; channel 0 background, then one
    Gaussian per joint (module doc). ``joints`` (J, 2) 0-based (x, y) pixels, ``visible`` (J,) bool
    (an invisible or non-finite joint gets an empty channel), ``grid`` (h, w), ``stride`` (sy, sx)
    pixels per cell."""
    joints = np.asarray(joints, dtype=np.float64).reshape(-1, 2)
    drawn = np.asarray(visible, dtype=bool).reshape(-1) & np.isfinite(joints).all(-1)
    h, w = grid
    pos = np.where(drawn[:, None], joints, 0.0) / np.array([stride[1], stride[0]], dtype=np.float64)
    if subcell:
        ys, xs = np.arange(h, dtype=np.float64), np.arange(w, dtype=np.float64)
        d2 = (xs[None, None, :] - pos[:, 0, None, None]) ** 2 + (ys[None, :, None] - pos[:, 1, None, None]) ** 2
        maps = np.exp(-d2 / (2 * sigma * sigma)) * (d2 <= (3 * sigma) ** 2)
    else:
        # CRW's drawing: window [trunc(p - 3s), trunc(p + 3s + 1)), peak at its start + floor((6s + 1) / 2)
        lo, hi = np.trunc(pos - 3 * sigma), np.trunc(pos + 3 * sigma + 1)
        centre = lo + np.floor((6 * sigma + 1) / 2)
        gx = _axis_profile(centre[:, 0], lo[:, 0], hi[:, 0], w, sigma)
        gy = _axis_profile(centre[:, 1], lo[:, 1], hi[:, 1], h, sigma)
        maps = gy[:, :, None] * gx[:, None, :]  # exp(-(dx^2 + dy^2) / 2s^2) is separable
    maps = maps * drawn[:, None, None]
    background = (maps.sum(0) == 0).astype(np.float64)
    out = np.concatenate([background[None], maps]).reshape(1 + len(joints), h * w)
    return torch.from_numpy(out.astype(np.float32))


def decode_joints(soft, grid: Tuple[int, int], stride: Tuple[float, float], topk: int = 3) -> np.ndarray:
    """Propagated labels (1 + J, h * w) (channel 0 background, ignored) -> (J, 2) float64 (x, y) pixels:
    the value-weighted mean grid position of each joint's ``topk`` best cells, times the stride. NaN for
    a joint whose map holds no mass (CRW: -1, not scored)."""
    h, w = grid
    maps = torch.as_tensor(soft).detach().to("cpu", torch.float64).reshape(-1, h * w)[1:]
    vals, idx = maps.topk(min(topk, h * w), dim=1)
    weights = vals / vals.sum(1, keepdim=True)
    x = ((idx % w).double() * weights).sum(1) * stride[1]
    y = (torch.div(idx, w, rounding_mode="floor").double() * weights).sum(1) * stride[0]
    out = torch.stack([x, y], dim=1).numpy()
    out[(maps.sum(1) <= 0).numpy()] = np.nan
    return out


# ----------------------------------------------------------------------------- PCK


def _summary(correct: np.ndarray, total: np.ndarray, alphas: Sequence[float], **extra) -> dict:
    """Counts -> figures: per threshold, the mean over joints that have a scored instance of each
    joint's fraction correct (None when no joint was scored)."""
    has = total > 0
    fractions = correct[:, has] / total[has]
    values = {f"{a:g}": (float(f.mean()) if has.any() else None) for a, f in zip(alphas, fractions)}
    return dict(
        extra,
        scored=int(total.sum()),
        pck=values,
        alphas=[float(a) for a in alphas],
        correct=correct.tolist(),
        total=total.tolist(),
    )


def frame_scales(gt: np.ndarray, scored: np.ndarray) -> np.ndarray:
    """(T,) PCK normaliser per frame: 0.6 x diagonal of the box around ``gt`` (T, J, 2) of the joints
    ``scored`` (T, J) in that frame; 0 for a frame with fewer than two distinct scored positions. As CRW's
    ``eval_pck.py``, the box's right and bottom edges start at -1, so a frame whose scored joints all lie
    left of x = -1 (or above y = -1) gets a box reaching to -1."""
    lo = np.where(scored[..., None], gt, np.inf).min(1)
    hi = np.maximum(np.where(scored[..., None], gt, -np.inf).max(1), -1.0)
    side = np.where(scored.any(1)[:, None], hi - lo, 0.0)
    return BOX_SCALE * np.sqrt(side[:, 0] * side[:, 0] + side[:, 1] * side[:, 1])


def pck(pred, gt, visible, alphas: Sequence[float] = ALPHAS) -> dict:
    """PCK of one video. ``pred``, ``gt`` (T, J, 2) pixels, ``visible`` (T, J) bool. A joint is scored
    in frame t > 0 iff visible, with a finite ground truth and a prediction (not NaN). Returns
    ``{"frames", "scored", "pck": {"0.1": fraction, ...}, "alphas", "correct" (A x J counts),
    "total" (J counts)}``; :func:`aggregate` pools these over videos."""
    pred, gt = np.asarray(pred, dtype=np.float64), np.asarray(gt, dtype=np.float64)
    visible = np.asarray(visible, dtype=bool)
    if pred.shape != gt.shape or pred.ndim != 3 or pred.shape[2] != 2 or visible.shape != gt.shape[:2]:
        raise ValueError(
            f"pck: pred {pred.shape}, gt {gt.shape}, visible {visible.shape}; expected (T, J, 2), (T, J, 2), (T, J)"
        )
    scored = visible & np.isfinite(pred).all(-1) & np.isfinite(gt).all(-1)
    scored[:1] = False  # frame 0 is the given ground truth
    diff = pred - gt
    dist = np.sqrt(diff[..., 0] * diff[..., 0] + diff[..., 1] * diff[..., 1])
    with np.errstate(divide="ignore", invalid="ignore"):  # a zero box gives inf / NaN: never correct
        normed = dist / frame_scales(gt, scored)[:, None]
    alphas = tuple(alphas)
    correct = np.stack([((normed <= a) & scored).sum(0) for a in alphas]).astype(np.int64)
    return _summary(correct, scored.sum(0).astype(np.int64), alphas, frames=int(len(gt)))


def aggregate(results: Sequence[dict]) -> dict:
    """Pool per-video :func:`pck` results into the set's figures (module doc, "Averaging"), with
    ``videos``, ``frames`` and ``per_joint`` (PCK at :data:`REPORT_ALPHAS` by joint name)."""
    if not results:
        raise ValueError("aggregate: no per-video results")
    alphas = results[0]["alphas"]
    if any(r["alphas"] != alphas for r in results):
        raise ValueError("aggregate: the videos were scored at different thresholds")
    correct = np.sum([np.asarray(r["correct"], dtype=np.int64) for r in results], axis=0)
    total = np.sum([np.asarray(r["total"], dtype=np.int64) for r in results], axis=0)
    out = _summary(correct, total, alphas, videos=len(results), frames=sum(r["frames"] for r in results))
    names = JOINTS if len(total) == NUM_JOINTS else [str(j) for j in range(len(total))]
    keep = [i for i, a in enumerate(alphas) if a in REPORT_ALPHAS]
    out["per_joint"] = {
        name: {f"{alphas[i]:g}": (correct[i, j] / total[j] if total[j] else None) for i in keep}
        for j, name in enumerate(names)
    }
    return out


def _cell(value) -> str:
    return "" if value is None else f"{value:.4f}"


def write_results(out_dir, per_video: Dict[str, dict], overall: dict) -> Tuple[Path, Path]:
    """``pck.csv`` (a row per video, then ``overall``; PCK at the reported thresholds, as fractions)
    and ``pck.json`` (the same with the whole curve and PCK per joint)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    keys = [f"{a:g}" for a in overall["alphas"] if a in REPORT_ALPHAS]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["video", "frames", "scored"] + [f"PCK@{k}" for k in keys])
    for name, r in list(per_video.items()) + [("overall", overall)]:
        writer.writerow([name, r["frames"], r["scored"]] + [_cell(r["pck"][k]) for k in keys])
    csv_path = write_atomic(out_dir / "pck.csv", buffer.getvalue())
    record = dict(
        averaging=AVERAGING,
        box=f"{BOX_SCALE} x diagonal of the scored joints' box",
        alphas=overall["alphas"],
        overall={k: overall[k] for k in ("videos", "frames", "scored", "pck", "per_joint")},
        videos={name: {k: r[k] for k in ("frames", "scored", "pck")} for name, r in per_video.items()},
    )
    json_path = write_atomic(out_dir / "pck.json", json.dumps(record, indent=1) + "\n")
    return csv_path, json_path


# ----------------------------------------------------------------------------- synthetic sets


def write_jhmdb(
    root, name: str, frames: Sequence[np.ndarray], joints, action: str = "synthetic", list_name: str = LIST_NAME
) -> str:
    """Write one video in the JHMDB layout under ``root``: ``Rename_Images/<action>/<name>/00001.png``
    ..., ``joint_positions/<action>/<name>/joint_positions.mat`` (``pos_img`` 2 x 15 x T, 1-based), and
    append its UVC-format line to ``root/<list_name>``. ``joints`` (T, 15, 2) 0-based (x, y) pixels.
    Returns ``"<action>/<name>"``."""
    from PIL import Image
    from scipy.io import savemat

    joints = np.asarray(joints, dtype=np.float64)
    if joints.shape != (len(frames), NUM_JOINTS, 2):
        raise ValueError(
            f"write_jhmdb: joints {joints.shape} for {len(frames)} frames; expected ({len(frames)}, {NUM_JOINTS}, 2)"
        )
    root = Path(root)
    image_dir = root / "Rename_Images" / action / name
    mat_dir = root / "joint_positions" / action / name
    image_dir.mkdir(parents=True, exist_ok=True)
    mat_dir.mkdir(parents=True, exist_ok=True)
    for t, frame in enumerate(frames, 1):
        Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(image_dir / f"{t:05d}.png")
    savemat(str(mat_dir / "joint_positions.mat"), {"pos_img": joints.transpose(2, 1, 0) + 1.0})
    line = f"{(mat_dir / 'joint_positions.mat').resolve()} {image_dir.resolve()}\n"
    listing = root / list_name
    if line not in (listing.read_text().splitlines(keepends=True) if listing.is_file() else []):
        with open(listing, "a", encoding="utf-8") as handle:
            handle.write(line)
    return f"{action}/{name}"


# ----------------------------------------------------------------------------- the task


def load(root, list_file=None, **_) -> List[JhmdbVideo]:
    """The videos of ``list_file`` (default: the standard test list of split 1), every file checked."""
    return load_videos(root, list_file)


def run(encoder, root, videos, out, protocol: Protocol, device="cpu", batch_size: Optional[int] = None,
        progress: bool = True, precision: str = "fp32") -> dict:  # fmt: skip
    """JHMDB pose propagation of ``videos`` (from :func:`load`): frame 0's joints as heat maps,
    propagated, decoded, scored as PCK."""
    from tqdm import tqdm

    refuse_first_frame_scored(protocol, "JHMDB", "CRW's eval_pck.py")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = FeatureExtractor(encoder, protocol, torch.device(device), precision)
    per_video, timings, predictions = {}, {}, {}
    for video in tqdm(videos, desc="jhmdb", unit="video", dynamic_ncols=True, disable=not progress):
        height, width = video.size
        pred = np.array(video.joints, dtype=np.float64)  # frame 0 keeps its ground truth (not scored)

        def stride(grid):
            return height / grid[0], width / grid[1]

        def first(grid):
            return joint_heatmaps(video.joints[0], video.visible[0], grid, stride(grid))

        def emit(t, soft, grid, frame):
            if soft is not None:
                pred[t] = decode_joints(soft, grid, stride(grid))

        timings[video.name] = propagate_video(
            extractor, video.frames, protocol, first, emit, batch_size, False, video.name
        )
        per_video[video.name] = pck(pred, video.joints, video.visible)
        predictions[video.name] = pred.tolist()  # exactly what was scored: re-scoring the file gives the same PCK
    overall = aggregate(list(per_video.values()))
    write_results(out, per_video, overall)
    write_atomic(out / "joints.json", json.dumps(predictions) + "\n")
    scores = {f"PCK@{a:g}": overall["pck"][f"{a:g}"] for a in (0.1, 0.2)}
    return task_record(
        "jhmdb",
        scores,
        protocol,
        timings,
        out,
        precision=extractor.precision,
        conventions=dict(
            frames_scored="every frame but the first, as CRW's eval_pck.py",
            pck_box="0.6 x the diagonal of the box around the frame's scored ground-truth joints, its max "
            "corner starting at -1, as CRW's eval_pck.py",
        ),
        files=["pck.csv", "pck.json", "joints.json", "scores.json"],
        videos=len(videos),
    )
