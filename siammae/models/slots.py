"""The decoder of the frame-prediction methods (RSP, ToBo): a [CLS] slot before the patch grid.

Their public code decodes sequences of 1 + N tokens, the [CLS] slot first with a zero position (as the
encoder's), the N patches with fixed 2-D sin-cos positions, through cross-self blocks (cross-attention
to a context, self-attention, MLP), then a norm and a per-patch pixel head; the [CLS] slot's output is
dropped. Shapes: B samples, N patches, E encoder width, D decoder width, P = p*p*3 pixels a patch.
"""

from __future__ import annotations

import torch
import torch.nn as nn

from siammae.models.common import LastFramePixels, PretrainingModel, build_encoder, init_as_linear, init_mae, mask_grid
from siammae.models.layers import CrossSelfBlock, set_fused_attention, sincos_pos_embed_2d
from siammae.models.masking import MASKINGS


class SlotDecoder(nn.Module):
    """[MASK] token, fixed positions of 1 + N slots, ``depth`` cross-self blocks, norm, pixel head."""

    def __init__(self, dim: int, depth: int, heads: int, grid: tuple, patch_dim: int):
        super().__init__()
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        pos = torch.cat([torch.zeros(1, dim), sincos_pos_embed_2d(dim, *grid)])  # the [CLS] slot's is zero
        self.pos_embed = nn.Parameter(pos.unsqueeze(0), requires_grad=False)  # (1, 1 + N, D)
        self.blocks = nn.ModuleList([CrossSelfBlock(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_dim)

    def queries(self, batch: int) -> torch.Tensor:
        """[MASK] in every slot, with the positions: (B, 1 + N, D)."""
        return self.mask_token.expand(batch, self.pos_embed.shape[1], -1) + self.pos_embed

    def grid(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """A frame's embedded tokens, [CLS] first (B, 1 + n, D), visible patches ``keep`` (B, n) -> all
        1 + N slots, [MASK] where a patch was not seen, with the positions: (B, 1 + N, D)."""
        patches = mask_grid(self.mask_token, tokens[:, 1:], keep, self.pos_embed.shape[1] - 1)
        return torch.cat([tokens[:, :1], patches], dim=1) + self.pos_embed

    def cross(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Queries (B, 1 + N, D) through the blocks attending to ``context`` (B, M, D) -> pixels (B, N, P)."""
        for block in self.blocks:
            x = block(x, context)
        return self.pred(self.norm(x))[:, 1:]

    def alone(self, x: torch.Tensor) -> torch.Tensor:
        """Tokens (B, 1 + N, D) through the blocks without their cross-attention -> pixels (B, N, P)."""
        for block in self.blocks:
            x = block.forward_self(x)
        return self.pred(self.norm(x))[:, 1:]


class SlotModel(LastFramePixels, PretrainingModel):
    """What RSP and ToBo share: ``encoder``, ``decoder`` (:class:`SlotDecoder`), the method's options, the
    masking of the pair, and SiamMAE's pixel task on the last frame (target, loss, pictures)."""

    def __init__(self, encoder, decoder: SlotDecoder, *, options, mask_ratio, masking, norm_pix_loss: bool, sdpa):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.options, self.mask_ratio, self.masking = options, list(mask_ratio), MASKINGS[masking]
        self.norm_pix_loss, self.sdpa = norm_pix_loss, sdpa
        self.patch_size, self.grid = encoder.patch_embed.patch_size[0], tuple(encoder.patch_embed.grid_size)

    def draw_mask(self, frames: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """``mask`` (B, T, N) bool, or one drawn with ``model.masking`` at ``model.mask_ratio``."""
        if mask is not None:
            return mask
        B, T = frames.shape[:2]
        return self.masking(B, T, self.grid[0] * self.grid[1], self.mask_ratio, device=frames.device)


def build_slot_model(model_class, cfg, options) -> SlotModel:
    """``model_class`` (a :class:`SlotModel`) with its encoder and decoder sized by ``cfg.model``,
    initialised as MAE (the [MASK] token and [CLS] at std 0.02)."""
    model_cfg = cfg.model
    encoder = build_encoder(model_cfg)
    grid = model_cfg.img_size // model_cfg.patch_size
    decoder = SlotDecoder(model_cfg.decoder_dim, model_cfg.decoder_depth, model_cfg.decoder_heads, (grid, grid),
                          model_cfg.patch_size**2 * 3)  # fmt: skip
    model = model_class(encoder, decoder, options=options, mask_ratio=model_cfg.mask_ratio, masking=model_cfg.masking,
                        norm_pix_loss=model_cfg.norm_pix_loss, sdpa=model_cfg.sdpa_backend)  # fmt: skip
    init_mae(model, keep=[encoder] if model_cfg.init == "timm" else ())
    if model_cfg.init == "mae":
        init_as_linear(encoder.patch_embed.proj.weight)
        nn.init.normal_(encoder.cls_token, std=0.02)
    nn.init.normal_(decoder.mask_token, std=0.02)
    set_fused_attention(model, model_cfg.attention == "sdpa")
    return model
