"""Pre-train on WebDataset shards, on one CPU, one GPU or many: the training loop.

    accelerate launch -m siammae.train recipes/base.yaml data.shards=/data/k400_shards
    python -m siammae.train tiny data.shards=shards/ train.output_dir=runs/tiny
    torchrun --nproc_per_node 8 -m siammae.train base data.shards=...

Running the same command again continues from the newest complete checkpoint in the run folder.

:func:`main` parses the command line and turns user errors into one line and exit status 2;
:func:`train` does the work and reads top to bottom: data -> model and optimizer -> resume -> the
loop (one optimizer step per pass: ``grad_accum`` micro-batches, skip if the loss was not finite
anywhere, clip, step, the model's ``after_step``) -> logs, pictures, evaluations, checkpoints ->
summary. The model computes its own loss (and any scalars it wants logged) and does its own updates
outside the optimizer in ``after_step``, so the loop does not know which method it trains. The
learning rate is a pure function of the optimizer step (:mod:`siammae.train.schedule`); the run folder's
files are :mod:`siammae.train.runfolder`'s.

Data segments: the endless data stream is cut into segments of ``train.save_every`` steps, each with
its own seed (:func:`segment_loader`). Checkpoints fall on segment boundaries, so a resumed run reads
exactly the batches the uninterrupted run would have read: same steps, same learning rates, same
weights (up to floating-point reduction order on GPUs). A run stopped by SIGTERM/SIGUSR1 (pre-emption)
saves where it is; resuming there starts a new segment (seeded by its step): the same schedule and
counters, other samples.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

import torch

from siammae.allocator import keep_freed_memory
from siammae.config import load_config
from siammae.data.loader import check_clip_length, describe, make_loader, resolve_shards
from siammae.data.pixels import normalize, to_uint8
from siammae.errors import SiammaeError
from siammae.models import METHODS, build_model
from siammae.models.kernels import check_sdpa_backend
from siammae.pictures import save_recon
from siammae.train.monitor import make_monitor, run_monitor
from siammae.train.runfolder import append_metrics, keep_metrics_until, prepare_run_folder, resume_from, save_checkpoint
from siammae.train.schedule import learning_rate, make_optimizer, peak_learning_rate, run_lengths, set_learning_rate

# The dtype the encoder's attention sees under each of Accelerate's mixed-precision modes.
AUTOCAST_DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


class Diverged(SiammaeError):
    """The loss was not finite for ``train.max_nonfinite`` steps in a row."""


class Progress:
    """What the loop has done; saved in every checkpoint (``register_for_checkpointing``) so that
    step, sample count and counters continue exactly on resume."""

    def __init__(self):
        self.step = 0  # optimizer steps taken (skipped non-finite steps included)
        self.samples = 0  # training samples (pairs, or clips for clip methods) consumed, all ranks
        self.skipped = 0  # samples or shard tails dropped by the data pipeline, all ranks
        self.nonfinite = 0  # steps skipped because the loss was not finite
        self.nonfinite_in_a_row = 0
        self.overflow = 0  # fp16 steps the loss scaler skipped (gradient overflow; normal early on)
        self.train_seconds = 0.0  # wall time of all sessions, up to the last checkpoint

    def advance(self, finite: bool, overflow: bool, skipped: int, batch: int) -> None:
        """Count one optimizer step (``finite``: it was taken; ``overflow``: fp16's scaler skipped it)."""
        self.step += 1
        self.samples += batch
        self.skipped += skipped
        self.nonfinite += int(not finite)
        self.nonfinite_in_a_row = 0 if finite else self.nonfinite_in_a_row + 1
        self.overflow += int(finite and overflow)

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


class MetricsWindow:
    """Loss, model scalars, throughput and data wait since the last log record."""

    def __init__(self):
        self.start, self.wait, self.steps = time.perf_counter(), 0.0, 0
        self.sums, self.counted = {}, 0

    def add(self, scalars: dict) -> None:
        """One finite optimizer step's mean loss and model scalars."""
        for key, value in scalars.items():
            self.sums[key] = self.sums.get(key, 0.0) + value
        self.counted += 1

    def record(self, step: int, progress: Progress, lr: float, batch: int) -> dict:
        elapsed = time.perf_counter() - self.start
        means = {k: v / self.counted for k, v in self.sums.items()} if self.counted else {"loss": float("nan")}
        return dict(
            step=step,
            samples=progress.samples,
            **means,
            lr=lr,
            samples_per_s=self.steps * batch / elapsed,  # was pairs_per_s: read both with samples_per_s()
            data_wait=self.wait / elapsed,
            skipped=progress.skipped,
            nonfinite=progress.nonfinite,
            overflow=progress.overflow,
        )


def pick_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """The mixed-precision mode that works on ``device``, and a note when it differs from the recipe."""
    if device.type == "cpu" and requested == "fp16":
        return "no", "mixed_precision=fp16 needs a GPU (no loss scaling on the CPU): training in fp32"
    return requested, None


def make_accelerator(cfg):
    """The Accelerator for this run and the per-process micro-batch; checks that the global batch
    splits evenly over processes x accumulation before anything is written."""
    from accelerate import Accelerator, PartialState
    from accelerate.utils import GradientAccumulationPlugin

    # Without a GPU, Accelerate sets up several processes (gloo) only when told to use the CPU.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    state = PartialState(cpu=cpu)
    precision, note = pick_precision(cfg.train.mixed_precision, state.device)
    world, accum = state.num_processes, cfg.train.grad_accum
    if cfg.train.global_batch_size % (world * accum):
        raise SiammaeError(
            f"train.global_batch_size={cfg.train.global_batch_size} is not divisible by "
            f"{world} processes x train.grad_accum={accum}"
        )
    # An explicit plugin: Accelerate would otherwise take accelerate launch's accumulation over ours.
    accelerator = Accelerator(
        cpu=cpu,
        mixed_precision=precision,
        gradient_accumulation_plugin=GradientAccumulationPlugin(num_steps=accum),
        log_with=make_trackers(cfg, state.is_main_process) or None,
        project_dir=str(cfg.train.output_dir),
    )
    for line in [note, *launcher_notes(cfg)]:
        if line:
            accelerator.print(f"note: {line}")
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to each data worker: oversubscribed OpenMP threads spin-wait and a CPU step
        # gets several times slower (docs/benchmarks.md, "Training").
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // world - cfg.data.num_workers))
    return accelerator, cfg.train.global_batch_size // (world * accum)


def launcher_notes(cfg) -> list:
    """What ``accelerate launch`` (or its config file) asked for that the recipe overrides: the recipe
    wins (one config path); said once at start."""
    notes = []
    launched, recipe = os.environ.get("ACCELERATE_MIXED_PRECISION"), cfg.train.mixed_precision
    if launched and launched != recipe:
        notes.append(
            f"accelerate launch gave mixed precision '{launched}'; the recipe's '{recipe}' is used "
            f"(train.mixed_precision=... to change it)"
        )
    launched = os.environ.get("ACCELERATE_GRADIENT_ACCUMULATION_STEPS")
    if launched and int(launched) != cfg.train.grad_accum:
        notes.append(
            f"accelerate launch gave gradient accumulation {launched}; the recipe's "
            f"train.grad_accum={cfg.train.grad_accum} is used"
        )
    return notes


def make_trackers(cfg, main_process: bool) -> list:
    """Accelerate trackers for ``train.log_with``, on the main process only (older Accelerate starts
    W&B in the tracker's constructor): TensorBoard in OUTPUT/tensorboard; W&B in project "siammae",
    the run named after OUTPUT, its id fixed by OUTPUT's path so that a resumed run continues the same
    W&B run. A missing wandb package is an error on every process, before any work."""
    import hashlib
    import importlib.util

    from accelerate.tracking import TensorBoardTracker, WandBTracker

    chosen = {"tensorboard": ["tensorboard"], "wandb": ["wandb"], "all": ["tensorboard", "wandb"], "none": []}
    names, out = chosen[cfg.train.log_with], Path(cfg.train.output_dir)
    if "wandb" in names and importlib.util.find_spec("wandb") is None:
        raise SiammaeError(f"train.log_with={cfg.train.log_with} needs the wandb package: pip install wandb")
    if not main_process:
        return []
    trackers = []
    if "tensorboard" in names:
        trackers.append(TensorBoardTracker("tensorboard", str(out)))
    if "wandb" in names:
        run_id = hashlib.sha1(str(out.resolve()).encode()).hexdigest()[:16]
        trackers.append(WandBTracker("siammae", dir=str(out), name=out.name, id=run_id, resume="allow"))
    return trackers


def segment_loader(urls, cfg, step: int, total: int, micro_batch: int, accelerator):
    """The loader for the data segment starting at ``step``: it yields exactly the micro-batches of the
    steps up to the next multiple of ``train.save_every`` (or the end), the same number on every rank.
    Its seed depends on the start step only, so restarting a segment replays it."""
    every = max(1, cfg.train.save_every)
    end = min(total, (step // every + 1) * every)
    loader = make_loader(
        urls,
        cfg.data,
        size=cfg.model.img_size,
        batch_size=micro_batch,
        num_batches=(end - step) * cfg.train.grad_accum,
        seed=f"{cfg.train.seed}/{step}",
        rank=accelerator.process_index,
        world=accelerator.num_processes,
    )
    return iter(loader), end  # a generator: closing it stops the data workers


def write_recon(accelerator, model, frames_uint8, out_dir: Path, step: int, cfg) -> Path:
    """Reconstruction picture of a few samples of the current batch (main process). Its random masks
    come from a forked RNG so drawing pictures does not change the training run."""
    net = accelerator.unwrap_model(model)
    frames_uint8 = frames_uint8[: cfg.train.recon_samples]
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    was_training = net.training
    net.eval()
    with torch.random.fork_rng(devices=devices), torch.no_grad(), accelerator.autocast():
        frames = normalize(frames_uint8)
        _, pred, mask = net(frames)
        recon, mask = net.reconstruct(frames, pred, mask)  # what the picture shows, and its patch mask
        recon = to_uint8(recon.float())
    net.train(was_training)
    return save_recon(out_dir / "recon" / f"step_{step:07d}.png", frames_uint8, recon, mask, cfg.model.patch_size)


def flat_hparams(cfg) -> dict:
    """The config as TensorBoard hparams (scalars and strings only)."""
    flat = {}
    for group, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


STOP_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def catch_stop_signals() -> tuple[dict, dict]:
    """SIGTERM (cluster pre-emption, ``scancel``) and SIGUSR1 (SLURM's ``--signal`` warning) ask the
    loop to finish the current step, save a checkpoint and exit; running the command again resumes.
    Returns the request record and the previous handlers (put back when training ends)."""
    requested = {"signal": 0}

    def handler(signum, _frame):
        requested["signal"] = signum

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    return requested, previous


def nonfinite_message(step: int, count: int, precision: str) -> str:
    cause = (
        "with fp16 this is usually overflow in the activations: try train.mixed_precision=bf16 or no"
        if precision == "fp16"
        else "usually too high a learning rate or exploding updates"
    )
    return (
        f"stopping at step {step}: the loss was not finite for {count} steps in a row "
        f"(train.max_nonfinite={count}); {cause}, or lower optim.base_lr / optim.clip_grad; "
        f"the last complete checkpoint is kept"
    )


# ----------------------------------------------------------------------------- one optimizer step


def optimizer_step(model, optimizer, data_iter, accelerator, cfg, window: MetricsWindow, stop_signal: dict) -> dict:
    """``grad_accum`` micro-batches, one small all-reduce, then the update (skipped on every rank when
    the loss was not finite on any). Returns what the loop needs: ``finite``, ``skipped`` and
    ``signalled`` (over all ranks), the batch's sample ``keys`` and last ``frames`` (uint8)."""
    device, accum = accelerator.device, cfg.train.grad_accum
    sums = {}  # summed over the finite micro-batches: the loss and the model's logged scalars
    nonfinite = torch.zeros((), device=device)
    skipped, keys = 0, []
    for _ in range(accum):
        t0 = time.perf_counter()
        batch = next(data_iter)
        window.wait += time.perf_counter() - t0
        skipped += batch["skipped"]
        keys.extend(batch["keys"])
        frames = batch["frames"].to(device, non_blocking=True)
        with accelerator.accumulate(model):
            out = model(normalize(frames))
            accelerator.backward(out.loss)  # also when not finite: every rank must join the all-reduce
        finite = torch.isfinite(out.loss.detach())
        for name, value in {"loss": out.loss, **out.logs}.items():
            sums[name] = sums.get(name, 0.0) + torch.where(finite, value.detach().float(), 0.0)
        nonfinite += (~finite).float()

    # One small all-reduce: the sums, non-finite micro-batches, skipped samples and stop requests over
    # all ranks, so that every rank takes the same decisions.
    local = torch.stack(
        [
            *sums.values(),
            nonfinite,
            torch.tensor(float(skipped), device=device),
            torch.tensor(float(stop_signal["signal"] > 0), device=device),
        ]
    )
    *totals, bad, skipped_all, signalled = accelerator.reduce(local, "sum").tolist()
    if bad > 0:  # gradients hold NaN/inf on every rank after the all-reduce: drop them
        optimizer.zero_grad(set_to_none=True)
    else:
        if cfg.optim.clip_grad > 0:
            accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        good = accelerator.num_processes * accum
        window.add({name: total / good for name, total in zip(sums, totals)})
    window.steps += 1
    return dict(finite=bad == 0, skipped=int(skipped_all), signalled=signalled > 0, keys=keys, frames=frames)


# ----------------------------------------------------------------------------- the trainer


def train(cfg, on_step=None, build=None) -> dict:
    """Train as ``cfg`` says; returns the summary. ``on_step(step, model, keys, accelerator)``, if given,
    is called on every rank after every optimizer step (the tests use it). ``build(cfg)``, if given,
    makes the model instead of :func:`siammae.models.build_model` (a peer's
    implementation trained by this loop: ``tools/peer_cropmae.py``). User errors raise
    :class:`SiammaeError` before any work; a diverged run raises :class:`Diverged`."""
    from tqdm import tqdm

    urls = resolve_shards(cfg.data.shards)  # everything that can be wrong fails here, before any work
    check_clip_length(urls, cfg.data.num_frames, cfg.data.pair_gap, cfg.data.views)
    monitor = make_monitor(cfg)
    out = Path(cfg.train.output_dir)
    ckpt_root = out / "checkpoints"
    resume = resume_from(cfg, ckpt_root)
    accelerator, micro_batch = make_accelerator(cfg)
    check_sdpa_backend(cfg.model.sdpa_backend, accelerator.device, AUTOCAST_DTYPES[accelerator.mixed_precision])
    main_proc, say = accelerator.is_main_process, accelerator.print
    # CPU steps otherwise fault in fresh pages for their large tensors (docs/benchmarks.md, "Training").
    # Before the data workers fork: they inherit it.
    if accelerator.device.type == "cpu" and keep_freed_memory():
        say("host memory: freed memory kept for reuse (glibc), so CPU steps do not fault in new pages")
    if main_proc:
        prepare_run_folder(cfg, out, resume, say)

    model, optimizer, progress = prepare_model(cfg, accelerator, resume, build)
    if main_proc:
        keep_metrics_until(out / "metrics.jsonl", progress.step)
    accelerator.init_trackers("siammae", config=flat_hparams(cfg))  # the resolved config as hyper-parameters
    total_steps, warmup_steps = run_lengths(cfg)
    peak_lr = peak_learning_rate(cfg)
    say(describe_run(cfg, urls, model, accelerator, micro_batch, total_steps, warmup_steps, peak_lr))
    if monitor is not None:
        say(f"evaluation: {monitor.describe()}")
        if progress.step == 0:
            run_monitor(monitor, accelerator, model, 0, out)

    bar = tqdm(
        total=total_steps, initial=progress.step, disable=not main_proc, dynamic_ncols=True, unit="step", smoothing=0.05
    )
    session_start, session_start_step = time.perf_counter(), progress.step
    seconds_before = progress.train_seconds
    window, (stop_signal, previous_handlers) = MetricsWindow(), catch_stop_signals()
    data_iter, segment_end, last_ckpt, signalled = None, progress.step, resume, False
    try:
        while progress.step < total_steps and not signalled:
            if progress.step >= segment_end:
                data_iter, segment_end = segment_loader(urls, cfg, progress.step, total_steps, micro_batch, accelerator)
            lr = learning_rate(progress.step, peak_lr, cfg.optim.min_lr, warmup_steps, total_steps)
            set_learning_rate(optimizer, lr)
            result = optimizer_step(model, optimizer, data_iter, accelerator, cfg, window, stop_signal)
            progress.advance(
                result["finite"], accelerator.optimizer_step_was_skipped, result["skipped"], cfg.train.global_batch_size
            )
            if result["finite"] and not accelerator.optimizer_step_was_skipped:
                accelerator.unwrap_model(model).after_step(progress.step, total_steps)  # e.g. CMAE's EMA
            step, signalled = progress.step, result["signalled"]
            if on_step is not None:
                on_step(step, model, result["keys"], accelerator)

            diverged = progress.nonfinite_in_a_row >= cfg.train.max_nonfinite  # the same on every rank
            if step % cfg.train.log_every == 0 or step == total_steps or diverged:
                record = window.record(step, progress, lr, cfg.train.global_batch_size)
                if main_proc:
                    append_metrics(out, record)
                    bar.set_postfix(
                        loss=f"{record['loss']:.4f}",
                        lr=f"{lr:.2e}",
                        samples_s=f"{record['samples_per_s']:.1f}",
                        skipped=progress.skipped,
                        refresh=False,
                    )
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)  # the trackers
                window = MetricsWindow()
            if diverged:
                raise Diverged(nonfinite_message(step, progress.nonfinite_in_a_row, accelerator.mixed_precision))
            if main_proc and cfg.train.recon_every > 0 and (step % cfg.train.recon_every == 0 or step == total_steps):
                write_recon(accelerator, model, result["frames"], out, step, cfg)
            if monitor is not None and monitor.due(step, total_steps):
                run_monitor(monitor, accelerator, model, step, out, bar.write)
            if step % cfg.train.save_every == 0 or step == total_steps or signalled:
                progress.train_seconds = seconds_before + time.perf_counter() - session_start
                last_ckpt = save_checkpoint(accelerator, ckpt_root, step, cfg.train.keep_last)
            bar.update(1)
    finally:
        if data_iter is not None:  # an error mid-run: stop the data workers now (siammae.data.loader)
            data_iter.close()
        bar.close()
        accelerator.end_training()
        for sig, handler in previous_handlers.items():  # train() is a library call: leave them as found
            signal.signal(sig, handler)

    # Stopped only when every rank agreed (a signal after the last step's all-reduce changes nothing).
    return summarize(
        cfg,
        progress,
        time.perf_counter() - session_start,
        progress.step - session_start_step,
        last_ckpt,
        (stop_signal["signal"] or signal.SIGTERM) if signalled else 0,
        say,
    )


def prepare_model(cfg, accelerator, resume, build=None):
    """The model (made by ``build``, default :func:`siammae.models.build_model`) and optimizer, prepared
    by Accelerate, and the loop's :class:`Progress`, all restored from ``resume`` when given."""
    from accelerate.utils import set_seed

    # The same seed on every rank for the initial weights, then a rank-specific one for the masks.
    set_seed(cfg.train.seed)
    model = (build or build_model)(cfg)
    set_seed(cfg.train.seed, device_specific=True)
    model, optimizer = accelerator.prepare(model, make_optimizer(model, cfg))  # not the loader: see siammae.data.loader
    progress = Progress()
    accelerator.register_for_checkpointing(progress)
    if resume is not None:
        accelerator.load_state(str(resume))
        accelerator.print(f"resuming from {resume} at step {progress.step}")
    return model, optimizer, progress


def summarize(cfg, progress: Progress, wall: float, steps_done: int, last_ckpt, signal_number: int, say) -> dict:
    """The session's summary (returned by :func:`train`) and its last line on the terminal."""
    summary = dict(
        steps=progress.step,
        samples=progress.samples,
        wall_s=round(wall, 1),
        samples_per_s=round(steps_done * cfg.train.global_batch_size / wall, 1) if steps_done else 0.0,
        skipped=progress.skipped,
        nonfinite=progress.nonfinite,
        checkpoint=str(last_ckpt) if last_ckpt else None,
        signal=signal_number,
    )
    if signal_number:
        say(f"stopped by a signal after step {progress.step}; checkpoint {last_ckpt}; run the same command to continue")
    elif steps_done == 0:
        say(
            f"nothing to do: the run in {cfg.train.output_dir} already has all {progress.step} steps "
            f"(checkpoint {last_ckpt})"
        )
    else:
        say(
            f"done: {progress.step} steps, {progress.samples} samples ({sample_unit(cfg)}) seen, "
            f"{wall / 60:.1f} min this session, {summary['samples_per_s']} samples/s, "
            f"{progress.skipped} samples skipped, {progress.nonfinite} non-finite steps; checkpoint {last_ckpt}"
        )
    return summary


def sample_unit(cfg) -> str:
    """What one training sample is for the run's method: a frame pair, or a clip of K frames."""
    if METHODS[cfg.model.method].clips:
        return f"clips of {cfg.data.num_frames}"
    return "crop pairs of one frame" if cfg.data.views == "crops" else "frame pairs"


def describe_run(cfg, urls, model, accelerator, micro_batch, total_steps, warmup_steps, peak_lr) -> str:
    """The one line that says what this session will do."""
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    threads = torch.get_num_threads()
    device = accelerator.device.type + (
        f" ({threads} thread{'s' * (threads != 1)})" if accelerator.device.type == "cpu" else ""
    )
    return (
        f"siammae.train: {describe(urls)}; {n_params / 1e6:.1f}M trainable parameters; "
        f"{accelerator.num_processes} process(es) on {device}, precision {accelerator.mixed_precision}; "
        f"{total_steps} steps of {cfg.train.global_batch_size} samples ({sample_unit(cfg)}; "
        f"{micro_batch} per process x "
        f"{cfg.train.grad_accum} accumulation), warm-up {warmup_steps} steps, peak lr {peak_lr:.3g}; "
        f"run folder {cfg.train.output_dir}"
    )


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m siammae.train",
        description="Pre-train on WebDataset shards (SiamMAE by default). Running it again resumes the run.",
    )
    parser.add_argument("recipe", help="a recipe file or the name of a packaged recipe (base, tiny, ...)")
    parser.add_argument("overrides", nargs="*", metavar="group.key=value", help="config overrides")
    return parser.parse_args(argv)


def main(argv=None, on_step=None) -> dict:
    """The command line: a user error prints one line and exits with status 2 (a diverged run: 1);
    a run stopped by a signal exits with 128 + the signal, as the shell would report it."""
    args = parse_args(argv)
    try:
        summary = train(load_config(args.recipe, args.overrides), on_step)
    except SiammaeError as e:
        if int(os.environ.get("RANK", "0")) == 0:  # every rank stops; one says why
            print(f"error: {e}", file=sys.stderr)
        raise SystemExit(1 if isinstance(e, Diverged) else 2) from None
    if summary["signal"]:
        raise SystemExit(128 + summary["signal"])
    return summary
