"""``accelerate launch -m siammae.propagate --davis ...``: ``siammae propagate`` in every launched process."""

from siammae.cli.propagate import propagate

propagate(prog_name="python -m siammae.propagate")
