#!/usr/bin/env python3
"""Measure on a GPU what only a GPU can, in one command, and print one JSON report (last line).

  python tools/gpu_check.py                  # a machine with a CUDA GPU: under 8 minutes
  python tools/gpu_check.py --cpu-dry-run    # the same code at toy sizes on the CPU (the test suite runs it)

Checks, each recorded in the report (a failed one as its error; the exit status is 1 if any failed):
  device       GPU, memory, torch / CUDA / cuDNN / timm / accelerate versions
  throughput   ViT-S/16 SiamMAE at 224 (and ViT-S/8 with --vits8): fwd+bwd+AdamW pairs/s and MFU in
               fp32 (TF32), bf16 and fp16 (loss-scaled), with the SDPA kernels that actually ran
               (read off the profiler's op names, not assumed)
  training     a run of the base recipe's model on shards this script makes itself (synthetic videos ->
               siammae shard -> siammae.train with the default data workers): pairs/s and the share of
               each step spent waiting for data (does the loader keep the GPU fed?)
  memory       peak allocated memory at batch 64 and the largest batch that fits (doubling until out of
               memory)
  propagation  siammae propagate on a synthetic DAVIS set on the device (siammae preset, fp32 and each of
               bf16 / fp16 the device computes natively): frames/s
  cpu_vs_device the same propagation on the CPU: J&F within 0.005 of the device's
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [os.fspath(REPO), os.fspath(REPO / "tools")]

import torch  # noqa: E402
from bench_train import peak_tflops  # noqa: E402

from siammae.config import load_config  # noqa: E402
from siammae.data.pixels import normalize  # noqa: E402
from siammae.models import build_model  # noqa: E402
from siammae.propagate.precision import native_precisions  # noqa: E402
from siammae.train.loop import AUTOCAST_DTYPES  # noqa: E402
from siammae.train.schedule import param_groups  # noqa: E402

DTYPES = {"fp32": AUTOCAST_DTYPES["no"], "bf16": AUTOCAST_DTYPES["bf16"], "fp16": AUTOCAST_DTYPES["fp16"]}


@dataclass
class Sizes:
    """How big each check is: the GPU run, or the toy CPU dry run of the same code."""

    overrides: tuple  # applied to the base recipe (the dry run shrinks the model)
    precisions: tuple
    batch: int
    steps: int
    train_steps: int
    train_batch: int
    train_videos: int
    memory_batch: int
    memory_cap: int
    davis: dict  # synth_davis arguments
    cpu_sequences: int  # sequences of that set also propagated on the CPU
    propagate_size: int = 0  # short side frames are propagated at; 0: the preset's (480)


# fmt: off
GPU = Sizes(overrides=(), precisions=("fp32", "bf16", "fp16"), batch=128, steps=20, train_steps=200, train_batch=256,
            train_videos=32, memory_batch=64, memory_cap=4096, davis=dict(num_sequences=4, frames=30, size=(480, 854)),
            cpu_sequences=2)
DRY = Sizes(overrides=("model.arch=vit_tiny", "model.img_size=64", "model.patch_size=8", "model.decoder_depth=2",
                       "model.decoder_dim=128", "model.decoder_heads=4", "model.mask_ratio=[0.0,0.9]"),
            precisions=("fp32", "bf16"), batch=2, steps=2, train_steps=4, train_batch=4, train_videos=3, memory_batch=2,
            memory_cap=4, davis=dict(num_sequences=2, frames=4, size=(96, 160)), cpu_sequences=2, propagate_size=96)
# fmt: on


def device_report(device) -> dict:
    import accelerate
    import timm

    report = dict(
        torch=torch.__version__,
        timm=timm.__version__,
        accelerate=accelerate.__version__,
        cuda=torch.version.cuda,
        cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
    )
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        report.update(
            name=props.name, memory_gib=round(props.total_memory / 2**30, 1), capability=f"{props.major}.{props.minor}"
        )
    else:
        report.update(name=f"CPU ({torch.get_num_threads()} threads)")
    return report


def make_step(model, device, precision: str, batch: int):
    """One SiamMAE training step (fwd + bwd + gradient clipping + AdamW) on random frames, in
    ``precision`` with autocast and, for fp16, a loss scaler: what the trainer does on this device
    (without Accelerate, which allows one precision per process)."""
    cfg_size = model.patch_size * model.grid[0]
    frames = torch.randint(0, 256, (batch, 2, 3, cfg_size, cfg_size), dtype=torch.uint8, device=device)
    optimizer = torch.optim.AdamW(param_groups(model, 0.05), lr=1e-4, betas=(0.9, 0.95))
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def step():
        with torch.autocast(device.type, dtype=DTYPES[precision], enabled=precision != "fp32"):
            loss = model(normalize(frames)).loss
        scaler.scale(loss).backward()
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)
        return loss

    return step


def sync(device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def sdpa_kernels(step, device) -> list:
    """Names of the attention ops one step ran (e.g. aten::_scaled_dot_product_flash_attention)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        step()
        sync(device)
    return sorted({e.key for e in prof.key_averages() if "scaled_dot_product" in e.key and e.key.startswith("aten::_")})


