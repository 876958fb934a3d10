#!/usr/bin/env python3
"""Benchmark `siammae shard` against the bare sequential decord decode of the same videos.

For 1 and 2 worker processes (or --workers ...) it times, on the same videos:
  decode  every frame of every video read in order with decord (one reader per video, one thread),
          the videos split over the workers: the floor any decode-based tool pays;
  shard   a complete `siammae shard` run with the default options (8 pairs per video, short side
          256, JPEG q90 4:2:0), start-up, listing and bookkeeping included.
and prints both with the ratio shard/decode (the aim: within 2x on one core) and the
speed-up from 1 to N workers. With --decoders decord,pyav the shard run is timed with each decoder
(siammae.shard.decode), beside the same decord baseline. Medians of --repeat runs, interleaved. Wall time
shows the speed-up but suffers from other load on the machine; CPU time (summed over the processes) does not, and
equal CPU per video at 1 and N workers with a small main-process share means the work divides.

  python tools/bench_shard.py                     # 16 synthetic 10 s 320x240 x264 videos
  python tools/bench_shard.py --videos DIR        # your own videos (any folder layout)
  python tools/bench_shard.py --decoders decord,pyav --workers 1
"""

import argparse
import multiprocessing as mp
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

from siammae.shard import ShardConfig, find_videos, shard  # noqa: E402


def read_all(path: str) -> int:
    """Decode every frame of ``path`` sequentially with decord (the baseline); returns the count."""
    import decord

    reader = decord.VideoReader(path, num_threads=1)
    count = 0
    for _ in range(len(reader)):
        reader.next().asnumpy()
        count += 1
    return count


def make_videos(folder: Path, count: int, seconds: float, size, fps: float) -> None:
    """Synthetic scenes (siammae.synth.scenes) encoded with x264, made once and kept in ``folder``."""
    from siammae.synth.scenes import synth_videos

    frames = int(round(seconds * fps))
    marker = folder / f".made-{count}-{frames}-{size[0]}x{size[1]}-{fps:g}"
    if marker.is_file():
        return
    shutil.rmtree(folder, ignore_errors=True)
    print(f"making {count} synthetic videos of {frames} frames at {size[1]}x{size[0]} in {folder} ...", flush=True)
    synth_videos(folder, num_videos=count, frames=frames, size=size, fps=fps, seed=0)
    marker.touch()


def timed_read_all(path):
    """(frames, CPU seconds) of decoding every frame of ``path``."""
    started = time.process_time()
    frames = read_all(path)
    return frames, time.process_time() - started


def decode_all(paths, workers: int):
    """(wall seconds, CPU seconds) to decode every frame of ``paths`` with ``workers`` processes."""
    started = time.perf_counter()
    if workers == 1:
        results = [timed_read_all(p) for p in paths]
    else:
        with mp.get_context("forkserver").Pool(workers) as pool:
            results = list(pool.imap_unordered(timed_read_all, paths, chunksize=1))
    elapsed = time.perf_counter() - started
    decode_all.frames = sum(f for f, _ in results)
    return elapsed, sum(c for _, c in results)


def shard_all(src: Path, workers: int, decoder: str = "auto"):
    """(wall seconds, CPU seconds of workers + main) of a complete run into a fresh folder."""
    out = Path(tempfile.mkdtemp(prefix="bench-shard-out-"))
    try:
        started = time.perf_counter()
        stats = shard(src, out, ShardConfig(decoder=decoder), workers=workers, progress=False, log=lambda _: None)
        elapsed = time.perf_counter() - started
        shard_all.samples = stats["output"]["samples"]
        shard_all.bytes = stats["output"]["bytes"]
        part = stats["parts"]["part0000"]
        return elapsed, part["cpu_seconds_workers"] + part["cpu_seconds_main"]
    finally:
        shutil.rmtree(out, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=Path, help="folder of videos (default: make synthetic ones)")
    parser.add_argument("--count", type=int, default=16, help="synthetic videos")
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--size", default="240x320", help="synthetic HxW")
    parser.add_argument("--fps", type=float, default=30.0)
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "siammae-bench-shard-videos")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--decoders", default="auto", help="comma-separated: auto, decord, pyav")
    args = parser.parse_args()

    src = args.videos
    if src is None:
        src = args.cache
        make_videos(src, args.count, args.seconds, tuple(int(v) for v in args.size.split("x")), args.fps)
    paths = [v.path for v in find_videos(src).videos]
    read_all(paths[0])  # warm the page cache and the decoder libraries
    print(
        f"{len(paths)} videos in {src}; {os.cpu_count()} cores; medians of {args.repeat} runs; "
        f"load average before: {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    # Interleaved (decode, shard, for each worker count, per repeat) so that load from other
    # processes on the machine hits both sides alike; the load average is printed with the figures.
    decoders = args.decoders.split(",")
    times = {(w, kind): [] for w in args.workers for kind in ("decode", *decoders)}
    for _ in range(args.repeat):
        for workers in args.workers:
            times[workers, "decode"].append(decode_all(paths, workers))
            for decoder in decoders:
                times[workers, decoder].append(shard_all(src, workers, decoder))
    rows = {}
    for workers in args.workers:
        decode, decode_cpu = (statistics.median(x) for x in zip(*times[workers, "decode"]))
        for decoder in decoders:
            sharded, shard_cpu = (statistics.median(x) for x in zip(*times[workers, decoder]))
            rows[workers] = rows.get(workers, (decode, sharded))
            print(
                f"workers {workers}, shard --decoder {decoder}: wall: decode {decode:6.2f} s "
                f"({decode_all.frames / decode:5.0f} frames/s), shard {sharded:6.2f} s ({len(paths) / sharded:4.1f} "
                f"videos/s, {shard_all.samples / sharded:5.1f} samples/s), shard/decode {sharded / decode:4.2f}x | "
                f"CPU: decode {decode_cpu:6.2f} s, shard {shard_cpu:6.2f} s, "
                f"shard/decode {shard_cpu / decode_cpu:4.2f}x; limit: the bare decode, shard reaches "
                f"{decode_cpu / shard_cpu:.0%} of its speed (CPU time)",
                flush=True,
            )
    print(
        f"{decode_all.frames} frames decoded per pass; shard output {shard_all.samples} samples, "
        f"{shard_all.bytes / 1e6:.1f} MB"
    )
    print(f"load average after: {os.getloadavg()[0]:.1f} (above the core count, other processes shared the cores)")
    base = min(args.workers)
    for workers in args.workers:
        if workers != base:
            d0, s0 = rows[base]
            d1, s1 = rows[workers]
            print(f"speed-up {base} -> {workers} workers: shard {s0 / s1:4.2f}x   (bare decode {d0 / d1:4.2f}x)")


if __name__ == "__main__":
    main()
