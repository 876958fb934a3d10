"""The paper's three propagation tasks on one core: DAVIS-2017 masks (J&F), JHMDB joints (PCK), VIP
human parts (mIoU).

:func:`load_dataset` checks a task's dataset (every file, before any work); each ``run_<task>``
propagates the loaded dataset with :func:`siammae.propagate.propagate_video` (the one implementation of
features, context, affinity, window and top-k), scores, writes its files into ``out`` and returns one
record, also written as ``out/scores.json``::

    {"task": "jhmdb", "scores": {"PCK@0.1": 0.47, "PCK@0.2": 0.76}, "protocol": {...},
     "timing": {"frames": 9000, "seconds": 812.0, "fps": 11.1}, "files": [...]}

The datasets' own conventions (layouts, heat maps, PCK, the confusion matrix) live in
:mod:`siammae.davis` / :mod:`siammae.measures`, :mod:`siammae.jhmdb` and :mod:`siammae.vip`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import numpy as np
import torch

from siammae.files import write_atomic
from siammae.propagate import (
    FeatureExtractor,
    Protocol,
    first_frame_labels,
    propagate_video,
    soft_to_ids,
    total_timing,
)


def _record(task: str, scores: dict, protocol: Protocol, per_video_timing: dict, out: Path, **extra) -> dict:
    """The task's record (a score that could not be computed is null), written as ``out/scores.json``."""
    scores = {k: None if v is None or not np.isfinite(v) else round(float(v), 4) for k, v in scores.items()}
    record = dict(task=task, scores=scores, protocol=protocol.to_dict(), timing=total_timing(per_video_timing), **extra)
    write_atomic(out / "scores.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    return record


def load_dataset(task: str, root, list_file=None, split: str = "val", sequences=None, resolution: str = "480p"):
    """The task's videos with every file checked (a user error names the file): DAVIS sequences
    (each annotated on every frame), JHMDB videos (``list_file``: a video list) or VIP videos."""
    if task == "davis":
        from siammae.davis import require_annotations
        from siammae.propagate import check_davis

        seqs = check_davis(root, split, sequences, resolution)
        require_annotations(seqs)
        return seqs
    if task == "jhmdb":
        from siammae import jhmdb

        return jhmdb.load_videos(root, list_file)
    from siammae import vip

    return vip.load_videos(root)


def run_davis(encoder, root, seqs, out, protocol: Protocol, device="cpu", batch_size: Optional[int] = None,
              progress: bool = True, split: str = "val", resolution: str = "480p", settings: Optional[dict] = None,
              precision: str = "fp32") -> dict:
    """DAVIS-2017 label propagation of ``seqs`` (from :func:`load_dataset`) into ``out``, and J&F exactly
    as the official evaluator."""
    from siammae.measures import evaluate, write_csvs
    from siammae.propagate import propagate

    out = Path(out)
    record = propagate(encoder, root, out, protocol, split=split, sequences=[s.name for s in seqs],
                       resolution=resolution, device=device, batch_size=batch_size, progress=progress,
                       settings=settings, precision=precision)
    result = evaluate(root, out, split, record["sequences"], resolution)
    write_csvs(result, out, split)
    row = result.global_row()
    scores = {"J&F": row["J&F-Mean"], "J": row["J-Mean"], "F": row["F-Mean"]}
    return _record("davis", scores, protocol, record["timing"]["per_sequence"], out, precision=record["precision"],
                   files=["propagation.json", f"global_results-{split}.csv", f"per-sequence_results-{split}.csv", "scores.json"])


def run_jhmdb(encoder, root, videos, out, protocol: Protocol, device="cpu", batch_size: Optional[int] = None,
              progress: bool = True, precision: str = "fp32") -> dict:
    """JHMDB pose propagation of ``videos`` (from :func:`load_dataset`): frame 0's joints as heat maps,
    propagated, decoded, scored as PCK."""
    from tqdm import tqdm

    from siammae import jhmdb

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
            return jhmdb.joint_heatmaps(video.joints[0], video.visible[0], grid, stride(grid))

        def emit(t, soft, grid, frame):
            if soft is not None:
                pred[t] = jhmdb.decode_joints(soft, grid, stride(grid))

        timings[video.name] = propagate_video(extractor, video.frames, protocol, first, emit, batch_size,
                                              False, video.name)
        per_video[video.name] = jhmdb.pck(pred, video.joints, video.visible)
        predictions[video.name] = pred.round(2).tolist()
    overall = jhmdb.aggregate(list(per_video.values()))
    jhmdb.write_results(out, per_video, overall)
    write_atomic(out / "joints.json", json.dumps(predictions) + "\n")
    scores = {f"PCK@{a:g}": overall["pck"][f"{a:g}"] for a in (0.1, 0.2)}
    return _record("jhmdb", scores, protocol, timings, out, precision=extractor.precision, files=["pck.csv", "pck.json", "joints.json", "scores.json"],
                   videos=len(videos))


def run_vip(encoder, root, clips, out, protocol: Protocol, device="cpu", batch_size: Optional[int] = None,
            progress: bool = True, precision: str = "fp32") -> dict:
    """VIP part propagation of ``clips`` (from :func:`load_dataset`): frame 0's part ids propagated like
    masks, one dataset-wide confusion matrix over the annotated frames, mIoU."""
    from tqdm import tqdm

    from siammae import vip
    from siammae.davis import write_labels

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    extractor = FeatureExtractor(encoder, protocol, torch.device(device), precision)
    confusion, timings, per_video = vip.Confusion(), {}, {}
    for clip in tqdm(clips, desc="vip", unit="video", dynamic_ncols=True, disable=not progress):
        first_ids = vip.seed_labels(clip)  # void as background: a 255 would make 236 empty channels
        scored, own = set(clip.scored), vip.Confusion()
        (out / clip.name).mkdir(exist_ok=True)

        def emit(t, soft, grid, frame):
            ids = first_ids if soft is None else soft_to_ids(soft, grid, frame.shape[:2], protocol.minmax)
            write_labels(out / clip.name / f"{clip.frames[t].stem}.png", ids)
            if t in scored:
                own.add(vip.read_category_ids(clip.annotations[t]), ids)

        timings[clip.name] = propagate_video(
            extractor, clip.frames, protocol, lambda grid: first_frame_labels(first_ids, grid, protocol),
            emit, batch_size, False, clip.name)
        per_video[clip.name] = own
        confusion += own
    vip.write_results(out, confusion, per_video)
    return _record("vip", {"mIoU": confusion.miou()}, protocol, timings, out, precision=extractor.precision, files=["vip.csv", "vip.json", "scores.json"],
                   videos=len(clips))


RUNNERS = {"davis": run_davis, "jhmdb": run_jhmdb, "vip": run_vip}


def run_task(task: str, encoder, root, out, protocol: Protocol, data=None, list_file=None, **options) -> dict:
    """Run ``task`` on ``root``; ``data`` is its :func:`load_dataset` result when already loaded."""
    data = load_dataset(task, root, list_file) if data is None else data
    return RUNNERS[task](encoder, root, data, out, protocol, **options)
