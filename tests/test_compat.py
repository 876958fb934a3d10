"""What users already have keeps loading: a run folder, exported encoders and shards written by
siammae 0.1.0 (``tests/data/v0_1_0``, see its README)."""

import gzip
import shutil
from pathlib import Path

import pytest
import torch

from siammae.config import read_config
from siammae.data.loader import make_loader, resolve_shards
from siammae.encoders import load_encoder
from siammae.shard.inspect import inspect_shards

DATA = Path(__file__).parent / "data" / "v0_1_0"


@pytest.fixture(scope="module")
def old(tmp_path_factory):
    """The 0.1.0 artifacts, weight files unpacked."""
    root = tmp_path_factory.mktemp("v0_1_0")
    shutil.copytree(DATA, root, dirs_exist_ok=True)
    for packed in root.rglob("*.gz"):
        with gzip.open(packed) as src, open(packed.with_suffix(""), "wb") as dst:
            shutil.copyfileobj(src, dst)
        packed.unlink()
    return root


def test_old_run_folder_config_and_encoder_load(old):
    cfg = read_config(old / "run_tiny" / "config.yaml")
    assert cfg.model.arch == "vit_tiny" and cfg.model.patch_size == 8 and cfg.optim.encoder_lr_scale == 0.3
    encoder, info = load_encoder(old / "run_tiny")
    assert info.step == 2 and tuple(encoder.patch_embed.patch_size) == (8, 8)
    sd = encoder.state_dict()
    # The run's encoder.* keys, in the run's own name order, land on the same timm names.
    from safetensors.torch import load_file

    run = load_file(old / "run_tiny" / "checkpoints" / "checkpoint_2" / "model.safetensors")
    assert all(torch.equal(sd[k[len("encoder.") :]], v) for k, v in run.items() if k.startswith("encoder."))
    assert encoder.forward_features(torch.zeros(1, 3, 64, 96)).shape == (1, 1 + 8 * 12, 192)


def test_old_exported_encoders_load(old):
    encoder, info = load_encoder(old / "encoder_tiny.safetensors")
    assert info.timm_model == "vit_tiny_patch16_224" and info.patch_size == 8
    run, _ = load_encoder(old / "run_tiny")  # the export was made from that run
    assert all(torch.equal(v, run.state_dict()[k]) for k, v in encoder.state_dict().items())
    clip, clip_info = load_encoder(old / "encoder_videomae.safetensors")
    assert clip_info.config.model.method == "videomae" and clip_info.frame_input
    assert all(v.unique().numel() == 1 for v in clip.encoder.state_dict().values())  # constants, see README
    assert clip.forward_features(torch.zeros(2, 3, 64, 64)).shape == (2, 64, 192)


def test_old_shards_verify_and_stream(old):
    report = inspect_shards([old / "shards"])
    assert report.samples == 4 and not report.problems
    cfg = read_config(old / "run_tiny" / "config.yaml")
    urls = resolve_shards([str(old / "shards")])
    loader = make_loader(urls, cfg.data, size=64, batch_size=2, num_batches=2, seed=0)
    batches = list(loader)
    assert len(batches) == 2 and batches[0]["frames"].shape == (2, 2, 3, 64, 64)
    assert batches[0]["frames"].dtype == torch.uint8 and all("#" in k for k in batches[0]["keys"])
