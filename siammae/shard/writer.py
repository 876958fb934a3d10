"""Write one unit of videos into one WebDataset tar shard that appears only when complete.

A *unit* is a fixed run of videos of the listing (:func:`siammae.shard.run.make_units`); unit ``u``
becomes ``OUT/shard-<u:06d>.tar``, whichever worker writes it, so the output depends on the input and
the options only. The tar is written under ``OUT/.shard/tmp/`` and renamed into OUT once closed (the
paths: :mod:`siammae.shard.folder`). All samples of one video go into its unit's shard in listing
order, every tar header is fixed (mode 0444, mtime 0, no owner), so the same unit gives the same bytes.

Commit order when a shard closes: tar fsynced -> manifest ``.shard/part<I>/manifests/<stem>.json``
(its videos, failed videos, sample count, size, SHA-256) written and renamed -> tar renamed into OUT.
A manifest whose tar is absent (a crash between the two renames) means "not done" and is deleted by
the next run of that part. A unit whose every video failed has a manifest with ``"shard": null`` and
no tar.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING, List, Optional, Tuple

from siammae.files import write_atomic
from siammae.shard.folder import PartFolder, ShardFolder

if TYPE_CHECKING:  # the samples come from siammae.shard.samples; only their type is named here
    from siammae.shard.samples import Sample


def shard_name(unit: int) -> str:
    """The file name of unit ``unit``'s shard."""
    return f"shard-{unit:06d}.tar"


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


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def output_sha256(shards: List[Tuple[str, str]]) -> str:
    """One checksum of a whole output from its shards' (name, SHA-256): the SHA-256 of the sorted
    ``<name> <sha256>`` lines, so it names both what each shard holds and how the output is cut."""
    lines = "".join(f"{name} {sha}\n" for name, sha in sorted(shards))
    return hashlib.sha256(lines.encode()).hexdigest()


class HashingFile:
    """A file that :mod:`tarfile` writes or reads, hashing every byte that passes (SHA-256): one pass
    over a shard gives both the tar and its checksum."""

    def __init__(self, raw):
        self.raw, self.sha = raw, hashlib.sha256()

    def write(self, data) -> int:
        self.sha.update(data)
        return self.raw.write(data)

    def read(self, size=-1) -> bytes:
        data = self.raw.read(size)
        self.sha.update(data)
        return data

    def tell(self) -> int:
        return self.raw.tell()

    def digest_to_end(self) -> str:
        """Read what the tar reader left (the end-of-archive padding); the whole file's SHA-256."""
        while self.read(1 << 20):
            pass
        return self.sha.hexdigest()


class UnitWriter:
    """Collects one unit's samples into its shard; :meth:`close` commits it, :meth:`abort` drops it."""

    def __init__(self, part: PartFolder, unit: int):
        self.part, self.folder, self.unit = part, part.folder, unit
        self.name = shard_name(unit)
        self.tmp = self.folder.tmp / self.name
        part.manifests.mkdir(parents=True, exist_ok=True)
        self.folder.tmp.mkdir(parents=True, exist_ok=True)
        self._file = self._hashed = None
        self._tar: Optional[tarfile.TarFile] = None
        self.videos: List[str] = []
        self.failed: List[str] = []
        self.samples = 0

    def add(self, src: str, samples: List[Sample]) -> None:
        """Append one video's samples."""
        if self._tar is None:
            self._file = open(self.tmp, "wb")
            self._hashed = HashingFile(self._file)
            self._tar = tarfile.open(fileobj=self._hashed, mode="w", format=tarfile.USTAR_FORMAT)
        for key, members in samples:
            for extension, payload in members:
                info = tarfile.TarInfo(f"{key}.{extension}")
                info.size, info.mode, info.mtime = len(payload), 0o444, 0
                self._tar.addfile(info, io.BytesIO(payload))
        self.videos.append(src)
        self.samples += len(samples)

    def close(self) -> dict:
        """Commit the shard (see the module docstring); returns its manifest."""
        manifest = {"unit": self.unit, "shard": None, "samples": 0, "bytes": 0, "sha256": None}
        if self._tar is not None:
            self._tar.close()
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            self._tar = self._file = None
            size, sha = self.tmp.stat().st_size, self._hashed.sha.hexdigest()
            manifest.update(shard=self.name, samples=self.samples, bytes=size, sha256=sha)
        manifest.update(videos=self.videos, failed=self.failed)
        write_atomic(self.part.manifest(self.name), json.dumps(manifest).encode())
        if manifest["shard"]:
            os.replace(self.tmp, self.folder.shard(self.name))
            _fsync_dir(self.folder.root)
        return manifest

    def abort(self) -> None:
        """Drop the unfinished shard (its videos are not done)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:  # the disk is full: closing flushes the buffer
                pass
            self._tar = self._file = None
        self.tmp.unlink(missing_ok=True)


def read_manifests(folder: ShardFolder) -> List[Tuple[Path, dict]]:
    """Every readable manifest under ``OUT/.shard/part*/manifests`` as (path, manifest)."""
    found = []
    for path in folder.manifest_paths():
        try:
            found.append((path, json.loads(path.read_text())))
        except (OSError, ValueError):
            continue
    return found
