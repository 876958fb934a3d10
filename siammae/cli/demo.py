"""``siammae demo``: the whole pipeline on synthetic data or the user's videos, trained vs random encoder."""

import click

from siammae.cli import Command
from siammae.cli.types import RangeType, SizeType
from siammae.models import METHODS


# fmt: off
@click.command(cls=Command)
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo makes (videos, shards, run, DAVIS set, scores, pictures).")
@click.option("--steps", default=600, show_default=True, type=click.IntRange(min=1), help="Training steps.")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1), help="Pairs per step.")
@click.option("--videos", "videos_dir", type=click.Path(exists=True, file_okay=False),
              help="Run on these real videos instead of synthetic ones: shard them, composite a DAVIS-format "
              "set from them, train and compare (defaults then as siammae.synth.demo.REAL: 1200 steps, 400 pairs a "
              "video 1-4 frames apart, 6 sequences of 30 frames at 480x854 propagated at short side 128; "
              "12-16 min on 2 cores).")
@click.option("--hard", is_flag=True, help="With --videos: cut each object from its own background video.")
@click.option("--num-videos", default=64, show_default=True, type=click.IntRange(min=1),
              help="Synthetic training videos to make.")
@click.option("--video-frames", default=96, show_default=True, type=click.IntRange(min=8),
              help="Frames per training video (30 fps).")
@click.option("--pairs-per-video", default=32, show_default=True, type=click.IntRange(min=1),
              help="Frame pairs sharded from each training video.")
@click.option("--gap", default="1-4", show_default=True, type=RangeType(),
              help="Frames between the two frames of a training pair (the synthetic objects move fast: "
              "see siammae/synth/demo.py).")
@click.option("--video-size", default="96x128", show_default=True, type=SizeType(), help="Training video frame size.")
@click.option("--sequences", default=12, show_default=True, type=click.IntRange(min=1),
              help="Validation sequences in the synthetic DAVIS set.")
@click.option("--sequence-frames", default=32, show_default=True, type=click.IntRange(min=2),
              help="Frames per validation sequence.")
@click.option("--sequence-size", default="96x160", show_default=True, type=SizeType(),
              help="Validation frame size (propagated at this size).")
@click.option("--seed", default=0, show_default=True, help="Seed of every generator and of training.")
@click.option("--method", type=click.Choice(list(METHODS)), default="siammae", show_default=True,
              help="What to pre-train: SiamMAE on frame pairs (the tiny recipe), CMAE on frame pairs (cmae_tiny), "
              "CropMAE on two crops of one frame (cropmae_tiny), RSP or ToBo on frame pairs (rsp_tiny, "
              "tobo_tiny), or VideoMAE / MAE-ST on clips of 4 frames (videomae_tiny, maest_tiny); the same "
              "data, evaluation and comparison.")
@click.option("--quiet", is_flag=True,
              help="No progress bars for the data and propagation stages (the trainer keeps its bar).")
def demo(out, steps, batch, videos_dir, hard, num_videos, video_frames, pairs_per_video, gap, video_size, sequences,
         sequence_frames, sequence_size, seed, method, quiet):
# fmt: on
    """Make synthetic videos (or take yours: --videos DIR), shard them, make a DAVIS-2017-format set,
    pre-train the tiny recipe on the CPU while tracking J&F, and compare J&F of the trained encoder
    against a random one.

    Nothing is downloaded. The default takes a few minutes on 2 CPU cores; --steps and the sizes
    shrink or grow it. Results land in OUT (see OUT/demo.json); a rerun starts over. On synthetic
    data the last line says whether the trained encoder beat the random one by a clear margin; if it
    did not, the exit status is 1 (at sizes much smaller than the default, expect that: the encoder
    barely trains). With --videos it reports the lead on three composited sets, with its spread, and
    no verdict.
    """
    import dataclasses

    from siammae.synth.demo import MARGIN, REAL, DemoSize, run_demo, verdict

    if hard and videos_dir is None:
        raise click.UsageError("--hard needs --videos DIR")
    given = dict(
        steps=steps,
        batch=batch,
        videos=num_videos,
        video_frames=video_frames,
        pairs_per_video=pairs_per_video,
        gap=gap,
        video_size=video_size,
        sequences=sequences,
        sequence_frames=sequence_frames,
        sequence_size=sequence_size,
        seed=seed,
        method=method,
    )
    source = click.get_current_context().get_parameter_source
    names = dict(videos="num_videos")
    base = DemoSize() if videos_dir is None else REAL
    size = dataclasses.replace(base, **{k: v for k, v in given.items() if source(names.get(k, k)).name != "DEFAULT"})
    report = run_demo(out, size, progress=not quiet, videos_dir=videos_dir, hard=hard)
    if videos_dir is not None:  # no pass/fail: the sets reuse the training videos' imagery
        lead = report["lead"]
        click.echo(
            f"\nlead of the trained encoder over the random one on {lead['sets']} sets composited from these "
            f"videos: {lead['mean']:+.1f} J&F points (sd {lead['sd']:.1f}, {lead['min']:+.1f} to {lead['max']:+.1f}). "
            "The sets reuse the training videos' imagery, so this shows the pipeline running on your videos, "
            "not that pre-training beats random features on videos it never saw: tools/heldout.py measures "
            "that (docs/experiments.md)."
        )
        return
    if method != "siammae":  # the check is of the pipeline with SiamMAE; other methods are only measured
        click.echo(f"\n{method}: trained vs random as measured above (no pass/fail check for this method)")
        return
    message = verdict(report["results"])
    if message:
        # Every output is written by now, so a failing check still leaves everything to look at.
        click.echo(f"\nCHECK FAILED: {message}")
        raise SystemExit(1)
    click.echo(f"\ncheck passed: the trained encoder beats the random one by at least {MARGIN:g} J&F points")
