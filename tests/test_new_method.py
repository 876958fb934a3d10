"""Adding a pre-training method takes one module, a recipe and one registry line (docs/adding-a-method.md).

This file is the module: a toy objective (predict the later frame's pixels at each patch from the
earlier frame's token at the same place), with its own config section. The test registers it, writes
its recipe, trains it 3 steps with the real trainer, and propagates its encoder on a DAVIS-format set;
no library file knows about it.
"""

from dataclasses import dataclass

import pytest
import torch
import torch.nn as nn
from train_fixtures import write_shards

from siammae.config import ConfigError, load_config, read_config
from siammae.encoders import load_encoder
from siammae.models import METHODS, Method, register
from siammae.models.common import LastFramePixels, Output, PretrainingModel, build_encoder, encode_frame, init_mae
from siammae.synth.scenes import synth_davis
from siammae.tasks import TASKS
from siammae.train import train


@dataclass
class Options:
    """The recipe's ``toy:`` section."""

    weight: float = 1.0  # the loss is weight x MSE


RULES = {"weight": (lambda v: v > 0, "must be > 0")}


class CopyInPlace(LastFramePixels, PretrainingModel):
    """f1's token at each patch -> f2's pixels there (a deliberately weak objective)."""

    def __init__(self, encoder: nn.Module, weight: float, norm_pix_loss: bool):
        super().__init__()
        self.encoder, self.weight, self.norm_pix_loss = encoder, weight, norm_pix_loss
        self.patch_size, self.grid = encoder.patch_embed.patch_size[0], tuple(encoder.patch_embed.grid_size)
        self.head = nn.Linear(encoder.embed_dim, self.patch_size**2 * 3)

    def forward(self, frames: torch.Tensor) -> Output:
        pred = self.head(encode_frame(self.encoder, frames[:, 0]))  # (B, N, p*p*3)
        mask = torch.ones(pred.shape[:2], device=pred.device)  # every patch of f2 is predicted
        return Output(self.weight * self.loss(frames, pred, mask), pred, mask)


def build(cfg) -> CopyInPlace:
    return init_mae(CopyInPlace(build_encoder(cfg.model), cfg.toy.weight, cfg.model.norm_pix_loss))


@pytest.fixture
def toy():
    """The one registry line (in a real method: in siammae/models/__init__.py)."""
    yield register(Method("toy", __name__, recipe="tiny", summary="copy-in-place toy"))
    METHODS.pop("toy")


def test_a_registered_method_trains_resumes_its_config_and_propagates(toy, tmp_path):
    write_shards(tmp_path / "shards", num_shards=2, per_shard=8)
    recipe = tmp_path / "toy.yaml"
    recipe.write_text("inherit: tiny\nmodel:\n  method: toy\ntoy:\n  weight: 0.5\n")
    with pytest.raises(ConfigError, match="toy.weight=0.0 .*must be > 0"):
        load_config(recipe, ["toy.weight=0"])
    cfg = load_config(
        recipe,
        [
            f"data.shards={tmp_path / 'shards'}",
            f"train.output_dir={tmp_path / 'run'}",
            "train.samples=12",
            "train.global_batch_size=4",
            "train.log_with=none",
            "train.recon_every=0",
            "data.shuffle_buffer=8",
        ],
    )
    summary = train(cfg)
    assert summary["steps"] == 3
    saved = read_config(tmp_path / "run" / "config.yaml")
    assert saved.model.method == "toy" and saved.toy.weight == 0.5 and saved == cfg
    encoder, info = load_encoder(tmp_path / "run")
    assert info.step == 3 and info.timm_model == "vit_tiny_patch16_224"
    synth_davis(tmp_path / "davis", num_sequences=1, frames=4, size=(64, 96), seed=1)
    record = TASKS["davis"].run(
        encoder, tmp_path / "davis", tmp_path / "out", TASKS["davis"].protocol(short_side=64), progress=False
    )
    assert 0.0 <= record["scores"]["J&F"] <= 1.0 and (tmp_path / "out" / "scores.json").is_file()
