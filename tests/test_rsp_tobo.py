"""RSP and ToBo: what makes each differ from SiamMAE on hand-made cases (RSP's categorical latent,
balanced KL with free bits, a prior that sees f1 only; ToBo's bottleneck that passes f1 through one
token), then for both a short real run through the trainer, kill-and-resume equal to a straight run,
and the encoder propagated."""

import math

import pytest
import torch
from safetensors.torch import load_file

from siammae.config import ConfigError, load_config
from siammae.encoders import load_encoder
from siammae.models import build_model
from siammae.models.rsp import balanced_kl, categorical_kl, straight_through_sample
from siammae.synth.scenes import synth_davis
from siammae.tasks import TASKS


def small(recipe: str, *overrides):
    torch.manual_seed(0)
    return build_model(load_config(recipe, ["model.img_size=32", *overrides]))


# ----------------------------------------------------------------------------- RSP


def test_categorical_kl_matches_a_hand_computation():
    p = torch.tensor([[[0.7, 0.2, 0.1], [0.5, 0.25, 0.25]]])
    q = torch.tensor([[[0.2, 0.5, 0.3], [1 / 3, 1 / 3, 1 / 3]]])
    by_hand = sum(float(pi * math.log(pi / qi)) for row_p, row_q in zip(p[0], q[0]) for pi, qi in zip(row_p, row_q))
    assert categorical_kl(p.log(), q.log()).item() == pytest.approx(by_hand, rel=1e-5)
    assert categorical_kl(p.log(), p.log()).item() == pytest.approx(0.0, abs=1e-7)


def test_balanced_kl_splits_its_gradient_and_floors_at_the_free_bits():
    torch.manual_seed(0)
    post, prior = torch.randn(4, 3, 5, requires_grad=True), torch.randn(4, 3, 5, requires_grad=True)
    loss, value = balanced_kl(post, prior, 0.2, 0.0)
    plain = categorical_kl(post, prior).mean()
    assert value.item() == pytest.approx(plain.item(), rel=1e-6)  # the value is the plain KL
    loss.backward()
    g_post, g_prior = post.grad.clone(), prior.grad.clone()
    post.grad, prior.grad = None, None
    plain.backward()
    assert torch.allclose(g_post, 0.2 * post.grad, atol=1e-6)  # 0.2 of it moves the posterior
    assert torch.allclose(g_prior, 0.8 * prior.grad, atol=1e-6)  # 0.8 the prior
    same = torch.randn(2, 3, 5, requires_grad=True)
    floored, value = balanced_kl(same, same.detach().clone(), 0.2, 0.1)
    assert value.item() == pytest.approx(0.0, abs=1e-6) and floored.item() == pytest.approx(0.1)
    floored.backward()
    assert same.grad.abs().max() == 0  # below the free bits the KL trains nothing


def test_straight_through_samples_are_one_hot_seeded_and_pass_gradients():
    logits = torch.randn(64, 32, 32, requires_grad=True)
    torch.manual_seed(1)
    z = straight_through_sample(logits)
    assert torch.allclose(z.detach(), z.detach().round(), atol=1e-6)  # one-hot, up to the straight-through's rounding
    assert torch.equal(z.detach().round().sum(-1), torch.ones(64, 32))
    torch.manual_seed(1)
    assert torch.equal(straight_through_sample(logits).detach(), z.detach())
    (z * torch.randn_like(z)).sum().backward()
    assert logits.grad.abs().sum() > 0


def test_rsp_prior_sees_the_current_frame_only_and_every_term_is_logged():
    model = small("rsp_tiny")
    from siammae.models import common

    frames = torch.randn(2, 2, 3, 32, 32)
    other = frames.clone()
    other[:, 1] = torch.randn(2, 3, 32, 32)  # another future frame
    h = common.encode_frame(model.encoder, frames[:, 0], cls=True)
    h_a = common.encode_frame(model.encoder, frames[:, 1], cls=True)
    h_b = common.encode_frame(model.encoder, other[:, 1], cls=True)
    assert torch.equal(model.latent_logits(h, None), model.latent_logits(h, None))
    assert not torch.allclose(model.latent_logits(h, h_a), model.latent_logits(h, h_b))  # the posterior sees f2
    out = model(frames)
    assert set(out.logs) == {"loss_post", "loss_kl", "loss_mae"}
    o = model.options
    total = (
        out.logs["loss_post"] + o.kl_scale * max(out.logs["loss_kl"], torch.tensor(o.free_bits)) + out.logs["loss_mae"]
    )
    assert out.loss.item() == pytest.approx(total.item(), rel=1e-5)
    assert out.pred.shape == (2, 16, 8 * 8 * 3) and out.mask.sum() == 2 * 16  # every patch of f2 predicted


