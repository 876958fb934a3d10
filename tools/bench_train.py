#!/usr/bin/env python3
"""Training throughput of one device: samples/s (frame pairs for SiamMAE, clips for VideoMAE / MAE-ST:
``--recipe videomae``) for ViT-S/16 at 224 (the base recipe's model by default),
forward + backward + AdamW step with the trainer's precision rule, on batches already on the device
(the input pipeline is measured by tools/bench_loader.py), and the model-FLOPs utilisation: FLOPs of one
step counted by ``torch.utils.flop_counter`` (matmuls, convolutions, attention written out while
counting: siammae.limits) divided by time and by the machine's limit, the matmul peak measured in the
same process in the step's number format (fp32 when the recipe's precision is off) on the same threads;
on a GPU also by its dense fp16/bf16 peak from the datasheet.

  python tools/bench_train.py                          # base recipe, batch 8 on CPU / 128 on GPU
  python tools/bench_train.py --recipe vits8 --batch 64 model.attention=math

The last line is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, os.fspath(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from siammae.allocator import keep_freed_memory  # noqa: E402
from siammae.config import load_config  # noqa: E402
from siammae.data.pixels import normalize  # noqa: E402
from siammae.limits import count_flops, matmul_peak  # noqa: E402
from siammae.models import METHODS, build_model  # noqa: E402
from siammae.train.loop import pick_precision  # noqa: E402
from siammae.train.schedule import param_groups  # noqa: E402

# Dense fp16/bf16 tensor-core peaks (TFLOP/s), by a substring of the device name.
PEAK_TFLOPS = {
    "H200": 989.0,
    "H100": 989.0,
    "A100": 312.0,
    "L40S": 362.0,
    "A10": 125.0,
    "V100": 125.0,
    "RTX 4090": 165.0,
    "TITAN RTX": 130.0,
    "RTX A6000": 155.0,
}


def peak_tflops(device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_TFLOPS.items() if k.lower() in name.lower()), None)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipe", default="base")
    parser.add_argument("--batch", type=int, help="pairs per step (default 8 on CPU, 128 on GPU)")
    parser.add_argument("--steps", type=int, help="timed steps (default 5 on CPU, 30 on GPU)")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--peak-tflops", type=float, help="the device's peak, for MFU (default: by name)")
    parser.add_argument(
        "--allocator-default",
        action="store_true",
        help="on the CPU, leave glibc's allocator as it is (the baseline for the trainer's "
        "keep_freed_memory; alternate runs with and without it)",
    )
    parser.add_argument("overrides", nargs="*", metavar="group.key=value")
    args = parser.parse_args()

    from accelerate import Accelerator

    cfg = load_config(args.recipe, args.overrides)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    precision, note = pick_precision(cfg.train.mixed_precision, device)
    accelerator = Accelerator(mixed_precision=precision)
    gpu = device.type == "cuda"
    kept = not gpu and not args.allocator_default and keep_freed_memory()  # as the trainer does on the CPU
    batch = args.batch or (128 if gpu else 8)
    steps = args.steps or (30 if gpu else 5)
    if gpu:
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True

    model = build_model(cfg)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay), lr=1e-4, betas=tuple(cfg.optim.betas))
    model, optimizer = accelerator.prepare(model, optimizer)
    size, T = cfg.model.img_size, cfg.data.num_frames
    frames = torch.randint(0, 256, (batch, T, 3, size, size), dtype=torch.uint8, device=accelerator.device)

    def step():
        loss, _, _ = model(normalize(frames))
        accelerator.backward(loss)
        accelerator.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        accelerator.unwrap_model(model).after_step(1, steps)  # a method's own update (CMAE's EMA), as the trainer
        return loss

    def sync():
        if gpu:
            torch.cuda.synchronize()

    for _ in range(args.warmup):
        step()
    sync()
    flops_per_step = count_flops(step, accelerator.unwrap_model(model))
    sync()
    if gpu:
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(steps):
        loss = step()
    loss.item()
    sync()
    elapsed = time.perf_counter() - start

    pairs_per_s = steps * batch / elapsed
    achieved = flops_per_step * steps / elapsed / 1e12
    peak = args.peak_tflops or peak_tflops(device)
    number_format = {"no": "fp32"}.get(accelerator.mixed_precision, accelerator.mixed_precision)
    measured = matmul_peak(number_format, device) / 1e12
    name = torch.cuda.get_device_name(device) if gpu else f"CPU ({torch.get_num_threads()} threads)"
    report = dict(
        device=name,
        recipe=args.recipe,
        method=cfg.model.method,
        frames=T,
        arch=cfg.model.arch,
        patch=cfg.model.patch_size,
        img=size,
        decoder=f"{cfg.siammae.decoder if cfg.model.method == 'siammae' else cfg.model.method} "
        f"{cfg.model.decoder_depth}x{cfg.model.decoder_dim}",
        precision=accelerator.mixed_precision,
        batch=batch,
        steps=steps,
        samples_per_s=round(pairs_per_s, 2),
        step_s=round(elapsed / steps, 4),
        gflops_per_sample=round(flops_per_step / batch / 1e9, 2),
        achieved_tflops=round(achieved, 3),
        mfu=round(achieved / peak, 4) if peak else None,
        measured_peak_tflops=round(measured, 3),
        fraction_of_measured_peak=round(achieved / measured, 4),
        max_memory_gib=round(torch.cuda.max_memory_allocated() / 2**30, 2) if gpu else None,
        freed_memory_kept=kept,
    )
    if note:
        print(f"note: {note}")
    unit = f"clips of {T}" if METHODS[cfg.model.method].clips else "pairs"
    print(
        f"{name}: {pairs_per_s:.1f} {unit}/s ({report['step_s']} s per step of {batch}), "
        f"{report['gflops_per_sample']} GFLOP per sample (fwd+bwd), {achieved:.2f} TFLOP/s"
        + (f", MFU {report['mfu']:.1%} of the datasheet peak" if report["mfu"] else "")
    )
    print(
        f"limit: {measured:.2f} TFLOP/s {number_format} matmul (measured, {torch.get_num_threads()} threads); "
        f"the step reaches {achieved / measured:.0%} of it"
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
