"""Worker processes of a sharding run, and the loop that feeds and watches them.

The work comes in *units*: fixed runs of videos that each become one shard
(:mod:`siammae.shard.writer`), handed to whichever worker is free, at most two in flight each.
Workers are processes (forkserver) with their own pipes (no lock shared between processes, so a
worker killed mid-write cannot wedge the others). A worker that dies (decord can crash on a corrupt
file) costs the video it was decoding, recorded as failed with reason "crash"; its unit is done again
from the start, without that video, by a new worker, so the shard is the one an uninterrupted run
would have written. A worker that dies before it has started, or many deaths in a row, stop the run
instead.
"""

from __future__ import annotations

import errno
import json
import multiprocessing as mp
import os
import resource
import shutil
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from typing import Dict, List, NamedTuple, Optional, Sequence

from siammae.shard.folder import PartFolder
from siammae.shard.samples import VideoFailed, make_samples
from siammae.shard.sources import Video
from siammae.shard.writer import UnitWriter, shard_name

IN_FLIGHT = 2  # units sent ahead to a worker, so it never waits for the main process between units
MAX_CRASHES_IN_A_ROW = 8  # worker deaths with no finished video in between: something else is wrong


class Unit(NamedTuple):
    """Videos that become shard ``index``, in order; ``skip``: the srcs among them that failed before
    (recorded in failed.jsonl), left out as they were then."""

    index: int
    videos: tuple
    skip: frozenset = frozenset()


# --- messages from a worker to the main process ---------------------------------------------------


class Ready(NamedTuple):
    """The worker has started (a death before this is the environment's fault, not a video's)."""

    worker: str


class Done(NamedTuple):
    """A video's samples are in the worker's open shard."""

    worker: str
    src: str
    samples: int


class Failed(NamedTuple):
    """A video gave no samples."""

    worker: str
    src: str
    reason: str
    message: str


class UnitClosed(NamedTuple):
    """A unit's shard is finished; ``manifest`` names its videos."""

    worker: str
    manifest: dict


class Fatal(NamedTuple):
    """The worker cannot write shards; every worker would fail the same way."""

    worker: str
    message: str
    disk_full: bool = False


class Exited(NamedTuple):
    """The worker's last message."""

    worker: str
    cpu_seconds: float
    peak_rss_kib: int  # the most resident memory the process ever had


