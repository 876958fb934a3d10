"""DAVIS-2017 semi-supervised video object segmentation: masks propagated from the first frame, J&F
exactly as the official evaluator (:mod:`siammae.tasks.jandf`), files in DAVIS's layout
(:mod:`siammae.tasks.davis_files`). The one DAVIS driver: ``siammae propagate --davis``, ``siammae
benchmark``, the training monitor and the demo all call :func:`propagate` / :func:`run`.

``out/propagation.json`` records the protocol, the precision, the encoder and per-sequence timings;
``out/<seq>/<frame>.png`` are palette PNGs named like the frames.
"""

from __future__ import annotations

import json
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np
import torch

from siammae import __version__
from siammae.files import write_atomic
from siammae.pictures import overlay_strip
from siammae.propagate.diagnostics import encoder_diagnostics
from siammae.propagate.features import FeatureExtractor
from siammae.propagate.loop import first_frame_labels, propagate_video, soft_to_ids
from siammae.propagate.parallel import SequenceJob, merge_parts, propagate_in_workers
from siammae.propagate.precision import resolve_precision
from siammae.propagate.protocol import Protocol
from siammae.tasks.common import refuse_first_frame_scored, task_record, total_timing
from siammae.tasks.davis_files import (
    DavisError,
    DavisSequence,
    load_sequence,
    read_annotation,
    require_annotations,
    select_sequences,
    write_labels,
)
from siammae.tasks.jandf import evaluate, write_csvs


def check_davis(davis_root, split="val", sequences=None, resolution="480p") -> List[DavisSequence]:
    """Every selected sequence's files, checked before any work starts (raises DavisError)."""
    return [load_sequence(davis_root, n, resolution) for n in select_sequences(davis_root, split, sequences)]


def load(root, split: str = "val", sequences=None, resolution: str = "480p", **_) -> List[DavisSequence]:
    """The sequences to score, each annotated on every frame (a user error names the file)."""
    seqs = check_davis(root, split, sequences, resolution)
    require_annotations(seqs)
    return seqs


def propagate_sequence(
    extractor: FeatureExtractor,
    seq: DavisSequence,
    progress: bool = True,
    *,
    protocol: Protocol,
    out_dir: Path,
    batch_size: Optional[int] = None,
    overlay: int = 0,
) -> dict:
    """Write ``out_dir/<seq>/<frame>.png`` for every frame of a DAVIS sequence (frame 0 = its ground
    truth). ``overlay`` > 0 also writes ``out_dir/overlays/<seq>.png``, a strip of that many frames.
    Returns timing figures."""
    seq_dir = Path(out_dir) / seq.name
    seq_dir.mkdir(parents=True, exist_ok=True)
    first_ids = read_annotation(seq.first_annotation)
    T = len(seq.frames)
    shown = set(np.linspace(0, T - 1, min(overlay, T)).round().astype(int).tolist()) if overlay else set()
    strip_frames, strip_labels = [], []

    def emit(t, soft, grid, frame):
        if frame.shape[:2] != first_ids.shape:
            raise DavisError(
                f"sequence '{seq.name}': frames differ in size from the first annotation "
                f"{first_ids.shape[1]}x{first_ids.shape[0]}"
            )
        ids = first_ids if soft is None else soft_to_ids(soft, grid, first_ids.shape, protocol.minmax)
        write_labels(seq_dir / f"{seq.frames[t].stem}.png", ids)
        if t in shown:
            strip_frames.append(frame)
            strip_labels.append(ids)

    timing = propagate_video(
        extractor,
        seq.frames,
        protocol,
        lambda grid: first_frame_labels(first_ids, grid, protocol),
        emit,
        batch_size,
        progress,
        seq.name,
    )
    if overlay:
        from PIL import Image

        (Path(out_dir) / "overlays").mkdir(exist_ok=True)
        Image.fromarray(overlay_strip(strip_frames, strip_labels)).save(Path(out_dir) / "overlays" / f"{seq.name}.png")
    return timing


