"""``siammae shard``: a thin Click wrapper over :func:`siammae.shard.shard`.

Nothing heavy is imported at module level (``siammae --help`` stays instant); the library is
imported inside the command.
"""

import os

import click

from siammae.cli import Command
from siammae.cli.types import RangeType

SCHEMA = """\b
Sample format (WebDataset; the trainer reads exactly this):
  OUT/part<I>-w<W>-<seq>.tar  flat, sortable, never colliding across workers/machines
  <key>.f0.jpg .. <key>.f{K-1}.jpg   frames in time order (f0 earliest)
  <key>.json  {"src": path relative to SRC, "label": str|null,
               "split": str|null, "fps": float, "frames": [ascending indices],
               "gap": frames[-1]-frames[0], "size": [W, H] of the video,
               "num_frames": frames in the video}
  key = <stem>-<12 hex of sha1(src)>-<j:03d>, no dots.
Also OUT/failed.jsonl (src, path, reason, error per failed video;
reason: missing, empty, unreadable, too_short, crash, error),
OUT/stats.json, and bookkeeping in OUT/.shard/ (resume reads it)."""


# fmt: off
@click.command(cls=Command, epilog=SCHEMA, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("--src", required=True, type=click.Path(exists=True, file_okay=False), help="Folder of videos (SRC).")
@click.option("--out", required=True, type=click.Path(file_okay=False), help="Output folder for the shards (OUT).")
@click.option("--layout", type=click.Choice(["auto", "kinetics", "ucf101", "classes", "folder", "images"]),
              default="auto", show_default=True,
              help="kinetics: SRC/annotations/*.csv + SRC/<split>/, replacement/ preferred; ucf101: "
              "SRC/ucfTrainTestlist/ + class folders; classes: SRC/[<split>/]<label>/*; folder: every video, "
              "recursive; images: every image (an ImageNet folder), one sample of one frame each, for CropMAE.")
@click.option("--list", "list_file", type=click.Path(exists=True, dir_okay=False),
              help="Shard only the videos of this file: one 'path [label]' per line (tab-separated if paths have "
              "spaces), relative to SRC or absolute.")
@click.option("--split",
              help="kinetics: CSV names, comma-separated (train,val); ucf101: train|test; classes: a split folder.")
@click.option("--fold", type=click.IntRange(1, 3), default=1, show_default=True,
              help="UCF-101 split fold (train/testlist0N).")
@click.option("--frames", "frames", type=click.IntRange(2, 64), default=2, show_default=True,
              help="Frames per sample (2 = pairs).")
@click.option("--per-video", type=click.IntRange(1, 10000), default=8, show_default=True,
              help="Samples drawn from each video.")
@click.option("--gap", type=RangeType(), default="4-48", show_default=True,
              help="Frame gap first->last, drawn uniformly, in frames at --ref-fps; scaled to each video's fps.")
@click.option("--ref-fps", type=click.FloatRange(min=1), default=30.0, show_default=True,
              help="Frame rate --gap is given at.")
@click.option("--short-side", type=click.IntRange(0, 4096), default=256, show_default=True,
              help="Resize frames to this short side, aspect kept (0: keep).")
@click.option("--quality", type=click.IntRange(1, 100), default=90, show_default=True, help="JPEG quality.")
@click.option("--subsampling", type=click.Choice(["420", "422", "444"]), default="420", show_default=True,
              help="JPEG chroma subsampling.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Same inputs + seed -> same keys, frames and pixels.")
@click.option("--shard-samples", type=click.IntRange(1), default=2000, show_default=True,
              help="Samples per shard: each shard holds the next shard-samples / per-video videos of the "
              "listing (fewer where videos failed), so the output is the same whatever the workers.")
@click.option("--workers", type=click.IntRange(1), default=None,
              help="Worker processes [default: all cores]. Each writes whole shards, so a collection of fewer "
              "shards than workers keeps only that many busy (lower --shard-samples to spread a small one).")
@click.option("--decoder", type=click.Choice(["auto", "decord", "pyav"]), default="auto", show_default=True,
              help="Video decoder: decord (x86-64 wheels only), pyav (any platform); auto: decord if installed, "
              "else pyav.")
@click.option("--max-videos-per-worker", type=click.IntRange(1), default=200, show_default=True,
              help="Replace each worker process after this many videos, at its next shard boundary (decoders "
              "leak; long runs stay small).")
@click.option("--part", type=click.IntRange(0), default=0, show_default=True,
              help="This machine's part (e.g. $SLURM_ARRAY_TASK_ID).")
@click.option("--num-parts", type=click.IntRange(1), default=1, show_default=True,
              help="Machines sharing the collection.")
@click.option("--strict", is_flag=True,
              help="Stop at the first video that fails (default: record it in failed.jsonl, go on).")
@click.option("--retry-failed", is_flag=True,
              help="Try the videos of failed.jsonl again (by default a rerun skips them).")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar.")
# fmt: on
def shard(src, out, layout, list_file, split, fold, frames, per_video, gap, ref_fps, short_side, quality,
          subsampling, seed, shard_samples, workers, decoder, max_videos_per_worker, part, num_parts,
          strict, retry_failed, progress):  # fmt: skip
    """Decode videos once into WebDataset shards of JPEG frame pairs (or clips).

    Each video gives --per-video samples; each sample's gap is drawn from --gap (frames at
    --ref-fps, scaled to the video's frame rate) and its start uniformly, seeded by --seed and the
    video's path. Shard u holds the u-th run of videos of the listing (ordered by a hash of their
    paths), so the same videos and options give the same bytes whatever --workers, however often
    the run is killed and resumed; stats.json and `siammae inspect` print a checksum of the whole
    output. A rerun with the same options resumes: finished shards are kept, an unfinished one is
    redone whole, failed videos are skipped unless --retry-failed. Several machines share one
    collection with --part I --num-parts N (shard u goes to part u mod N); their shards together
    are the one-machine run's, byte for byte.
    """
    from siammae.shard import EncodeSpec, SampleSpec, ShardConfig
    from siammae.shard import shard as run_shard

    if part >= num_parts:
        raise click.BadParameter(f"--part {part} must be below --num-parts {num_parts}", param_hint="--part")
    if gap[0] < frames - 1:
        raise click.BadParameter(f"a gap of {gap[0]} frames cannot hold {frames} frames", param_hint="--gap")
    config = ShardConfig(
        sample=SampleSpec(per_video=per_video, frames=frames, gap=gap, ref_fps=ref_fps),
        encode=EncodeSpec(short_side=short_side, quality=quality, subsampling=subsampling),
        seed=seed,
        max_samples=shard_samples,
        decoder=decoder,
        max_videos_per_worker=max_videos_per_worker,
    )
    stats = run_shard(
        src, out, config, layout=layout, split=split, fold=fold, list_file=list_file, workers=workers,
        part=part, num_parts=num_parts, strict=strict, retry_failed=retry_failed, progress=progress,
        log=lambda line: click.echo(line, err=True),
    )  # fmt: skip
    total, run = stats["output"], stats["parts"][f"part{part:04d}"]
    click.echo(
        f"{run['videos_done']} videos sharded, {run['videos_failed']} failed, {run['videos_skipped']} skipped "
        f"in {run['seconds']:.1f} s; {os.fspath(out)} holds {total['samples']} samples of {total['videos']} videos "
        f"in {total['shards']} shards ({total['bytes'] / 1e6:.1f} MB); decoder {run['decoder']}, "
        f"worker peak RSS {run['peak_worker_rss_mib']:.0f} MiB"
        + (f"; failures in {os.path.join(out, 'failed.jsonl')}" if total["failed"] else "")
    )
