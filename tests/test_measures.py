"""DAVIS-2017 J and F: hand-built cases, a loop-based reference on random masks, files and errors."""

import csv
import math

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from siammae.cli.evaluate import evaluate as evaluate_cmd
from siammae.tasks.davis_files import DavisError, save_indexed_png
from siammae.tasks.jandf import (
    Evaluation,
    ObjectScores,
    boundary_f,
    boundary_map,
    boundary_radius,
    evaluate,
    f_measure,
    jaccard,
    statistics,
    write_csvs,
)


def write_davis(root, sequences, split="val", void_border=False):
    """A DAVIS-2017 layout from {name: (T, H, W) uint8 labels}; frames are grey JPEGs."""
    for name, labels in sequences.items():
        img_dir = root / "JPEGImages" / "480p" / name
        ann_dir = root / "Annotations" / "480p" / name
        img_dir.mkdir(parents=True)
        ann_dir.mkdir(parents=True)
        for t, lab in enumerate(labels):
            Image.fromarray(np.full(lab.shape + (3,), 128, np.uint8)).save(img_dir / f"{t:05d}.jpg")
            lab = lab.copy()
            if void_border:
                lab[0, :] = 255
            save_indexed_png(ann_dir / f"{t:05d}.png", lab)
    (root / "ImageSets" / "2017").mkdir(parents=True, exist_ok=True)
    (root / "ImageSets" / "2017" / f"{split}.txt").write_text("\n".join(sequences) + "\n")


def write_results(out, name, labels):
    (out / name).mkdir(parents=True, exist_ok=True)
    for t, lab in enumerate(labels):
        save_indexed_png(out / name / f"{t:05d}.png", lab.astype(np.uint8))


def square(h, w, y0, x0, size, value=1):
    m = np.zeros((h, w), np.uint8)
    m[y0 : y0 + size, x0 : x0 + size] = value
    return m


# ----------------------------------------------------------------------------- J


def test_jaccard_both_empty_one_empty_and_overlap():
    empty = np.zeros((1, 10, 10), np.uint8)
    full = square(10, 10, 2, 2, 4)[None]  # 16 px
    half = square(10, 10, 2, 4, 4)[None]  # shifted by 2: overlap 8, union 24
    assert jaccard(empty, empty, 1)[0, 0] == 1.0
    assert jaccard(full, empty, 1)[0, 0] == 0.0
    assert jaccard(empty, full, 1)[0, 0] == 0.0
    assert jaccard(full, half, 1)[0, 0] == pytest.approx(8 / 24)


def test_jaccard_per_object_and_untracked_ids():
    gt = np.zeros((1, 8, 8), np.uint8)
    gt[0, :4] = 1
    gt[0, 4:] = 2
    gt[0, 0, 0] = 7  # an id above K: belongs to no tracked object
    pred = gt.copy()
    pred[0, 0, 0] = 1
    j = jaccard(gt, pred, 2)
    assert j[1, 0] == 1.0
    assert j[0, 0] == pytest.approx(31 / 32)


# ----------------------------------------------------------------------------- F


def test_boundary_map_by_hand():
    m = np.zeros((4, 5), bool)
    m[1:3, 1:3] = True
    expected = np.array(
        [
            [1, 1, 1, 0, 0],  # above the square: the pixel below (or diagonal) differs
            [1, 0, 1, 0, 0],
            [1, 1, 1, 0, 0],
            [0, 0, 0, 0, 0],
        ],
        bool,
    )
    assert (boundary_map(m) == expected).all()
    # Border rules: a full mask has no boundary; a mask touching the right edge marks it along the
    # last column only where the pixel below differs.
    assert not boundary_map(np.ones((4, 5), bool)).any()
    edge = np.zeros((4, 5), bool)
    edge[:2, 3:] = True
    b = boundary_map(edge)
    assert b[1, 4] and not b[0, 4]


def test_boundary_radius():
    assert boundary_radius(480, 854) == 8
    assert boundary_radius(480, 910) == math.ceil(0.008 * math.hypot(480, 910))
    assert boundary_radius(100, 100) == 2


@pytest.mark.parametrize("dy,dx", [(0, 8), (8, 0), (5, 6), (6, 5), (0, 9), (6, 6), (8, 1), (3, 7)])
def test_disk_tolerance(dy, dx):
    """One boundary pixel each: matched iff dy^2 + dx^2 <= r^2 (a disk, not a square)."""
    r = 8
    p = np.zeros((40, 40), bool)
    g = np.zeros((40, 40), bool)
    p[10, 10] = True
    g[10 + dy, 10 + dx] = True
    expected = 1.0 if dy * dy + dx * dx <= r * r else 0.0
    assert boundary_f(p, g, r) == expected


