"""How long a run is and how fast it learns: run lengths, the learning rate, the optimizer's groups.

The learning rate is a pure function of the optimizer step (MAE's warm-up then half-cosine), set on
the parameter groups by the trainer; there is no scheduler object to save or restore.
"""

from __future__ import annotations

import math

import torch

# Parameters without weight decay besides biases and norms (MAE): positions and learned tokens.
NO_WEIGHT_DECAY = {
    "pos_embed",
    "decoder_pos_embed",
    "cls_token",
    "mask_token",
    "reg_token",
    "dist_token",
    "pos_space",
    "pos_time",
}


def run_lengths(cfg) -> tuple[int, int]:
    """(total optimizer steps, warm-up steps) from lengths given in samples or epochs of samples, so a
    recipe means the same on 1 or 64 GPUs (the global batch is fixed, not the per-GPU batch)."""
    t, o = cfg.train, cfg.optim
    total_samples = t.samples if t.samples > 0 else t.epochs * t.epoch_samples
    warmup_samples = o.warmup_samples if o.warmup_samples > 0 else o.warmup_epochs * t.epoch_samples
    total = max(1, math.ceil(total_samples / t.global_batch_size))
    return total, min(total, round(warmup_samples / t.global_batch_size))


def peak_learning_rate(cfg) -> float:
    """MAE's linear scaling rule: ``base_lr`` is per 256 samples of the global batch."""
    return cfg.optim.base_lr * cfg.train.global_batch_size / 256


def learning_rate(step: int, peak: float, min_lr: float, warmup: int, total: int) -> float:
    """lr of optimizer step ``step`` (0-based): linear warm-up to ``peak``, then half a cosine to ``min_lr``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float, encoder_lr_scale: float = 1.0) -> list:
    """AdamW groups: weight decay on weight matrices only; none on biases, norms, position embeddings
    and tokens (MAE). Frozen parameters (the fixed sin-cos positions) are left out. Each group carries
    ``lr_scale``: the encoders' parameters (names starting with the model's ``encoder_prefixes``, by default
    ``encoder``) learn at ``encoder_lr_scale`` x the schedule's lr when that is not 1 (then there are four
    groups)."""
    encoder = tuple(getattr(model, "encoder_prefixes", ("encoder",)))
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.split(".")[-1] in NO_WEIGHT_DECAY
        scale = encoder_lr_scale if name.startswith(encoder) else 1.0
        key = (skip, scale)
        groups.setdefault(key, dict(params=[], weight_decay=0.0 if skip else weight_decay, lr_scale=scale))
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def make_optimizer(model: torch.nn.Module, cfg) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; the trainer sets each group's lr every step."""
    groups = param_groups(model, cfg.optim.weight_decay, cfg.optim.encoder_lr_scale)
    return torch.optim.AdamW(groups, lr=0.0, betas=tuple(cfg.optim.betas))


def set_learning_rate(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr * group["lr_scale"]
