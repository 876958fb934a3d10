"""VideoMAE and MAE-ST on clips: masking, cubes, the sparse encoder, config checks, and the tiny
recipes trained by the real trainer on clip shards made by ``siammae shard --frames 4``."""

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from shard_fixtures import make_video
from train_fixtures import write_shards

from siammae.config import ConfigError, load_config
from siammae.models import build_model
from siammae.models.clip import ClipMAE
from siammae.models.masking import MASKINGS, num_visible

REPO = Path(__file__).resolve().parents[1]
SMALL = [
    "model.img_size=32",
    "model.patch_size=8",
    "data.num_frames=4",
    "model.decoder_depth=1",
    "model.decoder_dim=64",
    "model.decoder_heads=4",
]


def clip_model(method, *extra) -> ClipMAE:
    cfg = load_config(f"{method}_tiny", SMALL + list(extra))
    return build_model(cfg)


# ----------------------------------------------------------------------------- masking


def test_tube_masks_repeat_over_time_and_spacetime_masks_are_exact_per_clip():
    torch.manual_seed(0)
    tube = MASKINGS["tube"](64, 8, 16, [0.75] * 8)
    assert (tube == tube[:, :1]).all() and (tube.sum(-1) == 12).all()
    mask = MASKINGS["spacetime"](2000, 2, 16, [0.75, 0.75])
    assert (mask.view(2000, -1).sum(-1) == 32 - num_visible(32, 0.75)).all()  # exact for every clip
    per_frame = mask.sum(-1)
    assert per_frame.min() < 12 < per_frame.max()  # a frame's share is left to chance
    # Independent positions over time: a patch masked at t=0 is masked at t=1 about as often as any
    # patch is (24/32 then 23/31 of the rest), not always as with tubes.
    both = (mask[:, 0] & mask[:, 1]).float().mean()
    assert abs(both - 24 / 32 * 23 / 31) < 0.01
    with pytest.raises(ValueError, match="one ratio"):
        MASKINGS["spacetime"](1, 2, 16, [0.0, 0.9])


# ----------------------------------------------------------------------------- the models


@pytest.mark.parametrize("method", ["videomae", "maest"])
def test_a_perfect_prediction_reconstructs_the_clip(method):
    model = clip_model(method).eval()
    clip = torch.randn(2, 4, 3, 32, 32)
    out = model(clip)
    L = 2 * 16  # 2 time slots x 16 patches
    assert out.pred.shape == (2, L, 2 * 8 * 8 * 3) and out.mask.shape == (2, L)
    # Tubes: the ratio holds in every time slot; space-time: over the whole clip.
    masked = 2 * (16 - num_visible(16, 0.9)) if method == "videomae" else L - num_visible(L, 0.9)
    assert (out.mask.sum(-1) == masked).all()
    target, _, _ = model.target(clip)
    frames, shown = model.reconstruct(clip, target, out.mask)
    assert torch.allclose(frames, clip, atol=1e-4)
    slots = out.mask.view(2, 2, 16)
    assert torch.equal(shown, slots.repeat_interleave(2, dim=1))  # each cube's mask on its 2 frames
    if method == "videomae":  # tube masking: every slot hides the same patches
        assert torch.equal(slots[:, 0], slots[:, 1])
    from siammae.data.pixels import to_uint8
    from siammae.pictures import recon_grid

    picture = recon_grid(to_uint8(clip), to_uint8(frames), shown, 8)
    assert picture.shape[0] > 2 * 3 * 32 and picture.shape[1] > 4 * 32  # 3 rows a sample, 4 frames a row


@pytest.mark.parametrize("method", ["videomae", "maest"])
def test_the_encoder_sees_only_visible_cubes(method):
    model = clip_model(method).eval()
    clip = torch.randn(1, 4, 3, 32, 32)
    mask = model.draw_mask(1, "cpu")
    keep = (~mask[0]).nonzero()[:, 0][None]
    before = model.encoder(clip, keep)
    assert before.shape == (1, int((~mask).sum()), model.encoder.embed_dim)
    # Repaint every masked cube: the encoder's output must not move.
    cubes = model.cubes(clip)
    cubes[mask] = torch.randn_like(cubes[mask])
    from einops import rearrange

    repainted = rearrange(cubes, "b (t h w) (u p q c) -> b (t u) c (h p) (w q)", h=4, w=4, u=2, p=8, q=8)
    assert torch.allclose(model.encoder(repainted, keep), before, atol=1e-5)


