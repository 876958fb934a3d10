"""The training input pipeline: shard lists, same crop/flip on every frame, repeated sampling, uint8
batches, rank/worker split, reproducible streams, and bad data skipped and counted without stalling."""

import multiprocessing
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import simplejpeg
import torch
from train_fixtures import corrupt_first_jpeg, truncate, write_shards

from siammae.config import load_config
from siammae.data import loader as data
from siammae.data import views as view_maker


def data_cfg(*overrides):
    return load_config(None, ["data.shuffle_buffer=8", "data.num_workers=0", *overrides]).data


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    folder = tmp_path_factory.mktemp("shards")
    write_shards(folder, num_shards=4, per_shard=6)
    return folder


# ----------------------------------------------------------------------------- shard lists


def test_resolve_folder_glob_brace_and_list(shards):
    every = [str(p) for p in sorted(shards.glob("*.tar"))]
    assert data.resolve_shards([str(shards)]) == every
    assert data.resolve_shards(str(shards / "*.tar")) == every
    assert data.resolve_shards([str(shards / "train-{000000..000001}.tar")]) == every[:2]
    assert data.resolve_shards([every[0], every[3]]) == [every[0], every[3]]
    assert data.resolve_shards(["pipe:cat x.tar"]) == ["pipe:cat x.tar"]


def test_resolve_missing_or_empty_is_a_clear_error(tmp_path, shards):
    with pytest.raises(data.DataError, match="data.shards is empty"):
        data.resolve_shards([])
    with pytest.raises(data.DataError, match="does not exist"):
        data.resolve_shards([str(tmp_path / "nowhere")])
    with pytest.raises(data.DataError, match="holds no .tar files"):
        data.resolve_shards([str(tmp_path)])
    with pytest.raises(data.DataError, match="matches no files"):
        data.resolve_shards([str(tmp_path / "*.tar")])
    with pytest.raises(data.DataError, match="1 of 5 shards .* missing"):
        data.resolve_shards([str(shards / "train-{000000..000004}.tar")])


def test_shards_are_split_by_rank_and_worker():
    urls = [f"s{i}.tar" for i in range(8)]
    parts = [data.shards_for(urls, r, 2, w, 2) for r in range(2) for w in range(2)]
    assert sorted(sum(parts, [])) == sorted(urls)  # disjoint and complete
    assert data.shards_for(urls[:1], 1, 2, 0, 4) == urls[:1]  # too few shards: everyone reads them all
    assert set(data.shards_for(urls[:3], 1, 2, 1, 2)) == {"s1.tar"}  # split by rank only


# ----------------------------------------------------------------------------- augmentation


def test_crop_boxes_cover_the_requested_scale():
    rng = random.Random(0)
    for _ in range(500):
        top, left, h, w = view_maker.random_resized_crop(rng, 256, 342, (0.5, 1.0), (3 / 4, 4 / 3))
        assert 0 <= top and top + h <= 256 and 0 <= left and left + w <= 342
        assert 0.5 * 0.97 <= h * w / (256 * 342) <= 1.0
        assert 3 / 4 * 0.95 <= w / h <= 4 / 3 * 1.05


def test_fast_crop_resize_matches_the_plain_computation():
    # Noise, the hardest case for any shortcut in the interpolation: every pixel differs from its neighbours.
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (40, 56, 3), dtype=np.uint8) for _ in range(2)]
    for box in [(5, 9, 30, 34), (0, 9, 40, 47), (3, 30, 20, 26)]:  # below AREA_FACTOR x the output: bilinear
        top, left, h, w = box
        for flip in (False, True):
            got = view_maker.crop_resize(frames, box, 24, flip)  # (T, 24, 24, 3) uint8
            assert got.shape == (2, 24, 24, 3) and got.dtype == np.uint8
            for t, frame in enumerate(frames):
                crop = torch.from_numpy(frame[top : top + h, left : left + w]).permute(2, 0, 1).float()[None]
                want = torch.nn.functional.interpolate(crop, size=(24, 24), mode="bilinear", align_corners=False)[0]
                want = want.flip(-1) if flip else want
                assert (torch.from_numpy(got[t]).permute(2, 0, 1).float() - want).abs().max() <= 1.0


def test_crop_resize_writes_into_the_slot_it_is_given():
    frames = [np.full((40, 56, 3), 7, np.uint8), np.full((40, 56, 3), 9, np.uint8)]
    batch = np.zeros((3, 2, 24, 24, 3), np.uint8)
    for box in [(5, 9, 30, 34), (0, 0, 40, 56)]:
        view_maker.crop_resize(frames, box, 24, True, out=batch[1])
        assert (batch[1, 0] == 7).all() and (batch[1, 1] == 9).all()
        assert not batch[0].any() and not batch[2].any()


