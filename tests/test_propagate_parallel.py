"""Many sequences at once (--workers, accelerate launch) write what one process writes; --precision."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from test_propagate import moving_object_video, tiny_vit, write_sequence

from siammae.allocator import keep_freed_memory
from siammae.cli.propagate import propagate as propagate_cmd
from siammae.propagate import cpu
from siammae.propagate.attention import written_out_pays
from siammae.propagate.features import FeatureExtractor
from siammae.propagate.precision import PrecisionError, native_precisions, reason, resolve_precision
from siammae.propagate.protocol import PROTOCOLS


@pytest.fixture(scope="module")
def davis(tmp_path_factory):
    root = tmp_path_factory.mktemp("davis")
    for i, name in enumerate("abc"):
        frames, labels = moving_object_video(np.random.default_rng(i), T=5, H=64, W=96, S=24)
        write_sequence(root, name, frames, labels)
    return root


def command(davis, out, *extra):
    return [
        "--davis",
        str(davis),
        "--checkpoint",
        "vit_tiny_patch16_224",
        "--random-init",
        "--size",
        "128",
        "--quiet",
        "--device",
        "cpu",
        "--out",
        str(out),
        *extra,
    ]


def files(folder):
    """Every file's bytes, propagation.json without its timings."""
    got = {}
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            got[str(path.relative_to(folder))] = path.read_bytes()
    record = json.loads(got.pop("propagation.json"))
    record.pop("timing")
    return got, record


@pytest.fixture(scope="module")
def single(davis, tmp_path_factory):
    out = tmp_path_factory.mktemp("single")
    r = CliRunner().invoke(propagate_cmd, command(davis, out))
    assert r.exit_code == 0, r.output
    return files(out)


def test_workers_write_the_same_files_as_one_process(davis, single, tmp_path):
    r = CliRunner().invoke(propagate_cmd, command(davis, tmp_path, "--workers", "2"))
    assert r.exit_code == 0, r.output
    got, record = files(tmp_path)
    assert got.keys() == single[0].keys() and len([k for k in got if k.endswith(".png")]) == 15
    assert got == single[0]  # predictions and both CSVs, byte for byte
    assert record == single[1]
    assert np.asarray(Image.open(tmp_path / "a" / "00004.png")).max() > 0  # the object is still predicted


def test_accelerate_launch_splits_sequences_and_merges(davis, single, tmp_path):
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--cpu", "--num_processes", "2", "--main_process_port",
           "29541", "-m", "siammae.propagate", *command(davis, tmp_path)]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got, record = files(tmp_path)
    assert got == single[0] and record == single[1]
    assert proc.stdout.count("wrote ") == 1  # the main process alone scores and writes the CSVs
    assert not list(tmp_path.glob(".timing-*"))


# ----------------------------------------------------------------------------- precision


