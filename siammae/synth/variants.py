"""The variants of a DAVIS-format set composited from real videos (:mod:`siammae.synth.composite`), by name.

Plain data without numpy, so the command line can list them without importing the compositor.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Variant:
    """How a set's objects are cut, coloured and moved (:mod:`siammae.synth.composite` describes each)."""

    name: str
    own_video: bool = False  # objects cut from their background video
    match_colour: bool = False  # object colours moved to the background's local mean and spread
    speed: float = 1.0  # factor on the objects' path and spin speeds
    bend: float = 0.0  # non-rigid: warp amplitude as a fraction of the object's radius
    grow: bool = False  # growing to twice the size over the sequence

    @property
    def prefix(self) -> str:
        """Sequence names: ``real-000`` (default), ``real-hard-000``, ``real-colour-000``, ..."""
        return "real" if self.name == "default" else f"real-{self.name}"


VARIANTS = {
    v.name: v
    for v in (
        Variant("default"),
        Variant("hard", own_video=True),
        Variant("colour", match_colour=True),
        Variant("fast", speed=3.0),
        Variant("nonrigid", bend=0.15),
        Variant("scale", grow=True),
    )
}
