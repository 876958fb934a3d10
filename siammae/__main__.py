"""``python -m siammae ...``: the same as the ``siammae`` command."""

from siammae.cli import main

main()
