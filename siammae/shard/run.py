"""Orchestrate a sharding run: list, split into parts, resume, fan out to workers, record.

Layout of OUT::

    OUT/part<I:04d>-w<W:02d>-<seq:06d>.tar   finished shards (the trainer globs OUT/*.tar)
    OUT/failed.jsonl                         one {"src", "path", "reason", "error"} per failed video
    OUT/stats.json                           counts of the latest run of every part + what OUT holds
    OUT/.shard/config.json                   options that decide the samples; a rerun must match
    OUT/.shard/part<I>/manifests/*.json      the videos of each finished shard (resume reads these)
    OUT/.shard/part<I>/failed.jsonl, stats.json
    OUT/.shard/tmp/                          shards being written

Workers are processes (forkserver) with their own pipes; the main process is the only writer of
the bookkeeping files. A worker that dies (decord can crash on a corrupt file) costs the video it was
decoding, which is recorded as failed, and its unfinished shard, whose videos are queued again; a
new worker takes its place.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import multiprocessing as mp
import os
import time
from collections import deque
from dataclasses import asdict, dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Callable, Dict, List, Optional

from siammae.shard.sampling import SampleSpec
from siammae.shard.samples import EncodeSpec, VideoFailed, make_samples
from siammae.shard.sources import find_videos
from siammae.shard.writer import ShardWriter, read_manifests, write_atomic

FORMAT_VERSION = 1
MAX_CRASHES_IN_A_ROW = 8  # worker deaths with no finished video in between: something else is wrong


class ShardError(RuntimeError):
    """The run cannot go on (no videos, all failed, --strict failure, mismatching OUT, ...)."""


@dataclass(frozen=True)
class ShardConfig:
    """Everything that decides the samples (stored in OUT/.shard/config.json) plus the shard bounds."""

    sample: SampleSpec = field(default_factory=SampleSpec)
    encode: EncodeSpec = field(default_factory=EncodeSpec)
    seed: int = 0
    max_samples: int = 2000
    max_bytes: int = 1 << 30

    def identity(self) -> dict:
        sample = asdict(self.sample)
        sample["gap"] = list(sample["gap"])
        return {"format": FORMAT_VERSION, "sample": sample, "encode": asdict(self.encode), "seed": self.seed}


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def part_of(src: str, num_parts: int) -> int:
    """The part a video belongs to: a hash of its ``src`` (stable when other files come or go)."""
    return _hash(src) % num_parts


# --- the worker process ---------------------------------------------------------------------------


def _worker(worker_id: str, out: str, state: str, config: ShardConfig, tasks, results) -> None:
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


# --- bookkeeping ----------------------------------------------------------------------------------


def _read_jsonl(path: Path) -> List[dict]:
    """Records of a JSON-lines file; a torn last line (killed mid-write) is dropped."""
    records = []
    if path.is_file():
        for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                records.append(json.loads(line))
            except ValueError:
                continue
    return records


def _dump_jsonl(records: List[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _flatten(record: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _check_config(state_root: Path, config: ShardConfig) -> None:
    path = state_root / "config.json"
    identity = config.identity()
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = None
        if previous != identity:
            old, new = _flatten(previous or {}), _flatten(identity)
            changed = ", ".join(f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k))
            raise ShardError(
                f"{path.parent.parent} holds shards made with other options ({changed}); "
                "rerun with the same options or choose a new --out"
            )
    else:
        write_atomic(path, json.dumps(identity, indent=1).encode())


def _output_totals(out: Path, state_root: Path, clean_part: Optional[str] = None) -> dict:
    """What OUT holds: finished shards (manifest + tar), their videos and samples. Manifests of
    ``clean_part`` without a tar are deleted (a crash between the two renames)."""
    done, shards, samples, size = set(), 0, 0, 0
    for path, manifest in read_manifests(state_root):
        if not (out / manifest.get("shard", "")).is_file():
            if clean_part and path.parent.parent.name == clean_part:
                path.unlink(missing_ok=True)
            continue
        done.update(manifest["videos"])
        shards += 1
        samples += manifest["samples"]
        size += manifest["bytes"]
    return {"done": done, "shards": shards, "samples": samples, "bytes": size}


def merge_records(out: str | os.PathLike) -> dict:
    """Rewrite OUT/failed.jsonl and OUT/stats.json from every part's records; returns the stats."""
    out = Path(out)
    state_root = out / ".shard"
    failed, parts = [], {}
    for part_dir in sorted(state_root.glob("part*")):
        failed += _read_jsonl(part_dir / "failed.jsonl")
        stats_path = part_dir / "stats.json"
        if stats_path.is_file():
            try:
                parts[part_dir.name] = json.loads(stats_path.read_text())
            except ValueError:
                pass
    failed.sort(key=lambda r: r.get("src", ""))
    totals = _output_totals(out, state_root)
    keys = ["videos_listed", "videos_missing", "videos_done", "videos_failed", "videos_skipped", "samples", "shards", "bytes"]
    stats = {key: sum(p.get(key, 0) for p in parts.values()) for key in keys}
    stats["seconds"] = round(max([p.get("seconds", 0) for p in parts.values()] or [0]), 2)
    stats["output"] = {
        "videos": len(totals["done"]),
        "failed": len(failed),
        "samples": totals["samples"],
        "shards": totals["shards"],
        "bytes": totals["bytes"],
    }
    stats["parts"] = parts
    write_atomic(out / "failed.jsonl", _dump_jsonl(failed))
    write_atomic(out / "stats.json", (json.dumps(stats, indent=1) + "\n").encode())
    return stats


