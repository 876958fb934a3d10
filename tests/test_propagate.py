"""Label propagation: geometry, the small-object rule, the queue, and two videos made here.

Encoders are random timm ViTs (no weights are downloaded). A shallow random ViT at patch 8 is a
random projection of each patch's pixels, enough to follow a distinctively textured object.
"""

import json
import shutil

import numpy as np
import pytest
import timm
import torch
import torch.nn.functional as F
from click.testing import CliRunner
from PIL import Image
from scipy import ndimage

from siammae.cli.propagate import propagate as propagate_cmd
from siammae.propagate.affinity import LabelPropagator, window_mask
from siammae.propagate.features import FeatureExtractor
from siammae.propagate.loop import first_frame_labels, soft_to_ids
from siammae.propagate.protocol import PROTOCOLS, Protocol, ProtocolError, resized_shape
from siammae.tasks.davis import propagate
from siammae.tasks.davis_files import DavisError, save_indexed_png
from siammae.tasks.jandf import evaluate


def write_sequence(root, name, frames, labels, first_only=False):
    img_dir = root / "JPEGImages" / "480p" / name
    ann_dir = root / "Annotations" / "480p" / name
    img_dir.mkdir(parents=True)
    ann_dir.mkdir(parents=True)
    for t, (f, lab) in enumerate(zip(frames, labels)):
        Image.fromarray(f).save(img_dir / f"{t:05d}.jpg", quality=95, subsampling=0)
        if t == 0 or not first_only:
            save_indexed_png(ann_dir / f"{t:05d}.png", lab)
    sets = root / "ImageSets" / "2017"
    sets.mkdir(parents=True, exist_ok=True)
    with open(sets / "val.txt", "a") as fh:
        fh.write(name + "\n")


def texture(rng, h, w, tint):
    t = ndimage.gaussian_filter(rng.random((h, w, 3)), (1.5, 1.5, 0))
    t = (t - t.min()) / (t.max() - t.min())
    return (t * np.array(tint) * 255).astype(np.uint8)


def tiny_vit(patch, depth=2, seed=0):
    torch.manual_seed(seed)
    return timm.create_model(
        "vit_tiny_patch16_224", num_classes=0, patch_size=patch, depth=depth, dynamic_img_size=True
    ).eval()


NATIVE = dict(short_side=0, multiple=16)  # the small test frames at their own size


# ----------------------------------------------------------------------------- geometry


def test_resized_shape_rules():
    assert resized_shape(480, 854, PROTOCOLS["siammae"], 16) == (480, 848)
    assert resized_shape(480, 854, PROTOCOLS["siammae"], 8) == (480, 856)
    assert resized_shape(480, 854, PROTOCOLS["dino"], 16) == (480, 832)  # floored to 64
    assert resized_shape(480, 910, PROTOCOLS["crw"], 8) == (480, 912)
    assert resized_shape(854, 480, PROTOCOLS["siammae"], 16) == (848, 480)  # portrait
    assert resized_shape(1080, 1920, PROTOCOLS["siammae"], 16) == (480, 848)
    # VIP as CropMAE's loader: long side 880, the short side truncated then floored to a multiple of 64
    assert resized_shape(720, 1280, PROTOCOLS["siammae-vip"], 16) == (448, 880)
    assert resized_shape(1280, 720, PROTOCOLS["siammae-vip"], 8) == (880, 448)  # portrait
    assert resized_shape(480, 854, PROTOCOLS["siammae-vip"], 16) == (448, 880)  # 494.6 -> 494 -> 448


def test_the_vip_preset_resizes_without_antialiasing_as_cv2_resize():
    frame = np.random.default_rng(0).integers(0, 256, (720, 1280, 3), dtype=np.uint8)
    x = torch.tensor(frame).permute(2, 0, 1)[None].float() / 255
    plain = F.interpolate(x, size=(448, 880), mode="bilinear", align_corners=False, antialias=False)
    for name, antialias in (("siammae-vip", False), ("siammae", True)):
        extractor = FeatureExtractor(tiny_vit(16), PROTOCOLS[name], torch.device("cpu"), "fp32")
        resized = extractor._resized(frame, (448, 880))
        assert torch.equal(resized, plain) != antialias


