"""Pictures: reconstruction grids and the loss curve of a training run, mask overlays of a propagation.

All take plain data (uint8 tensors or arrays, a metrics.jsonl path), not the model, so they can be drawn
from anything that saved those.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import List

import numpy as np
import torch
from PIL import Image

from siammae.files import read_jsonl
from siammae.tasks.davis_files import PALETTE

MIN_TILE = 128  # small frames (the tiny recipe's 64 px) are enlarged, pixel for pixel, to this size
GAP = 4


def masked_frame(frame: torch.Tensor, mask: torch.Tensor, patch_size: int, fill: int = 128) -> torch.Tensor:
    """frame uint8 (3, H, W), mask (N,) 1 = masked, patches in raster order -> the frame with its masked
    patches painted ``fill`` (what the encoder did not see)."""
    _, H, W = frame.shape
    grid = mask.view(H // patch_size, W // patch_size).bool()
    pixel_mask = grid.repeat_interleave(patch_size, 0).repeat_interleave(patch_size, 1)
    return torch.where(pixel_mask, torch.full_like(frame, fill), frame)


def recon_grid(frames: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor, patch_size: int) -> np.ndarray:
    """Reconstructions of a few samples -> HWC uint8 image. frames uint8 (B, T, 3, H, W), and either

    - a pair model's: recon uint8 (B, 3, H, W) (the last frame with its masked patches predicted) and
      mask (B, N) of the last frame: one row per sample, f1 | masked f2 | prediction | f2;
    - a clip model's: recon uint8 (B, T, 3, H, W) and mask (B, T, N): three rows per sample, the
      frames, what the encoder saw, the prediction.
    """
    frames, recon, mask = frames.cpu(), recon.cpu(), mask.cpu()
    B, _, _, H, W = frames.shape
    scale = max(1, math.ceil(MIN_TILE / max(H, W)))
    rows = []
    for b in range(B):
        if recon.ndim == 4:
            rows.append([frames[b, 0], masked_frame(frames[b, -1], mask[b], patch_size), recon[b], frames[b, -1]])
        else:
            rows += [
                list(frames[b]),
                [masked_frame(f, m, patch_size) for f, m in zip(frames[b], mask[b])],
                list(recon[b]),
            ]
    gap = np.full((H * scale, GAP, 3), 255, np.uint8)
    out = []
    for tiles in rows:
        tiles = [t.permute(1, 2, 0).numpy().repeat(scale, 0).repeat(scale, 1) for t in tiles]
        row = np.concatenate(sum([[t, gap] for t in tiles], [])[:-1], axis=1)
        out += [row, np.full((GAP, row.shape[1], 3), 255, np.uint8)]
    return np.concatenate(out[:-1], axis=0)


def save_recon(path, frames: torch.Tensor, recon: torch.Tensor, mask: torch.Tensor, patch_size: int) -> Path:
    """Write :func:`recon_grid` as a PNG (parent folders created)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(recon_grid(frames, recon, mask, patch_size)).save(path)
    return path


def read_metrics(metrics_path) -> list:
    """The records of a ``metrics.jsonl`` (one JSON object a line); unreadable lines are ignored (a
    run killed mid-write leaves a partial last line)."""
    return read_jsonl(metrics_path)


def plot_loss_curve(metrics_path, png_path) -> Path:
    """Loss (log scale) and learning rate against the optimizer step, from a run's metrics.jsonl; when
    the run evaluated J&F during training (``eval.davis``), a second panel under it: J&F against the
    same steps, with the random-init (step 0) and copy-frame-0-in-place levels as lines."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    everything = read_metrics(metrics_path)
    records = [r for r in everything if "loss" in r and "step" in r]
    evals = [r for r in everything if "eval_jf" in r and "step" in r]
    steps = [r["step"] for r in records]
    losses = [r["loss"] if r["loss"] is not None and math.isfinite(r["loss"]) else float("nan") for r in records]
    if evals:
        fig, (ax, jf_ax) = plt.subplots(
            2, 1, figsize=(7, 6.5), dpi=100, sharex=True, gridspec_kw=dict(height_ratios=[3, 2])
        )
    else:
        fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    ax.plot(steps, losses, color="tab:blue", label="loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("reconstruction loss (masked f2 patches)")
    if any(v > 0 for v in losses if math.isfinite(v)):
        ax.set_yscale("log")
    ax.grid(True, alpha=0.3)
    if records and "lr" in records[0]:
        lr_ax = ax.twinx()
        lr_ax.plot(steps, [r["lr"] for r in records], color="tab:orange", alpha=0.6, label="lr")
        lr_ax.set_ylabel("learning rate", color="tab:orange")
    ax.set_title(f"{Path(metrics_path).parent.name}: {len(records)} log points")
    if evals:
        jf_ax.plot(
            [r["step"] for r in evals],
            [r["eval_jf"] for r in evals],
            "o-",
            color="tab:green",
            label="J&F of the encoder",
        )
        first = [r for r in evals if r["step"] == 0]
        if first:
            jf_ax.axhline(first[-1]["eval_jf"], color="tab:red", ls="--", lw=1, label="random init (step 0)")
            if "eval_copy_jf" in first[-1]:
                jf_ax.axhline(first[-1]["eval_copy_jf"], color="0.4", ls=":", lw=1, label="copy frame 0 in place")
        jf_ax.set_xlabel("optimizer step")
        jf_ax.set_ylabel("J&F (label propagation)")
        jf_ax.grid(True, alpha=0.3)
        jf_ax.legend(fontsize=8, loc="best")
        ax.set_xlabel("")
    fig.tight_layout()
    png_path = Path(png_path)
    png_path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png_path)
    plt.close(fig)
    return png_path


def overlay_strip(frames: List[np.ndarray], labels: List[np.ndarray], height: int = 240) -> np.ndarray:
    """Frames with their masks blended in the DAVIS colours, side by side, ``height`` pixels high."""
    colours = np.array(PALETTE, dtype=np.float32).reshape(256, 3)
    tiles = []
    for frame, lab in zip(frames, labels):
        blend = frame.astype(np.float32)
        fg = lab > 0
        blend[fg] = 0.45 * blend[fg] + 0.55 * colours[lab[fg]]
        im = Image.fromarray(blend.astype(np.uint8))
        w = max(1, round(im.width * height / im.height))
        tiles.append(np.asarray(im.resize((w, height), Image.BILINEAR)))
        tiles.append(np.full((height, 4, 3), 255, np.uint8))
    return np.concatenate(tiles[:-1], axis=1)