# --- the run --------------------------------------------------------------------------------------


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


def shard(
    src: str | os.PathLike,
    out: str | os.PathLike,
    config: ShardConfig = ShardConfig(),
    *,
    layout: str = "auto",
    split: Optional[str] = None,
    fold: int = 1,
    list_file: Optional[str | os.PathLike] = None,
    workers: Optional[int] = None,
    part: int = 0,
    num_parts: int = 1,
    strict: bool = False,
    retry_failed: bool = False,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> dict:
    """Shard the videos of ``src`` (part ``part`` of ``num_parts``) into ``out``; returns OUT's stats.

    Resumes: videos in finished shards or in failed.jsonl (unless ``retry_failed``) are skipped.
    Raises :class:`ShardError` when there is nothing to shard or nothing could be sharded.
    """
    if not 0 <= part < num_parts:
        raise ShardError(f"--part {part} is outside 0..{num_parts - 1}")
    if importlib.util.find_spec("decord") is None:
        raise ShardError("decord is not installed: pip install decord (wheels exist for x86-64 only)")
    started = time.time()
    listing = find_videos(src, layout, split, fold, list_file)
    if not listing.videos:
        extra = f" ({listing.missing} listed entries have no file, e.g. {listing.missing_examples[0]})" if listing.missing else ""
        raise ShardError(f"no videos found in {src} (layout {listing.layout}){extra}")
    videos = [v for v in listing.videos if part_of(v.src, num_parts) == part]
    missing = sum(part_of(f"missing:{i}", num_parts) == part for i in range(listing.missing))

    out = Path(out)
    state_root = out / ".shard"
    part_name = f"part{part:04d}"
    part_dir = state_root / part_name
    (part_dir / "manifests").mkdir(parents=True, exist_ok=True)
    (state_root / "tmp").mkdir(parents=True, exist_ok=True)
    with _part_lock(part_dir):
        return _shard_part(
            listing, videos, missing, out, part, num_parts, config, workers, strict, retry_failed, progress, log, started
        )


@contextlib.contextmanager
def _part_lock(part_dir: Path):
    """Hold an exclusive lock on the part's folder: two runs of one part into one OUT would collide."""
    import fcntl

    with open(part_dir / "lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ShardError(f"another siammae shard is writing {part_dir.name} of {part_dir.parent.parent}") from None
        yield


def _shard_part(listing, videos, missing, out, part, num_parts, config, workers, strict, retry_failed, progress, log, started):
    state_root = out / ".shard"
    part_name = f"part{part:04d}"
    part_dir = state_root / part_name
    _check_config(state_root, config)
    for stale in (state_root / "tmp").glob(f"{part_name}-*"):  # unfinished shards of a killed run
        stale.unlink(missing_ok=True)

    done = _output_totals(out, state_root, clean_part=part_name)["done"]
    failed_path = part_dir / "failed.jsonl"
    failed_records = _read_jsonl(failed_path)
    if retry_failed:
        failed_records = []
    failed_before = {r["src"] for r in _read_jsonl(out / "failed.jsonl")} | {r["src"] for r in failed_records}
    if retry_failed:
        failed_before = set()
    write_atomic(failed_path, _dump_jsonl(failed_records))
    todo = [v for v in videos if v.src not in done and v.src not in failed_before]
    todo.sort(key=lambda v: _hash(v.src))  # mixes classes across shards
    log(
        f"{listing.layout} layout: {len(listing.videos)} videos"
        + (f", {listing.missing} listed without a file" if listing.missing else "")
        + (f"; part {part}/{num_parts}: {len(videos)}" if num_parts > 1 else "")
        + f"; {len(videos) - len(todo)} already done or failed, {len(todo)} to do"
    )

    counts = {"done": 0, "failed": 0, "samples": 0, "shards": 0, "bytes": 0, "cpu": 0.0}
    cpu_started = time.process_time()
    error = None
    if todo:
        error = _run_workers(todo, out, part_dir, part_name, config, workers, strict, progress, failed_path, counts)

    stats = {
        "part": part,
        "num_parts": num_parts,
        "layout": listing.layout,
        "videos_listed": len(videos),
        "videos_missing": missing,
        "videos_done": counts["done"],
        "videos_failed": counts["failed"],
        "videos_skipped": len(videos) - len(todo),
        "samples": counts["samples"],
        "shards": counts["shards"],
        "bytes": counts["bytes"],
        "seconds": round(time.time() - started, 2),
        # CPU time of the workers that exited normally, and of this process (listing, bookkeeping)
        "cpu_seconds_workers": round(counts["cpu"], 2),
        "cpu_seconds_main": round(time.process_time() - cpu_started, 2),
    }
    write_atomic(part_dir / "stats.json", (json.dumps(stats, indent=1) + "\n").encode())
    merged = merge_records(out)
    if error:
        raise ShardError(error)
    part_done = sum(1 for v in videos if v.src in _output_totals(out, state_root)["done"])
    if videos and part_done == 0:
        which = f" of part {part}/{num_parts}" if num_parts > 1 else ""
        raise ShardError(f"all {len(videos)} videos{which} failed; reasons in {out / 'failed.jsonl'}")
    if not videos:
        log(f"part {part}/{num_parts} holds none of the {len(listing.videos)} videos")
    return merged


def _run_workers(todo, out, part_dir, part_name, config, workers, strict, progress, failed_path, counts) -> Optional[str]:
    """Feed ``todo`` to worker processes; update ``counts``; returns an error message or None.

    Each worker has its own pipes (no lock shared between processes, so a worker killed mid-write
    cannot wedge the others) and at most two videos in flight.
    """
    from tqdm import tqdm

    workers = max(1, min(workers or os.cpu_count() or 1, len(todo)))
    context = mp.get_context("forkserver")
    context.set_forkserver_preload(["siammae.shard.run", "numpy", "decord", "simplejpeg", "PIL.Image"])
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
        """Keep two videos in flight; send None once there is nothing left for it."""
        if worker.exited or worker.stopped:
            return
        while not state["stopping"] and pending and len(worker.assigned) < 2:
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
