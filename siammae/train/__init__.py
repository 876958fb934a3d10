"""Pre-training: the loop (:mod:`.loop`), its schedule (:mod:`.schedule`), run folder and checkpoints
(:mod:`.runfolder`), J&F during training (:mod:`.monitor`) and the command line (:mod:`.command`).

``python -m siammae.train RECIPE`` and ``accelerate launch -m siammae.train RECIPE`` run :func:`main`.
``train`` is imported on first use, so that ``--help`` does not wait for torch.
"""

from siammae.train.command import main

__all__ = ["main", "train"]


def __getattr__(name):
    if name == "train":
        from siammae.train.loop import train

        return train
    raise AttributeError(f"module 'siammae.train' has no attribute {name!r}")
