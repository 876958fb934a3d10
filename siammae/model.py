"""SiamMAE (Gupta et al., NeurIPS 2023), in the paper's order: patchify, masking, encoder, decoder, loss.

A sample is a clip of T frames in time order (T = 2 for SiamMAE: f1 earlier, f2 later). Every frame but
the last is context; the last frame is the target whose masked patches are predicted. Frames are
(B, T, 3, H, W), ImageNet-normalised; patches are N = (H/p) * (W/p) per frame.

Variants are picked by name (``build_model``):
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
from einops import rearrange

from siammae.layers import (
    CrossBlock,
    CrossSelfBlock,
    sdpa_backend,
    self_attention_block,
    set_fused_attention,
    sincos_pos_embed_2d,
)
from siammae.masking import MASKINGS, visible_indices

# timm registry name of each size at patch 16 / 224; patch and image size are passed as overrides.
TIMM_NAMES = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
}


# ----------------------------------------------------------------------------- patches


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N, p*p*3), patches in raster order, pixels (row, col, channel)."""
    return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)


def unpatchify(patches: torch.Tensor, p: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(B, N, p*p*3) -> (B, 3, grid_h*p, grid_w*p); inverse of :func:`patchify`."""
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid_h, w=grid_w, p=p, q=p)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, n) -> (B, n, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def normalized_target(pixels: torch.Tensor, normalize: bool) -> tuple:
    """MAE's loss target: pixels (B, L, P) of each patch (or cube) -> (target, mean, std), the target
    normalised per patch when ``normalize`` (std with 1e-6 added to the variance), else the pixels with
    mean 0 and std 1 (B, L, 1)."""
    if not normalize:
        return pixels, torch.zeros_like(pixels[..., :1]), torch.ones_like(pixels[..., :1])
    mean = pixels.mean(dim=-1, keepdim=True)
    std = (pixels.var(dim=-1, keepdim=True) + 1e-6).sqrt()
    return (pixels - mean) / std, mean, std


# ----------------------------------------------------------------------------- encoder


def timm_spec(model_cfg) -> tuple[str, dict]:
    """(timm model name, keyword overrides) that build this encoder with ``timm.create_model``."""
    kwargs = {"num_classes": 0}
    if model_cfg.patch_size != 16:
        kwargs["patch_size"] = model_cfg.patch_size
    if model_cfg.img_size != 224:
        kwargs["img_size"] = model_cfg.img_size
    return TIMM_NAMES[model_cfg.arch], kwargs


def build_encoder(model_cfg, img_size: int | None = None) -> nn.Module:
    """A timm ViT (no head) with a frozen 2-D sin-cos position embedding and a [CLS] token."""
    import timm

    name, kwargs = timm_spec(model_cfg)
    if img_size is not None:
        kwargs["img_size"] = img_size
    vit = timm.create_model(name, pretrained=False, drop_path_rate=model_cfg.drop_path, **kwargs)
    grid_h, grid_w = vit.patch_embed.grid_size
    with torch.no_grad():
        vit.pos_embed.zero_()  # the [CLS] slot stays zero, as in MAE
        vit.pos_embed[0, 1:] = sincos_pos_embed_2d(vit.embed_dim, grid_h, grid_w)
    vit.pos_embed.requires_grad_(False)
    return vit


def encode_frame(vit: nn.Module, img: torch.Tensor, keep: torch.Tensor | None = None,
                 final_norm: bool = True) -> torch.Tensor:
    """One frame through ``vit`` keeping only the patches ``keep`` (None: all of them).

    img (B, 3, H, W), keep (B, n) -> patch tokens (B, n, D) after the final norm (unless told not
    to), [CLS] dropped. With every patch kept this equals ``vit.forward_features(img)[:, 1:]``.
    """
    tokens = vit.patch_embed(img) + vit.pos_embed[:, 1:]
    if keep is not None:
        tokens = gather_tokens(tokens, keep)
    return vit_blocks(vit, tokens, final_norm)[:, 1:]


def vit_blocks(vit: nn.Module, tokens: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
    """Prepend [CLS] and run the ViT's blocks and (unless told not to) its final norm:
    (B, L, D) -> (B, 1 + L, D)."""
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
    x = vit.blocks(vit.norm_pre(torch.cat([cls, tokens], dim=1)))
    return vit.norm(x) if final_norm else x


# ----------------------------------------------------------------------------- decoder


class Decoder(nn.Module):
    """Shared decoder parts: project encoder tokens, fill masked target slots with [MASK], add fixed
    sin-cos positions, mix (subclass), norm, predict pixels of every target patch."""

    def __init__(self, enc_dim, dim, depth, heads, grid, patch_dim, block):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(dim, *grid).unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList([block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_dim)

    def context_tokens(self, tokens: list, keeps: list) -> torch.Tensor:
        """Visible tokens of the context frames, with positions: list of (B, n_t, E) -> (B, sum n_t, D)."""
        pos = self.pos_embed.expand(tokens[0].shape[0], -1, -1)
        return torch.cat([self.embed(x) + gather_tokens(pos, k) for x, k in zip(tokens, keeps)], dim=1)

    def target_tokens(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Visible target tokens (B, n, E) scattered into a full grid of [MASK] tokens -> (B, N, D)."""
        B, N, D = tokens.shape[0], self.pos_embed.shape[1], self.mask_token.shape[-1]
        visible = self.embed(tokens)  # bf16/fp16 under autocast: the [MASK] grid takes its dtype
        full = self.mask_token.to(visible.dtype).expand(B, N, D).clone()
        full.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, D), visible)
        return full + self.pos_embed

    def mix(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Target tokens (B, N, D) informed by the context tokens (B, M, D) -> (B, N, D); each
        decoder type defines it."""
        raise NotImplementedError

    def forward(self, context: list, context_keep: list, target: torch.Tensor, target_keep: torch.Tensor):
        """-> predicted pixels of every target patch (B, N, p*p*3)."""
        x = self.mix(self.target_tokens(target, target_keep), self.context_tokens(context, context_keep))
        return self.pred(self.norm(x))


class CrossDecoder(Decoder):
    """Every block attends from the target tokens to the same context tokens (cross or cross-self)."""

    def mix(self, x, context):
        for blk in self.blocks:
            x = blk(x, context)
        return x


class JointDecoder(Decoder):
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


@dataclass
class Output:
    """What a pre-training model's forward returns. The trainer minimises ``loss`` and logs ``logs``
    (named scalar tensors, averaged like the loss) without knowing the method; ``pred`` and ``mask``
    feed the reconstruction pictures. Unpacks as ``loss, pred, mask = model(frames)``."""

    loss: torch.Tensor  # () scalar
    pred: torch.Tensor  # (B, N, p*p*3) predicted patches of the target frame (a clip model: (B, L, P), every cube)
    mask: torch.Tensor  # (B, N) 1 = masked (predicted) patch of the target frame (a clip model: (B, L))
    logs: dict = field(default_factory=dict)

    def __iter__(self):
        return iter((self.loss, self.pred, self.mask))


class PretrainingModel(nn.Module):
    """What the trainer knows of a model: ``forward(frames) -> Output``, ``reconstruct`` for the
    pictures, and :meth:`after_step`."""

    def after_step(self, step: int, total_steps: int) -> None:
        """Called on every process after each optimizer step that changed the weights (``step`` steps
        of ``total_steps`` done): a method's own update outside the optimizer (CMAE's momentum
        encoder). Nothing by default."""


class SiamMAE(PretrainingModel):
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

    def frame_encoder(self, t: int) -> nn.Module:
        return self.encoder

    def encode(self, frames: torch.Tensor, keeps: list) -> list:
        """frames (B, T, 3, H, W), keeps: T index tensors (B, n_t) -> T token tensors (B, n_t, D)."""
        return [encode_frame(self.frame_encoder(t), frames[:, t], k) for t, k in enumerate(keeps)]

    def target_patches(self, img: torch.Tensor) -> tuple:
        """The loss target: (B, 3, H, W) -> patches (B, N, p*p*3), and their mean and std (B, N, 1)
        when the loss is on per-patch normalised pixels (else 0 and 1)."""
        return normalized_target(patchify(img, self.patch_size), self.norm_pix_loss)

    def loss(self, frames: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE over the masked patches of the last frame only. pred (B, N, p*p*3), mask (B, N)."""
        target, _, _ = self.target_patches(frames[:, -1])
        per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
        mask = mask.to(per_patch.dtype)
        return (per_patch * mask).sum() / mask.sum()

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

    @torch.no_grad()
    def reconstruct(self, frames: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> tuple:
        """The last frame with its masked patches replaced by the prediction, mapped back to the
        normalised pixel space (undoing the per-patch normalisation), and its patch mask (what the
        pictures show): -> (B, 3, H, W), (B, N)."""
        _, mean, std = self.target_patches(frames[:, -1])
        patches = patchify(frames[:, -1], self.patch_size)
        predicted = pred.float() * std + mean
        out = torch.where(mask.bool().unsqueeze(-1), predicted, patches)
        return unpatchify(out, self.patch_size, *self.grid), mask


class SiamMAEUnshared(SiamMAE):
    """Siamese without weight sharing: ``encoder`` for f1, ``encoder_f2`` for the later frames."""

    def __init__(self, encoder, encoder_f2, decoder, **kwargs):
        super().__init__(encoder, decoder, **kwargs)
        self.encoder_f2 = encoder_f2

    def frame_encoder(self, t: int) -> nn.Module:
        return self.encoder if t == 0 else self.encoder_f2


class JointEncoderMAE(SiamMAE):
    """Visible tokens of all frames concatenated through one ViT pass (paper ablation; collapses)."""

    def encode(self, frames, keeps):
        vit = self.encoder
        pos = vit.pos_embed[:, 1:]
        tokens = [gather_tokens(vit.patch_embed(frames[:, t]) + pos, k) for t, k in enumerate(keeps)]
        out = vit_blocks(vit, torch.cat(tokens, dim=1))[:, 1:]
        return list(out.split([k.shape[1] for k in keeps], dim=1))


def init_weights(m: nn.Module) -> None:
    """MAE's initialisation (``model.apply``): xavier-uniform linear layers, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def _init_model(model: nn.Module, init: str = "mae") -> nn.Module:
    """MAE's initialisation of every part (``init="mae"``), or of all but the encoders, which keep timm's
    own (``"timm"``: truncated-normal linear layers of std 0.02, the patch embedding as a conv)."""
    encoders = {model.encoder, getattr(model, "encoder_f2", model.encoder)}
    if init == "mae":
        model.apply(init_weights)
    else:
        for child in model.children():
            if child not in encoders:
                child.apply(init_weights)
    for vit in encoders if init == "mae" else ():
        w = vit.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))  # as a linear layer, not a conv
        nn.init.normal_(vit.cls_token, std=0.02)
    nn.init.normal_(model.decoder.mask_token, std=0.02)
    return model


# name -> model class: how the frames are encoded (see the module docstring).
ENCODERS = {"siamese": SiamMAE, "siamese-unshared": SiamMAEUnshared, "joint": JointEncoderMAE}


def build_model(model_cfg, num_frames: int = 2) -> nn.Module:
    """The model named by ``model_cfg.method`` (CMAE: :mod:`siammae.cmae`; a clip method:
    :mod:`siammae.clipmae`, for clips of ``num_frames`` frames), for SiamMAE by ``model_cfg.encoder`` x
    ``model_cfg.decoder``."""
    if model_cfg.method == "cmae":
        from siammae.cmae import build_cmae

        return build_cmae(model_cfg)
    if model_cfg.method != "siammae":
        from siammae.clipmae import build_clip_model

        return build_clip_model(model_cfg, num_frames)
    encoders = [build_encoder(model_cfg)]
    if model_cfg.encoder == "siamese-unshared":
        encoders.append(build_encoder(model_cfg))  # the later frames' own ViT
    decoder_class, block = DECODERS[model_cfg.decoder]
    grid = model_cfg.img_size // model_cfg.patch_size
    decoder = decoder_class(enc_dim=encoders[0].embed_dim, dim=model_cfg.decoder_dim, depth=model_cfg.decoder_depth,
                            heads=model_cfg.decoder_heads, grid=(grid, grid),
                            patch_dim=model_cfg.patch_size**2 * 3, block=block)
    model = ENCODERS[model_cfg.encoder](*encoders, decoder, mask_ratio=model_cfg.mask_ratio,
                                        masking=model_cfg.masking, norm_pix_loss=model_cfg.norm_pix_loss,
                                        sdpa=model_cfg.sdpa_backend)
    _init_model(model, model_cfg.init)
    set_fused_attention(model, model_cfg.attention == "sdpa")
    return model
