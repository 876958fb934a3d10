"""``python -m siammae.train RECIPE [group.key=value ...]`` (also under ``accelerate launch -m``)."""

from siammae.train.loop import main

main()
