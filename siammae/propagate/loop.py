"""The propagation loop every task shares (DAVIS masks, JHMDB joints, VIP parts): it knows no dataset.

For each frame t > 0 of a sequence (the common scheme of DINO, CRW and the SiamMAE paper):

1. Features: the frame resized as the protocol says, through the ViT; tokens of the last block after
   the final norm, prefix tokens ([CLS]) dropped, each token L2-normalised -> (N, D), N = h * w.
2. Context: the first frame (ground truth) plus a FIFO queue of the last ``queue`` frames' *soft*
   predicted label maps, each with its features. Memory is bounded by the queue, not the video.
3. Affinity: cosine similarity / temperature between each target token and every context token;
   tokens outside the local window (in token units) are excluded; the top-k over all context tokens
   *jointly* get softmax weights (renormalised over the k); the soft label is their weighted sum.
4. Output: bilinear upsampling of the soft labels straight to the original frame size, argmax, a
   palette PNG named like the frame.

The tasks (:mod:`siammae.tasks`) give the first frame's labels and receive each frame's soft labels.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from siammae.errors import SiammaeError
from siammae.propagate.affinity import LabelPropagator
from siammae.propagate.protocol import Protocol

if TYPE_CHECKING:  # the loop only calls the extractor it is given
    from siammae.propagate.features import FeatureExtractor
from siammae.files import read_frame


class VideoError(SiammaeError):
    """A video whose frames cannot be propagated as they are (e.g. frames of different sizes)."""


def first_frame_labels(labels: np.ndarray, grid: tuple[int, int], protocol: Protocol) -> torch.Tensor:
    """First-frame ids (H, W) -> soft labels (K + 1, h * w) on the token grid, K = max id."""
    num = int(labels.max()) + 1
    lab = torch.from_numpy(labels.astype(np.int64))
    if protocol.first_labels == "nearest":
        # Pixel-centre sampling, as PIL's NEAREST resize in DINO's script.
        small = F.interpolate(lab[None, None].float(), size=grid, mode="nearest-exact")[0, 0].long()
        return F.one_hot(small, num).permute(2, 0, 1).reshape(num, -1).float()
    onehot = F.one_hot(lab, num).permute(2, 0, 1).float()[None]  # (1, K+1, H, W)
    soft = F.interpolate(onehot, size=grid, mode="area")[0].reshape(num, -1)
    if protocol.keep_small:
        owner = soft.argmax(0)
        given = torch.zeros_like(owner, dtype=torch.bool)  # cells already handed to a small object
        for k in range(1, num):
            if (lab == k).any() and not (owner == k).any():
                cell = int(soft[k].masked_fill(given, -1).argmax())
                soft[:, cell] = 0
                soft[k, cell] = 1
                owner[cell] = k
                given[cell] = True
    return soft


# ----------------------------------------------------------------------------- propagation


def soft_to_ids(soft: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], minmax: bool) -> np.ndarray:
    """Soft labels (L, h*w) -> ids (H, W) uint8 at the original frame size."""
    up = F.interpolate(soft.view(1, -1, *grid), size=size, mode="bilinear", align_corners=False)[0]
    if minmax:
        lo = up.amin(dim=(1, 2), keepdim=True)
        hi = up.amax(dim=(1, 2), keepdim=True)
        up = (up - lo) / (hi - lo).clamp_min(1e-12)
    # argmax over the last, contiguous dimension: over the first one the CPU kernel is much slower
    # (docs/benchmarks.md), same result, ties to the lowest label included.
    return up.movedim(0, -1).contiguous().argmax(-1).to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------- sequences


def propagate_video(
    extractor: FeatureExtractor,
    frame_paths: Sequence[Path],
    protocol: Protocol,
    first_labels: Callable[[tuple[int, int]], torch.Tensor],
    emit: Callable[[int, Optional[torch.Tensor], tuple[int, int], np.ndarray], None],
    batch_size: Optional[int] = None,
    progress: bool = True,
    name: str = "",
) -> dict:
    """The propagation loop every task shares (DAVIS masks, JHMDB joints, VIP parts).

    ``first_labels(grid)`` gives frame 0's soft labels (L, h * w) on the token grid (h, w); then, in
    frame order, ``emit(t, soft, grid, frame)`` receives each frame's propagated soft labels (L, h * w)
    (None for frame 0) and the frame (H, W, 3) uint8, to write or decode them. Frames are read and
    encoded ``batch_size`` at a time (None: as many as :meth:`FeatureExtractor.batch_frames` allows),
    so memory holds one batch and the context queue, whatever the video's length. All frames must
    have frame 0's size. Returns timing figures."""
    from tqdm import tqdm

    T = len(frame_paths)
    t_feat = t_prop = 0.0
    propagator, frame_size = None, None
    start = time.perf_counter()
    bar = tqdm(total=T, desc=name, unit="frame", dynamic_ncols=True, disable=not progress, leave=False)
    first = read_frame(frame_paths[0])  # decoded once: it also sizes the batches
    batch_size = batch_size or extractor.batch_frames(*first.shape[:2])
    for b0 in range(0, T, batch_size):
        frames = [first if t == 0 else read_frame(p) for t, p in enumerate(frame_paths[b0 : b0 + batch_size], b0)]
        frame_size = frame_size or frames[0].shape[:2]
        if any(f.shape[:2] != frame_size for f in frames):
            raise VideoError(f"video '{name}': frames differ in size from frame 0 ({frame_size[1]}x{frame_size[0]})")
        t0 = time.perf_counter()
        feats = extractor(frames)
        _sync(extractor.device)
        t_feat += time.perf_counter() - t0
        size = extractor.input_size(*frame_size)
        grid = (size[0] // extractor.patch, size[1] // extractor.patch)
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            if propagator is None:
                propagator = LabelPropagator(
                    protocol, grid, feats[0], first_labels(grid).to(extractor.device), store=extractor.feature_dtype
                )
                soft = None
            else:
                soft = propagator.step(feats[i])
            t_prop += time.perf_counter() - t0
            emit(b0 + i, soft, grid, frame)
            bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start
    return dict(
        frames=T,
        seconds=elapsed,
        fps=T / max(elapsed, 1e-9),
        feature_seconds=t_feat,
        propagation_seconds=t_prop,
        grid=list(grid),
        input_size=list(size),
        batch_size=batch_size,
        attention=extractor.attention,
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
