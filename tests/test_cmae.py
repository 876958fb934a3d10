"""CMAE on frame pairs: the EMA update and its momentum schedule, InfoNCE against a hand computation
and across two processes, and cmae_tiny runs (the loss falls, the scalars are logged, resume equals
the straight run, the online / target encoder load for propagation).

Run as a script under torchrun, this file is the two-process InfoNCE worker (see below).
"""

import json
import math
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from siammae.config import ConfigError, load_config
from siammae.models import build_model
from siammae.models.cmae import ema_update, info_nce, momentum_at

TESTS = Path(__file__).resolve().parent


def small_cmae(*overrides):
    cfg = load_config("cmae_tiny", ["model.img_size=32", *overrides])
    torch.manual_seed(0)
    return build_model(cfg)


# ----------------------------------------------------------------------------- the pieces


def test_momentum_follows_the_cosine_from_base_to_end():
    assert momentum_at(0, 100, 0.99, 1.0) == 0.99
    assert momentum_at(100, 100, 0.99, 1.0) == 1.0
    assert momentum_at(50, 100, 0.99, 1.0) == pytest.approx(0.995)
    values = [momentum_at(s, 100, 0.99, 1.0) for s in range(101)]
    assert values == sorted(values)
    assert {momentum_at(s, 100, 0.996, 0.996) for s in range(101)} == {0.996}  # CMAE's fixed momentum


def test_ema_update_is_exact_for_a_known_step():
    online, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    with torch.no_grad():
        for p in online.parameters():
            p.fill_(3.0)
        for p in target.parameters():
            p.fill_(1.0)
    ema_update(target, online, 0.75)  # 0.75 * 1 + 0.25 * 3, exact in binary
    assert all(torch.equal(p, torch.full_like(p, 1.5)) for p in target.parameters())
    assert all(torch.equal(p, torch.full_like(p, 3.0)) for p in online.parameters()), "online untouched"


def test_after_step_moves_the_target_branch_and_sets_the_next_momentum():
    model = small_cmae("cmae.momentum=0.9", "cmae.momentum_end=1.0")
    assert all(
        torch.equal(a, b)
        for a, b in zip(model.encoder.state_dict().values(), model.target_encoder.state_dict().values())
    ), "starts as a copy"
    with torch.no_grad():
        for p in [*model.encoder.parameters(), *model.projector.parameters()]:
            p.add_(torch.randn_like(p))
    online = [p.clone() for p in [*model.encoder.parameters(), *model.projector.parameters()]]
    before = [p.clone() for p in [*model.target_encoder.parameters(), *model.target_projector.parameters()]]
    model.after_step(1, 10)  # after the first step: the schedule's start, 0.9
    after = [*model.target_encoder.parameters(), *model.target_projector.parameters()]
    for t0, s, t1 in zip(before, online, after):
        torch.testing.assert_close(t1, 0.9 * t0 + 0.1 * s, rtol=0, atol=1e-6)
    assert float(model.momentum) == momentum_at(1, 10, 0.9, 1.0), "the next update's, for the logs"
    assert not any(p.requires_grad for p in [*model.target_encoder.parameters(), *model.target_projector.parameters()])


def test_info_nce_matches_a_hand_computation():
    tau = 0.5
    q = torch.tensor([[2.0, 0.0], [0.0, 1.0]])  # normalised inside: [1, 0], [0, 1]
    k = torch.tensor([[1.0, 0.0], [1.0, 1.0]])  # [1, 0], [1, 1] / sqrt(2)
    loss, accuracy = info_nce(q, k, tau)
    c = 1 / math.sqrt(2)
    # sample 0: positive cos 1, negative cos c; sample 1: positive cos c, negative cos 0
    l0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(c / tau)))
    l1 = -math.log(math.exp(c / tau) / (math.exp(c / tau) + math.exp(0 / tau)))
    assert loss.item() == pytest.approx((l0 + l1) / 2, rel=1e-6)
    assert accuracy.item() == 1.0
    _, accuracy = info_nce(q, k.flip(0), tau)  # keys swapped: each sample's nearest key is a negative
    assert accuracy.item() == 0.0


def global_batch():
    g = torch.Generator().manual_seed(5)
    return torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)