def test_window_shapes():
    disk = window_mask(9, 9, 3, "disk").view(9, 9, 9, 9)
    square = window_mask(9, 9, 3, "square").view(9, 9, 9, 9)
    c = (4, 4)
    assert disk[c][4, 7] == 0 and disk[c][4, 6] == 1  # strict: distance 3 is outside a radius-3 disk
    assert disk[c][6, 6] == 1 and disk[c][7, 6] == 0  # 2^2 + 2^2 < 9 < 3^2 + 2^2
    assert square[c][7, 7] == 1 and square[c][8, 4] == 0
    assert window_mask(4, 4, 0, "disk") is None


def test_small_objects_keep_a_token():
    labels = np.zeros((64, 64), np.uint8)
    labels[10:40, 10:40] = 1
    labels[50:53, 50:53] = 2  # 9 px: 14% of an 8x8 token
    keep = first_frame_labels(labels, (8, 8), PROTOCOLS["siammae"])
    assert keep.shape == (3, 64)
    assert torch.allclose(keep.sum(0), torch.ones(64))
    assert (keep.argmax(0) == 2).sum() == 1
    lost = first_frame_labels(labels, (8, 8), PROTOCOLS["siammae"].replace(keep_small=False))
    assert (lost.argmax(0) == 2).sum() == 0
    nearest = first_frame_labels(labels, (8, 8), PROTOCOLS["dino"])
    assert set(nearest.unique().tolist()) <= {0.0, 1.0}
    ids = soft_to_ids(keep, (8, 8), (64, 64), minmax=False)
    assert (ids == 2).any() and ids.shape == (64, 64)
    # Two small objects in one token: each still gets a token of its own.
    labels[50:52, 50:52] = 3
    both = first_frame_labels(labels, (8, 8), PROTOCOLS["siammae"]).argmax(0)
    assert (both == 2).sum() == 1 and (both == 3).sum() == 1


# ----------------------------------------------------------------------------- the propagator


def test_topk_is_joint_over_frames_and_queue_is_bounded():
    torch.manual_seed(0)
    N, D = 4, 8
    first = torch.nn.functional.normalize(torch.randn(N, D), dim=-1)
    labels = torch.eye(2)[[0, 0, 1, 1]].T  # (L=2, N)
    p = Protocol("t", topk=1, queue=2, radius=0, window="disk", window_on_first=False, temperature=0.1)
    prop = LabelPropagator(p, (2, 2), first, labels)
    # Target token 0 equals first-frame token 2: it takes token 2's label.
    target = first[[2, 1, 0, 3]]
    out = prop.step(target)
    assert torch.allclose(out, labels[:, [2, 1, 0, 3]])
    for _ in range(5):
        prop.step(target)
    assert len(prop.context()) == 1 + 2  # first frame + queue of 2
    crw = Protocol("c", topk=3, queue=4, radius=0, window="disk", window_on_first=False, temperature=1, pad_queue=True)
    assert len(LabelPropagator(crw, (2, 2), first, labels).context()) == 5


def test_protocol_validation_and_replace():
    with pytest.raises(ProtocolError, match="window"):
        PROTOCOLS["siammae"].replace(window="circle")
    assert PROTOCOLS["siammae"].replace(topk=7).name == "siammae"
    custom = PROTOCOLS["siammae"].replace(topk=3, temperature=None)
    assert custom.name == "siammae+custom" and custom.topk == 3 and custom.temperature == 0.7


# ----------------------------------------------------------------------------- videos


