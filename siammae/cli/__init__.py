"""The ``siammae`` command: a Click group whose commands are thin wrappers over the library.

Commands are imported only when invoked (or when ``--help`` lists them), and each command module
keeps its heavy imports (torch, decord, ...) inside the command body, so ``siammae --help`` and
``siammae --version`` answer without importing torch.

User errors: every command is a :class:`Command`, which turns a :class:`siammae.errors.SiammaeError`
from the library into Click's one line ``Error: <message>`` (exit status 1). Bad arguments are Click's
usage errors (exit status 2). Any other exception is a bug and keeps its traceback.
"""

import importlib

import click

from siammae import __version__
from siammae.errors import SiammaeError

# name -> "module:attribute" of a click.Command; loaded lazily.
COMMANDS = {
    "shard": "siammae.cli.shard:shard",
    "inspect": "siammae.cli.inspect:inspect",
    "propagate": "siammae.cli.propagate:propagate",
    "evaluate": "siammae.cli.evaluate:evaluate",
    "benchmark": "siammae.cli.benchmark:benchmark",
    "export": "siammae.cli.export:export",
    "synth": "siammae.cli.synth:synth",
    "train": "siammae.cli.train:train",
    "demo": "siammae.cli.demo:demo",
}


class Command(click.Command):
    """A command whose library errors meant for the user print as one line (the one place they are caught)."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except SiammaeError as error:
            raise click.ClickException(str(error)) from None


class Group(click.Group):
    """A group whose subcommands are :class:`Command` s."""

    command_class = Command


class LazyGroup(click.Group):
    """A group that imports each command's module only when the command is needed."""

    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module_name, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(module_name), attr)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="siammae")
def main():
    """Siamese Masked Autoencoders for video correspondence.

    \b
    Workflow:
      siammae shard --src VIDEOS --out SHARDS      videos -> WebDataset shards of frame pairs
      accelerate launch -m siammae.train RECIPE    pre-train SiamMAE on the shards
                                                   (one process: siammae train RECIPE)
      siammae propagate --davis DAVIS --checkpoint RUN --out OUT
                                                   DAVIS-2017 label propagation + J&F
      siammae benchmark --checkpoint RUN --davis D --jhmdb J --vip V --out OUT
                                                   the paper's three tasks, one table
    """
