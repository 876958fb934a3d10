"""Published encoders by name (a timm pretrained tag, hf-hub:, local-dir:) through timm and a Hugging
Face cache built here, offline; and the timm-hub export read back by both."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from safetensors.torch import load_file, save_file

from siammae.encoders import load_encoder
from siammae.weights import CheckpointError

REPO = Path(__file__).resolve().parents[1]


def hf_cache(home: Path, repo: str, files: dict) -> None:
    """A Hugging Face cache under HF_HOME=``home`` holding ``files`` (name -> path) of ``repo`` at main."""
    folder = home / "hub" / f"models--{repo.replace('/', '--')}"
    commit = "0" * 40
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(commit)
    snapshot = folder / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, path in files.items():
        shutil.copy(path, snapshot / name)


def siammae_cli(home: Path, *args):
    env = dict(os.environ, HF_HOME=str(home), HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    return subprocess.run(
        [sys.executable, "-m", "siammae", *args], env=env, capture_output=True, text=True, timeout=300
    )


def random_vit(name: str, path: Path) -> dict:
    torch.manual_seed(0)
    sd = timm.create_model(name, pretrained=False, num_classes=0).state_dict()
    save_file({k: v.contiguous() for k, v in sd.items()}, str(path))
    return sd


def test_a_timm_pretrained_tag_loads_from_the_cache_offline(tmp_path):
    sd = random_vit("vit_small_patch16_224", tmp_path / "w.safetensors")
    hf_cache(tmp_path / "hf", "timm/vit_small_patch16_224.dino", {"model.safetensors": tmp_path / "w.safetensors"})
    proc = siammae_cli(tmp_path / "hf", "export", "--checkpoint", "vit_small_patch16_224.dino", "--out",
                       str(tmp_path / "e.safetensors"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = load_file(tmp_path / "e.safetensors")
    assert got.keys() == sd.keys() and all(torch.equal(got[k], sd[k]) for k in sd)


def test_weights_missing_offline_name_what_to_download_and_where(tmp_path):
    (tmp_path / "hf").mkdir()
    proc = siammae_cli(tmp_path / "hf", "export", "--checkpoint", "vit_small_patch16_224.dino", "--out",
                       str(tmp_path / "e.safetensors"))  # fmt: skip
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot load 'vit_small_patch16_224.dino'"), proc.stderr
    assert "timm/vit_small_patch16_224.dino" in lines[0] and str(tmp_path / "hf" / "hub") in lines[0]


def test_timm_hub_export_reads_back_as_local_dir_and_from_the_hub(tmp_path):
    sd = random_vit("vit_tiny_patch16_224", tmp_path / "w.safetensors")
    proc = siammae_cli(tmp_path / "hf", "export", "--checkpoint", "vit_tiny_patch16_224", "--weights",
                       str(tmp_path / "w.safetensors"), "--format", "timm-hub", "--out",
                       str(tmp_path / "hub"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert sorted(p.name for p in (tmp_path / "hub").iterdir()) == ["config.json", "model.safetensors"]
    # timm itself reads the folder back, and so does --checkpoint local-dir:
    vit = timm.create_model(f"local-dir:{tmp_path / 'hub'}", pretrained=True, num_classes=0)
    assert all(torch.equal(vit.state_dict()[k], sd[k]) for k in sd)
    encoder, info = load_encoder(f"local-dir:{tmp_path / 'hub'}")
    assert info.timm_model == "vit_tiny_patch16_224" and (info.patch_size, info.img_size) == (16, 224)
    assert all(torch.equal(encoder.state_dict()[k], sd[k]) for k in sd)
    # The same folder uploaded as a Hub repository.
    hf_cache(tmp_path / "hf", "someone/siammae-vitt", {p.name: p for p in (tmp_path / "hub").iterdir()})
    proc = siammae_cli(tmp_path / "hf", "export", "--checkpoint", "hf-hub:someone/siammae-vitt", "--out",
                       str(tmp_path / "e.safetensors"))  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = load_file(tmp_path / "e.safetensors")
    assert all(torch.equal(got[k], sd[k]) for k in sd)


def test_bad_names_are_one_clear_error(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        load_encoder(f"local-dir:{tmp_path}")
    with pytest.raises(CheckpointError, match="neither an existing path nor a timm model name"):
        load_encoder("not_a_model.dino")
    with pytest.raises(CheckpointError, match="pretrained tag"):
        load_encoder("vit_small_patch16_224")