def propagate(
    encoder: torch.nn.Module,
    davis_root,
    out_dir,
    protocol: Protocol,
    split: str = "val",
    sequences: Optional[Sequence[str]] = None,
    resolution: str = "480p",
    device: str | torch.device = "cpu",
    batch_size: Optional[int] = None,
    overlay: int = 0,
    progress: bool = True,
    settings: Optional[dict] = None,
    precision: str = "fp32",
    workers: int = 1,
    processes=None,
) -> Optional[dict]:
    """Propagate every selected sequence into ``out_dir``; writes ``out_dir/propagation.json`` (the
    protocol, the precision, ``settings`` such as the encoder's description, per-sequence timings) and
    returns it.

    ``workers`` > 1 propagates that many sequences at once in worker processes, each with its share of
    the CPU threads. ``processes`` (Accelerate's ``PartialState`` of ``accelerate launch``, see
    :func:`siammae.propagate.parallel.launched_processes`) makes every launched process take its share of the
    sequences on its own device; the main process merges the timings, writes the one
    ``propagation.json`` and returns it, the others return None. The predictions are the same files as
    a single process writes."""
    refuse_first_frame_scored(protocol, "DAVIS", "the official evaluator (davis2017-evaluation)")
    state = processes
    device = state.device if state and torch.device(device).type == "cuda" else torch.device(device)
    out_dir = Path(out_dir)
    seqs = check_davis(davis_root, split, sequences, resolution)
    out_dir.mkdir(parents=True, exist_ok=True)
    precision = resolve_precision(precision, device)
    job = SequenceJob(
        partial(FeatureExtractor, encoder, protocol, device, precision),
        partial(propagate_sequence, protocol=protocol, out_dir=out_dir, batch_size=batch_size, overlay=overlay),
    )
    record = dict(
        siammae_version=__version__,
        protocol=protocol.to_dict(),
        davis=str(davis_root),
        split=split,
        resolution=resolution,
        sequences=[s.name for s in seqs],
        device=str(device),
        precision=precision,
        batch_size=batch_size or "auto",
        patch_size=int(encoder.patch_embed.patch_size[0]),
        features="last block after final norm, prefix tokens dropped, L2-normalised",
        **(settings or {}),
    )
    start = time.perf_counter()
    if state is not None:  # this process's share; the main process gathers the others' timings
        mine = seqs[state.process_index :: state.num_processes]
        timings = propagate_in_workers(job, mine, workers, progress and state.is_main_process)
        timings = merge_parts(state, timings, [s.name for s in seqs])
        if timings is None:
            return None
    else:
        timings = propagate_in_workers(job, seqs, workers, progress)
    # Wall time: with several workers or processes the sequences' own times overlap.
    total = total_timing(timings)
    wall = time.perf_counter() - start
    total.update(seconds=round(wall, 3), fps=round(total["frames"] / max(wall, 1e-9), 3))
    record["timing"] = dict(total, per_sequence=timings)
    write_atomic(out_dir / "propagation.json", json.dumps(record, indent=2) + "\n")
    return record


def run(encoder, root, seqs, out, protocol: Protocol, device="cpu", batch_size: Optional[int] = None,
        progress: bool = True, split: str = "val", resolution: str = "480p", settings: Optional[dict] = None,
        precision: str = "fp32") -> dict:  # fmt: skip
    """DAVIS-2017 label propagation of ``seqs`` (from :func:`load`) into ``out``, and J&F exactly as the
    official evaluator; the task's record (``out/scores.json``)."""
    out = Path(out)
    record = propagate(
        encoder,
        root,
        out,
        protocol,
        split=split,
        sequences=[s.name for s in seqs],
        resolution=resolution,
        device=device,
        batch_size=batch_size,
        progress=progress,
        settings=settings,
        precision=precision,
    )
    result = evaluate(root, out, split, record["sequences"], resolution)
    write_csvs(result, out, split)
    row = result.global_row()
    scores = {"J&F": row["J&F-Mean"], "J": row["J-Mean"], "F": row["F-Mean"]}
    return task_record(
        "davis",
        scores,
        protocol,
        record["timing"]["per_sequence"],
        out,
        precision=record["precision"],
        conventions=dict(frames_scored="every frame but the first and the last, as davis2017-evaluation"),
        files=["propagation.json", f"global_results-{split}.csv", f"per-sequence_results-{split}.csv", "scores.json"],
    )


# ----------------------------------------------------------------------------- baselines and diagnostics


def copy_first_frame(seqs, out_dir) -> None:
    """Write the first annotation as the prediction of every frame (the 'no motion' baseline)."""
    for seq in seqs:
        ids = read_annotation(seq.first_annotation)
        folder = Path(out_dir) / seq.name
        folder.mkdir(parents=True, exist_ok=True)
        for frame in seq.frames:
            write_labels(folder / f"{frame.stem}.png", ids)


def copy_first_frame_jf(davis_root, seqs, out_dir, split: str = "val", resolution: str = "480p") -> float:
    """J&F-Mean of copying the first frame's labels in place; predictions go to ``out_dir``."""
    copy_first_frame(seqs, out_dir)
    row = evaluate(davis_root, out_dir, split, [s.name for s in seqs], resolution).global_row()
    return float(row["J&F-Mean"])


def feature_diagnostics(
    encoder, seqs, protocol, device, precision, davis_root, split="val", resolution="480p", with_copy: bool = True
) -> dict:
    """The encoder's token figures on the sequences (:mod:`siammae.propagate.diagnostics`), and the J&F of
    copying frame 0 in place."""
    diag = encoder_diagnostics(FeatureExtractor(encoder, protocol, device, precision), [s.frames for s in seqs])
    if with_copy:
        with tempfile.TemporaryDirectory(prefix="siammae-copy-") as tmp:
            diag["copy_jf"] = round(copy_first_frame_jf(davis_root, seqs, tmp, split, resolution), 4)
    return diag
