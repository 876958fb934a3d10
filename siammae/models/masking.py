"""Which patches each frame hides.

A mask is a bool tensor (B, T, N): True = masked, for a batch of B clips of T frames with N patches
each. Every strategy takes one ratio per frame; the number of masked patches of frame t is the same
for every clip, ``N - int(N * (1 - ratio_t))`` (MAE's rounding), so visible tokens stack into dense
(B, n_t, D) tensors per frame.

- ``random``: an independent uniformly random mask per clip and per frame (SiamMAE: f1 0%, f2 95%).
- ``tube``: one random spatial order per clip shared by all frames, so frames with the same ratio hide
  the same patches (VideoMAE's tube masking).
- ``spacetime``: one random draw over all T*N tokens of a clip at once (MAE-ST's space-time-agnostic
  masking): exactly ``T*N - int(T*N * (1 - ratio))`` masked per clip, a frame's share left to chance.
  It needs one ratio for the whole clip (every per-frame ratio equal).
"""

from __future__ import annotations

from typing import Sequence

import torch


def num_visible(num_patches: int, ratio: float) -> int:
    """Visible patches of a frame with ``ratio`` of its ``num_patches`` masked."""
    return int(num_patches * (1.0 - ratio))


def _mask_from_order(order: torch.Tensor, ratios: Sequence[float]) -> torch.Tensor:
    """order: (B, T, N) a random permutation of patch ids per frame -> mask (B, T, N)."""
    B, T, N = order.shape
    ranks = torch.argsort(order, dim=-1)  # rank of each patch in the random order
    keep = torch.tensor([num_visible(N, r) for r in ratios], device=order.device).view(1, T, 1)
    return ranks >= keep


def random_masking(B: int, T: int, N: int, ratios: Sequence[float], device=None, generator=None) -> torch.Tensor:
    """An independent random mask per clip and frame -> bool (B, T, N)."""
    noise = torch.rand(B, T, N, device=device, generator=generator)
    return _mask_from_order(torch.argsort(noise, dim=-1), ratios)


def tube_masking(B: int, T: int, N: int, ratios: Sequence[float], device=None, generator=None) -> torch.Tensor:
    """One random spatial order per clip for all frames -> bool (B, T, N)."""
    noise = torch.rand(B, 1, N, device=device, generator=generator).expand(B, T, N)
    return _mask_from_order(torch.argsort(noise, dim=-1), ratios)


def spacetime_masking(B: int, T: int, N: int, ratios: Sequence[float], device=None, generator=None) -> torch.Tensor:
    """One random order over all T * N tokens of a clip -> bool (B, T, N); the clip's ratio is exact."""
    if len(set(ratios)) != 1:
        raise ValueError(f"space-time-agnostic masking takes one ratio for the whole clip, got {list(ratios)}")
    noise = torch.rand(B, 1, T * N, device=device, generator=generator)
    return _mask_from_order(torch.argsort(noise, dim=-1), ratios[:1]).view(B, T, N)


MASKINGS = {"random": random_masking, "tube": tube_masking, "spacetime": spacetime_masking}


def visible_indices(mask_t: torch.Tensor) -> torch.Tensor:
    """mask of one frame (B, N) -> indices of its visible patches (B, n), ascending."""
    n = int((~mask_t[0]).sum())
    return torch.argsort(mask_t.to(torch.int8), dim=-1, stable=True)[:, :n]
