"""`siammae shard` end to end on tiny synthetic videos: the sample format read back with webdataset,
determinism, bad files, --strict, parts, kill -9 and resume."""

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import simplejpeg
import webdataset as wds
from click.testing import CliRunner

from siammae.cli.shard import shard as shard_command
from siammae.shard import EncodeSpec, SampleSpec, ShardConfig, shard
from siammae.shard.decode import open_video
from tests.shard_fixtures import make_bad_files, make_video, read_index

REPO = Path(__file__).resolve().parents[1]
SMALL = ShardConfig(sample=SampleSpec(per_video=4), encode=EncodeSpec(short_side=64), max_samples=10)
SMALL_ARGS = ["--per-video", "4", "--short-side", "64", "--shard-samples", "10", "--no-progress"]
FIELDS = {"src", "label", "split", "fps", "frames", "gap", "size", "num_frames"}


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    """Six class-folder videos: mp4 at 25 fps, avi at 30 fps, mkv at 30 fps (64-96 frames, 96x128)."""
    root = tmp_path_factory.mktemp("videos")
    for i in range(6):
        suffix, fps = [(".mp4", 25), (".avi", 30), (".mkv", 30)][i % 3]
        make_video(root / f"class{i % 2}" / f"clip.{i}{suffix}", num_frames=64 + 16 * (i % 3), fps=fps)
    return root


@pytest.fixture(scope="module")
def reference(videos, tmp_path_factory):
    """One uninterrupted two-worker run of ``videos`` with SMALL."""
    out = tmp_path_factory.mktemp("reference")
    shard(videos, out, SMALL, workers=2, progress=False, log=lambda _: None)
    return out


def shard_bytes(out) -> dict:
    """{name: bytes} of every shard in ``out``."""
    return {p.name: p.read_bytes() for p in sorted(Path(out).glob("*.tar"))}


def output_checksum(out) -> str:
    """stats.json's checksum, computed here from the files: SHA-256 of the sorted "name sha256" lines."""
    lines = "".join(f"{name} {hashlib.sha256(data).hexdigest()}\n" for name, data in shard_bytes(out).items())
    return hashlib.sha256(lines.encode()).hexdigest()


def read_samples(out) -> dict:
    """{key: {member: bytes}} of every shard in ``out``; fails on a duplicate key."""
    samples = {}
    for tar in sorted(Path(out).glob("*.tar")):
        for sample in wds.WebDataset(os.fspath(tar), shardshuffle=False):
            key = sample["__key__"]
            assert key not in samples, f"duplicate key {key}"
            samples[key] = {k: v for k, v in sample.items() if not k.startswith("__")}
    return samples


def test_samples_read_back_with_webdataset(videos, reference):
    samples = read_samples(reference)
    assert len(samples) == 6 * 4
    for key, sample in samples.items():
        assert "." not in key and "/" not in key
        assert set(sample) == {"f0.jpg", "f1.jpg", "json"}
        record = json.loads(sample["json"].decode("utf-8"))
        assert set(record) == FIELDS
        t0, t1 = record["frames"]
        lo, hi = SMALL.sample.gap_range(record["fps"])
        assert t0 < t1 and record["gap"] == t1 - t0 and lo <= record["gap"] <= hi
        assert record["fps"] == (25.0 if record["src"].endswith(".mp4") else 30.0)
        assert record["size"] == [128, 96] and record["num_frames"] in (64, 80, 96)
        assert record["label"] == record["src"].split("/")[0] and record["split"] is None
        for name, index in (("f0.jpg", t0), ("f1.jpg", t1)):
            height, width, colorspace, subsampling = simplejpeg.decode_jpeg_header(sample[name])
            assert (width, height) == (85, 64) and subsampling == "420"
            assert read_index(simplejpeg.decode_jpeg(sample[name])) == index  # the frame the json names
    names = sorted(p.name for p in reference.glob("*.tar"))
    assert names == [f"shard-{u:06d}.tar" for u in range(3)]  # 2 videos a shard (10 samples // 4 a video)
    assert not list((reference / ".shard" / "tmp").iterdir())
    stats = json.loads((reference / "stats.json").read_text())
    assert (stats["videos_done"], stats["videos_failed"], stats["samples"]) == (6, 0, 24)
    assert stats["output"]["shards"] == len(names) and stats["shards"] == len(names)
    assert stats["bytes"] == sum(p.stat().st_size for p in reference.glob("*.tar"))
    assert (reference / "failed.jsonl").read_text() == ""
    assert stats["output"]["sha256"] == output_checksum(reference)


