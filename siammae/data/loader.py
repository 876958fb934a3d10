"""The training input pipeline: WebDataset shards of frame pairs -> uint8 batches (B, T, 3, H, W).

One declarative chain (:func:`make_dataset`) around one named step (:func:`make_sample`):

    resampled shards, split by rank and worker   (every rank runs the same number of steps, no
                                                  end-of-epoch hang: the stream never ends and the
                                                  loader, :class:`EpochLoader`, counts the batches)
    -> tar members grouped into samples            (read errors and truncated shards: skipped, counted)
    -> shuffle buffer of compressed samples         (cheap: bytes, not pixels)
    -> make_sample (:mod:`siammae.data.views`): decode JPEGs (simplejpeg) and draw ``repeated_sampling``
       views per decoded sample (MAE-ST, SiamMAE Tab. 4a), each one random-resized crop box and one
       flip for every frame (or a pair drawn from a run of frames, or CropMAE's two crops of a frame)
    -> batches: each view cropped, resized and flipped (OpenCV) straight into its uint8 batch
                                                    (normalisation happens on the device)

Shard format (written by ``siammae shard``): per sample ``__key__``, ``f0.jpg`` .. ``f{K-1}.jpg`` in time
order and a ``json`` record. Only ``f0.jpg`` .. ``f{T-1}.jpg`` are read (T = ``data.num_frames``).

Randomness is a pure function of (seed, rank, worker): the shard draws, the shuffle buffer and the crops
of a data segment replay exactly when the trainer restarts that segment with the same seed, which is
what makes a resumed run take the same steps as an uninterrupted one.

The loader (:class:`EpochLoader`) is *not* handed to ``accelerator.prepare`` (it would re-shard the already
rank-split stream); the trainer moves batches to the device itself.
"""

from __future__ import annotations

import atexit
import functools
import glob
import json
import os
import random
import signal
import sys
import weakref
from pathlib import Path
from typing import List, Sequence

import cv2
import numpy as np
import torch
import webdataset as wds

from siammae.data.views import FrameBuffers, crop_resize, draw_pair, make_sample, to_chw
from siammae.errors import SiammaeError

# A worker that reads this many samples in a row without producing one view stops with an error: a
# shard list of unreadable files or shards without the frames asked for would otherwise spin forever.
MAX_FAILURES_IN_A_ROW = 500


class DataError(SiammaeError):
    """A shard specification that gives no usable shards; the message is one line for the user."""


# ----------------------------------------------------------------------------- shard lists


def _is_remote(spec: str) -> bool:
    return "://" in spec or spec.startswith("pipe:")


def resolve_shards(specs: Sequence[str] | str) -> List[str]:
    """``data.shards`` -> a list of shard URLs.

    Each entry may be a folder (every ``*.tar`` directly in it), a glob (``shards/*.tar``), a brace
    pattern (``shards/train-{000000..000099}.tar``), a file, or a remote URL (``pipe:``, ``s3://``,
    kept as is). Missing files and an empty result raise :class:`DataError` before any model is built.
    """
    specs = [specs] if isinstance(specs, str) else list(specs)
    if not specs:
        raise DataError("data.shards is empty: give a folder of .tar shards (data.shards=PATH)")
    urls: List[str] = []
    for spec in specs:
        spec = os.path.expanduser(str(spec))
        if _is_remote(spec):
            urls.extend(wds.shardlists.expand_urls(spec))
        elif os.path.isdir(spec):
            found = sorted(glob.glob(os.path.join(glob.escape(spec), "*.tar")))
            if not found:
                raise DataError(f"data.shards: folder '{spec}' holds no .tar files")
            urls.extend(found)
        elif any(c in spec for c in "*?["):
            found = sorted(p for p in glob.glob(spec) if os.path.isfile(p))
            if not found:
                raise DataError(f"data.shards: pattern '{spec}' matches no files")
            urls.extend(found)
        elif "{" in spec:
            expanded = wds.shardlists.expand_urls(spec)
            missing = [p for p in expanded if not os.path.isfile(p)]
            if missing:
                raise DataError(
                    f"data.shards: {len(missing)} of {len(expanded)} shards of '{spec}' are missing, "
                    f"e.g. '{missing[0]}'"
                )
            urls.extend(expanded)
        elif os.path.isfile(spec):
            urls.append(spec)
        else:
            raise DataError(f"data.shards: '{spec}' does not exist")
    return urls


