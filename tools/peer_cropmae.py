"""A peer's SiamMAE trained by siammae's own loop: CropMAE's public model (alexandre-eymael/CropMAE).

The user fetches that repository (``git clone https://github.com/alexandre-eymael/CropMAE``); nothing of
it is copied here. :func:`builder` imports its ``models.SiamMAE.SiameseMAE`` from the checkout, builds it
at the size a siammae recipe names (encoder width, depth and heads of ``model.arch``; patch and image
size; decoder depth, width and heads; mask ratio of the last frame; per-patch normalised targets or not)
and wraps it so that :func:`siammae.train.train` trains it on the same shards, with the same optimiser,
schedule and encoder lr factor as ours. Its encoder (patch embedding, [CLS], sin-cos positions, blocks,
final norm: MAE's layout, which is timm's) loads strictly into the same timm ViT that ``siammae
propagate`` evaluates.

What differs from ours is theirs: the decoder block (post-norm, cross-attention then MLP then
self-attention, feed-forward width 2048, dropout 0.1), MAE's masking and loss.
"""

from __future__ import annotations

import sys
from functools import partial
from pathlib import Path

import torch
import torch.nn as nn

from siammae.errors import SiammaeError
from siammae.models.common import Output, PretrainingModel, timm_spec

# Their model's encoder parts, by the names MAE (and timm) give them.
ENCODER_KEYS = ("patch_embed.", "cls_token", "pos_embed", "blocks.", "norm.")


class PeerError(SiammaeError):
    """The CropMAE checkout cannot be used; one line for the user."""


def _import_siamese_mae(repo: Path):
    if not (repo / "models" / "SiamMAE.py").is_file():
        raise PeerError(
            f"{repo}: not a CropMAE checkout (no models/SiamMAE.py); "
            "git clone https://github.com/alexandre-eymael/CropMAE"
        )
    sys.path.insert(0, str(repo))
    try:
        from models.SiamMAE import SiameseMAE
    except Exception as e:  # their imports (timm, numpy) may not match what is installed
        raise PeerError(f"{repo}: importing models.SiamMAE failed: {type(e).__name__}: {e}") from None
    finally:
        sys.path.remove(str(repo))
    return SiameseMAE


class CropMAEPeer(PretrainingModel):
    """CropMAE's ``SiameseMAE`` behind siammae's model interface: frames (B, 2, 3, H, W) -> Output."""

    encoder_prefixes = tuple(f"net.{k}" for k in ENCODER_KEYS)  # optim.encoder_lr_scale applies to these

    def __init__(self, net: nn.Module, mask_ratio: float):
        super().__init__()
        self.net = net
        self.mask_ratio = float(mask_ratio)

    def forward(self, frames: torch.Tensor, mask=None) -> Output:
        if mask is not None:
            raise ValueError("the peer model draws its own masks")
        loss, preds, masks = self.net(frames, mask_ratio=self.mask_ratio)
        return Output(loss, preds[0], masks[0])

    def encoder_state_dict(self) -> dict:
        """The encoder's weights under timm ViT names."""
        return {k: v for k, v in self.net.state_dict().items() if k.startswith(ENCODER_KEYS)}


def builder(repo: str | Path):
    """``build(cfg)`` for :func:`siammae.train.train`: their SiamMAE at our recipe's size."""
    import timm

    siamese_mae = _import_siamese_mae(Path(repo).expanduser().resolve())

    def build(cfg) -> CropMAEPeer:
        model_cfg = cfg.model
        if cfg.data.num_frames != 2 or model_cfg.method != "siammae":
            raise PeerError("the CropMAE peer is a SiamMAE on frame pairs (method siammae, data.num_frames 2)")
        name, kwargs = timm_spec(model_cfg)
        vit = timm.create_model(name, device="meta", **kwargs)  # only for its width, depth and heads
        net = siamese_mae(
            img_size=model_cfg.img_size,
            patch_size=model_cfg.patch_size,
            embed_dim=vit.embed_dim,
            depth=len(vit.blocks),
            num_heads=vit.blocks[0].attn.num_heads,
            decoder_embed_dim=model_cfg.decoder_dim,
            decoder_depth=model_cfg.decoder_depth,
            decoder_num_heads=model_cfg.decoder_heads,
            mlp_ratio=4,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            norm_pix_loss=model_cfg.norm_pix_loss,
        )
        return CropMAEPeer(net, model_cfg.mask_ratio[-1])

    return build
