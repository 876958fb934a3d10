"""Orchestrate a sharding run: list, split into parts, resume, fan out to workers, record.

What OUT holds is described in :mod:`siammae.shard.folder`. The main process is the only writer of
the bookkeeping files; the worker processes (:mod:`siammae.shard.pool`) write shards.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import os
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, List, Optional

from siammae.errors import SiammaeError
from siammae.files import read_jsonl, write_atomic
from siammae.shard.decode import choose_decoder
from siammae.shard.folder import PartFolder, ShardFolder
from siammae.shard.pool import Unit, WorkerPool
from siammae.shard.samples import EncodeSpec
from siammae.shard.sampling import SampleSpec
from siammae.shard.sources import Listing, Video, find_videos
from siammae.shard.writer import output_sha256, read_manifests, shard_name

FORMAT_VERSION = 2  # 2: shards are fixed units of the listing (shard-<u>.tar); 1 had per-worker shards


class ShardError(SiammaeError):
    """The run cannot go on (no videos, all failed, --strict failure, mismatching OUT, ...)."""


@dataclass(frozen=True)
class ShardConfig:
    """Everything that decides the samples (stored in OUT/.shard/config.json) plus the shard bounds."""

    sample: SampleSpec = field(default_factory=SampleSpec)
    encode: EncodeSpec = field(default_factory=EncodeSpec)
    seed: int = 0
    # Each shard holds max_samples // per_video videos (at least one), the next run of the listing.
    max_samples: int = 2000
    # Not part of the identity (a run may resume with the other decoder): siammae.shard.decode.
    decoder: str = "auto"
    # A worker process is replaced after this many videos (at its next shard boundary), so decoder
    # leaks cannot grow a long run.
    max_videos_per_worker: int = 200

    @property
    def videos_per_shard(self) -> int:
        return max(1, self.max_samples // self.sample.per_video)

    def identity(self, listing: Optional[dict] = None) -> dict:
        """What decides the output's bytes; ``listing`` ({"videos", "sha256"} of the listed srcs) too,
        since the units are runs of it."""
        sample = asdict(self.sample)
        sample["gap"] = list(sample["gap"])
        identity = {"format": FORMAT_VERSION, "sample": sample, "encode": asdict(self.encode), "seed": self.seed}
        identity["videos_per_shard"] = self.videos_per_shard
        if listing is not None:
            identity["listing"] = listing
        return identity


@dataclass(frozen=True)
class PartRun:
    """One run of one part: the output folder, which part, the options, and how to report."""

    folder: ShardFolder
    part: int
    num_parts: int
    config: ShardConfig
    workers: Optional[int]
    strict: bool
    retry_failed: bool
    progress: bool
    log: Callable[[str], None]
    started: float  # time.time() when the run began; stats.json's seconds count from it

    @property
    def part_folder(self) -> PartFolder:
        return self.folder.part(self.part)


def _hash(text: str) -> int:
    return int.from_bytes(hashlib.sha1(text.encode("utf-8")).digest()[:8], "big")


def make_units(videos: List[Video], per_unit: int) -> List[Unit]:
    """The listing cut into units of ``per_unit`` videos: unit ``u`` becomes ``shard-<u>.tar``. Videos
    are ordered by a hash of their ``src``, which mixes classes across shards and depends on nothing
    but the listing."""
    ordered = sorted(videos, key=lambda v: (_hash(v.src), v.src))
    return [Unit(u, tuple(ordered[i : i + per_unit])) for u, i in enumerate(range(0, len(ordered), per_unit))]


def part_of(unit: int, num_parts: int) -> int:
    """The part a unit belongs to (round robin: the parts' shards together are a one-machine run's)."""
    return unit % num_parts


def listing_identity(listing: Listing) -> dict:
    """The listing as the output depends on it: how many videos, and a SHA-256 of their sorted srcs."""
    text = "".join(sorted(v.src + "\n" for v in listing.videos))
    return {"videos": len(listing.videos), "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest()}


# --- bookkeeping ----------------------------------------------------------------------------------


def _dump_jsonl(records: List[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records).encode("utf-8")


def _dump_stats(stats: dict) -> bytes:
    return (json.dumps(stats, indent=1) + "\n").encode()


def _flatten(record: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}"""
    flat = {}
    for key, value in record.items():
        if isinstance(value, dict):
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[prefix + key] = value
    return flat


