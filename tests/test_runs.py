"""Pairs drawn at load time from shards of runs of frames (``data.pair_gap``): the gap range and its
distribution, the frames actually decoded, the errors before any work, and exact resume."""

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
import webdataset as wds
from safetensors.torch import load_file

from siammae.config import ConfigError, load_config
from siammae.data.loader import DataError, check_clip_length, make_loader, resolve_shards
from siammae.data.views import draw_pair, make_sample
from siammae.shard import EncodeSpec, SampleSpec, ShardConfig, shard
from tests.shard_fixtures import make_video, read_index

REPO = Path(__file__).resolve().parents[1]


def test_pairs_fall_in_the_gap_range_with_every_gap_about_equally_often():
    rng = random.Random(0)
    run = {"frames": list(range(100, 149, 2)), "fps": 30.0}  # 25 frames, every 2nd over 48
    draws = [draw_pair(run, rng, (4, 48)) for _ in range(23_000)]
    gaps = Counter(run["frames"][j] - run["frames"][i] for i, j in draws)
    assert sorted(gaps) == list(range(4, 49, 2))  # every gap the run offers, nothing outside [4, 48]
    assert all(700 <= n <= 1300 for n in gaps.values()), gaps  # ~1000 each: uniform over the gaps
    starts = Counter(i for i, j in draws if run["frames"][j] - run["frames"][i] == 4)
    assert sorted(starts) == list(range(23))  # a gap of 4 can start at any of its 23 positions
    # the range is in frames at 30 fps: at 60 fps the same [4, 48] spans 8 to 96 of the video's frames
    fast = {"frames": list(range(0, 97, 4)), "fps": 60.0}
    gaps60 = {fast["frames"][j] - fast["frames"][i] for i, j in (draw_pair(fast, rng, (4, 48)) for _ in range(5000))}
    assert min(gaps60) == 8 and max(gaps60) == 96
    with pytest.raises(ValueError, match="has no pair 30-40"):
        draw_pair({"frames": [0, 1, 2, 3], "fps": 30.0}, rng, (30, 40))


@pytest.fixture(scope="module")
def run_shards(tmp_path_factory):
    """Runs of 9 frames (every 2nd over 16) from 6 videos whose frames show their index; 25 and 30 fps."""
    root = tmp_path_factory.mktemp("runs")
    for i in range(6):
        make_video(root / "videos" / f"v{i}.mp4", num_frames=64, fps=(25, 30)[i % 2])
    config = ShardConfig(sample=SampleSpec(per_video=4, frames=9, gap=(16, 16)), encode=EncodeSpec(short_side=64))
    shard(root / "videos", root / "shards", config, workers=1, progress=False, log=lambda _: None)
    return root / "shards"


def test_the_two_decoded_frames_are_the_drawn_ones_and_as_far_apart_as_asked(run_shards):
    rng = random.Random(1)
    seen = set()
    for sample in wds.WebDataset(str(run_shards / "shard-000000.tar"), shardshuffle=False):
        record = json.loads(sample["json"])
        for _ in range(10):
            state = rng.getstate()
            i, j = draw_pair(record, rng, (4, 12))
            rng.setstate(state)  # make_sample draws the same pair from the same state
            (view,) = make_sample(sample, rng, num_frames=2, repeats=1, pair_gap=(4, 12))
            shown = [read_index(frame) for frame in view.frames]
            assert shown == [record["frames"][i], record["frames"][j]]
            lo, hi = round(4 * record["fps"] / 30), round(12 * record["fps"] / 30)
            assert lo <= shown[1] - shown[0] <= hi
            seen.add(shown[1] - shown[0])
    assert len(seen) >= 4  # many gaps, not one stored pair


def test_pair_gap_needs_runs_and_pairs_one_line_before_any_work(run_shards, tmp_path):
    urls = resolve_shards([str(run_shards)])
    check_clip_length(urls, 2, (4, 12))  # fine
    with pytest.raises(DataError, match="no pair 120-240"):
        check_clip_length(urls, 2, (120, 240))
    pairs = tmp_path / "pairs"
    shard(run_shards.parent / "videos", pairs, ShardConfig(sample=SampleSpec(per_video=2)), workers=1,
          progress=False, log=lambda _: None)  # fmt: skip
    with pytest.raises(DataError, match="hold 2: siammae shard --frames 25"):
        check_clip_length(resolve_shards([str(pairs)]), 2, (4, 12))
    with pytest.raises(ConfigError, match="data.num_frames must be 2"):
        load_config("videomae_tiny", ["data.pair_gap=[4,12]"])
    with pytest.raises(ConfigError, match="pair_gap"):
        load_config("tiny", ["data.pair_gap=[12,4]"])


def test_a_segment_replays_the_same_pairs(run_shards):
    """The trainer's exact resume rests on this: a data segment restarted with its seed gives the same
    batches, pairs drawn at load time included."""
    cfg = load_config("tiny", [f"data.shards={run_shards}", "data.pair_gap=[4,12]", "data.shuffle_buffer=8"])

    def batches():
        loader = make_loader(resolve_shards(cfg.data.shards), cfg.data, size=32, batch_size=4, num_batches=5,
                             seed="0/6", num_workers=0)  # fmt: skip
        return [(b["keys"], b["frames"].clone()) for b in loader]

    first, again = batches(), batches()
    assert [k for k, _ in first] == [k for k, _ in again]
    assert all(torch.equal(a, b) for (_, a), (_, b) in zip(first, again))


def test_training_on_runs_resumes_to_the_uninterrupted_weights(run_shards, tmp_path):
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    args = ["tiny", f"data.shards={run_shards}", "data.pair_gap=[4,12]", "model.img_size=32", "data.shuffle_buffer=8",
            "train.global_batch_size=8", "train.samples=64", "train.save_every=4", "optim.warmup_samples=16",
            "train.recon_every=0", "data.num_workers=0"]  # fmt: skip
    fixture = str(REPO / "tests" / "train_fixtures.py")

    def train(out, exit_at=0):
        command = [sys.executable, fixture, str(out / "record"), str(exit_at), *args, f"train.output_dir={out}"]
        return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)

    straight = train(tmp_path / "a")
    assert straight.returncode == 0, straight.stderr[-2000:]
    assert train(tmp_path / "b", exit_at=6).returncode == 17  # killed after step 6; checkpoint_4 kept
    assert train(tmp_path / "b").returncode == 0
    a = load_file(tmp_path / "a" / "checkpoints" / "checkpoint_8" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "checkpoint_8" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert np.isfinite([json.loads(line)["loss"] for line in (tmp_path / "a" / "metrics.jsonl").open()]).all()
