"""Label-propagation speed per task: frames/s of feature extraction and of propagation, peak memory,
and the fraction of the machine's limit the feature extraction reaches.

    python tools/bench_propagate.py                       # ViT-S/16, DAVIS, JHMDB and VIP, each its preset
    python tools/bench_propagate.py --task davis --model vit_small_patch8_224 --device cuda --frames 60
    python tools/bench_propagate.py --task davis --precision fp32 --compile   # + the forward compiled
    python tools/bench_propagate.py --davis SET --dino ~/src/dino --protocol dino   # whole commands vs DINO's

Random weights (speed does not depend on them) and random frames at each task's usual size: DAVIS
480x854 (4 labels: background + 3 objects), JHMDB 240x320 (16: background + 15 joint heat maps, decoded
to coordinates), VIP 720x1280 (20 part classes). Feature extraction is timed over batches of
``--batch-size`` frames; propagation in the steady state (the queue already full), one frame at a time,
including the task's read-out (upsampling + argmax, or decoding the joints). PNG writing and image
decoding are not included. Peak memory: CUDA allocator peak on a GPU, the process's peak resident set
size on the CPU; with ``--task all`` each task runs in its own process so each peak is its own.

The limit (siammae.limits): the matmul peak measured in the same process in the forward's number
format on the same threads, and the forward's FLOPs (attention included); the fraction is the time a
frame would take at the peak over the time it took. Beside it, the fraction of the limit with the
attention's softmax added (its elements at the measured rate of an in-cache fp32 softmax): on a CPU
with AMX that vector work costs more than the attention's matmuls at the peak, so no kernel that
computes it at PyTorch's rate gets near the matmul-only limit.

With ``--davis SET`` whole ``siammae propagate`` commands are timed on a DAVIS-format set, one per
precision (the default's row marked), beside a reference command: ``--dino CHECKOUT`` runs DINO's own
``eval_video_segmentation.py`` from a checkout you fetched (github.com/facebookresearch/dino; read,
never copied) on the CPU with the same random weights, written in DINO's format; its ``.cuda()`` calls
are made no-ops and its palette download is answered with the DAVIS palette by a shim around it, the
script itself is not changed. Every output is scored by siammae's DAVIS evaluator.
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import sys
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np
import torch

from siammae.limits import count_flops, count_softmax, measure_limit
from siammae.propagate.precision import DEFAULT, PRECISIONS


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# task -> (frame height, width, labels propagated)
TASK_SHAPES = {"davis": (480, 854, 4), "jhmdb": (240, 320, 16), "vip": (720, 1280, 20)}


def main(argv=None):
    from siammae.propagate.protocol import PROTOCOLS
    from siammae.tasks import TASKS

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--task", default="all", choices=["all", *TASK_SHAPES])
    ap.add_argument("--model", default="vit_small_patch16_224")
    ap.add_argument("--protocol", default=None, choices=sorted(PROTOCOLS), help="default: the task's preset")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--frames", type=int, default=16, help="frames timed in each part")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--precision", default=DEFAULT, choices=PRECISIONS, help="per task: the forward's number format")
    ap.add_argument("--profile", action="store_true", help="per task: where a frame's forward pass spends its time")
    ap.add_argument(
        "--compile",
        action="store_true",
        help="per task: also time the forward compiled by torch.compile (inductor; on a CPU with freezing, "
        "which packs the weights for oneDNN and fuses the elementwise ops), and what compiling cost",
    )
    ap.add_argument("--davis", help="time whole commands on this DAVIS-format set instead (see above)")
    ap.add_argument("--weights", help="with --davis: the encoder's weights file (default: random, seed 0)")
    ap.add_argument(
        "--precisions",
        help="with --davis: siammae runs, comma-separated (default: fp32 and each of "
        "bf16 / fp16 the device computes natively)",
    )
    ap.add_argument("--reference", help="with --davis: a command to time beside ours; {davis} and {out} are filled in")
    ap.add_argument("--dino", help="with --davis: a checkout of facebookresearch/dino, whose script is the reference")
    ap.add_argument("--out", default="bench-propagate", help="with --davis: the runs' output folders")
    args = ap.parse_args(argv)
    if args.davis:
        return bench_commands(args)
    if args.task == "all":  # each task in its own process: its own peak memory
        import subprocess

        same = ["--model", args.model, "--device", args.device, "--frames", str(args.frames), "--batch-size",
                str(args.batch_size), "--precision", args.precision, *(["--profile"] if args.profile else []),
                *(["--compile"] if args.compile else []),
                *(["--protocol", args.protocol] if args.protocol else [])]  # fmt: skip
        for task in TASK_SHAPES:
            subprocess.run([sys.executable, __file__, "--task", task, *same], check=True)
            print()
        return 0
    return bench_task(args.task, PROTOCOLS[args.protocol or TASKS[args.task].preset], args)


def bench_task(task, protocol, args):
    from siammae.encoders import load_encoder
    from siammae.propagate.affinity import LabelPropagator
    from siammae.propagate.features import FeatureExtractor
    from siammae.propagate.loop import soft_to_ids
    from siammae.tasks.jhmdb import decode_joints

    device = torch.device(args.device)
    encoder, info = load_encoder(args.model, random_init=True)
    extractor = FeatureExtractor(encoder, protocol, device, args.precision)
    H, W, L = TASK_SHAPES[task]
    size = extractor.input_size(H, W)
    grid = (size[0] // extractor.patch, size[1] // extractor.patch)
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (H, W, 3), dtype=np.uint8) for _ in range(args.batch_size)]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    # Feature extraction: one warm-up batch, then enough batches for --frames frames.
    extractor(frames)
    sync(device)
    batches = max(1, -(-args.frames // args.batch_size))
    t0 = time.perf_counter()
    for _ in range(batches):
        feats = extractor(frames)
    sync(device)
    feat_fps = batches * args.batch_size / (time.perf_counter() - t0)
    limit = forward_limit(extractor, frames[:1])

    # Propagation in the steady state: fill the queue, then time --frames steps.
    first = torch.softmax(torch.randn(L, grid[0] * grid[1], device=device), 0)
    prop = LabelPropagator(protocol, grid, feats[0], first)
    for i in range(protocol.queue + 1):
        prop.step(feats[i % len(feats)])
    sync(device)
    t0 = time.perf_counter()
    stride = (H / grid[0], W / grid[1])
    for i in range(args.frames):
        soft = prop.step(feats[i % len(feats)])
        out = decode_joints(soft, grid, stride) if task == "jhmdb" else soft_to_ids(soft, grid, (H, W), protocol.minmax)
    sync(device)
    prop_fps = args.frames / (time.perf_counter() - t0)

    if device.type == "cuda":
        peak = f"{torch.cuda.max_memory_allocated(device) / 2**30:.2f} GiB GPU (allocator peak)"
        name = torch.cuda.get_device_name(device)
    else:
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
        peak = f"{rss / 2**20:.2f} GiB process RSS"
        name = f"CPU, {torch.get_num_threads()} threads"
    both = 1 / (1 / feat_fps + 1 / prop_fps)
    print(f"task              {task} ({L} labels)")
    print(f"device            {name}")
    print(
        f"model             {info.timm_model} (patch {extractor.patch}), protocol {protocol.name} "
        f"(top-k {protocol.topk}, queue {protocol.queue}, radius {protocol.radius:g})"
    )
    print(f"frames            {H}x{W} -> network input {size[0]}x{size[1]}, grid {grid[0]}x{grid[1]} tokens")
    print(
        f"feature extraction {feat_fps:8.2f} frames/s  (batch {args.batch_size}, {extractor.precision}, "
        f"{extractor.attention} attention): {limit.fraction(1 / feat_fps):.0%} of the limit, "
        f"{limit.fraction_with_softmax(1 / feat_fps):.0%} with the softmax"
    )
    print(f"                   {limit.describe()}")
    print(
        f"propagation        {prop_fps:8.2f} frames/s  (queue full, incl. the read-out: {type(out).__name__} "
        f"{tuple(out.shape)})"
    )
    print(f"together           {both:8.2f} frames/s")
    if args.profile:
        print(profile_forward(extractor, frames[:1]))
    if args.compile:
        print(compiled_forward(extractor, frames, batches, limit))
    print(f"peak memory        {peak}")
    return 0


def profile_forward(extractor, frames, rows: int = 8) -> str:
    """The ops a frame's forward pass spends its time in, by self time (torch.profiler), as text."""
    from torch.profiler import ProfilerActivity, profile

    extractor(frames)
    with profile(activities=[ProfilerActivity.CPU]) as prof:  # on a GPU: the time the CPU spends launching
        extractor(frames)
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    lines = [f"where a frame's forward pass goes ({total / 1e3:.0f} ms of CPU time in ops):"]
    lines += [f"  {e.key:52s} {e.self_cpu_time_total / 1e3:8.1f} ms {e.self_cpu_time_total / total:6.1%}  x{e.count}"
              for e in events[:rows]]  # fmt: skip
    return "\n".join(lines)