def throughput(cfg, device, precision: str, sizes: Sizes, label: str) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    torch.manual_seed(0)
    model = build_model(cfg).to(device)
    step = make_step(model, device, precision, sizes.batch)
    for _ in range(2):
        step()
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    kernels = sdpa_kernels(step, device)
    sync(device)
    start = time.perf_counter()
    for _ in range(sizes.steps):
        loss = step()
    loss.item()
    sync(device)
    elapsed = time.perf_counter() - start
    achieved = counter.get_total_flops() * sizes.steps / elapsed / 1e12
    peak = peak_tflops(device)
    if peak and precision == "fp32":
        peak = peak / 2  # TF32 tensor cores run at half the dense bf16 rate
    return dict(
        model=label,
        precision=precision,
        batch=sizes.batch,
        pairs_per_s=round(sizes.batch * sizes.steps / elapsed, 1),
        tflops=round(achieved, 2),
        mfu=round(achieved / peak, 4) if peak else None,
        sdpa_kernels=kernels,
        flash=any("flash" in k for k in kernels),
    )


def memory(cfg, device, sizes: Sizes) -> dict:
    """Peak memory of a bf16 step at ``memory_batch``, then the largest batch (doubling) that fits."""

    def peak_of(batch):
        torch.manual_seed(0)
        model = build_model(cfg).to(device)
        step = make_step(model, device, "bf16", batch)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        step()
        sync(device)
        if device.type == "cuda":
            return torch.cuda.max_memory_allocated(device) / 2**30
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return rss / (2**30 if sys.platform == "darwin" else 2**20)  # CPU: process peak RSS

    report = dict(
        kind="max_memory_allocated" if device.type == "cuda" else "process peak RSS (CPU)",
        batch=sizes.memory_batch,
        peak_gib=round(peak_of(sizes.memory_batch), 2),
    )
    largest, batch = sizes.memory_batch, sizes.memory_batch * 2
    while batch <= sizes.memory_cap:
        try:
            peak_of(batch)
        except torch.cuda.OutOfMemoryError:
            break
        largest, batch = batch, batch * 2
    report.update(largest_batch=largest, capped=largest * 2 > sizes.memory_cap)
    return report


def training(work: Path, device, sizes: Sizes, dry: bool) -> dict:
    """Synthetic videos -> shards -> the trainer on the base recipe's model; data wait from metrics.jsonl."""
    from siammae.shard import EncodeSpec, SampleSpec, ShardConfig, shard
    from siammae.synth.scenes import synth_videos
    from siammae.train import train
    from siammae.train.loop import pick_precision

    videos, shards, run = work / "videos", work / "shards", work / "run"
    synth_videos(videos, num_videos=sizes.train_videos, frames=48 if dry else 96, size=(96, 128) if dry else (256, 340))
    config = ShardConfig(sample=SampleSpec(per_video=4 if dry else 32), encode=EncodeSpec(short_side=0 if dry else 256))
    shard(videos, shards, config, progress=False, log=lambda _: None)
    overrides = [*sizes.overrides, f"data.shards={shards}", f"train.output_dir={run}",
                 f"train.global_batch_size={sizes.train_batch}",
                 f"train.samples={sizes.train_steps * sizes.train_batch}",
                 "train.log_every=1" if dry else "train.log_every=10", f"train.save_every={sizes.train_steps}",
                 "train.recon_every=0", "train.log_with=none",
                 "data.shuffle_buffer=64" if dry else "data.shuffle_buffer=2000",
                 *(["data.num_workers=1"] if dry else [])]  # fmt: skip
    cfg = load_config("base", overrides)
    summary = train(cfg)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steady = records[1:] or records  # the first window holds the loader's start-up
    return dict(
        steps=summary["steps"],
        batch=sizes.train_batch,
        precision=pick_precision(cfg.train.mixed_precision, device)[0],
        data_workers=cfg.data.num_workers,
        pairs_per_s=summary["samples_per_s"],
        data_wait_mean=round(sum(r["data_wait"] for r in steady) / len(steady), 4),
        data_wait_max=round(max(r["data_wait"] for r in steady), 4),
        overflow_steps=records[-1]["overflow"],
        nonfinite_steps=records[-1]["nonfinite"],
    )