def check_clip_length(
    urls: Sequence[str], num_frames: int, pair_gap: Sequence[int] = (), views: str = "frames"
) -> None:
    """Shards whose samples hold fewer frames than ``data.num_frames``, or with ``data.pair_gap`` no run
    of frames with such a pair, are one line before any work (every sample would fail to decode). Looks
    at the first sample of the first local shard; remote and unreadable shards are left to the loader,
    which skips and counts what it cannot read."""
    import tarfile

    local = next((u for u in urls if not _is_remote(u)), None)
    if local is None:
        return
    members, record = [], None  # (key, suffix) of the first sample, its json
    try:
        with tarfile.open(local) as tar:
            for member in tar:
                key, _, suffix = member.name.partition(".")
                if members and key != members[0][0]:
                    break
                members.append((key, suffix))
                if suffix == "json":
                    record = json.loads(tar.extractfile(member).read())
    except (tarfile.TarError, OSError, ValueError):
        return
    frames = sum(1 for _, suffix in members if suffix.startswith("f") and suffix.endswith(".jpg"))
    if views == "crops":  # both views are cut from the first frame: shards of images do
        return
    if 0 < frames < num_frames:
        raise DataError(
            f"data.num_frames={num_frames}, but the samples of '{local}' hold {frames} frames: "
            f"make shards of clips with siammae shard --frames {num_frames}"
        )
    if pair_gap and frames:
        runs = "siammae shard --frames 25 --gap 48-48 (every 2nd frame over 48) makes runs"
        if frames < 3:
            raise DataError(
                f"data.pair_gap draws pairs from runs of frames, but the samples of '{local}' hold {frames}: {runs}"
            )
        try:
            draw_pair(record or {}, random.Random(0), pair_gap)
        except (ValueError, KeyError) as error:
            raise DataError(f"data.pair_gap={list(pair_gap)} and the runs of '{local}': {error}; {runs}") from None


def shards_for(urls: Sequence[str], rank: int, world: int, worker: int, workers: int) -> List[str]:
    """The shards one (rank, worker) draws from: disjoint between ranks when there are at least as many
    shards as ranks, and between the workers of a rank when there are enough for them too. With fewer
    shards everyone draws from the larger set (still a different random stream per rank and worker)."""
    mine = list(urls[rank::world]) if len(urls) >= world else list(urls)
    return mine[worker::workers] if len(mine) >= workers else mine


def stream_rng(seed, rank: int, worker: int, what: str) -> random.Random:
    """A random generator for one stage of one worker's stream; the same inputs give the same stream
    in any process (a string seed is hashed with SHA-512, unaffected by PYTHONHASHSEED)."""
    return random.Random(f"siammae-data/{seed}/{rank}/{worker}/{what}")


def _worker() -> tuple[int, int]:
    info = torch.utils.data.get_worker_info()
    return (info.id, info.num_workers) if info is not None else (0, 1)


# ----------------------------------------------------------------------------- counting skipped samples

# Per process (each DataLoader worker is its own process): errors since the last batch left this worker,
# errors in a row without a good sample, and how many were reported on stderr.
_skipped = {"since_batch": 0, "in_a_row": 0, "reported": 0}


def skip_and_count(exn: Exception) -> bool:
    """WebDataset handler: count the error, report the first few, carry on (no sleep, unlike
    ``wds.warn_and_continue``, which sleeps 0.5 s per error and would stall the worker)."""
    _skipped["since_batch"] += 1
    _skipped["in_a_row"] += 1
    if _skipped["reported"] < 5:
        _skipped["reported"] += 1
        print(f"siammae.data: skipping unreadable data: {type(exn).__name__}: {exn}", file=sys.stderr)
    if _skipped["in_a_row"] >= MAX_FAILURES_IN_A_ROW:
        raise DataError(
            f"{MAX_FAILURES_IN_A_ROW} samples in a row could not be used (last: {type(exn).__name__}: {exn}); "
            "check data.shards and data.num_frames against the shards"
        ) from exn
    return True