def test_positions_fixed_sincos_for_videomae_learned_space_plus_time_for_maest():
    videomae, maest = clip_model("videomae"), clip_model("maest")
    assert not videomae.encoder.pos.pos_table.requires_grad
    pos = maest.encoder.pos
    table = pos()  # (1, 2 * 16, D): slot t, patch i -> time[t] + space[i]
    assert torch.allclose(table.view(2, 16, -1)[1, 5], pos.pos_time[0, 1] + pos.pos_space[0, 5])
    assert pos.pos_space.requires_grad and pos.pos_time.requires_grad


@pytest.mark.parametrize("method", ["videomae", "maest"])
def test_a_few_steps_reduce_the_loss(method):
    torch.manual_seed(0)
    model = clip_model(method)
    clip = torch.randn(4, 4, 3, 32, 32).cumsum(1) / 2  # frames that change smoothly
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        loss = model(clip).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert sum(losses[-3:]) < sum(losses[:3]), losses


@pytest.mark.parametrize("method", ["videomae", "maest"])
def test_clip_models_train_under_bf16_autocast(method):
    model = clip_model(method)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = model(torch.randn(2, 4, 3, 32, 32))
    assert torch.isfinite(out.loss) and out.pred.dtype == torch.bfloat16
    out.loss.backward()
    assert model.decoder.mask_token.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model.mask_ratio=[0.0, 0.9]"], "one ratio for the whole clip"),
        (["data.num_frames=5"], "multiple of the tubelet"),
    ],
)
def test_clip_recipes_refuse_what_does_not_fit(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config("videomae_tiny", overrides)


@pytest.mark.parametrize("ratios", ["[0.0, 0.95]", "[0.5, 0.5]"])
def test_spacetime_masking_is_for_clip_methods(ratios):
    # SiamMAE encodes frame by frame: a frame's share of a space-time draw varies between clips.
    with pytest.raises(ConfigError, match="not siammae"):
        load_config("tiny", ["model.masking=spacetime", f"model.mask_ratio={ratios}"])


# ----------------------------------------------------------------------------- shards and trainer


def run(args, timeout=600):
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="module")
def clip_shards(tmp_path_factory):
    """Clips of 4 frames from two synthetic videos, through the real sharding command."""
    base = tmp_path_factory.mktemp("clips")
    for i in range(2):
        make_video(base / "videos" / f"v{i}.mp4", num_frames=48, height=48, width=64)
    proc = run(
        [
            "-m",
            "siammae",
            "shard",
            "--src",
            str(base / "videos"),
            "--out",
            str(base / "shards"),
            "--frames",
            "4",
            "--gap",
            "6-12",
            "--per-video",
            "24",
            "--shard-samples",
            "16",
            "--workers",
            "1",
        ]
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return base / "shards"


def test_clip_shards_hold_four_frames_in_time_order(clip_shards):
    import tarfile

    with tarfile.open(sorted(clip_shards.glob("*.tar"))[0]) as tar:
        names = tar.getnames()
        meta = json.loads(tar.extractfile(next(n for n in names if n.endswith(".json"))).read())
    key = names[0].split(".")[0]
    assert sorted(n for n in names if n.startswith(key + ".")) == [
        f"{key}.{s}" for s in ("f0.jpg", "f1.jpg", "f2.jpg", "f3.jpg", "json")
    ]
    frames = meta["frames"]
    assert len(frames) == 4 and frames == sorted(frames) and 6 <= frames[-1] - frames[0] <= 12


def train_tiny(method, shards, out, record, exit_at=0, samples=96, *extra):
    return run(
        [
            str(REPO / "tests" / "train_fixtures.py"),
            str(record),
            str(exit_at),
            f"{method}_tiny",
            f"data.shards={shards}",
            f"train.output_dir={out}",
            "model.img_size=32",
            "data.shuffle_buffer=16",
            "train.global_batch_size=8",
            f"train.samples={samples}",
            "train.save_every=6",
            "train.log_every=1",
            "train.recon_every=12",
            "optim.warmup_samples=16",
            "train.log_with=none",
            *extra,
        ]
    )


@pytest.mark.parametrize("method", ["videomae", "maest"])
def test_tiny_recipe_trains_on_clip_shards_and_resumes_exactly(method, clip_shards, tmp_path):
    straight = train_tiny(method, clip_shards, tmp_path / "a", tmp_path / "ra")
    assert straight.returncode == 0, straight.stderr[-3000:]
    records = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses = [r["loss"] for r in records if "loss" in r]
    assert len(losses) == 12 and all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) < sum(losses[:3]), losses
    assert (tmp_path / "a" / "recon" / "step_0000012.png").is_file()

    killed = train_tiny(method, clip_shards, tmp_path / "b", tmp_path / "rb", exit_at=8)
    assert killed.returncode == 17, killed.stderr[-2000:]
    resumed = train_tiny(method, clip_shards, tmp_path / "b", tmp_path / "rb")
    assert resumed.returncode == 0 and "resuming from" in resumed.stdout + resumed.stderr
    a = load_file(tmp_path / "a" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    b = load_file(tmp_path / "b" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_a_clip_recipe_on_pair_shards_is_one_line_before_training(tmp_path):
    write_shards(tmp_path / "pairs", num_shards=1, per_shard=4)
    proc = run(
        [
            "-m",
            "siammae.train",
            "videomae_tiny",
            f"data.shards={tmp_path / 'pairs'}",
            f"train.output_dir={tmp_path / 'run'}",
        ]
    )
    assert proc.returncode == 2
    assert "data.num_frames=4, but the samples of" in proc.stderr and "hold 2 frames" in proc.stderr
    assert not (tmp_path / "run" / "checkpoints").exists()


@pytest.mark.parametrize("method", ["videomae", "maest"])
def test_a_clip_encoder_exports_loads_and_propagates_frames(method, clip_shards, tmp_path):
    from click.testing import CliRunner
    from test_propagate import moving_object_video, write_sequence

    from siammae.cli.export import export
    from siammae.cli.propagate import propagate
    from siammae.encoders import load_encoder

    frames, labels = moving_object_video(__import__("numpy").random.default_rng(0), T=4, H=48, W=64, S=16)
    write_sequence(tmp_path / "davis", "a", frames, labels)
    run_dir = tmp_path / "run"
    # J&F is tracked during training too (the monitor feeds the clip encoder frames the same way).
    proc = train_tiny(
        method, clip_shards, run_dir, tmp_path / "rec", 0, 16, f"eval.davis={tmp_path / 'davis'}", "eval.size=48"
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    evals = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "eval_jf" in r] == [0, 2] and not any("eval_error" in r for r in evals)
    frame_encoder, info = load_encoder(run_dir)
    assert info.timm_model == f"{method}:vit_tiny" and "2 copies" in info.frame_input
    # At the training size a frame's tokens are the trained encoder's on a clip of two copies of it.
    model = build_model(load_config(run_dir / "config.yaml"))
    model.load_state_dict(load_file(run_dir / "checkpoints" / "checkpoint_2" / "model.safetensors"))
    frame = torch.randn(1, 3, 32, 32)
    clip = frame[:, None].expand(-1, 2, -1, -1, -1)  # one time slot, with the positions of slot 0
    with torch.no_grad():
        enc = model.encoder
        x = enc.cube_embed(clip.transpose(1, 2)).flatten(2).transpose(1, 2) + enc.pos()[:, :16]
        for blk in enc.blocks:
            x = blk(x)
        want = enc.norm(x)
        assert torch.allclose(frame_encoder.forward_features(frame), want, atol=1e-5)
        # Exported and loaded back: the same features, at another size too (positions resampled).
        out = tmp_path / "enc.safetensors"
        r = CliRunner().invoke(export, ["--checkpoint", str(run_dir), "--out", str(out)])
        assert r.exit_code == 0, r.output
        again, _ = load_encoder(out)
        big = torch.randn(1, 3, 48, 64)
        assert again.forward_features(big).shape == (1, 48, frame_encoder.embed_dim)
        assert torch.allclose(again.forward_features(big), frame_encoder.forward_features(big), atol=1e-6)

    r = CliRunner().invoke(
        propagate,
        [
            "--davis",
            str(tmp_path / "davis"),
            "--checkpoint",
            str(out),
            "--size",
            "0",
            "--out",
            str(tmp_path / "prop"),
            "--quiet",
            "--device",
            "cpu",
        ],
    )
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "prop" / "propagation.json").read_text())
    assert record["encoder"]["frame_input"] == info.frame_input and "J&F-Mean" in r.output