def test_f_both_empty_one_empty_and_shift():
    H, W = 480, 854  # r = 8
    empty = np.zeros((1, H, W), np.uint8)
    obj = square(H, W, 100, 100, 60)[None]
    assert f_measure(empty, empty, 1)[0, 0] == 1.0
    assert f_measure(obj, empty, 1)[0, 0] == 0.0
    assert f_measure(empty, obj, 1)[0, 0] == 0.0
    assert f_measure(obj, np.roll(obj, 8, axis=2), 1)[0, 0] == 1.0
    assert f_measure(obj, np.roll(obj, 9, axis=2), 1)[0, 0] < 1.0


# ----------------------------------------------------------------------------- statistics


def test_recall_is_strictly_above_half():
    assert statistics(np.array([0.5, 0.6, 0.4, 1.0]))[1] == 0.5


def test_decay_bins_as_the_reference():
    v = np.arange(8, dtype=float)  # bins: idx 0..2 and idx 5..7 (shared edges, reference rounding)
    mean, _, decay = statistics(v)
    assert mean == 3.5
    assert decay == pytest.approx(np.mean(v[0:3]) - np.mean(v[5:8]))
    assert statistics(np.ones(5))[2] == 0.0


# ----------------------------------------------------------------------------- reference cross-check


def reference_f(pred, gt):
    """Straightforward F for one frame: boundaries pixel by pixel, dilation with a disk element."""
    h, w = gt.shape
    r = math.ceil(0.008 * math.sqrt(h * h + w * w))

    def bmap(m):
        b = np.zeros_like(m)
        for y in range(h):
            for x in range(w):
                if y == h - 1 and x == w - 1:
                    continue
                if y == h - 1:
                    nbrs = [m[y, x + 1]]
                elif x == w - 1:
                    nbrs = [m[y + 1, x]]
                else:
                    nbrs = [m[y, x + 1], m[y + 1, x], m[y + 1, x + 1]]
                b[y, x] = any(n != m[y, x] for n in nbrs)
        return b

    yy, xx = np.mgrid[-r : r + 1, -r : r + 1]
    disk = yy**2 + xx**2 <= r * r
    bp, bg = bmap(pred), bmap(gt)
    if not bp.any() and not bg.any():
        return 1.0
    if not bp.any() or not bg.any():
        return 0.0
    prec = (bp & ndimage.binary_dilation(bg, disk)).sum() / bp.sum()
    rec = (bg & ndimage.binary_dilation(bp, disk)).sum() / bg.sum()
    return 0.0 if prec + rec == 0 else 2 * prec * rec / (prec + rec)


def blobs(rng, shape, k):
    noise = ndimage.gaussian_filter(rng.standard_normal(shape), 3)
    labels = np.digitize(noise, np.quantile(noise, np.linspace(0, 1, k + 2)[1:-1]))
    return labels.astype(np.uint8)


def test_against_loop_reference_on_random_masks():
    rng = np.random.default_rng(0)
    gt = np.stack([blobs(rng, (37, 61), 3) for _ in range(4)])
    pred = np.stack([blobs(rng, (37, 61), 3) for _ in range(4)])
    pred[1] = gt[1]
    pred[2] = np.where(rng.random(gt[2].shape) < 0.05, 0, gt[2])
    pred[3, pred[3] == 2] = 0  # object 2 missing
    j, f = jaccard(gt, pred, 3), f_measure(gt, pred, 3)
    for k in range(1, 4):
        for t in range(4):
            g, p = gt[t] == k, pred[t] == k
            union = (g | p).sum()
            ref_j = 1.0 if union == 0 else (g & p).sum() / union
            assert j[k - 1, t] == pytest.approx(ref_j)
            assert f[k - 1, t] == pytest.approx(reference_f(p, g))


# ----------------------------------------------------------------------------- sequences and files


def moving_square_sequence(T=6, H=48, W=64, objects=1):
    labels = np.zeros((T, H, W), np.uint8)
    for t in range(T):
        for k in range(1, objects + 1):
            labels[t, 4 + 12 * (k - 1) : 14 + 12 * (k - 1), 4 + 2 * t : 14 + 2 * t] = k
    return labels


def test_first_and_last_frames_are_not_scored(tmp_path):
    gt = moving_square_sequence()
    write_davis(tmp_path / "davis", {"seq": gt})
    pred = gt.copy()
    pred[0] = 0  # wrong on the first and the last frame only
    pred[-1] = 0
    write_results(tmp_path / "out", "seq", pred)
    ev = evaluate(tmp_path / "davis", tmp_path / "out")
    assert len(ev.objects) == 1 and len(ev.objects[0].j) == len(gt) - 2
    assert ev.global_row()["J&F-Mean"] == 1.0


