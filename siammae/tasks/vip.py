"""VIP (Video instance-level Parsing) human-part propagation on disk: videos, annotations, mIoU.

Layout of the VIP_Fine download, as the evaluators of the label-propagation papers read it::

    VIP/VIP_Fine/Images/<video>/000000000001.jpg ...             frames, sorted by their number
    VIP/VIP_Fine/Annotations/Category_ids/<video>/<same>.png     part ids, named like their frame
    VIP/VIP_Fine/lists/val_videos.txt                            one val video a line (videos338 ...)

``--vip ROOT`` may name either the VIP root (the folder holding ``VIP_Fine/``) or ``VIP_Fine`` itself
(:func:`fine_root` decides: ``ROOT/VIP_Fine`` when it exists, else ROOT when it holds ``Images/``).
Other files of the download (``Annotations/Human_ids``, ``Instance_ids``, other lists) are not read.

Conventions and where they come from:

- Classes: 20 ids, 0 background ... 19 left-shoe (:data:`CLASSES`), the table of the reference
  evaluator (TimeCycle's ``eval_vip.py``, reused by UVC and CropMAE) and of VFS's ``VIPDataset``.
- Void: 255 is ignored in scoring (VFS scores with ``ignore_index=255``; the TimeCycle evaluator
  drops every ground-truth value outside 0..19, which includes 255). Any other id is a user error
  here, where the reference evaluators silently drop or crash on it.
- Annotated frames: the dataset page says one frame in every 25 of a video is annotated, and
  ``VIP_Fine/Images`` holds just those frames, so in the real set every frame has its PNG (VFS and
  CRW/CropMAE pair the sorted frame and annotation lists one to one). This module also accepts a
  video whose frames are only partly annotated (say the denser ``VIP_Sequence`` frames dropped in):
  ``VipVideo.annotations`` maps frame index -> PNG, and the first frame must be annotated (it seeds the
  propagation). A PNG without a frame of the same name is an error: it means the naming is off.
- Frame 0: the reference ``test.py`` scripts (TimeCycle, UVC, CRW, CropMAE) write a prediction for it
  and their ``eval_vip.py`` scores every file written, so published VIP figures score frame 0 too.
  ``Protocol.first_frame_scored`` (on in the ``siammae-vip`` preset) does the same, with the given
  labels as frame 0's prediction; off, only the annotated frames after the first are scored
  (:meth:`VipVideo.scored`). ``vip.json`` and ``scores.json`` record which.
- Predictions: ``OUT/predictions/<video>/``, greyscale PNGs of the part ids (OpenCV, which both
  reference scripts read them with, reads a greyscale id image back as its ids), one for each scored
  frame and nothing else, so a reference ``eval_vip.py`` pointed at the folder scores exactly what
  siammae scored. Named as ``Protocol.vip_names`` says: ``crw`` ``<frame stem>.png``, like the ground
  truth, as CRW's script pairs them; ``cropmae`` ``<frame stem>_mask.png``, as CropMAE's copy of it
  pairs them (it cuts the name at the first ``_``; the ``siammae-vip`` preset, which follows CropMAE).
- Naming: frames are ``<12-digit original frame number>.jpg`` and annotations the same stem with
  ``.png``; frames are ordered by number when every stem is a number (so unpadded names work too).
- Annotation PNGs are greyscale ("L") or palette ("P") images whose pixel values are the ids; an RGB
  PNG (a colour visualisation) is an error. Each must be exactly the size of its frame.
- Scoring: predictions are resized with nearest neighbour (pixel centres, as PIL's ``NEAREST`` the
  CropMAE evaluator uses) to the ground-truth size; one confusion matrix over every scored frame of
  every video; per-class IoU = TP / (GT + PRED - TP), NaN for a class in neither ground truth nor
  prediction; mIoU = the mean over the non-NaN classes, background included (as the reference).

Every problem on disk is a :class:`VipError` whose one-line message names the file;
:func:`load_videos` finds them all before any propagation starts.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Optional, Sequence

import numpy as np
import torch

from siammae.errors import SiammaeError
from siammae.files import write_atomic
from siammae.propagate.features import FeatureExtractor
from siammae.propagate.loop import first_frame_labels, propagate_video, soft_to_ids
from siammae.propagate.protocol import Protocol
from siammae.tasks.common import task_record

VOID = 255
CLASSES = (
    "background",
    "hat",
    "hair",
    "sun-glasses",
    "upper-clothes",
    "dress",
    "coat",
    "socks",
    "pants",
    "gloves",
    "scarf",
    "skirt",
    "torso-skin",
    "face",
    "right-arm",
    "left-arm",
    "right-leg",
    "left-leg",
    "right-shoe",
    "left-shoe",
)
NUM_CLASSES = len(CLASSES)
IMAGES = Path("Images")
CATEGORY_IDS = Path("Annotations") / "Category_ids"
VAL_LIST = Path("lists") / "val_videos.txt"


class VipError(SiammaeError):
    """Something about a VIP folder that the user has to fix; one line naming the file."""


@dataclass
class VipVideo:
    """One video's files: every frame, and the category-id PNG of each annotated frame index."""

    name: str
    frames: list[Path]
    annotations: dict[int, Path]

    def scored(self, first_frame: bool = False) -> list[int]:
        """Frame indices to score: the annotated ones, frame 0 (the given input) only if ``first_frame``."""
        return sorted(t for t in self.annotations if t > 0 or first_frame)


