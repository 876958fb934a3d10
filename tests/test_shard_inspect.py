"""`siammae inspect`: counts, checks, statistics and the contact sheet, on shards made in the test."""

import io
import json
import shutil
import tarfile

import pytest
from click.testing import CliRunner
from PIL import Image

from siammae.cli.inspect import inspect as inspect_command
from siammae.shard import EncodeSpec, SampleSpec, ShardConfig, shard
from tests.shard_fixtures import make_video


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    src = tmp_path_factory.mktemp("src")
    make_video(src / "walk" / "a.mp4", num_frames=64, fps=30)
    make_video(src / "run" / "b.avi", num_frames=64, fps=25)
    out = tmp_path_factory.mktemp("shards")
    config = ShardConfig(sample=SampleSpec(per_video=5), encode=EncodeSpec(short_side=64), max_samples=4)
    shard(src, out, config, workers=1, progress=False, log=lambda _: None)
    return out


def run(*args):
    return CliRunner().invoke(inspect_command, [*map(str, args), "--no-progress"])


def test_counts_statistics_and_sheet(shards, tmp_path):
    result = run(shards, "--json", "--sheet", tmp_path / "sheet.png", "--count", "3")
    assert result.exit_code == 0, result.output
    summary = json.loads(result.output[: result.output.rindex("}") + 1])
    assert (summary["samples"], summary["videos"], summary["jpegs"], summary["ok"]) == (10, 2, 20, True)
    assert summary["shards"] == len(list(shards.glob("*.tar")))
    assert summary["frame_sizes"] == {"85x64": 20} and summary["source_sizes"] == {"128x96": 10}
    assert 3 <= summary["gap_frames"]["min"] <= summary["gap_frames"]["max"] <= 48
    assert summary["labels"] == 2 and summary["frames_per_sample"] == {"2": 10}
    assert summary["sha256"] == json.loads((shards / "stats.json").read_text())["output"]["sha256"]
    sheet = Image.open(tmp_path / "sheet.png")
    assert sheet.height > 3 * 128
    text = run(shards, "--quick")
    assert text.exit_code == 0 and "10 samples of 2 videos" in text.output and "gap (seconds)" in text.output


def test_damage_is_reported_and_exits_non_zero(shards, tmp_path):
    first = sorted(shards.glob("*.tar"))[0]
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / first.name).write_bytes(first.read_bytes()[:5000])
    result = run(truncated)
    assert result.exit_code == 1 and "unreadable tar" in result.output

    duplicate = tmp_path / "duplicate"
    duplicate.mkdir()
    shutil.copy(first, duplicate / "a.tar")
    shutil.copy(first, duplicate / "b.tar")
    result = run(duplicate)
    assert result.exit_code == 1 and "also in a.tar" in result.output

    broken = tmp_path / "broken"
    broken.mkdir()
    with tarfile.open(first) as source, tarfile.open(broken / "x.tar", "w") as target:
        for info in source:
            data = source.extractfile(info).read()
            if info.name.endswith(".f1.jpg"):
                data = data[: len(data) // 2]  # cut JPEG
                info.size = len(data)
            target.addfile(info, io.BytesIO(data))
    result = run(broken)
    assert result.exit_code == 1 and "f1.jpg" in result.output


def test_nothing_to_inspect(tmp_path):
    result = run(tmp_path)
    assert result.exit_code == 1 and "no .tar shards" in result.output