def compiled_forward(extractor, frames, batches: int, limit) -> str:
    """The extractor's forward pass compiled with ``torch.compile`` (inductor; freezing on a CPU), timed
    like the eager one: its rate, its fraction of the same limit, and the seconds the first call took
    (compiling for this frame size; with freezing the weights are constants of the compiled code, so
    inductor's on-disk cache does not spare a new process that time). siammae does not compile:
    this measures what it would buy (docs/benchmarks.md, "CPU precision")."""
    if extractor.protocol.layer:  # block_tokens then runs the blocks one by one, not forward_features
        return "compiled           (not measured: --compile times the whole forward, the protocol reads a block)"
    network = extractor.network
    options = {"freezing": True} if extractor.device.type == "cpu" else None
    network.forward_features = torch.compile(network.forward_features, options=options)
    try:
        t0 = time.perf_counter()
        extractor(frames)
        sync(extractor.device)
        first = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(batches):
            extractor(frames)
        sync(extractor.device)
        fps = batches * len(frames) / (time.perf_counter() - t0)
    finally:
        del network.forward_features  # the class's method again
    return (
        f"compiled           {fps:8.2f} frames/s  (torch.compile{', freezing' if options else ''}): "
        f"{limit.fraction(1 / fps):.0%} of the limit, {limit.fraction_with_softmax(1 / fps):.0%} with the softmax; "
        f"the first call (compiling) took {first:.1f} s"
    )


