"""Pre-train SiamMAE on WebDataset shards, on one CPU, one GPU or many.

    accelerate launch -m siammae.train recipes/base.yaml data.shards=/data/k400_shards
    python -m siammae.train tiny data.shards=shards/ train.output_dir=runs/tiny
    torchrun --nproc_per_node 8 -m siammae.train base data.shards=...

Running the same command again continues from the newest complete checkpoint in the run folder.

The script reads top to bottom: config -> data -> model and optimizer -> resume -> the loop (one
optimizer step per pass: ``grad_accum`` micro-batches, skip if the loss was not finite anywhere,
clip, step) -> logs, pictures, checkpoints -> summary. The learning rate is a pure function of the
optimizer step (:func:`learning_rate`), set on the parameter groups; no scheduler object.

Data segments: the endless data stream is cut into segments of ``train.save_every`` steps, each with
its own seed (:func:`segment_loader`). Checkpoints fall on segment boundaries, so a resumed run reads
exactly the batches the uninterrupted run would have read: same steps, same learning rates, same
weights (up to floating-point reduction order on GPUs). A run stopped by SIGTERM/SIGUSR1 (pre-emption)
saves where it is; resuming there starts a new segment (seeded by its step): the same schedule and
counters, other samples.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
from pathlib import Path

import torch

from siammae.checkpoint import COMPLETE, checkpoint_dirs, checkpoint_step
from siammae.config import ConfigError, dump_config, load_config, read_config
from siammae.data import DataError, describe, make_loader, resolve_shards
from siammae.files import read_jsonl, write_atomic

NO_WEIGHT_DECAY = {"pos_embed", "decoder_pos_embed", "cls_token", "mask_token", "reg_token", "dist_token"}


# ----------------------------------------------------------------------------- helpers


def run_lengths(cfg) -> tuple[int, int]:
    """(total optimizer steps, warm-up steps) from lengths given in samples or epochs of samples, so a
    recipe means the same on 1 or 64 GPUs (the global batch is fixed, not the per-GPU batch)."""
    t, o = cfg.train, cfg.optim
    total_samples = t.samples if t.samples > 0 else t.epochs * t.epoch_samples
    warmup_samples = o.warmup_samples if o.warmup_samples > 0 else o.warmup_epochs * t.epoch_samples
    total = max(1, math.ceil(total_samples / t.global_batch_size))
    return total, min(total, round(warmup_samples / t.global_batch_size))


def learning_rate(step: int, peak: float, min_lr: float, warmup: int, total: int) -> float:
    """lr of optimizer step ``step`` (0-based): linear warm-up to ``peak``, then half a cosine to ``min_lr``."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, total - warmup))
    return min_lr + (peak - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


def param_groups(model: torch.nn.Module, weight_decay: float, encoder_lr_scale: float = 1.0) -> list:
    """AdamW groups: weight decay on weight matrices only; none on biases, norms, position embeddings
    and tokens (MAE). Frozen parameters (the fixed sin-cos positions) are left out. Each group carries
    ``lr_scale``: the encoders' parameters (``encoder*``) learn at ``encoder_lr_scale`` x the schedule's lr
    when that is not 1 (then there are four groups)."""
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        skip = p.ndim <= 1 or name.split(".")[-1] in NO_WEIGHT_DECAY
        scale = encoder_lr_scale if name.startswith("encoder") else 1.0
        key = (skip, scale)
        groups.setdefault(key, dict(params=[], weight_decay=0.0 if skip else weight_decay, lr_scale=scale))
        groups[key]["params"].append(p)
    return [groups[k] for k in sorted(groups)]


def pick_precision(requested: str, device: torch.device) -> tuple[str, str | None]:
    """The mixed-precision mode that works on ``device``, and a note when it differs from the recipe."""
    if device.type == "cpu" and requested == "fp16":
        return "no", "mixed_precision=fp16 needs a GPU (no loss scaling on the CPU): training in fp32"
    return requested, None


class Progress:
    """What the loop has done; saved in every checkpoint (``register_for_checkpointing``) so that
    step, sample count and counters continue exactly on resume."""

    def __init__(self):
        self.step = 0  # optimizer steps taken (skipped non-finite steps included)
        self.samples = 0  # training pairs consumed, all ranks
        self.skipped = 0  # samples or shard tails dropped by the data pipeline, all ranks
        self.nonfinite = 0  # steps skipped because the loss was not finite
        self.nonfinite_in_a_row = 0
        self.overflow = 0  # fp16 steps the loss scaler skipped (gradient overflow; normal early on)
        self.train_seconds = 0.0  # wall time of all sessions, up to the last checkpoint

    def state_dict(self) -> dict:
        return dict(vars(self))

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)