def propagate(davis: Path, out: Path, device: str, precision: str, sequences=None, size: int = 0) -> dict:
    """``siammae propagate`` as a user runs it (random ViT-S/16, siammae preset, at short side ``size``
    where given); J&F and frames/s."""
    from siammae.tasks.davis import check_davis
    from siammae.tasks.jandf import evaluate

    names = [s.name for s in check_davis(davis)][:sequences]
    command = [sys.executable, "-m", "siammae", "propagate", "--davis", os.fspath(davis), "--checkpoint",
               "vit_small_patch16_224", "--random-init", "--protocol", "siammae", "--device", device, "--precision",
               precision, "--sequences", ",".join(names), "--no-eval", "--no-diagnostics", "--quiet", "--out",
               os.fspath(out), *(["--size", str(size)] if size else [])]  # fmt: skip
    subprocess.run(
        command, check=True, capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.fspath(REPO))
    )
    timing = json.loads((out / "propagation.json").read_text())["timing"]
    jf = evaluate(davis, out, "val", names).global_row()["J&F-Mean"]
    return dict(
        device=device, precision=precision, frames=timing["frames"], frames_per_s=timing["fps"], jf=round(jf, 4)
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cpu-dry-run", action="store_true", help="toy sizes on the CPU (no GPU needed)")
    parser.add_argument("--vits8", action="store_true", help="also time ViT-S/8 (the vits8 recipe)")
    parser.add_argument("--work", type=Path, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    dry = args.cpu_dry_run
    if not dry and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --cpu-dry-run to check the script itself", file=sys.stderr)
        return 2
    device, sizes = torch.device("cpu" if dry else "cuda"), DRY if dry else GPU
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    work = args.work or Path(tempfile.mkdtemp(prefix="siammae-gpu-check-"))
    report, failed, started = dict(mode="cpu-dry-run" if dry else "gpu"), [], time.perf_counter()

    def check(name, fn):
        t0 = time.perf_counter()
        try:
            report[name] = fn()
        except Exception as e:  # noqa: BLE001 - every failure is recorded, the other checks still run
            report[name] = dict(error=f"{type(e).__name__}: {e}", traceback=traceback.format_exc()[-2000:])
            failed.append(name)
        print(
            f"[{time.perf_counter() - started:6.1f} s] {name}: {'FAILED' if name in failed else 'ok'} "
            f"({time.perf_counter() - t0:.1f} s)",
            file=sys.stderr,
            flush=True,
        )

    check("device", lambda: device_report(device))
    base = load_config("base", sizes.overrides)
    models = [("vit_small_patch16_224" if not dry else "vit_tiny (dry run)", base)]
    if args.vits8:
        models.append(("vit_small_patch8_224", load_config("vits8", sizes.overrides)))
    check(
        "throughput",
        lambda: [throughput(cfg, device, p, sizes, label) for label, cfg in models for p in sizes.precisions],
    )
    check("memory", lambda: memory(base, device, sizes))
    check("training", lambda: training(work / "training", device, sizes, dry))

    def propagation():
        from siammae.synth.scenes import synth_davis

        davis = work / "davis"
        if not davis.is_dir():
            synth_davis(davis, **sizes.davis)
        runs = [
            propagate(davis, work / f"prop-{p}", device.type, p, size=sizes.propagate_size)
            for p in native_precisions(device)
        ]
        return dict(runs=runs, frames_per_s=runs[0]["frames_per_s"])

    check("propagation", propagation)

    def cpu_vs_device():
        # The device's fp32 predictions are those of the propagation check, scored on the same subset.
        # (In the dry run both sides are the CPU: the check runs, it cannot disagree.)
        from siammae.tasks.davis import check_davis
        from siammae.tasks.jandf import evaluate

        davis = work / "davis"
        cpu = propagate(davis, work / "prop-cpu", "cpu", "fp32", sizes.cpu_sequences, sizes.propagate_size)
        names = [s.name for s in check_davis(davis)][: sizes.cpu_sequences]
        here = dict(jf=round(evaluate(davis, work / "prop-fp32", "val", names).global_row()["J&F-Mean"], 4))
        difference = round(here["jf"] - cpu["jf"], 4)
        if abs(difference) > 0.005:
            raise AssertionError(f"J&F {here['jf']} on {device.type} vs {cpu['jf']} on the CPU")
        return dict(device_jf=here["jf"], cpu_jf=cpu["jf"], jf_difference=difference)

    check("cpu_vs_device", cpu_vs_device)
    report.update(failed=failed, ok=not failed, seconds=round(time.perf_counter() - started, 1))
    print(json.dumps(report))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
