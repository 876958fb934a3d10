"""``python -m siammae.train RECIPE [group.key=value ...]``: the command line around
:func:`siammae.train.loop.train`.

The training loop is imported only once the command line has been parsed and the recipe checked, so
``--help`` answers at once rather than after importing torch (about 5 s on a 2-core CPU; checking a
recipe imports its method's module, and with it torch, all the same).
"""

from __future__ import annotations

import argparse
import os
import sys

from siammae.config import load_config
from siammae.errors import SiammaeError


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m siammae.train",
        description="Pre-train on WebDataset shards (SiamMAE by default). Running it again resumes the run.",
    )
    parser.add_argument("recipe", help="a recipe file or the name of a packaged recipe (base, tiny, ...)")
    parser.add_argument("overrides", nargs="*", metavar="group.key=value", help="config overrides")
    return parser.parse_args(argv)


def _stop(error: SiammaeError, status: int):
    if int(os.environ.get("RANK", "0")) == 0:  # every rank stops; one says why
        print(f"error: {error}", file=sys.stderr)
    raise SystemExit(status) from None


def main(argv=None, on_step=None) -> dict:
    """The command line: a user error prints one line and exits with status 2 (a diverged run: 1);
    a run stopped by a signal exits with 128 + the signal, as the shell would report it."""
    args = parse_args(argv)
    try:
        cfg = load_config(args.recipe, args.overrides)
    except SiammaeError as e:
        _stop(e, 2)
    from siammae.train.loop import Diverged, train

    try:
        summary = train(cfg, on_step)
    except SiammaeError as e:
        _stop(e, 1 if isinstance(e, Diverged) else 2)
    if summary["signal"]:
        raise SystemExit(128 + summary["signal"])
    return summary
