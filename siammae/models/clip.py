"""Masked autoencoders of whole clips: VideoMAE (Tong et al., NeurIPS 2022) and MAE-ST (Feichtenhofer
et al., NeurIPS 2022), on the same shards and trainer as SiamMAE.

A sample is a clip of T frames (B, T, 3, H, W), ImageNet-normalised. Both methods cut it into cubes of
``tubelet`` frames x p x p pixels (a Conv3d with stride = kernel): T' = T / tubelet time slots of
N = (H/p) * (W/p) positions, L = T' * N tokens in (time, row, column) order. A share of the cubes is
masked; the encoder, a plain ViT with joint space-time attention, sees only the visible cubes (no mask
tokens in it); the decoder gets every position ([MASK] where hidden) and predicts each cube's pixels;
the loss is the MSE over the masked cubes, on per-cube normalised pixels by default.

What each method changes, in one place (positions are :data:`POSITIONS`; masking, ratio and decoder
are recipe keys, set so in ``recipes/videomae.yaml`` and ``recipes/maest.yaml``):

=================  =================================================  ==========================================
                   VideoMAE                                            MAE-ST
=================  =================================================  ==========================================
masking            ``tube``: one spatial mask for every time slot      ``spacetime``: one draw over all L tokens
mask ratio         0.9                                                 0.9
positions          fixed 1-D sinusoid over the L cubes (its code),     learned, separable: space (N) + time (T'),
                   encoder and decoder                                 encoder and decoder
decoder (ViT-S)    4 blocks x 192 wide, 3 heads (its ViT-S config)     4 blocks x 512 wide, 16 heads
=================  =================================================  ==========================================

The encoder has no [CLS] token (neither paper uses one in pre-training). :class:`FrameEncoder` uses a
trained encoder on single frames, for label propagation.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial
from types import SimpleNamespace

import torch
import torch.nn as nn
import torch.nn.functional as F
from einops import rearrange
from timm.models.vision_transformer import Block

from siammae.models.common import (
    Output,
    PretrainingModel,
    gather_tokens,
    init_as_linear,
    init_mae,
    mask_grid,
    masked_mse,
    normalized_target,
)
from siammae.models.kernels import sdpa_backend
from siammae.models.layers import sincos_pos_embed_1d
from siammae.models.masking import MASKINGS, visible_indices
from siammae.weights import load_strict

# method -> its position embeddings; masking, ratio and decoder size are recipe keys (recipes/videomae.yaml,
# recipes/maest.yaml set the papers' values).
POSITIONS = {"videomae": "sincos", "maest": "separable"}


@dataclass
class Options:
    """The ``videomae:`` / ``maest:`` section of a recipe."""

    tubelet: int = 2  # frames per cube: the Conv3d's temporal kernel and stride (2 in both papers)


RULES = {"tubelet": (lambda v: v >= 1, "must be >= 1")}
CROSS_RULES = [
    (
        ("options.tubelet", "data.num_frames"),
        lambda tubelet, frames: frames % tubelet == 0,
        "data.num_frames must be a multiple of the tubelet (frames per cube)",
    ),
    (
        ("model.mask_ratio",),
        lambda ratios: len(ratios) == 1,
        "model.mask_ratio of a clip method is one ratio for the whole clip, e.g. [0.9]",
    ),
    (
        ("model.init",),
        lambda init: init == "mae",
        "model.init=timm is for the frame methods (siammae, cmae): a clip encoder has no timm counterpart",
    ),
]


class Positions(nn.Module):
    """Position embeddings of the L = T' * N cube tokens -> (1, L, dim): ``sincos`` (fixed, over the
    flattened index) or ``separable`` (learned space (1, N, dim) + time (1, T', dim))."""

    def __init__(self, kind: str, dim: int, time_slots: int, num_patches: int):
        super().__init__()
        self.kind, self.shape = kind, (time_slots, num_patches)
        if kind == "sincos":
            table = sincos_pos_embed_1d(dim, time_slots * num_patches).unsqueeze(0)
            self.pos_table = nn.Parameter(table, requires_grad=False)
        else:
            self.pos_space = nn.Parameter(torch.randn(1, num_patches, dim) * 0.02)
            self.pos_time = nn.Parameter(torch.randn(1, time_slots, dim) * 0.02)

    def forward(self) -> torch.Tensor:
        if self.kind == "sincos":
            return self.pos_table
        T, N = self.shape
        return (self.pos_time[:, :, None] + self.pos_space[:, None]).reshape(1, T * N, -1)


def make_blocks(dim: int, depth: int, heads: int, drop_path: float = 0.0) -> nn.ModuleList:
    return nn.ModuleList(
        [
            Block(
                dim,
                heads,
                mlp_ratio=4.0,
                qkv_bias=True,
                drop_path=drop_path * i / max(1, depth - 1),
                norm_layer=partial(nn.LayerNorm, eps=1e-6),
            )
            for i in range(depth)
        ]
    )


class CubeEncoder(nn.Module):
    """Conv3d cube embedding, positions, ViT blocks with joint space-time attention, final norm.

    clip (B, T, 3, H, W), keep (B, n) indices into the L cubes -> tokens (B, n, dim)."""

    def __init__(self, dim, depth, heads, img_size, patch, tubelet, frames, positions, drop_path=0.0):
        super().__init__()
        self.patch, self.tubelet = patch, tubelet
        self.grid = (img_size // patch, img_size // patch)
        self.time_slots = frames // tubelet
        self.embed_dim = dim
        self.cube_embed = nn.Conv3d(3, dim, kernel_size=(tubelet, patch, patch), stride=(tubelet, patch, patch))
        self.pos = Positions(positions, dim, self.time_slots, self.grid[0] * self.grid[1])
        self.blocks = make_blocks(dim, depth, heads, drop_path)
        self.norm = nn.LayerNorm(dim, eps=1e-6)

    def embed(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> every cube's token with its position (B, L, dim)."""
        x = self.cube_embed(clip.transpose(1, 2))  # (B, dim, T', h, w)
        return x.flatten(2).transpose(1, 2) + self.pos()

    def forward(self, clip: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        x = self.embed(clip)
        if keep is not None:
            x = gather_tokens(x, keep)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


class CubeDecoder(nn.Module):
    """Visible tokens into a full grid of [MASK] tokens, positions, ViT blocks, norm, pixels of every
    cube: (B, n, enc_dim) -> (B, L, tubelet * p * p * 3)."""

    def __init__(self, enc_dim, dim, depth, heads, time_slots, num_patches, positions, cube_dim):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos = Positions(positions, dim, time_slots, num_patches)
        self.blocks = make_blocks(dim, depth, heads)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pred = nn.Linear(dim, cube_dim)

    def forward(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        pos = self.pos()
        x = mask_grid(self.mask_token, self.embed(tokens), keep, pos.shape[1]) + pos
        for blk in self.blocks:
            x = blk(x)
        return self.pred(self.norm(x))


class ClipMAE(PretrainingModel):
    """VideoMAE or MAE-ST (:data:`POSITIONS`): one clip in, its masked cubes predicted."""

    def __init__(
        self,
        encoder: CubeEncoder,
        decoder: CubeDecoder,
        mask_ratio: float,
        masking: str,
        norm_pix_loss: bool = True,
        sdpa: str = "auto",
    ):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.mask_ratio, self.masking = mask_ratio, MASKINGS[masking]
        self.norm_pix_loss, self.sdpa = norm_pix_loss, sdpa
        self.patch_size, self.grid = encoder.patch, encoder.grid

    def cubes(self, clip: torch.Tensor) -> torch.Tensor:
        """(B, T, 3, H, W) -> pixels of each cube (B, L, tubelet * p * p * 3), in token order."""
        return rearrange(
            clip,
            "b (t u) c (h p) (w q) -> b (t h w) (u p q c)",
            u=self.encoder.tubelet,
            p=self.patch_size,
            q=self.patch_size,
        )

    def target(self, clip: torch.Tensor) -> tuple:
        """The loss target (B, L, P) and each cube's mean and std (B, L, 1) (0 and 1 on raw pixels)."""
        return normalized_target(self.cubes(clip), self.norm_pix_loss)

    def draw_mask(self, B: int, device) -> torch.Tensor:
        """(B, L) bool, True = masked, from the method's masking over (T', N)."""
        T, N = self.encoder.time_slots, self.grid[0] * self.grid[1]
        return self.masking(B, T, N, [self.mask_ratio] * T, device=device).view(B, T * N)

    def forward(self, clip: torch.Tensor, mask: torch.Tensor | None = None) -> Output:
        """clip (B, T, 3, H, W) normalised; mask (B, L) bool, drawn fresh when None.
        -> :class:`siammae.models.common.Output`: loss, pred (B, L, P) for every cube, mask (B, L) (1 = masked)."""
        mask = self.draw_mask(clip.shape[0], clip.device) if mask is None else mask
        keep = visible_indices(mask)
        with sdpa_backend(self.sdpa):
            pred = self.decoder(self.encoder(clip, keep), keep)
        return Output(masked_mse(pred, self.target(clip)[0], mask), pred, mask.float())

    @torch.no_grad()
    def reconstruct(self, clip: torch.Tensor, pred: torch.Tensor, mask: torch.Tensor) -> tuple:
        """The clip with its masked cubes' pixels predicted (normalisation undone), and each frame's patch
        mask (a cube's mask on each of its frames), what the pictures show: -> (B, T, 3, H, W), (B, T, N)."""
        _, mean, std = self.target(clip)
        cubes = torch.where(mask.bool().unsqueeze(-1), pred.float() * std + mean, self.cubes(clip))
        h, w, u = *self.grid, self.encoder.tubelet
        frames = rearrange(
            cubes, "b (t h w) (u p q c) -> b (t u) c (h p) (w q)", h=h, w=w, u=u, p=self.patch_size, q=self.patch_size
        )
        return frames, mask.view(mask.shape[0], -1, 1, h * w).expand(-1, -1, u, -1).flatten(1, 2)


# timm's ViT sizes (width, depth, heads) by the recipe's ``model.arch`` name.
SIZES = {"vit_tiny": (192, 12, 3), "vit_small": (384, 12, 6), "vit_base": (768, 12, 12), "vit_large": (1024, 24, 16)}


def build_cube_encoder(cfg) -> CubeEncoder:
    model_cfg = cfg.model
    dim, depth, heads = SIZES[model_cfg.arch]
    return CubeEncoder(
        dim,
        depth,
        heads,
        model_cfg.img_size,
        model_cfg.patch_size,
        options(cfg).tubelet,
        cfg.data.num_frames,
        POSITIONS[model_cfg.method],
        model_cfg.drop_path,
    )


def options(cfg) -> Options:
    """This clip method's own section of ``cfg`` (``cfg.videomae`` or ``cfg.maest``)."""
    return getattr(cfg, cfg.model.method)


def build(cfg) -> ClipMAE:
    """The clip model named by ``cfg.model.method`` for clips of ``cfg.data.num_frames`` frames."""
    model_cfg = cfg.model
    encoder = build_cube_encoder(cfg)
    cube_dim = options(cfg).tubelet * model_cfg.patch_size**2 * 3
    decoder = CubeDecoder(
        encoder.embed_dim,
        model_cfg.decoder_dim,
        model_cfg.decoder_depth,
        model_cfg.decoder_heads,
        encoder.time_slots,
        encoder.grid[0] * encoder.grid[1],
        POSITIONS[model_cfg.method],
        cube_dim,
    )
    model = ClipMAE(
        encoder, decoder, model_cfg.mask_ratio[0], model_cfg.masking, model_cfg.norm_pix_loss, model_cfg.sdpa_backend
    )
    init_mae(model)  # MAE's, and the cube embedding initialised as a linear layer
    init_as_linear(encoder.cube_embed.weight)
    nn.init.normal_(decoder.mask_token, std=0.02)
    return model


# ----------------------------------------------------------------------------- frames for propagation


class FrameEncoder(nn.Module):
    """A clip encoder used on single frames, the way the SiamMAE paper compares clip methods with
    frame methods: each frame is a clip of ``tubelet`` copies of itself (one time slot), with the first
    time slot's positions resampled (bicubic) to the frame's patch grid. It offers what label
    propagation uses of a timm ViT: ``patch_embed.patch_size``, ``num_prefix_tokens`` (0),
    ``embed_dim`` and ``forward_features``: (B, 3, H, W) -> (B, h * w, D)."""

    num_prefix_tokens = 0

    def __init__(self, encoder: CubeEncoder):
        super().__init__()
        self.encoder = encoder
        self.embed_dim = encoder.embed_dim
        self.patch_embed = SimpleNamespace(patch_size=(encoder.patch, encoder.patch))

    @property
    def frame_input(self) -> str:
        return f"each frame as a clip of {self.encoder.tubelet} copies of itself; the first time slot's positions"

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        enc = self.encoder
        tokens = enc.cube_embed(x.unsqueeze(2).expand(-1, -1, enc.tubelet, -1, -1)).flatten(2).transpose(1, 2)
        grid = (x.shape[-2] // enc.patch, x.shape[-1] // enc.patch)
        pos = enc.pos()[:, : enc.grid[0] * enc.grid[1]]  # time slot 0
        if grid != enc.grid:
            pos = pos.reshape(1, *enc.grid, -1).permute(0, 3, 1, 2)
            pos = F.interpolate(pos, size=grid, mode="bicubic", align_corners=False).flatten(2).transpose(1, 2)
        x = tokens + pos
        for blk in enc.blocks:
            x = blk(x)
        return enc.norm(x)


def frame_encoder(cfg, state_dict: dict | None) -> FrameEncoder:
    """The encoder of a clip run (its resolved config ``cfg``) for single frames, with ``state_dict``
    (the encoder's keys, ``encoder.`` stripped) loaded strictly; None keeps the run's initialisation."""
    if state_dict is None:
        return FrameEncoder(build(cfg).encoder).eval()
    encoder = build_cube_encoder(cfg)
    load_strict(encoder, state_dict, f"the {cfg.model.method} encoder")
    return FrameEncoder(encoder).eval()
