"""The machine's limits that the benchmarks report against (siammae.limits), and the DINO reference
that tools/bench_propagate.py times beside siammae: its script runs unchanged on a CPU."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch
from test_propagate import tiny_vit

from siammae.limits import Limit, count_flops, count_softmax, matmul_peak, softmax_rate
from siammae.tasks.davis_files import PALETTE

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import bench_propagate  # noqa: E402


def test_flops_are_counted_with_attention_written_out():
    linear = torch.nn.Linear(64, 32)
    x = torch.randn(10, 64)
    assert count_flops(lambda: linear(x)) == 2 * 10 * 64 * 32

    encoder = tiny_vit(16, depth=2)  # 192 wide, 3 heads
    frame = torch.randn(1, 3, 64, 96)  # 24 patches + [CLS] = 25 tokens
    fused = count_flops(lambda: encoder.forward_features(frame))
    counted = count_flops(lambda: encoder.forward_features(frame), encoder)
    n, d = 25, 192
    attention = 2 * 2 * 2 * n * n * d  # two blocks, q k^T and p v, each 2 n^2 d
    assert counted - fused == attention  # the fused kernel is invisible to the counter; written out it is not
    assert all(block.attn.fused_attn for block in encoder.blocks)  # the encoder's own setting is back


def test_softmax_elements_are_counted_in_inference_and_in_training():
    encoder = tiny_vit(16, depth=2)  # 3 heads
    frame = torch.randn(1, 3, 64, 96)  # 25 tokens
    per_pass = 2 * 3 * 25 * 25  # two blocks, a (heads, N, N) score matrix each
    assert count_softmax(lambda: encoder.forward_features(frame)) == 0  # fused: out of sight
    with torch.no_grad():
        assert count_softmax(lambda: encoder.forward_features(frame), encoder) == per_pass
    assert count_softmax(lambda: encoder.forward_features(frame).sum().backward(), encoder) == 2 * per_pass
    assert all(block.attn.fused_attn for block in encoder.blocks)


def test_peak_and_fraction():
    peak = matmul_peak("fp32", sizes=(256,), repeats=2)
    assert 1e8 < peak < 1e14  # FLOP/s: somewhere between a slow core and a data centre
    limit = Limit(flops=2e9, peak=1e11, precision="fp32", threads=2)
    assert limit.best_seconds == pytest.approx(0.02)
    assert limit.fraction(0.04) == pytest.approx(0.5)
    assert "100 GFLOP/s fp32" in limit.describe() and "2.00 GFLOP a frame" in limit.describe()
    assert 1e6 < softmax_rate("fp32", rows=8, cols=256, repeats=1) < 1e13  # elements/s
    limit = Limit(flops=2e9, peak=1e11, precision="bf16", threads=2, softmax_elements=3e8, softmax_rate=1e10)
    assert limit.best_seconds_with_softmax == pytest.approx(0.05)  # 20 ms of matmuls + 30 ms of softmax
    assert limit.fraction(0.1) == pytest.approx(0.2) and limit.fraction_with_softmax(0.1) == pytest.approx(0.5)
    assert "300 M elements at 10.00 G/s" in limit.describe()


def test_dinos_script_runs_unchanged_on_the_cpu(tmp_path):
    """The shim answers what DINO's script needs from a GPU machine with network: .cuda() on tensors and
    modules, and the palette it downloads (the DAVIS palette, as lines of three ints)."""
    checkout = tmp_path / "dino"
    checkout.mkdir()
    (checkout / "helper.py").write_text("VALUE = 7\n")  # the script imports its checkout's modules
    (checkout / "eval_video_segmentation.py").write_text(
        "import sys, torch\n"
        "from urllib.request import urlopen\n"
        "import helper\n"
        "x = torch.ones(2).cuda(non_blocking=True)\n"
        "m = torch.nn.Linear(2, 2).cuda()\n"
        "rows = [[int(i) for i in line.decode('utf-8').split('\\n')[0].split(' ')]\n"
        "        for line in urlopen('https://example.invalid/palette.txt')]\n"
        "if __name__ == '__main__':\n"
        "    out = sys.argv[sys.argv.index('--output_dir') + 1]\n"
        "    open(out, 'w').write(f'{helper.VALUE} {x.device} {len(rows)} {rows[1]} {sys.argv[1:3]}')\n"
    )
    cmd = bench_propagate.dino_reference(checkout, "DAVIS", tmp_path / "out.txt", "w.pth", "vit_small_patch16_224")
    subprocess.run(cmd, check=True, timeout=120)
    written = (tmp_path / "out.txt").read_text()
    assert written == f"7 cpu 256 {PALETTE[3:6]} ['--data_path', 'DAVIS']"
    with pytest.raises(SystemExit, match="not a checkout of DINO"):
        bench_propagate.dino_reference(tmp_path, "DAVIS", tmp_path / "o", "w.pth", "vit_small_patch16_224")
