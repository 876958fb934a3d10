"""ToBo (Token Bottleneck, NeurIPS 2025) on frame pairs, as its public code (naver-ai/tobo) defines the
objective.

A sample is a pair (B, 2, 3, H, W): f1 the source frame, f2 the target (the shards' gap; ToBo's code
draws 1-96 frames).

- One ViT (``model.encoder``, exported and propagated) encodes f1 whole -> h (B, 1 + N, E), [CLS]
  first: its [CLS] output (after the final norm) is the *bottleneck token*. f2 is masked at
  ``model.mask_ratio[1]`` (0.9) and its visible patches encoded with its own [CLS].
- f2's tokens are projected (the decoder's ``embed``, shared with f1's) into all 1 + N slots, [MASK]
  where a patch is hidden, with positions (:class:`~siammae.models.slots.SlotDecoder`).
- The *bottleneck* branch: [bottleneck token, f2's patch slots] through the decoder blocks *without*
  their cross-attention (self-attention and MLP only): f2's masked patches can come from f1 only
  through that one token (L_tobo).
- The *MIM* branch, as the public code also trains it: [f2's [CLS], f2's patch slots] through the same
  blocks *with* cross-attention to all of f1's projected tokens (L_mim).
- L = ``tobo.mim_weight`` x L_mim + ``tobo.tobo_weight`` x L_tobo, each the MSE on f2's masked
  patches (per-patch normalised pixels with ``model.norm_pix_loss``).

The two branches share the blocks' self-attention, MLP and their norms, the final norm and the pixel
head; the cross-attention is the MIM branch's alone. What the pictures show: the bottleneck branch's
prediction.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from siammae.models import common
from siammae.models.common import Output
from siammae.models.kernels import sdpa_backend
from siammae.models.masking import visible_indices
from siammae.models.slots import SlotDecoder, SlotModel, build_slot_model


@dataclass
class Options:
    """The ``tobo:`` section of a recipe (the public code's weights by default)."""

    mim_weight: float = field(default=1.0, metadata={"help": "the MIM branch's weight (cross-attention to f1)"})
    tobo_weight: float = field(default=1.0, metadata={"help": "the bottleneck branch's weight"})


RULES = {"mim_weight": (lambda v: v >= 0, "must be >= 0"), "tobo_weight": (lambda v: v >= 0, "must be >= 0")}
CROSS_RULES = [
    (("data.num_frames",), lambda frames: frames == 2, "tobo takes frame pairs: data.num_frames must be 2"),
    (
        ("model.mask_ratio",),
        lambda ratios: ratios[0] == 0,
        "tobo squeezes the whole source frame into its bottleneck: model.mask_ratio must be [0.0, r], e.g. [0.0, 0.9]",
    ),
    (
        ("options.mim_weight", "options.tobo_weight"),
        lambda mim, tobo: mim + tobo > 0,
        "tobo.mim_weight and tobo.tobo_weight cannot both be 0",
    ),
]


class ToBo(SlotModel):
    """``encoder``, ``embed`` (encoder tokens -> decoder width, both frames) and ``decoder``."""

    def __init__(self, encoder, decoder: SlotDecoder, **kwargs):
        super().__init__(encoder, decoder, **kwargs)
        self.embed = nn.Linear(encoder.embed_dim, decoder.mask_token.shape[-1])

    def source_tokens(self, img: torch.Tensor) -> torch.Tensor:
        """f1 whole through the encoder -> (B, 1 + N, E); [CLS] first (the bottleneck)."""
        return common.encode_frame(self.encoder, img, cls=True)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> Output:
        """frames (B, 2, 3, H, W) normalised; mask (B, 2, N) bool (only the last frame's is used), drawn
        fresh when None. -> :class:`Output` with the bottleneck branch's prediction and f2's mask, and the
        logged ``loss_tobo``, ``loss_mim``."""
        mask = self.draw_mask(frames, mask)
        keep = visible_indices(mask[:, -1])
        with sdpa_backend(self.sdpa):
            h = self.embed(self.source_tokens(frames[:, 0])) + self.decoder.pos_embed  # (B, 1 + N, D)
            target = self.decoder.grid(
                self.embed(common.encode_frame(self.encoder, frames[:, -1], keep, cls=True)), keep
            )
            pred = self.decoder.alone(torch.cat([h[:, :1], target[:, 1:]], dim=1))  # through the bottleneck
            pred_mim = self.decoder.cross(target, h)  # computed at weight 0 too: DDP wants every weight used
        loss_tobo = self.loss(frames, pred, mask[:, -1])
        loss_mim = self.loss(frames, pred_mim, mask[:, -1])
        loss = self.options.tobo_weight * loss_tobo + self.options.mim_weight * loss_mim
        return Output(loss, pred, mask[:, -1].float(), dict(loss_tobo=loss_tobo.detach(), loss_mim=loss_mim.detach()))


def build(cfg) -> ToBo:
    """ToBo for the resolved config ``cfg`` (``cfg.tobo``: its own keys), sized by ``cfg.model``."""
    return build_slot_model(ToBo, cfg, cfg.tobo)
