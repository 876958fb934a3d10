"""The SiamMAE model: patches, masks, loss, attention paths, variants, timm compatibility."""

import pytest
import timm
import torch

from siammae.config import load_config
from siammae.models import build_model
from siammae.models.common import build_encoder, encode_frame, patchify, timm_spec, unpatchify
from siammae.models.layers import CrossAttention, set_fused_attention
from siammae.models.masking import MASKINGS, num_visible, visible_indices

SMALL = [
    "model.arch=vit_tiny",
    "model.img_size=32",
    "model.patch_size=8",
    "model.decoder_depth=2",
    "model.decoder_dim=64",
    "model.decoder_heads=4",
]


def small_cfg(*extra):
    return load_config(None, SMALL + list(extra))


def test_patchify_unpatchify_are_inverse():
    imgs = torch.randn(2, 3, 48, 32)
    patches = patchify(imgs, 16)
    assert patches.shape == (2, 6, 16 * 16 * 3)
    assert torch.equal(unpatchify(patches, 16, 3, 2), imgs)
    # the first patch holds exactly the top-left 16x16 pixels
    assert torch.equal(patches[0, 0].view(16, 16, 3).permute(2, 0, 1), imgs[0, :, :16, :16])


@pytest.mark.parametrize("masking", ["random", "tube"])  # per-frame ratios (spacetime: tests/test_clipmae.py)
@pytest.mark.parametrize("ratio", [0.0, 0.5, 0.75, 0.9, 0.95])
def test_mask_counts_are_exact(masking, ratio):
    N = 196
    mask = MASKINGS[masking](8, 2, N, [0.0, ratio])
    assert mask.shape == (8, 2, N) and mask.dtype == torch.bool
    assert (mask[:, 0].sum(-1) == 0).all(), "ratio 0 keeps every token"
    assert (mask[:, 1].sum(-1) == N - num_visible(N, ratio)).all()
    keep = visible_indices(mask[:, 1])
    assert keep.shape == (8, num_visible(N, ratio))
    assert not mask[:, 1].gather(1, keep).any()


def test_random_masks_differ_per_sample_and_tube_masks_repeat_over_time():
    rnd = MASKINGS["random"](4, 2, 64, [0.75, 0.75])
    assert not torch.equal(rnd[0, 1], rnd[1, 1])
    assert not torch.equal(rnd[0, 0], rnd[0, 1])
    tube = MASKINGS["tube"](4, 3, 64, [0.75, 0.75, 0.75])
    assert torch.equal(tube[:, 0], tube[:, 1]) and torch.equal(tube[:, 1], tube[:, 2])


def test_loss_is_zero_for_a_perfect_prediction_on_masked_patches_only():
    model = build_model(small_cfg())
    frames = torch.randn(2, 2, 3, 32, 32)
    mask = MASKINGS["random"](2, 2, 16, [0.0, 0.75])
    target, _, _ = model.target_patches(frames[:, -1])
    m = mask[:, -1].unsqueeze(-1)
    junk = torch.randn_like(target) * 100
    perfect = torch.where(m, target, junk)  # visible patches hold garbage
    assert model.loss(frames, perfect, mask[:, -1]).item() == pytest.approx(0.0, abs=1e-10)
    off = torch.where(m, target + 1.0, junk)  # error of exactly 1 on every masked pixel
    assert model.loss(frames, off, mask[:, -1]).item() == pytest.approx(1.0, rel=1e-5)


def test_loss_target_is_per_patch_normalised_or_raw():
    frames = torch.randn(1, 2, 3, 32, 32) * 3 + 5
    target, _, _ = build_model(small_cfg()).target_patches(frames[:, -1])
    assert torch.allclose(target.mean(-1), torch.zeros(1, 16), atol=1e-4)
    assert torch.allclose(target.var(-1), torch.ones(1, 16), atol=1e-3)
    raw, _, _ = build_model(small_cfg("model.norm_pix_loss=false")).target_patches(frames[:, -1])
    assert torch.equal(raw, patchify(frames[:, -1], 8))


