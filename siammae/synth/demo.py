"""The whole pipeline on data the package makes itself, or on the user's own videos, with a
learned-vs-random comparison.

Stages (each one the real code path a user runs on Kinetics and DAVIS):

1. Training videos: ``synth_videos`` (textured objects moving over moving backgrounds, encoded as real
   video files), or the user's folder of real videos (``videos_dir``).
2. ``siammae.shard.shard``: videos -> WebDataset shards of JPEG frame pairs.
3. A DAVIS-2017-format set: ``synth_davis`` (texture and shape families never seen in training, other
   seeds), or with real videos ``composite_davis``: regions cut from the videos moving over runs of
   their frames (the objects' motion and the composites are new, the imagery is not).
4. ``siammae.train.train``: the ``tiny`` recipe with the real Accelerate trainer on the CPU, evaluating
   J&F on a few of those sequences as it trains (``eval.davis``), so the curve shows when it helps.
5. ``siammae.tasks.davis.propagate`` + ``siammae.tasks.jandf.evaluate`` with the trained encoder and with a
   randomly initialised encoder of the same architecture, side by side.
6. Pictures: the loss and J&F curves, the trainer's reconstructions, mask overlays.

If the trained encoder does not beat the random one, something in the chain is broken (or, on real
video, the budget is too small: see ``REAL``).
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from siammae.config import load_config
from siammae.encoders import load_encoder
from siammae.models import METHODS
from siammae.pictures import plot_loss_curve
from siammae.shard.run import ShardConfig, shard
from siammae.shard.samples import EncodeSpec
from siammae.shard.sampling import SampleSpec
from siammae.synth.composite import composite_davis, find_sources
from siammae.synth.scenes import synth_davis, synth_videos
from siammae.tasks import TASKS
from siammae.tasks.davis import propagate
from siammae.tasks.jandf import evaluate, write_csvs
from siammae.train.loop import train


@dataclass(frozen=True)
class DemoSize:
    """Knobs that trade the demo's run time for its margin. Run times: docs/benchmarks.md, "The demo"."""

    steps: int = 600
    batch: int = 16
    videos: int = 64  # synthetic videos to make (unused with real videos)
    video_frames: int = 96
    video_size: tuple = (96, 128)  # H, W
    pairs_per_video: int = 32
    gap: tuple = (1, 4)  # frames between f1 and f2 (30 fps), see run_demo
    sequences: int = 12
    sequence_frames: int = 32
    sequence_size: tuple = (96, 160)  # H, W
    eval_size: int = 0  # short side frames are propagated at; 0 = as stored (the sequences' short side)
    eval_every: int = 200  # steps between J&F evaluations during training
    eval_sequences: int = 4  # sequences evaluated during training (all of them at the end)
    # What the synthetic check trains instead of the recipe's settings (None: the recipe's own). tiny's
    # real-video settings gave too small and variable a lead in 600 synthetic steps (docs/benchmarks.md,
    # "The demo"); the check proves the pipeline, tools/heldout.py whether a recipe generalises.
    encoder_lr_scale: Optional[float] = 1.0
    warmup_steps: Optional[int] = 20
    context_positions: Optional[bool] = True  # SiamMAE only
    overlays: int = 3  # frames in each sequence's overlay strip
    # More composited sets (other seeds) the trained and random encoders are compared on, for the lead's
    # spread (real videos only: a synthetic set is made from families never seen in training).
    extra_sets: int = 0
    seed: int = 0
    # siammae (frame pairs, the tiny recipe), or a clip method (videomae, maest: its _tiny recipe, clips
    # of 4 frames whose first-to-last gap is 3 x ``gap``, the same spacing between neighbours).
    method: str = "siammae"

    @property
    def recipe(self) -> str:
        return METHODS[self.method].recipe


# The demo on real videos (``siammae demo --videos DIR``): DAVIS-like frames, propagated at short side
# 128, the scale the 64-px training crops of 256-px frames see (a patch of 8 px covers about the same
# part of the scene in both: 256 -> 64 is 4x down, 480 -> 128 3.75x). Gaps of 1-4 frames: on 64-px crops
# f1 copied in place predicts f2 far better than at the paper's 4-48, and the encoder beat random
# sooner; 1200 steps: J&F was still rising at 600 (docs/benchmarks.md, "On real videos").
REAL = dataclasses.replace(DemoSize(), encoder_lr_scale=None, warmup_steps=None, context_positions=None,
                           steps=1200, pairs_per_video=400,
                           gap=(1, 4), sequences=6, sequence_frames=30, sequence_size=(480, 854), eval_size=128,
                           eval_sequences=3, extra_sets=2)  # fmt: skip


def _stage(log, n: int, text: str) -> float:
    log(f"\n[{n}/6] {text}")
    return time.time()


