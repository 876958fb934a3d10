"""JHMDB: the on-disk layout and its lists, heat maps and their decoding, PCK by hand, user errors.

Every set is written here with :func:`siammae.tasks.jhmdb.write_jhmdb`; nothing is read from outside tmp_path.
"""

import csv
import json

import numpy as np
import pytest
from scipy.io import loadmat, savemat
from task_fixtures import translating_video

from siammae.errors import SiammaeError
from siammae.tasks.jhmdb import (
    ALPHAS,
    NUM_JOINTS,
    JhmdbError,
    aggregate,
    decode_joints,
    frame_scales,
    joint_heatmaps,
    list_videos,
    load_video,
    load_videos,
    pck,
    read_list,
    write_jhmdb,
    write_results,
)


def small_set(root, names=("v1", "v2"), frames=3, size=(24, 32)):
    """A few tiny videos; returns {name: joints}."""
    out = {}
    for i, name in enumerate(names):
        video, joints = translating_video(frames, size, (1, 1), seed=i)
        joints[:, 0] += 0.25  # fractional positions must survive the round trip
        out[write_jhmdb(root, name, video, joints)] = joints
    return out


# ----------------------------------------------------------------------------- layout and lists


def test_write_then_load_round_trip(tmp_path):
    written = small_set(tmp_path)
    videos = load_videos(tmp_path, tmp_path / "testlist.txt")
    assert [v.name for v in videos] == ["synthetic/v1", "synthetic/v2"]
    for video in videos:
        np.testing.assert_allclose(video.joints, written[video.name])
        assert [p.name for p in video.frames] == ["00001.png", "00002.png", "00003.png"]
        assert video.visible.shape == (3, NUM_JOINTS) and video.visible.all()
        assert video.size == (24, 32)
    # the file itself is JHMDB's: 2 x 15 x T, 1-based
    pos = loadmat(tmp_path / "joint_positions/synthetic/v1/joint_positions.mat")["pos_img"]
    assert pos.shape == (2, NUM_JOINTS, 3)
    np.testing.assert_allclose(pos[:, :, 1].T, written["synthetic/v1"][1] + 1)


def test_frames_sorted_numerically(tmp_path):
    small_set(tmp_path, names=("v",), frames=11)
    video = load_video(tmp_path, "synthetic/v")
    assert [p.stem for p in video.frames] == [f"{t:05d}" for t in range(1, 12)]


def test_list_formats(tmp_path):
    uvc = (
        "/media/x/DATA/JHMDB/joint_positions/pour/Bier_0/joint_positions.mat "
        "/media/x/DATA/JHMDB/Rename_Images/pour/Bier_0"
    )
    crw = "/data/jhmdb/Rename_Images/run/a_b_(c)_1/ /data/jhmdb/joint_positions/run/a_b_(c)_1/joint_positions.mat"
    listing = tmp_path / "list.txt"
    listing.write_text(f"# a comment\n{uvc}\n\n{crw}\nwave/w_2\n")
    assert read_list(listing) == ["pour/Bier_0", "run/a_b_(c)_1", "wave/w_2"]


@pytest.mark.parametrize(
    "line, words",
    [
        ("a/joint_positions/x/v1/joint_positions.mat a/Rename_Images/x/v2", "different videos"),
        ("a/Rename_Images/x/v1 a/Rename_Images/x/v1", "either order"),
        ("one two three", "either order"),
        ("v1", "cannot tell"),
    ],
)
def test_bad_list_lines(tmp_path, line, words):
    listing = tmp_path / "list.txt"
    listing.write_text(f"pour/ok\n{line}\n")
    with pytest.raises(JhmdbError, match=f"list.txt line 2: .*{words}"):
        read_list(listing)


def test_default_list_is_split1_test_then_everything(tmp_path):
    small_set(tmp_path, names=("v2", "v1"))
    assert list_videos(tmp_path) == ["synthetic/v1", "synthetic/v2"]  # no splits folder: all, sorted
    (tmp_path / "splits").mkdir()
    (tmp_path / "splits" / "synthetic_test_split1.txt").write_text("v1.avi 1 \nv2.avi 2 \n")
    (tmp_path / "splits" / "synthetic_test_split2.txt").write_text("v1.avi 2 \nv2.avi 1 \n")
    assert list_videos(tmp_path) == ["synthetic/v2"]


def test_duplicate_listing_is_an_error(tmp_path):
    small_set(tmp_path, names=("v1",))
    listing = tmp_path / "list.txt"
    listing.write_text("synthetic/v1\nsynthetic/v1\n")
    with pytest.raises(JhmdbError, match="listed twice"):
        list_videos(tmp_path, listing)