def resume_from(cfg, ckpt_root: Path) -> Path | None:
    """The checkpoint to continue from: ``train.resume`` is auto (newest complete, or none), never (a
    fresh start, see :func:`set_aside`) or a checkpoint folder."""
    mode = cfg.train.resume
    if mode == "never":
        return None
    if mode == "auto":
        existing = checkpoint_dirs(ckpt_root)
        return existing[-1] if existing else None
    path = Path(mode)
    if not (path / COMPLETE).is_file():
        raise ConfigError(f"train.resume={mode}: not a complete checkpoint folder (no '{COMPLETE}' marker)")
    return path


def set_aside(out: Path) -> Path | None:
    """A fresh start in a run folder that holds an earlier run: its checkpoints and metrics move to
    ``previous-<time>/`` (never deleted: ``train.resume=never`` on the wrong folder must not cost a run)."""
    old = [out / name for name in ("checkpoints", "metrics.jsonl", "recon") if (out / name).exists()]
    if not checkpoint_dirs(out / "checkpoints", complete_only=False) and not (out / "metrics.jsonl").exists():
        return None
    dest = out / time.strftime("previous-%Y%m%d-%H%M%S")
    dest.mkdir(parents=True)
    for path in old:
        path.rename(dest / path.name)
    return dest


def save_checkpoint(accelerator, ckpt_root: Path, step: int, keep: int) -> Path:
    """``save_state`` into ``checkpoint_<step>``, then the ``complete`` marker, then prune to the last
    ``keep``. A kill at any moment leaves the newest *complete* checkpoint untouched: older ones are
    removed only after the new one is marked complete."""
    path = ckpt_root / f"checkpoint_{step}"
    if accelerator.is_main_process and path.exists():
        shutil.rmtree(path)  # a leftover of a save that was killed before it completed
    accelerator.wait_for_everyone()
    accelerator.save_state(str(path))
    accelerator.wait_for_everyone()  # every rank's files (RNG states) are written
    if accelerator.is_main_process:
        for f in path.iterdir():  # on disk before the marker says so
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        (path / COMPLETE).write_text(json.dumps(dict(step=step, time=time.time())) + "\n")
        complete = checkpoint_dirs(ckpt_root)
        for old in complete[:-keep] if keep > 0 else []:
            shutil.rmtree(old, ignore_errors=True)
        newest = checkpoint_step(complete[-1])
        for p in checkpoint_dirs(ckpt_root, complete_only=False):
            if not (p / COMPLETE).is_file() and checkpoint_step(p) < newest:
                shutil.rmtree(p, ignore_errors=True)
    accelerator.wait_for_everyone()
    return path


