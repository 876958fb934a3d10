"""What every pre-training method shares: the model interface, patches, MAE's targets and initialisation,
the timm ViT frame encoder, and the [MASK]-token decoder parts.

Frames are (B, T, 3, H, W), ImageNet-normalised; a frame has N = (H/p) * (W/p) patches in raster order.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
from einops import rearrange

from siammae.models.layers import sincos_pos_embed_2d

# timm registry name of each size at patch 16 / 224; patch and image size are passed as overrides.
TIMM_NAMES = {
    "vit_tiny": "vit_tiny_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_base": "vit_base_patch16_224",
    "vit_large": "vit_large_patch16_224",
}


# ----------------------------------------------------------------------------- the model interface


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
    pictures, :meth:`after_step`, and ``encoder`` (the network that is exported and propagated).
    Parameters whose names start with ``encoder_prefixes`` learn at ``optim.encoder_lr_scale``."""

    encoder_prefixes = ("encoder",)

    def after_step(self, step: int, total_steps: int) -> None:
        """Called on every process after each optimizer step that changed the weights (``step`` steps
        of ``total_steps`` done): a method's own update outside the optimizer (CMAE's momentum
        encoder). Nothing by default."""


# ----------------------------------------------------------------------------- patches and targets


def patchify(imgs: torch.Tensor, p: int) -> torch.Tensor:
    """(B, 3, H, W) -> (B, N, p*p*3), patches in raster order, pixels (row, col, channel)."""
    return rearrange(imgs, "b c (h p) (w q) -> b (h w) (p q c)", p=p, q=p)


def unpatchify(patches: torch.Tensor, p: int, grid_h: int, grid_w: int) -> torch.Tensor:
    """(B, N, p*p*3) -> (B, 3, grid_h*p, grid_w*p); inverse of :func:`patchify`."""
    return rearrange(patches, "b (h w) (p q c) -> b c (h p) (w q)", h=grid_h, w=grid_w, p=p, q=p)


