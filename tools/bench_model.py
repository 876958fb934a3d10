#!/usr/bin/env python
"""Forward + backward time per sample (a frame pair, or a clip for VideoMAE / MAE-ST), SDPA vs
plain-math attention, side by side.

    python tools/bench_model.py                     # SiamMAE ViT-S/16 at 224, batch 8, current device
    python tools/bench_model.py --batch 64 --dtype bf16 model.arch=vit_base
    python tools/bench_model.py --recipe videomae --batch 2     # a 16-frame clip per sample

Both paths run in the same process on the same weights and inputs, interleaved, so the ratio is
meaningful on a shared, noisy machine. Also prints the encoder and decoder parameter counts, and each
path's fraction of the machine's limit: the FLOPs of a step (attention included) over its time and
over the matmul peak measured in the same process in --dtype (siammae.limits).
"""

import argparse
import json
import time

import torch

from siammae.config import load_config
from siammae.limits import count_flops, count_softmax, measure_limit
from siammae.models import build_model
from siammae.models.layers import set_fused_attention


def time_step(model, frames, dtype, device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
        loss, _, _ = model(frames)
    loss.backward()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="base", help="recipe whose model is timed (base, videomae, maest, ...)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per path (after 1 warm-up)")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default="fp32")
    parser.add_argument("overrides", nargs="*", help="group.key=value config overrides")
    args = parser.parse_args()

    cfg = load_config(args.recipe, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    n_enc = sum(p.numel() for p in model.encoder.parameters())
    n_dec = sum(p.numel() for p in model.decoder.parameters())
    size = cfg.model.img_size
    frames = torch.randn(args.batch, cfg.data.num_frames, 3, size, size, device=device)

    times = {"sdpa": [], "math": []}
    for fused in (True, False):  # warm-up both paths
        set_fused_attention(model, fused)
        time_step(model, frames, dtype, device)
    for _ in range(args.steps):
        for name, fused in (("sdpa", True), ("math", False)):
            set_fused_attention(model, fused)
            model.zero_grad(set_to_none=True)
            times[name].append(time_step(model, frames, dtype, device))

    per_pair = {k: sorted(v)[len(v) // 2] / args.batch * 1000 for k, v in times.items()}
    flops = count_flops(lambda: time_step(model, frames, dtype, device), model) / args.batch  # a sample
    model.zero_grad(set_to_none=True)
    softmax = count_softmax(lambda: time_step(model, frames, dtype, device), model) / args.batch
    limit = measure_limit(flops, args.dtype, device, softmax)
    peak = limit.peak
    share = {k: limit.fraction(ms / 1000) for k, ms in per_pair.items()}
    with_softmax = limit.fraction_with_softmax(per_pair["sdpa"] / 1000)
    print(
        f"device: {torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'} "
        f"({torch.get_num_threads()} threads), dtype {args.dtype}, batch {args.batch}"
    )
    kind = (
        f"siammae, encoder {cfg.siammae.encoder}, decoder {cfg.siammae.decoder}"
        if cfg.model.method == "siammae"
        else f"{cfg.model.method}, clips of {cfg.data.num_frames} frames, "
        f"tubelet {getattr(cfg, cfg.model.method).tubelet}"
    )
    print(
        f"model: {cfg.model.arch}/{cfg.model.patch_size} at {size}, {kind}, decoder "
        f"{cfg.model.decoder_depth}x{cfg.model.decoder_dim}"
    )
    print(f"parameters: encoder {n_enc / 1e6:.2f} M, decoder {n_dec / 1e6:.2f} M")
    print(
        f"forward+backward per sample (median of {args.steps}): SDPA {per_pair['sdpa']:.2f} ms | "
        f"plain math {per_pair['math']:.2f} ms | math/SDPA {per_pair['math'] / per_pair['sdpa']:.2f}x"
    )
    print(
        f"limit: {peak / 1e9:.0f} GFLOP/s {args.dtype} matmul (measured, {torch.get_num_threads()} threads); "
        f"{flops / 1e9:.2f} GFLOP a sample (fwd+bwd, attention included): SDPA reaches {share['sdpa']:.0%} "
        f"of it, plain math {share['math']:.0%}"
    )
    print(
        f"with attention's softmax ({softmax / 1e6:.1f} M elements a sample, forward and backward, at "
        f"{limit.softmax_rate / 1e9:.2f} G/s measured): {limit.best_seconds_with_softmax * 1e3:.2f} ms a sample at "
        f"best, SDPA reaches {with_softmax:.0%} of that"
    )
    print(
        json.dumps(
            {
                "method": cfg.model.method,
                "encoder_params": n_enc,
                "decoder_params": n_dec,
                "ms_per_sample_sdpa": per_pair["sdpa"],
                "ms_per_sample_math": per_pair["math"],
                "gflop_per_sample": round(flops / 1e9, 3),
                "measured_peak_gflops": round(peak / 1e9, 1),
                "fraction_of_limit_sdpa": round(share["sdpa"], 3),
                "fraction_of_limit_math": round(share["math"], 3),
                "softmax_m_elements_per_sample": round(softmax / 1e6, 2),
                "fraction_of_limit_with_softmax_sdpa": round(with_softmax, 3),
                "device": device.type,
                "dtype": args.dtype,
            }
        )
    )


if __name__ == "__main__":
    main()
