#!/usr/bin/env python3
"""Fixed pairs vs runs of frames: what each storage costs and gives, measured on your videos and
extrapolated to a collection (Kinetics-400: ~240k training videos by default).

For each storage the videos are sharded (``siammae shard``, one worker) and then measured, in turns,
median of --repeat rounds, on one pinned core with one thread:

  pairs      --per-video fixed pairs, gap 4-48 frames at 30 fps (the default of siammae shard)
  runs A/B   --run-per-video runs of every 2nd frame over 48 frames (A, the paper's largest gap) and
             over 96 frames (B); the trainer draws a new pair, gap 4-48, every time it reads a run
             (data.pair_gap=[4,48])

Per storage: bytes a video and for the collection; distinct pairs a video (the stored pairs, or the
pairs with a gap in 4-48 that the stored runs offer, counted from the shards' frame indices); samples
an epoch (each stored sample is read once an epoch, one pair drawn from it); loader samples per CPU
second through siammae.data.loader (decode, crop, batch), with the tar+JPEG floor of the pairs beside
it. The last line is one JSON object.

  python tools/bench_runs.py VIDEOS --out /tmp/bench_runs
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))
sys.path.insert(0, os.fspath(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402
import webdataset as wds  # noqa: E402
from bench_loader import floor_rate, pin_to_one_core, timed  # noqa: E402

from siammae.config import load_config  # noqa: E402
from siammae.data.loader import make_dataset, resolve_shards  # noqa: E402

PAIR_GAP = (4, 48)  # frames at 30 fps, the paper's


def storages(args) -> dict:
    """name -> (SampleSpec, data.pair_gap)."""
    from siammae.shard.sampling import SampleSpec

    return {
        "pairs": (SampleSpec(per_video=args.per_video, gap=PAIR_GAP), []),
        "runs 48": (SampleSpec(per_video=args.run_per_video, frames=25, gap=(48, 48)), list(PAIR_GAP)),
        "runs 96": (SampleSpec(per_video=args.run_per_video, frames=49, gap=(96, 96)), list(PAIR_GAP)),
    }


def distinct_pairs(shards: Path, pair_gap) -> tuple[int, int]:
    """(videos, distinct frame pairs) in ``shards``: the stored pairs, or with ``pair_gap`` the pairs
    of each video's runs whose gap (frames at 30 fps) is in range, overlapping runs counted once."""
    pairs, videos = {}, set()
    for tar in sorted(shards.glob("*.tar")):
        for sample in wds.WebDataset(str(tar), shardshuffle=False):
            record = json.loads(sample["json"])
            videos.add(record["src"])
            frames = np.asarray(record["frames"])
            found = pairs.setdefault(record["src"], set())
            if not pair_gap:
                found.add((int(frames[0]), int(frames[-1])))
                continue
            scale = record["fps"] / 30.0 if record["fps"] else 1.0
            lo, hi = max(1, round(pair_gap[0] * scale)), round(pair_gap[1] * scale)
            diff = frames[None, :] - frames[:, None]
            for i, j in zip(*np.nonzero((diff >= lo) & (diff <= hi))):
                found.add((int(frames[i]), int(frames[j])))
    return len(videos), sum(len(p) for p in pairs.values())


def loader_rate(urls, pair_gap, args) -> float:
    cfg = load_config(None, ["data.repeated_sampling=1", f"data.shuffle_buffer={args.shuffle}"]).data
    cfg.pair_gap = pair_gap
    dataset = make_dataset(urls, cfg, size=args.size, batch_size=args.batch, seed=random.random())
    return timed(iter(dataset), args.batches, 2, args.batch)


def main(argv=None) -> dict:
    from siammae.shard.run import ShardConfig, shard

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("videos", type=Path, help="a folder of videos")
    p.add_argument("--out", type=Path, required=True, help="where the shards go (reused when present)")
    p.add_argument("--per-video", type=int, default=8, help="fixed pairs a video (default: 8, siammae shard's)")
    p.add_argument("--run-per-video", type=int, default=2, help="runs a video (default: 2)")
    p.add_argument("--collection", type=int, default=240_000, help="videos to extrapolate to (default: K400's)")
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--batches", type=int, default=12)
    p.add_argument("--shuffle", type=int, default=64)
    p.add_argument("--repeat", type=int, default=3)
    args = p.parse_args(argv)

    rows, rates = {}, {}
    for name, (spec, pair_gap) in storages(args).items():
        folder = args.out / name.replace(" ", "")
        if not (folder / "stats.json").is_file():
            shard(args.videos, folder, ShardConfig(sample=spec), workers=1, progress=False, log=lambda *_: None)
        stats = json.loads((folder / "stats.json").read_text())["output"]
        videos, distinct = distinct_pairs(folder, pair_gap)
        rows[name] = dict(
            frames_a_sample=spec.frames,
            samples_a_video=spec.per_video,
            mb_a_video=stats["bytes"] / 1e6 / videos,
            tb_collection=stats["bytes"] / videos * args.collection / 1e12,
            distinct_pairs_a_video=distinct / videos,
            samples_an_epoch=spec.per_video * args.collection,
        )
        rates[name] = (resolve_shards([str(folder)]), pair_gap)
    core = pin_to_one_core()
    measured = {name: [] for name in rates} | {"floor": []}
    pairs_urls = rates["pairs"][0]
    for _ in range(args.repeat):  # in turns: a busy neighbour slows every figure alike
        for name, (urls, pair_gap) in rates.items():
            measured[name].append(loader_rate(urls, pair_gap, args))
        measured["floor"].append(floor_rate(pairs_urls, args))
    for name in rows:
        rows[name]["samples_per_cpu_s"] = statistics.median(measured[name])
        rows[name]["vs_pairs"] = statistics.median(a / b for a, b in zip(measured[name], measured["pairs"]))
    floor = statistics.median(measured["floor"])
    print(f"{len(list(args.videos.iterdir()))} videos in {args.videos}; one core (#{core}); {args.size} px; "
          f"extrapolated to {args.collection} videos")  # fmt: skip
    print(f"{'storage':8s} {'frames':>6s} {'a video':>7s} {'MB/video':>8s} {'TB total':>8s} "
          f"{'distinct pairs/video':>20s} {'samples/epoch':>13s} {'samples/CPU s':>13s} {'vs pairs':>8s}")  # fmt: skip
    for name, r in rows.items():
        print(f"{name:8s} {r['frames_a_sample']:6d} {r['samples_a_video']:7d} {r['mb_a_video']:8.2f} "
              f"{r['tb_collection']:8.2f} {r['distinct_pairs_a_video']:20.0f} {r['samples_an_epoch']:13d} "
              f"{r['samples_per_cpu_s']:13.0f} {r['vs_pairs']:8.2f}")  # fmt: skip
    print(f"limit: the tar + JPEG floor of the pairs, {floor:.0f} samples per CPU second; the loader reaches "
          + ", ".join(f"{r['samples_per_cpu_s'] / floor:.0%} of it on {name}" for name, r in rows.items()))  # fmt: skip
    for r in rows.values():
        r["fraction_of_floor"] = round(r["samples_per_cpu_s"] / floor, 3)
    report = {"rows": rows, "floor_samples_per_cpu_s": floor, "collection": args.collection}
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
