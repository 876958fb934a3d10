"""CropMAE: two crops of one frame (what makes it differ from SiamMAE), its config, a short real run
through the trainer, kill-and-resume equal to a straight run, its encoder propagated."""

import random
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from siammae.config import ConfigError, load_config
from siammae.data.views import LOCAL_GRID, global_and_local, make_sample
from siammae.encoders import load_encoder
from siammae.models import build_model
from siammae.synth.scenes import synth_davis
from siammae.tasks import TASKS

sys.path.insert(0, str(Path(__file__).resolve().parent))


def test_the_local_crop_lies_in_the_global_crop_at_its_share_of_the_area():
    rng = random.Random(0)
    shares = []
    for _ in range(2000):
        (top, left, h, w), (lt, ll, lh, lw) = global_and_local(
            rng, 256, 341, (0.5, 1.0), (3 / 4, 4 / 3), (0.3, 0.6), (3 / 4, 4 / 3)
        )
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 341
        assert 0.5 * 256 * 341 * 0.97 <= h * w <= 256 * 341
        assert top <= lt and lt + lh <= top + h and left <= ll and ll + lw <= left + w  # inside the global crop
        shares.append(lh * lw / (h * w))
    assert 0.28 <= min(shares) and max(shares) <= 0.62  # [0.3, 0.6] of the global crop, up to rounding
    assert np.mean(shares) == pytest.approx(0.45, abs=0.02)
    assert LOCAL_GRID >= 256  # the local crop is drawn on a finer grid than any frame here


def test_both_views_come_from_the_first_frame_flipped_on_their_own():
    import simplejpeg

    first = np.random.default_rng(0).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    second = np.zeros_like(first)
    sample = {"f0.jpg": simplejpeg.encode_jpeg(first), "f1.jpg": simplejpeg.encode_jpeg(second), "__key__": "k"}
    views = make_sample(sample, random.Random(1), num_frames=2, repeats=400, views="crops")
    assert all(v.frames[0] is v.frames[1] and v.frames[0].mean() > 50 for v in views)  # f0 twice, never f1
    flips = {(v.first_flip, v.flip) for v in views}
    assert flips == {(False, False), (False, True), (True, False), (True, True)}


def test_config_keeps_cropmae_to_crops_of_one_frame():
    cfg = load_config("cropmae_tiny")
    assert cfg.model.method == "cropmae" and cfg.data.views == "crops" and not cfg.cropmae.context_positions
    assert load_config("cropmae").model.mask_ratio == [0.0, 0.985]
    with pytest.raises(ConfigError, match="data.views must be crops"):
        load_config("cropmae_tiny", ["data.views=frames"])
    with pytest.raises(ConfigError, match="data.local_crop_scale"):
        load_config("cropmae_tiny", ["data.local_crop_scale=[0.6,0.3]"])
    model = build_model(cfg)
    assert not model.decoder.context_positions  # CropMAE's SiamMAE: positions on the target's tokens only


@pytest.fixture(scope="module")
def cropmae_runs(tmp_path_factory):
    """cropmae_tiny, 12 steps straight (recorded), and the same run killed at step 8 and resumed."""
    from test_train import straight_and_resumed

    return straight_and_resumed("cropmae_tiny", tmp_path_factory.mktemp("cropmae"))


def test_cropmae_trains_and_resumes_to_the_straight_run(cropmae_runs):
    from test_train import metrics
    from train_fixtures import read_records

    losses = [r["loss"] for r in metrics(cropmae_runs / "straight")]
    assert len(losses) == 12 and all(np.isfinite(losses))
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3, losses
    want = read_records(cropmae_runs / "rec_straight")
    got = {r["step"]: r for r in read_records(cropmae_runs / "rec_resumed")}
    for r in want:
        assert got[r["step"]]["keys"] == r["keys"]
        assert got[r["step"]]["weights"] == pytest.approx(r["weights"], rel=1e-6), f"step {r['step']}"
    a = load_file(cropmae_runs / "straight" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    b = load_file(cropmae_runs / "resumed" / "checkpoints" / "checkpoint_12" / "model.safetensors")
    assert all(torch.allclose(a[k], b[k], rtol=1e-5, atol=1e-6) for k in a)


def test_cropmae_encoder_propagates(cropmae_runs, tmp_path):
    encoder, info = load_encoder(cropmae_runs / "straight")
    assert info.step == 12 and info.timm_model == "vit_tiny_patch16_224"
    synth_davis(tmp_path / "davis", num_sequences=1, frames=4, size=(64, 96), seed=1)
    task = TASKS["davis"]
    record = task.run(encoder, tmp_path / "davis", tmp_path / "out", task.protocol(short_side=64), progress=False)
    assert 0.0 <= record["scores"]["J&F"] <= 1.0


def test_cropmae_trains_from_a_folder_of_images(tmp_path):
    """siammae shard --layout images (an ImageNet-style folder): one sample of one frame an image, labelled by
    its folder, a broken file recorded; cropmae trains on it, a method that needs two frames is refused."""
    import json

    import webdataset as wds
    from PIL import Image

    from siammae.data.loader import DataError
    from siammae.shard import EncodeSpec, ShardConfig, shard
    from siammae.train import train

    rng = np.random.default_rng(0)
    for label in ("n01440764", "n01443537"):
        (tmp_path / "imagenet" / label).mkdir(parents=True)
        for i in range(6):
            image = rng.integers(0, 255, (90, 120, 3), dtype=np.uint8)
            Image.fromarray(image).save(tmp_path / "imagenet" / label / f"{label}_{i}.JPEG")
    (tmp_path / "imagenet" / "n01443537" / "broken.JPEG").write_bytes(b"not an image")
    config = ShardConfig(encode=EncodeSpec(short_side=64), max_samples=5)
    stats = shard(tmp_path / "imagenet", tmp_path / "shards", config, layout="images", workers=2, progress=False,
                  log=lambda _: None)  # fmt: skip
    assert stats["output"]["videos"] == 12 and stats["output"]["samples"] == 12 and stats["output"]["shards"] == 3
    assert json.loads((tmp_path / "shards" / "failed.jsonl").read_text())["reason"] == "unreadable"
    for sample in wds.WebDataset(str(tmp_path / "shards" / "shard-000000.tar"), shardshuffle=False):
        record = json.loads(sample["json"])
        assert set(sample) - {"__key__", "__url__", "__local_path__"} == {"f0.jpg", "json"}
        assert record["frames"] == [0] and record["label"] == record["src"].split("/")[0]
    overrides = [f"data.shards={tmp_path / 'shards'}", f"train.output_dir={tmp_path / 'run'}", "train.samples=8",
                 "train.global_batch_size=4", "train.log_with=none", "train.recon_every=0", "data.shuffle_buffer=8",
                 "data.num_workers=0"]  # fmt: skip
    assert train(load_config("cropmae_tiny", overrides))["steps"] == 2
    with pytest.raises(DataError, match="hold 1 frames"):
        train(load_config("tiny", [*overrides, f"train.output_dir={tmp_path / 'run2'}"]))
