"""Write samples into WebDataset tar shards that appear only when complete.

One :class:`ShardWriter` per worker. Shards are named ``<prefix>-<seq:06d>.tar`` (prefix
``part<I:04d>-w<W:02d>``: unique per part and worker, so names never collide across workers or
machines and sort by part, worker, sequence). A shard is written under ``OUT/.shard/tmp/`` and
renamed into OUT once closed (the paths: :mod:`siammae.shard.folder`). All samples of one video go
into the same shard, so a shard either holds a video completely or not at all; that is what makes
resuming exact.

Commit order when a shard closes: tar fsynced -> manifest ``.shard/part<I>/manifests/<name>.json``
(the videos it holds) written and renamed -> tar renamed into OUT. A manifest whose tar is absent
(a crash between the two renames) means "not done" and is deleted by the next run of that part.
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

from siammae.files import write_atomic
from siammae.shard.folder import PartFolder, ShardFolder

if TYPE_CHECKING:  # the samples come from siammae.shard.samples; only their type is named here
    from siammae.shard.samples import Sample

_BLOCK = 512


def tar_bytes(samples: List[Sample]) -> int:
    """Bytes the samples take in a tar: a header block per member plus data padded to blocks."""
    total = 0
    for _, members in samples:
        for _, payload in members:
            total += _BLOCK + -(-len(payload) // _BLOCK) * _BLOCK
    return total


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable (best effort: some file systems cannot open a folder)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def next_sequence(out: Path, manifests: Path, prefix: str) -> int:
    """1 + the highest sequence number of ``prefix`` among finished shards and manifests (0 if none)."""
    pattern = re.compile(re.escape(prefix) + r"-(\d{6})\.(?:tar|json)$")
    seqs = [-1]
    for folder in (out, manifests):
        if folder.is_dir():
            seqs += [int(m.group(1)) for name in os.listdir(folder) if (m := pattern.match(name))]
    return max(seqs) + 1


class ShardWriter:
    """Collects whole videos' samples into shards of at most ``max_samples`` samples and ``max_bytes``
    bytes (a single video larger than that gets a shard of its own)."""

    def __init__(self, part: PartFolder, prefix: str, max_samples: int, max_bytes: int):
        self.part, self.folder, self.prefix = part, part.folder, prefix
        self.tmp_dir = self.folder.tmp
        part.manifests.mkdir(parents=True, exist_ok=True)
        self.tmp_dir.mkdir(parents=True, exist_ok=True)
        self.max_samples, self.max_bytes = max_samples, max_bytes
        self.seq = next_sequence(self.folder.root, part.manifests, prefix)
        self._tar: Optional[tarfile.TarFile] = None
        self._file = None
        self._videos: List[str] = []
        self._samples = 0
        self._bytes = 0

    @property
    def name(self) -> str:
        return f"{self.prefix}-{self.seq:06d}.tar"

    def add(self, src: str, samples: List[Sample]) -> Optional[dict]:
        """Append one video's samples; returns the manifest of a shard this closed first, if any."""
        size = tar_bytes(samples)
        closed = None
        if self._tar is not None and (
            self._samples + len(samples) > self.max_samples or self._bytes + size > self.max_bytes
        ):
            closed = self.close()
        if self._tar is None:
            self._file = open(self.tmp_dir / self.name, "wb")
            self._tar = tarfile.open(fileobj=self._file, mode="w", format=tarfile.USTAR_FORMAT)
        for key, members in samples:
            for extension, payload in members:
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mode, info.mtime = len(payload), 0o444, 0
                self._tar.addfile(info, io.BytesIO(payload))
        self._videos.append(src)
        self._samples += len(samples)
        self._bytes += size
        return closed

    def close(self) -> Optional[dict]:
        """Finish the open shard (see the module docstring); returns its manifest, or None if none was open."""
        if self._tar is None:
            return None
        self._tar.close()
        self._file.flush()
        os.fsync(self._file.fileno())
        self._file.close()
        tmp = self.tmp_dir / self.name
        manifest = {"shard": self.name, "samples": self._samples, "bytes": tmp.stat().st_size, "videos": self._videos}
        write_atomic(self.part.manifest(self.name), json.dumps(manifest).encode())
        os.replace(tmp, self.folder.shard(self.name))
        _fsync_dir(self.folder.root)
        self._tar, self._file = None, None
        self._videos, self._samples, self._bytes = [], 0, 0
        self.seq += 1
        return manifest

    def abort(self) -> None:
        """Drop the open shard (its videos are not done)."""
        if self._tar is not None:
            self._file.close()
            (self.tmp_dir / self.name).unlink(missing_ok=True)
            self._tar, self._file = None, None


def read_manifests(folder: ShardFolder) -> List[Tuple[Path, dict]]:
    """Every readable manifest under ``OUT/.shard/part*/manifests`` as (path, manifest)."""
    found = []
    for path in folder.manifest_paths():
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found
