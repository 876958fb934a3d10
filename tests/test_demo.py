"""``siammae demo`` shortened to seconds: every stage runs for real and leaves its outputs."""

import csv
import json

import pytest
from click.testing import CliRunner
from PIL import Image

from siammae.synth.demo import MARGIN, DemoSize, comparison_table, run_demo, verdict

pytest.importorskip("decord")

# Every stage, at sizes that take seconds: 4 videos, 3 training steps, 2 sequences of 6 frames.
SMALL = DemoSize(steps=3, batch=4, videos=4, video_frames=24, video_size=(64, 80), sequences=2, sequence_frames=6,
                 sequence_size=(48, 64), overlays=1, seed=3)  # fmt: skip


@pytest.fixture(scope="module")
def demo_out(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    lines = []
    report = run_demo(out, SMALL, log=lines.append, progress=False)
    return out, report, "\n".join(lines)


def test_every_stage_leaves_its_outputs(demo_out):
    out, report, _ = demo_out
    assert len(list((out / "videos").glob("*.mp4"))) == SMALL.videos
    assert list((out / "shards").glob("*.tar"))
    run = out / "run"
    assert (run / "checkpoints" / f"checkpoint_{SMALL.steps}" / "complete").is_file()
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert metrics and metrics[-1]["step"] == SMALL.steps
    assert (run / "recon" / f"step_{SMALL.steps:07d}.png").is_file()
    davis = out / "davis"
    sequences = (davis / "ImageSets" / "2017" / "val.txt").read_text().split()
    assert len(sequences) == SMALL.sequences
    for seq in sequences:
        assert len(list((davis / "JPEGImages" / "480p" / seq).glob("*.jpg"))) == SMALL.sequence_frames
        assert (davis / "Annotations" / "480p" / seq / "00000.png").is_file()
    with Image.open(out / "loss_curve.png") as img:
        assert img.size[0] > 100 and img.size[1] > 100
    assert json.loads((out / "demo.json").read_text())["results"] == report["results"]


@pytest.mark.parametrize("encoder", ["trained", "random"])
def test_both_encoders_are_propagated_and_evaluated(demo_out, encoder):
    out, report, _ = demo_out
    res = out / "propagation" / encoder
    sequences = (out / "davis" / "ImageSets" / "2017" / "val.txt").read_text().split()
    for seq in sequences:  # a label map named like every frame, as the DAVIS evaluator expects
        frames = sorted(p.stem for p in (out / "davis" / "JPEGImages" / "480p" / seq).glob("*.jpg"))
        assert sorted(p.stem for p in (res / seq).glob("*.png")) == frames
    with open(res / "global_results-val.csv") as f:
        row = next(csv.DictReader(f))
    assert float(row["J&F-Mean"]) == pytest.approx(report["results"][encoder]["J&F-Mean"], abs=1e-3)
    assert 0.0 <= report["results"][encoder]["J&F-Mean"] <= 1.0
    assert sorted(p.stem for p in (res / "overlays").glob("*.png")) == sorted(sequences)
    meta = json.loads((res / "propagation.json").read_text())["encoder"]
    assert meta["role"] == encoder
    assert (meta["weights"] is None) == (encoder == "random")


def test_log_prints_the_table_and_where_things_are(demo_out):
    out, report, log = demo_out
    assert comparison_table(report["results"]) in log
    for path in report["paths"].values():
        assert path in log


def test_verdict_needs_the_trained_encoder_ahead_by_the_margin():
    def results(trained, random):
        return {"trained": {"J&F-Mean": trained}, "random": {"J&F-Mean": random}}

    assert verdict(results(0.50 + MARGIN / 100, 0.50)) is None
    message = verdict(results(0.45, 0.50))
    assert "45.0" in message and "50.0" in message
    # Ahead, but by less than the margin: not a clear win.
    assert verdict(results(0.50 + MARGIN / 200, 0.50)) is not None


def test_cli_runs_the_shortened_demo(tmp_path):
    from siammae.cli.demo import demo

    args = ["--out", str(tmp_path / "d"), "--steps", "2", "--batch", "4", "--num-videos", "3", "--video-frames", "20",
            "--video-size", "64x80", "--sequences", "1", "--sequence-frames", "4", "--sequence-size", "48x64",
            "--quiet"]  # fmt: skip
    result = CliRunner().invoke(demo, args)
    assert "J&F-Mean" in result.output, result.output
    assert (tmp_path / "d" / "demo.json").is_file()
    report = json.loads((tmp_path / "d" / "demo.json").read_text())
    message = verdict(report["results"])
    # Two steps barely train: the check may well fail, and then the exit status says so.
    assert result.exit_code == (1 if message else 0), result.output
    last = result.output.strip().splitlines()[-1]
    assert last.startswith("CHECK FAILED: " if message else "check passed: ")
    if message:
        assert last == f"CHECK FAILED: {message}"


def test_cli_rejects_a_malformed_size(tmp_path):
    from siammae.cli.demo import demo

    result = CliRunner().invoke(demo, ["--out", str(tmp_path / "d"), "--video-size", "64"])
    assert result.exit_code == 2 and "HxW" in result.output
    assert not (tmp_path / "d").exists()


def test_cli_runs_the_demo_on_a_folder_of_real_videos(tmp_path):
    """--videos DIR: the user's files are sharded as they are, the DAVIS set is composited from them and
    J&F is tracked during training (synthetic files stand in for real ones)."""
    from siammae.cli.demo import demo
    from siammae.synth.scenes import synth_videos

    synth_videos(tmp_path / "mine", num_videos=2, frames=16, size=(48, 64), seed=4)
    args = ["--out", str(tmp_path / "d"), "--videos", str(tmp_path / "mine"), "--hard", "--steps", "2", "--batch", "4",
            "--pairs-per-video", "4", "--sequences", "1", "--sequence-frames", "4", "--sequence-size", "48x80",
            "--quiet"]  # fmt: skip
    result = CliRunner().invoke(demo, args)
    assert "J&F-Mean" in result.output, result.output
    report = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert report["data"] == {"videos": str(tmp_path / "mine"), "hard": True}
    provenance = json.loads((tmp_path / "d" / "davis" / "composite.json").read_text())
    assert provenance["settings"]["hard"] and list(provenance["sequences"]) == ["real-hard-000"]
    assert not (tmp_path / "d" / "videos").exists()  # the user's videos are used where they are
    evals = [json.loads(line) for line in (tmp_path / "d" / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in evals if "eval_jf" in r] == [0, 2]
    # Three composited sets (seeds 1, 2, 3), the lead on each and its spread; no pass/fail verdict.
    assert len(report["leads"]) == 3 and report["lead"]["sets"] == 3
    first = 100 * (report["results"]["trained"]["J&F-Mean"] - report["results"]["random"]["J&F-Mean"])
    assert report["leads"][0] == pytest.approx(first, abs=0.01)
    assert json.loads((tmp_path / "d" / "davis-s3" / "composite.json").read_text())["settings"]["seed"] == 3
    assert "check passed" not in result.output and "CHECK FAILED" not in result.output
    assert "lead of the trained encoder" in result.output
    assert result.exit_code == 0, result.output
    r = CliRunner().invoke(demo, ["--out", str(tmp_path / "e"), "--hard"])
    assert r.exit_code == 2 and "--hard needs --videos" in r.output


@pytest.mark.parametrize("method", ["maest", "cmae", "cropmae", "rsp", "tobo"])  # every kind of method
def test_cli_runs_the_shortened_demo_of_another_method(tmp_path, method):
    from siammae.cli.demo import demo

    args = ["--out", str(tmp_path / "d"), "--steps", "2", "--batch", "4", "--num-videos", "3", "--video-frames", "20",
            "--video-size", "64x80", "--sequences", "1", "--sequence-frames", "4", "--sequence-size", "48x64",
            "--quiet", "--method", method]  # fmt: skip
    result = CliRunner().invoke(demo, args)
    assert result.exit_code == 0, result.output
    assert "J&F-Mean" in result.output and f"{method}_tiny" in result.output
    report = json.loads((tmp_path / "d" / "demo.json").read_text())
    assert report["method"] == method and set(report["results"]) == {"trained", "random"}
    assert result.output.strip().splitlines()[-1].startswith(f"{method}: trained vs random as measured above")