def test_negatives_come_from_every_process_with_gradients_through_the_local_part(tmp_path):
    """Two processes with 4 samples each give each process's samples the loss and gradients they have
    in the global batch of 8: all 8 keys as negatives, and no gradient into another process's keys."""
    import subprocess

    from test_train import env

    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--nproc_per_node",
            "2",
            "--master_port",
            "29541",
            str(Path(__file__)),
            str(tmp_path),
        ],
        check=True,
        env=env(),
        capture_output=True,
        timeout=120,
    )
    q_all, k_all = global_batch()
    for rank in (0, 1):
        got = json.loads((tmp_path / f"rank{rank}.json").read_text())
        rows = slice(4 * rank, 4 * rank + 4)
        q = q_all[rows].clone().requires_grad_()
        k = k_all[rows].clone().requires_grad_()
        keys = torch.cat([k if r == rank else k_all[4 * r : 4 * r + 4] for r in (0, 1)])  # others: constants
        logits = torch.nn.functional.normalize(q, dim=-1) @ torch.nn.functional.normalize(keys, dim=-1).T / 0.2
        want = torch.nn.functional.cross_entropy(logits, torch.arange(4) + 4 * rank)
        want.backward()
        assert got["world"] == 2
        assert got["loss"] == pytest.approx(want.item(), rel=1e-5)
        torch.testing.assert_close(torch.tensor(got["q_grad"]), q.grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(torch.tensor(got["k_grad"]), k.grad, rtol=1e-5, atol=1e-7)


def _two_process_worker(out: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo")
    rank = dist.get_rank()
    q_all, k_all = global_batch()
    q = q_all[4 * rank : 4 * rank + 4].clone().requires_grad_()
    k = k_all[4 * rank : 4 * rank + 4].clone().requires_grad_()
    loss, _ = info_nce(q, k, 0.2)
    loss.backward()
    record = dict(world=dist.get_world_size(), loss=loss.item(), q_grad=q.grad.tolist(), k_grad=k.grad.tolist())
    (Path(out) / f"rank{rank}.json").write_text(json.dumps(record))
    dist.destroy_process_group()


def test_config_refuses_what_cmae_cannot_train():
    with pytest.raises(ConfigError, match="cmae takes frame pairs"):
        load_config("cmae_tiny", ["data.num_frames=3", "model.mask_ratio=[0.0,0.0,0.65]"])
    with pytest.raises(ConfigError, match="sees the first frame whole"):
        load_config("cmae_tiny", ["model.mask_ratio=[0.5,0.65]"])
    with pytest.raises(ConfigError, match="cmae.nce_temperature"):
        load_config("cmae_tiny", ["cmae.nce_temperature=0"])


def test_forward_logs_both_losses_accuracy_and_momentum():
    model = small_cmae()
    out = model(torch.randn(4, 2, 3, 32, 32))
    assert set(out.logs) == {"loss_rec", "loss_nce", "nce_accuracy", "momentum"}
    total = out.logs["loss_rec"] + model.nce_weight * out.logs["loss_nce"]
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-6)
    assert out.pred.shape == (4, 16, 8 * 8 * 3) and out.mask.shape == (4, 16)
    out.loss.backward()
    assert model.encoder.patch_embed.proj.weight.grad is not None
    assert model.target_encoder.patch_embed.proj.weight.grad is None


def _normalised(x: torch.Tensor) -> torch.Tensor:
    from siammae.data import IMAGENET_MEAN, IMAGENET_STD

    return (x - torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)) / torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)


def test_target_view_augmentations_on_hand_made_images():
    from siammae.models.view_augment import TargetAugment, augment_target, blur, shift_hue

    none = TargetAugment(jitter_p=0, grey_p=0, blur_p=0)
    x = _normalised(torch.rand(3, 3, 16, 16))
    assert torch.allclose(augment_target(x, none), x, atol=1e-5)  # nothing applied: the view as it was
    greyed = augment_target(x, TargetAugment(jitter_p=0, grey_p=1, blur_p=0))
    unnorm = greyed * torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) + torch.tensor([0.485, 0.456, 0.406]).view(
        1, 3, 1, 1
    )
    assert torch.allclose(unnorm[:, 0], unnorm[:, 1], atol=1e-5) and torch.allclose(
        unnorm[:, 1], unnorm[:, 2], atol=1e-5
    )
    red = torch.zeros(1, 3, 4, 4)
    red[:, 0] = 1.0
    third = shift_hue(red, torch.full((1, 1, 1, 1), 1 / 3))  # a third of the hue circle: red -> green
    assert torch.allclose(third[0, :, 0, 0], torch.tensor([0.0, 1.0, 0.0]), atol=1e-6)
    flat = torch.full((2, 3, 9, 9), 0.25)
    assert torch.allclose(blur(flat, torch.tensor([0.5, 2.0]), 4), flat, atol=1e-6)  # a blur keeps a flat image
    dot = torch.zeros(1, 1, 21, 21)
    dot[..., 10, 10] = 1.0
    spread = blur(dot, torch.tensor([1.0]), 4)
    assert spread.sum().item() == pytest.approx(1.0, abs=1e-5) and spread[0, 0, 10, 10] < 0.2  # mass kept, spread


