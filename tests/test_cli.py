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
    for command in ["shard", "inspect", "propagate", "evaluate", "export", "synth", "demo"]:
        assert command in r.stdout


def test_version_without_importing_torch():
    r = run_probe("--version")
    assert r.returncode == 0, r.stderr + r.stdout
    assert __version__ in r.stdout
