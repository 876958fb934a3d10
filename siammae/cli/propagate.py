"""``siammae propagate``: DAVIS-2017 label propagation with a frozen encoder, then J&F.

A thin wrapper over :mod:`siammae.checkpoint`, :mod:`siammae.propagate` and :mod:`siammae.measures`;
torch is imported inside the command so ``--help`` is instant.
"""

import json
from pathlib import Path

import click

from siammae.cli import Command
from siammae.cli.evaluate import parse_sequences, run_evaluation

PROTOCOL_NAMES = ["siammae", "dino", "crw", "siammae-jhmdb", "siammae-vip"]


def encoder_options(f=None, *, required=True):
    """--checkpoint / --weights / --weights-prefix, shared with ``export`` and ``benchmark``."""
    if f is None:
        return lambda g: encoder_options(g, required=required)
    options = [
        click.option("--checkpoint", required=required,
                     help="A training run folder (newest complete checkpoint), a checkpoint folder or file, "
                          "an exported encoder.safetensors, a timm ViT name (with --weights or --random-init), "
                          "or published weights by name: a timm pretrained tag (vit_small_patch16_224.dino), "
                          "hf-hub:owner/repo or local-dir:PATH (from the Hugging Face cache when offline)."),
        click.option("--weights", type=click.Path(exists=True, dir_okay=False),
                     help="Weights file (.safetensors, or .pth/.pt/.bin read with weights_only=True) for a "
                          "timm model name given as --checkpoint, e.g. DINO or MAE weights."),
        click.option("--weights-prefix", default=None,
                     help="Keep only keys with this prefix (stripped). Default: 'encoder.' of a SiamMAE "
                          "or CMAE checkpoint (CMAE's online encoder; 'target_encoder.' for its momentum "
                          "encoder) or 'backbone.' of a DINO one when present, else all keys."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def open_encoder(checkpoint, weights, weights_prefix, random_init):
    """The encoder and its description; random weights are drawn with seed 0, so a random baseline is
    the same network on every run (and ``benchmark --compare`` can say so)."""
    import torch

    from siammae.checkpoint import load_encoder

    if random_init:
        torch.manual_seed(0)
    return load_encoder(checkpoint, weights=weights, random_init=random_init, prefix=weights_prefix)


def pick_device(name):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint="--device")
    return name


def compute_options(f):
    """--device / --batch-size / --precision, shared with ``benchmark``."""
    options = [
        click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
        click.option("--batch-size", type=click.IntRange(min=1), default=None,
                     help="Frames per forward pass. Default: as many as fit an activation budget (32 MB on the "
                          "CPU: one 480p frame, the fastest there; 2 GB on a GPU)."),
        click.option("--precision", type=click.Choice(["fp32", "bf16", "fp16", "auto"]), default="fp32",
                     show_default=True,
                     help="Number format of the encoder's forward pass (autocast); affinity and labels stay "
                          "fp32. auto: bf16 on a CPU with AVX512-BF16/AMX or a CUDA GPU with bf16, fp16 on "
                          "other GPUs, else fp32. A format the device lacks natively is an error."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def dataset_options(f):
    """--davis / --jhmdb (+ --jhmdb-list) / --vip, shared with ``benchmark``."""
    options = [
        click.option("--davis", type=click.Path(exists=True, file_okay=False),
                     help="DAVIS-2017 root (JPEGImages/, Annotations/, ImageSets/): masks, J&F."),
        click.option("--jhmdb", type=click.Path(exists=True, file_okay=False),
                     help="JHMDB root (Rename_Images/, joint_positions/): 15 joints, PCK@0.1 and @0.2."),
        click.option("--jhmdb-list", type=click.Path(exists=True, dir_okay=False),
                     help="JHMDB video list (default: the standard test list of split 1 in the root)."),
        click.option("--vip", type=click.Path(exists=True, file_okay=False),
                     help="VIP root (VIP_Fine/ with Images/, Annotations/Category_ids/, lists/): 20 parts, mIoU."),
    ]
    for option in reversed(options):
        f = option(f)
    return f


@click.command(cls=Command)
@dataset_options
@encoder_options
@click.option("--random-init", is_flag=True, help="Use random weights (a baseline, seed 0); needs a timm name or run folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: predictions, the score files, propagation.json (DAVIS) or scores.json.")
@click.option("--split", default="val", show_default=True, help="DAVIS: ImageSets/2017/<split>.txt.")
@click.option("--sequences", default=None, help="DAVIS: comma-separated subset of the split's sequences.")
@click.option("--resolution", default="480p", show_default=True, help="DAVIS: 480p or Full-Resolution.")
@click.option("--protocol", type=click.Choice(PROTOCOL_NAMES), default=None,
              help="Preset: siammae (paper Table 4b for DAVIS, temperature 0.7), dino, crw, siammae-jhmdb "
                   "(Table 4b, 320x320), siammae-vip (Table 4b, long side 880). Default: for DAVIS the run's "
                   "eval.protocol, else siammae; siammae-jhmdb / siammae-vip for the others. Flags below "
                   "override single knobs.")
@click.option("--topk", type=click.IntRange(min=1), help="Context tokens each target token averages.")
@click.option("--queue", type=click.IntRange(min=0), help="Previous predicted frames kept as context.")
@click.option("--radius", type=click.FloatRange(min=0), help="Local window radius in tokens (0: none).")
@click.option("--window", type=click.Choice(["disk", "square"]), help="Window shape.")
@click.option("--window-on-first/--no-window-on-first", default=None, help="Restrict the first frame too.")
@click.option("--temperature", type=click.FloatRange(min=0, min_open=True), help="Softmax temperature.")
@click.option("--size", "short_side", type=click.IntRange(min=0),
              help="Short side of the network input in pixels (0: native).")
@click.option("--multiple", type=click.IntRange(min=0), help="Long side made a multiple of this (0: patch).")
@click.option("--first-labels", type=click.Choice(["area", "nearest"]), help="First mask onto the token grid.")
@click.option("--keep-small/--no-keep-small", default=None, help="Every first-frame object keeps >= 1 token.")
@click.option("--minmax/--no-minmax", default=None, help="Min-max rescale soft labels before argmax (DINO).")
@compute_options
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="DAVIS: sequences propagated at once by worker processes, each with its share of the CPU "
                   "threads (several GPUs: accelerate launch -m siammae.propagate ...).")
@click.option("--overlay", type=click.IntRange(min=0), default=0, is_flag=False, flag_value=8,
              help="Write OUT/overlays/<seq>.png, N frames with their predicted masks (--overlay alone: 8).")
@click.option("--no-eval", is_flag=True, help="Do not compute J&F afterwards.")
@click.option("--no-diagnostics", is_flag=True,
              help="Skip the feature diagnostics (4 more frames per sequence through the encoder).")
@click.option("--quiet", is_flag=True, help="No progress bars.")
def propagate(davis, jhmdb, jhmdb_list, vip, checkpoint, weights, weights_prefix, random_init, out, split, sequences,
              resolution, protocol, topk, queue, radius, window, window_on_first, temperature, short_side, multiple,
              first_labels, keep_small, minmax, device, batch_size, precision, workers, overlay, no_eval, no_diagnostics,
              quiet):
    """Propagate the first frame's labels through the videos of one dataset, then score them:
    DAVIS-2017 masks (J&F), JHMDB joints (PCK) or VIP human parts (mIoU).

    Features: the encoder's last block after the final norm, [CLS] dropped, tokens L2-normalised.
    Each frame's labels are the softmax-weighted top-k of the first frame's and the last QUEUE
    frames' soft labels. Every setting used is written to OUT/propagation.json.

    \b
    siammae propagate --davis DAVIS --checkpoint runs/siammae --out out/
    siammae propagate --davis DAVIS --checkpoint vit_small_patch16_224 --weights dino.pth \\
        --protocol dino --out out/dino
    siammae propagate --jhmdb JHMDB --checkpoint runs/siammae --out out/jhmdb
    """
    roots = {t: r for t, r in (("davis", davis), ("jhmdb", jhmdb), ("vip", vip)) if r}
    if len(roots) != 1:
        raise click.UsageError("give one dataset: --davis, --jhmdb or --vip (all three: siammae benchmark)")
    knobs = dict(topk=topk, queue=queue, radius=radius, window=window, window_on_first=window_on_first,
                 temperature=temperature, short_side=short_side, multiple=multiple, first_labels=first_labels,
                 keep_small=keep_small, minmax=minmax)
    if not davis:
        (task, root), = roots.items()
        source = click.get_current_context().get_parameter_source
        davis_only = [f"--{n.replace('_', '-')}" for n in ("split", "sequences", "resolution", "overlay", "no_eval",
                                                           "workers", "no_diagnostics") if source(n).name != "DEFAULT"]
        if davis_only:
            raise click.UsageError(f"{', '.join(davis_only)}: DAVIS options, not for --{task}")
        return propagate_task(task, root, checkpoint, weights, weights_prefix, random_init, out, protocol, knobs,
                              pick_device(device), dict(batch_size=batch_size, precision=precision), quiet, jhmdb_list)
    from siammae.davis import require_annotations
    from siammae.parallel import launched_processes
    from siammae.precision import resolve_precision
    from siammae.propagate import check_davis, choose_protocol
    from siammae.propagate import propagate as run

    device = pick_device(device)
    resolve_precision(precision, device)  # a format the device lacks: an error before any work
    seqs = check_davis(davis, split, parse_sequences(sequences), resolution)  # before loading weights
    if not no_eval:
        require_annotations(seqs, hint="pass --no-eval to only propagate (e.g. test-dev)")
    encoder, info = open_encoder(checkpoint, weights, weights_prefix, random_init)
    chosen = choose_protocol(protocol, info.config.eval if info.config is not None else None, **knobs)
    record = run(encoder, davis, out, chosen, split=split, sequences=parse_sequences(sequences),
                 resolution=resolution, device=device, batch_size=batch_size, overlay=overlay,
                 progress=not quiet, settings=dict(encoder=info.to_dict()), precision=precision, workers=workers,
                 processes=launched_processes())
    if record is None:  # another process of `accelerate launch`: the main one merges and scores
        return
    t = record["timing"]
    from siammae.diagnostics import describe
    from siammae.files import write_atomic
    click.echo(f"propagated {len(record['sequences'])} sequences, {t['frames']} frames in {t['seconds']:.1f} s "
               f"({t['fps']:.2f} frames/s, {record['precision']}) with protocol {chosen.name} -> {out}")
    if not no_diagnostics:
        diag = feature_diagnostics(encoder, seqs, chosen, device, record["precision"], davis, split, resolution,
                                   with_copy=not no_eval)
        click.echo(describe(diag))
        record["diagnostics"] = diag
        write_atomic(Path(out) / "propagation.json", json.dumps(record, indent=2) + "\n")
    if not no_eval:
        run_evaluation(davis, out, split, record["sequences"], resolution)


def feature_diagnostics(encoder, seqs, protocol, device, precision, davis, split, resolution, with_copy: bool) -> dict:
    """The encoder's token figures (and the copy-in-place J&F), added to OUT/propagation.json by the caller."""
    import tempfile

    from siammae.diagnostics import copy_first_frame_jf, encoder_diagnostics
    from siammae.propagate import FeatureExtractor

    diag = encoder_diagnostics(FeatureExtractor(encoder, protocol, device, precision), seqs)
    if with_copy:
        with tempfile.TemporaryDirectory(prefix="siammae-copy-") as tmp:
            diag["copy_jf"] = round(copy_first_frame_jf(davis, seqs, tmp, split, resolution), 4)
    return diag


def propagate_task(task, root, checkpoint, weights, weights_prefix, random_init, out, protocol, knobs, device,
                   compute, quiet, jhmdb_list):
    """``siammae propagate --jhmdb`` / ``--vip``: the task's preset, then the flags; scores printed."""
    from siammae.precision import resolve_precision
    from siammae.propagate import choose_protocol
    from siammae.tasks import load_dataset, run_task

    resolve_precision(compute["precision"], device)
    chosen = choose_protocol(protocol, task=task, **knobs)  # the settings and every file are checked
    data = load_dataset(task, root, list_file=jhmdb_list)  # before the weights load
    encoder, info = open_encoder(checkpoint, weights, weights_prefix, random_init)
    record = run_task(task, encoder, root, out, chosen, data=data, device=device, progress=not quiet, **compute)
    t = record["timing"]
    click.echo(f"propagated {t['frames']} frames in {t['seconds']:.1f} s ({t['fps']:.2f} frames/s, "
               f"{record['precision']}) with protocol {chosen.name} -> {out}")
    click.echo(f"{task}: " + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in record["scores"].items())
               + f"  (files: {', '.join(record['files'])})")

