"""The training run folder: where a run starts, what it keeps, how checkpoints are written.

    OUTPUT/config.yaml            the resolved config of the latest session
    OUTPUT/metrics.jsonl          one JSON record per log step (and per evaluation)
    OUTPUT/checkpoints/checkpoint_<step>/   Accelerate ``save_state`` + a ``complete`` marker
    OUTPUT/checkpoints/.partial_<step>/     a checkpoint being written (renamed when complete)
    OUTPUT/recon/, loss_curve.png, tensorboard/, eval/   pictures and logs
    OUTPUT/previous-<time>/       an earlier run set aside by ``train.resume=never``

A checkpoint counts only once its ``complete`` marker exists, so a kill at any moment leaves the
newest complete one usable, and a rerun of the same command continues from it.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path
from typing import Callable

from siammae.config import ConfigError, dump_config, read_config
from siammae.errors import SiammaeError
from siammae.files import read_jsonl, write_atomic
from siammae.weights import COMPLETE, checkpoint_dirs


def resume_from(cfg, ckpt_root: Path) -> Path | None:
    """The checkpoint to continue from: ``train.resume`` is auto (newest complete, or none), never (a
    fresh start, see :func:`set_aside`) or a checkpoint folder."""
    mode = cfg.train.resume
    if mode == "never":
        return None
    if mode == "auto":
        existing = checkpoint_dirs(ckpt_root)
        return existing[-1] if existing else None
    path = Path(mode)
    if not (path / COMPLETE).is_file():
        raise ConfigError(f"train.resume={mode}: not a complete checkpoint folder (no '{COMPLETE}' marker)")
    return path


def set_aside(out: Path) -> Path | None:
    """A fresh start in a run folder that holds an earlier run: its checkpoints and metrics move to
    ``previous-<time>/`` (never deleted: ``train.resume=never`` on the wrong folder must not cost a run)."""
    old = [out / name for name in ("checkpoints", "metrics.jsonl", "recon") if (out / name).exists()]
    if not checkpoint_dirs(out / "checkpoints", complete_only=False) and not (out / "metrics.jsonl").exists():
        return None
    dest = out / time.strftime("previous-%Y%m%d-%H%M%S")
    dest.mkdir(parents=True)
    for path in old:
        path.rename(dest / path.name)
    return dest


def prepare_run_folder(cfg, out: Path, resume: Path | None, say: Callable[[str], None]) -> None:
    """Create the folder, set an earlier run aside on a fresh start, say which settings differ from
    the run being resumed, and write this session's ``config.yaml``. Main process only."""
    out.mkdir(parents=True, exist_ok=True)
    if cfg.train.resume == "never" and (aside := set_aside(out)):
        say(f"note: train.resume=never: the earlier run's checkpoints and metrics moved to {aside}")
    previous = out / "config.yaml"
    if resume is not None and previous.is_file():
        try:
            old, new = read_config(previous).to_dict(), cfg.to_dict()
            changed = [f"{g}.{k}" for g in new for k in new[g] if old[g][k] != new[g][k] and k != "resume"]
        except ConfigError as e:
            changed = [f"(the earlier config.yaml does not read: {e})"]
        if changed:
            say(f"note: config differs from the run being resumed in: {', '.join(changed)}")
    dump_config(cfg, previous)


class CheckpointError(SiammaeError):
    """A checkpoint could not be written (a full disk, mostly); one line for the user."""


def save_checkpoint(accelerator, ckpt_root: Path, step: int, keep: int) -> Path:
    """``save_state`` into ``.partial_<step>``, then the ``complete`` marker, then renamed to
    ``checkpoint_<step>``, then prune to the last ``keep``. A kill or a full disk at any moment leaves
    no half-written checkpoint under a checkpoint's name, and the newest complete one untouched: older
    ones are removed only after the new one is in place. A failed save is a :class:`CheckpointError`."""
    path, partial = ckpt_root / f"checkpoint_{step}", ckpt_root / f".partial_{step}"
    if accelerator.is_main_process:
        for leftover in (partial, path):  # of a save that was killed before it completed
            if leftover.exists():
                shutil.rmtree(leftover)
    accelerator.wait_for_everyone()
    try:
        accelerator.save_state(str(partial))
        accelerator.wait_for_everyone()  # every rank's files (RNG states) are written
        if accelerator.is_main_process:
            for f in partial.iterdir():  # on disk before the marker says so
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
            write_atomic(partial / COMPLETE, json.dumps(dict(step=step, time=time.time())) + "\n")
            os.replace(partial, path)
    except Exception as error:  # OSError, or torch's / safetensors' own error for a failed write
        written = _size(partial)
        if accelerator.is_main_process:
            shutil.rmtree(partial, ignore_errors=True)
        raise CheckpointError(_save_failed(ckpt_root, step, error, written)) from None
    if accelerator.is_main_process:
        complete = checkpoint_dirs(ckpt_root)
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def _size(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file()) if folder.is_dir() else 0


def _save_failed(ckpt_root: Path, step: int, error: Exception, written: int) -> str:
    """What went wrong, what a checkpoint needs (the last complete one's size, else at least what was
    ``written`` before the failure), what is free, and where the rerun resumes from."""
    reason = " ".join(str(error).split())[:300] or type(error).__name__
    line = f"saving checkpoint_{step} in {ckpt_root} failed: {reason}"
    existing = checkpoint_dirs(ckpt_root)
    if existing:
        line += f"; a checkpoint takes {_size(existing[-1]) / 1e6:.0f} MB"
    else:
        line += f"; a checkpoint takes more than the {written / 1e6:.0f} MB written before it failed"
    line += f", {shutil.disk_usage(ckpt_root).free / 1e6:.0f} MB are free on its disk"
    start = f"from {existing[-1].name}" if existing else "from the start (no checkpoint was completed)"
    return line + f"; make room and rerun the same command: training resumes {start}"


def keep_metrics_until(metrics_path: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint (those steps are about to be redone)."""
    if metrics_path.is_file():
        kept = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= step]  # a torn line goes too
        write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))


def samples_per_s(record: dict) -> float:
    """Training throughput of a metrics record or run summary, written as ``pairs_per_s`` before clip
    methods came (old ``metrics.jsonl`` files keep reading)."""
    return record["samples_per_s"] if "samples_per_s" in record else record["pairs_per_s"]


def append_metrics(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
