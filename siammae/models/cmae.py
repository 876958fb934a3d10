"""Contrastive MAE (CMAE, Huang et al. 2022) on frame pairs: MAE on the later frame plus InfoNCE
against a momentum encoder that sees the earlier frame whole.

A sample is a pair (B, 2, 3, H, W): f1 earlier, f2 later; the two frames are the positive views.

- Online branch on f2, masked (``model.mask_ratio[1]``): the encoder (``model.encoder``, a timm ViT
  as SiamMAE's, exported and propagated by default) encodes the visible patches; the *pixel decoder*
  (MAE's: [MASK] tokens, self-attention) predicts the masked patches' normalised pixels (L_rec); the
  *feature decoder* (same structure, ``cmae.feature_decoder_depth`` blocks, own weights) predicts
  every token's feature, mean-pooled, then projection and prediction heads -> q.
- Target branch on f1, unmasked, no gradients: the *target encoder* (an EMA of the online encoder)
  -> its patch tokens before the final norm, mean-pooled (the public code's ``final_norm=False``),
  -> the target projection head (an EMA of the online one) -> k.
- L = L_rec + ``cmae.nce_weight`` x InfoNCE(q, k) at temperature ``cmae.nce_temperature``, with the
  other samples of the global batch as negatives (k all-gathered over processes).
- After every optimizer step the model's :meth:`CMAE.after_step` moves the target weights:
  theta_t <- m theta_t + (1 - m) theta_s, with m on BYOL's cosine from ``cmae.momentum`` (step 0) to
  ``cmae.momentum_end`` (last step); CMAE keeps it fixed at 0.996 (both keys 0.996).

Heads as the public configuration (ViT-B): projection Linear-BN-ReLU-Linear 1536 -> 256, prediction
the same on 256. The target view is made as the public code makes it: a pixel shift
(``data.view_shift``: the loader moves f1's crop box), then, in training and on the device, colour
jitter, grayscale and blur (:mod:`siammae.models.view_augment`; ``cmae.target_augment``).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from siammae.models import common
from siammae.models.common import Decoder, LastFramePixels, Output, PretrainingModel
from siammae.models.kernels import sdpa_backend
from siammae.models.layers import self_attention_block, set_fused_attention
from siammae.models.masking import MASKINGS, visible_indices
from siammae.models.view_augment import augment_target

HEAD_HIDDEN, HEAD_DIM = 1536, 256  # the public configuration's projection / prediction heads


def _key(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class Options:
    """The ``cmae:`` section of a recipe."""

    feature_decoder_depth: int = _key(2, "the feature decoder's blocks (width and heads as the pixel decoder's)")
    # The target encoder's EMA momentum follows BYOL's cosine from `momentum` to `momentum_end`.
    momentum: float = _key(0.996, "at step 0 (CMAE keeps it fixed at 0.996)")
    momentum_end: float = _key(0.996, "at the last step")
    # L = L_rec + nce_weight x InfoNCE at nce_temperature; the public code weights InfoNCE by 2 x temperature.
    nce_temperature: float = _key(0.07, "InfoNCE's temperature")
    nce_weight: float = _key(0.14, "InfoNCE's weight in the loss (the public code's 2 x 0.07)")
    target_augment: bool = _key(True, "colour jitter, grayscale and blur of the target view (f1), as the public code")


# Checked when a config is loaded (siammae.config): each own key's rule, then rules with other keys.
RULES = {
    "feature_decoder_depth": (lambda v: v >= 1, "must be >= 1"),
    "momentum": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "momentum_end": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "nce_temperature": (lambda v: v > 0, "must be > 0"),
    "nce_weight": (lambda v: v >= 0, "must be >= 0"),
}
CROSS_RULES = [
    (("data.num_frames",), lambda frames: frames == 2, "cmae takes frame pairs: data.num_frames must be 2"),
    (
        ("model.mask_ratio",),
        lambda ratios: ratios[0] == 0,
        "cmae's target branch sees the first frame whole: its mask ratio must be 0, e.g. [0.0, 0.65]",
    ),
]


# ----------------------------------------------------------------------------- pieces


def momentum_at(step: int, total: int, base: float, end: float) -> float:
    """The EMA momentum after ``step`` of ``total`` steps: BYOL's cosine from ``base`` to ``end``."""
    return end - (end - base) * (math.cos(math.pi * step / max(1, total)) + 1) / 2