def test_target_view_augmentations_follow_the_seed_and_apply_in_training_only():
    from siammae.models.view_augment import augment_target

    x = _normalised(torch.rand(64, 3, 16, 16))
    torch.manual_seed(3)
    a = augment_target(x)
    torch.manual_seed(3)
    assert torch.equal(augment_target(x), a)  # the run's seed fixes them
    changed = (a - x).flatten(1).abs().amax(dim=1) > 1e-3
    assert 0.8 < changed.float().mean() < 1.0  # most views changed, not all (each part has a chance)
    model = small_cmae()
    frames = torch.randn(4, 2, 3, 32, 32)
    mask = torch.zeros(4, 2, 16, dtype=torch.bool)
    mask[:, 1, :8] = True
    model.eval()
    torch.manual_seed(0)
    eval_loss = model(frames, mask).logs["loss_nce"]
    model.target_augment = False
    torch.manual_seed(0)
    assert torch.equal(model(frames, mask).logs["loss_nce"], eval_loss)  # not in evaluation
    model.train()
    torch.manual_seed(0)
    plain = model(frames, mask).logs["loss_nce"]
    model.target_augment = True
    torch.manual_seed(0)
    assert not torch.equal(model(frames, mask).logs["loss_nce"], plain)  # in training


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module")
def cmae_runs(tmp_path_factory):
    """cmae_tiny, 12 steps straight (recorded), and the same run killed at step 8 and resumed."""
    from test_train import straight_and_resumed

    return straight_and_resumed("cmae_tiny", tmp_path_factory.mktemp("cmae"))


def test_cmae_tiny_loss_falls_and_every_scalar_is_logged(cmae_runs):
    from test_train import metrics

    recs = metrics(cmae_runs / "straight")
    assert [r["step"] for r in recs] == list(range(1, 13))
    for key in ("loss", "loss_rec", "loss_nce", "nce_accuracy", "momentum"):
        assert all(math.isfinite(r[key]) for r in recs), key
    assert all(r["momentum"] == pytest.approx(0.996) for r in recs)
    assert all(0 <= r["nce_accuracy"] <= 1 for r in recs)
    losses = [r["loss"] for r in recs]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses


def test_cmae_resume_equals_the_straight_run_target_encoder_included(cmae_runs):
    from train_fixtures import read_records

    want = read_records(cmae_runs / "rec_straight")
    got = {r["step"]: r for r in read_records(cmae_runs / "rec_resumed")}
    for r in want:
        assert got[r["step"]]["keys"] == r["keys"]
        assert got[r["step"]]["weights"] == pytest.approx(r["weights"], rel=1e-6), f"step {r['step']}"
    a = load_file(cmae_runs / "straight" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    b = load_file(cmae_runs / "resumed" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("target_encoder.") for k in a) and "momentum" in a
    assert all(torch.allclose(a[k].double(), b[k].double(), rtol=1e-5, atol=1e-6) for k in a)


def test_propagation_loads_the_online_encoder_by_default_and_the_target_on_request(cmae_runs):
    from siammae.encoders import load_encoder

    run = cmae_runs / "straight"
    sd = load_file(run / "checkpoints" / "checkpoint_12" / "model.safetensors")
    online, _ = load_encoder(run)
    target, _ = load_encoder(run, prefix="target_encoder.")
    for name, tensor in online.state_dict().items():
        assert torch.equal(tensor, sd[f"encoder.{name}"].float())
    for name, tensor in target.state_dict().items():
        assert torch.equal(tensor, sd[f"target_encoder.{name}"].float())
    assert not torch.equal(online.blocks[0].attn.qkv.weight, target.blocks[0].attn.qkv.weight)


if __name__ == "__main__":
    _two_process_worker(sys.argv[1])