def test_same_inputs_and_options_same_bytes_whatever_the_workers(videos, reference, tmp_path):
    for workers in (1, 4):
        stats = shard(videos, tmp_path / f"w{workers}", SMALL, workers=workers, progress=False, log=lambda _: None)
        assert shard_bytes(tmp_path / f"w{workers}") == shard_bytes(reference)  # reference: 2 workers
        assert stats["output"]["sha256"] == output_checksum(reference)
    # other shard sizes cut the same samples differently; another seed draws other frames
    other = ShardConfig(sample=SMALL.sample, encode=SMALL.encode, max_samples=3)
    shard(videos, tmp_path / "a", other, workers=1, progress=False, log=lambda _: None)
    assert read_samples(tmp_path / "a") == read_samples(reference)
    reseeded = ShardConfig(sample=SMALL.sample, encode=SMALL.encode, seed=1)
    shard(videos, tmp_path / "b", reseeded, workers=1, progress=False, log=lambda _: None)
    assert read_samples(tmp_path / "b").keys() == read_samples(reference).keys()
    assert read_samples(tmp_path / "b") != read_samples(reference)


def test_default_size_clips_and_resume_skips_done(videos, tmp_path):
    config = ShardConfig(sample=SampleSpec(per_video=2, frames=3))
    list_file = tmp_path / "list.txt"
    list_file.write_text("class1/clip.1.avi\n")
    shard(videos, tmp_path / "out", config, list_file=list_file, workers=1, progress=False, log=lambda _: None)
    samples = read_samples(tmp_path / "out")
    assert len(samples) == 2
    for sample in samples.values():
        assert set(sample) == {"f0.jpg", "f1.jpg", "f2.jpg", "json"}
        frames = json.loads(sample["json"])["frames"]
        assert frames == sorted(set(frames)) and len(frames) == 3
        assert [read_index(simplejpeg.decode_jpeg(sample[f"f{i}.jpg"])) for i in range(3)] == frames
        assert simplejpeg.decode_jpeg_header(sample["f0.jpg"])[:2] == (256, 341)  # short side 256
    stats = shard(videos, tmp_path / "out", config, list_file=list_file, workers=1, progress=False, log=lambda _: None)
    assert stats["videos_skipped"] == 1 and stats["videos_done"] == 0 and stats["output"]["samples"] == 2


def test_bad_files_go_to_failed_jsonl_and_the_run_goes_on(videos, tmp_path):
    src = tmp_path / "src"
    expected = make_bad_files(src)
    make_video(src / "good.mp4", num_frames=64)
    result = CliRunner().invoke(
        shard_command, ["--src", str(src), "--out", str(tmp_path / "out"), "--workers", "2", *SMALL_ARGS]
    )
    assert result.exit_code == 0, result.output
    failed = [json.loads(line) for line in (tmp_path / "out" / "failed.jsonl").read_text().splitlines()]
    assert {r["src"]: r["reason"] for r in failed} == expected
    assert all(r["error"] and set(r) == {"src", "path", "reason", "error"} for r in failed)
    assert {json.loads(s["json"])["src"] for s in read_samples(tmp_path / "out").values()} == {"good.mp4"}
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert (stats["videos_done"], stats["videos_failed"], stats["output"]["failed"]) == (1, 4, 4)
    # a rerun skips the failures; --retry-failed tries them again (and they fail again)
    again = CliRunner().invoke(shard_command, ["--src", str(src), "--out", str(tmp_path / "out"), *SMALL_ARGS])
    assert again.exit_code == 0 and "5 skipped" in again.output
    retry = CliRunner().invoke(
        shard_command, ["--src", str(src), "--out", str(tmp_path / "out"), "--retry-failed", *SMALL_ARGS]
    )
    assert retry.exit_code == 0 and "4 failed" in retry.output
    assert len((tmp_path / "out" / "failed.jsonl").read_text().splitlines()) == 4


