"""Encoder loading from run folders / checkpoints / weights files, strictness, and timm export."""

import json

import pytest
import timm
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from siammae.cli.export import export as export_cmd
from siammae.config import dump_config, load_config
from siammae.encoders import export_encoder, load_encoder
from siammae.models import build_model
from siammae.weights import CheckpointError


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    """A training run folder as the trainer leaves it: config.yaml, one complete and one half-written
    checkpoint (the newer one, without the marker)."""
    root = tmp_path_factory.mktemp("run")
    cfg = load_config("tiny", ["siammae.encoder=siamese-unshared"])
    dump_config(cfg, root / "config.yaml")
    torch.manual_seed(0)
    model = build_model(cfg)
    done = root / "checkpoints" / "checkpoint_100"
    done.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(done / "model.safetensors"))
    (done / "complete").write_text("{}\n")
    partial = root / "checkpoints" / "checkpoint_200"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"truncated")
    return root, model


def features(vit, x):
    with torch.no_grad():
        return vit.forward_features(x)


def test_run_folder_loads_newest_complete_encoder(run_dir):
    root, model = run_dir
    vit, info = load_encoder(root)
    assert info.step == 100 and info.timm_model == "vit_tiny_patch16_224"
    assert (info.patch_size, info.img_size) == (8, 64)
    assert info.config.siammae.encoder == "siamese-unshared"
    # The f1 encoder ("encoder.*"), not the unshared f2 one.
    assert torch.equal(
        vit.state_dict()["blocks.0.attn.qkv.weight"], model.encoder.state_dict()["blocks.0.attn.qkv.weight"]
    )
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(features(vit, x), features(model.encoder.eval(), x), atol=1e-5)
    # The checkpoint folder and its file load the same weights (config found above them).
    for path in (
        root / "checkpoints" / "checkpoint_100",
        root / "checkpoints" / "checkpoint_100" / "model.safetensors",
    ):
        other, _ = load_encoder(path)
        assert torch.equal(other.state_dict()["norm.weight"], vit.state_dict()["norm.weight"])
    with pytest.raises(CheckpointError, match="incomplete"):
        load_encoder(root / "checkpoints" / "checkpoint_200")


def test_export_loads_strictly_into_timm_with_the_same_features(run_dir, tmp_path):
    root, model = run_dir
    out = tmp_path / "encoder.safetensors"
    r = CliRunner().invoke(export_cmd, ["--checkpoint", str(root), "--out", str(out)])
    assert r.exit_code == 0, r.output
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["timm_model"] == "vit_tiny_patch16_224" and meta["patch_size"] == "8" and meta["img_size"] == "64"
    vit = timm.create_model(meta["timm_model"], num_classes=0, **json.loads(meta["timm_kwargs"])).eval()
    vit.load_state_dict(load_file(str(out)), strict=True)
    x = torch.randn(2, 3, 64, 64)
    assert torch.allclose(features(vit, x), features(model.encoder.eval(), x), atol=1e-5)
    # The exported file is itself a checkpoint for propagate.
    again, info = load_encoder(out)
    assert info.timm_model == "vit_tiny_patch16_224" and torch.allclose(features(again, x), features(vit, x))


def test_plain_timm_layout_at_patch16_224(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0).eval()
    weights = tmp_path / "dino_like.pth"
    torch.save({"teacher": {f"backbone.{k}": v for k, v in src.state_dict().items()}}, weights)
    vit, info = load_encoder("vit_tiny_patch16_224", weights=weights)
    export_encoder(vit, info, tmp_path / "e.safetensors")
    plain = timm.create_model("vit_tiny_patch16_224", num_classes=0)  # no kwargs needed
    plain.load_state_dict(load_file(str(tmp_path / "e.safetensors")), strict=True)
    x = torch.randn(1, 3, 224, 224)
    assert torch.allclose(features(plain.eval(), x), features(src, x), atol=1e-5)


def test_patch_and_image_size_read_off_the_weights(tmp_path):
    src = timm.create_model("vit_tiny_patch16_224", num_classes=0, patch_size=8, img_size=96)
    save_file(src.state_dict(), str(tmp_path / "w.safetensors"))
    _, info = load_encoder("vit_tiny_patch16_224", weights=tmp_path / "w.safetensors")
    assert (info.patch_size, info.img_size) == (8, 96)