# ----------------------------------------------------------------------------- layout


def fine_root(root: str | os.PathLike) -> Path:
    """The ``VIP_Fine`` folder, given either the VIP root or ``VIP_Fine`` itself."""
    root = Path(root)
    if (root / "VIP_Fine").is_dir():
        return root / "VIP_Fine"
    if (root / IMAGES).is_dir():
        return root
    if not root.is_dir():
        raise VipError(f"VIP folder not found: {root}")
    raise VipError(f"not a VIP folder (neither VIP_Fine/ nor Images/ inside): {root}")


def list_videos(root: str | os.PathLike) -> list[str]:
    """Video names from ``lists/val_videos.txt`` (order kept, blank lines skipped).

    A line may be a bare name or a path (``Images/videos1 Annotations/...``, as some projects
    rewrite the list): the first word's last path component is the name, as UVC reads it.
    """
    listing = fine_root(root) / VAL_LIST
    if not listing.is_file():
        raise VipError(f"val video list not found: {listing}")
    names = [line.split()[0].rstrip("/").split("/")[-1] for line in listing.read_text().splitlines() if line.strip()]
    if not names:
        raise VipError(f"val video list {listing} is empty")
    return names


def load_videos(root: str | os.PathLike, videos: Optional[Sequence[str]] = None) -> list[VipVideo]:
    """The val videos (or the named subset of them), every file checked before any work starts.

    Checks: folders exist, each video has frames, each PNG has a frame of its name, the first frame
    is annotated, every annotation reads as an id image of its frame's size with ids in 0..19 or 255,
    every frame's header reads. Raises :class:`VipError` naming the first bad file.
    """
    fine = fine_root(root)
    names = list_videos(fine)
    if videos:
        unknown = [v for v in videos if v not in names]
        if unknown:
            raise VipError(f"video(s) not in {fine / VAL_LIST}: {', '.join(unknown)}")
        names = list(videos)
    loaded = [find_video(fine, name) for name in names]
    for video in loaded:
        check_video(video)
    return loaded


def _ordered(paths: list[Path]) -> list[Path]:
    # VIP stems are zero-padded frame numbers; sorting by value also orders unpadded ones.
    if all(p.stem.isdigit() for p in paths):
        return sorted(paths, key=lambda p: (int(p.stem), p.name))
    return sorted(paths)


def find_video(fine: Path, name: str) -> VipVideo:
    """One video's paths (no file is opened): frames, and annotations keyed by frame index."""
    image_dir, label_dir = fine / IMAGES / name, fine / CATEGORY_IDS / name
    for folder, what in ((image_dir, "frames"), (label_dir, "category-id annotations")):
        if not folder.is_dir():
            raise VipError(f"{what} of video '{name}' not found: {folder}")
    frames = _ordered(list(image_dir.glob("*.jpg")))
    if not frames:
        raise VipError(f"no .jpg frames in {image_dir}")
    index = {f.stem: t for t, f in enumerate(frames)}
    annotations = {}
    for png in _ordered(list(label_dir.glob("*.png"))):
        if png.stem not in index:
            raise VipError(f"annotation without a frame {image_dir / (png.stem + '.jpg')}: {png}")
        annotations[index[png.stem]] = png
    if 0 not in annotations:
        raise VipError(
            f"first frame not annotated (propagation starts from it): {label_dir / (frames[0].stem + '.png')} missing"
        )
    return VipVideo(name, frames, annotations)


