"""``siammae inspect``: verify shards made by ``siammae shard`` and summarise them (thin wrapper over
:mod:`siammae.shard.inspect`; heavy imports stay inside the command)."""

import json

import click

from siammae.cli import Command


def _spread(values, unit=""):
    if not values:
        return "-"
    return ", ".join(f"{k} {values[k]:g}{unit}" for k in ("min", "median", "mean", "max"))


# fmt: off
@click.command(cls=Command, context_settings={"help_option_names": ["-h", "--help"]})
@click.argument("shards", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--sheet", type=click.Path(dir_okay=False),
              help="Also draw a contact sheet of a few samples into this PNG.")
@click.option("--count", type=click.IntRange(1, 200), default=8, show_default=True,
              help="Samples on the contact sheet.")
@click.option("--seed", type=int, default=0, show_default=True, help="Which samples the sheet shows.")
@click.option("--quick", is_flag=True, help="Check JPEG headers and end markers instead of decoding every JPEG.")
@click.option("--json", "as_json", is_flag=True, help="Print the summary as JSON.")
@click.option("--progress/--no-progress", default=True, show_default=True, help="Show a progress bar over shards.")
# fmt: on
def inspect(shards, sheet, count, seed, quick, as_json, progress):
    """Count, verify and summarise WebDataset shards (folders of *.tar or tar files).

    Checks that every tar reads to its end, keys are unique and members contiguous, each sample has
    its json and one JPEG per frame (frames strictly increasing, gap = last - first), and every JPEG
    decodes. Reports sample/shard/video counts, gap (frames and seconds), frame and source sizes,
    fps, labels and splits. Exits with an error if any problem is found.
    """
    from tqdm import tqdm

    from siammae.shard.inspect import contact_sheet, find_shards, inspect_shards

    total = len(find_shards(shards))
    with tqdm(total=total, unit="shard", disable=not progress, dynamic_ncols=True, leave=False) as bar:
        report = inspect_shards(shards, decode=not quick, keep=count if sheet else 0, seed=seed,
                                progress=lambda _: bar.update(1))  # fmt: skip
    if sheet and report.picked:
        contact_sheet(report.picked, sheet)
    summary = report.summary()
    if as_json:
        click.echo(json.dumps(summary, indent=1))
    else:
        checked = "checked" if quick else "decoded"
        click.echo(
            f"{summary['samples']} samples of {summary['videos']} videos in {summary['shards']} shards "
            f"({summary['bytes'] / 1e6:.1f} MB, {summary['jpegs']} JPEGs {checked})"
        )
        click.echo(f"sha256 of the output: {summary['sha256']} (stats.json's output.sha256 for the same shards)")
        click.echo(f"frames per sample: {summary['frames_per_sample']}")
        click.echo(f"gap (frames):  {_spread(summary['gap_frames'])}")
        click.echo(f"gap (seconds): {_spread(summary['gap_seconds'], ' s')}")
        click.echo(
            f"frame sizes: {summary['frame_sizes']}; source sizes: {summary['source_sizes']}; fps: {summary['fps']}"
        )
        click.echo(f"labels: {summary['labels']} {summary['top_labels'] or ''}; splits: {summary['splits']}")
        if sheet and report.picked:
            click.echo(f"contact sheet: {sheet}")
    if summary["problems"]:
        for line in summary["problem_examples"]:
            click.echo(f"problem: {line}", err=True)
        raise click.ClickException(f"{summary['problems']} problem(s) found in {summary['shards']} shards")