def segment_loader(urls, cfg, step: int, total: int, micro_batch: int, accelerator):
    """The loader for the data segment starting at ``step``: it yields exactly the micro-batches of the
    steps up to the next multiple of ``train.save_every`` (or the end), the same number on every rank.
    Its seed depends on the start step only, so restarting a segment replays it."""
    every = max(1, cfg.train.save_every)
    end = min(total, (step // every + 1) * every)
    loader = make_loader(urls, cfg.data, size=cfg.model.img_size, batch_size=micro_batch,
                         num_batches=(end - step) * cfg.train.grad_accum, seed=f"{cfg.train.seed}/{step}",
                         rank=accelerator.process_index, world=accelerator.num_processes)
    return iter(loader), end


def write_recon(accelerator, model, frames_uint8, out_dir: Path, step: int, cfg) -> Path:
    """Reconstruction picture of a few samples of the current batch (main process). Its random masks
    come from a forked RNG so drawing pictures does not change the training run."""
    from siammae.pictures import save_recon
    from siammae.pixels import normalize, to_uint8

    net = accelerator.unwrap_model(model)
    frames_uint8 = frames_uint8[: cfg.train.recon_samples]
    devices = [accelerator.device] if accelerator.device.type == "cuda" else []
    was_training = net.training
    net.eval()
    with torch.random.fork_rng(devices=devices), torch.no_grad(), accelerator.autocast():
        frames = normalize(frames_uint8)
        _, pred, mask = net(frames)
        recon = to_uint8(net.reconstruct(frames, pred, mask).float())
    net.train(was_training)
    return save_recon(out_dir / "recon" / f"step_{step:07d}.png", frames_uint8, recon, mask, cfg.model.patch_size)


def keep_metrics_until(metrics_path: Path, step: int) -> None:
    """On resume, drop records written after the checkpoint (those steps are about to be redone)."""
    if metrics_path.is_file():
        kept = [r for r in read_jsonl(metrics_path) if r.get("step", 0) <= step]  # a torn line goes too
        write_atomic(metrics_path, "".join(json.dumps(r) + "\n" for r in kept))


def append_metrics(out: Path, record: dict) -> None:
    with open(out / "metrics.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")


def make_monitor(cfg):
    """The J&F monitor when ``eval.davis`` is set (its folder is checked now: DavisError), else None."""
    if not cfg.eval.davis:
        return None
    from siammae.davis import DavisError
    from siammae.monitor import DavisMonitor

    try:
        return DavisMonitor(cfg, cfg.train.output_dir)
    except DavisError as e:
        raise ConfigError(f"eval.davis={cfg.eval.davis}: {e}") from None


def run_monitor(monitor, accelerator, model, step: int, out: Path, cfg, bar=None) -> None:
    """Evaluate on rank 0 and log the record (metrics.jsonl, TensorBoard, the terminal); the other
    ranks wait at a barrier, so none runs ahead into the next all-reduce alone."""
    if accelerator.is_main_process:
        record = monitor.evaluate(accelerator.unwrap_model(model).encoder, step, accelerator.device)
        append_metrics(out, record)
        if "eval_error" in record:
            text = f"warning: evaluation at step {step} failed (training goes on): {record['eval_error']}"
        else:
            if cfg.train.tensorboard:
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
            text = (f"step {step}: J&F {record['eval_jf']:.3f}"
                    + (f" (copying frame 0 in place: {record['eval_copy_jf']:.3f})" if "eval_copy_jf" in record else "")
                    + f", token cosine {record['eval_mean_cosine']:.3f}, effective rank "
                    f"{record['eval_effective_rank']:.1f}, position share {record['eval_position_share']:.3f} "
                    f"[{record['eval_seconds']:.0f} s]")
        (bar.write if bar is not None else print)(text)
        try:
            from siammae.pictures import plot_loss_curve

            plot_loss_curve(out / "metrics.jsonl", out / "loss_curve.png")
        except Exception as e:  # noqa: BLE001 - a picture is never worth a run
            (bar.write if bar is not None else print)(f"warning: loss_curve.png not drawn: {e}")
    accelerator.wait_for_everyone()


def flat_hparams(cfg) -> dict:
    """The config as TensorBoard hparams (scalars and strings only)."""
    flat = {}
    for group, values in cfg.to_dict().items():
        for key, value in values.items():
            flat[f"{group}.{key}"] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


def catch_stop_signals() -> dict:
    """SIGTERM (cluster pre-emption, ``scancel``) and SIGUSR1 (SLURM's ``--signal`` warning) ask the
    loop to finish the current step, save a checkpoint and exit; running the command again resumes."""
    requested = {"signal": 0}

    def handler(signum, _frame):
        requested["signal"] = signum

    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, handler)
    return requested


def nonfinite_message(step: int, count: int, precision: str) -> str:
    cause = ("with fp16 this is usually overflow in the activations: try train.mixed_precision=bf16 or no"
             if precision == "fp16" else "usually too high a learning rate or exploding updates")
    return (f"stopping at step {step}: the loss was not finite for {count} steps in a row "
            f"(train.max_nonfinite={count}); {cause}, or lower optim.base_lr / optim.clip_grad; "
            f"the last complete checkpoint is kept")


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m siammae.train",
        description="Pre-train SiamMAE on WebDataset shards. Running it again resumes the run.")
    parser.add_argument("recipe", help="a recipe file or the name of a packaged recipe (base, tiny, ...)")
    parser.add_argument("overrides", nargs="*", metavar="group.key=value", help="config overrides")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the trainer