def forward_limit(extractor, frames):
    """The :class:`siammae.limits.Limit` of the extractor's forward pass on one of ``frames``."""
    flops = count_flops(lambda: extractor(frames), extractor.network)
    softmax = count_softmax(lambda: extractor(frames), extractor.network)
    return measure_limit(flops, extractor.precision, extractor.device, softmax)


# ----------------------------------------------------------------------------- whole commands


def run_measured(cmd, log):
    """Run ``cmd`` (a list, or a string for the shell) -> (wall seconds, peak RSS in GiB of the process)."""
    import os
    import subprocess

    t0 = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, shell=isinstance(cmd, str), stdout=fh, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd if isinstance(cmd, str) else ' '.join(cmd)} failed ({proc.returncode}); see {log}")
    return time.perf_counter() - t0, usage.ru_maxrss / 2**20


# DINO's script on the CPU, unchanged: its .cuda() calls become no-ops and its palette download is
# answered with the DAVIS palette (the same colours, computed by siammae), then it runs as __main__.
DINO_SHIM = """
import io, os, runpy, sys, urllib.request
import torch
from siammae.tasks.davis_files import PALETTE
torch.Tensor.cuda = lambda self, *a, **k: self
torch.nn.Module.cuda = lambda self, *a, **k: self
rows = "".join(f"{PALETTE[i]} {PALETTE[i + 1]} {PALETTE[i + 2]}\\n" for i in range(0, 768, 3)).encode()
urllib.request.urlopen = lambda *a, **k: io.BytesIO(rows)
sys.path.insert(0, os.path.dirname(os.path.abspath(sys.argv[1])))
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def dino_reference(checkout, davis, out, weights, arch):
    """The command that runs DINO's eval_video_segmentation.py from ``checkout`` on the CPU (a list)."""
    from pathlib import Path

    script = Path(checkout) / "eval_video_segmentation.py"
    if not script.is_file():
        raise SystemExit(f"error: --dino {checkout}: no eval_video_segmentation.py (not a checkout of DINO's code)")
    names = {"vit_small_patch16_224": ("vit_small", 16), "vit_small_patch8_224": ("vit_small", 8),
             "vit_base_patch16_224": ("vit_base", 16), "vit_base_patch8_224": ("vit_base", 8)}  # fmt: skip
    if arch not in names:
        raise SystemExit(f"error: --dino runs DINO's ViT-S/B with patch 8 or 16, not {arch}")
    arch, patch = names[arch]
    return [sys.executable, "-c", DINO_SHIM, str(script), "--data_path", str(davis), "--output_dir", str(out),
            "--arch", arch, "--patch_size", str(patch), "--pretrained_weights", str(weights)]  # fmt: skip


