"""Many videos at once: worker processes on one machine, or the processes of a launcher.

Videos are independent, so both forms only split the list: ``--workers N`` runs N spawned worker
processes, each with 1/N of the CPU threads and its own copy of the extractor (the encoder's weights
travel through shared memory), taking the next sequence as they finish one; under ``accelerate
launch -m siammae.propagate`` (or torchrun) process r of W takes videos r, r + W, ... on its own
device. Every video is computed by the same code on the same inputs, so the files written are the
ones a single process writes; only the timings differ.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Callable, List, Optional

import torch


@dataclass
class SequenceJob:
    """What every process needs to propagate one video (picklable: sent once to each worker), as two
    module-level functions or partials of them: ``extractor()`` makes the feature extractor (the
    encoder travels inside it), ``run(extractor, video, progress) -> timings`` propagates one video and
    writes what it gives (a task's)."""

    extractor: Callable
    run: Callable


_WORKER = {}  # inside a worker process: its job and extractor


def _start_worker(job: SequenceJob, threads: int) -> None:
    torch.set_num_threads(threads)
    _WORKER.update(job=job, extractor=job.extractor())


def _run_in_worker(video):
    return video.name, _WORKER["job"].run(_WORKER["extractor"], video, False)


def propagate_in_workers(job: SequenceJob, seqs: List, workers: int = 1, progress: bool = True) -> dict:
    """Propagate ``seqs`` (videos with a ``name``) with ``workers`` processes (1: in this process) and
    return their timings in the order of ``seqs``."""
    from tqdm import tqdm

    bar = dict(total=len(seqs), desc="sequences", unit="seq", dynamic_ncols=True, disable=not progress)
    if workers <= 1 or len(seqs) <= 1:
        extractor = job.extractor()
        return {seq.name: job.run(extractor, seq, progress) for seq in tqdm(seqs, **bar)}
    workers = min(workers, len(seqs))
    threads = max(1, torch.get_num_threads() // workers)
    context = torch.multiprocessing.get_context("spawn")  # fork would copy the parent's OpenMP state
    with context.Pool(workers, _start_worker, (job, threads)) as pool:
        timings = dict(tqdm(pool.imap_unordered(_run_in_worker, seqs), **bar))
    return {seq.name: timings[seq.name] for seq in seqs}


def launched_processes():
    """Accelerate's process state when this process is one of several started by a launcher
    (``accelerate launch``, torchrun: WORLD_SIZE > 1), else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    from accelerate import PartialState

    return PartialState()


def merge_parts(state, timings: dict, names: List[str]) -> Optional[dict]:
    """Every launched process's timings gathered (``accelerate.utils.gather_object``); the main process
    gets them in the order of ``names``, the others None."""
    from accelerate.utils import gather_object

    merged = {}
    for part in gather_object([timings]):
        merged.update(part)
    if not state.is_main_process:
        return None
    return {name: merged[name] for name in names}
