"""``siammae evaluate``: DAVIS-2017 J&F of a folder of predicted masks, as the official evaluator.

A thin wrapper over :mod:`siammae.tasks.jandf`; numpy/scipy are imported inside the command.
"""

import click

from siammae.cli import Command


def run_evaluation(davis, results, split, sequences, resolution):
    """Score, write the two CSVs into ``results`` and print the table; returns the global row.

    Shared with ``siammae propagate``."""
    from tqdm import tqdm

    from siammae.tasks.davis_files import select_sequences
    from siammae.tasks.jandf import evaluate, format_table, write_csvs

    names = select_sequences(davis, split, sequences)
    with tqdm(total=len(names), unit="seq", desc="evaluate", dynamic_ncols=True) as bar:
        result = evaluate(davis, results, split, names, resolution, progress=lambda _n: bar.update(1))
    g_path, s_path = write_csvs(result, results, split)
    click.echo(format_table(result, split))
    click.echo(f"wrote {g_path} and {s_path}")
    return result.global_row()


def parse_sequences(value):
    return [s.strip() for s in value.split(",") if s.strip()] if value else None


# fmt: off
@click.command(cls=Command)
@click.option("--davis", "davis", required=True, type=click.Path(exists=True, file_okay=False),
              help="DAVIS-2017 root (JPEGImages/, Annotations/, ImageSets/).")
@click.option("--results", required=True, type=click.Path(exists=True, file_okay=False),
              help="Folder with <seq>/<frame>.png predictions; the CSVs are written here.")
@click.option("--split", default="val", show_default=True, help="ImageSets/2017/<split>.txt.")
@click.option("--sequences", default=None, help="Comma-separated subset of the split's sequences.")
@click.option("--resolution", default="480p", show_default=True, help="480p or Full-Resolution.")
# fmt: on
def evaluate(davis, results, split, sequences, resolution):
    """J and F exactly as the official DAVIS-2017 semi-supervised evaluator.

    Void is background, the first and last frames are not scored, boundaries match within
    ceil(0.008 x diagonal) pixels, means are over objects. Writes global_results-<split>.csv and
    per-sequence_results-<split>.csv (official columns) into RESULTS, always recomputed, and prints
    a table. Missing frames, wrong sizes or unknown object ids are errors.
    """
    run_evaluation(davis, results, split, parse_sequences(sequences), resolution)