def test_auto_precision_follows_the_hardware(monkeypatch):
    monkeypatch.setattr(cpu, "has", lambda p: p == "bf16")
    monkeypatch.setattr(cpu, "bf16_speedup", lambda: 2.2)  # AVX512-BF16 alone (AMX: 6-9)
    assert resolve_precision("auto", "cpu") == "bf16"
    assert "bf16 (auto: bf16 matmuls run 2.2x the fp32 rate" in reason("auto", "cpu")
    assert native_precisions("cpu") == ["fp32", "bf16"]  # what the benchmarks compare by default
    # native but slower than fp32 (a Xeon whose AMX the hypervisor hides): fp32, and the default says why
    monkeypatch.setattr(cpu, "bf16_speedup", lambda: 0.6)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert (
        reason("auto", "cpu")
        == "fp32 (auto: bf16 matmuls run 0.6x the fp32 rate on this CPU, under the 1.5x that pays for bf16)"
    )
    assert resolve_precision("bf16", "cpu") == "bf16"  # still there when asked for
    assert native_precisions("cpu") == ["fp32", "bf16"]
    monkeypatch.setattr(cpu, "has", lambda p: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    assert native_precisions("cpu") == ["fp32"]  # no bf16 run that would be refused
    assert "no AVX512-BF16 or AMX" in reason("auto", "cpu")  # the default says why it stays fp32
    with pytest.raises(PrecisionError, match="no native bf16.*fp32 or auto"):
        resolve_precision("bf16", "cpu")
    with pytest.raises(PrecisionError, match="choose one of"):
        resolve_precision("fp8", "cpu")


def test_the_cpu_bf16_speedup_is_measured_once_a_process():
    first = cpu.bf16_speedup()
    assert 0 < first < 100  # bf16 over fp32 matmul speed (emulated bf16 on CPUs without it: far below 1)
    assert cpu.bf16_speedup() == first  # the same answer for every caller in a process


def test_a_precision_the_cpu_lacks_is_one_line_before_any_work(davis, monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "has", lambda p: False)
    r = CliRunner().invoke(propagate_cmd, command(davis, tmp_path / "out", "--precision", "fp16"))
    assert r.exit_code == 1 and r.output.startswith("Error: precision fp16") and r.output.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_bf16_features_match_fp32_and_the_precision_is_recorded(davis, monkeypatch, tmp_path):
    monkeypatch.setattr(cpu, "has", lambda p: True)  # autocast runs on any CPU
    frames = [np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8)]
    encoder = tiny_vit(16)
    full = FeatureExtractor(encoder, PROTOCOLS["siammae"], "cpu")(frames)
    half = FeatureExtractor(encoder, PROTOCOLS["siammae"], "cpu", "bf16")(frames)
    assert half.dtype == torch.float32
    assert all(w.dtype == torch.float32 for w in encoder.parameters())  # bf16 runs on a copy of the encoder
    assert torch.nn.functional.cosine_similarity(full, half, dim=-1).min() > 0.99
    r = CliRunner().invoke(propagate_cmd, command(davis, tmp_path, "--precision", "bf16", "--no-eval"))
    assert r.exit_code == 0, r.output
    record = json.loads((tmp_path / "propagation.json").read_text())
    assert record["precision"] == "bf16"
    # written out only without AMX and where glibc keeps freed memory
    form = "written-out" if written_out_pays("cpu", "bf16", 1, 24 + 1, 3) and keep_freed_memory() else "fused"
    assert {t["attention"] for t in record["timing"]["per_sequence"].values()} == {form}
    assert "bf16" in r.output


def test_the_default_precision_keeps_jandf_within_0_005_of_fp32(monkeypatch, tmp_path):
    """The guard of the default: ``auto`` is bf16 wherever the CPU has it and its matmuls pay (forced
    here, so that the bf16 numbers are checked on every CPU), and J&F on a DAVIS-format set moves by at
    most 0.005 from fp32."""
    from siammae.cli import main

    monkeypatch.setattr(cpu, "has", lambda p: p == "bf16")
    monkeypatch.setattr(cpu, "bf16_speedup", lambda: 2.2)
    r = CliRunner().invoke(main, ["synth", "davis", str(tmp_path / "set"), "--sequences", "3", "--frames", "10",
                                  "--size", "96x160", "--objects", "2-3"])  # fmt: skip
    assert r.exit_code == 0, r.output
    scores, said = {}, {}
    for name, extra in (("default", []), ("fp32", ["--precision", "fp32"])):
        r = CliRunner().invoke(propagate_cmd, [*command(tmp_path / "set", tmp_path / name), "--no-diagnostics", *extra])
        assert r.exit_code == 0, r.output
        record = json.loads((tmp_path / name / "propagation.json").read_text())
        assert record["precision"] == ("bf16" if name == "default" else "fp32")
        scores[name] = float((tmp_path / name / "global_results-val.csv").read_text().splitlines()[1].split(",")[0])
        said[name] = r.output
    assert (
        "bf16 (auto: bf16 matmuls run 2.2x the fp32 rate on this CPU; --precision fp32 for exact reproduction)"
        in said["default"]
    )
    assert 0.2 < scores["fp32"] < 1 and abs(scores["default"] - scores["fp32"]) <= 0.005, scores
