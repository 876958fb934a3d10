"""The trainer: schedule and optimizer groups, checkpoint bookkeeping, and end-to-end runs of the tiny
recipe on synthetic shards (learning, outputs, exact resume, two processes, failures before work).

End-to-end runs are subprocesses, as a user runs them (``python -m siammae.train`` / torchrun), with
one thread each so that CPU results are reproducible and the 2-core machines are not oversubscribed.
"""

import json
import math
import os
import platform
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from train_fixtures import corrupt_first_jpeg, read_records, truncate, write_shards

from siammae.config import ConfigError, load_config
from siammae.train import loop as train
from siammae.train import runfolder, schedule
from siammae.weights import COMPLETE, checkpoint_dirs

REPO = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "train_fixtures.py"
# tiny, made smaller still: 4x4 patches of 8 px, 8 pairs a step, 12 steps, checkpoints every 6.
SMALL = [
    "model.img_size=32",
    "data.shuffle_buffer=16",
    "train.global_batch_size=8",
    "train.samples=96",
    "train.save_every=6",
    "train.log_every=1",
    "train.recon_every=6",
    "optim.warmup_samples=16",
]


def env():
    e = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONPATH=str(REPO))
    e.pop("CUDA_VISIBLE_DEVICES", None)
    return e


def run(args, timeout=300, check=True):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, env=env(), capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise AssertionError(f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def trainer(out, shards, *extra, record=None, exit_at=0, check=True):
    overrides = ["tiny", f"data.shards={shards}", f"train.output_dir={out}", *SMALL, *extra]
    if record is None:
        return run(["-m", "siammae.train", *overrides], check=check)
    return run([str(FIXTURES), str(record), str(exit_at), *overrides], check=check)


def straight_and_resumed(recipe: str, base: Path) -> Path:
    """``recipe`` on small synthetic shards in ``base``: 12 steps straight (recorded in rec_straight), and
    the same run killed at step 8 and resumed (rec_resumed). -> ``base``."""
    from train_fixtures import write_shards

    shards = base / "shards"
    write_shards(shards, num_shards=4, per_shard=8, width=64, height=48)

    def trainer(out, record, exit_at=0):
        args = [str(FIXTURES), str(record), str(exit_at), recipe, f"data.shards={shards}",
                f"train.output_dir={out}", *SMALL, "data.num_workers=0", "train.log_with=none"]  # fmt: skip
        return run(args, check=exit_at == 0)

    trainer(base / "straight", base / "rec_straight")
    killed = trainer(base / "resumed", base / "rec_resumed", exit_at=8)
    assert killed.returncode == 17, killed.stderr[-2000:]
    trainer(base / "resumed", base / "rec_resumed")
    return base


def metrics(out):
    return [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    """Four shards, one cut short and one with a corrupt JPEG: the runs below must skip and count them."""
    folder = tmp_path_factory.mktemp("shards")
    paths = write_shards(folder, num_shards=4, per_shard=8, width=64, height=48)
    truncate(paths[0])
    corrupt_first_jpeg(paths[1])
    return folder


@pytest.fixture(scope="module")
def straight(tmp_path_factory, shards):
    """12 steps without interruption, recorded step by step."""
    base = tmp_path_factory.mktemp("straight")
    proc = trainer(base / "run", shards, "data.num_workers=1", record=base / "record")
    return base, proc


# ----------------------------------------------------------------------------- pure helpers


def test_learning_rate_warms_up_then_follows_a_cosine():
    lrs = [schedule.learning_rate(s, 1.0, 0.1, 10, 110) for s in range(110)]
    assert lrs[0] == pytest.approx(0.1) and lrs[9] == pytest.approx(1.0)
    assert all(a < b for a, b in zip(lrs[:10], lrs[1:10]))
    assert lrs[10] == pytest.approx(1.0) and lrs[60] == pytest.approx(0.55)
    assert all(a >= b for a, b in zip(lrs[10:], lrs[11:])) and lrs[-1] > 0.1
    assert schedule.learning_rate(110, 1.0, 0.1, 10, 110) == pytest.approx(0.1)
    assert schedule.learning_rate(0, 1.0, 0.0, 0, 10) == pytest.approx(1.0)  # no warm-up


def test_run_lengths_in_samples_or_epochs():
    cfg = load_config("base")
    total, warmup = schedule.run_lengths(cfg)
    assert total == math.ceil(2000 * 240_000 / 2048) and warmup == round(40 * 240_000 / 2048)
    cfg = load_config("base", ["train.samples=4096", "optim.warmup_samples=2048"])
    assert schedule.run_lengths(cfg) == (2, 1)


def test_no_weight_decay_on_biases_norms_positions_and_tokens():
    from siammae.models import build_model

    cfg = load_config("tiny", ["model.img_size=32"])
    model = build_model(cfg)
    decay, no_decay = schedule.param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    no_decay_names = {names[id(p)] for p in no_decay["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"encoder.cls_token", "decoder.mask_token"} <= no_decay_names
    assert all(n.endswith("bias") or "norm" in n or "token" in n for n in no_decay_names)
    assert "encoder.blocks.0.attn.qkv.weight" in decay_names
    assert not any("pos_embed" in n for n in decay_names | no_decay_names)  # frozen sin-cos: not trained
    assert len(decay_names | no_decay_names) == sum(p.requires_grad for p in model.parameters())
    assert decay["lr_scale"] == no_decay["lr_scale"] == 1.0


def test_encoder_lr_scale_applies_to_the_encoder_only():
    from siammae.models import build_model

    model = build_model(load_config("tiny", ["model.img_size=32"]))
    names = {id(p): n for n, p in model.named_parameters()}
    groups = schedule.param_groups(model, 0.05, encoder_lr_scale=0.1)
    assert len(groups) == 4
    for g in groups:
        in_encoder = {names[id(p)].startswith("encoder.") for p in g["params"]}
        assert in_encoder == {g["lr_scale"] == 0.1}


def test_resume_picks_newest_complete_checkpoint(tmp_path):
    root = tmp_path / "checkpoints"
    for step, complete in [(6, True), (12, True), (18, False)]:  # 18: killed while saving
        (root / f"checkpoint_{step}").mkdir(parents=True)
        if complete:
            (root / f"checkpoint_{step}" / COMPLETE).write_text("{}")
    cfg = load_config("tiny", [f"train.output_dir={tmp_path}"])
    assert runfolder.resume_from(cfg, root) == root / "checkpoint_12"
    cfg.train.resume = str(root / "checkpoint_6")
    assert runfolder.resume_from(cfg, root) == root / "checkpoint_6"
    cfg.train.resume = str(root / "checkpoint_18")
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        runfolder.resume_from(cfg, root)
    cfg.train.resume = "never"
    assert runfolder.resume_from(cfg, root) is None
    (tmp_path / "metrics.jsonl").write_text("{}\n")
    aside = runfolder.set_aside(tmp_path)  # a fresh start moves the earlier run aside, deletes nothing
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoints", "metrics.jsonl"]
    assert len(list((aside / "checkpoints").iterdir())) == 3 and not root.exists()
    assert runfolder.set_aside(tmp_path) is None


class FakeAccelerator:
    """Just what save_checkpoint uses; ``save_state`` can die half-way, like a killed process."""

    is_main_process = True

    def __init__(self, die=False):
        self.die = die

    def wait_for_everyone(self):
        pass

    def save_state(self, path):
        Path(path).mkdir(parents=True)
        (Path(path) / "model.safetensors").write_bytes(b"weights")
        if self.die:
            raise KeyboardInterrupt("killed while saving")
        (Path(path) / "optimizer.bin").write_bytes(b"state")


def test_checkpoints_are_marked_complete_pruned_and_survive_a_kill_while_saving(tmp_path):
    root = tmp_path / "checkpoints"
    for step in (6, 12):
        runfolder.save_checkpoint(FakeAccelerator(), root, step, keep=2)
    with pytest.raises(KeyboardInterrupt):
        runfolder.save_checkpoint(FakeAccelerator(die=True), root, 18, keep=2)
    assert [p.name for p in checkpoint_dirs(root)] == ["checkpoint_6", "checkpoint_12"]
    cfg = load_config("tiny")
    assert runfolder.resume_from(cfg, root) == root / "checkpoint_12"  # the half-written 18 is ignored
    runfolder.save_checkpoint(FakeAccelerator(), root, 18, keep=2)  # redoing step 18 replaces the leftover
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_12", "checkpoint_18"]
    assert (root / "checkpoint_18" / "optimizer.bin").is_file() and (root / "checkpoint_18" / "complete").is_file()


def test_throughput_reads_from_new_and_old_metrics_records():
    assert runfolder.samples_per_s({"step": 1, "samples_per_s": 12.5}) == 12.5
    assert runfolder.samples_per_s({"step": 1, "pairs_per_s": 9.0}) == 9.0  # metrics.jsonl before clip methods


def test_a_failed_save_removes_its_partial_files_and_says_where_training_resumes(tmp_path):
    import errno

    class FullDisk(FakeAccelerator):
        def save_state(self, path):
            Path(path).mkdir(parents=True)
            (Path(path) / "model.safetensors").write_bytes(b"w" * 3_000_000)
            raise OSError(errno.ENOSPC, "No space left on device")

    root = tmp_path / "checkpoints"
    with pytest.raises(runfolder.CheckpointError, match="more than the 3 MB written.*from the start"):
        runfolder.save_checkpoint(FullDisk(), root, 6, keep=2)
    runfolder.save_checkpoint(FakeAccelerator(), root, 6, keep=2)
    with pytest.raises(runfolder.CheckpointError, match="No space left.*takes 0 MB.*resumes from checkpoint_6"):
        runfolder.save_checkpoint(FullDisk(), root, 12, keep=2)
    assert sorted(p.name for p in root.iterdir()) == ["checkpoint_6"]


def test_metrics_after_the_checkpoint_are_dropped_on_resume(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(dict(step=s)) + "\n" for s in range(1, 9)) + '{"step": 9, "lo')
    runfolder.keep_metrics_until(path, 6)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2, 3, 4, 5, 6]


# ----------------------------------------------------------------------------- end to end


def test_tiny_run_learns_and_writes_checkpoints_pictures_and_logs(straight):
    base, proc = straight
    out = base / "run"
    recs = metrics(out)
    assert [r["step"] for r in recs] == list(range(1, 13))
    losses = [r["loss"] for r in recs]
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    assert all(r["samples_per_s"] > 0 and 0 <= r["data_wait"] <= 1 for r in recs)
    assert recs[-1]["skipped"] > 0, "the truncated shard and the corrupt JPEG are counted in the metrics"
    assert load_config(out / "config.yaml").train.global_batch_size == 8  # resolved config, loadable
    ckpts = sorted(p.name for p in (out / "checkpoints").iterdir())
    assert ckpts == ["checkpoint_12", "checkpoint_6"]  # keep_last=2
    for name in ckpts:
        assert (out / "checkpoints" / name / "complete").is_file()
        assert (out / "checkpoints" / name / "model.safetensors").is_file()
    assert sorted(p.name for p in (out / "recon").iterdir()) == ["step_0000006.png", "step_0000012.png"]
    assert list((out / "tensorboard").rglob("events.out.tfevents*"))
    assert "done: 12 steps, 96 samples (frame pairs) seen" in proc.stdout + proc.stderr
    if platform.libc_ver()[0] == "glibc":  # CPU steps reuse freed memory (siammae.allocator)
        assert "host memory: freed memory kept for reuse" in proc.stdout + proc.stderr
    assert f"{recs[-1]['skipped']} samples skipped" in proc.stdout + proc.stderr
    from siammae.pictures import plot_loss_curve

    assert plot_loss_curve(out / "metrics.jsonl", base / "loss.png").stat().st_size > 1000


def test_resume_after_a_kill_equals_the_straight_run(straight, shards, tmp_path):
    base, _ = straight
    out, record = tmp_path / "run", tmp_path / "record"
    killed = trainer(out, shards, "data.num_workers=1", record=record, exit_at=8, check=False)
    assert killed.returncode == 17, killed.stderr[-2000:]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_6"]
    proc = trainer(out, shards, "data.num_workers=1", record=record)
    assert "resuming from" in proc.stdout + proc.stderr

    want, got = read_records(base / "record"), read_records(record)
    assert [r["step"] for r in got] == list(range(1, 8)) + list(range(7, 13))
    got = {r["step"]: r for r in got}  # the resumed run's records overwrite the killed run's
    for r in want:
        assert got[r["step"]]["keys"] == r["keys"], f"step {r['step']} read other samples"
        assert got[r["step"]]["weights"] == pytest.approx(r["weights"], rel=1e-6), f"weights differ at step {r['step']}"
    m_want, m_got = metrics(base / "run"), metrics(out)
    assert [r["step"] for r in m_got] == list(range(1, 13))
    assert [r["lr"] for r in m_got] == [r["lr"] for r in m_want]
    assert [r["loss"] for r in m_got] == pytest.approx([r["loss"] for r in m_want], rel=1e-5)
    a = load_file(base / "run" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    b = load_file(out / "checkpoints" / "checkpoint_12" / "model.safetensors")
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)
    again = trainer(out, shards, "data.num_workers=1")
    assert "nothing to do" in again.stdout + again.stderr


def test_sigterm_saves_where_it_is_and_the_run_continues(straight, shards, tmp_path):
    base, _ = straight
    out, record = tmp_path / "run", tmp_path / "record"
    stopped = trainer(out, shards, "data.num_workers=1", record=record, exit_at=-8, check=False)
    assert stopped.returncode == 128 + 15, stopped.stderr[-2000:]
    # the signal arrives during step 8's callback: step 9 notices it (in the all-reduce) and saves
    assert "stopped by a signal after step 9" in stopped.stdout + stopped.stderr
    assert [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["checkpoint_6", "checkpoint_9"]
    trainer(out, shards, "data.num_workers=1", record=record)
    steps = [r["step"] for r in read_records(record)]
    assert steps == list(range(1, 13))  # nothing lost, nothing repeated
    assert [r["lr"] for r in metrics(out)] == [r["lr"] for r in metrics(base / "run")]


def test_gradient_accumulation_matches_one_big_batch(straight, shards, tmp_path):
    """2 micro-batches of 4 read the same 8 pairs and draw the same masks as one batch of 8: the
    weights after each step match the straight run's (same run length, so the same schedule)."""
    base, _ = straight
    record = tmp_path / "record"
    proc = trainer(
        tmp_path / "run", shards, "data.num_workers=1", "train.grad_accum=2", record=record, exit_at=4, check=False
    )
    assert proc.returncode == 17, proc.stderr[-2000:]
    want, got = read_records(base / "record")[:3], read_records(record)
    assert [r["step"] for r in got] == [1, 2, 3]
    for a, b in zip(want, got):
        assert a["keys"] == b["keys"]
        assert b["weights"] == pytest.approx(a["weights"], rel=1e-7)  # one update moves them ~1e-4


def test_two_processes_same_steps_different_shards_identical_weights(shards, tmp_path):
    record = tmp_path / "record"
    overrides = ["tiny", f"data.shards={shards}", f"train.output_dir={tmp_path / 'run'}", *SMALL, "train.samples=32",
                 "data.num_workers=0", "train.log_with=none"]  # fmt: skip
    launcher = "-m torch.distributed.run --nproc_per_node 2 --master_port 29533".split()
    run([*launcher, str(FIXTURES), str(record), "0", *overrides])
    r0, r1 = read_records(record, 0), read_records(record, 1)
    assert [r["step"] for r in r0] == [r["step"] for r in r1] == [1, 2, 3, 4]
    assert r0[0]["world"] == 2
    for a, b in zip(r0, r1):
        assert a["weights"] == b["weights"], f"ranks diverged at step {a['step']}"
        assert len(a["keys"]) == len(b["keys"]) == 4  # 8 pairs a step, 4 per process
    shards0 = {k.split("#")[0] for r in r0 for k in r["keys"]}
    shards1 = {k.split("#")[0] for r in r1 for k in r["keys"]}
    assert shards0 and shards1 and not shards0 & shards1
    assert r0[0]["weights"] != r0[-1]["weights"]


def test_bad_key_or_missing_shards_fail_before_any_work(shards, tmp_path):
    proc = trainer(tmp_path / "a", shards, "train.bogus=1", check=False)
    assert proc.returncode == 2 and "train.bogus" in proc.stderr
    proc = trainer(tmp_path / "b", tmp_path / "no_shards_here", check=False)
    assert proc.returncode == 2 and "does not exist" in proc.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_persistent_non_finite_loss_stops_with_a_clear_message(shards, tmp_path):
    proc = trainer(
        tmp_path / "run",
        shards,
        "optim.base_lr=1e36",
        "optim.clip_grad=0",
        "train.max_nonfinite=3",
        "data.num_workers=0",
        "train.log_with=none",
        check=False,
    )
    assert proc.returncode != 0
    assert "not finite for 3 steps in a row" in proc.stderr and "stopping at step" in proc.stderr
    recs = metrics(tmp_path / "run")
    assert recs[-1]["nonfinite"] == 3


# ----------------------------------------------------------------------------- J&F during training


@pytest.fixture(scope="module")
def small_davis(tmp_path_factory):
    from siammae.synth.scenes import synth_davis

    root = tmp_path_factory.mktemp("davis")
    synth_davis(root, num_sequences=2, frames=4, size=(48, 80), seed=0)
    return root


def test_jf_is_evaluated_at_step_0_and_every_n_steps_and_drawn(shards, small_davis, tmp_path):
    out = tmp_path / "run"
    proc = trainer(
        out,
        shards,
        f"eval.davis={small_davis}",
        "eval.every=6",
        "eval.size=48",
        "eval.sequences=1",
        "data.num_workers=0",
    )
    evals = [r for r in metrics(out) if "eval_jf" in r]
    assert [r["step"] for r in evals] == [0, 6, 12]
    assert "eval_copy_jf" in evals[0] and all("eval_copy_jf" not in r for r in evals[1:])
    for r in evals:
        assert 0 <= r["eval_jf"] <= 1 and 1 <= r["eval_effective_rank"] and 0 <= r["eval_position_share"] <= 1
    assert "step 0: J&F" in proc.stdout + proc.stderr
    assert (out / "loss_curve.png").stat().st_size > 1000
    assert sorted(p.name for p in (out / "eval" / "latest").iterdir() if p.is_dir()) == ["synth-000"]
    # The monitor draws nothing from the training's random stream: same weights as a run without it.
    plain = tmp_path / "plain"
    trainer(plain, shards, "data.num_workers=0")
    a = load_file(out / "checkpoints" / "checkpoint_12" / "model.safetensors")
    b = load_file(plain / "checkpoints" / "checkpoint_12" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_failing_evaluation_is_logged_and_training_goes_on(shards, small_davis, tmp_path):
    import shutil

    davis = tmp_path / "davis"
    shutil.copytree(small_davis, davis)
    (davis / "JPEGImages/480p/synth-000/00002.jpg").write_bytes(b"not a jpeg")
    out = tmp_path / "run"
    proc = trainer(out, shards, f"eval.davis={davis}", "eval.every=6", "eval.size=48", "data.num_workers=0")
    errors = [r for r in metrics(out) if "eval_error" in r]
    assert [r["step"] for r in errors] == [0, 6, 12] and "00002.jpg" in errors[0]["eval_error"]
    assert "evaluation at step 6 failed (training goes on)" in proc.stdout + proc.stderr
    assert (out / "checkpoints" / "checkpoint_12").is_dir()


def test_a_missing_eval_folder_fails_before_any_work(shards, tmp_path):
    proc = trainer(tmp_path / "run", shards, f"eval.davis={tmp_path / 'nowhere'}", check=False)
    assert proc.returncode == 2 and "eval.davis=" in proc.stderr and "nowhere" in proc.stderr
    assert not (tmp_path / "run").exists()


def test_two_processes_evaluate_on_rank_0_only_and_neither_hangs(shards, small_davis, tmp_path):
    out = tmp_path / "run"
    overrides = ["tiny", f"data.shards={shards}", f"train.output_dir={out}", *SMALL, "train.samples=32",
                 "data.num_workers=0", "train.log_with=none", f"eval.davis={small_davis}", "eval.every=2",
                 "eval.size=48", "eval.sequences=1"]  # fmt: skip
    launcher = "-m torch.distributed.run --nproc_per_node 2 --master_port 29534".split()
    run([*launcher, "-m", "siammae.train", *overrides], timeout=240)
    assert [r["step"] for r in metrics(out) if "eval_jf" in r] == [0, 2, 4]
    assert (out / "checkpoints" / "checkpoint_4").is_dir()


def test_the_loop_logs_the_model_scalars_without_knowing_the_method():
    """A model returns its loss and any scalars it wants logged (here a toy objective, as a contrastive
    term would be); one optimizer step over two micro-batches averages both and steps the weights."""
    from accelerate import Accelerator

    from siammae.models.common import Output

    class Toy(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.ones(()))

        def forward(self, frames):
            loss = (self.w * frames.mean()) ** 2
            return Output(loss, frames[:, -1], torch.zeros(len(frames), 1), logs={"contrast": 2 * self.w.detach()})

    cfg = load_config("tiny", ["train.grad_accum=2"])
    accelerator = Accelerator(cpu=True, gradient_accumulation_steps=2)
    toy = Toy()
    model, optimizer = accelerator.prepare(toy, torch.optim.SGD(toy.parameters(), lr=0.1))
    batch = dict(frames=torch.full((2, 2, 3, 8, 8), 200, dtype=torch.uint8), skipped=1, keys=["a", "b"])
    window = train.MetricsWindow()
    result = train.optimizer_step(model, optimizer, iter([batch, batch]), accelerator, cfg, window, {"signal": 0})
    assert result["finite"] and result["skipped"] == 2 and result["keys"] == ["a", "b", "a", "b"]
    record = window.record(1, train.Progress(), 0.1, 4)
    assert record["contrast"] == pytest.approx(2.0) and record["loss"] > 0
    assert model.w.item() < 1.0, "the step was taken"


def test_the_recipe_wins_over_accelerate_launch_and_says_so(monkeypatch):
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "bf16")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "4")
    cfg = load_config("tiny", ["train.grad_accum=2", "train.log_with=none"])
    notes = train.launcher_notes(cfg)
    assert len(notes) == 2 and "'bf16'" in notes[0] and "'no' is used" in notes[0]
    assert "accumulation 4" in notes[1] and "train.grad_accum=2 is used" in notes[1]
    from accelerate.state import AcceleratorState

    threads = torch.get_num_threads()
    AcceleratorState._reset_state(reset_partial_state=True)
    try:
        accelerator, micro = train.make_accelerator(cfg)
        assert accelerator.gradient_accumulation_steps == 2 and micro == 8  # not the launcher's 4
    finally:  # leave the process as the other tests expect it
        AcceleratorState._reset_state(reset_partial_state=True)
        torch.set_num_threads(threads)
    monkeypatch.setenv("ACCELERATE_MIXED_PRECISION", "no")
    monkeypatch.setenv("ACCELERATE_GRADIENT_ACCUMULATION_STEPS", "2")
    assert train.launcher_notes(cfg) == []


def test_wandb_logs_offline_with_the_config_as_hyperparameters(shards, tmp_path):
    pytest.importorskip("wandb", reason="wandb is not installed (pip install wandb to run this test)")
    out = tmp_path / "run"
    overrides = ["tiny", f"data.shards={shards}", f"train.output_dir={out}", *SMALL, "train.samples=32",
                 "data.num_workers=0", "train.log_with=all"]  # fmt: skip
    e = dict(env(), WANDB_MODE="offline", WANDB_SILENT="true")
    proc = subprocess.run(
        [sys.executable, "-m", "siammae.train", *overrides],
        cwd=REPO,
        env=e,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    records = list((out / "wandb").glob("offline-run-*/*.wandb"))  # the run's log, synced later by `wandb sync`
    assert len(records) == 1, list((out / "wandb").rglob("*"))
    logged = records[0].read_bytes()
    assert b"model.arch" in logged and b"vit_tiny" in logged, "the resolved config is the run's hyper-parameters"
    assert b"samples_per_s" in logged and b"loss" in logged, "and the metrics are logged"
    assert list((out / "tensorboard").rglob("events.out.tfevents*")), "all = TensorBoard too"


def test_wandb_without_the_package_fails_before_any_work(shards, tmp_path):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    proc = trainer(tmp_path / "run", shards, "train.log_with=wandb", check=False)
    assert proc.returncode == 2
    assert (
        proc.stderr.strip().splitlines()[-1] == "error: train.log_with=wandb needs the wandb package: pip install wandb"
    )
    assert not (tmp_path / "run").exists()


def _file_size_limit(limit: int):
    """preexec_fn: no file above ``limit`` bytes can be written (EFBIG, as a full disk's ENOSPC)."""

    def apply():
        import resource
        import signal

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # the write fails instead of killing the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_while_saving_is_one_line_and_the_rerun_resumes(straight, shards, tmp_path):
    base, _ = straight
    out = tmp_path / "run"
    killed = trainer(out, shards, "data.num_workers=1", record=tmp_path / "record", exit_at=8, check=False)
    assert killed.returncode == 17 and [p.name for p in checkpoint_dirs(out / "checkpoints")] == ["checkpoint_6"]
    command = [sys.executable, "-m", "siammae.train", "tiny", f"data.shards={shards}", f"train.output_dir={out}"]
    command += [*SMALL, "data.num_workers=1"]
    full = subprocess.run(  # the weights file (~22 MB) cannot be written
        command, cwd=REPO, env=env(), capture_output=True, text=True, timeout=300, preexec_fn=_file_size_limit(8 << 20)
    )
    assert full.returncode == 2, full.stderr[-2000:]
    error = [line for line in full.stderr.splitlines() if "saving checkpoint_12" in line]
    assert len(error) == 1 and "File too large" in error[0] and "MB are free" in error[0], full.stderr[-2000:]
    assert "resumes from checkpoint_6" in error[0]
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["checkpoint_6"]  # nothing half-written
    trainer(out, shards, "data.num_workers=1")
    a = load_file(base / "run" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    b = load_file(out / "checkpoints" / "checkpoint_12" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_kill_9_three_times_then_rerun_gives_the_uninterrupted_weights(shards, tmp_path):
    """Checkpoints every 2 steps, so kills land in steps and in saves. (The data segment between two
    checkpoints is seeded by its start step, so the uninterrupted run to compare with saves every 2 too.)"""
    trainer(tmp_path / "straight", shards, "data.num_workers=1", "train.save_every=2")
    out, rng, progress = tmp_path / "run", random.Random(0), []
    command = [sys.executable, "-m", "siammae.train", "tiny", f"data.shards={shards}", f"train.output_dir={out}"]
    command += [*SMALL, "data.num_workers=1", "train.save_every=2"]
    for _ in range(3):  # killed at a random moment after its next logged step (during a step, a save, ...)
        done = len(metrics(out)) if (out / "metrics.jsonl").is_file() else 0
        process = subprocess.Popen(command, cwd=REPO, env=env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 120
        while time.time() < deadline and process.poll() is None:
            if (out / "metrics.jsonl").is_file() and len((out / "metrics.jsonl").read_text().splitlines()) > done:
                break
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
        progress.append([p.name for p in checkpoint_dirs(out / "checkpoints")])
    assert progress[-1] and "checkpoint_12" not in progress[-1], progress
    trainer(out, shards, "data.num_workers=1", "train.save_every=2")
    assert [r["step"] for r in metrics(out)] == list(range(1, 13))
    a = load_file(tmp_path / "straight" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    b = load_file(out / "checkpoints" / "checkpoint_12" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
