"""Source layouts of `siammae shard` (file names only: nothing is decoded here)."""

from pathlib import Path

import pytest

from siammae.shard.sources import SourceError, detect_layout, find_videos


def touch(root: Path, *names: str) -> None:
    for name in names:
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"x")


def by_src(listing):
    return {v.src: v for v in listing.videos}


def test_kinetics_csv_quoted_labels_odd_ids_missing_rows_and_replacements(tmp_path):
    root = tmp_path / "k400"
    (root / "annotations").mkdir(parents=True)
    (root / "annotations" / "train.csv").write_text(
        "label,youtube_id,time_start,time_end,split,is_cc\n"
        '"arm wrestling",-abc_def-12,10,20,train,0\n'
        "abseiling,_x1y2z3w4v5,0,10,train,0\n"
        '"playing cards, magic",plain123456,5,15,train,0\n'
        "abseiling,missing0001,0,10,train,0\n"
    )
    (root / "annotations" / "test.csv").write_text("youtube_id,time_start,time_end,split\nTEST-id_001,3,13,test\n")
    touch(
        root,
        "train/-abc_def-12_000010_000020.mp4",
        "train/_x1y2z3w4v5_000000_000010.mp4",
        "train/plain123456_000005_000015.mp4",
        "replacement/replacement_for_corrupted_k400/plain123456_000005_000015.mp4",
        "train/not_in_csv_000000_000010.mp4",
        "test/TEST-id_001_000003_000013.mp4",
    )
    assert detect_layout(root) == "kinetics"
    listing = find_videos(root)
    videos = by_src(listing)
    assert listing.layout == "kinetics" and listing.missing == 1
    assert videos["train/-abc_def-12_000010_000020.mp4"].label == "arm wrestling"
    assert videos["train/_x1y2z3w4v5_000000_000010.mp4"].split == "train"
    # the replacement wins over the corrupted original; files not in a CSV are not sharded
    assert "replacement/replacement_for_corrupted_k400/plain123456_000005_000015.mp4" in videos
    assert (
        videos["replacement/replacement_for_corrupted_k400/plain123456_000005_000015.mp4"].label
        == "playing cards, magic"
    )
    assert "train/plain123456_000005_000015.mp4" not in videos
    assert not any("not_in_csv" in src for src in videos)
    test = videos["test/TEST-id_001_000003_000013.mp4"]
    assert (test.label, test.split) == (None, "test")
    only_test = find_videos(root, split="test")
    assert [v.src for v in only_test.videos] == ["test/TEST-id_001_000003_000013.mp4"] and only_test.missing == 0
    with pytest.raises(SourceError, match="val"):
        find_videos(root, split="val")
    (root / "annotations" / "validate.csv").write_text("label,youtube_id,time_start,time_end\nx,v1,0,10\n")
    touch(root, "val/v1_000000_000010.mp4")  # CSV and folder name the split differently
    assert [v.src for v in find_videos(root, split="validate").videos] == ["val/v1_000000_000010.mp4"]


def test_ucf101_lists_crlf_and_handstand_quirk(tmp_path):
    root = tmp_path / "UCF101"
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_bytes(b"1 ApplyEyeMakeup\r\n2 HandstandPushups\r\n")
    (lists / "trainlist01.txt").write_bytes(
        b"ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1\r\n"
        b"HandstandPushups/v_HandStandPushups_g08_c01.avi 2\r\n"
        b"HandstandPushups/v_HandStandPushups_g09_c01.avi 2\r\n"  # listed, not on disk
    )
    (lists / "testlist01.txt").write_bytes(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi\r\n")
    (lists / "trainlist02.txt").write_bytes(b"ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi 1\r\n")
    touch(
        root / "UCF-101",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi",
        "ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi",
        "HandstandPushups/v_HandStandPushups_g08_c01.avi",
    )
    assert detect_layout(root) == "ucf101"
    train = find_videos(root, split="train")
    videos = by_src(train)
    assert train.missing == 1
    handstand = videos["UCF-101/HandstandPushups/v_HandStandPushups_g08_c01.avi"]
    assert (handstand.label, handstand.split) == ("HandstandPushups", "train")
    test = find_videos(root, split="test")
    assert [(v.label, v.split) for v in test.videos] == [("ApplyEyeMakeup", "test")]
    assert len(find_videos(root).videos) == 3  # train + test of fold 1
    assert [v.split for v in find_videos(root, split="train", fold=2).videos] == ["train"]
    with pytest.raises(SourceError, match="testlist03"):
        find_videos(root, split="test", fold=3)


def test_class_folders_with_and_without_split(tmp_path):
    touch(tmp_path / "a", "dog/1.mp4", "cat/2.avi", "cat/3.MKV")
    listing = find_videos(tmp_path / "a")
    assert listing.layout == "classes"
    assert {(v.src, v.label) for v in listing.videos} == {
        ("dog/1.mp4", "dog"),
        ("cat/2.avi", "cat"),
        ("cat/3.MKV", "cat"),
    }
    touch(tmp_path / "b", "train/dog/1.mp4", "val/cat/2.webm")
    listing = find_videos(tmp_path / "b")
    assert {(v.label, v.split) for v in listing.videos} == {("dog", "train"), ("cat", "val")}
    assert [v.src for v in find_videos(tmp_path / "b", split="val").videos] == ["val/cat/2.webm"]


def test_any_folder_is_recursive_and_skips_non_videos(tmp_path):
    touch(tmp_path, "x.mp4", "deep/er/y.mov", "notes.txt", "deep/.hidden/z.mp4", ".dot.mp4")
    listing = find_videos(tmp_path)
    assert listing.layout == "folder"
    assert [v.src for v in listing.videos] == ["deep/er/y.mov", "x.mp4"]
    assert all(v.label is None and v.split is None for v in listing.videos)


def test_list_file(tmp_path):
    touch(tmp_path / "src", "a/one.mp4", "two words.mp4")
    outside = tmp_path / "elsewhere.avi"
    outside.write_bytes(b"x")
    list_file = tmp_path / "list.txt"
    list_file.write_text(f"# comment\na/one.mp4 label with spaces\r\ntwo words.mp4\tfoo\n{outside}\ngone.mp4 x\n")
    listing = find_videos(tmp_path / "src", list_file=list_file)
    videos = by_src(listing)
    assert listing.layout == "list" and listing.missing == 1
    assert videos["a/one.mp4"].label == "label with spaces"
    assert videos["two words.mp4"].label == "foo"
    assert videos[outside.as_posix()].label is None


def test_errors(tmp_path):
    with pytest.raises(SourceError, match="does not exist"):
        find_videos(tmp_path / "nope")
    with pytest.raises(SourceError, match="ucfTrainTestlist"):
        find_videos(tmp_path, layout="ucf101")
    assert find_videos(tmp_path).videos == []