@torch.no_grad()
def ema_update(target: nn.Module, online: nn.Module, momentum: float) -> None:
    """theta_t <- momentum * theta_t + (1 - momentum) * theta_s for every parameter, as one fused
    lerp over all of them (buffers, such as BatchNorm's running statistics, stay the target's own)."""
    torch._foreach_lerp_(list(target.parameters()), [s.detach() for s in online.parameters()], 1 - momentum)


def gather_keys(k: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Every process's (B, E) -> (world * B, E), rank order, this process's rows keeping their autograd
    graph (the others are copies: no gradient flows to another process); and the offset of this
    process's rows. One process: ``k`` itself and 0. Every process must have the same B."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return k, 0
    parts = [torch.empty_like(k) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, k.detach().contiguous())
    rank = dist.get_rank()
    parts[rank] = k
    return torch.cat(parts), rank * k.shape[0]


def info_nce(q: torch.Tensor, k: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """InfoNCE of online predictions q (B, E) against target projections k (B, E), sample i's positive
    being k_i, its negatives every other k of the global batch (all processes); cosine similarities
    / temperature. -> (loss, accuracy: the share of samples whose nearest key is their positive)."""
    q, k = F.normalize(q.float(), dim=-1), F.normalize(k.float(), dim=-1)
    keys, offset = gather_keys(k)
    logits = q @ keys.T / temperature  # (B, world * B)
    labels = torch.arange(q.shape[0], device=q.device) + offset
    accuracy = (logits.detach().argmax(dim=1) == labels).float().mean()
    return F.cross_entropy(logits, labels), accuracy


def mlp_head(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    """Linear - BatchNorm - ReLU - Linear (the projection / prediction heads; no BN at the end)."""
    return nn.Sequential(
        nn.Linear(dim_in, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out)
    )


class FrameDecoder(Decoder):
    """MAE's decoder on one frame: its visible tokens in a grid of [MASK] tokens, self-attention only,
    one output vector per patch (pixels for the pixel decoder, features for the feature decoder)."""

    def mix(self, x, context):
        for blk in self.blocks:
            x = blk(x)
        return x

    def decode(self, tokens: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """Visible tokens (B, n, E) at patches ``keep`` (B, n) -> (B, N, out)."""
        return self.pred(self.norm(self.mix(self.target_tokens(tokens, keep), None)))


# ----------------------------------------------------------------------------- the model


class CMAE(LastFramePixels, PretrainingModel):
    """The online branch (``encoder``, ``decoder`` = pixel decoder, ``feature_decoder``, ``projector``,
    ``predictor``) and the target branch (``target_encoder``, ``target_projector``: EMA copies, no
    gradients). The reconstruction loss, its target and the pictures are SiamMAE's (the last frame)."""

    def __init__(
        self,
        encoder,
        decoder,
        feature_decoder,
        projector,
        predictor,
        *,
        mask_ratio,
        masking,
        norm_pix_loss,
        sdpa,
        momentum,
        momentum_end,
        nce_temperature,
        nce_weight,
        target_augment=True,
    ):
        super().__init__()
        self.encoder, self.decoder = encoder, decoder
        self.mask_ratio, self.masking = list(mask_ratio), MASKINGS[masking]
        self.norm_pix_loss, self.sdpa = norm_pix_loss, sdpa
        self.patch_size, self.grid = encoder.patch_embed.patch_size[0], tuple(encoder.patch_embed.grid_size)
        self.feature_decoder, self.projector, self.predictor = feature_decoder, projector, predictor
        self.target_encoder, self.target_projector = copy.deepcopy(encoder), copy.deepcopy(projector)
        for p in [*self.target_encoder.parameters(), *self.target_projector.parameters()]:
            p.requires_grad_(False)
        self.momentum_range = (momentum, momentum_end)
        self.nce_temperature, self.nce_weight = nce_temperature, nce_weight
        self.target_augment = target_augment
        # The momentum of the next EMA update, for the logs (the update computes it from the step): a
        # buffer, so a resumed run's logs continue exactly too.
        self.register_buffer("momentum", torch.tensor(momentum, dtype=torch.float64))

    def target_features(self, img: torch.Tensor) -> torch.Tensor:
        """The whole frame through the target encoder: (B, 3, H, W) -> mean patch token (B, D), taken
        before the final norm."""
        return common.encode_frame(self.target_encoder, img, final_norm=False).mean(dim=1)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> Output:
        """frames (B, 2, 3, H, W) normalised; mask (B, 2, N) bool (only the last frame's is used),
        drawn fresh when None. -> :class:`Output` with the pixel prediction and mask of f2, and the
        logged scalars ``loss_rec``, ``loss_nce``, ``nce_accuracy``, ``momentum``."""
        B, T = frames.shape[:2]
        if mask is None:
            mask = self.masking(B, T, self.grid[0] * self.grid[1], self.mask_ratio, device=frames.device)
        target_mask = mask[:, -1]
        keep = visible_indices(target_mask)
        with sdpa_backend(self.sdpa):
            tokens = common.encode_frame(self.encoder, frames[:, -1], keep)  # (B, n, D)
            pred = self.decoder.decode(tokens, keep)  # (B, N, p*p*3)
            q = self.predictor(self.projector(self.feature_decoder.decode(tokens, keep).mean(dim=1)))
            with torch.no_grad():
                view = frames[:, 0]
                if self.training and self.target_augment:
                    view = augment_target(view)
                k = self.target_projector(self.target_features(view))
        loss_rec = self.loss(frames, pred, target_mask)
        loss_nce, accuracy = info_nce(q, k, self.nce_temperature)
        logs = dict(
            loss_rec=loss_rec.detach(),
            loss_nce=loss_nce.detach(),
            nce_accuracy=accuracy,
            momentum=self.momentum.float(),
        )
        return Output(loss_rec + self.nce_weight * loss_nce, pred, target_mask.float(), logs)

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """The target branch's EMA update after optimizer step ``step`` (counted from 1), with the
        momentum of step - 1 on the schedule; then the next one, for the logs."""
        m = momentum_at(step - 1, total_steps, *self.momentum_range)
        ema_update(self.target_encoder, self.encoder, m)
        ema_update(self.target_projector, self.projector, m)
        self.momentum.fill_(momentum_at(step, total_steps, *self.momentum_range))


def build(cfg) -> CMAE:
    """CMAE for the resolved config ``cfg`` (``cfg.cmae``: its own keys): the encoder and pixel decoder sized
    as SiamMAE's."""
    model_cfg, options = cfg.model, cfg.cmae
    encoder = common.build_encoder(model_cfg)
    grid = model_cfg.img_size // model_cfg.patch_size
    dim = encoder.embed_dim

    def frame_decoder(depth, out):
        return FrameDecoder(
            enc_dim=dim,
            dim=model_cfg.decoder_dim,
            depth=depth,
            heads=model_cfg.decoder_heads,
            grid=(grid, grid),
            patch_dim=out,
            block=self_attention_block,
        )

    model = CMAE(encoder, frame_decoder(model_cfg.decoder_depth, model_cfg.patch_size**2 * 3),
                 frame_decoder(options.feature_decoder_depth, dim), mlp_head(dim, HEAD_HIDDEN, HEAD_DIM),
                 mlp_head(HEAD_DIM, HEAD_HIDDEN, HEAD_DIM), mask_ratio=model_cfg.mask_ratio, masking=model_cfg.masking,
                 norm_pix_loss=model_cfg.norm_pix_loss, sdpa=model_cfg.sdpa_backend, momentum=options.momentum,
                 momentum_end=options.momentum_end, nce_temperature=options.nce_temperature,
                 nce_weight=options.nce_weight, target_augment=options.target_augment)  # fmt: skip
    common.init_mae(model, keep=[encoder] if model_cfg.init == "timm" else ())
    if model_cfg.init == "mae":
        common.init_as_linear(encoder.patch_embed.proj.weight)
        nn.init.normal_(encoder.cls_token, std=0.02)
    nn.init.normal_(model.decoder.mask_token, std=0.02)
    nn.init.normal_(model.feature_decoder.mask_token, std=0.02)
    # The target branch starts as a copy of the online one.
    model.target_encoder.load_state_dict(model.encoder.state_dict())
    model.target_projector.load_state_dict(model.projector.state_dict())
    set_fused_attention(model, model_cfg.attention == "sdpa")
    return model
