"""Orchestrate a sharding run: list, split into parts, resume, fan out to workers, record.

Layout of OUT::

    OUT/part<I:04d>-w<W:02d>-<seq:06d>.tar   finished shards (the trainer globs OUT/*.tar)
    OUT/failed.jsonl                         one {"src", "path", "reason", "error"} per failed video
    OUT/stats.json                           counts of the latest run of every part + what OUT holds
    OUT/.shard/config.json                   options that decide the samples; a rerun must match
    OUT/.shard/part<I>/manifests/*.json      the videos of each finished shard (resume reads these)
    OUT/.shard/part<I>/failed.jsonl, stats.json
    OUT/.shard/tmp/                          shards being written

The main process is the only writer of the bookkeeping files; the worker processes
(:mod:`siammae.shard.pool`) write shards.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, List, Optional

from siammae.errors import SiammaeError
from siammae.shard.pool import run_workers
from siammae.shard.samples import EncodeSpec
from siammae.shard.sampling import SampleSpec
from siammae.shard.sources import find_videos
from siammae.shard.writer import read_manifests, write_atomic

FORMAT_VERSION = 1


class ShardError(SiammaeError):
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
    failed_records = [] if retry_failed else _read_jsonl(failed_path)  # drops a torn last line
    failed_before = set() if retry_failed else {r["src"] for r in _read_jsonl(out / "failed.jsonl") + failed_records}
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
        error = run_workers(todo, out, part_dir, part_name, config, workers, strict, progress, failed_path, counts)

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
