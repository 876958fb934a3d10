"""Feature diagnostics: each figure on token maps whose answer is known by construction."""

import numpy as np
import pytest
import torch

from siammae.propagate.diagnostics import effective_rank, mean_cosine, position_share, token_diagnostics
from siammae.synth.scenes import write_sequence
from siammae.tasks.davis import check_davis, copy_first_frame_jf


def unit(x):
    return torch.nn.functional.normalize(x, dim=-1)


def test_mean_cosine_matches_the_pairwise_definition():
    tokens = unit(torch.randn(3, 10, 16))
    sims = tokens @ tokens.transpose(1, 2)
    off_diagonal = sims[:, ~torch.eye(10, dtype=torch.bool)].mean()
    assert mean_cosine(tokens) == pytest.approx(float(off_diagonal), abs=1e-5)
    assert mean_cosine(unit(torch.ones(2, 5, 8))) == pytest.approx(1.0, abs=1e-5)
    assert mean_cosine(torch.eye(8)[None]) == pytest.approx(0.0, abs=1e-6)


def test_effective_rank_counts_directions():
    assert effective_rank(unit(torch.randn(1, 1, 12)).expand(1, 20, 12)) == pytest.approx(1.0, abs=1e-3)
    assert effective_rank(torch.eye(12)[None, :6]) == pytest.approx(6.0, abs=1e-4)
    assert 1 < effective_rank(unit(torch.randn(2, 30, 12))) < 12


def test_position_share_separates_position_from_content():
    g = torch.Generator().manual_seed(0)
    position = torch.randn(1, 40, 16, generator=g)
    content = torch.randn(8, 40, 16, generator=g)
    assert position_share(position.expand(8, -1, -1)) == pytest.approx(1.0, abs=1e-6)
    assert position_share(content) < 0.05  # no position effect: the estimate is near 0, not 1/8
    mixed = position_share(position + content)
    assert 0.35 < mixed < 0.65  # equal variances
    assert np.isnan(position_share(content[:1]))


def test_token_diagnostics_weights_frames_of_several_grids():
    a, b = unit(torch.randn(4, 12, 8)), unit(torch.ones(2, 6, 8))
    d = token_diagnostics([a, b])
    assert d["frames"] == 6
    assert d["mean_cosine"] == pytest.approx((4 * mean_cosine(a) + 2 * 1.0) / 6, abs=1e-3)
    assert d["position_share"] == pytest.approx(position_share(a), abs=1e-3)


def test_copy_first_frame_scores_one_on_a_still_scene_and_less_when_objects_move(tmp_path):
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 255, (4, 48, 64, 3), dtype=np.uint8)
    still = np.zeros((4, 48, 64), np.uint8)
    still[:, 10:30, 10:30] = 1
    moving = np.stack([np.roll(still[0], 12 * t, axis=1) for t in range(4)])
    write_sequence(tmp_path, "480p", "still", frames, still, 95)
    write_sequence(tmp_path, "480p", "moving", frames, moving, 95)
    (tmp_path / "ImageSets/2017").mkdir(parents=True)
    (tmp_path / "ImageSets/2017/val.txt").write_text("still\nmoving\n")
    root = str(tmp_path)
    assert copy_first_frame_jf(root, check_davis(root, "val", ["still"]), tmp_path / "a") == pytest.approx(1.0)
    assert copy_first_frame_jf(root, check_davis(root, "val", ["moving"]), tmp_path / "b") < 0.5