def test_strict_stops_with_an_error(tmp_path):
    src = tmp_path / "src"
    (src / "a").mkdir(parents=True)
    (src / "a" / "zero.mp4").write_bytes(b"")
    make_video(src / "a" / "good.mp4")
    result = CliRunner().invoke(
        shard_command, ["--src", str(src), "--out", str(tmp_path / "out"), "--strict", "--workers", "1", *SMALL_ARGS]
    )
    assert result.exit_code == 1
    assert "zero.mp4: empty" in result.output and "--strict" in result.output


def test_no_videos_or_all_failed_is_an_error(tmp_path):
    (tmp_path / "empty").mkdir()
    result = CliRunner().invoke(
        shard_command, ["--src", str(tmp_path / "empty"), "--out", str(tmp_path / "o1"), *SMALL_ARGS]
    )
    assert result.exit_code == 1 and "no videos found" in result.output
    make_bad_files(tmp_path / "bad")
    result = CliRunner().invoke(
        shard_command, ["--src", str(tmp_path / "bad"), "--out", str(tmp_path / "o2"), *SMALL_ARGS]
    )
    assert result.exit_code == 1 and "all 4 videos failed" in result.output and "failed.jsonl" in result.output


def test_options_must_match_to_resume(videos, reference, tmp_path):
    result = CliRunner().invoke(
        shard_command, ["--src", str(videos), "--out", str(reference), *SMALL_ARGS, "--seed", "7"]
    )
    assert result.exit_code == 1 and "seed 0 -> 7" in result.output


def test_parts_are_disjoint_and_cover_a_one_machine_run(videos, reference, tmp_path):
    keys_by_part = []
    for part in range(3):
        out = tmp_path / f"own{part}"
        shard(videos, out, SMALL, workers=1, part=part, num_parts=3, progress=False, log=lambda _: None)
        keys_by_part.append(set(read_samples(out)))
        shard(videos, tmp_path / "shared", SMALL, workers=1, part=part, num_parts=3, progress=False, log=lambda _: None)
    assert sum(len(k) for k in keys_by_part) == len(set().union(*keys_by_part))  # disjoint
    assert shard_bytes(tmp_path / "shared") == shard_bytes(reference)  # together: the one-machine run
    stats = json.loads((tmp_path / "shared" / "stats.json").read_text())
    assert stats["videos_listed"] == 6 and sorted(stats["parts"]) == ["part0000", "part0001", "part0002"]