def davis_limit(args, seqs, precisions):
    """FLOPs of one frame of the set through the encoder (the protocol's input size) and the matmul peak of
    each precision: {precision: Limit}."""
    from PIL import Image

    from siammae.encoders import open_encoder
    from siammae.propagate.features import FeatureExtractor
    from siammae.propagate.protocol import PROTOCOLS

    encoder, _ = open_encoder(args.model, args.weights, None, not args.weights)
    frame = np.asarray(Image.open(seqs[0].frames[0]).convert("RGB"))
    extractor = FeatureExtractor(encoder, PROTOCOLS[args.protocol or "siammae"], torch.device(args.device))
    flops = count_flops(lambda: extractor([frame]), extractor.network)
    softmax = count_softmax(lambda: extractor([frame]), extractor.network)
    return {p: measure_limit(flops, p, args.device, softmax) for p in sorted(set(precisions) | {"fp32"})}


def bench_commands(args):
    import json
    from pathlib import Path

    from siammae.encoders import open_encoder
    from siammae.propagate.precision import PrecisionError, native_precisions, resolve_precision
    from siammae.tasks.davis import check_davis
    from siammae.tasks.jandf import evaluate

    seqs = check_davis(args.davis)
    frames = sum(len(s.frames) for s in seqs)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    precisions = args.precisions.split(",") if args.precisions else native_precisions(args.device)
    try:  # a precision the device lacks is refused before any run, not after the others
        default = resolve_precision(DEFAULT, args.device)
        for p in precisions:
            resolve_precision(p, args.device)
    except PrecisionError as e:
        raise SystemExit(f"error: {e}") from None
    weights = args.weights
    if args.dino and not weights:  # the random weights siammae draws (seed 0), in a file DINO's script reads
        weights = str(out / "random-weights.pth")
        torch.save(open_encoder(args.model, None, None, True)[0].state_dict(), weights)
    encoder = ["--checkpoint", args.model, *(["--weights", weights] if weights else ["--random-init"])]
    runs = {}
    for p in precisions:
        runs[f"siammae {p}" + (" (default)" if p == default else "")] = (
            [
                sys.executable,
                "-m",
                "siammae",
                "propagate",
                "--davis",
                args.davis,
                *encoder,
                "--protocol",
                args.protocol or "siammae",
                "--precision",
                p,
                "--device",
                args.device,
                "--no-eval",
                "--no-diagnostics",
                "--quiet",
                "--out",
                str(out / f"siammae-{p}"),
            ],  # fmt: skip
            out / f"siammae-{p}",
            p,
        )
    if args.dino:
        runs["DINO's script"] = (dino_reference(args.dino, args.davis, out / "reference", weights, args.model),
                                 out / "reference", "fp32")  # fmt: skip
    elif args.reference:
        runs["reference"] = (args.reference.format(davis=args.davis, out=out / "reference"), out / "reference", "fp32")
    # Measured in a child process: this one stays small, since every run forked from it counts its
    # RSS at the fork in its own peak.
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        limits = pool.submit(davis_limit, args, seqs, precisions).result()
    # The RSS of imports + weights alone, for siammae's working memory.
    _, base_rss = run_measured(
        [
            sys.executable,
            "-c",
            "import sys; from siammae.encoders import open_encoder; "
            "import siammae.tasks.davis; open_encoder(sys.argv[1], sys.argv[2] or None, None, sys.argv[3] == '1')",
            args.model,
            weights or "",
            "0" if weights else "1",
        ],
        out / "baseline.log",
    )
    lim = limits["fp32"]
    print(
        f"set {args.davis}: {len(seqs)} sequences, {frames} frames; {args.model}, protocol "
        f"{args.protocol or 'siammae'}, {torch.get_num_threads()} threads; imports + weights alone {base_rss:.2f} GiB"
    )
    print(
        f"limit: {lim.flops / 1e9:.1f} GFLOP a frame (attention included); measured matmul peak "
        + ", ".join(f"{p} {x.peak / 1e9:.0f} GFLOP/s" for p, x in limits.items())
        + f" -> the {frames} frames' forward passes need at least "
        + ", ".join(f"{x.best_seconds * frames:.0f} s in {p}" for p, x in limits.items())
        + f"; with attention's softmax ({lim.softmax_elements / 1e6:.0f} M elements a frame at "
        f"{lim.softmax_rate / 1e9:.2f} G/s, measured) "
        + ", ".join(f"{x.best_seconds_with_softmax * frames:.0f} s in {p}" for p, x in limits.items())
    )
    print(f"{'run':22s} {'seconds':>8s} {'frames/s':>9s} {'J&F':>7s} {'peak RSS':>9s} {'working':>8s} "
          f"{'speed-up':>9s} {'of limit':>8s} {'forward':>8s} {'+softmax':>8s}")  # fmt: skip
    rows = {}
    for name, (cmd, folder, precision) in runs.items():
        seconds, rss = run_measured(cmd, out / f"{name.split()[0]}-{precision}.log")
        jf = evaluate(args.davis, folder, "val", [s.name for s in seqs]).global_row()["J&F-Mean"]
        floor = limits[precision].best_seconds * frames
        timing = folder / "propagation.json"
        forward = with_softmax = None  # the share of the limit inside siammae's feature extraction alone
        if name.startswith("siammae") and timing.is_file():
            per_sequence = json.loads(timing.read_text())["timing"]["per_sequence"].values()
            feature_seconds = sum(t["feature_seconds"] for t in per_sequence)
            forward = round(floor / feature_seconds, 3)
            with_softmax = round(limits[precision].best_seconds_with_softmax * frames / feature_seconds, 3)
        rows[name] = dict(
            precision=precision,
            seconds=round(seconds, 1),
            fps=round(frames / seconds, 3),
            jf=round(float(jf), 4),
            peak_rss_gib=round(rss, 3),
            working_gib=None if not name.startswith("siammae") else round(rss - base_rss, 3),
            limit_seconds=round(floor, 1),
            fraction_of_limit=round(floor / seconds, 3),
            forward_fraction_of_limit=forward,
            forward_fraction_with_softmax=with_softmax,
        )
    ref = next((r for n, r in rows.items() if not n.startswith("siammae")), None)
    for name, r in rows.items():
        work = "" if r["working_gib"] is None else f"{r['working_gib']:.2f}"
        speed = f"{ref['seconds'] / r['seconds']:.2f}x" if ref else ""
        forward, with_softmax = (
            ("", "") if r["forward_fraction_of_limit"] is None
            else (f"{r['forward_fraction_of_limit']:.0%}", f"{r['forward_fraction_with_softmax']:.0%}")
        )  # fmt: skip
        print(
            f"{name:22s} {r['seconds']:8.1f} {r['fps']:9.3f} {r['jf']:7.4f} {r['peak_rss_gib']:8.2f}G "
            f"{work:>8s} {speed:>9s} {r['fraction_of_limit']:8.0%} {forward:>8s} {with_softmax:>8s}"
        )
    print("of limit: the forward passes' time at the measured peak of the run's precision / the run's wall time;"
          " forward: the same over siammae's feature-extraction time alone; +softmax: forward, the limit with"
          " attention's softmax at the measured softmax rate added")  # fmt: skip
    limit = {"gflop_a_frame": round(lim.flops / 1e9, 2), "threads": lim.threads,
             "softmax_m_elements_a_frame": round(lim.softmax_elements / 1e6, 1),
             "softmax_g_per_s": round(lim.softmax_rate / 1e9, 2),
             **{f"peak_gflops_{p}": round(x.peak / 1e9, 1) for p, x in limits.items()}}  # fmt: skip
    report = dict(davis=args.davis, frames=frames, model=args.model, weights=weights, limit=limit, rows=rows,
                  reference=args.reference or (f"DINO's script from {args.dino}" if args.dino else None))  # fmt: skip
    (out / "bench.json").write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