def run_demo(
    out,
    size: DemoSize = DemoSize(),
    log: Callable[[str], None] = print,
    progress: bool = True,
    videos_dir: Optional[str] = None,
    hard: bool = False,
) -> dict:
    """Run every stage into ``out``; returns the two evaluations and where everything is.

    ``videos_dir``: train on these real videos and evaluate on a set composited from them (``hard``:
    objects cut from their own background video) instead of synthetic data."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.time()
    timings = {}

    t = time.time()
    videos = _videos_stage(out, size, videos_dir, log)
    timings["videos"], t = time.time() - t, time.time()
    _shard_stage(videos, out / "shards", size, synthetic=videos_dir is None, log=log, progress=progress)
    timings["shard"], t = time.time() - t, time.time()
    davis = _davis_stage(videos, out / "davis", size, synthetic=videos_dir is None, hard=hard, log=log)
    timings["davis"], t = time.time() - t, time.time()
    cfg, summary = _train_stage(out, davis, size, log)
    timings["train"], t = time.time() - t, time.time()
    results = _compare_stage(out / "propagation", davis, cfg, size, log, progress)
    leads = [_lead(results)]
    for k in range(size.extra_sets if videos_dir is not None else 0):
        other = _davis_stage(videos, out / f"davis-s{k + 2}", size, False, hard, log, seed=size.seed + 2 + k)
        leads.append(
            _lead(_compare_stage(out / "propagation" / f"davis-s{k + 2}", other, cfg, size, log, progress, overlays=0))
        )
    timings["propagate"], t = time.time() - t, time.time()
    _stage(log, 6, "pictures")
    run_dir = Path(cfg.train.output_dir)
    curve = plot_loss_curve(run_dir / "metrics.jsonl", out / "loss_curve.png")
    timings["pictures"] = time.time() - t
    timings["total"] = time.time() - started

    report = {
        "method": size.method,
        "data": "synthetic" if videos_dir is None else dict(videos=str(videos_dir), hard=hard),
        "results": results,
        # trained - random J&F points on each set (the first: `results`), and their mean and spread
        "leads": [round(v, 2) for v in leads],
        "lead": lead_summary(leads),
        "seconds": {k: round(v, 1) for k, v in timings.items()},
        "train_summary": summary,
        "paths": {
            "loss_curve": str(curve),
            "reconstructions": str(run_dir / "recon"),
            "overlays": str(out / "propagation" / "trained"),
            "checkpoint": str(run_dir / "checkpoints"),
            "scores": str(out / "propagation"),
        },
    }
    (out / "demo.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
    log("\n" + comparison_table(results))
    log(f"\nfinished in {timings['total'] / 60:.1f} min. Look at:")
    for what, path in report["paths"].items():
        log(f"  {what:16s} {path}")
    return report


def _videos_stage(out: Path, size: DemoSize, videos_dir, log) -> Path:
    if videos_dir is None:
        _stage(
            log,
            1,
            f"synthetic videos: {size.videos} x {size.video_frames} frames at "
            f"{size.video_size[0]}x{size.video_size[1]}",
        )
        synth_videos(
            out / "videos",
            num_videos=size.videos,
            frames=size.video_frames,
            size=size.video_size,
            seed=size.seed,
            split="train",
        )
        return out / "videos"
    _stage(log, 1, f"real videos in {videos_dir}")
    log(f"    {len(find_sources(Path(videos_dir)))} readable videos")
    return Path(videos_dir)


def _shard_stage(videos: Path, shards: Path, size: DemoSize, synthetic: bool, log, progress: bool) -> None:
    _stage(log, 2, "shard the videos into WebDataset shards of frame pairs (clips for a clip method)")
    # Synthetic frames keep their size (short side = the videos'), so crops of the 64-px recipe see
    # whole objects; real ones are stored 256 px on the short side, as for Kinetics.
    # Synthetic gaps of 1-4 frames, not the paper's 4-48: the synthetic objects move up to 4 px and turn
    # up to 3.4 degrees per frame on a 96-px frame, far faster than Kinetics. At gaps of 4-48 frames f1
    # copied in place predicted f2 worse than f2's mean colour, so there was no correspondence to learn
    # in minutes (docs/benchmarks.md, "What had to be right").
    frames = load_config(size.recipe).data.num_frames
    encode = EncodeSpec(short_side=min(size.video_size)) if synthetic else EncodeSpec()
    gap = tuple(g * (frames - 1) for g in size.gap)
    config = ShardConfig(
        sample=SampleSpec(frames=frames, per_video=size.pairs_per_video, gap=gap), encode=encode, seed=size.seed
    )
    # One worker: the videos are sharded in their listed order, so the demo's shards, and with them its
    # training, are the same on every run (two workers race for videos: the order changes from run to run).
    stats = shard(videos, shards, config, workers=1, progress=progress, log=log)
    log(f"    {stats['samples']} samples of {frames} frames in {stats['shards']} shards")


def _davis_stage(
    videos: Path, davis: Path, size: DemoSize, synthetic: bool, hard: bool, log, seed: Optional[int] = None
) -> Path:
    if synthetic:
        _stage(
            log,
            3,
            f"held-out synthetic DAVIS-2017 set: {size.sequences} sequences x "
            f"{size.sequence_frames} frames (texture/shape families unseen in training)",
        )
        synth_davis(
            davis,
            num_sequences=size.sequences,
            frames=size.sequence_frames,
            size=size.sequence_size,
            seed=size.seed + 1,
            split="val",
        )
    else:
        _stage(
            log,
            3,
            f"DAVIS-2017-format set composited from the videos{' (hard)' if hard else ''}: "
            f"{size.sequences} sequences x {size.sequence_frames} frames"
            + (f" (seed {seed})" if seed is not None else ""),
        )
        composite_davis(
            videos,
            davis,
            num_sequences=size.sequences,
            frames=size.sequence_frames,
            size=size.sequence_size,
            seed=size.seed + 1 if seed is None else seed,
            hard=hard,
        )
    return davis


def _train_stage(out: Path, davis: Path, size: DemoSize, log):
    """The tiny recipe at the demo's size, tracking J&F on the DAVIS set -> (config, train summary)."""
    _stage(
        log,
        4,
        f"train the {size.recipe} recipe for {size.steps} steps of {size.batch} samples (CPU), "
        f"J&F on {size.eval_sequences} sequences every {size.eval_every} steps",
    )
    cfg = load_config(
        size.recipe,
        [
            f"data.shards={out / 'shards'}",
            f"train.output_dir={out / 'run'}",
            f"train.samples={size.steps * size.batch}",
            f"train.global_batch_size={size.batch}",
            f"train.seed={size.seed}",
            "train.resume=never",
            f"eval.davis={davis}",
            f"eval.every={size.eval_every}",
            f"eval.sequences={size.eval_sequences}",
            f"eval.size={size.eval_size or min(size.sequence_size)}",
            *_setting_overrides(size),
        ],
    )
    return cfg, train(cfg)