def frame_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image from its header, without decoding the pixels."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except OSError as e:  # FileNotFoundError included
        raise VipError(f"{path}: cannot be read as an image ({e})") from None


def check_video(video: VipVideo) -> None:
    """Read every frame header and every annotation of ``video``; VipError on the first bad file."""
    sizes = [frame_size(f) for f in video.frames]
    odd = next((t for t, size in enumerate(sizes) if size != sizes[0]), None)
    if odd is not None:  # propagation needs one size per video: say so now, not mid-run
        raise VipError(
            f"{video.frames[odd]}: frame is {sizes[odd][1]}x{sizes[odd][0]} but the video's first "
            f"frame is {sizes[0][1]}x{sizes[0][0]}"
        )
    for t, png in video.annotations.items():
        read_category_ids(png, size=sizes[t])


def read_category_ids(path: Path, size: Optional[tuple[int, int]] = None) -> np.ndarray:
    """A category-id PNG as (H, W) uint8, checked: ids 0..19 or void 255, and (H, W) == ``size``."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            if im.mode not in ("L", "P"):
                raise VipError(f"{path}: a {im.mode} image; expected a greyscale or indexed PNG of part ids")
            ids = np.asarray(im)
    except OSError as e:
        raise VipError(f"{path}: cannot be read as a PNG ({e})") from None
    if size is not None and ids.shape != tuple(size):
        raise VipError(f"{path}: annotation is {ids.shape[1]}x{ids.shape[0]} but its frame is {size[1]}x{size[0]}")
    bad = np.unique(ids[(ids >= NUM_CLASSES) & (ids != VOID)])
    if bad.size:
        raise VipError(
            f"{path}: class id(s) {', '.join(map(str, bad[:5]))} outside 0..{NUM_CLASSES - 1} (void is {VOID})"
        )
    return ids


def seed_labels(video: VipVideo) -> np.ndarray:
    """The first frame's ids (H, W) uint8 to propagate from, void turned into background.

    The propagator makes one channel per id up to the largest, so a void 255 would add 236 empty
    channels; DAVIS's evaluator seeds the same way (void -> background).
    """
    ids = read_category_ids(video.annotations[0]).copy()
    ids[ids == VOID] = 0
    return ids


# ----------------------------------------------------------------------------- scoring


def resize_nearest(labels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(h, w) ids -> (H, W) by nearest neighbour at pixel centres (what PIL's NEAREST samples)."""
    h, w = labels.shape
    rows = np.minimum(((np.arange(size[0]) + 0.5) * h / size[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(size[1]) + 0.5) * w / size[1]).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]


class Confusion:
    """A (20, 20) pixel-count matrix, rows ground truth, columns prediction, summed over frames."""

    def __init__(self, num_classes: int = NUM_CLASSES):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), dtype=np.int64)
        self.frames = 0

    def add(self, gt: np.ndarray, pred: np.ndarray) -> None:
        """Count one frame: ``gt`` (H, W) ids with void 255, ``pred`` (H', W') ids in 0..19.

        ``pred`` is resized to (H, W) by nearest neighbour when it differs; void pixels are skipped.
        Ids out of range are a ValueError (a bug: files are checked when loaded).
        """
        gt, pred = np.asarray(gt), np.asarray(pred)
        if gt.ndim != 2 or pred.ndim != 2:
            raise ValueError(f"expected 2-D id maps, got gt {gt.shape} and pred {pred.shape}")
        if pred.shape != gt.shape:
            pred = resize_nearest(pred, gt.shape)
        keep = gt != VOID
        g, p = gt[keep].astype(np.int64), pred[keep].astype(np.int64)
        n = self.num_classes
        for what, ids in (("ground-truth", g), ("predicted", p)):
            if ids.size and (ids.min() < 0 or ids.max() >= n):
                raise ValueError(f"{what} ids outside 0..{n - 1}: {np.unique(ids[(ids < 0) | (ids >= n)])}")
        self.matrix += np.bincount(n * g + p, minlength=n * n).reshape(n, n)
        self.frames += 1

    def __iadd__(self, other: "Confusion") -> "Confusion":
        """Pool another matrix into this one (per-video matrices -> the dataset's)."""
        self.matrix += other.matrix
        self.frames += other.frames
        return self

    def iou(self) -> np.ndarray:
        """(20,) per-class IoU; NaN for a class absent from both ground truth and prediction."""
        tp = np.diag(self.matrix).astype(np.float64)
        union = self.matrix.sum(0) + self.matrix.sum(1) - tp
        out = np.full(self.num_classes, np.nan)
        np.divide(tp, union, out=out, where=union > 0)
        return out

    def miou(self) -> float:
        """The mean of the non-NaN per-class IoUs (NaN when nothing was counted)."""
        iou = self.iou()
        present = iou[~np.isnan(iou)]
        return float(present.mean()) if present.size else math.nan