def test_kill_9_three_times_then_rerun_gives_the_uninterrupted_bytes(tmp_path):
    src = tmp_path / "src"
    for i in range(24):
        make_video(src / f"v{i:02d}.mp4", num_frames=96, fps=30, height=192, width=256)
    args = ["--src", str(src), "--per-video", "6", "--shard-samples", "6", "--short-side", "128", "--workers", "2"]
    command = [sys.executable, str(REPO / "tools" / "shard"), *args, "--no-progress"]
    reference = tmp_path / "reference"
    subprocess.run([*command, "--out", str(reference)], check=True, capture_output=True)
    out, rng, killed_with = tmp_path / "out", random.Random(0), []
    for _ in range(3):  # killed at a random moment after the next shard appears, three runs in a row
        before = len(list(out.glob("*.tar")))
        process = subprocess.Popen(
            [*command, "--out", str(out)], start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 60
        while len(list(out.glob("*.tar"))) <= before and time.time() < deadline and process.poll() is None:
            time.sleep(0.005)
        time.sleep(rng.uniform(0, 0.05))
        assert process.poll() is None, "the run ended before it could be killed"
        os.killpg(process.pid, signal.SIGKILL)  # the command and its workers
        process.wait()
        killed_with.append(len(list(out.glob("*.tar"))))
        read_samples(out)  # every tar under its final name is complete
    assert 0 < killed_with[0] < killed_with[-1] < 24, f"the runs were not interrupted mid-way: {killed_with}"
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True)
    assert shard_bytes(out) == shard_bytes(reference)
    assert not list((out / ".shard" / "tmp").iterdir())
    stats = json.loads((out / "stats.json").read_text())
    assert stats["videos_skipped"] >= killed_with[-1] and stats["output"]["videos"] == 24
    assert stats["output"]["sha256"] == json.loads((reference / "stats.json").read_text())["output"]["sha256"]


def test_ffmpeg_transcode_fallback_reads_the_same_frames(tmp_path):
    path = make_video(tmp_path / "v.avi", num_frames=40, fps=30)
    reads = []
    for transcode in (False, True):
        with open_video(os.fspath(path), 64, transcode=transcode) as reader:
            frames = dict(reader.read([0, 7, 39], 64))
            reads.append((reader.num_frames, reader.fps, reader.source_size, {i: f.shape for i, f in frames.items()}))
            assert {i: read_index(f) for i, f in frames.items()} == {0: 0, 7: 7, 39: 39}
    assert reads[0] == reads[1]


def test_reading_in_small_batches_gives_the_same_frames(tmp_path, monkeypatch):
    from siammae.shard import decode

    path = os.fspath(make_video(tmp_path / "v.mp4", num_frames=40))
    with open_video(path, 64) as reader:
        whole = dict(reader.read([1, 2, 30, 31, 39], 64))
    monkeypatch.setattr(decode, "MAX_BATCH_BYTES", 1)  # one frame per decord call
    with open_video(path, 64) as reader:
        single = dict(reader.read([1, 2, 30, 31, 39], 64))
    assert whole.keys() == single.keys() and all((whole[i] == single[i]).all() for i in whole)


def test_help_documents_the_schema():
    result = CliRunner().invoke(shard_command, ["--help"])
    assert result.exit_code == 0
    for word in ["f0.jpg", "num_frames", "failed.jsonl", "--part", "--num-parts", "--strict", "--gap", "--list"]:
        assert word in result.output


CRASHING_SITECUSTOMIZE = """
import os, signal
import siammae.shard.pool as pool

_make_samples = pool.make_samples

def make_samples(video, *args, **kwargs):
    if video.src == "crash.mp4":
        os.kill(os.getpid(), signal.SIGKILL)  # what a decoder segfault looks like from outside
    return _make_samples(video, *args, **kwargs)

pool.make_samples = make_samples
"""