def _worker(name: str, part: PartFolder, config, tasks, results) -> None:
    """Process the Units received on ``tasks`` until None, reporting on ``results``: :class:`Ready`
    once started, then :class:`Done` / :class:`Failed` per video and :class:`UnitClosed` per unit,
    or :class:`Fatal`; :class:`Exited` last."""
    tmp_dir = os.fspath(part.folder.tmp)
    results.send(Ready(name))
    writer = None
    try:
        while (unit := tasks.recv()) is not None:
            writer = UnitWriter(part, unit.index)
            for video in unit.videos:
                if video.src in unit.skip:
                    writer.failed.append(video.src)
                    continue
                try:
                    samples = make_samples(video, config.sample, config.encode, config.seed, tmp_dir, config.decoder)
                except VideoFailed as error:
                    writer.failed.append(video.src)
                    results.send(Failed(name, video.src, error.reason, str(error)))
                    continue
                except Exception as error:  # a decoder bug must not stop the run; record it
                    writer.failed.append(video.src)
                    results.send(Failed(name, video.src, "error", f"{type(error).__name__}: {error}"))
                    continue
                writer.add(video.src, samples)
                results.send(Done(name, video.src, len(samples)))
            results.send(UnitClosed(name, writer.close()))
            writer = None
    except OSError as error:  # disk full, OUT gone, ...
        path = writer.tmp if writer is not None else part.folder.root
        if writer is not None:
            writer.abort()
        results.send(Fatal(name, disk_error_message(path, error), error.errno in DISK_FULL))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    results.send(Exited(name, time.process_time(), peak // 1024 if sys.platform == "darwin" else peak))


def disk_error_message(path, error: OSError) -> str:
    """One line for a write that failed: the path (the error's own, else ``path``) and the error."""
    return f"writing {getattr(error, 'filename', None) or path}: {error.strerror or error}"


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)  # no space, a file-size limit, a quota


# --- the main process's side ----------------------------------------------------------------------


@dataclass
class Counts:
    """What the workers did: videos done and failed, samples, shards and bytes finished, and the CPU
    seconds of the workers that exited normally."""

    done: int = 0  # videos
    failed: int = 0  # videos
    samples: int = 0

    shards: int = 0  # finished shards and their size
    bytes: int = 0
    shard_videos: int = 0  # videos in those shards
    cpu: float = 0.0  # seconds, workers that exited normally
    peak_rss_kib: int = 0  # the largest peak resident memory of those workers


@dataclass
class _Worker:
    name: str
    process: object
    tasks: object  # Connection: main -> worker
    results: object  # Connection: worker -> main
    assigned: deque = field(default_factory=deque)  # Units sent, not yet closed, in order
    reported: List[tuple] = field(default_factory=list)  # (src, samples or None if failed) of its first unit
    videos: int = 0  # videos it reported, for its retirement
    replaced: bool = False  # its successor has been started
    ready: bool = False  # it started and said so
    stopped: bool = False  # sent None
    exited: bool = False


class WorkerPool:
    """Shards Units into ``part``'s folder with worker processes; failures are appended to the
    part's failed.jsonl as they happen. After :meth:`run`, :attr:`counts` says what was done."""

    def __init__(self, part: PartFolder, config, workers: Optional[int], strict: bool, progress: bool):
        self.part, self.config, self.workers = part, config, workers
        self.strict, self.progress = strict, progress
        self.counts = Counts()
        self.error: Optional[str] = None  # why the run stops, once it must
        self.stopping = False
        self._crashes_in_a_row = 0
        self._pool: Dict[str, _Worker] = {}
        self._serial = 0  # workers started, replacements included
        self._pending: deque = deque()
        self._by_src: Dict[str, Video] = {}
        self._context = self._failed_file = self._bar = None

    def run(self, todo: Sequence[Unit]) -> Optional[str]:
        """Shard ``todo``; returns an error message that should stop the run, or None."""
        from tqdm import tqdm

        workers = max(1, min(self.workers or os.cpu_count() or 1, len(todo)))
        self._context = mp.get_context("forkserver")
        self._context.set_forkserver_preload(["siammae.shard.pool", "numpy", "decord", "av", "simplejpeg", "PIL.Image"])
        self._pending = deque(todo)
        self._by_src = {v.src: v for unit in todo for v in unit.videos}
        self._failed_file = open(self.part.failed, "a", encoding="utf-8")
        total = sum(len(u.videos) - len(u.skip) for u in todo)
        self._bar = tqdm(total=total, unit="video", disable=not self.progress, dynamic_ncols=True, smoothing=0.05)
        try:
            for _ in range(workers):
                self._start_worker()
            self._serve()
        except BaseException:
            for worker in self._pool.values():
                if worker.process.is_alive():
                    worker.process.terminate()
            raise
        finally:
            self._close()
        return self.error

    def _serve(self) -> None:
        """Feed the workers and handle their messages until every one has exited."""
        while True:
            live = {w.results: w for w in self._pool.values() if not w.exited}
            if not live:
                return
            for worker in list(live.values()):
                self._tend(worker)
            for conn in wait(list(live), timeout=1.0):
                worker = live[conn]
                try:
                    message = conn.recv()
                except (EOFError, OSError):
                    self._bury(worker)
                    continue
                self._handle(worker, message)

    def _close(self) -> None:
        self._bar.close()
        self._failed_file.close()
        for worker in self._pool.values():
            worker.process.join(timeout=10)
            if not worker.tasks.closed:
                worker.tasks.close()
                worker.results.close()

    def _stop(self, error: str) -> None:
        """Stop handing out units; the first error is the one reported."""
        self.error = self.error or error
        self.stopping = True

    def _start_worker(self) -> None:
        name = f"{self.part.name}-w{self._serial:02d}"
        self._serial += 1
        task_recv, task_send = self._context.Pipe(duplex=False)
        result_recv, result_send = self._context.Pipe(duplex=False)
        process = self._context.Process(
            target=_worker, args=(name, self.part, self.config, task_recv, result_send), daemon=True
        )
        process.start()
        task_recv.close()  # only the child's copies stay open, so its death reads as EOF here
        result_send.close()
        self._pool[name] = _Worker(name, process, task_send, result_recv)

    def _record_failure(self, video: Video, reason: str, message: str) -> None:
        line = {"src": video.src, "path": video.path, "reason": reason, "error": message}
        self._failed_file.write(json.dumps(line, ensure_ascii=False) + "\n")
        self._failed_file.flush()
        self.counts.failed += 1
        self._bar.update(1)
        if self.strict:
            self._stop(f"{video.src}: {reason}: {message} (--strict stops at the first failure)")

    def _handle(self, worker: _Worker, message) -> None:
        counts = self.counts
        if isinstance(message, Ready):
            worker.ready = True
        elif isinstance(message, Done):
            self._crashes_in_a_row = 0
            worker.reported.append((message.src, message.samples))
            worker.videos += 1
            counts.done += 1
            counts.samples += message.samples
            self._bar.update(1)
        elif isinstance(message, Failed):
            worker.reported.append((message.src, None))
            worker.videos += 1
            self._record_failure(self._by_src[message.src], message.reason, message.message)
        elif isinstance(message, UnitClosed):
            worker.assigned.popleft()
            worker.reported = []
            if message.manifest["shard"]:
                counts.shards += 1
                counts.bytes += message.manifest["bytes"]
                counts.shard_videos += len(message.manifest["videos"])
        elif isinstance(message, Fatal):
            self._stop(message.message + (self._space_needed() if message.disk_full else ""))
        elif isinstance(message, Exited):
            counts.cpu += message.cpu_seconds
            counts.peak_rss_kib = max(counts.peak_rss_kib, message.peak_rss_kib)
            worker.exited = True
        self._bar.set_postfix(samples=counts.samples, failed=counts.failed, refresh=False)

    def _space_needed(self) -> str:
        """What a full disk needs to finish the run: the videos left times the bytes of a sharded video."""
        left = sum(len(u.videos) - len(u.skip) for u in self._pending)
        left += sum(len(u.videos) - len(u.skip) for w in self._pool.values() for u in w.assigned)
        free = shutil.disk_usage(self.part.folder.root).free
        if self.counts.shard_videos:
            per_video = self.counts.bytes / self.counts.shard_videos
            need = f"about {left * per_video / 1e6:.0f} MB more for the {left} videos left"
            need += f" ({per_video / 1e6:.2f} MB a video so far)"
        else:
            need = f"room for {left} videos (no shard finished yet to estimate their size)"
        return f"; the run needs {need}, {free / 1e6:.0f} MB are free; make room and rerun the same command to resume"

    def _bury(self, worker: _Worker) -> None:
        """A worker died: blame the video it was on, redo its units from the start (minus that video)."""
        worker.exited = True
        worker.process.join(timeout=5)
        worker.tasks.close()
        worker.results.close()
        code = worker.process.exitcode
        if not worker.ready:  # the environment, not a video: stop rather than respawn forever
            self._stop(f"a worker process died while starting (exit code {code}; its traceback, if any, is above)")
        units = list(worker.assigned)
        if units and worker.ready:
            first, reported = units[0], {src for src, _ in worker.reported}
            current = next((v for v in first.videos if v.src not in first.skip and v.src not in reported), None)
            failed = {src for src, n in worker.reported if n is None}
            if current is not None:
                self._record_failure(current, "crash", f"worker died (exit code {code}) while decoding")
                failed.add(current.src)
                self._crashes_in_a_row += 1
                if self._crashes_in_a_row >= MAX_CRASHES_IN_A_ROW:
                    self._stop(f"{MAX_CRASHES_IN_A_ROW} workers in a row died while decoding")
            done = [(src, n) for src, n in worker.reported if n is not None]
            self.counts.done -= len(done)  # done again with the unit
            self.counts.samples -= sum(n for _, n in done)
            self._bar.update(-len(done))
            units[0] = first._replace(skip=first.skip | failed)
        self._pending.extendleft(reversed(units))
        for unit in units:
            (self.part.folder.tmp / shard_name(unit.index)).unlink(missing_ok=True)
        if not self.stopping:
            self._start_worker()

    @property
    def started(self) -> int:
        """Worker processes started so far (replacements included)."""
        return self._serial

    def _retiring(self, worker: _Worker) -> bool:
        """It has reported ``max_videos_per_worker`` videos: it gets no more units, finishes those it
        has, and a fresh process takes its place (whatever a decoder leaks goes with the old one)."""
        return worker.videos >= self.config.max_videos_per_worker

    def _tend(self, worker: _Worker) -> None:
        """Keep IN_FLIGHT units in flight; send None once there is nothing left for it or it retires."""
        if worker.exited or worker.stopped:
            return
        retiring = self._retiring(worker)
        if retiring and not self.stopping and self._pending and not worker.replaced:
            worker.replaced = True
            self._start_worker()
        while not self.stopping and not retiring and self._pending and len(worker.assigned) < IN_FLIGHT:
            unit = self._pending.popleft()
            worker.assigned.append(unit)
            try:
                worker.tasks.send(unit)
            except OSError:  # it died; its pipe reads EOF next and _bury() requeues this unit
                return
        if not worker.assigned and (self.stopping or retiring or not self._pending):
            worker.stopped = True
            try:
                worker.tasks.send(None)
            except OSError:
                pass
