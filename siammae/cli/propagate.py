"""``siammae propagate``: label propagation with a frozen encoder on one task's dataset, then its scores.

A thin wrapper over :mod:`siammae.encoders`, :mod:`siammae.tasks` and :mod:`siammae.propagate`. The
protocol options are the :class:`~siammae.propagate.protocol.Protocol` fields themselves and the
dataset options come from the task registry; torch is imported inside the command so ``--help`` is
instant.
"""

import json
from pathlib import Path

import click

from siammae.cli import Command
from siammae.cli.evaluate import parse_sequences, run_evaluation
from siammae.propagate.protocol import PROTOCOLS, command_line_knobs
from siammae.tasks import TASKS


def _apply(f, options):
    for option in reversed(options):
        f = option(f)
    return f


def encoder_options(f=None, *, required=True):
    """--checkpoint / --weights / --weights-prefix, shared with ``export`` and ``benchmark``."""
    if f is None:
        return lambda g: encoder_options(g, required=required)
    return _apply(
        f,
        [
            click.option(
                "--checkpoint",
                required=required,
                help="A training run folder (newest complete checkpoint), a checkpoint folder or file, "
                "an exported encoder.safetensors, a timm ViT name (with --weights or --random-init), "
                "or published weights by name: a timm pretrained tag (vit_small_patch16_224.dino), "
                "hf-hub:owner/repo or local-dir:PATH (from the Hugging Face cache when offline).",
            ),
            click.option(
                "--weights",
                type=click.Path(exists=True, dir_okay=False),
                help="Weights file (.safetensors, or .pth/.pt/.bin read with weights_only=True) for a "
                "timm model name given as --checkpoint, e.g. DINO or MAE weights.",
            ),
            click.option(
                "--weights-prefix",
                default=None,
                help="Keep only keys with this prefix (stripped). Default: 'encoder.' of a SiamMAE "
                "or CMAE checkpoint (CMAE's online encoder; 'target_encoder.' for its momentum "
                "encoder) or 'backbone.' of a DINO one when present, else all keys.",
            ),
        ],
    )


def pick_device(name):
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise click.BadParameter("CUDA is not available on this machine", param_hint="--device")
    return name


def compute_options(f):
    """--device / --batch-size / --precision, shared with ``benchmark``."""
    return _apply(
        f,
        [
            click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda, cuda:1, ..."),
            click.option(
                "--batch-size",
                type=click.IntRange(min=1),
                default=None,
                help="Frames per forward pass. Default: as many as fit an activation budget (32 MB on the "
                "CPU: one 480p frame, the fastest there; 2 GB on a GPU).",
            ),
            click.option(
                "--precision",
                type=click.Choice(["fp32", "bf16", "fp16", "auto"]),
                default="auto",
                show_default=True,
                help="Number format of the encoder's forward pass; affinity and labels stay fp32. auto: "
                "bf16 on a CPU with AVX512-BF16/AMX or a CUDA GPU with bf16 (J&F within 0.005 of fp32, "
                "1.4-3x faster on such CPUs), fp16 on other GPUs, else fp32. fp32: the reference "
                "scorers' numbers exactly. A format the device lacks natively is an error.",
            ),
        ],
    )


def dataset_options(f):
    """--<task> ROOT for every registered task, and each task's own options; shared with ``benchmark``."""
    options = []
    for task in TASKS.values():
        options.append(
            click.option(f"--{task.name}", type=click.Path(exists=True, file_okay=False), help=task.dataset_help)
        )
        options += [
            click.option(flag, param, type=click.Path(exists=True, dir_okay=False), help=text)
            for flag, param, text in task.options
        ]
    return _apply(f, options)


def dataset_roots(kwargs: dict) -> tuple[dict, dict]:
    """Take the dataset options out of the command's ``kwargs``: (task -> root, task -> its load options)."""
    roots, load = {}, {}
    for task in TASKS.values():
        root = kwargs.pop(task.name)
        own = {param: kwargs.pop(param) for _, param, _ in task.options}
        if root:
            roots[task.name], load[task.name] = root, {k: v for k, v in own.items() if v is not None}
    return roots, load


def protocol_options(f):
    """One option per :func:`~siammae.propagate.protocol.command_line_knobs` field of the protocol."""
    options = []
    for field in command_line_knobs():
        flag = field.metadata["flag"] or f"--{field.name.replace('_', '-')}"
        help_ = field.metadata["help"]
        if field.type in (bool, "bool"):
            options.append(click.option(f"{flag}/--no-{flag[2:]}", field.name, default=None, help=help_))
        elif field.metadata["choices"]:
            options.append(click.option(flag, field.name, type=click.Choice(field.metadata["choices"]), help=help_))
        else:
            kind = {"int": int, "float": float}.get(field.type if isinstance(field.type, str) else field.type.__name__)
            options.append(click.option(flag, field.name, type=kind, help=help_))
    return _apply(f, options)


# fmt: off
@click.command(cls=Command)
@dataset_options
@encoder_options
@click.option("--random-init", is_flag=True,
              help="Use random weights (a baseline, seed 0); needs a timm name or run folder.")
@click.option("--out", required=True, type=click.Path(file_okay=False),
              help="Output folder: predictions, the score files, propagation.json (DAVIS) or scores.json.")
