"""``siammae demo``: the whole pipeline on synthetic data, trained encoder vs random encoder."""

import click


@click.command()
@click.option("--out", default="runs/demo", show_default=True, type=click.Path(file_okay=False),
              help="Folder for everything the demo makes (videos, shards, run, DAVIS set, scores, pictures).")
@click.option("--steps", default=300, show_default=True, type=click.IntRange(min=1), help="Training steps.")
@click.option("--batch", default=16, show_default=True, type=click.IntRange(min=1), help="Pairs per step.")
@click.option("--videos", default=64, show_default=True, type=click.IntRange(min=1), help="Training videos to make.")
@click.option("--sequences", default=12, show_default=True, type=click.IntRange(min=1),
              help="Validation sequences in the synthetic DAVIS set.")
@click.option("--seed", default=0, show_default=True, help="Seed of every generator and of training.")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def demo(out, steps, batch, videos, sequences, seed, quiet):
    """Make synthetic videos, shard them, pre-train the tiny recipe on the CPU, make a held-out
    synthetic DAVIS-2017 set, and compare J&F of the trained encoder against a random one.

    Nothing is downloaded. The default takes a few minutes on 2 CPU cores; --steps and the sizes
    shrink or grow it. Results land in OUT (see OUT/demo.json); a rerun starts over.
    """
    from siammae.demo import DemoSize, run_demo

    size = DemoSize(steps=steps, batch=batch, videos=videos, sequences=sequences, seed=seed)
    report = run_demo(out, size, progress=not quiet)
    trained, random = (report["results"][k]["J&F-Mean"] for k in ("trained", "random"))
    if trained <= random:
        raise click.ClickException(
            f"the trained encoder (J&F {100 * trained:.1f}) does not beat the random one ({100 * random:.1f}): "
            "something in data, model or training is broken"
        )