def test_mismatched_checkpoint_lists_the_keys(tmp_path):
    sd = timm.create_model("vit_tiny_patch16_224", num_classes=0).state_dict()
    sd["head.weight"] = torch.zeros(10, 192)
    del sd["norm.bias"]
    save_file(sd, str(tmp_path / "w.safetensors"))
    with pytest.raises(CheckpointError, match=r"missing keys: norm\.bias.*unexpected keys: head\.weight"):
        load_encoder("vit_tiny_patch16_224", weights=tmp_path / "w.safetensors")
    # A ViT-S checkpoint read as the ViT-T the run config claims: shapes listed.
    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "checkpoint_1"
    ckpt.mkdir(parents=True)
    dump_config(load_config(None, ["model.arch=vit_tiny"]), run / "config.yaml")
    small = timm.create_model("vit_small_patch16_224", num_classes=0).state_dict()
    save_file({f"encoder.{k}": v for k, v in small.items()}, str(ckpt / "model.safetensors"))
    (ckpt / "complete").touch()
    with pytest.raises(CheckpointError, match=r"shape mismatches.*blocks\.0\.attn"):
        load_encoder(run)
    r = CliRunner().invoke(export_cmd, ["--checkpoint", str(run), "--out", str(tmp_path / "x.safetensors")])
    assert r.exit_code == 1 and "does not match the model" in r.output


def test_unsafe_and_unknown_inputs_are_refused(tmp_path):
    import argparse

    # Like DINO's full checkpoints: an argparse.Namespace needs unpickling, which weights_only refuses.
    torch.save({"model": {"x": torch.zeros(1)}, "args": argparse.Namespace(lr=1)}, tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="weights_only"):
        load_encoder("vit_tiny_patch16_224", weights=tmp_path / "pickled.pth")
    with pytest.raises(CheckpointError, match="random-init"):
        load_encoder("vit_tiny_patch16_224")
    with pytest.raises(CheckpointError, match="neither"):
        load_encoder("not_a_model_or_path")
    save_file({"x": torch.zeros(1)}, str(tmp_path / "bare.safetensors"))
    with pytest.raises(CheckpointError, match="architecture"):
        load_encoder(tmp_path / "bare.safetensors")
    (tmp_path / "run").mkdir()
    dump_config(load_config("tiny"), tmp_path / "run" / "config.yaml")
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        load_encoder(tmp_path / "run")
    vit, info = load_encoder(tmp_path / "run", random_init=True)  # explicit: allowed
    assert info.weights is None and vit.patch_embed.patch_size == (8, 8)


def test_run_eval_settings_are_propagate_defaults(tmp_path):
    import numpy as np
    from PIL import Image

    from siammae.cli.propagate import propagate as propagate_cmd
    from siammae.tasks.davis_files import save_indexed_png

    run = tmp_path / "run"
    ckpt = run / "checkpoints" / "checkpoint_5"
    ckpt.mkdir(parents=True)
    cfg = load_config("tiny", ["eval.protocol=crw", "eval.topk=2"])
    dump_config(cfg, run / "config.yaml")
    model = build_model(cfg)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(ckpt / "model.safetensors"))
    (ckpt / "complete").touch()
    davis = tmp_path / "davis"
    for sub in ("JPEGImages/480p/a", "Annotations/480p/a", "ImageSets/2017"):
        (davis / sub).mkdir(parents=True)
    (davis / "ImageSets/2017/val.txt").write_text("a\n")
    rng = np.random.default_rng(0)
    for t in range(3):
        Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
            davis / f"JPEGImages/480p/a/{t:05d}.jpg"
        )
        save_indexed_png(davis / f"Annotations/480p/a/{t:05d}.png", np.eye(48, 64, dtype=np.uint8))
    base = ["--davis", str(tmp_path / "davis"), "--checkpoint", str(run), "--size", "0", "--quiet", "--no-eval"]
    r = CliRunner().invoke(propagate_cmd, base + ["--out", str(tmp_path / "o1")])
    assert r.exit_code == 0, r.output
    saved = json.loads((tmp_path / "o1" / "propagation.json").read_text())
    assert saved["protocol"]["name"] == "crw+custom" and saved["protocol"]["topk"] == 2
    assert saved["protocol"]["temperature"] == 0.05 and saved["encoder"]["step"] == 5
    r = CliRunner().invoke(propagate_cmd, base + ["--out", str(tmp_path / "o2"), "--topk", "4"])  # flag wins
    assert json.loads((tmp_path / "o2" / "propagation.json").read_text())["protocol"]["topk"] == 4