# ----------------------------------------------------------------------------- user errors


def test_missing_root_list_and_video(tmp_path):
    with pytest.raises(JhmdbError, match="JHMDB folder not found: .*nowhere"):
        load_videos(tmp_path / "nowhere")
    small_set(tmp_path, names=("v1",))
    with pytest.raises(JhmdbError, match="list file not found: .*missing.txt"):
        load_videos(tmp_path, tmp_path / "missing.txt")
    (tmp_path / "list.txt").write_text("synthetic/v1\nsynthetic/gone\n")
    with pytest.raises(JhmdbError, match="frames of video 'synthetic/gone' not found: .*Rename_Images"):
        load_videos(tmp_path, tmp_path / "list.txt")


def _mat(root, name="v1"):
    return root / "joint_positions" / "synthetic" / name / "joint_positions.mat"


def test_mat_without_pos_img(tmp_path):
    small_set(tmp_path, names=("v1",))
    savemat(str(_mat(tmp_path)), {"pos_world": np.zeros((2, 15, 3))})
    with pytest.raises(JhmdbError, match=r"joint_positions.mat: no 'pos_img' field \(fields: pos_world\)"):
        load_videos(tmp_path)


def test_mat_with_wrong_shape(tmp_path):
    small_set(tmp_path, names=("v1",))
    savemat(str(_mat(tmp_path)), {"pos_img": np.zeros((2, 14, 3))})
    with pytest.raises(JhmdbError, match="joint_positions.mat: 'pos_img' is float64 2x14x3; expected"):
        load_videos(tmp_path)


def test_unreadable_mat_and_frame(tmp_path):
    small_set(tmp_path, names=("v1",))
    _mat(tmp_path).write_bytes(b"not a mat file at all" * 10)
    with pytest.raises(JhmdbError, match="joint_positions.mat: cannot be read as a MATLAB file"):
        load_videos(tmp_path)
    small_set(tmp_path, names=("v1",))
    (tmp_path / "Rename_Images/synthetic/v1/00002.png").write_bytes(b"garbage")
    with pytest.raises(JhmdbError, match="00002.png: cannot be read as an image"):
        load_videos(tmp_path)


def test_frame_count_mismatch(tmp_path):
    small_set(tmp_path, names=("v1",))
    (tmp_path / "Rename_Images/synthetic/v1/00003.png").unlink()
    with pytest.raises(JhmdbError, match="joint_positions.mat: 'pos_img' has 3 frames but .*v1 has 2 .png"):
        load_videos(tmp_path)


def test_errors_are_user_errors():
    assert issubclass(JhmdbError, SiammaeError)


# ----------------------------------------------------------------------------- heat maps


def _joints_at(points):
    joints = np.tile(np.asarray(points[:1], dtype=np.float64), (NUM_JOINTS, 1))
    joints[: len(points)] = points
    return joints


def test_crw_heatmap_cells_and_background():
    stride = (8.0, 8.0)
    joints = _joints_at([[5.3 * 8, 7.7 * 8]])  # grid (x 5.3, y 7.7)
    maps = joint_heatmaps(joints, np.ones(NUM_JOINTS, bool), (15, 20), stride).reshape(16, 15, 20)
    nonzero = np.argwhere(maps[1].numpy() > 0)
    # centred on cell (x 5, y 8), the 4x4 window at offsets -2..+1
    assert nonzero[:, 0].min() == 6 and nonzero[:, 0].max() == 9
    assert nonzero[:, 1].min() == 3 and nonzero[:, 1].max() == 6
    assert maps[1, 8, 5] == 1 and maps[1, 8, 6] == pytest.approx(np.exp(-2))
    assert ((maps[0] == 1) == (maps[1:].sum(0) == 0)).all() and set(maps[0].unique().tolist()) == {0, 1}
    # CRW's int() truncates toward zero: near the low border the centre moves one cell further in
    low = joint_heatmaps(_joints_at([[1.0 * 8, 0.2 * 8]]), np.ones(NUM_JOINTS, bool), (15, 20), stride)
    assert low.reshape(16, 15, 20)[1, 1, 2] == 1


def test_invisible_and_off_grid_joints_are_empty():
    joints = _joints_at([[40.0, 40.0], [40.0, 40.0], [-30.0, 40.0], [np.nan, 1.0]])
    visible = np.ones(NUM_JOINTS, bool)
    visible[1] = False
    maps = joint_heatmaps(joints, visible, (15, 20), (8.0, 8.0))
    assert maps[1].sum() > 0 and maps[2].sum() == 0 and maps[3].sum() == 0 and maps[4].sum() == 0
    decoded = decode_joints(maps, (15, 20), (8.0, 8.0))
    assert np.isnan(decoded[1:4]).all() and np.isfinite(decoded[0]).all()