# ----------------------------------------------------------------------------- pipeline stages


def resampled_shards(urls: Sequence[str], seed, rank: int, world: int):
    """Pipeline source: an endless stream of ``dict(url=...)`` drawn with replacement from this rank's
    and worker's shards (WebDataset's ``resampled=True`` with an explicit node/worker split and a
    reproducible seed; its own resampler seeds from the clock)."""

    def source():
        worker, workers = _worker()
        mine = shards_for(urls, rank, world, worker, workers)
        rng = stream_rng(seed, rank, worker, "shards")
        while True:
            yield dict(url=mine[rng.randrange(len(mine))])

    return source


def shuffle(bufsize: int, seed, rank: int):
    """A shuffle buffer of ``bufsize`` samples per worker (compressed bytes: put before decoding)."""

    def stage(src):
        rng = stream_rng(seed, rank, _worker()[0], "shuffle")
        buf = []
        for sample in src:
            if len(buf) < bufsize:
                buf.append(sample)
                continue
            i = rng.randrange(bufsize)
            buf[i], sample = sample, buf[i]
            yield sample
        rng.shuffle(buf)
        yield from buf

    return stage


def augment(data_cfg, seed, rank: int):
    """Decode each sample and draw its ``data_cfg.repeated_sampling`` views; bad samples are counted."""

    def stage(src):
        rng = stream_rng(seed, rank, _worker()[0], "augment")
        buffers = FrameBuffers()  # safe: the batch stage cuts a sample's views before the next is decoded
        for sample in src:
            try:
                views = make_sample(sample, rng, num_frames=data_cfg.num_frames, repeats=data_cfg.repeated_sampling,
                                    scale=data_cfg.crop_scale, ratio=data_cfg.crop_ratio, hflip=data_cfg.hflip,
                                    view_shift=data_cfg.view_shift, pair_gap=data_cfg.pair_gap,
                                    views=data_cfg.views, local_scale=data_cfg.local_crop_scale,
                                    local_ratio=data_cfg.local_crop_ratio, buffers=buffers)  # fmt: skip
            except Exception as exn:  # corrupt JPEG, missing frame (truncated shard), ...
                exn.args = (f"{exn} (sample '{sample.get('__key__')}' of {sample.get('__url__')})",)
                skip_and_count(exn)
                continue
            _skipped["in_a_row"] = 0
            yield from views

    return stage


def batches(batch_size: int, size: int):
    """Views -> ``dict(frames=uint8 (B, T, 3, size, size), keys=[url#key] * B, skipped=int, worker=int)``,
    each view cut straight into its slot of the batch.

    ``skipped`` is the number of errors this worker skipped since its previous batch, so the sum over
    all batches a rank receives is that rank's count, whatever the number of workers.
    """

    def stage(src):
        # One thread: parallelism comes from the DataLoader workers; OpenCV's own pool would
        # oversubscribe the cores they and the trainer share.
        cv2.setNumThreads(1)
        worker = _worker()[0]
        out, keys = None, []
        for view in src:
            if out is None:  # a new array per batch: the consumer may still hold the previous one
                out = np.empty((batch_size, len(view.frames), size, size, 3), dtype=np.uint8)
            slot = out[len(keys)]
            if view.first_box is None:
                crop_resize(view.frames, view.box, size, view.flip, out=slot)
            else:
                first_flip = view.flip if view.first_flip is None else view.first_flip
                crop_resize(view.frames[:1], view.first_box, size, first_flip, out=slot[:1])
                crop_resize(view.frames[1:], view.box, size, view.flip, out=slot[1:])
            keys.append(view.key)
            if len(keys) == batch_size:
                skipped, _skipped["since_batch"] = _skipped["since_batch"], 0
                yield dict(frames=to_chw(torch.from_numpy(out)), keys=keys, skipped=skipped, worker=worker)
                out, keys = None, []

    return stage


