"""``siammae train``: the same as ``python -m siammae.train`` (one process; use ``accelerate launch -m
siammae.train`` or torchrun for several)."""

import click


@click.command(context_settings={"ignore_unknown_options": True, "help_option_names": []}, add_help_option=False)
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def train(args):
    """Pre-train on WebDataset shards: RECIPE [group.key=value ...] (see --help). Running it again
    resumes the run. One process; several: accelerate launch -m siammae.train RECIPE ..."""
    from siammae.train import main

    main(list(args))
