"""What every task writes: its record, ``out/scores.json``::

{"task": "jhmdb", "scores": {"PCK@0.1": 0.47, "PCK@0.2": 0.76}, "protocol": {...},
 "conventions": {"frames_scored": "...", "input_size": "..."},
 "timing": {"frames": 9000, "seconds": 812.0, "fps": 11.1}, "files": [...]}
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from siammae.errors import SiammaeError
from siammae.files import write_atomic
from siammae.propagate.protocol import input_size_rule


def refuse_first_frame_scored(protocol, task: str, reference: str) -> None:
    """A one-line error when ``protocol`` scores frame 0 on a task whose reference evaluator never does."""
    if protocol.first_frame_scored:
        raise SiammaeError(
            f"{task}: protocol {protocol.name} scores frame 0 (first_frame_scored), which {reference} never does; "
            "use the task's own preset or --no-first-frame-scored"
        )


def task_record(
    task: str, scores: dict, protocol, per_video_timing: dict, out: Path, conventions: dict, **extra
) -> dict:
    """The task's record (a score that could not be computed is null), written as ``out/scores.json``.
    ``conventions`` says how the figures were computed (frames scored, normalisers) and which reference
    does the same; the input-size rule is added from the protocol."""
    scores = {k: None if v is None or not np.isfinite(v) else round(float(v), 4) for k, v in scores.items()}
    conventions = dict(conventions, input_size=input_size_rule(protocol))
    record = dict(
        task=task,
        scores=scores,
        protocol=protocol.to_dict(),
        conventions=conventions,
        timing=total_timing(per_video_timing),
        **extra,
    )
    write_atomic(out / "scores.json", json.dumps(record, indent=2, allow_nan=False) + "\n")
    return record


def total_timing(per_video: dict) -> dict:
    """Frames, seconds and frames/s over the per-video timings of :func:`propagate_video`."""
    frames = sum(t["frames"] for t in per_video.values())
    seconds = sum(t["seconds"] for t in per_video.values())
    return dict(frames=frames, seconds=round(seconds, 3), fps=round(frames / max(seconds, 1e-9), 3))
