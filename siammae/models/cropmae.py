"""CropMAE (Eymael et al., ECCV 2024): SiamMAE's model on two crops of *one* frame instead of two frames.

The views are made by the loader (``data.views: crops``, :func:`siammae.data.views.global_and_local`):
a global crop of a frame (``data.crop_scale``, CropMAE's [0.5, 1] on Kinetics) and a local crop of the
global crop (``data.local_crop_scale``, [0.3, 0.6] of its area), each view flipped on its own. The
global view is the visible context, the local view the target, masked at 98.5% (``model.mask_ratio``
[0, 0.985]: 3 of 196 patches at 224 px, patch 16). The model is SiamMAE's (siamese ViT, cross-self
decoder) with the decoder's positions on the target's tokens only, as CropMAE's SiamMAE
(``cropmae.context_positions``: false). Because the views come from one frame, CropMAE trains from
pair or run shards (it reads f0 only) as well as from shards of images.

Where CropMAE differs and this does not follow: CropMAE resizes the global crop to the input size and
crops the local view from that resized image; here both views are cut from the frame in one resize
each (the same geometry, one resampling fewer).
"""

from __future__ import annotations

from dataclasses import dataclass

from siammae.models import siammae


@dataclass
class Options(siammae.Options):
    """The ``cropmae:`` section: SiamMAE's keys, with CropMAE's decoder (no positions on the context)."""

    context_positions: bool = False


RULES: dict = {}
CROSS_RULES = [
    (
        ("data.views",),
        lambda views: views == "crops",
        "cropmae trains on two crops of one frame: data.views must be crops",
    ),
    (
        ("model.mask_ratio",),
        lambda ratios: len(ratios) == 2 and ratios[0] == 0,
        "cropmae's global view is its whole context: model.mask_ratio must be [0.0, r], e.g. [0.0, 0.985]",
    ),
]


def build(cfg) -> siammae.SiamMAE:
    """SiamMAE's model for the resolved config ``cfg`` with ``cfg.cropmae``'s options."""
    return siammae.build_with(cfg.model, cfg.cropmae)