def test_a_worker_that_dies_costs_only_its_video(tmp_path):
    src = tmp_path / "src"
    for i in range(5):
        make_video(src / f"v{i}.mp4", num_frames=48)
    make_video(src / "crash.mp4", num_frames=48)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(CRASHING_SITECUSTOMIZE)  # loaded by every worker process
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    args = [sys.executable, str(REPO / "tools" / "shard"), "--src", str(src), "--workers", "2", "--per-video", "4"]
    args += ["--short-side", "64", "--shard-samples", "100", "--no-progress"]
    done = subprocess.run([*args, "--out", str(tmp_path / "out")], env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    failed = [json.loads(line) for line in (tmp_path / "out" / "failed.jsonl").read_text().splitlines()]
    assert [(r["src"], r["reason"]) for r in failed] == [("crash.mp4", "crash")]
    (src / "crash.mp4").unlink()
    subprocess.run([*args, "--out", str(tmp_path / "reference")], check=True, capture_output=True)
    assert read_samples(tmp_path / "out") == read_samples(tmp_path / "reference")


def test_workers_that_cannot_start_stop_the_run_instead_of_respawning(tmp_path):
    make_video(tmp_path / "src" / "v.mp4", num_frames=32)
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(
        "import os\nimport siammae.shard.pool as pool\n"
        "def broken(*args, **kwargs):\n    os._exit(3)\n"
        "pool._worker = broken\n"
    )
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(site), str(REPO)]))
    command = [sys.executable, str(REPO / "tools" / "shard"), "--src", str(tmp_path / "src"), "--out",
               str(tmp_path / "out")]  # fmt: skip
    done = subprocess.run(
        [*command, "--workers", "2", "--no-progress"], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert "died while starting (exit code 3" in done.stderr
    assert (tmp_path / "out" / "failed.jsonl").read_text() == ""  # the video is not blamed


def test_one_part_cannot_be_written_by_two_runs_at_once(videos, tmp_path):
    import fcntl

    from siammae.shard import ShardError

    lock_path = tmp_path / "out" / ".shard" / "part0000" / "lock"
    lock_path.parent.mkdir(parents=True)
    with open(lock_path, "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(ShardError, match="another siammae shard is writing part0000"):
            shard(videos, tmp_path / "out", SMALL, workers=1, progress=False, log=lambda _: None)


@pytest.mark.parametrize("suffix", [".mp4", ".avi", ".mkv"])
def test_pyav_reads_the_same_frames_as_decord(tmp_path, suffix):
    """Same frame count, rate, indices; pixels within a few levels (both convert with FFmpeg's
    libraries). The difference is printed: pytest -s shows it."""
    path = os.fspath(make_video(tmp_path / f"v{suffix}", num_frames=70, fps=25))
    wanted = [0, 1, 23, 24, 25, 47, 69]
    reads = {}
    for decoder in ("decord", "pyav"):
        with open_video(path, 64, decoder=decoder) as reader:
            reads[decoder] = (reader.num_frames, reader.fps, dict(reader.read(wanted, 64)))
            assert reader.source_size == (128, 96)
    (n_d, fps_d, frames_d), (n_p, fps_p, frames_p) = reads["decord"], reads["pyav"]
    assert n_d == n_p == 70 and fps_p == pytest.approx(fps_d, rel=1e-3)
    assert {i: read_index(f) for i, f in frames_p.items()} == {i: i for i in wanted}
    diff = max(int(abs(frames_p[i].astype(int) - frames_d[i].astype(int)).max()) for i in wanted)
    mean = sum(float(abs(frames_p[i].astype(int) - frames_d[i].astype(int)).mean()) for i in wanted) / len(wanted)
    print(f"{suffix}: pyav vs decord max abs diff {diff}, mean {mean:.3f} (0-255)")
    assert diff <= 8 and mean < 1.0


def test_pyav_shards_equal_decord_shards_in_keys_and_frames(videos, reference, tmp_path):
    config = ShardConfig(sample=SMALL.sample, encode=SMALL.encode, max_samples=SMALL.max_samples, decoder="pyav")
    stats = shard(videos, tmp_path / "p", config, workers=2, progress=False, log=lambda _: None)
    assert stats["parts"]["part0000"]["decoder"] == "pyav"
    got, want = read_samples(tmp_path / "p"), read_samples(reference)
    assert got.keys() == want.keys()
    for key in want:
        assert json.loads(got[key]["json"]) == json.loads(want[key]["json"])
        for member in ("f0.jpg", "f1.jpg"):
            a = simplejpeg.decode_jpeg(got[key][member]).astype(int)
            b = simplejpeg.decode_jpeg(want[key][member]).astype(int)
            assert abs(a - b).mean() < 2.0


def test_workers_are_replaced_after_max_videos_with_identical_output(tmp_path):
    for i in range(9):
        make_video(tmp_path / "v" / f"clip{i}.mp4", num_frames=40)
    # One video per shard (4 samples, --shard-samples 4): a worker retires at the first shard boundary
    # after its first video, its videos in flight (at most 2 more) finishing first.
    config = ShardConfig(sample=SMALL.sample, encode=SMALL.encode, max_samples=4, max_videos_per_worker=1)
    stats = shard(tmp_path / "v", tmp_path / "r", config, workers=1, progress=False, log=lambda _: None)
    part = stats["parts"]["part0000"]
    assert part["workers_started"] >= 3, "9 videos, at most 3 per worker: replaced at least twice"
    assert part["videos_done"] == 9 and 0 < part["peak_worker_rss_mib"] < 4096
    assert stats["peak_worker_rss_mib"] == part["peak_worker_rss_mib"]
    unreplaced = ShardConfig(sample=SMALL.sample, encode=SMALL.encode, max_samples=4)
    plain = shard(tmp_path / "v", tmp_path / "p", unreplaced, workers=1, progress=False, log=lambda _: None)
    assert plain["parts"]["part0000"]["workers_started"] == 1
    assert read_samples(tmp_path / "r") == read_samples(tmp_path / "p")


def _file_size_limit(limit: int):
    """preexec_fn: files above ``limit`` bytes cannot be written (EFBIG, as a full disk's ENOSPC) in the
    process and its children; SIGXFSZ ignored so the write fails instead of killing the process."""

    def apply():
        import resource

        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    return apply


def test_a_full_disk_stops_with_one_line_and_the_rerun_resumes(videos, reference, tmp_path):
    command = [sys.executable, str(REPO / "tools" / "shard"), "--src", str(videos), *SMALL_ARGS, "--workers", "2"]
    out = tmp_path / "out"
    # a shard here takes ~30 KB; the bookkeeping files stay far below the limit
    done = subprocess.run(
        [*command, "--out", str(out)], preexec_fn=_file_size_limit(16_000), capture_output=True, text=True
    )
    assert done.returncode == 1
    error = [line for line in done.stderr.splitlines() if line.startswith("Error:")]
    assert len(error) == 1 and "shard-0000" in error[0] and "File too large" in error[0], done.stderr
    assert "MB are free" in error[0] and "rerun the same command" in error[0]
    assert not list(out.glob("*.tar")) and not list((out / ".shard" / "tmp").iterdir())  # nothing half-written
    assert (out / "failed.jsonl").read_text() == ""  # no video is blamed for the disk
    subprocess.run([*command, "--out", str(out)], check=True, capture_output=True)
    assert shard_bytes(out) == shard_bytes(reference)


def test_retrying_a_repaired_video_rewrites_its_shard_as_a_clean_run_would(tmp_path):
    src = tmp_path / "src"
    for i in range(4):
        make_video(src / f"v{i}.mp4", num_frames=40)
    (src / "v2.mp4").rename(tmp_path / "v2.mp4")
    (src / "v2.mp4").write_bytes(b"")  # broken for now
    config = ShardConfig(sample=SMALL.sample, encode=SMALL.encode, max_samples=8)  # 2 videos a shard
    first = shard(src, tmp_path / "out", config, workers=2, progress=False, log=lambda _: None)
    assert first["output"]["failed"] == 1 and first["output"]["videos"] == 3
    (tmp_path / "v2.mp4").rename(src / "v2.mp4")  # repaired
    shard(src, tmp_path / "out", config, workers=2, retry_failed=True, progress=False, log=lambda _: None)
    shard(src, tmp_path / "clean", config, workers=1, progress=False, log=lambda _: None)
    assert shard_bytes(tmp_path / "out") == shard_bytes(tmp_path / "clean")
    assert (tmp_path / "out" / "failed.jsonl").read_text() == ""