def make_dataset(
    urls: Sequence[str], data_cfg, *, size: int, batch_size: int, seed, rank: int = 0, world: int = 1
) -> wds.DataPipeline:
    """The endless pipeline of one rank: shards -> samples -> shuffled -> views -> uint8 batches."""
    return wds.DataPipeline(
        resampled_shards(urls, seed, rank, world),
        wds.tarfile_to_samples(handler=skip_and_count),
        shuffle(data_cfg.shuffle_buffer, seed, rank),
        augment(data_cfg, seed, rank),
        batches(batch_size, size),
    )


def _ignore_stop_signals(_worker_id: int) -> None:
    """Workers leave SIGTERM/SIGINT to the trainer: a cluster that signals every process of a job
    would otherwise kill them first, and the trainer could not finish its step and save (see
    ``siammae.train``). They are stopped by :class:`EpochLoader` instead."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


# The DataLoader iterators whose workers are still running, stopped when Python exits. Python stops
# the worker processes it still has at exit with SIGTERM and waits for them; these ignore it, so
# without this a script that left an iterator unfinished (or failed with one in its traceback) would
# never exit.
_running = weakref.WeakSet()


def _stop_workers(iterator) -> None:
    """Stop ``iterator``'s worker processes now (what a DataLoader iterator does when it is garbage
    collected; a traceback that holds it keeps it alive). Idempotent."""
    _running.discard(iterator)
    stop = getattr(iterator, "_shutdown_workers", None)  # torch's own clean-up; absent with 0 workers
    if stop is not None:
        stop()


@functools.cache
def _stop_all_at_exit() -> None:
    # Registered after multiprocessing's own exit handler, so it runs first (atexit is last in, first out).
    atexit.register(lambda: [_stop_workers(it) for it in list(_running)])


class EpochLoader:
    """Exactly ``num_batches`` batches of a DataLoader over an endless pipeline. Iterating it gives a
    generator that stops the worker processes as soon as it ends: exhausted, closed (the trainer
    closes it whatever happens), or left by an error, including one raised in a worker (re-raised
    with its own one-line message instead of the worker's traceback)."""

    def __init__(self, loader: torch.utils.data.DataLoader, num_batches: int):
        self.loader, self.num_batches = loader, num_batches

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self):
        iterator = iter(self.loader)
        if self.loader.num_workers > 0:
            _stop_all_at_exit()
            _running.add(iterator)
        try:
            for _ in range(self.num_batches):
                try:
                    batch = next(iterator)
                except SiammaeError as error:  # raised in a worker: torch prepends its traceback
                    raise type(error)(worker_message(error)) from None
                yield batch
        finally:
            _stop_workers(iterator)


def worker_message(error: Exception) -> str:
    """The one-line message of a :class:`SiammaeError` raised in a DataLoader worker, which torch
    re-raises as "Caught X in DataLoader worker process N. Original Traceback ... X: message"."""
    last = (str(error).strip().splitlines() or [""])[-1]
    return last.partition(f"{type(error).__name__}: ")[2] or last


def make_loader(
    urls: Sequence[str],
    data_cfg,
    *,
    size: int,
    batch_size: int,
    num_batches: int,
    seed,
    rank: int = 0,
    world: int = 1,
    num_workers: int | None = None,
) -> EpochLoader:
    """A loader yielding exactly ``num_batches`` per-rank batches (counted on the loader, not per
    worker), so every rank takes the same number of steps. Not handed to ``accelerator.prepare``
    (it would re-shard the already rank-split stream).

    ``seed`` fixes the whole stream: the trainer passes one per data segment (see ``siammae.train``).
    """
    workers = data_cfg.num_workers if num_workers is None else num_workers
    dataset = make_dataset(urls, data_cfg, size=size, batch_size=batch_size, seed=seed, rank=rank, world=world)
    extra = dict(prefetch_factor=2, worker_init_fn=_ignore_stop_signals) if workers > 0 else {}
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=None, num_workers=workers, pin_memory=torch.cuda.is_available(), **extra
    )
    return EpochLoader(loader, num_batches)


def describe(urls: Sequence[str]) -> str:
    """'12 shards in /data/shards' for log lines."""
    folders = sorted({str(Path(u).parent) for u in urls if not _is_remote(u)})
    where = folders[0] if len(folders) == 1 else f"{len(folders)} folders" if folders else "remote"
    return f"{len(urls)} shard{'s' if len(urls) != 1 else ''} in {where}"