# CRW's whole-cell centre: up to 0.5 cell, plus the pull of tied neighbours among the top 3
@pytest.mark.parametrize("subcell, tolerance", [(False, 0.6), (True, 0.17)])
@pytest.mark.parametrize("frac", [(0.0, 0.0), (0.25, 0.75), (0.5, 0.5), (0.9, 0.1), (0.4, 0.6)])
def test_heatmap_decodes_back(subcell, tolerance, frac):
    """Encode then decode: within ``tolerance`` strides, with a non-square stride (CRW's 320x320 input
    of a 320x240 frame at stride 8 is 8 px across, 6 px down)."""
    grid, stride = (40, 40), (6.0, 8.0)
    cells = np.array([[12 + frac[0], 30 + frac[1]], [33 + frac[1], 5 + frac[0]]])
    joints = _joints_at(cells * np.array([stride[1], stride[0]]))
    maps = joint_heatmaps(joints, np.ones(NUM_JOINTS, bool), grid, stride, subcell=subcell)
    error = np.abs(decode_joints(maps, grid, stride) - joints) / np.array([stride[1], stride[0]])
    assert error.max() <= tolerance


def test_decode_is_top3_weighted_mean():
    soft = np.zeros((16, 4 * 5))
    soft[1, 1 * 5 + 2] = 3.0  # (x 2, y 1)
    soft[1, 3 * 5 + 4] = 1.0  # (x 4, y 3)
    soft[1, 0] = 0.01  # a weak third cell at (0, 0)
    soft[1, 8] = 0.001  # fourth: ignored
    soft[2] = 0.25  # flat: the mean of three of its cells, whichever
    decoded = decode_joints(soft, (4, 5), (10.0, 20.0))
    total = 3.0 + 1.0 + 0.01
    assert decoded[0] == pytest.approx([20 * (2 * 3 + 4 * 1) / total, 10 * (1 * 3 + 3 * 1) / total])
    assert decoded.shape == (15, 2) and np.isfinite(decoded[1]).all() and np.isnan(decoded[2:]).all()


# ----------------------------------------------------------------------------- PCK


def _pck_case():
    """3 frames. Scored joints' box in frames 1, 2: (10, 20)-(40, 60), diagonal 50, so 0.6 x 50 = 30 px
    and PCK@0.1 allows 3 px, @0.2 6 px."""
    gt = np.full((3, NUM_JOINTS, 2), [25.0, 40.0])
    gt[:, 0], gt[:, 1] = [10.0, 20.0], [40.0, 60.0]
    gt[:, 14] = [500.0, 500.0]  # invisible: neither scored nor in the box
    visible = np.ones((3, NUM_JOINTS), bool)
    visible[:, 14] = False
    pred = gt.copy()
    pred[0] += 100.0  # frame 0 is never scored
    pred[1, 0] += [3.0, 0.0]  # exactly at 0.1
    pred[1, 1] += [3.0001, 0.0]  # just over 0.1, within 0.2
    pred[1, 2] += [0.0, 6.0]  # exactly at 0.2
    pred[1, 3] = np.nan  # no prediction: not scored, not in the box
    pred[1, 14] += 200.0
    pred[2, 4] += [0.0, 7.0]  # over 0.2
    return pred, gt, visible


def test_pck_by_hand():
    pred, gt, visible = _pck_case()
    result = pck(pred, gt, visible)
    assert result["frames"] == 3 and result["scored"] == 13 + 14
    assert result["total"][0] == 2 and result["total"][3] == 1 and result["total"][14] == 0
    # per joint over 2 frames (joint 3: 1), then the mean over the 14 scored joints
    at_01 = np.array([1, 0.5, 0.5, 1, 0.5] + [1] * 9).mean()
    at_02 = np.array([1, 1, 1, 1, 0.5] + [1] * 9).mean()
    assert result["pck"]["0.1"] == pytest.approx(at_01) and result["pck"]["0.2"] == pytest.approx(at_02)
    assert result["pck"]["0.5"] == 1.0 and len(result["pck"]) == len(ALPHAS)
    assert result["correct"][ALPHAS.index(0.1)][1] == 1


def test_pck_box_uses_visible_joints_only():
    pred, gt, visible = _pck_case()
    visible[:, 14] = True
    pred[1:, 14] = gt[1:, 14]  # the far joint now scored (and exact): the box grows, 3.0001 px passes
    result = pck(pred, gt, visible)
    assert result["correct"][ALPHAS.index(0.1)][1] == 2