@click.option("--split", default="val", show_default=True, help="DAVIS: ImageSets/2017/<split>.txt.")
@click.option("--sequences", default=None, help="DAVIS: comma-separated subset of the split's sequences.")
@click.option("--resolution", default="480p", show_default=True, help="DAVIS: 480p or Full-Resolution.")
@click.option("--protocol", type=click.Choice(list(PROTOCOLS)), default=None,
              help="Preset: siammae (paper Table 4b for DAVIS, temperature 0.7), dino, crw, siammae-jhmdb "
              "(Table 4b, 320x320), siammae-vip (Table 4b, long side 880). Default: for DAVIS the run's "
              "eval.protocol, else siammae; siammae-jhmdb / siammae-vip for the others. Flags below "
              "override single knobs.")
@protocol_options
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
def propagate(checkpoint, weights, weights_prefix, random_init, out, split, sequences, resolution, protocol, device,
              batch_size, precision, workers, overlay, no_eval, no_diagnostics, quiet, **kwargs):
# fmt: on
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
    roots, load = dataset_roots(kwargs)
    knobs = kwargs  # what is left: the protocol's knobs
    if len(roots) != 1:
        raise click.UsageError(f"give one dataset: {', '.join(f'--{t}' for t in TASKS)} (all: siammae benchmark)")
    ((task, root),) = roots.items()
    encoder_args = (checkpoint, weights, weights_prefix, random_init)
    if task != "davis":
        source = click.get_current_context().get_parameter_source
        davis_only = [
            f"--{n.replace('_', '-')}"
            for n in ("split", "sequences", "resolution", "overlay", "no_eval", "workers", "no_diagnostics")
            if source(n).name != "DEFAULT"
        ]
        if davis_only:
            raise click.UsageError(f"{', '.join(davis_only)}: DAVIS options, not for --{task}")
        return propagate_task(
            task,
            root,
            load[task],
            encoder_args,
            out,
            protocol,
            knobs,
            pick_device(device),
            dict(batch_size=batch_size, precision=precision),
            quiet,
        )
    from siammae.encoders import open_encoder
    from siammae.files import write_atomic
    from siammae.propagate.diagnostics import describe
    from siammae.propagate.parallel import launched_processes
    from siammae.propagate.precision import reason, resolve_precision
    from siammae.tasks.davis import check_davis, feature_diagnostics
    from siammae.tasks.davis import propagate as run
    from siammae.tasks.davis_files import require_annotations

    device = pick_device(device)
    resolve_precision(precision, device)  # a format the device lacks: an error before any work
    seqs = check_davis(root, split, parse_sequences(sequences), resolution)  # before loading weights
    if not no_eval:
        require_annotations(seqs, hint="pass --no-eval to only propagate (e.g. test-dev)")
    encoder, info = open_encoder(*encoder_args)
    chosen = TASKS["davis"].protocol(protocol, info.config.eval if info.config is not None else None, **knobs)
    record = run(
        encoder,
        root,
        out,
        chosen,
        split=split,
        sequences=parse_sequences(sequences),
        resolution=resolution,
        device=device,
        batch_size=batch_size,
        overlay=overlay,
        progress=not quiet,
        settings=dict(encoder=info.to_dict()),
        precision=precision,
        workers=workers,
        processes=launched_processes(),
    )
    if record is None:  # another process of `accelerate launch`: the main one merges and scores
        return
    t = record["timing"]
    click.echo(
        f"propagated {len(record['sequences'])} sequences, {t['frames']} frames in {t['seconds']:.1f} s "
        f"({t['fps']:.2f} frames/s, {reason(precision, device)}) with protocol {chosen.name} -> {out}"
    )
    if not no_diagnostics:
        diag = feature_diagnostics(
            encoder, seqs, chosen, device, record["precision"], root, split, resolution, with_copy=not no_eval
        )
        click.echo(describe(diag))
        record["diagnostics"] = diag
        write_atomic(Path(out) / "propagation.json", json.dumps(record, indent=2) + "\n")
    if not no_eval:
        run_evaluation(root, out, split, record["sequences"], resolution)


def propagate_task(task, root, load, encoder_args, out, protocol, knobs, device, compute, quiet):
    """``siammae propagate --jhmdb`` / ``--vip``: the task's preset, then the flags; scores printed."""
    from siammae.encoders import open_encoder
    from siammae.propagate.precision import reason, resolve_precision

    resolve_precision(compute["precision"], device)
    chosen = TASKS[task].protocol(protocol, **knobs)  # the settings and every file are checked
    data = TASKS[task].load(root, **load)  # before the weights load
    encoder, info = open_encoder(*encoder_args)
    record = TASKS[task].run(encoder, root, out, chosen, data=data, device=device, progress=not quiet, **compute)
    t = record["timing"]
    click.echo(
        f"propagated {t['frames']} frames in {t['seconds']:.1f} s ({t['fps']:.2f} frames/s, "
        f"{reason(compute['precision'], device)}) with protocol {chosen.name} -> {out}"
    )
    click.echo(
        f"{task}: "
        + ", ".join(f"{k} {'n/a' if v is None else f'{v:.4f}'}" for k, v in record["scores"].items())
        + f"  (files: {', '.join(record['files'])})"
    )