def test_void_is_background(tmp_path):
    gt = moving_square_sequence()
    gt[:, 0, :] = 1  # an object row where the annotation says void
    write_davis(tmp_path / "davis", {"seq": gt}, void_border=True)
    pred = gt.copy()
    pred[:, 0, :] = 0  # background where ground truth is void: correct
    write_results(tmp_path / "out", "seq", pred)
    assert evaluate(tmp_path / "davis", tmp_path / "out").global_row()["J-Mean"] == 1.0
    write_results(tmp_path / "out", "seq", gt)  # object on void pixels: wrong
    assert evaluate(tmp_path / "davis", tmp_path / "out").global_row()["J-Mean"] < 1.0


def test_global_means_are_over_objects_not_sequences():
    ev = Evaluation(
        [
            ObjectScores("a_1", np.zeros(4), np.zeros(4)),
            ObjectScores("b_1", np.ones(4), np.ones(4)),
            ObjectScores("b_2", np.ones(4), np.ones(4)),
            ObjectScores("b_3", np.ones(4), np.ones(4)),
        ]
    )
    g = ev.global_row()
    assert g["J-Mean"] == 0.75 and g["F-Mean"] == 0.75 and g["J&F-Mean"] == 0.75  # not 0.5
    assert g["J-Recall"] == 0.75


def test_csv_files_have_official_columns_and_are_rewritten(tmp_path):
    gt = moving_square_sequence(objects=2)
    write_davis(tmp_path / "davis", {"seq": gt})
    pred = gt.copy()
    pred[pred == 2] = 0  # object 2 lost: scores 0, not an error
    write_results(tmp_path / "out", "seq", pred)
    (tmp_path / "out" / "global_results-val.csv").write_text("stale\n")
    g_path, s_path = write_csvs(evaluate(tmp_path / "davis", tmp_path / "out"), tmp_path / "out")
    rows = list(csv.reader(open(g_path)))
    assert rows[0] == ["J&F-Mean", "J-Mean", "J-Recall", "J-Decay", "F-Mean", "F-Recall", "F-Decay"]
    assert float(rows[1][1]) == 0.5
    rows = list(csv.reader(open(s_path)))
    assert rows == [["Sequence", "J-Mean", "F-Mean"], ["seq_1", "1.000", "1.000"], ["seq_2", "0.000", "0.000"]]


def test_evaluate_command(tmp_path):
    gt = moving_square_sequence()
    write_davis(tmp_path / "davis", {"seq": gt})
    write_results(tmp_path / "out", "seq", gt)
    r = CliRunner().invoke(evaluate_cmd, ["--davis", str(tmp_path / "davis"), "--results", str(tmp_path / "out")])
    assert r.exit_code == 0, r.output
    assert "J&F-Mean" in r.output and "1.000" in r.output
    assert (tmp_path / "out" / "per-sequence_results-val.csv").is_file()


@pytest.mark.parametrize("problem", ["missing_frame", "wrong_size", "unknown_id", "rgb", "no_results"])
def test_evaluate_refuses_bad_predictions(tmp_path, problem):
    gt = moving_square_sequence()
    write_davis(tmp_path / "davis", {"seq": gt})
    if problem != "no_results":
        write_results(tmp_path / "out", "seq", gt)
    else:
        (tmp_path / "out").mkdir()
    target = tmp_path / "out" / "seq" / "00002.png"
    if problem == "missing_frame":
        target.unlink()
    elif problem == "wrong_size":
        save_indexed_png(target, gt[2, :-1])
    elif problem == "unknown_id":
        bad = gt[2].copy()
        bad[0, 0] = 5
        save_indexed_png(target, bad)
    elif problem == "rgb":
        Image.fromarray(np.stack([gt[2]] * 3, -1)).save(target)
    with pytest.raises(DavisError):
        evaluate(tmp_path / "davis", tmp_path / "out")
    r = CliRunner().invoke(evaluate_cmd, ["--davis", str(tmp_path / "davis"), "--results", str(tmp_path / "out")])
    assert r.exit_code == 1 and "Error:" in r.output
    assert not (tmp_path / "out" / "global_results-val.csv").exists()


@pytest.mark.parametrize("missing", ["Annotations", "ImageSets", "JPEGImages", "sequence"])
def test_missing_davis_parts(tmp_path, missing):
    import shutil

    gt = moving_square_sequence()
    write_davis(tmp_path / "davis", {"seq": gt})
    write_results(tmp_path / "out", "seq", gt)
    if missing == "sequence":
        shutil.rmtree(tmp_path / "davis" / "Annotations" / "480p" / "seq")
    else:
        shutil.rmtree(tmp_path / "davis" / missing)
    with pytest.raises(DavisError, match="not found|missing"):
        evaluate(tmp_path / "davis", tmp_path / "out")