def test_pck_degenerate_box_is_wrong():
    gt = np.zeros((2, NUM_JOINTS, 2))
    visible = np.zeros((2, NUM_JOINTS), bool)
    visible[:, 0] = True  # one joint: a zero box
    result = pck(gt.copy(), gt, visible)
    assert result["scored"] == 1 and result["pck"]["0.5"] == 0.0


def test_aggregate_pools_per_joint_then_averages_joints():
    gt = np.zeros((3, NUM_JOINTS, 2))
    gt[:, :, 0] = np.arange(NUM_JOINTS) * 10.0  # a row of joints: box diagonal 140, 0.1 -> 8.4 px
    visible = np.ones((3, NUM_JOINTS), bool)
    good = pck(gt.copy(), gt, visible)
    bad_pred = gt.copy()
    bad_pred[1:, 0] += [0.0, 50.0]
    visible_b = visible[:2].copy()
    visible_b[:, 1:] = False
    bad = pck(bad_pred[:2], gt[:2], visible_b)  # joint 0 only, 1 frame, wrong
    overall = aggregate([good, bad])
    # joint 0: 2 of 3 instances right; the 14 others all right -> mean over joints
    assert overall["pck"]["0.1"] == pytest.approx((2 / 3 + 14) / 15)
    assert overall["videos"] == 2 and overall["frames"] == 5 and overall["scored"] == 31
    assert overall["per_joint"]["neck"]["0.1"] == pytest.approx(2 / 3)


def test_write_results(tmp_path):
    pred, gt, visible = _pck_case()
    per_video = {"pour/a": pck(pred, gt, visible), "run/b,c": pck(gt.copy(), gt, visible)}
    overall = aggregate(list(per_video.values()))
    csv_path, json_path = write_results(tmp_path / "out", per_video, overall)
    rows = list(csv.DictReader(open(csv_path)))
    assert [r["video"] for r in rows] == ["pour/a", "run/b,c", "overall"]
    assert list(rows[0])[3:] == ["PCK@0.1", "PCK@0.2", "PCK@0.3", "PCK@0.4", "PCK@0.5"]
    assert float(rows[2]["PCK@0.1"]) == pytest.approx(overall["pck"]["0.1"], abs=1e-4)
    record = json.loads(json_path.read_text())
    assert record["overall"]["pck"]["0.2"] == overall["pck"]["0.2"]
    assert len(record["alphas"]) == 50 and set(record["videos"]) == {"pour/a", "run/b,c"}


# ----------------------------------------------------------------------------- synthetic videos


def test_translating_video_moves_content_and_joints():
    frames, joints = translating_video(4, (48, 64), (3, 2), seed=1)
    assert len(frames) == 4 and frames[0].shape == (48, 64, 3) and joints.shape == (4, NUM_JOINTS, 2)
    np.testing.assert_array_equal(frames[1][2:, 3:], frames[0][:-2, :-3])
    np.testing.assert_allclose(joints[3] - joints[0], np.tile([9.0, 6.0], (NUM_JOINTS, 1)))


def test_encode_decode_score_chain_on_a_written_set(tmp_path):
    """The pieces the task runner chains, with "propagation" replaced by each frame's own heat maps:
    a 320x240 set on a 40x40 grid (stride 6 down, 8 across) scores PCK@0.1 = 1."""
    frames, joints = translating_video(4, (240, 320), (8, 6), seed=3)
    write_jhmdb(tmp_path, "pan", frames, joints)
    video = load_videos(tmp_path)[0]
    grid = (40, 40)
    stride = (video.size[0] / grid[0], video.size[1] / grid[1])
    pred = np.array(video.joints)
    for t in range(1, len(pred)):
        pred[t] = decode_joints(joint_heatmaps(video.joints[t], video.visible[t], grid, stride), grid, stride)
    result = aggregate([pck(pred, video.joints, video.visible)])
    assert result["pck"]["0.1"] == 1.0 and result["scored"] == 3 * NUM_JOINTS


def test_box_edges_start_at_minus_one_as_crw():
    """CRW's eval_pck.py starts the box's max corner at -1: joints all left of (above) -1 still get a box
    reaching to -1; elsewhere the box is the joints' own."""
    gt = np.array([[[-5.0, 10.0], [-3.0, 20.0]], [[5.0, 10.0], [8.0, 14.0]]])  # (T=2, J=2, (x, y))
    scored = np.ones((2, 2), dtype=bool)
    scales = frame_scales(gt, scored)
    assert scales[0] == pytest.approx(0.6 * np.hypot(-1 - (-5), 20 - 10))  # x from -5 to -1, not to -3
    assert scales[1] == pytest.approx(0.6 * np.hypot(3, 4))