# ----------------------------------------------------------------------------- results


def _num(x: float) -> Optional[float]:
    # JSON has no NaN: an absent class is null.
    return None if math.isnan(x) else float(x)


def _summary(confusion: Confusion) -> dict:
    iou = confusion.iou()
    return {
        "miou": _num(confusion.miou()),
        "frames": confusion.frames,
        "iou": {name: _num(v) for name, v in zip(CLASSES, iou)},
    }


PREDICTIONS = "predictions"
NAME_SUFFIX = {"crw": ".png", "cropmae": "_mask.png"}  # what follows the frame's stem in each tool's naming


def prediction_path(out: str | os.PathLike, video: str, stem: str, names: str) -> Path:
    """Where the prediction of frame ``stem`` of ``video`` goes under ``out`` in the ``names`` convention."""
    return Path(out) / PREDICTIONS / video / f"{stem}{NAME_SUFFIX[names]}"


def write_category_ids(path: Path, ids: np.ndarray) -> None:
    """(H, W) part ids as a greyscale PNG (what the reference evaluators read), written atomically."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.asarray(ids, dtype=np.uint8)).save(buffer, format="PNG")  # 2-D uint8: mode "L"
    write_atomic(path, buffer.getvalue())


def write_results(
    out_dir: str | os.PathLike,
    confusion: Confusion,
    per_video: Mapping[str, Confusion],
    first_frame_scored: bool,
    names: str = "crw",
) -> tuple[Path, Path]:
    """``vip.csv`` (per-class IoU of the dataset-wide matrix, then mIoU) and ``vip.json``.

    ``confusion`` is the dataset's pooled matrix, ``per_video`` each video's own; IoUs are fractions
    in [0, 1], an absent class an empty cell (CSV) or null (JSON). Both files are always rewritten.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    iou, gt_pixels, pred_pixels = confusion.iou(), confusion.matrix.sum(1), confusion.matrix.sum(0)
    text = io.StringIO()
    w = csv.writer(text, lineterminator="\n")
    w.writerow(["id", "class", "iou", "gt_pixels", "pred_pixels"])
    for k, name in enumerate(CLASSES):
        w.writerow([k, name, "" if math.isnan(iou[k]) else f"{iou[k]:.4f}", gt_pixels[k], pred_pixels[k]])
    miou = confusion.miou()
    w.writerow(["", "mIoU", "" if math.isnan(miou) else f"{miou:.4f}", gt_pixels.sum(), pred_pixels.sum()])
    csv_path = write_atomic(out_dir / "vip.csv", text.getvalue())
    record = {
        **_summary(confusion),
        "videos": {n: _summary(c) for n, c in per_video.items()},
        "classes": list(CLASSES),
        "void": VOID,
        "first_frame_scored": first_frame_scored,
        "predictions": PREDICTIONS,
        "vip_names": names,
        "note": "one confusion matrix over all scored frames of all videos; mIoU = mean of the "
        "non-null class IoUs, background included",
    }
    json_path = write_atomic(out_dir / "vip.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    return csv_path, json_path


# ----------------------------------------------------------------------------- synthetic sets


def write_vip(
    root: str | os.PathLike, name: str, frames: Sequence[np.ndarray], labels: Sequence[Optional[np.ndarray]]
) -> VipVideo:
    """Write one video in the real layout under ``root/VIP_Fine`` and add it to the val list.

    ``frames`` (H, W, 3) uint8 become ``<000000000001 ...>.jpg`` (quality 95, no chroma
    subsampling); each ``labels[t]`` (H, W) uint8 that is not None becomes a greyscale PNG of the
    same stem. Ids and sizes are written as given, unchecked, so tests can make broken sets.
    """
    from PIL import Image

    if len(frames) != len(labels):
        raise ValueError(f"{len(frames)} frames but {len(labels)} label entries")
    fine = Path(root) / "VIP_Fine"
    image_dir, label_dir = fine / IMAGES / name, fine / CATEGORY_IDS / name
    image_dir.mkdir(parents=True, exist_ok=True)
    label_dir.mkdir(parents=True, exist_ok=True)
    video = VipVideo(name, [], {})
    for t, (frame, ids) in enumerate(zip(frames, labels)):
        stem = f"{t + 1:012d}"  # VIP numbers frames from 1
        video.frames.append(image_dir / f"{stem}.jpg")
        Image.fromarray(np.asarray(frame, dtype=np.uint8)).save(video.frames[-1], quality=95, subsampling=0)
        if ids is not None:
            video.annotations[t] = label_dir / f"{stem}.png"
            Image.fromarray(np.asarray(ids, dtype=np.uint8)).save(video.annotations[t])  # 2-D uint8: "L"
    listing = fine / VAL_LIST
    listing.parent.mkdir(parents=True, exist_ok=True)
    names = listing.read_text().split() if listing.is_file() else []
    if name not in names:
        with open(listing, "a") as fh:
            fh.write(name + "\n")
    return video


# ----------------------------------------------------------------------------- the task


def load(root, **_) -> list[VipVideo]:
    """The validation videos of VIP, every file checked."""
    return load_videos(root)


def run(encoder, root, clips, out, protocol: Protocol, device="cpu", batch_size: Optional[int] = None,
        progress: bool = True, precision: str = "fp32") -> dict:  # fmt: skip
    """VIP part propagation of ``clips`` (from :func:`load`): frame 0's part ids propagated like
    masks, one dataset-wide confusion matrix over the annotated frames, mIoU."""
    from tqdm import tqdm

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = FeatureExtractor(encoder, protocol, torch.device(device), precision)
    confusion, timings, per_video = Confusion(), {}, {}
    for clip in tqdm(clips, desc="vip", unit="video", dynamic_ncols=True, disable=not progress):
        first_ids = seed_labels(clip)  # void as background: a 255 would make 236 empty channels
        scored, own = set(clip.scored(protocol.first_frame_scored)), Confusion()
        (out / PREDICTIONS / clip.name).mkdir(parents=True, exist_ok=True)

        def emit(t, soft, grid, frame):
            if t not in scored:  # only what is scored is saved: a reference scorer scores every file it finds
                return
            ids = first_ids if soft is None else soft_to_ids(soft, grid, frame.shape[:2], protocol.minmax)
            write_category_ids(prediction_path(out, clip.name, clip.frames[t].stem, protocol.vip_names), ids)
            own.add(read_category_ids(clip.annotations[t]), ids)

        timings[clip.name] = propagate_video(
            extractor,
            clip.frames,
            protocol,
            lambda grid: first_frame_labels(first_ids, grid, protocol),
            emit,
            batch_size,
            False,
            clip.name,
        )
        per_video[clip.name] = own
        confusion += own
    write_results(out, confusion, per_video, protocol.first_frame_scored, protocol.vip_names)
    first = (
        "every annotated frame, frame 0 included"
        if protocol.first_frame_scored
        else "the annotated frames after the first"
    )
    return task_record(
        "vip",
        {"mIoU": confusion.miou()},
        protocol,
        timings,
        out,
        precision=extractor.precision,
        conventions=dict(
            frames_scored=first + " (CRW's, UVC's and CropMAE's eval_vip.py score frame 0 too)",
            predictions=f"OUT/{PREDICTIONS}/<video>/<frame stem>{NAME_SUFFIX[protocol.vip_names]}, greyscale part "
            f"ids of the scored frames only, as {'CRW' if protocol.vip_names == 'crw' else 'CropMAE'}'s eval_vip.py "
            "reads them",
        ),
        files=["vip.csv", "vip.json", "scores.json"],
        videos=len(clips),
    )
