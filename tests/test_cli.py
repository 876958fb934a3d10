"""The console command answers --help and --version without importing torch."""

import subprocess
import sys

from siammae import __version__

PROBE = (
    "import sys; from click.testing import CliRunner; from siammae.cli import main; "
    "r = CliRunner().invoke(main, sys.argv[1:]); print(r.output); "
    "assert r.exit_code == 0, r.output; assert 'torch' not in sys.modules, 'torch imported'"
)


def run_probe(*args):
    return subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True, timeout=60)


def test_help_lists_every_command_without_importing_torch():
    r = run_probe("--help")
    assert r.returncode == 0, r.stderr + r.stdout
    for command in ["shard", "inspect", "propagate", "evaluate", "benchmark", "export", "synth", "demo", "train"]:
        assert command in r.stdout


def test_version_without_importing_torch():
    r = run_probe("--version")
    assert r.returncode == 0, r.stderr + r.stdout
    assert __version__ in r.stdout


def test_a_user_error_is_one_line_and_a_bug_keeps_its_traceback():
    import click
    from click.testing import CliRunner

    from siammae.cli import Command
    from siammae.errors import SiammaeError

    @click.command(cls=Command)
    @click.argument("what")
    def fails(what):
        raise SiammaeError("the folder x has no videos") if what == "user" else ValueError("a bug")

    user = CliRunner().invoke(fails, ["user"])
    assert user.exit_code == 1 and user.output == "Error: the folder x has no videos\n"
    bug = CliRunner().invoke(fails, ["bug"])
    assert isinstance(bug.exception, ValueError)  # not turned into a one-line "Error:"


def test_every_error_class_of_the_library_is_a_user_error():
    """One type to catch: each exception class the library defines derives from SiammaeError."""
    import importlib
    import inspect
    import pkgutil

    import siammae
    from siammae.errors import SiammaeError

    found = []
    for module in pkgutil.walk_packages(siammae.__path__, "siammae."):
        if module.name.endswith("__main__"):
            continue
        for name, obj in inspect.getmembers(importlib.import_module(module.name), inspect.isclass):
            if issubclass(obj, BaseException) and obj.__module__ == module.name:
                found.append(obj)
                assert issubclass(obj, SiammaeError), f"{module.name}.{name} does not derive from SiammaeError"
    assert len(found) >= 10


def test_siammae_train_is_the_module_entry_point():
    """``siammae train`` = ``python -m siammae.train``: the same help, the same one-line error (exit 2)."""
    import os
    from pathlib import Path

    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    both = [[sys.executable, "-m", "siammae", "train"], [sys.executable, "-m", "siammae.train"]]
    helps = [subprocess.run([*c, "--help"], capture_output=True, text=True, env=env, timeout=120) for c in both]
    assert helps[0].returncode == helps[1].returncode == 0 and helps[0].stdout == helps[1].stdout
    bad = [
        subprocess.run([*c, "tiny", "train.bogus=1"], capture_output=True, text=True, env=env, timeout=120)
        for c in both
    ]
    assert bad[0].returncode == bad[1].returncode == 2
    assert bad[0].stderr == bad[1].stderr and bad[0].stderr.startswith("error: unknown key 'train.bogus'")
