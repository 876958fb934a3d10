"""tools/parity.py's own parts: the reference scorers it runs are the user's checkouts, never here."""

import json
import pickle
import sys
from pathlib import Path

import numpy as np
from task_fixtures import translating_video

from siammae.tasks import jhmdb

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import parity  # noqa: E402


def test_joints_are_written_in_crws_eval_pck_input_format(tmp_path):
    """CRW's eval_pck.py reads ``<i>.dat`` (2, 15, T) in 40-cell grid units, scales them by the first
    frame's size and skips joints below 0; the list line is the image folder, then the .mat file."""
    frames, joints = translating_video(num_frames=3, size=(240, 320), shift=(4, 2))
    jhmdb.write_jhmdb(tmp_path / "jhmdb", "clip", frames, joints)
    pred = joints.copy()
    pred[2, 5] = np.nan  # no prediction
    name = "synthetic/clip"
    listing = parity.crw_pck_inputs({name: json.loads(json.dumps(pred.tolist()))}, tmp_path / "jhmdb", tmp_path)
    with open(tmp_path / "0.dat", "rb") as f:
        grid = pickle.load(f)
    assert grid.shape == (2, 15, 3)
    back = np.stack([grid[0] / 40 * 320, grid[1] / 40 * 240], axis=-1).transpose(1, 0, 2)  # as eval_pck scales
    seen = grid[0] >= 0
    assert not seen[5, 2] and seen.sum() == 15 * 3 - 1
    np.testing.assert_allclose(back[seen.T], pred[seen.T], atol=1e-9)
    images, mat = listing.read_text().split()
    assert images == str(tmp_path / "jhmdb" / "Rename_Images" / name)
    assert mat == str(tmp_path / "jhmdb" / "joint_positions" / name / "joint_positions.mat")
    # CropMAE's copy reads the list the other way round: the .mat file, then the image folder
    listing = parity.crw_pck_inputs({name: pred.tolist()}, tmp_path / "jhmdb", tmp_path, mat_first=True)
    assert listing.read_text().split() == [mat, images]


def test_vip_links_rename_the_predictions_to_the_scripts_naming(tmp_path):
    for video in ("videos1", "videos2"):
        (tmp_path / "predictions" / video).mkdir(parents=True)
        for stem in ("000000000001", "000000000026", "000000000051"):
            (tmp_path / "predictions" / video / f"{stem}_mask.png").write_bytes(stem.encode())
    for names, suffix in (("crw", ".png"), ("cropmae", "_mask.png")):
        linked = tmp_path / names
        linked.mkdir()
        parity.link_vip_predictions(tmp_path / "predictions", linked, names)
        assert sorted(p.name for p in linked.iterdir()) == ["videos1", "videos2"]
        files = sorted((linked / "videos2").iterdir())
        assert [p.name for p in files] == [f"{s}{suffix}" for s in ("000000000001", "000000000026", "000000000051")]
        assert files[1].read_bytes() == b"000000000026"


def test_a_missing_benchmark_or_checkout_is_one_line(tmp_path, capsys):
    assert parity.main([str(tmp_path), "--crw", str(tmp_path)]) == 2
    assert "no benchmark.json" in capsys.readouterr().err
    (tmp_path / "benchmark.json").write_text(json.dumps({"tasks": {"vip": {"root": str(tmp_path)}}}))
    (tmp_path / "vip").mkdir()
    (tmp_path / "vip" / "vip.json").write_text(json.dumps({"miou": 0.5, "first_frame_scored": True}))
    assert parity.main([str(tmp_path), "--crw", str(tmp_path / "nowhere")]) == 2
    assert "older siammae" in capsys.readouterr().err  # no predictions/ folder: written before it existed
    (tmp_path / "vip" / "predictions").mkdir()
    assert parity.main([str(tmp_path), "--crw", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "is " in err and "checkout of ajabri/videowalk" in err
