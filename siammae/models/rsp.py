"""RSP (Jang et al., ICML 2024, "Visual representation learning with stochastic frame prediction") on
frame pairs, as its public code (huiwon-jang/RSP) defines the objective.

A sample is a pair (B, 2, 3, H, W): f1 the current frame, f2 the future one (the shards' gap).

- One ViT (``model.encoder``, exported and propagated) encodes f1 whole -> h (B, 1 + N, E), [CLS]
  first, and f2 whole plus Gaussian noise (``rsp.noise_scale`` in normalised pixels) -> h'.
- The *posterior* (an MLP on [CLS(h), CLS(h')]) and the *prior* (an MLP on CLS(h)) give logits of a
  categorical latent: ``rsp.stoch`` variables of ``rsp.discrete`` classes. z is drawn from the
  posterior, one-hot with straight-through gradients, flattened and projected to one token.
- The decoder (:class:`~siammae.models.slots.SlotDecoder`): [MASK] queries in every slot attend to
  [z token, h projected + positions] and predict every patch of f2 (L_post, MSE on all patches,
  per-patch normalised pixels with ``model.norm_pix_loss``).
- KL with DreamerV2's balancing: 0.2 KL(post || sg(prior)) + 0.8 KL(sg(post) || prior), summed over
  the variables, averaged over the batch, then at least ``rsp.free_bits`` (one clamp of the mean).
- The MAE branch: f2 masked at ``model.mask_ratio[1]`` (0.75) through the same encoder; its tokens
  (own projection), [MASK] in the hidden slots, are the context of the same decoder's [MASK] queries;
  MSE on the masked patches (L_mae).
- L = L_post + ``rsp.kl_scale`` x KL + L_mae.

What the pictures show: the posterior's prediction of f2 (every patch predicted).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from siammae.models import common
from siammae.models.common import Output, masked_mse
from siammae.models.kernels import sdpa_backend
from siammae.models.masking import visible_indices
from siammae.models.slots import SlotDecoder, SlotModel, build_slot_model


def _key(default, help: str):
    return field(default=default, metadata={"help": help})


@dataclass
class Options:
    """The ``rsp:`` section of a recipe (the public code's values by default)."""

    stoch: int = _key(32, "categorical latent variables")
    discrete: int = _key(32, "classes of each")
    kl_scale: float = _key(0.01, "the KL term's weight in the loss")
    kl_balance: float = _key(0.2, "share of the KL that trains the posterior (the rest trains the prior)")
    free_bits: float = _key(0.1, "the batch-mean KL counts at least this (nats)")
    noise_scale: float = _key(0.5, "std of the Gaussian noise on f2 as the posterior sees it (normalised pixels)")


RULES = {
    "stoch": (lambda v: v >= 1, "must be >= 1"),
    "discrete": (lambda v: v >= 2, "must be >= 2"),
    "kl_scale": (lambda v: v >= 0, "must be >= 0"),
    "kl_balance": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "free_bits": (lambda v: v >= 0, "must be >= 0"),
    "noise_scale": (lambda v: v >= 0, "must be >= 0"),
}
CROSS_RULES = [
    (("data.num_frames",), lambda frames: frames == 2, "rsp predicts one future frame: data.num_frames must be 2"),
    (
        ("model.mask_ratio",),
        lambda ratios: ratios[0] == 0,
        "rsp sees the current frame whole: model.mask_ratio must be [0.0, r] (r: the MAE branch's, 0.75)",
    ),
]


def straight_through_sample(logits: torch.Tensor) -> torch.Tensor:
    """One-hot samples of categoricals (..., K) with the probabilities' gradient (straight-through)."""
    probs = logits.softmax(dim=-1)
    index = torch.multinomial(probs.reshape(-1, probs.shape[-1]).float(), 1).reshape(probs.shape[:-1])
    one_hot = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return one_hot + probs - probs.detach()


def categorical_kl(p_logits: torch.Tensor, q_logits: torch.Tensor) -> torch.Tensor:
    """KL(p || q) of independent categoricals (B, S, K) summed over the S variables -> (B,)."""
    p_log, q_log = p_logits.log_softmax(dim=-1), q_logits.log_softmax(dim=-1)
    return (p_log.exp() * (p_log - q_log)).sum(dim=(-2, -1))


def balanced_kl(post: torch.Tensor, prior: torch.Tensor, balance: float, free_bits: float) -> tuple:
    """DreamerV2's balanced KL between posterior and prior logits (B, S, K): ``balance`` of it trains the
    posterior towards the prior, the rest the prior towards the posterior -> (the loss term: the
    batch mean, at least ``free_bits``; the batch mean before that floor)."""
    value = (
        balance * categorical_kl(post, prior.detach()) + (1 - balance) * categorical_kl(post.detach(), prior)
    ).mean()
    return value.clamp(min=free_bits), value


def mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, dim_out))


