"""Find the videos of a collection, with labels and splits where the layout says them.

Layouts:

``kinetics``  ``SRC/annotations/{train,val,test}.csv`` (``label,youtube_id,time_start,time_end,split``)
              naming ``SRC/<split>/**/<youtube_id>_<start:06d>_<end:06d>.<ext>``; a file of the same
              stem under ``SRC/replacement/`` (the re-downloads of corrupted originals) wins. Rows with
              no file are counted as missing.
``ucf101``    ``SRC/ucfTrainTestlist/{classInd,trainlist0F,testlist0F}.txt`` with the class folders in
              SRC or ``SRC/UCF-101``; list paths are matched case-insensitively (the HandstandPushups
              folder holds ``v_HandStandPushups_*`` files) and CRLF line ends are fine.
``classes``   ``SRC/<label>/*.<ext>`` or ``SRC/<split>/<label>/*.<ext>`` (split in train/val/test/...).
``folder``    every video under SRC, recursively; no labels.
``list``      a text file, one ``path [label]`` per line (tab-separated when paths hold spaces);
              paths relative to SRC or absolute; ``#`` starts a comment.
``images``    every image under SRC (``.jpg .jpeg .png .webp .bmp``), labelled like ``classes`` where
              the folders say it (an ImageNet ``train/`` folder: ``SRC/<wnid>/*.JPEG``); each image is
              one sample of one frame, for methods that make both views from one frame (CropMAE).
              Never auto-detected: ``--layout images``.

Every layout yields :class:`Video` records sorted by ``src``; the caller decides the order of work.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

from siammae.errors import SiammaeError

VIDEO_EXTENSIONS = frozenset(".mp4 .avi .mkv .webm .mov .m4v .mpg .mpeg .flv .wmv .3gp .ogv .ts .mts .vob .asf".split())
SPLIT_NAMES = frozenset("train training val valid validate validation test testing".split())
IMAGE_EXTENSIONS = frozenset(".jpg .jpeg .png .webp .bmp".split())
LAYOUTS = ("auto", "kinetics", "ucf101", "classes", "folder", "list", "images")


class SourceError(SiammaeError):
    """The source folder or list cannot be read as the layout asked for."""


@dataclass(frozen=True)
class Video:
    """One input video: ``path`` on disk, ``src`` its posix path relative to SRC (the sample's ``src``)."""

    path: str
    src: str
    label: Optional[str] = None
    split: Optional[str] = None


@dataclass
class Listing:
    """The result of reading a source: the videos found and how many listed entries had no file."""

    layout: str
    videos: List[Video]
    missing: int = 0
    missing_examples: Tuple[str, ...] = ()


def is_video(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS and not name.startswith(".")


def is_image(name: str) -> bool:
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS and not os.path.basename(name).startswith(".")


def walk_videos(root: Path, wanted=is_video) -> Iterator[Path]:
    """Every video file (``wanted`` says which names) under ``root`` (recursive, following no symlinked
    folders, skipping dot-folders)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if wanted(name):
                yield Path(dirpath) / name


def _rel(path: Path, root: Path) -> str:
    try:
        return path.relative_to(root).as_posix()
    except ValueError:
        return path.as_posix()


def _video(path: Path, root: Path, label=None, split=None) -> Video:
    return Video(os.fspath(path), _rel(path, root), label, split)


def _read_lines(path: Path) -> List[str]:
    """Non-empty lines without line ends (LF or CRLF) or a UTF-8 BOM."""
    text = path.read_text(encoding="utf-8-sig", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()]


def _finish(layout: str, videos: List[Video], missing: List[str]) -> Listing:
    unique = {v.src: v for v in videos}
    return Listing(layout, sorted(unique.values(), key=lambda v: v.src), len(missing), tuple(missing[:5]))


# --- Kinetics -------------------------------------------------------------------------------------


def kinetics_stem(youtube_id: str, start, end) -> str:
    """The mirror's file stem ``<id>_<start:06d>_<end:06d>`` (ids may start with '-' or '_')."""
    return f"{youtube_id}_{int(float(start)):06d}_{int(float(end)):06d}"


# Mirrors disagree on the validation split's name; the CSV and the folder may use different ones.
_VAL = ("val", "validate", "validation", "valid")
_SPLIT_ALIASES = {name: (name,) + tuple(n for n in _VAL if n != name) for name in _VAL}


def _index_stems(root: Path) -> Dict[str, Path]:
    return {p.stem: p for p in walk_videos(root)} if root.is_dir() else {}


def read_kinetics(root: Path, splits: Optional[Sequence[str]] = None) -> Listing:
    """Videos named by ``root/annotations/*.csv`` (one CSV per split); see the module docstring."""
    csv_dir = root / "annotations"
    csvs = sorted(csv_dir.glob("*.csv"))
    if splits:
        wanted = set(splits)
        csvs = [c for c in csvs if c.stem in wanted]
        absent = wanted - {c.stem for c in csvs}
        if absent:
            raise SourceError(f"no annotation CSV for split(s) {sorted(absent)} in {csv_dir}")
    if not csvs:
        raise SourceError(f"no annotation CSVs in {csv_dir}")
    replacements = _index_stems(root / "replacement")
    videos, missing = [], []
    for csv_path in csvs:
        split = csv_path.stem
        folders = [root / name for name in _SPLIT_ALIASES.get(split, (split,))]
        on_disk = _index_stems(next((f for f in folders if f.is_dir()), root / split))
        with open(csv_path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            if not reader.fieldnames or not {"youtube_id", "time_start", "time_end"} <= set(reader.fieldnames):
                raise SourceError(
                    f"{csv_path}: expected columns youtube_id,time_start,time_end (got {reader.fieldnames})"
                )
            for line, row in enumerate(reader, start=2):
                try:
                    stem = kinetics_stem(row["youtube_id"], row["time_start"], row["time_end"])
                except (TypeError, ValueError):
                    raise SourceError(f"{csv_path}:{line}: bad row {row}") from None
                path = replacements.get(stem) or on_disk.get(stem)
                if path is None:
                    missing.append(f"{split}/{stem}")
                    continue
                label = (row.get("label") or "").strip() or None
                videos.append(_video(path, root, label, split))
    return _finish("kinetics", videos, missing)


# --- UCF-101 --------------------------------------------------------------------------------------


def _ucf_dirs(root: Path) -> Tuple[Path, Path]:
    lists = root / "ucfTrainTestlist"
    if not lists.is_dir():
        raise SourceError(f"no ucfTrainTestlist folder in {root}")
    videos = root / "UCF-101" if (root / "UCF-101").is_dir() else root
    return lists, videos


def read_ucf101(root: Path, split: Optional[str] = None, fold: int = 1) -> Listing:
    """The videos of ``trainlist0{fold}`` and/or ``testlist0{fold}`` (split 'train', 'test' or None = both)."""
    lists, video_root = _ucf_dirs(root)
    class_ind = lists / "classInd.txt"
    classes: Dict[str, str] = {}
    if class_ind.is_file():
        for line in _read_lines(class_ind):
            parts = line.split()
            if len(parts) >= 2:
                classes[parts[1].lower()] = parts[1]
    by_lower = {_rel(p, video_root).lower(): p for p in walk_videos(video_root)}
    splits = [split] if split else ["train", "test"]
    videos, missing = [], []
    for name in splits:
        list_file = lists / f"{name}list{fold:02d}.txt"
        if not list_file.is_file():
            raise SourceError(f"no {list_file.name} in {lists} (UCF-101 split {name!r}, fold {fold})")
        for line in _read_lines(list_file):
            rel = line.split()[0].replace("\\", "/")
            path = by_lower.get(rel.lower())
            if path is None:
                missing.append(rel)
                continue
            folder = rel.split("/")[0]
            label = classes.get(folder.lower(), folder)
            videos.append(_video(path, root, label, name))
    return _finish("ucf101", videos, missing)


# --- class folders, any folder, list file ---------------------------------------------------------


def read_classes(root: Path, split: Optional[str] = None) -> Listing:
    """``root/<label>/*`` or ``root/<split>/<label>/*``; other depths are ignored."""
    videos = []
    for path in walk_videos(root):
        parts = path.relative_to(root).parts
        if len(parts) == 2:
            videos.append(_video(path, root, parts[0]))
        elif len(parts) == 3 and parts[0].lower() in SPLIT_NAMES:
            videos.append(_video(path, root, parts[1], parts[0]))
    if split:
        videos = [v for v in videos if v.split == split]
    return _finish("classes", videos, [])


def read_images(root: Path, split: Optional[str] = None) -> Listing:
    """Every image under ``root``; labels and splits as :func:`read_classes` reads them, where they exist."""
    images = []
    for path in walk_videos(root, is_image):
        parts = path.relative_to(root).parts
        if len(parts) == 3 and parts[0].lower() in SPLIT_NAMES:
            images.append(_video(path, root, parts[1], parts[0]))
        else:
            images.append(_video(path, root, parts[0] if len(parts) == 2 else None))
    if split:
        images = [v for v in images if v.split == split]
    return _finish("images", images, [])


def read_folder(root: Path) -> Listing:
    return _finish("folder", [_video(p, root) for p in walk_videos(root)], [])


def read_list(root: Path, list_file: Path) -> Listing:
    """``path [label]`` lines; see the module docstring."""
    videos, missing = [], []
    for line in _read_lines(list_file):
        if line.startswith("#"):
            continue
        path_text, _, label = line.partition("\t") if "\t" in line else line.partition(" ")
        path = Path(path_text.strip())
        path = path if path.is_absolute() else root / path
        if not path.is_file():
            missing.append(path_text.strip())
            continue
        videos.append(_video(path, root, label.strip() or None))
    return _finish("list", videos, missing)


def detect_layout(root: Path) -> str:
    """Guess the layout of ``root``: annotations CSVs -> kinetics, ucfTrainTestlist -> ucf101, files
    only at label depth -> classes, anything else -> folder."""
    if (root / "annotations").is_dir() and any((root / "annotations").glob("*.csv")):
        return "kinetics"
    if (root / "ucfTrainTestlist").is_dir():
        return "ucf101"
    depths = set()
    for path in walk_videos(root):
        parts = path.relative_to(root).parts
        depths.add(len(parts) if len(parts) != 3 or parts[0].lower() in SPLIT_NAMES else -1)
        if len(depths) > 1:
            return "folder"
    return "classes" if depths in ({2}, {3}) else "folder"


def find_videos(
    root: str | os.PathLike,
    layout: str = "auto",
    split: Optional[str] = None,
    fold: int = 1,
    list_file: Optional[str | os.PathLike] = None,
) -> Listing:
    """Read ``root`` as ``layout`` ('auto' detects; a ``list_file`` implies 'list').

    ``split``: for kinetics a comma-separated list of CSV names; for ucf101 'train' or 'test'; for
    classes a split folder name. None keeps everything.
    """
    root = Path(root)
    if not root.is_dir():
        raise SourceError(f"source folder {root} does not exist")
    if list_file is not None:
        if layout not in ("auto", "list"):
            raise SourceError(f"--list reads a list file; it cannot be combined with layout {layout!r}")
        return read_list(root, Path(list_file))
    if layout == "list":
        raise SourceError("layout 'list' needs a list file")
    layout = detect_layout(root) if layout == "auto" else layout
    if layout == "kinetics":
        return read_kinetics(root, [s for s in split.split(",") if s] if split else None)
    if layout == "ucf101":
        if split not in (None, "train", "test"):
            raise SourceError(f"UCF-101 split must be 'train' or 'test', not {split!r}")
        return read_ucf101(root, split, fold)
    if layout == "classes":
        return read_classes(root, split)
    if layout == "folder":
        return read_folder(root)
    if layout == "images":
        return read_images(root, split)
    raise SourceError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")