def test_reconstruct_keeps_visible_patches_and_inverts_normalisation():
    model = build_model(small_cfg())
    frames = torch.randn(2, 2, 3, 32, 32)
    mask = MASKINGS["random"](2, 2, 16, [0.0, 0.75])
    target, _, _ = model.target_patches(frames[:, -1])
    out, shown = model.reconstruct(frames, target, mask[:, -1].float())  # a perfect prediction
    assert torch.allclose(out, frames[:, -1], atol=1e-4) and torch.equal(shown, mask[:, -1].float())


@pytest.mark.parametrize("lq,lk", [(5, 5), (7, 19), (1, 3)])
def test_sdpa_and_plain_attention_agree(lq, lk):
    torch.manual_seed(0)
    attn = CrossAttention(32, 4)
    x, ctx = torch.randn(3, lq, 32), torch.randn(3, lk, 32)
    fused = attn(x, ctx)
    attn.fused_attn = False
    assert torch.allclose(fused, attn(x, ctx), atol=1e-5)


def test_whole_model_gives_the_same_loss_through_sdpa_and_plain_attention():
    torch.manual_seed(0)
    model = build_model(small_cfg())
    frames = torch.randn(2, 2, 3, 32, 32)
    mask = MASKINGS["random"](2, 2, 16, [0.0, 0.75])
    loss_sdpa, pred_sdpa, _ = model(frames, mask)
    set_fused_attention(model, False)
    loss_math, pred_math, _ = model(frames, mask)
    assert torch.allclose(pred_sdpa, pred_math, atol=1e-4)
    assert build_model(small_cfg("model.attention=math")).encoder.blocks[0].attn.fused_attn is False


@pytest.mark.parametrize("encoder", ["siamese", "siamese-unshared", "joint"])
@pytest.mark.parametrize("decoder", ["cross-self", "cross", "joint"])
def test_every_variant_trains(encoder, decoder):
    # 16 patches: at the default 0.95 f2 would keep none, so use 0.75 to give encoder_f2 some work
    model = build_model(
        small_cfg(f"siammae.encoder={encoder}", f"siammae.decoder={decoder}", "model.mask_ratio=[0, 0.75]")
    )
    loss, pred, mask = model(torch.randn(2, 2, 3, 32, 32))
    assert torch.isfinite(loss) and pred.shape == (2, 16, 192) and mask.shape == (2, 16)
    loss.backward()
    assert model.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert model.encoder.patch_embed.proj.weight.grad.abs().sum() > 0
    assert model.encoder.pos_embed.grad is None  # fixed sin-cos
    if encoder == "siamese-unshared" and decoder != "cross":
        # (with the cross decoder nothing lets visible f2 tokens reach the masked predictions)
        assert model.encoder_f2.blocks[0].attn.qkv.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("decoder", ["cross-self", "cross", "joint"])
def test_every_decoder_trains_under_bf16_autocast(decoder):
    # What train.mixed_precision=bf16 does on the CPU (and fp16/bf16 on a GPU): the [MASK] grid and
    # the projected visible tokens must agree in dtype, and [MASK] still gets its gradient.
    model = build_model(small_cfg(f"siammae.decoder={decoder}", "model.mask_ratio=[0, 0.75]"))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, pred, _ = model(torch.randn(2, 2, 3, 32, 32))
    assert torch.isfinite(loss) and pred.dtype == torch.bfloat16
    loss.backward()
    assert model.decoder.mask_token.grad.abs().sum() > 0


def test_cross_self_decoder_attends_to_f1_in_every_block():
    model = build_model(small_cfg("siammae.decoder=cross-self"))
    assert len(model.decoder.blocks) == 2
    assert all(hasattr(b, "cross_attn") and hasattr(b, "self_attn") for b in model.decoder.blocks)
    frames = torch.randn(1, 2, 3, 32, 32)
    frames.requires_grad_(True)
    loss, _, _ = model(frames)
    loss.backward()
    for blk in model.decoder.blocks:
        assert blk.cross_attn.kv.weight.grad.abs().sum() > 0


