"""Worker processes of a sharding run, and the loop that feeds and watches them.

Workers are processes (forkserver) with their own pipes (no lock shared between processes, so a
worker killed mid-write cannot wedge the others), at most two videos in flight each. A worker that
dies (decord can crash on a corrupt file) costs the video it was decoding, recorded as failed with
reason "crash", and its unfinished shard, whose videos are queued again; a new worker takes its
place. A worker that dies before it has started, or many deaths in a row, stop the run instead.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Dict, List, Optional

from siammae.shard.samples import VideoFailed, make_samples
from siammae.shard.writer import ShardWriter

IN_FLIGHT = 2  # videos sent ahead to a worker, so it never waits for the main process between videos
MAX_CRASHES_IN_A_ROW = 8  # worker deaths with no finished video in between: something else is wrong


def _worker(worker_id: str, out: str, state: str, config, tasks, results) -> None:
    """Process the Videos received on ``tasks`` until None, reporting on ``results``:
    ("done", id, src, n_samples) | ("failed", id, src, reason, message) | ("shard", id, manifest) |
    ("fatal", id, message) | ("exit", id, cpu_seconds), after ("ready", id) once it has started."""
    writer = ShardWriter(Path(out), Path(state), worker_id, config.max_samples, config.max_bytes)
    tmp_dir = os.path.join(out, ".shard", "tmp")
    results.send(("ready", worker_id))
    try:
        while True:
            video = tasks.recv()
            if video is None:
                break
            try:
                samples = make_samples(video, config.sample, config.encode, config.seed, tmp_dir)
            except VideoFailed as error:
                results.send(("failed", worker_id, video.src, error.reason, str(error)))
                continue
            except Exception as error:  # a decoder bug must not stop the run; record it
                results.send(("failed", worker_id, video.src, "error", f"{type(error).__name__}: {error}"))
                continue
            closed = writer.add(video.src, samples)
            if closed:
                results.send(("shard", worker_id, closed))
            results.send(("done", worker_id, video.src, len(samples)))
        closed = writer.close()
        if closed:
            results.send(("shard", worker_id, closed))
    except OSError as error:  # disk full, OUT gone, ...: every worker would fail the same way
        writer.abort()
        results.send(("fatal", worker_id, f"writing shards in {out}: {error}"))
    results.send(("exit", worker_id, time.process_time()))


@dataclass
class _Worker:
    name: str
    process: object
    tasks: object  # Connection: main -> worker
    results: object  # Connection: worker -> main
    assigned: deque = field(default_factory=deque)  # Videos sent, not yet reported, in order
    unflushed: List[tuple] = field(default_factory=list)  # (Video, samples) done, shard not closed yet
    ready: bool = False  # it started and said so
    stopped: bool = False  # sent None
    exited: bool = False


def run_workers(todo, out, part_dir, part_name, config, workers, strict, progress, failed_path, counts) -> Optional[str]:
    """Shard the Videos ``todo`` with ``workers`` processes writing into ``out``; failures are
    appended to ``failed_path``; ``counts`` (done, failed, samples, shards, bytes, cpu) is updated.
    Returns an error message that should stop the run, or None."""
    from tqdm import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["siammae.shard.pool", "numpy", "decord", "simplejpeg", "PIL.Image"])
    pending = deque(todo)
    pool: Dict[str, _Worker] = {}
    serial = [0]
    state = {"error": None, "stopping": False, "crashes_in_a_row": 0}

    def start_worker():
        name = f"{part_name}-w{serial[0]:02d}"
        serial[0] += 1
        task_recv, task_send = context.Pipe(duplex=False)
        result_recv, result_send = context.Pipe(duplex=False)
        process = context.Process(
            target=_worker, args=(name, os.fspath(out), os.fspath(part_dir), config, task_recv, result_send), daemon=True
        )
        process.start()
        task_recv.close()  # only the child's copies stay open, so its death reads as EOF here
        result_send.close()
        pool[name] = _Worker(name, process, task_send, result_recv)

    failed_file = open(failed_path, "a", encoding="utf-8")
    bar = tqdm(total=len(todo), unit="video", disable=not progress, dynamic_ncols=True, smoothing=0.05)

    def record_failure(video, reason, message):
        line = {"src": video.src, "path": video.path, "reason": reason, "error": message}
        failed_file.write(json.dumps(line, ensure_ascii=False) + "\n")
        failed_file.flush()
        counts["failed"] += 1
        bar.update(1)
        if strict and state["error"] is None:
            state["error"] = f"{video.src}: {reason}: {message} (--strict stops at the first failure)"
            state["stopping"] = True

    def handle(worker: _Worker, message):
        kind = message[0]
        if kind == "ready":
            worker.ready = True
        elif kind == "done":
            state["crashes_in_a_row"] = 0
            video = worker.assigned.popleft()
            worker.unflushed.append((video, message[3]))
            counts["done"] += 1
            counts["samples"] += message[3]
            bar.update(1)
        elif kind == "failed":
            record_failure(worker.assigned.popleft(), message[3], message[4])
        elif kind == "shard":
            names = set(message[2]["videos"])
            worker.unflushed = [(v, n) for v, n in worker.unflushed if v.src not in names]
            counts["shards"] += 1
            counts["bytes"] += message[2]["bytes"]
        elif kind == "fatal":
            state["error"] = state["error"] or message[2]
            state["stopping"] = True
        elif kind == "exit":
            counts["cpu"] += message[2]
            worker.exited = True
        bar.set_postfix(samples=counts["samples"], failed=counts["failed"], refresh=False)

    def bury(worker: _Worker):
        """A worker died: blame its current video, requeue the rest and its unfinished shard's videos."""
        worker.exited = True
        worker.process.join(timeout=5)
        worker.tasks.close()
        worker.results.close()
        code = worker.process.exitcode
        if not worker.ready:  # the environment, not a video: stop rather than respawn forever
            state["error"] = state["error"] or f"a worker process died while starting (exit code {code}; its traceback, if any, is above)"
            state["stopping"] = True
        elif worker.assigned:
            record_failure(worker.assigned.popleft(), "crash", f"worker died (exit code {code}) while decoding")
            state["crashes_in_a_row"] += 1
            if state["crashes_in_a_row"] >= MAX_CRASHES_IN_A_ROW:
                state["error"] = state["error"] or f"{MAX_CRASHES_IN_A_ROW} workers in a row died while decoding"
                state["stopping"] = True
        pending.extendleft(reversed(list(worker.assigned) + [v for v, _ in worker.unflushed]))
        counts["done"] -= len(worker.unflushed)
        counts["samples"] -= sum(n for _, n in worker.unflushed)
        bar.update(-len(worker.unflushed))
        for stale in (out / ".shard" / "tmp").glob(f"{worker.name}-*"):
            stale.unlink(missing_ok=True)
        if not state["stopping"]:
            start_worker()

    def tend(worker: _Worker):
        """Keep IN_FLIGHT videos in flight; send None once there is nothing left for it."""
        if worker.exited or worker.stopped:
            return
        while not state["stopping"] and pending and len(worker.assigned) < IN_FLIGHT:
            video = pending.popleft()
            worker.assigned.append(video)
            try:
                worker.tasks.send(video)
            except OSError:  # it died; its pipe reads EOF next and bury() requeues this video
                return
        if not worker.assigned and (state["stopping"] or not pending):
            worker.stopped = True
            try:
                worker.tasks.send(None)
            except OSError:
                pass

    try:
        for _ in range(workers):
            start_worker()
        while True:
            live = {w.results: w for w in pool.values() if not w.exited}
            if not live:
                break
            for worker in list(live.values()):
                tend(worker)
            for conn in wait(list(live), timeout=1.0):
                worker = live[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    bury(worker)
                    continue
                handle(worker, message)
    except BaseException:
        for worker in pool.values():
            if worker.process.is_alive():
                worker.process.terminate()
        raise
    finally:
        bar.close()
        failed_file.close()
        for worker in pool.values():
            worker.process.join(timeout=10)
            if not worker.tasks.closed:
                worker.tasks.close()
                worker.results.close()
    return state["error"]
