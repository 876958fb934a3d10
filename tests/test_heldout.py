"""tools/heldout.py, the held-out protocol, at toy scale: folds that never evaluate on a training video,
leads computed from what was scored, caching, and a peer model trained by our loop.

The peer here is a stand-in checkout written by the test (the real one, CropMAE, is fetched by users):
a ``models/SiamMAE.py`` whose ``SiameseMAE`` has MAE's layout, so what is checked is our side of the
contract: their encoder's weights land in the timm ViT we evaluate, the encoder lr factor reaches their
encoder, and our trainer trains them.
"""

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from siammae.synth import scenes as synth

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tools"))

import heldout  # noqa: E402

pytest.importorskip("decord")

TOY = [
    "--steps",
    "4",
    "--eval-every",
    "2",
    "--batch",
    "4",
    "--train-seeds",
    "0",
    "--set-seeds",
    "0",
    "--sequences",
    "1",
    "--frames",
    "5",
    "--size",
    "64x112",
    "--eval-size",
    "48",
    "--per-video",
    "6",
    "--final-variants",
    "colour",
    "--parallel",
    "2",
]


@pytest.fixture(scope="module")
def videos(tmp_path_factory):
    folder = tmp_path_factory.mktemp("videos")
    synth.synth_videos(folder, num_videos=3, frames=16, size=(64, 96), seed=7)
    return folder


def test_folds_hold_each_video_out_once_and_never_train_on_it():
    videos = [f"v{i}" for i in range(7)]
    loo = heldout.make_folds(videos[:3], max_folds=5)
    assert [h for _, h in loo] == [["v0"], ["v1"], ["v2"]]
    folds = heldout.make_folds(videos, max_folds=3)
    assert sorted(v for _, h in folds for v in h) == videos
    assert all(not set(t) & set(h) and set(t) | set(h) == set(videos) for t, h in folds)
    with pytest.raises(SystemExit, match="at least 2 videos"):
        heldout.make_folds(["v0"], 5)
    with pytest.raises(SystemExit, match="--folds 0 runs the first fold alone"):
        heldout.make_folds(videos, 1)  # one fold would train on nothing


def test_protocol_end_to_end_leads_from_the_scores_and_cached(videos, tmp_path, capsys):
    out = tmp_path / "ho"
    summary = heldout.main([str(videos), "--out", str(out), *TOY])
    folds = json.loads((out / "folds.json").read_text())
    assert len(folds) == 3
    for fold in folds:
        assert not set(fold["train"]) & set(fold["heldout"])
        composite = json.loads((Path(fold["sets"]["default-s0"]) / "composite.json").read_text())
        used = {Path(s["background"]).name for s in composite["sequences"].values()}
        used |= {Path(o["video"]).name for s in composite["sequences"].values() for o in s["objects"]}
        assert used == set(fold["heldout"])  # sets are made of held-out video only
        assert fold["sets"]["hard-s0"] == fold["sets"]["default-s0"]  # one held-out video: the same set
    run = out / "runs" / "tiny" / "fold1" / "seed0"
    scores = json.loads((run / "scores-siammae-48.json").read_text())
    assert set(scores) == {"0", "2", "4"} and set(scores["4"]) == {"default-s0", "hard-s0", "colour-s0"}
    assert sorted(p.name for p in (run / "encoders").iterdir()) == [
        "step_0.safetensors",
        "step_2.safetensors",
        "step_4.safetensors",
    ]
    random = json.loads(next((out / "runs").glob("_random-*/fold1/seed0/scores-siammae-48.json")).read_text())
    lead = summary["folds"][1]["variants"]["default"]["lead"]["mean"]
    assert lead == pytest.approx(100 * (scores["4"]["default-s0"]["jf"] - random["random"]["default-s0"]["jf"]))
    assert "mean_cosine" in scores["0"]["default-s0"]
    report = (out / "report-tiny-siammae-48.md").read_text()
    assert "| mean of folds (worst fold) |" in report and (out / "curves-tiny-siammae-48.png").is_file()
    # Everything is cached: a second run trains and scores nothing.
    capsys.readouterr()
    heldout.main([str(videos), "--out", str(out), *TOY])
    assert "6 of 6 jobs already done; running 0" in capsys.readouterr().out
    # One fold alone keeps its number, its runs and its lead.
    one = heldout.main([str(videos), "--out", str(out), *TOY, "--folds", "1", "--report-only"])
    assert [f["fold"] for f in one["folds"]] == [1]
    assert one["folds"][0]["variants"]["default"]["lead"]["mean"] == pytest.approx(lead)
    # Folds cached from another split are refused, not reused (2 folds of 3 videos hold out v0 and v1 first).
    with pytest.raises(SystemExit, match="use a new --out"):
        heldout.main([str(videos), "--out", str(out), *TOY, "--max-folds", "2", "--report-only"])