def test_large_crops_are_area_averaged_not_aliased():
    # A one-pixel checkerboard shrunk 4x: every output pixel averages 16 source pixels (grey), where
    # bilinear sampling would pick a few and keep the pattern's extremes.
    board = ((np.indices((96, 96)).sum(0) % 2) * 255).astype(np.uint8)
    frame = np.repeat(board[..., None], 3, axis=-1)
    for flip in (False, True):
        got = view_maker.crop_resize([frame], (0, 0, 96, 96), 24, flip).astype(float)
        assert np.abs(got - 127.5).max() <= 1.0


def _sample(frames):
    return {f"f{t}.jpg": simplejpeg.encode_jpeg(f, quality=98, colorsubsampling="444") for t, f in enumerate(frames)}


def test_frame_buffers_decode_exactly_and_keep_a_sample_until_the_one_after_next():
    rng = np.random.default_rng(0)
    samples = [_sample([rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2)])
               for h, w in ((48, 64), (96, 128), (32, 40), (96, 128))]  # fmt: skip
    buffers = view_maker.FrameBuffers()
    decoded = []
    for sample in samples:
        jpegs = [sample["f0.jpg"], sample["f1.jpg"]]
        frames = buffers.decode(jpegs)
        fresh = [simplejpeg.decode_jpeg(j, colorspace="RGB") for j in jpegs]
        assert all(f.shape == g.shape and np.array_equal(f, g) for f, g in zip(frames, fresh))
        if decoded:  # the previous sample's frames are still intact
            assert all(np.array_equal(f, g) for f, g in zip(decoded[-1][0], decoded[-1][1]))
        decoded.append((frames, fresh))
    first = [frames[0] for frames, _ in decoded]
    assert np.shares_memory(first[2], first[0]) and np.shares_memory(first[3], first[1]), "memory is reused"
    assert not np.shares_memory(first[1], first[0])


def test_same_crop_and_flip_on_every_frame_and_independent_views():
    yy, xx = np.mgrid[0:96, 0:128]
    f0 = np.stack([xx * 2, yy * 2, (xx + yy)], -1).clip(0, 255).astype(np.uint8)  # asymmetric ramps
    f1 = 255 - f0  # any shared crop/flip keeps view1 == 255 - view0
    rng = random.Random(1)
    views = view_maker.make_sample(_sample([f0, f1]), rng, num_frames=2, repeats=8)
    assert len(views) == 8
    cut = [view_maker.crop_resize(v.frames, v.box, 48, v.flip).astype(int) for v in views]  # (T, 48, 48, 3)
    for v in cut:
        assert v.shape == (2, 48, 48, 3)
        assert np.abs(v[1] - (255 - v[0])).max() <= 6  # JPEG + resize rounding only
    flipped = [bool(v[0, :, 0, 0].mean() > v[0, :, -1, 0].mean()) for v in cut]
    assert flipped == [v.flip for v in views]
    assert any(flipped) and not all(flipped), "flip is drawn per view"
    assert len({v.box for v in views}) == 8, "every view gets its own crop"


def test_bad_sample_raises_in_make_sample():
    with pytest.raises(KeyError):
        good = _sample([np.zeros((16, 16, 3), np.uint8)])
        view_maker.make_sample(good, random.Random(0), num_frames=2, repeats=1)
    with pytest.raises(ValueError):
        view_maker.make_sample({"f0.jpg": b"junk", "f1.jpg": b"junk"}, random.Random(0), num_frames=2, repeats=1)


# ----------------------------------------------------------------------------- loader


def _collect(loader):
    return [(b["frames"].clone(), list(b["keys"]), b["skipped"]) for b in loader]


def test_loader_yields_uint8_batches_exactly_num_batches(shards):
    urls = data.resolve_shards([str(shards)])
    cfg = data_cfg("data.repeated_sampling=2")
    loader = data.make_loader(urls, cfg, size=32, batch_size=6, num_batches=7, seed=0, num_workers=2)
    got = _collect(loader)
    assert len(got) == 7
    frames, keys, skipped = got[0]
    assert frames.shape == (6, 2, 3, 32, 32) and frames.dtype == torch.uint8
    assert keys[0] == keys[1], "repeated sampling: consecutive views of one decoded pair"
    assert not torch.equal(frames[0], frames[1])
    assert sum(s for _, _, s in got) == 0


def test_stream_is_a_function_of_seed_and_rank(shards):
    urls = data.resolve_shards([str(shards)])
    cfg = data_cfg()

    def run(seed, rank=0, world=1):
        return _collect(
            data.make_loader(
                urls, cfg, size=32, batch_size=4, num_batches=3, seed=seed, rank=rank, world=world, num_workers=2
            )
        )

    a, b, c = run(5), run(5), run(6)
    assert all(torch.equal(x[0], y[0]) and x[1] == y[1] for x, y in zip(a, b))
    assert any(not torch.equal(x[0], y[0]) for x, y in zip(a, c))
    rank_shards = [{k.split("#")[0] for _, keys, _ in run(5, r, 2) for k in keys} for r in range(2)]
    assert rank_shards[0] and rank_shards[1] and not rank_shards[0] & rank_shards[1]