class RSP(SlotModel):
    """``encoder``, ``posterior``, ``prior``, ``latent_embed``, ``embed`` (f1's tokens), ``mae_embed``
    (the MAE branch's tokens) and the shared ``decoder``."""

    def __init__(self, encoder, decoder: SlotDecoder, **kwargs):
        super().__init__(encoder, decoder, **kwargs)
        width, dim, o = encoder.embed_dim, decoder.mask_token.shape[-1], self.options
        self.posterior = mlp(2 * width, 2 * width, o.stoch * o.discrete)
        self.prior = mlp(width, 2 * width, o.stoch * o.discrete)
        self.latent_embed = nn.Linear(o.stoch * o.discrete, dim)
        self.embed, self.mae_embed = nn.Linear(width, dim), nn.Linear(width, dim)

    def latent_logits(self, h: torch.Tensor, h_next: torch.Tensor | None) -> torch.Tensor:
        """The prior's logits (``h_next`` None) or the posterior's, (B, S, K), from the [CLS] tokens."""
        o = self.options
        if h_next is None:
            return self.prior(h[:, 0]).view(-1, o.stoch, o.discrete)
        return self.posterior(torch.cat([h[:, 0], h_next[:, 0]], dim=-1)).view(-1, o.stoch, o.discrete)

    def predict_next(self, h: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        """f2's patches from f1's tokens h (B, 1 + N, E) and a latent z (B, S, K) -> (B, N, P)."""
        context = torch.cat([self.latent_embed(z.flatten(1)).unsqueeze(1), self.embed(h) + self.decoder.pos_embed], 1)
        return self.decoder.cross(self.decoder.queries(h.shape[0]), context)

    def forward(self, frames: torch.Tensor, mask: torch.Tensor | None = None) -> Output:
        """frames (B, 2, 3, H, W) normalised; mask (B, 2, N) bool (the MAE branch's is the last frame's),
        drawn fresh when None. -> :class:`Output`: the posterior's prediction of f2 (every patch) and the
        logged ``loss_post``, ``loss_kl`` (before the free-bits floor), ``loss_mae``."""
        mask = self.draw_mask(frames, mask)
        current, future = frames[:, 0], frames[:, -1]
        with sdpa_backend(self.sdpa):
            h = common.encode_frame(self.encoder, current, cls=True)
            noisy = future + self.options.noise_scale * torch.randn_like(future)
            h_next = common.encode_frame(self.encoder, noisy, cls=True)
            post, prior = self.latent_logits(h, h_next), self.latent_logits(h, None)
            pred = self.predict_next(h, straight_through_sample(post))
            keep = visible_indices(mask[:, -1])
            seen = self.mae_embed(common.encode_frame(self.encoder, future, keep, cls=True))
            pred_mae = self.decoder.cross(self.decoder.queries(len(frames)), self.decoder.grid(seen, keep))
        target = self.target_patches(future)[0]
        loss_post = masked_mse(pred, target, torch.ones(pred.shape[:2], device=pred.device))
        loss_kl, kl = balanced_kl(post.float(), prior.float(), self.options.kl_balance, self.options.free_bits)
        loss_mae = masked_mse(pred_mae, target, mask[:, -1])
        loss = loss_post + self.options.kl_scale * loss_kl + loss_mae
        logs = dict(loss_post=loss_post.detach(), loss_kl=kl.detach(), loss_mae=loss_mae.detach())
        return Output(loss, pred, torch.ones(pred.shape[:2], device=pred.device), logs)


def build(cfg) -> RSP:
    """RSP for the resolved config ``cfg`` (``cfg.rsp``: its own keys), sized by ``cfg.model``."""
    return build_slot_model(RSP, cfg, cfg.rsp)
