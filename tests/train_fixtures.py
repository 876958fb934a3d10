"""Helpers for the data and trainer tests: synthetic shards in the ``siammae shard`` format, broken
shards, and a torchrun entry point that records what every rank did at every step.

Shards are written directly with ``tarfile`` (not with ``siammae shard``) so these tests depend only on
the format contract: per sample ``<key>.f0.jpg``, ``<key>.f1.jpg``, ``<key>.json``, keys without dots.
"""

from __future__ import annotations

import io
import json
import sys
import tarfile
from pathlib import Path

import numpy as np
import simplejpeg


def textured_pair(rng: np.random.Generator, width: int, height: int, shift: int = 3) -> list:
    """Two frames of one smooth random texture, the second moved by ``shift`` pixels (so f2 is
    predictable from f1): HWC uint8 each."""
    cells = rng.random((height // 8 + 2, width // 8 + 2, 3))
    big = np.kron(cells, np.ones((8, 8, 1)))  # blocky, then smoothed by a box filter
    kernel = np.ones(5) / 5
    for axis in (0, 1):
        big = np.apply_along_axis(lambda v: np.convolve(v, kernel, mode="same"), axis, big)
    big = (big - big.min()) / (np.ptp(big) + 1e-6)
    base = (big * 255).astype(np.uint8)
    dy, dx = rng.integers(-shift, shift + 1, size=2)
    f0 = base[8 : 8 + height, 8 : 8 + width]
    f1 = base[8 + dy : 8 + dy + height, 8 + dx : 8 + dx + width]
    return [np.ascontiguousarray(f0), np.ascontiguousarray(f1)]


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def write_shards(
    folder,
    num_shards: int = 4,
    per_shard: int = 8,
    width: int = 80,
    height: int = 64,
    seed: int = 0,
    prefix: str = "train",
) -> list:
    """Write ``num_shards`` tar shards of ``per_shard`` textured frame pairs; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    paths = []
    for s in range(num_shards):
        path = folder / f"{prefix}-{s:06d}.tar"
        with tarfile.open(path, "w") as tar:
            for i in range(per_shard):
                key = f"{prefix}_{s:03d}_{i:04d}"
                frames = textured_pair(rng, width, height)
                for t, frame in enumerate(frames):
                    _add(tar, f"{key}.f{t}.jpg", simplejpeg.encode_jpeg(frame, quality=90, colorsubsampling="420"))
                meta = dict(
                    src=f"synthetic/{key}.mp4",
                    label=s % 3,
                    split="train",
                    fps=30.0,
                    frames=[10 * i, 10 * i + 8],
                    gap=8,
                    size=[width, height],
                    num_frames=2,
                )
                _add(tar, f"{key}.json", json.dumps(meta).encode())
        paths.append(path)
    return paths


def truncate(path, fraction: float = 0.6) -> None:
    """Cut a shard short in the middle of a member, like a copy that was interrupted."""
    data = Path(path).read_bytes()
    Path(path).write_bytes(data[: int(len(data) * fraction) + 123])


def corrupt_first_jpeg(path) -> str:
    """Rewrite a shard with the first sample's f1.jpg replaced by garbage; returns that sample's key."""
    path = Path(path)
    with tarfile.open(path) as tar:
        members = [(m.name, tar.extractfile(m).read()) for m in tar.getmembers()]
    key = members[0][0].split(".")[0]
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            if name == f"{key}.f1.jpg":
                data = b"\xff\xd8\xff\xe0 this is not a jpeg " * 4
            _add(tar, name, data)
    return key


# ----------------------------------------------------------------------------- torchrun entry point


def _record_steps(out_dir: str, exit_at: int = 0):
    """An ``on_step`` callback for ``siammae.train.main`` that writes, per rank, one JSON line per
    optimizer step: the step, a fingerprint of the weights and the samples of the step's batches.
    With ``exit_at`` > 0 the process dies (``os._exit``, no clean-up, like a kill) at that step; with
    ``exit_at`` < 0 it sends itself SIGTERM at step ``-exit_at`` (like a cluster pre-empting the job)."""
    import os
    import signal

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    def on_step(step, model, batch_keys, accelerator):
        if step == exit_at:
            os._exit(17)
        if step == -exit_at:
            os.kill(os.getpid(), signal.SIGTERM)
        params = [p.detach().double() for p in accelerator.unwrap_model(model).parameters()]
        fingerprint = [float(sum(p.sum() for p in params)), float(sum((p * p).sum() for p in params))]
        rank = accelerator.process_index
        with open(out / f"rank{rank}.jsonl", "a") as f:
            f.write(
                json.dumps(dict(step=step, weights=fingerprint, keys=batch_keys, world=accelerator.num_processes))
                + "\n"
            )

    return on_step


def read_records(out_dir, rank: int = 0) -> list:
    path = Path(out_dir) / f"rank{rank}.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()]


if __name__ == "__main__":
    # [torchrun --nproc_per_node 2] tests/train_fixtures.py RECORD_DIR EXIT_AT RECIPE [overrides...]
    from siammae.train import loop as train

    train.main(sys.argv[3:], on_step=_record_steps(sys.argv[1], int(sys.argv[2])))
