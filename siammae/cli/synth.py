"""``siammae synth``: synthetic training videos and DAVIS-2017-format sets, for smoke tests and the demo.

Thin wrappers over :mod:`siammae.synth.scenes` and :mod:`siammae.synth.composite`; numpy and friends
are imported inside the commands so that ``--help`` stays instant.
"""

import click

from siammae.cli import Group
from siammae.cli.types import RangeType, SizeType
from siammae.synth.variants import VARIANTS

SPLIT_HELP = (
    "Texture and shape families to draw from: 'train' and 'val' are disjoint (see siammae.synth.scenes); "
    "'all' uses both."
)


def _progress(total: int, unit: str):
    """A tqdm bar and the callback that advances it by one."""
    from tqdm import tqdm

    bar = tqdm(total=total, unit=unit, dynamic_ncols=True)
    return bar, lambda _item: bar.update(1)


@click.group(cls=Group)
def synth():
    """Make synthetic data: textured objects moving over panning, textured backgrounds.

    \b
    siammae synth videos OUT    a folder of video files, for `siammae shard`
    siammae synth davis OUT     a DAVIS-2017-format set, for `siammae propagate` / `evaluate`

    Deterministic for a seed. The training videos and the DAVIS set use different random streams,
    and by default disjoint texture and shape families, so a DAVIS set is held out from the videos.
    """


# fmt: off
@synth.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--num", "num_videos", type=click.IntRange(min=1), default=16, show_default=True,
              help="Number of videos.")
@click.option("--frames", type=click.IntRange(min=1), default=96, show_default=True, help="Frames per video.")
@click.option("--size", type=SizeType(), default="128x160", show_default=True, help="Frame size HxW (even).")
@click.option("--fps", type=click.FloatRange(min=0, min_open=True), default=30.0, show_default=True,
              help="Frame rate written into the files.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--objects", type=RangeType(254, "2-4"), default="2-5", show_default=True, help="Objects per video.")
@click.option("--split", type=click.Choice(["train", "val", "all"]), default="train", show_default=True,
              help=SPLIT_HELP)
@click.option("--format", "suffix", type=click.Choice([".mp4", ".mkv", ".avi", ".webm"]), default=".mp4",
              show_default=True, help="Container: .mp4/.mkv are H.264, .avi MPEG-4 part 2, .webm VP9.")
# fmt: on
def videos(out, num_videos, frames, size, fps, seed, objects, split, suffix):
    """Write NUM synthetic videos OUT/video_0000.mp4 ... (existing files of those names are replaced)."""
    from siammae.synth.scenes import synth_videos

    bar, step = _progress(num_videos, "video")
    with bar:
        paths = synth_videos(out, num_videos=num_videos, frames=frames, size=size, fps=fps, seed=seed,
                             split=split, objects=objects, suffix=suffix, progress=step)  # fmt: skip
    click.echo(f"wrote {len(paths)} videos of {frames} frames at {size[0]}x{size[1]} to {out}")


# fmt: off
@synth.command()
@click.argument("out", type=click.Path(file_okay=False))
@click.option("--sequences", type=click.IntRange(min=1), default=8, show_default=True,
              help="Sequences listed in ImageSets/2017/val.txt.")
@click.option("--train-sequences", type=click.IntRange(min=0), default=0, show_default=True,
              help="Extra sequences listed in train.txt (which is written empty otherwise).")
@click.option("--frames", type=click.IntRange(min=3), default=32, show_default=True,
              help="Frames per sequence (the evaluator skips the first and last).")
@click.option("--size", type=SizeType(), default="128x224", show_default=True,
              help="Frame size HxW; the folder is still called 480p, as tools expect.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--objects", type=RangeType(254, "2-4"), default="2-4", show_default=True, help="Objects per sequence.")
@click.option("--split", type=click.Choice(["train", "val", "all"]), default="val", show_default=True, help=SPLIT_HELP)
@click.option("--from-videos", "videos_dir", type=click.Path(exists=True, file_okay=False),
              help="Composite real video instead: backgrounds are runs of these videos' frames, objects are "
              "regions cut from their frames (exact masks). --size then defaults to 480x854, "
              "--objects to 2-3.")
@click.option("--hard", is_flag=True,
              help="With --from-videos: cut each object from its own background video, so colour alone does "
              "not tell them apart (= --variant hard).")
@click.option("--variant", type=click.Choice(list(VARIANTS)), default="default", show_default=True,
              help="With --from-videos: how objects are made. hard: cut from their own background video; "
              "colour: colours matched to the background around them; fast: 3x the motion; nonrigid: "
              "bending over time; scale: growing to twice the size over the sequence.")
# fmt: on
def davis(out, sequences, train_sequences, frames, size, seed, objects, split, videos_dir, hard, variant):
    """Write a DAVIS-2017-format set to OUT: synthetic, or composited from real videos (--from-videos).

    \b
    OUT/JPEGImages/480p/<seq>/00000.jpg ...
    OUT/Annotations/480p/<seq>/00000.png ...   palette PNGs, pixel = object id
    OUT/ImageSets/2017/val.txt, train.txt
    OUT/composite.json                         (--from-videos) where each sequence's pixels came from
    """
    src = click.get_current_context().get_parameter_source
    if videos_dir is not None:
        from siammae.synth.composite import composite_davis

        if train_sequences or src("split").name != "DEFAULT":
            raise click.UsageError("--train-sequences and --split are for synthetic sets, not --from-videos")
        size = size if src("size").name != "DEFAULT" else (480, 854)
        objects = objects if src("objects").name != "DEFAULT" else (2, 3)
        if hard and variant not in ("default", "hard"):
            raise click.UsageError(f"--hard is --variant hard: it excludes --variant {variant}")
        variant = "hard" if hard else variant
        bar, step = _progress(sequences, "seq")
        with bar:
            names = composite_davis(
                videos_dir,
                out,
                num_sequences=sequences,
                frames=frames,
                size=size,
                seed=seed,
                objects=objects,
                progress=step,
                variant=variant,
            )
        click.echo(
            f"wrote {len(names)} sequences of {frames} frames at {size[0]}x{size[1]} composited from "
            f"{videos_dir} (variant {variant}) to {out}"
        )
        return
    for flag, given in (("--hard", hard), ("--variant", src("variant").name != "DEFAULT")):
        if given:
            raise click.UsageError(f"{flag} needs --from-videos")
    from siammae.synth.scenes import synth_davis

    bar, step = _progress(sequences + train_sequences, "seq")
    with bar:
        names = synth_davis(out, num_sequences=sequences, frames=frames, size=size, seed=seed, split=split,
                            objects=objects, num_train=train_sequences, progress=step)  # fmt: skip
    click.echo(f"wrote {len(names)} validation sequences of {frames} frames at {size[0]}x{size[1]} to {out}")
