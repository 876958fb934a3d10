"""The GPU paths, exercised on the CPU: bf16 autocast steps, fp16 loss scaling (overflow skipped and
counted, scaler state through a checkpoint), the SDPA kernel choice, and tools/gpu_check.py end to end
in its --cpu-dry-run mode."""

import json
import subprocess
import sys

import pytest
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from test_train import REPO, env, metrics, trainer
from train_fixtures import write_shards

from siammae.config import load_config
from siammae.models import build_model
from siammae.models.common import Output
from siammae.models.kernels import AttentionKernelError, check_sdpa_backend
from siammae.train import loop as train
from siammae.train.runfolder import save_checkpoint
from siammae.train.schedule import make_optimizer, set_learning_rate


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, num_shards=2, per_shard=8, width=64, height=48)
    return folder


def test_bf16_autocast_runs_the_trainer(shards, tmp_path):
    proc = trainer(
        tmp_path / "run",
        shards,
        "train.mixed_precision=bf16",
        "train.samples=32",
        "train.log_with=none",
        "data.num_workers=0",
    )
    assert "precision bf16" in proc.stdout + proc.stderr
    recs = metrics(tmp_path / "run")
    assert [r["step"] for r in recs] == [1, 2, 3, 4]
    assert all(torch.isfinite(torch.tensor(r["loss"])) for r in recs) and recs[-1]["nonfinite"] == 0


class Overflowing(torch.nn.Module):
    """The tiny model with its loss multiplied by ``factor`` (the test sets it): a huge factor makes
    the scaled gradients overflow while the loss itself stays finite, as fp16 overflow does."""

    def __init__(self, model):
        super().__init__()
        self.model, self.factor = model, 1.0

    def forward(self, frames):
        out = self.model(frames)
        return Output(out.loss * self.factor, out.pred, out.mask, out.logs)


@pytest.fixture
def fresh_accelerate_state():
    AcceleratorState._reset_state(reset_partial_state=True)
    yield
    AcceleratorState._reset_state(reset_partial_state=True)


def fp16_accelerator():
    """fp16 as the trainer asks for it; on the CPU, Accelerate gives no loss scaler (no fp16 autocast
    there), so the test supplies one: the trainer's step code then scales, unscales, skips and
    updates exactly as on a GPU."""
    accelerator = Accelerator(cpu=True, mixed_precision="fp16")
    if accelerator.scaler is None:
        accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=1000)
    return accelerator


def test_fp16_loss_scaling_skips_and_counts_an_overflow_and_checkpoints_the_scaler(fresh_accelerate_state, tmp_path):
    cfg = load_config("tiny", ["model.img_size=32", "train.global_batch_size=4"])
    accelerator = fp16_accelerator()
    torch.manual_seed(0)
    net = Overflowing(build_model(cfg))
    model, optimizer = accelerator.prepare(net, make_optimizer(net, cfg))
    set_learning_rate(optimizer, 1e-3)  # the schedule's step 0 is 0
    progress = train.Progress()
    accelerator.register_for_checkpointing(progress)
    batch = dict(frames=torch.randint(0, 256, (4, 2, 3, 32, 32), dtype=torch.uint8), skipped=0, keys=["k"] * 4)

    def step():
        result = train.optimizer_step(
            model, optimizer, iter([batch]), accelerator, cfg, train.MetricsWindow(), {"signal": 0}
        )
        progress.advance(result["finite"], accelerator.optimizer_step_was_skipped, 0, 4)
        return result

    def weights():
        return [p.detach().clone() for p in net.parameters()]

    scale = accelerator.scaler.get_scale()
    before = weights()
    assert step()["finite"] and not accelerator.optimizer_step_was_skipped
    assert any(not torch.equal(a, b) for a, b in zip(before, weights())), "a normal step updates the weights"

    net.factor = 1e36  # finite loss, scaled gradients overflow
    before = weights()
    assert step()["finite"] and accelerator.optimizer_step_was_skipped
    assert all(torch.equal(a, b) for a, b in zip(before, weights())), "the overflowing step is skipped"
    assert accelerator.scaler.get_scale() == scale / 2, "and the scale backs off"
    assert (progress.overflow, progress.nonfinite, progress.step) == (1, 0, 2)

    saved = save_checkpoint(accelerator, tmp_path / "checkpoints", progress.step, keep=1)
    assert (saved / "scaler.pt").is_file()
    resumed = fp16_accelerator()
    resumed.scaler = torch.amp.GradScaler("cpu", init_scale=1.0)  # a different start, overwritten by resume
    again = Overflowing(build_model(cfg))
    resumed.prepare(again, make_optimizer(again, cfg))
    restored = train.Progress()
    resumed.register_for_checkpointing(restored)
    resumed.load_state(str(saved))
    assert resumed.scaler.get_scale() == scale / 2 and restored.overflow == 1


def test_an_attention_kernel_the_device_lacks_stops_before_any_work(shards, tmp_path):
    check_sdpa_backend("flash", torch.device("cpu"), torch.float32)  # PyTorch has a CPU flash kernel
    check_sdpa_backend("math", torch.device("cpu"), torch.bfloat16)
    with pytest.raises(AttentionKernelError, match="model.sdpa_backend=efficient: PyTorch has no such attention"):
        check_sdpa_backend("efficient", torch.device("cpu"), torch.float32)
    proc = trainer(tmp_path / "run", shards, "model.sdpa_backend=efficient", check=False)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith("error: model.sdpa_backend=efficient: PyTorch has no")
    assert not (tmp_path / "run").exists()


def test_gpu_check_runs_end_to_end_in_cpu_dry_run(tmp_path):
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "gpu_check.py"), "--cpu-dry-run", "--work", str(tmp_path)],
        cwd=REPO,
        env=env(),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report["ok"] and report["mode"] == "cpu-dry-run" and not report["failed"]
    assert {"device", "throughput", "training", "memory", "propagation", "cpu_vs_device"} <= set(report)
    for row in report["throughput"]:
        assert row["pairs_per_s"] > 0 and row["sdpa_kernels"], row
    assert 0 <= report["training"]["data_wait_mean"] <= 1 and report["training"]["steps"] > 0
    assert report["propagation"]["frames_per_s"] > 0
    assert abs(report["cpu_vs_device"]["jf_difference"]) <= 0.005
