"""Every choice of label propagation as one named field (:class:`Protocol`), the published presets, and
the network input size they give. Torch-free, so the command line can offer the fields as options.

Small objects: an object whose first-frame mask covers too little of any token can never be
predicted. With ``first_labels="area"`` the first mask is area-averaged onto the token grid (each
token holds the fraction of each object in it) and ``keep_small`` then makes sure every object of
the first frame owns at least one token: where an object is not the majority of any token, the token
with its largest fraction is given to it outright. DINO's script instead resizes the mask with
nearest neighbour (``first_labels="nearest"``) and loses such objects (they score 0).

Presets (:data:`PROTOCOLS`) and where each value comes from:

- ``siammae``: the paper's Table 4b for DAVIS (top-k 7, queue 20, neighbourhood 20). The paper gives
  no temperature or resolution; we use CropMAE's SiamMAE evaluation: temperature 0.7, a disk of
  radius 20 tokens (dy^2 + dx^2 < r^2) not applied to the first frame, frames 480 high with the
  width rounded to the nearest multiple of the patch (854 -> 848 for patch 16, 856 for patch 8;
  CropMAE used a fixed 480x880).
- ``dino``: facebookresearch/dino ``eval_video_segmentation.py``: top-k 5, 7 previous frames, a
  square window of +-12 tokens on every context frame, temperature 0.1, short side 480 with the long
  side floored to a multiple of 64, std 0.228 (its typo of 0.229), nearest-neighbour first mask,
  per-channel min-max rescaling before the argmax. (It upsamples by the patch factor then resizes the
  argmax with nearest; we upsample once, bilinearly, to the original size.)
- ``crw``: ajabri/videowalk ``test.py``: top-k 10, 20 context frames front-padded with copies of
  frame 0, a disk of radius 12 not applied to the first frame, temperature 0.05, native 480p.
- ``siammae-jhmdb``: the paper's Table 4b for JHMDB (top-k 7, queue 20, neighbourhood 20), frames
  resized to 320x320 as CropMAE's JHMDB evaluation does, temperature 0.7 and the disk as ``siammae``.
- ``siammae-vip``: the paper's Table 4b for VIP (top-k 10, queue 20, neighbourhood 8), temperature 0.7
  and the disk as ``siammae``; frames sized as CropMAE's VIP loader sizes them (long side 880, the short
  side scaled, truncated to whole pixels and floored to a multiple of 64: 1280x720 -> 880x448; plain
  bilinear as its ``cv2.resize``, no antialiasing); frame 0 scored, its given labels as the prediction,
  as CRW's, UVC's and CropMAE's ``eval_vip.py`` score every file their ``test.py`` writes.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Optional

from siammae.data import IMAGENET_MEAN, IMAGENET_STD
from siammae.errors import SiammaeError


class ProtocolError(SiammaeError):
    """A propagation setting out of its range; one line for the user."""


def _knob(help: str, default=dataclasses.MISSING, flag: Optional[str] = None, choices: tuple = ()):
    """A protocol field that ``siammae propagate`` offers as an option (``flag``: its name if not
    ``--<field>``; ``choices``: the values a string takes)."""
    return dataclasses.field(default=default, metadata=dict(help=help, flag=flag, choices=choices))


@dataclass(frozen=True)
class Protocol:
    """Every knob of label propagation. Distances are in tokens (feature-grid cells). The fields made
    with :func:`_knob` are the command line's options (:func:`command_line_knobs`)."""

    name: str
    topk: int = _knob("Context tokens each target token averages.")
    queue: int = _knob("Previous predicted frames kept as context, besides the first frame.")
    radius: float = _knob("Local window radius in tokens (0: none).")
    window: str = _knob(
        "Window shape: disk (dy^2 + dx^2 < r^2, CRW) or square (|dy|, |dx| <= r, DINO).", choices=("disk", "square")
    )
    window_on_first: bool = _knob("Restrict the first frame's tokens to the window too.")
    temperature: float = _knob("Softmax temperature.")
    pad_queue: bool = False  # start with the queue full of copies of frame 0 (CRW)
    short_side: int = _knob("Short side of the network input in pixels (0: native).", 480, flag="--size")
    long_side: int = 0  # instead: the long side is this (VIP's 880); 0 = use short_side
    input_size: tuple = ()  # instead: every frame resized to this (H, W) (JHMDB's 320x320); () = aspect kept
    multiple: int = _knob("Long side made a multiple of this (0: the patch).", 0)
    rounding: str = "nearest"  # how the long side reaches the multiple: "nearest" or "floor"
    short_multiple: int = 0  # with long_side: the short side floored to a multiple of this (0: rounded to the patch)
    antialias: bool = True  # downscale with an antialiasing filter; False: plain bilinear, as cv2.resize
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    first_labels: str = _knob(
        "First mask onto the token grid: area (fractions) or nearest.", "area", choices=("area", "nearest")
    )
    keep_small: bool = _knob("Every first-frame object keeps >= 1 token.", True)
    minmax: bool = _knob("Min-max rescale each upsampled channel before the argmax (DINO).", False)
    layer: int = _knob("Tokens of this block of the encoder (1 = the first), through its final norm; 0: the last.", 0)
    first_frame_scored: bool = _knob(
        "Score frame 0 too, the given labels as its prediction (VIP's reference evaluators do; DAVIS's and "
        "JHMDB's never, so those tasks refuse it).",
        False,
    )
    vip_names: str = _knob(
        "VIP prediction file names: crw (<frame>.png, read by CRW's eval_vip.py) or cropmae "
        "(<frame>_mask.png, read by CropMAE's copy of it).",
        "crw",
        choices=("crw", "cropmae"),
    )

    def __post_init__(self):
        checks = [
            (self.topk >= 1, "topk must be >= 1"),
            (self.queue >= 0, "queue must be >= 0"),
            (self.radius >= 0, "radius must be >= 0"),
            (self.window in ("disk", "square"), "window must be disk or square"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.short_side >= 0 and self.multiple >= 0, "short_side and multiple must be >= 0"),
            (self.long_side >= 0 and self.short_multiple >= 0, "long_side and short_multiple must be >= 0"),
            (self.layer >= 0, "layer must be >= 0 (0: the last block)"),
            (
                len(self.input_size) in (0, 2) and all(v > 0 for v in self.input_size),
                "input_size must be (height, width) or empty",
            ),
            (self.rounding in ("nearest", "floor"), "rounding must be nearest or floor"),
            (self.first_labels in ("area", "nearest"), "first_labels must be area or nearest"),
            (self.vip_names in ("crw", "cropmae"), "vip_names must be crw or cropmae"),
            (len(self.mean) == 3 and len(self.std) == 3, "mean and std need 3 values"),
        ]
        for ok, message in checks:
            if not ok:
                raise ProtocolError(f"protocol {self.name}: {message}")

    def replace(self, **changes) -> "Protocol":
        """A copy with the given knobs changed (None values are ignored); renamed ``<name>+custom``.
        The input size is one choice: setting ``short_side``, ``long_side`` or ``input_size`` clears
        the other two unless they are given too."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        sizes = {"short_side": 0, "long_side": 0, "input_size": ()}
        if sizes.keys() & changes.keys():
            changes = {**{k: v for k, v in sizes.items() if k != "short_side"}, **changes}
        differs = any(getattr(self, k) != v for k, v in changes.items() if k != "name")
        custom = self.name if self.name.endswith("+custom") else f"{self.name}+custom"
        name = changes.pop("name", custom if differs else self.name)
        return dataclasses.replace(self, name=name, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# fmt: off
PROTOCOLS = {
    "siammae": Protocol("siammae", topk=7, queue=20, radius=20, window="disk", window_on_first=False, temperature=0.7),
    "dino": Protocol("dino", topk=5, queue=7, radius=12, window="square", window_on_first=True, temperature=0.1,
                     multiple=64, rounding="floor", std=(0.228, 0.224, 0.225), first_labels="nearest",
                     keep_small=False, minmax=True),
    "crw": Protocol("crw", topk=10, queue=20, radius=12, window="disk", window_on_first=False, temperature=0.05,
                    pad_queue=True, keep_small=False),
    "siammae-jhmdb": Protocol("siammae-jhmdb", topk=7, queue=20, radius=20, window="disk", window_on_first=False,
                              temperature=0.7, input_size=(320, 320)),
    "siammae-vip": Protocol("siammae-vip", topk=10, queue=20, radius=8, window="disk", window_on_first=False,
                            temperature=0.7, long_side=880, short_multiple=64, antialias=False,
                            first_frame_scored=True, vip_names="cropmae"),
}
# fmt: on


def command_line_knobs() -> list:
    """The :class:`Protocol` fields offered as command-line options, in declaration order."""
    return [f for f in dataclasses.fields(Protocol) if "help" in f.metadata]


def choose_protocol(preset: Optional[str] = None, run_eval=None, **knobs) -> Protocol:
    """The protocol of one propagation, layered: the preset (``preset``, else the run's
    ``eval.protocol``), then the run's own ``eval`` settings (top-k, queue, radius, temperature; a
    training run's eval settings are DAVIS settings, so other tasks pass no ``run_eval``), then
    ``knobs`` (any :class:`Protocol` field; None = not given)."""
    if preset is None and run_eval is None:
        raise ProtocolError("no protocol preset given")
    base = PROTOCOLS[preset or run_eval.protocol]
    changes = {}
    if run_eval is not None:
        changes = dict(
            topk=run_eval.topk, queue=run_eval.queue, radius=run_eval.radius, temperature=run_eval.temperature
        )
    changes.update({k: v for k, v in knobs.items() if v is not None})
    return base.replace(**changes)


def input_size_rule(protocol: Protocol) -> str:
    """How ``protocol`` sizes a frame for the network, in words (what a task records in scores.json)."""
    resample = "bilinear" + (" with antialiasing" if protocol.antialias else ", no antialiasing (cv2.resize)")
    if protocol.input_size:
        return f"every frame resized to {protocol.input_size[0]}x{protocol.input_size[1]} (HxW); {resample}"
    multiple = f"a multiple of {protocol.multiple}" if protocol.multiple else "a multiple of the patch"
    if protocol.long_side:
        short = (
            f"scaled, truncated and floored to a multiple of {protocol.short_multiple}"
            if protocol.short_multiple
            else "scaled and rounded to a multiple of the patch"
        )
        return f"long side {protocol.long_side} (rounded to {multiple}), short side {short}; {resample}"
    short = f"short side {protocol.short_side}" if protocol.short_side else "native short side"
    return f"{short}, long side scaled ({protocol.rounding} to {multiple}); {resample}"


def resized_shape(height: int, width: int, protocol: Protocol, patch: int) -> tuple[int, int]:
    """Network input size (H', W') for a frame: short side -> ``short_side``, long side keeping the
    aspect ratio, both multiples of the patch (and of ``multiple`` for the long side)."""
    multiple = protocol.multiple or patch
    if protocol.input_size:  # a fixed size, aspect ratio not kept
        return tuple(max(patch, int(round(v / patch)) * patch) for v in protocol.input_size)
    short, long_ = min(height, width), max(height, width)
    if protocol.long_side:
        new_long, new_short = float(protocol.long_side), short * protocol.long_side / long_
        new_long = max(multiple, int(round(new_long / multiple)) * multiple)
        if protocol.short_multiple:  # CropMAE's loader: int() the scaled side, then floor to the multiple
            step = protocol.short_multiple
            new_short = max(step, int(new_short) // step * step)
        else:
            new_short = max(patch, int(round(new_short / patch)) * patch)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    if protocol.short_side:
        new_short = protocol.short_side
        new_long = long_ * new_short / short
    else:
        new_short, new_long = short, float(long_)
    to_multiple = math.floor if protocol.rounding == "floor" else round
    new_long = max(multiple, int(to_multiple(new_long / multiple)) * multiple)
    new_short = max(patch, int(round(new_short / patch)) * patch)
    return (new_short, new_long) if height <= width else (new_long, new_short)
