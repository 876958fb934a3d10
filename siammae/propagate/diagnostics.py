"""Feature diagnostics: does an encoder's token map carry what label propagation needs?

Propagation matches each token of a frame against tokens of earlier frames, so it fails in two
recognisable ways, and each has a number here:

* **collapse**: the tokens of a frame are all nearly the same vector. ``mean_cosine`` is the mean cosine
  similarity between two different tokens of one frame (1 = one vector); ``effective_rank`` is
  exp(entropy of the normalised singular values) of a frame's (N, D) unit-norm token matrix (Roy &
  Vetterli 2007): 1 for one direction, up to min(N, D).
* **position shortcut**: the tokens say *where* a patch is rather than *what* it shows, and propagation
  degenerates to copying labels in place. ``position_share`` is the fraction of the tokens' variance
  (over frames of different scenes, at one grid size) explained by the grid position alone, a one-way
  analysis of variance with positions as groups, corrected for the few frames per position. Compare
  the J&F with the score of copying the first frame's labels to every frame
  (:func:`siammae.tasks.davis.copy_first_frame_jf`).

All figures are measured on the unit-norm tokens the propagation sees (:class:`FeatureExtractor`).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch

from siammae.files import read_frame


def mean_cosine(tokens: torch.Tensor) -> float:
    """Unit-norm tokens (B, N, D) -> mean cosine between two different tokens of one frame."""
    B, N, _ = tokens.shape
    s = tokens.sum(dim=1)  # sum_ij t_i.t_j = |sum_i t_i|^2, the diagonal adds N
    pair_sum = (s * s).sum(dim=1) - N
    return float((pair_sum / (N * (N - 1))).mean())


def effective_rank(tokens: torch.Tensor) -> float:
    """Tokens (B, N, D) -> mean over frames of exp(entropy of the normalised singular values)."""
    sv = torch.linalg.svdvals(tokens.float())  # (B, min(N, D))
    p = sv / sv.sum(dim=1, keepdim=True).clamp_min(1e-12)
    entropy = -(p * p.clamp_min(1e-12).log()).sum(dim=1)
    return float(entropy.exp().mean())


def position_share(tokens: torch.Tensor) -> float:
    """Tokens (B, N, D) of B frames on one grid -> share of variance explained by the position (0..1).

    Between-position variance minus its expected value under no position effect (the within-position
    variance / B), over the total variance; clipped at 0. Needs B >= 2 frames of different content."""
    B, N, _ = tokens.shape
    if B < 2:
        return float("nan")
    x = tokens.double()
    mean = x.mean(dim=(0, 1))
    per_position = x.mean(dim=0)  # (N, D)
    total = ((x - mean) ** 2).sum(-1).mean()
    within = ((x - per_position) ** 2).sum(-1).mean() * B / (B - 1)  # unbiased, per frame
    between = ((per_position - mean) ** 2).sum(-1).mean() - within / B
    return float((between / total.clamp_min(1e-12)).clamp(0, 1))


def token_diagnostics(token_sets: Sequence[torch.Tensor]) -> dict:
    """Several (B_i, N_i, D) token batches (one per grid size) -> the three figures.

    Cosine and rank average over every frame; the position share comes from the grid with most frames."""
    frames = sum(t.shape[0] for t in token_sets)
    cos = sum(mean_cosine(t) * t.shape[0] for t in token_sets) / frames
    rank = sum(effective_rank(t) * t.shape[0] for t in token_sets) / frames
    largest = max(token_sets, key=lambda t: t.shape[0])
    return dict(
        mean_cosine=round(cos, 4),
        effective_rank=round(rank, 2),
        position_share=round(position_share(largest), 4),
        frames=frames,
    )


def sample_frames(videos: Sequence[Sequence[Path]], per_sequence: int = 4) -> List[Path]:
    """``per_sequence`` frames evenly spread over each video (a list of frame paths)."""
    paths = []
    for frames in videos:
        picks = np.linspace(0, len(frames) - 1, min(per_sequence, len(frames))).round().astype(int)
        paths.extend(frames[i] for i in sorted(set(picks.tolist())))
    return paths


def encoder_diagnostics(extractor, videos: Sequence[Sequence[Path]], per_sequence: int = 4) -> dict:
    """The figures for the encoder behind ``extractor`` (a :class:`siammae.propagate.features.FeatureExtractor`)
    on frames of ``videos`` (lists of frame paths, e.g. each DAVIS sequence's ``frames``), at the
    protocol's input size."""
    by_shape = defaultdict(list)
    for path in sample_frames(videos, per_sequence):
        frame = read_frame(path)
        by_shape[frame.shape].append(frame)
    token_sets = []
    for frames in by_shape.values():
        token_sets.append(torch.cat([extractor(frames[i : i + 8]) for i in range(0, len(frames), 8)]).cpu())
    return token_diagnostics(token_sets)


def describe(diag: dict) -> str:
    """One line for a terminal."""
    parts = [
        f"mean token cosine in a frame {diag['mean_cosine']:.3f}",
        f"effective rank {diag['effective_rank']:.1f}",
        f"position share {diag['position_share']:.3f}",
    ]
    if "copy_jf" in diag:
        parts.append(f"J&F of copying frame 0 in place {diag['copy_jf']:.3f}")
    return "features: " + ", ".join(parts)


__all__ = ["mean_cosine", "effective_rank", "position_share", "token_diagnostics", "encoder_diagnostics", "describe"]
