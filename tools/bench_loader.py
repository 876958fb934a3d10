#!/usr/bin/env python3
"""Training-input throughput per CPU core: our shard pipeline vs decoding videos on the fly.

Everything runs in this one process, pinned to one core with one thread, so the figures are per core
(a DataLoader with W workers scales them by about W). Measured, in turns, median of --repeat runs:

  pipeline     siammae.data.loader as the trainer runs it: tar read -> shuffle -> decode f0/f1 (simplejpeg)
               -> one random-resized crop + flip for both frames, cut into a 224 px uint8 batch. Once with
               repeated sampling 1 (one training pair per decoded pair: the like-for-like figure) and
               once with the recipe's 2 (training pairs per second as the trainer sees them).
  floor        tar read + the two JPEG decodes only: what any shard-based loader pays.
  on the fly   (--videos) decord: a random video, a random pair gap 4..48 at 30 fps (scaled to the
               video's rate), both frames decoded by seeking, the same crop/flip/resize and batching.
               Once opening the video per sample (what a Dataset's __getitem__ does), once with
               every reader kept open (the best case).

Targets: pipeline >= 20x on the fly, >= 85% of the floor (the limit it is reported against). The last line
is one JSON object.

  python tools/bench_loader.py --shards shards/ --videos videos/
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

import simplejpeg  # noqa: E402
import torch  # noqa: E402
import webdataset as wds  # noqa: E402

from siammae.config import load_config  # noqa: E402
from siammae.data.loader import batches, make_dataset, resolve_shards  # noqa: E402
from siammae.data.views import View, random_resized_crop  # noqa: E402

VIDEO_SUFFIXES = {".mp4", ".avi", ".mkv", ".webm", ".mov"}


def pin_to_one_core() -> int:
    core = sorted(os.sched_getaffinity(0))[-1]
    os.sched_setaffinity(0, {core})
    torch.set_num_threads(1)
    return core


def timed(iterator, batches: int, warmup: int, batch_size: int) -> float:
    """Pairs per CPU second of this process over ``batches`` batches after ``warmup`` batches.

    CPU time, not wall time: the loop is single-threaded on a pinned core and reads files from the
    page cache, so its CPU time is its cost, while wall time also counts whatever else the shared
    machine runs on that core (wall-clock figures here were seen to swing by +-20% run to run)."""
    for _ in range(warmup):
        next(iterator)
    start = time.process_time()
    for _ in range(batches):
        next(iterator)
    return batches * batch_size / (time.process_time() - start)


def pipeline_rate(urls, repeats: int, args) -> float:
    cfg = load_config(None, [f"data.repeated_sampling={repeats}", f"data.shuffle_buffer={args.shuffle}"]).data
    dataset = make_dataset(urls, cfg, size=args.size, batch_size=args.batch, seed=random.random())
    return timed(iter(dataset), args.batches, 2, args.batch)


def floor_rate(urls, args) -> float:
    def pairs():
        stream = wds.DataPipeline(
            lambda: ({"url": random.choice(urls)} for _ in iter(int, 1)), wds.tarfile_to_samples()
        )
        for sample in stream:
            yield [simplejpeg.decode_jpeg(sample[f"f{t}.jpg"], colorspace="RGB") for t in range(2)]

    def batches(src):
        # Each decoded pair is dropped at once: holding a batch of decoded frames (33 MB at 224 px)
        # made this "floor" slower than the decodes inside the pipeline (cache and page faults;
        # docs/benchmarks.md).
        while True:
            for _ in range(args.batch):
                next(src)
            yield None

    return timed(batches(pairs()), args.batches, 2, args.batch)


def on_the_fly_rate(videos, args, reuse: bool) -> float:
    """Random pairs decoded from the videos with decord, augmented and batched like the pipeline."""
    import decord

    readers = {}
    rng = random.Random(0)

    def reader(path):
        if not reuse:
            return decord.VideoReader(str(path), num_threads=1)
        if path not in readers:
            readers[path] = decord.VideoReader(str(path), num_threads=1)
        return readers[path]

    def pairs():
        while True:
            path = rng.choice(videos)
            vr = reader(path)
            n, fps = len(vr), vr.get_avg_fps() or 30.0
            gap = max(1, round(rng.randint(4, 48) * fps / 30.0))
            if n <= gap:
                continue
            first = rng.randrange(n - gap)
            frames = list(vr.get_batch([first, first + gap]).asnumpy())
            box = random_resized_crop(rng, *frames[0].shape[:2], (0.5, 1.0), (3 / 4, 4 / 3))
            yield View(frames, box, rng.random() < 0.5, str(path))

    # Cut into batches by the pipeline's own batch stage, so both loaders pay the same after decoding.
    return timed(batches(args.batch, args.size)(pairs()), max(1, args.batches // 8), 1, args.batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shards", required=True, help="folder (or glob / brace pattern) of training shards")
    parser.add_argument("--videos", type=Path, help="the videos the shards came from (adds the on-the-fly figures)")
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--batches", type=int, default=16, help="timed batches per run (on the fly: / 8)")
    parser.add_argument("--shuffle", type=int, default=256, help="shuffle buffer (compressed samples)")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()

    urls = resolve_shards([args.shards])
    videos = sorted(p for p in args.videos.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES) if args.videos else []
    if args.videos and not videos:
        parser.error(f"--videos {args.videos}: no videos found")
    core = pin_to_one_core()
    print(
        f"{len(urls)} shards, {len(videos)} videos; one core (#{core}), one thread; {args.size} px, "
        f"batches of {args.batch}; median of {args.repeat}",
        flush=True,
    )

    runs = {
        "pipeline": lambda: pipeline_rate(urls, 1, args),
        "pipeline_r2": lambda: pipeline_rate(urls, 2, args),
        "floor": lambda: floor_rate(urls, args),
    }
    if videos:
        runs["on_the_fly"] = lambda: on_the_fly_rate(videos, args, reuse=False)
        runs["on_the_fly_reused"] = lambda: on_the_fly_rate(videos, args, reuse=True)
    rates = {name: [] for name in runs}
    for _ in range(args.repeat):  # in turns, so a busy neighbour slows every figure alike
        for name, fn in runs.items():
            rates[name].append(fn())
    result = {name: round(statistics.median(v), 1) for name, v in rates.items()}
    for name, v in rates.items():
        print(f"  {name:18s} {result[name]:8.1f} pairs per CPU second   (runs: {', '.join(f'{x:.0f}' for x in v)})")

    report = {
        "pipeline_pairs_per_s": result["pipeline"],
        "pipeline_r2_pairs_per_s": result["pipeline_r2"],
        "floor_pairs_per_s": result["floor"],
        # Median of the per-round ratios: a round's two figures are measured back to back, so
        # a busy neighbour slows both alike and the ratio varies less than either figure.
        "fraction_of_floor": round(statistics.median(p / f for p, f in zip(rates["pipeline"], rates["floor"])), 3),
        "size": args.size,
        "batch": args.batch,
    }
    if videos:
        best_fly = max(result["on_the_fly"], result["on_the_fly_reused"])
        report.update(
            on_the_fly_pairs_per_s=result["on_the_fly"],
            on_the_fly_reused_reader_pairs_per_s=result["on_the_fly_reused"],
            x_on_the_fly=round(result["pipeline"] / best_fly, 1),
        )
        report["target_20x_on_the_fly"] = report["x_on_the_fly"] >= 20
    report["target_85pct_floor"] = report["fraction_of_floor"] >= 0.85
    print(
        f"limit: the tar + JPEG floor, {result['floor']:.1f} pairs per CPU second (reading the shards and decoding "
        f"their JPEGs, nothing else); the pipeline reaches {report['fraction_of_floor']:.0%} of it (target 85%)"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
