"""``siammae benchmark``: one encoder on DAVIS-2017, JHMDB and VIP (whichever are given), one table.

A thin wrapper over :mod:`siammae.tasks.benchmark`; torch is imported inside the command.
"""

import click

from siammae.cli import Command
from siammae.cli.propagate import compute_options, dataset_options, dataset_roots, encoder_options, pick_device
from siammae.tasks import TASKS


# fmt: off
@click.command(cls=Command)
@dataset_options
@encoder_options(required=False)
@click.option("--random-init", is_flag=True,
              help="Use random weights (a baseline, seed 0); needs a timm name or run folder.")
@click.option("--out", type=click.Path(file_okay=False), help="Output folder: OUT/benchmark.json and OUT/<task>/.")
@click.option("--davis-size", type=click.IntRange(min=16), default=None,
              help="DAVIS: short side of the frames fed to the encoder (default: the preset's, 480); e.g. the "
                   "eval.size a training run tracked J&F at, such as the demo's 96.")
@compute_options
@click.option("--compare", is_flag=True,
              help="Instead of running: the benchmark.json files (or their folders) given as arguments side by "
                   "side, each minus the first (A, e.g. a random encoder).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
@click.argument("records", nargs=-1, type=click.Path(exists=True))
def benchmark(checkpoint, weights, weights_prefix, random_init, out, davis_size, device, batch_size, precision,
              compare, quiet, records, **kwargs):
# fmt: on
    """Label propagation on every dataset given, each with its task's preset (the paper's Table 4b
    values; for DAVIS the run's eval settings as `siammae propagate` uses them), then one table:
    J&F, J, F | PCK@0.1, PCK@0.2 | mIoU. OUT/benchmark.json records the encoder, a hash of its weights,
    every protocol, the scores and timings; each task's predictions and score files are in OUT/<task>/.

    \b
    siammae benchmark --checkpoint runs/siammae --davis DAVIS --jhmdb JHMDB --vip VIP --out bench/siammae
    siammae benchmark --compare bench/random bench/siammae bench/rsp
    """
    from siammae.tasks.benchmark import compare as compare_records
    from siammae.tasks.benchmark import read_record

    roots, load = dataset_roots(kwargs)
    if compare:
        if len(records) < 2:
            raise click.UsageError("--compare needs two or more benchmark records: A B [C ...]")
        click.echo(compare_records(*(read_record(p) for p in records)))
        return
    if records:
        raise click.UsageError(f"unexpected arguments {' '.join(records)} (benchmark records go with --compare)")
    if checkpoint is None or out is None:
        raise click.UsageError("--checkpoint and --out are needed (or --compare A B [C ...])")
    if not roots:
        raise click.UsageError(f"give at least one dataset: {', '.join(f'--{t}' for t in TASKS)}")
    from siammae.propagate.precision import reason

    compute = dict(device=pick_device(device), batch_size=batch_size, precision=precision)
    said = reason(precision, compute["device"])  # a format the device lacks: an error before any work
    click.echo(f"precision {said}")
    run(roots, load, (checkpoint, weights, weights_prefix, random_init), out, compute, quiet, davis_size)


def run(roots, load, encoder_args, out, compute, quiet, davis_size=None):
    from siammae.encoders import open_encoder
    from siammae.tasks.benchmark import format_table, run_benchmark

    # Every dataset is checked (and loaded once) before the weights load and the first task runs.
    data = {task: TASKS[task].load(root, **load[task]) for task, root in roots.items()}
    encoder, info = open_encoder(*encoder_args)
    run_eval = info.config.eval if info.config is not None else None
    protocols = {task: TASKS[task].protocol(run_eval=run_eval) for task in roots}
    if davis_size and "davis" in protocols:
        protocols["davis"] = TASKS["davis"].protocol(run_eval=run_eval, short_side=davis_size)
    options = {task: dict(compute, progress=not quiet) for task in roots}
    record = run_benchmark(encoder, info.to_dict(), roots, data, protocols, out, options, log=click.echo)
    click.echo(format_table([record]))
    click.echo(f"wrote {out}/benchmark.json")