def gather_tokens(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x (B, N, D), idx (B, n) -> (B, n, D)."""
    return torch.gather(x, 1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


def mask_grid(mask_token: torch.Tensor, visible: torch.Tensor, keep: torch.Tensor, length: int) -> torch.Tensor:
    """A full grid of ``length`` [MASK] tokens with the visible tokens (B, n, D) scattered back to
    their places ``keep`` (B, n) -> (B, length, D), in the visible tokens' dtype (bf16/fp16 under
    autocast)."""
    B, D = visible.shape[0], visible.shape[-1]
    full = mask_token.to(visible.dtype).expand(B, length, D).clone()
    return full.scatter_(1, keep.unsqueeze(-1).expand(-1, -1, D), visible)


def normalized_target(pixels: torch.Tensor, normalize: bool) -> tuple:
    """MAE's loss target: pixels (B, L, P) of each patch (or cube) -> (target, mean, std), the target
    normalised per patch when ``normalize`` (std with 1e-6 added to the variance), else the pixels with
    mean 0 and std 1 (B, L, 1)."""
    if not normalize:
        return pixels, torch.zeros_like(pixels[..., :1]), torch.ones_like(pixels[..., :1])
    mean = pixels.mean(dim=-1, keepdim=True)
    std = (pixels.var(dim=-1, keepdim=True) + 1e-6).sqrt()
    return (pixels - mean) / std, mean, std


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """MSE per patch (B, L, P) -> mean over the masked ones (``mask`` (B, L), 1 = masked)."""
    per_patch = ((pred.float() - target) ** 2).mean(dim=-1)
    mask = mask.to(per_patch.dtype)
    return (per_patch * mask).sum() / mask.sum()


class LastFramePixels:
    """The pixel task of the frame methods (SiamMAE, CMAE): predict the last frame's masked patches.
    Needs ``patch_size``, ``grid`` and ``norm_pix_loss`` on the model."""

    def target_patches(self, img: torch.Tensor) -> tuple:
        """The loss target: (B, 3, H, W) -> patches (B, N, p*p*3), and their mean and std (B, N, 1)
        when the loss is on per-patch normalised pixels (else 0 and 1)."""
        return normalized_target(patchify(img, self.patch_size), self.norm_pix_loss)

    def loss(self, frames: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """MSE over the masked patches of the last frame only. pred (B, N, p*p*3), mask (B, N)."""
        return masked_mse(pred, self.target_patches(frames[:, -1])[0], mask)

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


# ----------------------------------------------------------------------------- the frame encoder


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


def encode_frame(
    vit: nn.Module, img: torch.Tensor, keep: torch.Tensor | None = None, final_norm: bool = True, cls: bool = False
) -> torch.Tensor:
    """One frame through ``vit`` keeping only the patches ``keep`` (None: all of them).

    img (B, 3, H, W), keep (B, n) -> patch tokens (B, n, D) after the final norm (unless told not
    to), [CLS] dropped unless ``cls`` (then (B, 1 + n, D), [CLS] first). With every patch kept this
    equals ``vit.forward_features(img)[:, 1:]``.
    """
    tokens = vit.patch_embed(img) + vit.pos_embed[:, 1:]
    if keep is not None:
        tokens = gather_tokens(tokens, keep)
    out = run_vit(vit, tokens, final_norm)
    return out if cls else out[:, 1:]


def run_vit(vit: nn.Module, tokens: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
    """Prepend [CLS] and run the ViT's blocks and (unless told not to) its final norm:
    (B, L, D) -> (B, 1 + L, D)."""
    cls = (vit.cls_token + vit.pos_embed[:, :1]).expand(tokens.shape[0], -1, -1)
    x = vit.blocks(vit.norm_pre(torch.cat([cls, tokens], dim=1)))
    return vit.norm(x) if final_norm else x


# ----------------------------------------------------------------------------- the [MASK]-token decoder


class Decoder(nn.Module):
    """MAE's decoder parts on one frame's grid: project encoder tokens, fill masked target slots with
    [MASK], add fixed sin-cos positions, mix (subclass), norm, predict a vector per patch."""

    def __init__(self, enc_dim, dim, depth, heads, grid, patch_dim, block):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(sincos_pos_embed_2d(dim, *grid).unsqueeze(0), requires_grad=False)
        self.blocks = nn.ModuleList([block(dim, heads) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.pred = nn.Linear(dim, patch_dim)

    def context_tokens(self, tokens: list, keeps: list, positions: bool = True) -> torch.Tensor:
        """Visible tokens of the context frames, with the decoder's positions added unless told not to:
        list of (B, n_t, E) -> (B, sum n_t, D)."""
        if not positions:
            return torch.cat([self.embed(x) for x in tokens], dim=1)
        pos = self.pos_embed.expand(tokens[0].shape[0], -1, -1)
        return torch.cat([self.embed(x) + gather_tokens(pos, k) for x, k in zip(tokens, keeps)], dim=1)

    def target_tokens(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Visible target tokens (B, n, E) scattered into a full grid of [MASK] tokens -> (B, N, D)."""
        return mask_grid(self.mask_token, self.embed(tokens), keep, self.pos_embed.shape[1]) + self.pos_embed

    def mix(self, x: torch.Tensor, context: torch.Tensor | None) -> torch.Tensor:
        """Target tokens (B, N, D) informed by the context tokens (B, M, D) -> (B, N, D); each
        decoder type defines it."""
        raise NotImplementedError


# ----------------------------------------------------------------------------- initialisation


def init_weights(m: nn.Module) -> None:
    """MAE's initialisation (``model.apply``): xavier-uniform linear layers, unit LayerNorms."""
    if isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def init_mae(model: nn.Module, keep=()) -> nn.Module:
    """MAE's initialisation (:func:`init_weights`, in ``model.apply``'s order) of every module of
    ``model`` but those inside ``keep`` (an encoder that keeps timm's own initialisation)."""
    kept = {id(m) for k in keep for m in k.modules()}
    return model.apply(lambda m: None if id(m) in kept else init_weights(m))


def init_as_linear(weight: torch.Tensor) -> None:
    """A patch or cube embedding's kernel initialised as MAE does: as a linear layer (xavier-uniform
    over the flattened kernel), not as a convolution."""
    nn.init.xavier_uniform_(weight.view(weight.shape[0], -1))