def test_truncated_shard_and_corrupt_jpeg_are_skipped_and_counted(tmp_path):
    paths = write_shards(tmp_path, num_shards=2, per_shard=6)
    truncate(paths[0])
    bad_key = corrupt_first_jpeg(paths[1])
    urls = data.resolve_shards([str(tmp_path)])
    start = time.perf_counter()
    got = _collect(
        data.make_loader(
            urls, data_cfg("data.repeated_sampling=1"), size=32, batch_size=4, num_batches=12, seed=0, num_workers=0
        )
    )
    elapsed = time.perf_counter() - start
    keys = {k for _, ks, _ in got for k in ks}
    assert not any(k.endswith("#" + bad_key) for k in keys)
    assert any("train-000000" in k for k in keys), "the readable head of the truncated shard is used"
    skipped = sum(s for _, _, s in got)
    assert skipped >= 2, skipped
    # wds.warn_and_continue would sleep 0.5 s per error
    assert elapsed < 0.25 * skipped + 2.0


def test_shards_without_the_frames_asked_for_fail_clearly(shards):
    cfg = load_config(None, ["data.num_frames=3", "model.mask_ratio=[0, 0, 0.95]", "data.shuffle_buffer=4"]).data
    loader = data.make_loader(
        data.resolve_shards([str(shards)]), cfg, size=32, batch_size=4, num_batches=2, seed=0, num_workers=0
    )
    with pytest.raises(data.DataError, match="in a row could not be used"):
        _collect(loader)


def test_an_error_raised_in_a_data_worker_is_one_line_and_stops_the_workers(shards):
    cfg = load_config(None, ["data.num_frames=3", "model.mask_ratio=[0, 0, 0.95]", "data.shuffle_buffer=4"]).data
    before = {p.pid for p in multiprocessing.active_children()}
    loader = data.make_loader(
        data.resolve_shards([str(shards)]), cfg, size=32, batch_size=4, num_batches=2, seed=0, num_workers=1
    )
    with pytest.raises(data.DataError) as caught:
        _collect(loader)
    message = str(caught.value)
    assert message.startswith("500 samples in a row could not be used") and "\n" not in message, message
    assert not [p for p in multiprocessing.active_children() if p.pid not in before], "the worker still runs"


def test_a_script_that_fails_with_a_loader_half_read_exits(shards):
    """Data workers ignore SIGTERM, which is how Python stops them at exit: an unfinished iterator
    (here held by the traceback) used to keep the process from ever exiting."""
    script = (
        "import sys\n"
        "from siammae.config import load_config\n"
        "from siammae.data.loader import make_loader, resolve_shards\n"
        "cfg = load_config(None, ['data.shuffle_buffer=4']).data\n"
        "urls = resolve_shards([sys.argv[1]])\n"
        "batches = iter(make_loader(urls, cfg, size=32, batch_size=4, num_batches=50, seed=0, num_workers=1))\n"
        "next(batches)\n"
        "raise RuntimeError('stopped with the loader half read')\n"
    )
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
    proc = subprocess.run(
        [sys.executable, "-c", script, str(shards)], env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1 and "stopped with the loader half read" in proc.stderr, proc.stderr[-2000:]


def test_view_shift_moves_the_first_frame_crop_only_and_stays_inside():
    yy, xx = np.mgrid[0:96, 0:128]
    f0 = np.stack([xx * 2, yy * 2, (xx + yy)], -1).clip(0, 255).astype(np.uint8)
    views = view_maker.make_sample(_sample([f0, f0]), random.Random(2), num_frames=2, repeats=64, view_shift=10)
    moves = set()
    for v in views:
        (top, left, h, w), (t1, l1, h1, w1) = v.box, v.first_box
        assert (h1, w1) == (h, w) and 0 <= t1 <= 96 - h and 0 <= l1 <= 128 - w
        assert abs(t1 - top) <= 10 and abs(l1 - left) <= 10
        moves.add((t1 - top, l1 - left))
    assert len(moves) > 10, "the shift is drawn per view"
    # The batch stage cuts frame 0 at its own box and the others at the shared one.
    batch = next(data.batches(len(views), 32)(iter(views)))["frames"].permute(0, 1, 3, 4, 2).numpy()
    for v, cut in zip(views, batch):
        assert np.array_equal(cut[0], view_maker.crop_resize(v.frames[:1], v.first_box, 32, v.flip)[0])
        assert np.array_equal(cut[1], view_maker.crop_resize(v.frames[1:], v.box, 32, v.flip)[0])
    unshifted = view_maker.make_sample(_sample([f0, f0]), random.Random(2), num_frames=2, repeats=4)
    assert all(v.first_box is None for v in unshifted)