def _check_config(folder: ShardFolder, config: ShardConfig, listing: Listing) -> None:
    path = folder.config
    identity = config.identity(listing_identity(listing))
    if path.is_file():
        try:
            previous = json.loads(path.read_text())
        except ValueError:
            previous = None
        if previous != identity:
            old, new = _flatten(previous or {}), _flatten(identity)
            changed = ", ".join(
                f"{k} {old.get(k)} -> {new.get(k)}" for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)
            )
            raise ShardError(
                f"{folder.root} holds shards made with other options or another listing of videos ({changed}); "
                "rerun with the same options and videos, or choose a new --out"
            )
    else:
        write_atomic(path, json.dumps(identity, indent=1).encode())


def _output_totals(folder: ShardFolder, clean_part: Optional[PartFolder] = None) -> dict:
    """What OUT holds: the finished units (manifest + tar, or a manifest of a unit that had no video
    to shard) by index, their videos, samples, shards, bytes and the output's checksum. Manifests of
    ``clean_part`` whose tar is missing are deleted (a crash between the two renames)."""
    units, done, shards, samples, size = {}, set(), [], 0, 0
    for path, manifest in read_manifests(folder):
        if manifest.get("shard") and not folder.shard(manifest["shard"]).is_file():
            if clean_part and clean_part.owns(path):
                path.unlink(missing_ok=True)
            continue
        units[manifest["unit"]] = manifest
        done.update(manifest["videos"])
        samples += manifest["samples"]
        size += manifest["bytes"]
        if manifest["shard"]:
            shards.append((manifest["shard"], manifest["sha256"]))
    return {
        "units": units,
        "done": done,
        "shards": len(shards),
        "samples": samples,
        "bytes": size,
        "sha256": output_sha256(shards),
    }


def merge_records(out: str | os.PathLike) -> dict:
    """Rewrite OUT/failed.jsonl and OUT/stats.json from every part's records; returns the stats."""
    folder = ShardFolder(out)
    failed, parts = [], {}
    for part in folder.parts():
        failed += read_jsonl(part.failed)
        if part.stats.is_file():
            try:
                parts[part.name] = json.loads(part.stats.read_text())
            except ValueError:
                pass
    failed.sort(key=lambda r: r.get("src", ""))
    totals = _output_totals(folder)
    keys = [
        "videos_listed",
        "videos_missing",
        "videos_done",
        "videos_failed",
        "videos_skipped",
        "samples",
        "shards",
        "bytes",
    ]
    stats = {key: sum(p.get(key, 0) for p in parts.values()) for key in keys}
    stats["seconds"] = round(max([p.get("seconds", 0) for p in parts.values()] or [0]), 2)
    stats["peak_worker_rss_mib"] = max([p.get("peak_worker_rss_mib", 0) for p in parts.values()] or [0])
    stats["output"] = {
        "videos": len(totals["done"]),
        "failed": len(failed),
        "samples": totals["samples"],
        "shards": totals["shards"],
        "bytes": totals["bytes"],
        # one checksum of every shard's bytes and name: equal outputs have equal checksums
        "sha256": totals["sha256"],
    }
    stats["parts"] = parts
    write_atomic(folder.failed, _dump_jsonl(failed))
    write_atomic(folder.stats, _dump_stats(stats))
    return stats


# --- the run --------------------------------------------------------------------------------------


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
    try:
        config = dataclasses.replace(config, decoder=choose_decoder(config.decoder))
    except SiammaeError as error:
        raise ShardError(str(error)) from None
    started = time.time()
    listing = find_videos(src, layout, split, fold, list_file)
    if not listing.videos:
        extra = (
            f" ({listing.missing} listed entries have no file, e.g. {listing.missing_examples[0]})"
            if listing.missing
            else ""
        )
        raise ShardError(f"no videos found in {src} (layout {listing.layout}){extra}")

    if listing.layout == "images":  # one sample an image: a shard holds --shard-samples images
        config = dataclasses.replace(config, sample=dataclasses.replace(config.sample, per_video=1))
    run = PartRun(ShardFolder(out), part, num_parts, config, workers, strict, retry_failed, progress, log, started)
    run.part_folder.manifests.mkdir(parents=True, exist_ok=True)
    run.folder.tmp.mkdir(parents=True, exist_ok=True)
    with _part_lock(run.part_folder):
        return _shard_part(run, listing)