def main(argv=None, on_step=None) -> dict:
    """Train; returns the summary. ``on_step(step, model, keys, accelerator)``, if given, is called on
    every rank after every optimizer step (the tests use it)."""
    args = parse_args(argv)
    # Everything that can be wrong in the command line fails here, before any work.
    try:
        cfg = load_config(args.recipe, args.overrides)
        urls = resolve_shards(cfg.data.shards)
        monitor = make_monitor(cfg)
    except (ConfigError, DataError) as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)

    from accelerate import Accelerator, PartialState
    from accelerate.utils import set_seed
    from tqdm import tqdm

    from siammae.model import build_model
    from siammae.pixels import normalize

    out = Path(cfg.train.output_dir)
    ckpt_root = out / "checkpoints"
    # Without a GPU, Accelerate sets up several processes (gloo) only when told to use the CPU.
    cpu = not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1
    state = PartialState(cpu=cpu)
    precision, precision_note = pick_precision(cfg.train.mixed_precision, state.device)
    world, accum = state.num_processes, cfg.train.grad_accum
    if cfg.train.global_batch_size % (world * accum):
        print(f"error: train.global_batch_size={cfg.train.global_batch_size} is not divisible by "
              f"{world} processes x train.grad_accum={accum}", file=sys.stderr)
        raise SystemExit(2)
    micro_batch = cfg.train.global_batch_size // (world * accum)
    try:
        resume = resume_from(cfg, ckpt_root)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(2)

    accelerator = Accelerator(cpu=cpu, mixed_precision=precision, gradient_accumulation_steps=accum,
                              log_with="tensorboard" if cfg.train.tensorboard else None, project_dir=str(out))
    main_proc = accelerator.is_main_process
    say = accelerator.print
    if main_proc:
        out.mkdir(parents=True, exist_ok=True)
        if cfg.train.resume == "never" and (aside := set_aside(out)):
            say(f"note: train.resume=never: the earlier run's checkpoints and metrics moved to {aside}")
        previous = out / "config.yaml"
        if resume is not None and previous.is_file():
            try:
                old, new = read_config(previous).to_dict(), cfg.to_dict()
                changed = [f"{g}.{k}" for g in new for k in new[g] if old[g][k] != new[g][k] and k != "resume"]
            except ConfigError as e:
                changed = [f"(the earlier config.yaml does not read: {e})"]
            if changed:
                say(f"note: config differs from the run being resumed in: {', '.join(changed)}")
        dump_config(cfg, previous)
    if precision_note:
        say(f"note: {precision_note}")
    if accelerator.device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        # Leave a core to each data worker: oversubscribed OpenMP threads spin-wait and a CPU step
        # gets several times slower (seen here: 15 s instead of 1 s per tiny step on 2 cores).
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(max(1, cores // world - cfg.data.num_workers))

    # Model and optimizer. The same seed on every rank for the initial weights, then a rank-specific
    # one so that ranks draw different masks.
    set_seed(cfg.train.seed)
    model = build_model(cfg.model)
    set_seed(cfg.train.seed, device_specific=True)
    optimizer = torch.optim.AdamW(param_groups(model, cfg.optim.weight_decay, cfg.optim.encoder_lr_scale), lr=0.0,
                                  betas=tuple(cfg.optim.betas))
    model, optimizer = accelerator.prepare(model, optimizer)  # not the loader: see siammae.data
    progress = Progress()
    accelerator.register_for_checkpointing(progress)

    total_steps, warmup_steps = run_lengths(cfg)
    peak_lr = cfg.optim.base_lr * cfg.train.global_batch_size / 256
    if resume is not None:
        accelerator.load_state(str(resume))
        say(f"resuming from {resume} at step {progress.step}")
    if main_proc:
        keep_metrics_until(out / "metrics.jsonl", progress.step)
    if cfg.train.tensorboard:
        accelerator.init_trackers("tensorboard", config=flat_hparams(cfg))
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    threads = torch.get_num_threads()
    device = accelerator.device.type + (f" ({threads} thread{'s' * (threads != 1)})" if accelerator.device.type == "cpu" else "")
    say(f"siammae.train: {describe(urls)}; {n_params / 1e6:.1f}M trainable parameters; {world} process(es) on "
        f"{device}, precision {accelerator.mixed_precision}; {total_steps} steps of "
        f"{cfg.train.global_batch_size} pairs ({micro_batch} per process x {accum} accumulation), "
        f"warm-up {warmup_steps} steps, peak lr {peak_lr:.3g}; run folder {out}")

    if monitor is not None:
        say(f"evaluation: {monitor.describe()}")
        if progress.step == 0:
            run_monitor(monitor, accelerator, model, 0, out, cfg)

    bar = tqdm(total=total_steps, initial=progress.step, disable=not main_proc, dynamic_ncols=True,
               unit="step", smoothing=0.05)
    session_start, session_start_step = time.perf_counter(), progress.step
    seconds_before = progress.train_seconds
    window = dict(t=time.perf_counter(), wait=0.0, steps=0, loss=0.0, n_loss=0)
    data_iter, segment_end = None, progress.step
    stop_signal = catch_stop_signals()
    frames_u8 = None
    last_ckpt = resume

    while progress.step < total_steps:
        step = progress.step
        if step >= segment_end:
            data_iter, segment_end = segment_loader(urls, cfg, step, total_steps, micro_batch, accelerator)
        lr = learning_rate(step, peak_lr, cfg.optim.min_lr, warmup_steps, total_steps)
        for group in optimizer.param_groups:
            group["lr"] = lr * group["lr_scale"]

        # One optimizer step: grad_accum micro-batches; gradients are all-reduced on the last one.
        loss_sum = torch.zeros((), device=accelerator.device)
        nonfinite = torch.zeros((), device=accelerator.device)
        skipped, keys = 0, []
        for _ in range(accum):
            t0 = time.perf_counter()
            batch = next(data_iter)
            window["wait"] += time.perf_counter() - t0
            skipped += batch["skipped"]
            keys.extend(batch["keys"])
            frames_u8 = batch["frames"].to(accelerator.device, non_blocking=True)
            with accelerator.accumulate(model):
                loss, _, _ = model(normalize(frames_u8))
                accelerator.backward(loss)  # also when not finite: every rank must join the all-reduce
            finite = torch.isfinite(loss.detach())
            loss_sum += torch.where(finite, loss.detach().float(), 0.0)
            nonfinite += (~finite).float()

        # One small all-reduce: mean loss, non-finite micro-batches, skipped samples and stop requests
        # over all ranks, so every rank takes the same decisions below.
        local = torch.cat([torch.stack([loss_sum, nonfinite]),
                           torch.tensor([float(skipped), float(stop_signal["signal"] > 0)], device=accelerator.device)])
        total_loss, bad, skipped_all, signalled = accelerator.reduce(local, "sum").tolist()
        if bad > 0:  # gradients hold NaN/inf on every rank after the all-reduce: drop them
            optimizer.zero_grad(set_to_none=True)
            progress.nonfinite += 1
            progress.nonfinite_in_a_row += 1
        else:
            if cfg.optim.clip_grad > 0:
                accelerator.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            progress.overflow += int(accelerator.optimizer_step_was_skipped)
            progress.nonfinite_in_a_row = 0
            good = world * accum - bad
            window["loss"] += total_loss / good
            window["n_loss"] += 1
        progress.step += 1
        progress.samples += cfg.train.global_batch_size
        progress.skipped += int(skipped_all)
        window["steps"] += 1
        step = progress.step
        if on_step is not None:
            on_step(step, model, keys, accelerator)

        stop = progress.nonfinite_in_a_row >= cfg.train.max_nonfinite  # the same on every rank

        # Logs, pictures, checkpoints.
        if step % cfg.train.log_every == 0 or step == total_steps or stop:
            elapsed = time.perf_counter() - window["t"]
            record = dict(step=step, samples=progress.samples,
                          loss=window["loss"] / window["n_loss"] if window["n_loss"] else float("nan"),
                          lr=lr, pairs_per_s=window["steps"] * cfg.train.global_batch_size / elapsed,
                          data_wait=window["wait"] / elapsed, skipped=progress.skipped,
                          nonfinite=progress.nonfinite, overflow=progress.overflow)
            if main_proc:
                append_metrics(out, record)
                bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{lr:.2e}", pairs_s=f"{record['pairs_per_s']:.1f}",
                                skipped=progress.skipped, refresh=False)
            if cfg.train.tensorboard:
                accelerator.log({k: v for k, v in record.items() if k != "step"}, step=step)
            window = dict(t=time.perf_counter(), wait=0.0, steps=0, loss=0.0, n_loss=0)
        if stop:
            bar.close()
            accelerator.end_training()
            if main_proc:
                print(f"error: {nonfinite_message(step, progress.nonfinite_in_a_row, accelerator.mixed_precision)}",
                      file=sys.stderr)
            raise SystemExit(1)
        if main_proc and cfg.train.recon_every > 0 and (step % cfg.train.recon_every == 0 or step == total_steps):
            write_recon(accelerator, model, frames_u8, out, step, cfg)
        if monitor is not None and monitor.due(step, total_steps):
            run_monitor(monitor, accelerator, model, step, out, cfg, bar)
        if step % cfg.train.save_every == 0 or step == total_steps or signalled:
            progress.train_seconds = seconds_before + time.perf_counter() - session_start
            last_ckpt = save_checkpoint(accelerator, ckpt_root, step, cfg.train.keep_last)
        bar.update(1)
        if signalled:
            bar.close()
            accelerator.end_training()
            say(f"stopped by a signal after step {step}; checkpoint {last_ckpt}; run the same command to continue")
            raise SystemExit(128 + (stop_signal["signal"] or signal.SIGTERM))

    bar.close()
    wall = time.perf_counter() - session_start
    steps_done = progress.step - session_start_step
    summary = dict(steps=progress.step, samples=progress.samples, wall_s=round(wall, 1),
                   pairs_per_s=round(steps_done * cfg.train.global_batch_size / wall, 1) if steps_done else 0.0,
                   skipped=progress.skipped, nonfinite=progress.nonfinite,
                   checkpoint=str(last_ckpt) if last_ckpt else None)
    if steps_done == 0:
        say(f"nothing to do: the run in {out} already has all {total_steps} steps (checkpoint {last_ckpt})")
    else:
        say(f"done: {progress.step} steps, {progress.samples} pairs seen, {wall / 60:.1f} min this session, "
            f"{summary['pairs_per_s']} pairs/s, {progress.skipped} samples skipped, "
            f"{progress.nonfinite} non-finite steps; checkpoint {last_ckpt}")
    accelerator.end_training()
    return summary


if __name__ == "__main__":
    main()
