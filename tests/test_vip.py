"""VIP: the on-disk layout, the mIoU arithmetic against hand counts, and user errors naming the file.

Every data set is written here with ``write_vip``; nothing is read from a real VIP download.
"""

import csv
import json
import math

import numpy as np
import pytest
from PIL import Image
from task_fixtures import moving_parts

from siammae.errors import SiammaeError
from siammae.tasks.vip import (
    CLASSES,
    VOID,
    Confusion,
    VipError,
    VipVideo,
    fine_root,
    list_videos,
    load_videos,
    read_category_ids,
    resize_nearest,
    seed_labels,
    write_results,
    write_vip,
)


def small_video(num_frames=3, annotated=None, size=(16, 24)):
    """Frames and labels of ``moving_parts``; ``annotated`` lists the frames keeping their labels."""
    frames, labels = moving_parts(num_frames, size=size, shift=(0, 2))
    keep = range(num_frames) if annotated is None else annotated
    return frames, [lab if t in keep else None for t, lab in enumerate(labels)]


# ----------------------------------------------------------------------------- layout


def test_classes_are_the_twenty_reference_parts():
    assert len(CLASSES) == 20 and CLASSES[0] == "background" and CLASSES[19] == "left-shoe"
    assert CLASSES[13] == "face" and CLASSES[4] == "upper-clothes"


def test_round_trip_from_either_root(tmp_path):
    frames, labels = moving_parts(3, size=(32, 48))
    written = [write_vip(tmp_path, "videos7", frames, labels),
               write_vip(tmp_path, "videos12", *small_video(3, annotated=[0, 2]))]  # fmt: skip
    fine = tmp_path / "VIP_Fine"
    assert (fine / "Images" / "videos7" / "000000000001.jpg").is_file()
    assert (fine / "Annotations" / "Category_ids" / "videos7" / "000000000003.png").is_file()
    assert (fine / "lists" / "val_videos.txt").read_text() == "videos7\nvideos12\n"
    for root in (tmp_path, fine):
        assert fine_root(root) == fine
        assert list_videos(root) == ["videos7", "videos12"]
        assert load_videos(root) == written
    video = load_videos(tmp_path, ["videos12"])[0]
    assert sorted(video.annotations) == [0, 2] and video.scored() == [2] and video.scored(True) == [0, 2]
    assert written[0].scored() == [1, 2]
    for t in range(3):
        np.testing.assert_array_equal(read_category_ids(written[0].annotations[t]), labels[t])
        back = np.asarray(Image.open(written[0].frames[t]).convert("RGB"), dtype=np.int16)
        assert np.abs(back - frames[t]).mean() < 8  # JPEG at quality 95


def test_write_vip_lists_a_video_once(tmp_path):
    write_vip(tmp_path, "videos1", *small_video(2))
    write_vip(tmp_path, "videos1", *small_video(2))
    assert list_videos(tmp_path) == ["videos1"]


def test_list_lines_may_be_paths(tmp_path):
    write_vip(tmp_path, "videos3", *small_video(2))
    listing = tmp_path / "VIP_Fine" / "lists" / "val_videos.txt"
    listing.write_text("\nImages/videos3 Annotations/Category_ids/videos3\n\n")
    assert list_videos(tmp_path) == ["videos3"]
    assert [v.name for v in load_videos(tmp_path)] == ["videos3"]


def test_frames_ordered_by_number_not_by_name(tmp_path):
    write_vip(tmp_path, "videos1", *small_video(2))
    image_dir = tmp_path / "VIP_Fine" / "Images" / "videos1"
    label_dir = tmp_path / "VIP_Fine" / "Annotations" / "Category_ids" / "videos1"
    for old, new in (("000000000001", "9"), ("000000000002", "26")):  # "26" < "9" as text
        (image_dir / f"{old}.jpg").rename(image_dir / f"{new}.jpg")
        (label_dir / f"{old}.png").rename(label_dir / f"{new}.png")
    video = load_videos(tmp_path)[0]
    assert [f.stem for f in video.frames] == ["9", "26"]
    assert video.annotations[0].stem == "9"


def test_moving_parts_labels_move_with_the_scene():
    frames, labels = moving_parts(3, size=(32, 48), shift=(1, 3))
    for t in (1, 2):
        np.testing.assert_array_equal(labels[t], np.roll(labels[0], (t, 3 * t), axis=(0, 1)))
        np.testing.assert_array_equal(frames[t], np.roll(frames[0], (t, 3 * t), axis=(0, 1)))
    assert set(np.unique(labels[0])) == {0, 2, 4, 8, 13}


def test_seed_labels_turn_void_into_background(tmp_path):
    frames, labels = small_video(2)
    labels[0] = labels[0].copy()
    labels[0][0, :5] = VOID
    video = write_vip(tmp_path, "videos1", frames, labels)
    load_videos(tmp_path)  # void is allowed
    seed = seed_labels(video)
    assert seed.dtype == np.uint8 and seed.max() < 20
    assert (seed[0, :5] == 0).all()