@contextlib.contextmanager
def _part_lock(part: PartFolder):
    """Hold an exclusive lock on the part's folder: two runs of one part into one OUT would collide."""
    import fcntl

    with open(part.lock, "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            raise ShardError(f"another siammae shard is writing {part.name} of {part.folder.root}") from None
        yield


def _shard_part(run: PartRun, listing: Listing) -> dict:
    """Shard the part's units not yet done, record the part's stats, merge OUT's records."""
    units = make_units(listing.videos, run.config.videos_per_shard)
    units = [u for u in units if part_of(u.index, run.num_parts) == run.part]
    videos = [v for u in units for v in u.videos]
    missing = sum(_hash(f"missing:{i}") % run.num_parts == run.part for i in range(listing.missing))
    _check_config(run.folder, run.config, listing)
    todo = _todo(run, units)
    for unit in todo:  # unfinished shards of a killed run
        (run.folder.tmp / shard_name(unit.index)).unlink(missing_ok=True)
    todo_videos = sum(len(u.videos) - len(u.skip) for u in todo)
    run.log(
        f"{listing.layout} layout: {len(listing.videos)} videos"
        + (f", {listing.missing} listed without a file" if listing.missing else "")
        + (f"; part {run.part}/{run.num_parts}: {len(videos)}" if run.num_parts > 1 else "")
        + f" in {len(units)} shards of up to {run.config.videos_per_shard}"
        + f"; {len(videos) - todo_videos} already done or failed, {todo_videos} to do"
    )

    cpu_started = time.process_time()
    pool = WorkerPool(run.part_folder, run.config, run.workers, run.strict, run.progress)
    error = pool.run(todo) if todo else None
    counts = pool.counts
    stats = {
        "part": run.part,
        "num_parts": run.num_parts,
        "layout": listing.layout,
        "videos_listed": len(videos),
        "videos_missing": missing,
        "videos_done": counts.done,
        "videos_failed": counts.failed,
        "videos_skipped": len(videos) - todo_videos,
        "samples": counts.samples,
        "shards": counts.shards,
        "bytes": counts.bytes,
        "seconds": round(time.time() - run.started, 2),
        # CPU time of the workers that exited normally, and of this process (listing, bookkeeping)
        "cpu_seconds_workers": round(counts.cpu, 2),
        "cpu_seconds_main": round(time.process_time() - cpu_started, 2),
        "decoder": run.config.decoder,
        # the largest resident memory any worker reached (workers that exited normally)
        "peak_worker_rss_mib": round(counts.peak_rss_kib / 1024, 1),
        "workers_started": pool.started,
    }
    write_atomic(run.part_folder.stats, _dump_stats(stats))
    merged = merge_records(run.folder.root)
    if error:
        raise ShardError(error)
    done = _output_totals(run.folder)["done"]
    if videos and not any(v.src in done for v in videos):
        which = f" of part {run.part}/{run.num_parts}" if run.num_parts > 1 else ""
        raise ShardError(f"all {len(videos)} videos{which} failed; reasons in {run.folder.failed}")
    if not videos:
        run.log(f"part {run.part}/{run.num_parts} holds none of the {len(listing.videos)} videos")
    return merged


def _todo(run: PartRun, units: List[Unit]) -> List[Unit]:
    """The units without a finished shard (with ``retry_failed``, also those with failed videos), each
    with the videos that failed before to skip (none with ``retry_failed``). Rewrites the part's
    failed.jsonl without a torn last line (or empty, to retry)."""
    part = run.part_folder
    finished = _output_totals(run.folder, clean_part=part)["units"]
    failed_records = [] if run.retry_failed else read_jsonl(part.failed)
    failed_before = set() if run.retry_failed else {r["src"] for r in read_jsonl(run.folder.failed) + failed_records}
    write_atomic(part.failed, _dump_jsonl(failed_records))
    todo = []
    for unit in units:
        manifest = finished.get(unit.index)
        if manifest is not None and not (run.retry_failed and manifest["failed"]):
            continue
        if manifest is not None:  # retried: not done until its new shard is committed
            part.manifest(shard_name(unit.index)).unlink(missing_ok=True)
        todo.append(unit._replace(skip=frozenset(v.src for v in unit.videos if v.src in failed_before)))
    return todo