def _setting_overrides(size: DemoSize) -> list:
    """The recipe overrides for the settings ``size`` sets (see :class:`DemoSize`)."""
    overrides = []
    if size.encoder_lr_scale is not None:
        overrides.append(f"optim.encoder_lr_scale={size.encoder_lr_scale}")
    if size.warmup_steps is not None:
        overrides.append(f"optim.warmup_samples={size.warmup_steps * size.batch}")
    if size.context_positions is not None and size.method == "siammae":
        overrides.append(f"siammae.context_positions={str(size.context_positions).lower()}")
    return overrides


def _compare_stage(results_dir: Path, davis: Path, cfg, size: DemoSize, log, progress: bool, overlays=None) -> dict:
    """J&F of the trained encoder and of a random one of the same architecture (predictions in
    ``results_dir/<name>``) -> {name: global row}."""
    import torch

    _stage(log, 5, "label propagation + J&F: trained encoder vs random encoder")
    # The run's protocol at the size it was evaluated at in training, layered as `siammae propagate` does.
    protocol = TASKS["davis"].protocol(run_eval=cfg.eval, short_side=cfg.eval.size)
    results = {}
    for name, random_init in (("trained", False), ("random", True)):
        torch.manual_seed(size.seed)
        encoder, info = load_encoder(cfg.train.output_dir, random_init=random_init)
        res_dir = results_dir / name
        propagate(
            encoder,
            davis,
            res_dir,
            protocol,
            overlay=size.overlays if overlays is None else overlays,
            progress=progress,
            settings={"encoder": dict(info.to_dict(), role=name)},
        )
        evaluation = evaluate(davis, res_dir)
        write_csvs(evaluation, res_dir)
        results[name] = evaluation.global_row()
        log(f"    {name}: J&F {results[name]['J&F-Mean']:.3f}")
    return results


def _lead(results: dict) -> float:
    """Trained - random J&F, in points."""
    return 100 * (results["trained"]["J&F-Mean"] - results["random"]["J&F-Mean"])


def lead_summary(leads) -> dict:
    """Mean, standard deviation (n - 1) and range of leads in J&F points."""
    mean = sum(leads) / len(leads)
    sd = (sum((v - mean) ** 2 for v in leads) / (len(leads) - 1)) ** 0.5 if len(leads) > 1 else 0.0
    return dict(
        mean=round(mean, 2), sd=round(sd, 2), min=round(min(leads), 2), max=round(max(leads), 2), sets=len(leads)
    )


# How far (in J&F points) the trained encoder must be ahead of the random one for the demo to pass.
# The trained encoder's leads over seeds and runs: docs/benchmarks.md, "The demo".
MARGIN = 3.0


def verdict(results: dict, margin: float = MARGIN) -> str | None:
    """None when the trained encoder's J&F beats the random one's by ``margin`` points, else why not."""
    trained, random = (100 * results[k]["J&F-Mean"] for k in ("trained", "random"))
    if trained >= random + margin:
        return None
    return (
        f"the trained encoder (J&F {trained:.1f}) does not beat the random one ({random:.1f}) by "
        f"{margin:g} points: something in data, model or training is broken"
    )


def comparison_table(results: dict) -> str:
    """Trained vs random, J&F / J / F means (DAVIS convention: fractions shown as percentages)."""
    cols = ["J&F-Mean", "J-Mean", "F-Mean"]
    lines = [f"{'encoder':10s}" + "".join(f"{c:>10s}" for c in cols)]
    for name, row in results.items():
        lines.append(f"{name:10s}" + "".join(f"{100 * row[c]:10.1f}" for c in cols))
    return "\n".join(lines)
