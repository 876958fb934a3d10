"""Pre-training: the loop (:mod:`.loop`), its schedule (:mod:`.schedule`), run folder and checkpoints
(:mod:`.runfolder`) and J&F during training (:mod:`.monitor`).

``python -m siammae.train RECIPE`` and ``accelerate launch -m siammae.train RECIPE`` run :func:`main`.
"""

from siammae.train.loop import main, train

__all__ = ["main", "train"]