PEER = textwrap.dedent('''
    """A stand-in for CropMAE's models/SiamMAE.py: MAE's encoder layout, a linear decoder."""
    import torch, torch.nn as nn
    from timm.models.vision_transformer import Block, PatchEmbed

    class SiameseMAE(nn.Module):
        def __init__(self, img_size, patch_size, embed_dim, depth, num_heads, decoder_embed_dim, decoder_depth,
                     decoder_num_heads, mlp_ratio, norm_layer, norm_pix_loss):
            super().__init__()
            self.patch_embed = PatchEmbed(img_size, patch_size, 3, embed_dim)
            n = self.patch_embed.num_patches
            self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
            self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, embed_dim), requires_grad=False)
            self.blocks = nn.ModuleList([Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=norm_layer)
                                         for _ in range(depth)])
            self.norm = norm_layer(embed_dim)
            self.decoder_norm = norm_layer(embed_dim)
            self.decoder_pred = nn.Linear(embed_dim, patch_size ** 2 * 3)

        def forward(self, imgs, mask_ratio):
            f1, f2 = imgs[:, 0], imgs[:, 1]
            x = self.patch_embed(f1) + self.pos_embed[:, 1:]
            for blk in self.blocks:
                x = blk(x)
            pred = self.decoder_pred(self.decoder_norm(self.norm(x)))
            p = self.patch_embed.patch_size[0]
            target = f2.unfold(2, p, p).unfold(3, p, p).permute(0, 2, 3, 4, 5, 1).reshape(pred.shape)
            mask = torch.ones(pred.shape[:2])
            return ((pred - target) ** 2).mean(), [pred], [mask]
''')


def test_peer_encoder_loads_into_our_vit_learns_at_the_encoder_rate_and_trains(videos, tmp_path):
    from peer_cropmae import PeerError, builder

    from siammae.config import load_config
    from siammae.encoders import EncoderInfo, create_vit
    from siammae.train.schedule import param_groups
    from siammae.weights import load_strict

    with pytest.raises(PeerError, match="not a CropMAE checkout"):
        builder(tmp_path)
    checkout = tmp_path / "CropMAE"
    (checkout / "models").mkdir(parents=True)
    (checkout / "models" / "SiamMAE.py").write_text(PEER)
    cfg = load_config("tiny")
    model = builder(checkout)(cfg)
    vit = create_vit(EncoderInfo("vit_tiny_patch16_224", 8, 64, "peer"), dynamic=True)
    load_strict(vit, model.encoder_state_dict(), "peer encoder")  # raises on any missing or extra key
    scales = {id(p): g["lr_scale"] for g in param_groups(model, 0.05, 0.3) for p in g["params"]}
    assert scales[id(model.net.blocks[0].attn.qkv.weight)] == 0.3
    assert scales[id(model.net.decoder_pred.weight)] == 1.0
    out = model(torch.randn(2, 2, 3, 64, 64))
    assert out.loss.ndim == 0 and out.pred.shape == (2, 64, 192)
    # Our trainer, our loader, their model: a real (short) run through the tool.
    proto = tmp_path / "ho"
    summary = heldout.main(
        [str(videos), "--out", str(proto), "--name", "peer", "--peer", str(checkout), "--max-folds", "2", *TOY]
    )
    assert all("default" in f["variants"] for f in summary["folds"])
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "import safetensors.torch as s, sys; print(len(s.load_file(sys.argv[1])))",
            str(proto / "runs" / "peer" / "fold0" / "seed0" / "encoders" / "step_4.safetensors"),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    assert int(done.stdout) == len(vit.state_dict())


def test_propagation_knobs_are_scored_apart():
    args = heldout.parse_args(["videos", "--out", "o", "--knob", "topk=10", "--knob", "temperature=0.5"])
    assert args.knobs == {"topk": 10, "temperature": 0.5}
    assert heldout.scores_file(128, "siammae", args.knobs) == "scores-siammae-128-temperature0.5-topk10.json"
    assert heldout.scores_file(128, "siammae", {}) == "scores-siammae-128.json"  # what earlier runs wrote


def test_compare_plots_settings_side_by_side_and_names_a_missing_report(tmp_path):
    curve = {str(s): {"lead": {"mean": s / 100, "sd": 0.0}} for s in (0, 300, 600)}
    fold = dict(fold=0, heldout=["a.mp4"], curve=curve)
    for name in ("one", "two"):
        (tmp_path / f"report-{name}-siammae-128.json").write_text(json.dumps({"folds": [fold, dict(fold, fold=1)]}))
    heldout.main(["--out", str(tmp_path), "--compare", "one,two"])
    assert (tmp_path / "compare-one-two-siammae-128.png").stat().st_size > 0
    with pytest.raises(SystemExit, match="report-three-siammae-128.json not found"):
        heldout.main(["--out", str(tmp_path), "--compare", "one,three"])


def test_runs_shard_frame_runs_and_draw_the_pairs_in_the_gap(tmp_path, capsys):
    args = heldout.parse_args([str(tmp_path), "--out", str(tmp_path), "--runs", "8", "--gap", "1-4"])
    assert args.runs == 8 and args.set[-1] == "data.pair_gap=[1,4]"
    with pytest.raises(SystemExit):
        heldout.parse_args([str(tmp_path), "--out", str(tmp_path), "--runs", "4", "--gap", "4-16"])
    assert "--runs 4 spans 3 frames" in capsys.readouterr().err