# ----------------------------------------------------------------------------- ToBo


def source_gradient(model, frames):
    """The gradient of the loss with respect to f1's encoded tokens (B, 1 + N, E)."""
    held = {}
    source_tokens = model.source_tokens

    def keep(img):
        held["h"] = source_tokens(img)
        held["h"].retain_grad()
        return held["h"]

    model.source_tokens = keep
    model(frames).loss.backward()
    return held["h"].grad


def test_tobo_bottleneck_passes_the_source_frame_through_its_cls_token_only():
    frames = torch.randn(2, 2, 3, 32, 32)
    grad = source_gradient(small("tobo_tiny", "tobo.mim_weight=0"), frames)
    assert grad[:, 0].abs().sum() > 0 and grad[:, 1:].abs().max() == 0  # one token of f1 reaches the loss
    grad = source_gradient(small("tobo_tiny", "tobo.tobo_weight=0"), frames)
    assert grad[:, 1:].abs().sum() > 0  # the MIM branch attends to every token of f1
    with pytest.raises(ConfigError, match="cannot both be 0"):
        load_config("tobo_tiny", ["tobo.mim_weight=0", "tobo.tobo_weight=0"])


def test_tobo_sees_few_target_patches_and_logs_both_branches():
    model = small("tobo_tiny")
    out = model(torch.randn(2, 2, 3, 32, 32))
    assert set(out.logs) == {"loss_tobo", "loss_mim"}
    assert out.loss.item() == pytest.approx((out.logs["loss_tobo"] + out.logs["loss_mim"]).item(), rel=1e-6)
    assert out.mask.sum(dim=1).tolist() == [15.0, 15.0]  # 90% of 16 patches hidden: 1 seen (int(1.6), as ToBo)
    with pytest.raises(ConfigError, match="mask_ratio must be"):
        load_config("tobo_tiny", ["model.mask_ratio=[0.5,0.9]"])


# ----------------------------------------------------------------------------- training runs


@pytest.fixture(scope="module", params=["rsp", "tobo"])
def runs(request, tmp_path_factory):
    """The method's _tiny recipe, 12 steps straight (recorded), and the same run killed at 8 and resumed."""
    from test_train import straight_and_resumed

    base = straight_and_resumed(f"{request.param}_tiny", tmp_path_factory.mktemp(request.param))
    return request.param, base


def test_the_method_trains_logs_its_terms_and_resumes_to_the_straight_run(runs):
    from test_train import metrics
    from train_fixtures import read_records

    method, base = runs
    recs = metrics(base / "straight")
    terms = {"rsp": ("loss_post", "loss_kl", "loss_mae"), "tobo": ("loss_tobo", "loss_mim")}[method]
    assert all(math.isfinite(r[k]) for r in recs for k in ("loss", *terms))
    losses = [r["loss"] for r in recs]
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    want = read_records(base / "rec_straight")
    got = {r["step"]: r for r in read_records(base / "rec_resumed")}
    for r in want:
        assert got[r["step"]]["keys"] == r["keys"]
        assert got[r["step"]]["weights"] == pytest.approx(r["weights"], rel=1e-6), f"step {r['step']}"
    a = load_file(base / "straight" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    b = load_file(base / "resumed" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_the_method_encoder_propagates(runs, tmp_path):
    method, base = runs
    encoder, info = load_encoder(base / "straight")
    assert info.step == 12 and info.timm_model == "vit_tiny_patch16_224"
    synth_davis(tmp_path / "davis", num_sequences=1, frames=4, size=(64, 96), seed=1)
    task = TASKS["davis"]
    record = task.run(encoder, tmp_path / "davis", tmp_path / "out", task.protocol(short_side=64), progress=False)
    assert 0.0 <= record["scores"]["J&F"] <= 1.0
