"""On a CPU in bf16 without AMX the encoder's attention runs written out (siammae.propagate.attention): same tokens
as the fused kernel, used only where it pays, the modules' own setting restored."""

import numpy as np
import torch
from test_allocator import GLIBC  # the written-out form is used only where glibc keeps freed memory
from test_propagate import NATIVE, tiny_vit

from siammae.propagate import cpu
from siammae.propagate.attention import SCORES_LIMIT, written_out_pays
from siammae.propagate.features import FeatureExtractor
from siammae.propagate.protocol import PROTOCOLS


def count_fused_calls(monkeypatch):
    calls = []
    fused = torch.nn.functional.scaled_dot_product_attention

    def counted(*args, **kwargs):
        calls.append(1)
        return fused(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", counted)
    return calls


@GLIBC
def test_written_out_attention_gives_the_fused_tokens_and_runs_only_in_bf16_on_the_cpu(monkeypatch):
    monkeypatch.setattr(cpu, "has", lambda p: True)  # bf16 runs on any CPU
    monkeypatch.setattr(cpu, "has_amx", lambda: False)  # AVX512-BF16 without AMX
    monkeypatch.setattr(cpu, "bf16_pays", lambda: True)  # whose bf16 matmuls beat fp32
    calls = count_fused_calls(monkeypatch)
    frames = [np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)]
    encoder, protocol = tiny_vit(16, depth=3), PROTOCOLS["siammae"].replace(**NATIVE)
    full = FeatureExtractor(encoder, protocol, "cpu")
    assert full(frames).shape == (1, 24, 192) and full.attention == "fused" and len(calls) == 3

    calls.clear()
    half = FeatureExtractor(encoder, protocol, "cpu", "bf16")
    written = half(frames)
    assert half.attention == "written-out" and calls == []  # no block called the fused kernel
    assert all(block.attn.fused_attn for block in encoder.blocks)  # the modules' own setting is back

    import siammae.propagate.features as propagate_module

    monkeypatch.setattr(propagate_module, "written_out_pays", lambda *a: False)
    fused = half(frames)
    assert half.attention == "fused" and len(calls) == 3
    cosine = torch.nn.functional.cosine_similarity
    assert cosine(written, fused, dim=-1).min() > 0.999
    assert cosine(written, full(frames), dim=-1).min() > 0.99


def test_written_out_attention_only_where_its_score_matrices_stay_small(monkeypatch):
    monkeypatch.setattr(cpu, "has_amx", lambda: False)
    monkeypatch.setattr(cpu, "bf16_pays", lambda: True)
    assert written_out_pays("cpu", "bf16", 1, 30 * 53 + 1, 6)  # ViT-S/16 at 480p: 30 MB
    assert written_out_pays("cpu", "bf16", 1, 30 * 53 + 1, 12)  # ViT-B/16: 61 MB
    assert not written_out_pays("cpu", "bf16", 1, 60 * 106 + 1, 6)  # ViT-S/8: 485 MB
    assert not written_out_pays("cpu", "bf16", 3, 30 * 53 + 1, 6)  # three frames at once: 91 MB
    assert not written_out_pays("cpu", "fp32", 1, 30 * 53 + 1, 6)  # the fused kernel is faster in fp32
    assert not written_out_pays("cuda", "bf16", 1, 30 * 53 + 1, 6)  # and on GPUs
    assert not written_out_pays("cpu", "bf16", 1, 30 * 53 + 1, 0)  # an encoder without timm attention
    assert SCORES_LIMIT == 64 * 2**20
    monkeypatch.setattr(cpu, "has_amx", lambda: True)  # with AMX the fused kernel is faster
    assert not written_out_pays("cpu", "bf16", 1, 30 * 53 + 1, 6)
    monkeypatch.setattr(cpu, "has_amx", lambda: False)  # and where bf16 matmuls are slow
    monkeypatch.setattr(cpu, "bf16_pays", lambda: False)
    assert not written_out_pays("cpu", "bf16", 1, 30 * 53 + 1, 6)


def test_batches_count_the_score_matrices_of_written_out_attention(monkeypatch):
    monkeypatch.setattr(cpu, "has", lambda p: True)
    monkeypatch.setattr(cpu, "has_amx", lambda: False)
    monkeypatch.setattr(cpu, "bf16_pays", lambda: True)
    encoder, protocol = tiny_vit(16), PROTOCOLS["siammae"].replace(**NATIVE)
    fp32 = FeatureExtractor(encoder, protocol, "cpu").batch_frames(320, 320, budget=2**25)
    bf16 = FeatureExtractor(encoder, protocol, "cpu", "bf16").batch_frames(320, 320, budget=2**25)
    # 401 tokens of width 192 and the 320x320 input: 5.5 MB per frame in fp32 -> 6 frames in 32 MiB;
    # bf16 activations 3.4 MB plus 2 x 3 heads x 401^2 bf16 scores (1.9 MB) -> 6 (9 without the scores).
    assert (fp32, bf16) == (6, 6)
