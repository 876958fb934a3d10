"""SiamMAE (Gupta et al., NeurIPS 2023), in the paper's order: patchify, masking, encoder, decoder, loss.

A sample is a clip of T frames in time order (T = 2 for SiamMAE: f1 earlier, f2 later). Every frame but
the last is context; the last frame is the target whose masked patches are predicted. Frames are
(B, T, 3, H, W), ImageNet-normalised; patches are N = (H/p) * (W/p) per frame.

Variants are picked by name (the recipe's ``siammae:`` section, :class:`Options`):
- encoder: ``siamese`` (one timm ViT, shared weights, each frame encoded on its own; the paper),
  ``siamese-unshared`` (a second ViT for the later frames), ``joint`` (visible tokens of all frames
  through one ViT pass; the paper's ablation).
- decoder: ``cross-self`` (paper default), ``cross``, ``joint``.

The frame encoder is ``model.encoder``, a plain timm ``VisionTransformer`` with fixed sin-cos position
embeddings: its state dict loads strictly into ``timm.create_model(*timm_spec(cfg))``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn

from siammae.models.common import (
    Decoder,
    LastFramePixels,
    Output,
    PretrainingModel,
    build_encoder,
    encode_frame,
    gather_tokens,
    init_as_linear,
    init_mae,
    run_vit,
)
from siammae.models.kernels import sdpa_backend
from siammae.models.layers import CrossBlock, CrossSelfBlock, self_attention_block, set_fused_attention
from siammae.models.masking import MASKINGS, visible_indices


@dataclass
class Options:
    """The ``siammae:`` section of a recipe: how frames are encoded and how the decoder meets them."""

    # siamese: one encoder, shared weights, each frame on its own (paper, Sec. 3).
    # siamese-unshared: one encoder per frame (the student reproduction). joint: visible tokens of all
    # frames through one ViT pass (the paper's ablation).
    encoder: str = field(default="siamese", metadata={"choices": ("siamese", "siamese-unshared", "joint")})
    # cross-self (paper default): cross-attn f2->f1, self-attn among f2, MLP, in every block.
    decoder: str = field(default="cross-self", metadata={"choices": ("cross-self", "cross", "joint")})
    # The decoder adds its position embeddings to the context frames' tokens too (true), or only to the
    # target frame's (false, as CropMAE's SiamMAE): then the cross-attention can find where a patch went
    # only through what the encoder's tokens say, not by pairing positions.
    context_positions: bool = True


# ----------------------------------------------------------------------------- decoder


class ContextDecoder(Decoder):
    """The target frame's tokens decoded with the context frames' tokens (:meth:`mix`, per type);
    ``context_positions``: whether the context tokens get the decoder's positions (see :class:`Options`)."""

    context_positions = True

    def forward(self, context: list, context_keep: list, target: torch.Tensor, target_keep: torch.Tensor):
        """-> predicted pixels of every target patch (B, N, p*p*3)."""
        context = self.context_tokens(context, context_keep, self.context_positions)
        return self.pred(self.norm(self.mix(self.target_tokens(target, target_keep), context)))


class CrossDecoder(ContextDecoder):
    """Every block attends from the target tokens to the same context tokens (cross or cross-self)."""

    def mix(self, x, context):
        for blk in self.blocks:
            x = blk(x, context)
        return x


class JointDecoder(ContextDecoder):
    """Self-attention over the concatenation of context and target tokens (memory heavy)."""

    def mix(self, x, context):
        n_ctx = context.shape[1]
        y = torch.cat([context, x], dim=1)
        for blk in self.blocks:
            y = blk(y)
        return y[:, n_ctx:]


# name -> (decoder class, its block): how target tokens meet the context tokens (paper Fig. 4).
DECODERS = {
    "cross-self": (CrossDecoder, CrossSelfBlock),
    "cross": (CrossDecoder, CrossBlock),
    "joint": (JointDecoder, self_attention_block),
}


# ----------------------------------------------------------------------------- the model