def test_static_sequence_returns_the_quantised_first_labels(tmp_path):
    """Identical frames: each token's best match is itself, so with top-1 the output is exactly the
    first mask quantised to the token grid, on every frame; PNGs are "P" at the ground-truth size."""
    rng = np.random.default_rng(0)
    H, W = 64, 96
    frame = texture(rng, H, W, (1, 1, 1))
    labels = np.zeros((H, W), np.uint8)
    yy, xx = np.mgrid[:H, :W]
    labels[(yy - 30) ** 2 + (xx - 30) ** 2 < 18**2] = 1
    labels[10:50, 60:90] = 2
    labels[58:61, 5:8] = 3  # survives only through keep_small
    write_sequence(tmp_path / "davis", "static", [frame] * 5, [labels] * 5)
    protocol = PROTOCOLS["siammae"].replace(topk=1, **NATIVE)
    record = propagate(tiny_vit(16), tmp_path / "davis", tmp_path / "out", protocol, progress=False)
    grid = (H // 16, W // 16)
    expected = soft_to_ids(first_frame_labels(labels, grid, protocol), grid, (H, W), False)
    for t in range(5):
        im = Image.open(tmp_path / "out" / "static" / f"{t:05d}.png")
        assert im.mode == "P" and im.size == (W, H)
        assert (np.asarray(im) == (labels if t == 0 else expected)).all()
    assert (expected == 3).any()
    saved = json.loads((tmp_path / "out" / "propagation.json").read_text())
    assert saved["protocol"]["topk"] == 1 and saved == json.loads(json.dumps(record))


def moving_object_video(rng, T=10, H=96, W=160, S=32):
    bg = texture(rng, H + 64, W + 64, (0.4, 1.0, 0.5))
    yy, xx = np.mgrid[:S, :S]
    checks = (xx // 4 + yy // 4) % 2
    obj = np.stack([np.where(checks, 230, 120), np.zeros_like(checks), np.where(checks, 40, 200)], -1)
    frames, labels = [], []
    for t in range(T):
        f = bg[2 * t : 2 * t + H, t : t + W].copy()  # the background pans too
        lab = np.zeros((H, W), np.uint8)
        y0, x0 = 20 + 3 * t, 20 + 7 * t
        f[y0 : y0 + S, x0 : x0 + S] = obj
        lab[y0 : y0 + S, x0 : x0 + S] = 1
        frames.append(f)
        labels.append(lab)
    return frames, labels


def test_translating_textured_object_is_followed(tmp_path):
    frames, labels = moving_object_video(np.random.default_rng(0))
    write_sequence(tmp_path / "davis", "move", frames, labels)
    protocol = PROTOCOLS["siammae"].replace(**NATIVE)
    propagate(tiny_vit(8), tmp_path / "davis", tmp_path / "out", protocol, overlay=3, progress=False)
    tracked = evaluate(tmp_path / "davis", tmp_path / "out").global_row()
    # Baseline: copying the first mask to every frame.
    for t in range(len(frames)):
        save_indexed_png(tmp_path / "out" / "move" / f"{t:05d}.png", labels[0])
    static = evaluate(tmp_path / "davis", tmp_path / "out").global_row()
    assert tracked["J&F-Mean"] > 0.75, tracked
    assert tracked["J&F-Mean"] > static["J&F-Mean"] + 0.4
    strip = Image.open(tmp_path / "out" / "overlays" / "move.png")
    assert strip.height == 240 and strip.width > 3 * 240


# ----------------------------------------------------------------------------- command and errors


def test_propagate_command_end_to_end(tmp_path):
    frames, labels = moving_object_video(np.random.default_rng(1), T=5, H=64, W=96, S=24)
    write_sequence(tmp_path / "davis", "a", frames, labels)
    write_sequence(tmp_path / "davis", "b", frames[::-1], labels[::-1])
    args = ["--davis", str(tmp_path / "davis"), "--checkpoint", "vit_tiny_patch16_224", "--random-init", "--out",
            str(tmp_path / "out"), "--size", "0", "--sequences", "b", "--topk", "3", "--quiet", "--device", "cpu",
            "--overlay"]  # fmt: skip
    r = CliRunner().invoke(propagate_cmd, args)
    assert r.exit_code == 0, r.output
    assert "J&F-Mean" in r.output
    assert not (tmp_path / "out" / "a").exists()
    saved = json.loads((tmp_path / "out" / "propagation.json").read_text())
    assert saved["protocol"]["name"] == "siammae+custom" and saved["protocol"]["topk"] == 3
    assert saved["encoder"]["timm_model"] == "vit_tiny_patch16_224" and saved["encoder"]["weights"] is None
    assert saved["sequences"] == ["b"]
    assert (tmp_path / "out" / "overlays" / "b.png").is_file()
    diag = saved["diagnostics"]
    assert "features: mean token cosine in a frame" in r.output and "copying frame 0 in place" in r.output
    assert -1 <= diag["mean_cosine"] <= 1 and 1 <= diag["effective_rank"] <= 192
    assert 0 <= diag["position_share"] <= 1 and 0 <= diag["copy_jf"] <= 1
    rows = (tmp_path / "out" / "per-sequence_results-val.csv").read_text().splitlines()
    assert rows[1].startswith("b_1,")


def test_random_weights_need_the_flag(tmp_path):
    frames, labels = moving_object_video(np.random.default_rng(2), T=3, H=48, W=64, S=8)
    write_sequence(tmp_path / "davis", "a", frames, labels)
    r = CliRunner().invoke(
        propagate_cmd,
        ["--davis", str(tmp_path / "davis"), "--checkpoint", "vit_tiny_patch16_224", "--out", str(tmp_path / "out")],
    )
    assert r.exit_code == 1 and "--random-init" in r.output
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("missing", ["ImageSets", "Annotations", "JPEGImages", "first_annotation", "sequence"])
def test_missing_davis_parts_are_refused_before_work(tmp_path, missing):
    frames, labels = moving_object_video(np.random.default_rng(2), T=3, H=48, W=64, S=8)
    write_sequence(tmp_path / "davis", "a", frames, labels)
    if missing == "first_annotation":
        (tmp_path / "davis" / "Annotations" / "480p" / "a" / "00000.png").unlink()
    elif missing == "sequence":
        shutil.rmtree(tmp_path / "davis" / "JPEGImages" / "480p" / "a")
    else:
        shutil.rmtree(tmp_path / "davis" / missing)
    with pytest.raises(DavisError, match="not found|missing"):
        propagate(tiny_vit(16, depth=1), tmp_path / "davis", tmp_path / "out", PROTOCOLS["siammae"], progress=False)
    assert not (tmp_path / "out" / "a").exists()
    r = CliRunner().invoke(
        propagate_cmd,
        [
            "--davis",
            str(tmp_path / "davis"),
            "--checkpoint",
            "vit_tiny_patch16_224",
            "--random-init",
            "--out",
            str(tmp_path / "o"),
        ],
    )
    assert r.exit_code == 1 and "Error:" in r.output


def test_first_annotation_only_propagates_with_no_eval(tmp_path):
    frames, labels = moving_object_video(np.random.default_rng(3), T=4, H=48, W=80, S=8)
    write_sequence(tmp_path / "davis", "a", frames, labels, first_only=True)  # like test-dev
    args = ["--davis", str(tmp_path / "davis"), "--checkpoint", "vit_tiny_patch16_224", "--random-init", "--out",
            str(tmp_path / "out"), "--size", "0", "--quiet", "--device", "cpu"]  # fmt: skip
    assert CliRunner().invoke(propagate_cmd, args + ["--no-eval"]).exit_code == 0
    assert len(list((tmp_path / "out" / "a").glob("*.png"))) == 4
    r = CliRunner().invoke(propagate_cmd, args)
    assert r.exit_code == 1 and "annotation" in r.output


def test_soft_to_ids_is_the_argmax_of_the_upsampled_labels_ties_to_the_lowest():
    torch.manual_seed(0)
    soft = torch.rand(4, 6 * 10)
    soft[:, :10] = 0.5  # a row of exact ties between all labels
    up = torch.nn.functional.interpolate(soft.view(1, 4, 6, 10), size=(48, 80), mode="bilinear", align_corners=False)[0]
    expected = np.argmax(up.numpy(), axis=0)  # numpy: the first of equal maxima
    ids = soft_to_ids(soft, (6, 10), (48, 80), minmax=False)
    assert ids.dtype == np.uint8 and (ids == expected).all()
    assert (ids[:4] == 0).all()  # the tied rows go to label 0


def test_layer_reads_out_an_earlier_block_through_the_final_norm():
    from siammae.propagate.features import FeatureExtractor, block_tokens

    torch.manual_seed(0)
    vit = timm.create_model("vit_tiny_patch16_224", num_classes=0, patch_size=8, img_size=64, depth=4,
                            dynamic_img_size=True).eval()  # fmt: skip
    x = torch.randn(2, 3, 48, 80)
    with torch.no_grad():
        assert torch.allclose(block_tokens(vit, x, 4), vit.forward_features(x), atol=1e-6)  # the last = default
        manual = vit.norm(vit.blocks[:2](vit._pos_embed(vit.patch_embed(x))))
        assert torch.allclose(block_tokens(vit, x, 2), manual, atol=1e-6)
    with pytest.raises(ProtocolError, match="4 blocks"):
        block_tokens(vit, x, 5)
    with pytest.raises(ProtocolError, match="layer must be >= 0"):
        PROTOCOLS["siammae"].replace(layer=-1)
    frame = [np.random.default_rng(0).integers(0, 256, (48, 80, 3), dtype=np.uint8)]
    protocol = PROTOCOLS["siammae"].replace(short_side=48)

    def tokens(layer):
        return FeatureExtractor(vit, protocol.replace(layer=layer), "cpu")(frame)

    assert tokens(2).shape == (1, 60, 192) and torch.equal(tokens(4), tokens(0))
    assert not torch.allclose(tokens(2), tokens(0), atol=1e-3)
