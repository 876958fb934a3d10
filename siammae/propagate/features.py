"""Frames -> the encoder's tokens that label propagation compares: resized as the protocol says, in
the chosen precision, L2-normalised, within a memory budget.

1. Features: the frame resized as the protocol says, through the ViT; tokens of the last block after
   the final norm, prefix tokens ([CLS]) dropped, each token L2-normalised -> (N, D), N = h * w.
"""

from __future__ import annotations

import contextlib
import copy
from typing import List, Optional

import numpy as np
import torch
import torch.nn.functional as F

from siammae.allocator import keep_freed_memory
from siammae.propagate import cpu
from siammae.propagate.attention import attention_heads, written_out, written_out_pays
from siammae.propagate.precision import DTYPES, autocast, resolve_precision
from siammae.propagate.protocol import Protocol, ProtocolError, resized_shape

# Bytes of activations one forward pass may hold when the batch size is not given. On the CPU one 480p
# frame per pass was the fastest (docs/benchmarks.md): its tokens already fill the cores, and a bigger
# batch only leaves the caches. Small frames (JHMDB's 320x320) still go several at a time.
BATCH_BUDGET = {"cpu": 32 * 2**20, "cuda": 2 * 2**30}


class FeatureExtractor:
    """Frames -> L2-normalised patch tokens of the last block after the final norm.

    ``precision`` (fp32, bf16, fp16 or auto; :mod:`siammae.propagate.precision`) is the forward pass's number
    format; the tokens come out fp32 either way. On a CPU in bf16 the forward pass runs on a bf16 copy
    of the encoder rather than under autocast (autocast casts every weight on every call and runs
    softmax and LayerNorm in fp32 with casts around them: 145 vs 132 ms a 480p frame for ViT-S/16 on
    2 AMX cores), and its attention runs written out as matmuls and a softmax where that is faster
    than the fused kernel (:mod:`siammae.propagate.attention`)."""

    def __init__(self, encoder: torch.nn.Module, protocol: Protocol, device: torch.device, precision: str = "fp32"):
        self.encoder = encoder.to(device).eval()
        self.protocol = protocol
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.prefix = int(getattr(encoder, "num_prefix_tokens", 1))
        self.mean = torch.tensor(protocol.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(protocol.std, device=device).view(1, 3, 1, 1)
        self.heads = attention_heads(self.encoder)
        self.attention = "fused"  # the attention form of the last forward pass (siammae.propagate.attention)
        # What runs the forward pass: the encoder, or (CPU, bf16) a bf16 copy, so that the caller's
        # encoder (a training run's, during training) keeps its fp32 weights.
        self.network = self.encoder
        if self.device.type == "cpu" and self.precision == "bf16":
            self.network = copy.deepcopy(self.encoder).to(torch.bfloat16)
            cpu.bf16_pays()  # its one measurement (siammae.propagate.cpu) here, not in a timed forward

    @property
    def feature_dtype(self) -> torch.dtype:
        """The number format of the forward pass, which the propagation's context keeps its features in."""
        return DTYPES.get(self.precision, torch.float32)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return resized_shape(height, width, self.protocol, self.patch)

    def batch_frames(self, height: int, width: int, budget: Optional[int] = None) -> int:
        """Frames of (height, width) per forward pass that keep its activations within ``budget`` bytes
        (default: :data:`BATCH_BUDGET` of the device):
        about 14 token-width vectors per token live inside a block (input, norm, q, k, v, attention
        output, the MLP's 4x hidden and its activation), plus the resized input, plus the score and
        probability matrices (heads x N x N each) where attention runs written out."""
        h, w = self.input_size(height, width)
        tokens = (h // self.patch) * (w // self.patch) + self.prefix
        width_ = int(getattr(self.encoder, "embed_dim", 768))
        per_frame = tokens * width_ * 14 * (4 if self.precision == "fp32" else 2) + 3 * h * w * 4
        if written_out_pays(self.device, self.precision, 1, tokens, self.heads):
            per_frame += 2 * self.heads * tokens * tokens * 2
        budget = budget or BATCH_BUDGET.get(self.device.type, BATCH_BUDGET["cpu"])
        return max(1, min(64, budget // per_frame))

    @torch.inference_mode()
    def __call__(self, frames: List[np.ndarray]) -> torch.Tensor:
        """A list of (H, W, 3) uint8 frames of one size -> (B, h * w, D) unit-norm fp32 tokens."""
        size = self.input_size(*frames[0].shape[:2])
        x = torch.cat([self._resized(frame, size) for frame in frames])  # one full-size float frame at a time
        x = (x - self.mean) / self.std
        n = (size[0] // self.patch) * (size[1] // self.patch) + self.prefix
        unfused = written_out_pays(self.device, self.precision, len(frames), n, self.heads)
        unfused = unfused and keep_freed_memory()  # without it the written-out form is slower
        self.attention = "written-out" if unfused else "fused"
        bf16_copy = self.network is not self.encoder  # bf16 in, no autocast needed
        cast = contextlib.nullcontext() if bf16_copy else autocast(self.precision, self.device)
        with cast, written_out(self.network, unfused):
            x = x.to(torch.bfloat16) if bf16_copy else x
            tokens = block_tokens(self.network, x, self.protocol.layer)[:, self.prefix :]
        return F.normalize(tokens.float(), dim=-1)

    def _resized(self, frame: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        x = torch.tensor(frame, device=self.device).permute(2, 0, 1)[None].float() / 255.0
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=self.protocol.antialias)
        return x


def block_tokens(encoder: torch.nn.Module, x: torch.Tensor, layer: int = 0) -> torch.Tensor:
    """``encoder.forward_features(x)``; with ``layer`` > 0 the tokens after block ``layer`` (1-based) of a timm
    ViT, through its final norm: (B, 3, H, W) -> (B, prefix + N, D)."""
    if not layer:
        return encoder.forward_features(x)
    blocks = getattr(encoder, "blocks", None)
    if blocks is None or not hasattr(encoder, "_pos_embed"):
        raise ProtocolError(f"layer={layer}: only a timm ViT's blocks can be read out one by one")
    if layer > len(blocks):
        raise ProtocolError(f"layer={layer}: the encoder has {len(blocks)} blocks")
    x = encoder.norm_pre(encoder._pos_embed(encoder.patch_embed(x)))
    for block in blocks[:layer]:
        x = block(x)
    return encoder.norm(x)
