"""The paths of a shard output folder (OUT), in one place.

Layout of OUT::

    OUT/shard-<u:06d>.tar                    finished shards, unit u of the listing (the trainer globs OUT/*.tar)
    OUT/failed.jsonl                         one {"src", "path", "reason", "error"} per failed video
    OUT/stats.json                           counts of the latest run of every part + what OUT holds
    OUT/.shard/config.json                   options that decide the samples; a rerun must match
    OUT/.shard/part<I>/manifests/*.json      each finished unit's videos, failures, SHA-256 (resume reads these)
    OUT/.shard/part<I>/failed.jsonl, stats.json, lock
    OUT/.shard/tmp/                          shards being written
"""

from __future__ import annotations

from pathlib import Path
from typing import List


class ShardFolder:
    """OUT: the finished shards, the merged records and the bookkeeping under ``OUT/.shard``."""

    def __init__(self, root):
        self.root = Path(root)
        self.state = self.root / ".shard"
        self.config = self.state / "config.json"
        self.tmp = self.state / "tmp"
        self.failed = self.root / "failed.jsonl"
        self.stats = self.root / "stats.json"

    def shard(self, name: str) -> Path:
        """Where the finished shard ``name`` lies."""
        return self.root / name

    def shards(self) -> List[Path]:
        """The finished shards, sorted."""
        return sorted(self.root.glob("*.tar"))

    def part(self, index: int) -> "PartFolder":
        return PartFolder(self, self.state / f"part{index:04d}")

    def parts(self) -> List["PartFolder"]:
        """The parts that have bookkeeping here, sorted by name."""
        return [PartFolder(self, path) for path in sorted(self.state.glob("part*"))]

    def manifest_paths(self) -> List[Path]:
        """Every part's manifests, sorted."""
        return sorted(self.state.glob("part*/manifests/*.json"))


class PartFolder:
    """``OUT/.shard/part<I>``: the bookkeeping of one part."""

    def __init__(self, folder: ShardFolder, root: Path):
        self.folder, self.root, self.name = folder, Path(root), Path(root).name
        self.manifests = self.root / "manifests"
        self.failed = self.root / "failed.jsonl"
        self.stats = self.root / "stats.json"
        self.lock = self.root / "lock"

    def manifest(self, shard_name: str) -> Path:
        """The manifest of the shard ``shard_name`` (``<stem>.tar`` -> ``<stem>.json``)."""
        return self.manifests / (shard_name[: -len(".tar")] + ".json")

    def owns(self, manifest_path: Path) -> bool:
        """Whether ``manifest_path`` (from :meth:`ShardFolder.manifest_paths`) is one of this part's."""
        return manifest_path.parent.parent.name == self.name