# ----------------------------------------------------------------------------- mIoU


def test_iou_by_hand():
    c = Confusion()
    c.add(np.array([[0, 0], [1, 1]], np.uint8), np.array([[0, 1], [1, 1]], np.uint8))
    iou = c.iou()
    assert iou.shape == (20,)
    assert iou[0] == pytest.approx(1 / 2)  # TP 1, GT 2, PRED 1
    assert iou[1] == pytest.approx(2 / 3)  # TP 2, GT 2, PRED 3
    assert np.isnan(iou[2:]).all()  # in neither: left out of the mean
    assert c.miou() == pytest.approx((1 / 2 + 2 / 3) / 2)


def test_class_predicted_but_absent_from_gt_scores_zero():
    c = Confusion()
    c.add(np.zeros((2, 2), np.uint8), np.array([[0, 0], [0, 3]], np.uint8))
    assert c.iou()[3] == 0
    assert c.iou()[0] == pytest.approx(3 / 4)
    assert c.miou() == pytest.approx(3 / 8)


def test_void_pixels_are_ignored():
    c = Confusion()
    gt = np.array([[1, VOID], [1, VOID]], np.uint8)
    c.add(gt, np.array([[1, 5], [1, 7]], np.uint8))
    assert c.matrix.sum() == 2
    assert c.iou()[1] == 1 and np.isnan(c.iou()[5]) and np.isnan(c.iou()[7])
    assert c.miou() == 1


def test_smaller_prediction_is_resized_by_nearest():
    gt = np.array([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 0, 0]], np.uint8)
    pred = np.array([[0, 1], [2, 2]], np.uint8)  # each cell covers a 2x2 block of gt
    c = Confusion()
    c.add(gt, pred)
    assert c.iou()[0] == pytest.approx(4 / 6)  # TP 4, GT 6, PRED 4
    assert c.iou()[1] == pytest.approx(1.0)
    assert c.iou()[2] == pytest.approx(6 / 8)  # TP 6, GT 6, PRED 8
    assert c.miou() == pytest.approx((4 / 6 + 1 + 6 / 8) / 3)


def test_nearest_resize_matches_pil_at_uneven_ratios():
    ids = np.arange(15, dtype=np.uint8).reshape(3, 5)
    for size in ((7, 4), (4, 11), (3, 5), (2, 2)):
        pil = np.asarray(Image.fromarray(ids).resize(size[::-1], Image.NEAREST))
        np.testing.assert_array_equal(resize_nearest(ids, size), pil)


def test_one_matrix_over_the_dataset_not_a_mean_of_videos():
    a, b = Confusion(), Confusion()
    a.add(np.ones((1, 4), np.uint8), np.ones((1, 4), np.uint8))  # video A: mIoU 1
    b.add(np.array([[1, 0]], np.uint8), np.zeros((1, 2), np.uint8))  # video B: (0 + 1/2) / 2
    assert (a.miou(), b.miou()) == (pytest.approx(1.0), pytest.approx(0.25))
    pooled = Confusion()
    pooled += a
    pooled += b
    # class 1: TP 4, GT 5, PRED 4 -> 4/5; class 0: TP 1, GT 1, PRED 2 -> 1/2
    assert pooled.miou() == pytest.approx((4 / 5 + 1 / 2) / 2)
    assert pooled.miou() != pytest.approx((a.miou() + b.miou()) / 2)
    assert pooled.frames == 2


def test_empty_confusion_is_nan_and_bad_ids_are_bugs():
    assert math.isnan(Confusion().miou())
    with pytest.raises(ValueError, match="predicted"):
        Confusion().add(np.zeros((2, 2), np.uint8), np.full((2, 2), 20, np.uint8))
    with pytest.raises(ValueError, match="ground-truth"):
        Confusion().add(np.full((2, 2), 30, np.uint8), np.zeros((2, 2), np.uint8))


def test_write_results(tmp_path):
    a = Confusion()
    a.add(np.array([[0, 0], [1, 1]], np.uint8), np.array([[0, 1], [1, 1]], np.uint8))
    csv_path, json_path = write_results(tmp_path / "out", a, {"videos1": a}, first_frame_scored=True)
    rows = list(csv.reader(csv_path.open()))
    assert rows[0] == ["id", "class", "iou", "gt_pixels", "pred_pixels"]
    assert len(rows) == 1 + 20 + 1
    assert rows[1] == ["0", "background", "0.5000", "2", "1"]
    assert rows[3][2] == ""  # hair: in neither
    assert rows[-1][1:3] == ["mIoU", f"{(1 / 2 + 2 / 3) / 2:.4f}"]

    def no_nan(name):
        raise AssertionError(f"{name} in vip.json")

    record = json.loads(json_path.read_text(), parse_constant=no_nan)
    assert record["miou"] == pytest.approx((1 / 2 + 2 / 3) / 2)
    assert record["first_frame_scored"] is True
    assert record["iou"]["hair"] is None and record["iou"]["hat"] == pytest.approx(2 / 3)
    assert record["videos"]["videos1"]["frames"] == 1


