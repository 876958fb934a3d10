"""The three propagation tasks end to end on the one propagation core, on sets made in the tests:
a still video is followed (almost) perfectly, a translating textured scene is followed by a random
ViT's features better than copying frame 0 in place, and `siammae propagate` / `siammae benchmark`
write and print the scores."""

import json

import numpy as np
import pytest
import timm
import torch
from task_fixtures import translating_video

from siammae.errors import SiammaeError
from siammae.propagate.loop import first_frame_labels, soft_to_ids
from siammae.propagate.protocol import PROTOCOLS, choose_protocol
from siammae.tasks import TASKS, davis, jhmdb, vip
from siammae.tasks.davis_files import read_labels

NATIVE = dict(short_side=0, long_side=0, input_size=(), multiple=8)  # the small test frames at their size


def tiny_vit(patch=8, seed=0):
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, patch_size=patch, depth=2, dynamic_img_size=True
    ).eval()


def person_video(rng, T=8, H=96, W=160):
    """Three part regions of distinct checker colours (VIP ids 2 hair, 13 face, 4 upper-clothes) moving
    over a panning texture: frames (H, W, 3) uint8 and their ids (H, W) uint8."""
    bg = rng.integers(0, 256, (H // 4 + 24, W // 4 + 24, 3), dtype=np.uint8)
    bg = np.kron(bg, np.ones((4, 4, 1), np.uint8)) // 2
    yy, xx = np.mgrid[:16, :32]
    checks = (xx // 4 + yy // 4) % 2
    parts = {2: (230, 40, 40), 13: (40, 230, 40), 4: (40, 40, 230)}
    frames, labels = [], []
    for t in range(T):
        f = bg[t : t + H, 2 * t : 2 * t + W].copy()
        ids = np.zeros((H, W), np.uint8)
        y0, x0 = 16 + 2 * t, 16 + 6 * t
        for row, (k, colour) in enumerate(parts.items()):
            y = y0 + 16 * row
            f[y : y + 16, x0 : x0 + 32] = np.where(checks[..., None], colour, np.array(colour) // 3)
            ids[y : y + 16, x0 : x0 + 32] = k
        frames.append(f)
        labels.append(ids)
    return frames, labels


def test_vip_still_video_gives_the_quantised_first_labels(tmp_path):
    """Identical frames with top-1: every propagated frame is frame 0's parts quantised to the grid."""
    frames, labels = person_video(np.random.default_rng(0), T=1)
    vip.write_vip(tmp_path / "vip", "videos1", frames * 4, labels * 4)
    protocol = PROTOCOLS["siammae-vip"].replace(topk=1, **NATIVE)
    record = TASKS["vip"].run(tiny_vit(), tmp_path / "vip", tmp_path / "out", protocol, progress=False)
    grid = (96 // 8, 160 // 8)
    expected = soft_to_ids(first_frame_labels(labels[0], grid, protocol), grid, (96, 160), False)
    for t in range(1, 4):
        assert (
            read_labels(vip.prediction_path(tmp_path / "out", "videos1", f"{t + 1:012d}", "cropmae")) == expected
        ).all()
    # the preset scores frame 0 as the reference evaluators do: its given labels, then three quantised frames
    assert (read_labels(tmp_path / "out" / "predictions" / "videos1" / f"{1:012d}_mask.png") == labels[0]).all()
    quantised = vip.Confusion()
    for prediction in [labels[0], expected, expected, expected]:
        quantised.add(labels[0], prediction)
    assert record["scores"]["mIoU"] == pytest.approx(quantised.miou(), abs=1e-4)
    assert record["scores"]["mIoU"] > 0.9
    assert record["conventions"]["frames_scored"].startswith("every annotated frame, frame 0 included")


def test_vip_moving_parts_are_followed_better_than_copying_frame_0(tmp_path):
    for v in range(2):
        frames, labels = person_video(np.random.default_rng(v))
        vip.write_vip(tmp_path / "vip", f"videos{v + 1}", frames, labels)
    protocol = PROTOCOLS["siammae-vip"].replace(**NATIVE)
    record = TASKS["vip"].run(tiny_vit(), tmp_path / "vip", tmp_path / "out", protocol, progress=False)
    copy = vip.Confusion()
    for clip in vip.load_videos(tmp_path / "vip"):
        for t in clip.scored(protocol.first_frame_scored):
            copy.add(vip.read_category_ids(clip.annotations[t]), vip.seed_labels(clip))
    assert record["scores"]["mIoU"] > copy.miou() + 0.15, (record["scores"], copy.miou())  # 0.56 vs 0.31
    assert (tmp_path / "out" / "vip.csv").is_file()
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert saved["task"] == "vip" and saved["protocol"]["topk"] == 10 and saved["timing"]["frames"] == 16


def rescore_like_eval_vip(pred_dir, gt_dir, names) -> float:
    """CRW's eval_vip.py (``names="crw"``) or CropMAE's copy (``"cropmae"``), restated: every file under
    ``pred_dir/<video>/`` is scored against the ground truth of the same name (CRW) or of the name up to its
    first ``_`` plus ``.png`` (CropMAE); read as colours (OpenCV's imread: 3 channels), the last channel
    taken, resized with nearest to the ground truth's size; one histogram of ids 0..19; mIoU = nanmean of
    the class IoUs."""
    from PIL import Image

    hist = np.zeros((20, 20))
    for video in sorted(p for p in pred_dir.iterdir() if p.is_dir()):
        for pred_path in sorted(video.iterdir()):
            gt_name = pred_path.name if names == "crw" else pred_path.name.split("_")[0] + ".png"
            gt = np.array(Image.open(gt_dir / video.name / gt_name), dtype=np.int32)
            image = Image.open(pred_path).convert("RGB")
            if image.size != (gt.shape[1], gt.shape[0]):
                image = image.resize((gt.shape[1], gt.shape[0]), Image.NEAREST)
            pred = np.array(image, dtype=np.int32)[..., -1]
            keep = (gt >= 0) & (gt < 20)
            hist += np.bincount(20 * gt[keep] + pred[keep], minlength=400).reshape(20, 20)
    with np.errstate(divide="ignore", invalid="ignore"):
        iou = np.diag(hist) / (hist.sum(0) + hist.sum(1) - np.diag(hist))
    return float(np.nanmean(iou))


def test_vip_saved_predictions_rescore_to_the_recorded_miou_as_the_reference_scripts_read_them(tmp_path):
    """The saved PNGs are what the reference eval_vip.py scripts read (category ids, named as the preset's
    reference pairs them, only the scored frames), so re-scoring the folder their way gives siammae's mIoU."""
    frames, labels = person_video(np.random.default_rng(3))
    labels[2][:4] = vip.VOID  # a void band: skipped by both
    vip.write_vip(tmp_path / "vip", "videos1", frames, labels)
    protocol = PROTOCOLS["siammae-vip"].replace(**NATIVE)
    assert protocol.first_frame_scored and protocol.vip_names == "cropmae"
    TASKS["vip"].run(tiny_vit(), tmp_path / "vip", tmp_path / "out", protocol, progress=False)
    recorded = json.loads((tmp_path / "out" / "vip.json").read_text())
    assert recorded["first_frame_scored"] is True and recorded["vip_names"] == "cropmae"
    gt_dir = tmp_path / "vip" / "VIP_Fine" / "Annotations" / "Category_ids"
    pred_dir = tmp_path / "out" / recorded["predictions"]
    assert sorted(p.name for p in (pred_dir / "videos1").iterdir()) == [
        f"{t:012d}_mask.png" for t in range(1, len(frames) + 1)
    ]
    assert rescore_like_eval_vip(pred_dir, gt_dir, "cropmae") == pytest.approx(recorded["miou"], abs=1e-9)
    # without frame 0, in CRW's naming: frame 0 is not saved, and the folder re-scores to the figure after it
    protocol = protocol.replace(first_frame_scored=False, vip_names="crw")
    TASKS["vip"].run(tiny_vit(), tmp_path / "vip", tmp_path / "out0", protocol, progress=False)
    unscored = json.loads((tmp_path / "out0" / "vip.json").read_text())
    assert unscored["first_frame_scored"] is False and unscored["miou"] < recorded["miou"]
    pred_dir = tmp_path / "out0" / "predictions"
    assert sorted(p.name for p in (pred_dir / "videos1").iterdir()) == [
        f"{t:012d}.png" for t in range(2, len(frames) + 1)
    ]
    assert rescore_like_eval_vip(pred_dir, gt_dir, "crw") == pytest.approx(unscored["miou"], abs=1e-9)


@pytest.mark.parametrize("task", ["davis", "jhmdb"])
def test_tasks_whose_reference_never_scores_frame_0_refuse_to(tmp_path, task):
    protocol = PROTOCOLS["siammae"].replace(first_frame_scored=True)
    with pytest.raises(SiammaeError, match="never does"):
        if task == "davis":
            davis.propagate(tiny_vit(), tmp_path, tmp_path / "out", protocol)
        else:
            jhmdb.run(tiny_vit(), tmp_path, [], tmp_path / "out", protocol, progress=False)


def test_jhmdb_record_names_its_conventions(tmp_path):
    jhmdb_set(tmp_path / "jhmdb", (4, 2), videos=1, frames=3)
    record = TASKS["jhmdb"].run(tiny_vit(), tmp_path / "jhmdb", tmp_path / "out", TASKS["jhmdb"].protocol(),
                                progress=False)  # fmt: skip
    saved = json.loads((tmp_path / "out" / "scores.json").read_text())
    assert saved["conventions"] == record["conventions"]
    assert "max corner starting at -1" in saved["conventions"]["pck_box"]
    assert saved["conventions"]["frames_scored"].startswith("every frame but the first")
    assert saved["conventions"]["input_size"].startswith("every frame resized to 320x320")


def jhmdb_set(root, shift, videos=2, frames=6):
    for v in range(videos):
        images, joints = translating_video(num_frames=frames, size=(240, 320), shift=shift, seed=v)
        jhmdb.write_jhmdb(root, f"clip{v}", images, joints)
    return root


def copy_in_place_pck(root):
    """PCK of predicting every frame's joints at frame 0's positions."""
    videos = jhmdb.load_videos(root)
    results = [jhmdb.pck(np.repeat(v.joints[:1], len(v.joints), 0), v.joints, v.visible) for v in videos]
    return jhmdb.aggregate(results)["pck"]


def test_jhmdb_still_video_scores_pck_1(tmp_path):
    protocol = PROTOCOLS["siammae-jhmdb"].replace(topk=1, **NATIVE)
    record = TASKS["jhmdb"].run(
        tiny_vit(), jhmdb_set(tmp_path / "j", (0, 0)), tmp_path / "out", protocol, progress=False
    )
    assert record["scores"] == {"PCK@0.1": 1.0, "PCK@0.2": 1.0}
    assert {"pck.csv", "pck.json", "joints.json", "scores.json"} <= {p.name for p in (tmp_path / "out").iterdir()}


def test_jhmdb_joints_on_a_translating_texture_are_followed(tmp_path):
    """A texture panning a patch per frame: a random ViT's tokens match exactly, so the joints follow;
    frame 0's positions (copying in place) fall behind."""
    root = jhmdb_set(tmp_path / "j", (8, 8))
    protocol = PROTOCOLS["siammae-jhmdb"].replace(topk=1, **NATIVE)
    record = TASKS["jhmdb"].run(tiny_vit(), root, tmp_path / "out", protocol, progress=False)
    copy = copy_in_place_pck(root)
    assert record["scores"]["PCK@0.2"] > copy["0.2"] + 0.4, (record["scores"], copy)
    assert record["scores"]["PCK@0.1"] > 0.6, record["scores"]  # 0.75 vs 0.0


def test_task_presets_follow_the_paper_and_a_run_eval_setting_is_davis_only():
    class Eval:  # a run's eval section
        protocol, topk, queue, radius, temperature = "siammae", 3, None, None, None

    assert choose_protocol(run_eval=Eval()).topk == 3
    jhmdb = TASKS["jhmdb"].protocol(run_eval=Eval())
    assert (jhmdb.topk, jhmdb.queue, jhmdb.radius, jhmdb.input_size) == (7, 20, 20, (320, 320))
    v = TASKS["vip"].protocol()
    assert (v.topk, v.queue, v.radius, v.long_side) == (10, 20, 8, 880)


# ----------------------------------------------------------------------------- commands


def test_propagate_and_benchmark_commands_on_all_three_tasks(tmp_path):
    from click.testing import CliRunner

    from siammae.cli import main
    from siammae.synth.scenes import synth_davis

    synth_davis(tmp_path / "davis", num_sequences=1, frames=4, size=(64, 96), seed=0)
    jhmdb_set(tmp_path / "jhmdb", (8, 8), videos=1, frames=4)
    frames, labels = person_video(np.random.default_rng(0), T=4)
    vip.write_vip(tmp_path / "vip", "videos1", frames, labels)
    encoder = ["--checkpoint", "vit_tiny_patch16_224", "--random-init", "--quiet"]
    run = CliRunner().invoke
    r = run(
        main,
        ["propagate", "--jhmdb", str(tmp_path / "jhmdb"), *encoder, "--out", str(tmp_path / "pj"), "--size", "160"],
    )
    assert r.exit_code == 0, r.output
    assert "jhmdb: PCK@0.1" in r.output and "siammae-jhmdb+custom" in r.output
    assert json.loads((tmp_path / "pj" / "scores.json").read_text())["protocol"]["input_size"] == []
    r = run(
        main,
        [
            "propagate",
            "--davis",
            str(tmp_path / "davis"),
            "--vip",
            str(tmp_path / "vip"),
            *encoder,
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert r.exit_code == 2 and "give one dataset" in r.output

    args = ["benchmark", "--davis", str(tmp_path / "davis"), "--jhmdb", str(tmp_path / "jhmdb"), "--vip",
            str(tmp_path / "vip"), *encoder]  # fmt: skip
    r = run(main, [*args, "--out", str(tmp_path / "b1")])
    assert r.exit_code == 0, r.output
    for column in ["davis J&F", "jhmdb PCK@0.1", "jhmdb PCK@0.2", "vip mIoU"]:
        assert column in r.output
    record = json.loads((tmp_path / "b1" / "benchmark.json").read_text())
    assert set(record["tasks"]) == {"davis", "jhmdb", "vip"} and len(record["weights_sha256"]) == 64
    assert record["tasks"]["vip"]["protocol"]["name"] == "siammae-vip"
    assert (tmp_path / "b1" / "davis" / "global_results-val.csv").is_file()
    r = run(main, [*args[:3], *encoder, "--out", str(tmp_path / "b2")])  # DAVIS only, same random weights
    r = run(main, ["benchmark", "--compare", str(tmp_path / "b1"), str(tmp_path / "b2")])
    assert r.exit_code == 0 and "B - A: davis J&F +0.000" in r.output and "same weights" in r.output, r.output
    record["tasks"]["davis"]["scores"]["J&F"] += 0.25  # a third record, better on DAVIS than A by 0.25
    (tmp_path / "b3").mkdir()
    (tmp_path / "b3" / "benchmark.json").write_text(json.dumps(record))
    r = run(main, ["benchmark", "--compare", *(str(tmp_path / b) for b in ("b1", "b2", "b3"))])
    assert r.exit_code == 0 and "C - A: davis J&F +0.250" in r.output, r.output
    assert [line.split()[0] for line in r.output.splitlines()[2:5]] == ["A", "B", "C"]
    r = run(main, ["benchmark", "--compare", str(tmp_path / "b1")])
    assert r.exit_code == 2 and "two or more" in r.output
    r = run(main, [*args[:3], *encoder, "--davis-size", "64", "--out", str(tmp_path / "b4")])
    assert r.exit_code == 0, r.output
    davis = json.loads((tmp_path / "b4" / "benchmark.json").read_text())["tasks"]["davis"]["protocol"]
    assert davis["short_side"] == 64 and davis["name"] == "siammae+custom"
    r = run(main, ["benchmark", "--compare", str(tmp_path / "b1"), str(tmp_path / "davis")])
    assert r.exit_code == 1 and "not a benchmark record" in r.output


def test_a_bad_dataset_is_one_line_before_any_work(tmp_path):
    from click.testing import CliRunner

    from siammae.cli import main

    (tmp_path / "empty").mkdir()
    encoder = ["--checkpoint", "vit_tiny_patch16_224", "--random-init", "--quiet"]
    for flag in ("--jhmdb", "--vip"):
        r = CliRunner().invoke(
            main, ["propagate", flag, str(tmp_path / "empty"), *encoder, "--out", str(tmp_path / "o")]
        )
        assert r.exit_code == 1 and r.output.startswith("Error: ") and len(r.output.splitlines()) == 1, r.output
        assert not (tmp_path / "o").exists()
    r = CliRunner().invoke(
        main,
        ["propagate", "--vip", str(tmp_path / "empty"), "--sequences", "a", *encoder, "--out", str(tmp_path / "o")],
    )
    assert r.exit_code == 2 and "--sequences: DAVIS options, not for --vip" in r.output


def test_jhmdb_saved_joints_rescore_to_the_same_pck(tmp_path):
    """joints.json holds the predictions at full precision: scoring the file again gives the record's PCK."""
    root = jhmdb_set(tmp_path / "j", (5, 3))
    record = TASKS["jhmdb"].run(tiny_vit(), root, tmp_path / "out", PROTOCOLS["siammae-jhmdb"].replace(**NATIVE),
                                progress=False)  # fmt: skip
    saved = json.loads((tmp_path / "out" / "joints.json").read_text())
    rescored = jhmdb.aggregate(
        [jhmdb.pck(np.array(saved[v.name]), v.joints, v.visible) for v in jhmdb.load_videos(root)]
    )
    values = np.array([saved[v] for v in saved], dtype=float).ravel()
    assert np.nanmax(np.abs(values * 100 - np.round(values * 100))) > 1e-6  # not rounded to 0.01 px
    scored = json.loads((tmp_path / "out" / "pck.json").read_text())  # full precision; scores.json rounds to 4
    assert rescored["pck"] == scored["overall"]["pck"]
    assert round(rescored["pck"]["0.2"], 4) == record["scores"]["PCK@0.2"]