def test_clips_of_more_than_two_frames_run():
    cfg = load_config(None, SMALL + ["data.num_frames=3", "model.mask_ratio=[0.0,0.0,0.9]"])
    loss, pred, mask = build_model(cfg)(torch.randn(2, 3, 3, 32, 32))
    assert torch.isfinite(loss) and mask.sum(-1).eq(16 - num_visible(16, 0.9)).all()


def test_vit_small_encoder_is_timm_vit_small_and_gives_the_same_tokens():
    cfg = load_config(None, [])  # defaults: ViT-S/16 at 224
    assert timm_spec(cfg.model) == ("vit_small_patch16_224", {"num_classes": 0})
    ours = build_model(cfg).encoder.eval()
    reference = timm.create_model("vit_small_patch16_224", pretrained=False, num_classes=0).eval()
    ours_sd = ours.state_dict()
    assert set(ours_sd) == set(reference.state_dict())
    assert all(ours_sd[k].shape == v.shape for k, v in reference.state_dict().items())
    reference.load_state_dict(ours_sd, strict=True)
    img = torch.randn(1, 3, 224, 224)
    everything = torch.arange(196).unsqueeze(0)
    with torch.no_grad():
        assert torch.allclose(encode_frame(ours, img, everything), reference.forward_features(img)[:, 1:], atol=1e-5)
    n_params = sum(p.numel() for p in ours.parameters())
    assert n_params == sum(p.numel() for p in reference.parameters())


def test_patch8_and_other_sizes_load_into_timm():
    import timm as _timm

    cfg = small_cfg().model
    name, kwargs = timm_spec(cfg)
    assert kwargs == {"num_classes": 0, "patch_size": 8, "img_size": 32}
    _timm.create_model(name, **kwargs).load_state_dict(build_encoder(cfg).state_dict(), strict=True)


def test_init_timm_starts_the_encoder_as_the_random_baseline_and_the_decoder_as_mae():
    """model.init=timm: the trainer's initial encoder is exactly what `--random-init` evaluates for the
    same seed; the decoder still gets MAE's xavier initialisation."""
    from accelerate.utils import set_seed

    cfg = load_config("tiny", ["model.init=timm"])
    set_seed(5)
    model = build_model(cfg)
    torch.manual_seed(5)
    random = build_encoder(cfg.model).state_dict()
    assert all(torch.equal(v, random[k]) for k, v in model.encoder.state_dict().items())
    w = model.decoder.blocks[0].mlp.fc1.weight
    bound = (6 / (w.shape[0] + w.shape[1])) ** 0.5  # xavier-uniform's
    assert w.abs().max() <= bound and w.abs().max() > 0.9 * bound
    set_seed(5)
    mae = build_model(load_config("tiny"))
    assert not torch.equal(mae.encoder.blocks[0].attn.qkv.weight, model.encoder.blocks[0].attn.qkv.weight)


def test_without_context_positions_the_decoder_sees_the_context_tokens_as_a_set():
    """siammae.context_positions=false (CropMAE's SiamMAE): the context tokens carry no decoder positions,
    so the same tokens at other places give the same prediction; with positions they do not."""
    torch.manual_seed(0)
    tokens, keep = torch.randn(2, 16, 192), torch.arange(16).expand(2, 16)
    target, target_keep = torch.randn(2, 2, 192), torch.tensor([[0, 5], [3, 9]])
    shuffled = torch.randperm(16)
    for positions in (False, True):
        decoder = build_model(small_cfg(f"siammae.context_positions={str(positions).lower()}")).decoder.eval()
        with torch.no_grad():
            a = decoder([tokens], [keep], target, target_keep)
            b = decoder([tokens[:, shuffled]], [keep], target, target_keep)  # the same tokens, at other places
        assert torch.allclose(a, b, atol=1e-5) is not positions