class SiamMAE(LastFramePixels, PretrainingModel):
    """Siamese encoder (shared weights): each frame is encoded on its own."""

    def __init__(self, encoder, decoder, mask_ratio, masking="random", norm_pix_loss=True, sdpa="auto"):
        super().__init__()
        self.encoder = encoder
        self.decoder = decoder
        self.mask_ratio = list(mask_ratio)
        self.masking = MASKINGS[masking]
        self.norm_pix_loss = norm_pix_loss
        self.sdpa = sdpa
        self.patch_size = encoder.patch_embed.patch_size[0]
        self.grid = tuple(encoder.patch_embed.grid_size)

    def encoder_of_frame(self, t: int) -> nn.Module:
        return self.encoder

    def encode(self, frames: torch.Tensor, keeps: list) -> list:
        """frames (B, T, 3, H, W), keeps: T index tensors (B, n_t) -> T token tensors (B, n_t, D)."""
        return [encode_frame(self.encoder_of_frame(t), frames[:, t], k) for t, k in enumerate(keeps)]

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None):
        """frames (B, T, 3, H, W) normalised; mask (B, T, N) bool, drawn fresh when None.

        Returns an :class:`Output`: loss, pred (B, N, p*p*3) for the last frame, mask (B, N) of the last
        frame (1 = masked).
        """
        B, T = frames.shape[:2]
        if mask is None:
            N = self.grid[0] * self.grid[1]
            mask = self.masking(B, T, N, self.mask_ratio, device=frames.device)
        keeps = [visible_indices(mask[:, t]) for t in range(T)]
        with sdpa_backend(self.sdpa):
            tokens = self.encode(frames, keeps)
            pred = self.decoder(tokens[:-1], keeps[:-1], tokens[-1], keeps[-1])
        target_mask = mask[:, -1]
        return Output(self.loss(frames, pred, target_mask), pred, target_mask.float())


class SiamMAEUnshared(SiamMAE):
    """Siamese without weight sharing: ``encoder`` for f1, ``encoder_f2`` for the later frames."""

    def __init__(self, encoder, encoder_f2, decoder, **kwargs):
        super().__init__(encoder, decoder, **kwargs)
        self.encoder_f2 = encoder_f2

    def encoder_of_frame(self, t: int) -> nn.Module:
        return self.encoder if t == 0 else self.encoder_f2


class JointEncoderMAE(SiamMAE):
    """Visible tokens of all frames concatenated through one ViT pass (paper ablation; collapses)."""

    def encode(self, frames, keeps):
        vit = self.encoder
        pos = vit.pos_embed[:, 1:]
        tokens = [gather_tokens(vit.patch_embed(frames[:, t]) + pos, k) for t, k in enumerate(keeps)]
        out = run_vit(vit, torch.cat(tokens, dim=1))[:, 1:]
        return list(out.split([k.shape[1] for k in keeps], dim=1))


# name -> model class: how the frames are encoded (see the module docstring).
ENCODERS = {"siamese": SiamMAE, "siamese-unshared": SiamMAEUnshared, "joint": JointEncoderMAE}


def build(cfg) -> SiamMAE:
    """SiamMAE for the resolved config ``cfg``: ``cfg.siammae.encoder`` x ``cfg.siammae.decoder``, sized by
    ``cfg.model``."""
    return build_with(cfg.model, cfg.siammae)


def build_with(model_cfg, options: Options) -> SiamMAE:
    """The model of ``options`` (a :class:`Options`, or a method's own that has its keys) sized by
    ``model_cfg``, initialised."""
    encoders = [build_encoder(model_cfg)]
    if options.encoder == "siamese-unshared":
        encoders.append(build_encoder(model_cfg))  # the later frames' own ViT
    decoder_class, block = DECODERS[options.decoder]
    grid = model_cfg.img_size // model_cfg.patch_size
    decoder = decoder_class(
        enc_dim=encoders[0].embed_dim,
        dim=model_cfg.decoder_dim,
        depth=model_cfg.decoder_depth,
        heads=model_cfg.decoder_heads,
        grid=(grid, grid),
        patch_dim=model_cfg.patch_size**2 * 3,
        block=block,
    )
    decoder.context_positions = options.context_positions
    model = ENCODERS[options.encoder](
        *encoders,
        decoder,
        mask_ratio=model_cfg.mask_ratio,
        masking=model_cfg.masking,
        norm_pix_loss=model_cfg.norm_pix_loss,
        sdpa=model_cfg.sdpa_backend,
    )
    init_mae(model, keep=encoders if model_cfg.init == "timm" else ())
    for vit in encoders if model_cfg.init == "mae" else ():
        init_as_linear(vit.patch_embed.proj.weight)
        nn.init.normal_(vit.cls_token, std=0.02)
    nn.init.normal_(model.decoder.mask_token, std=0.02)
    set_fused_attention(model, model_cfg.attention == "sdpa")
    return model