# ----------------------------------------------------------------------------- user errors


def test_errors_are_user_errors():
    assert issubclass(VipError, SiammaeError)


def test_missing_folder_or_list(tmp_path):
    with pytest.raises(VipError, match="not found"):
        load_videos(tmp_path / "nowhere")
    with pytest.raises(VipError, match="not a VIP folder"):
        load_videos(tmp_path)
    write_vip(tmp_path, "videos1", *small_video(2))
    listing = tmp_path / "VIP_Fine" / "lists" / "val_videos.txt"
    listing.unlink()
    with pytest.raises(VipError, match="val_videos.txt") as err:
        load_videos(tmp_path)
    assert str(listing) in str(err.value)
    listing.write_text("\n")
    with pytest.raises(VipError, match="empty"):
        list_videos(tmp_path)


def test_unknown_video_or_missing_video_folders(tmp_path):
    write_vip(tmp_path, "videos1", *small_video(2))
    with pytest.raises(VipError, match="videos99"):
        load_videos(tmp_path, ["videos99"])
    listing = tmp_path / "VIP_Fine" / "lists" / "val_videos.txt"
    listing.write_text("videos1\nvideos2\n")
    with pytest.raises(VipError, match="frames of video 'videos2'"):
        load_videos(tmp_path)
    (tmp_path / "VIP_Fine" / "Images" / "videos2").mkdir()
    with pytest.raises(VipError, match="annotations of video 'videos2'"):
        load_videos(tmp_path)
    (tmp_path / "VIP_Fine" / "Annotations" / "Category_ids" / "videos2").mkdir()
    with pytest.raises(VipError, match="no .jpg frames"):
        load_videos(tmp_path)


def test_unknown_class_id_names_the_file(tmp_path):
    frames, labels = small_video(3)
    labels[2] = labels[2].copy()
    labels[2][3, 3] = 25
    video = write_vip(tmp_path, "videos1", frames, labels)
    with pytest.raises(VipError, match="25") as err:
        load_videos(tmp_path)
    assert str(video.annotations[2]) in str(err.value)


def test_size_mismatch_names_the_file(tmp_path):
    frames, labels = small_video(2)
    labels[1] = labels[1][:, :-2]
    video = write_vip(tmp_path, "videos1", frames, labels)
    with pytest.raises(VipError, match="22x16 but its frame is 24x16") as err:
        load_videos(tmp_path)
    assert str(video.annotations[1]) in str(err.value)


def test_first_frame_unannotated_names_the_file(tmp_path):
    video = write_vip(tmp_path, "videos1", *small_video(3, annotated=[1, 2]))
    with pytest.raises(VipError, match="first frame not annotated") as err:
        load_videos(tmp_path)
    expected = video.annotations[1].with_name(video.frames[0].stem + ".png")
    assert str(expected) in str(err.value)


def test_annotation_without_a_frame(tmp_path):
    video = write_vip(tmp_path, "videos1", *small_video(2))
    stray = video.annotations[0].with_name("000000000077.png")
    stray.write_bytes(video.annotations[0].read_bytes())
    with pytest.raises(VipError, match="annotation without a frame") as err:
        load_videos(tmp_path)
    assert str(stray) in str(err.value)


def test_unreadable_or_rgb_files(tmp_path):
    video = write_vip(tmp_path, "videos1", *small_video(2))
    video.annotations[1].write_bytes(b"not a png")
    with pytest.raises(VipError, match="cannot be read") as err:
        load_videos(tmp_path)
    assert str(video.annotations[1]) in str(err.value)

    Image.new("RGB", (24, 16)).save(video.annotations[1])
    with pytest.raises(VipError, match="RGB image"):
        load_videos(tmp_path)

    video.annotations[1].unlink()
    video.frames[1].write_bytes(b"")
    with pytest.raises(VipError, match="cannot be read as an image") as err:
        load_videos(tmp_path)
    assert str(video.frames[1]) in str(err.value)


def test_problems_in_a_later_video_surface_before_any_work(tmp_path):
    write_vip(tmp_path, "videos1", *small_video(2))
    frames, labels = small_video(2)
    labels[1] = labels[1][:-1]
    write_vip(tmp_path, "videos2", frames, labels)
    with pytest.raises(VipError, match="videos2"):
        load_videos(tmp_path)


def test_video_record_is_plain_data():
    v = VipVideo("v", [], {})
    assert v.scored() == [] and v.annotations == {}


def test_a_frame_of_another_size_is_refused_up_front(tmp_path):
    frames, labels = moving_parts(3, size=(32, 48))
    frames[2] = np.zeros((40, 48, 3), np.uint8)
    write_vip(tmp_path, "videos1", frames, [labels[0], None, None])
    with pytest.raises(VipError, match="000000000003.jpg: frame is 48x40 but the video's first frame is 48x32"):
        load_videos(tmp_path)
