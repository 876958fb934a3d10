"""Library behind ``siammae inspect``: check shards written by ``siammae shard`` and summarise them.

:func:`inspect_shards` reads every tar in one pass and checks what the trainer relies on: each tar
reads to its end; a sample's members are contiguous and its key is unique across all shards; it has
a ``json`` with the sample fields (:class:`siammae.shard.samples.SampleRecord`, what the writer
writes) and ``f0.jpg .. f{K-1}.jpg`` for its K ``frames``, which strictly increase with
``gap == frames[-1] - frames[0]``; and every JPEG decodes (or, with ``decode=False``, has a valid
header and end marker). It gathers gap, size, fps, label and split statistics and keeps
a seeded reservoir of samples for :func:`contact_sheet`.
"""

from __future__ import annotations

import json
import os
import random
import tarfile
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from siammae.errors import SiammaeError
from siammae.shard.folder import ShardFolder
from siammae.shard.samples import FIELDS, JSON_MEMBER, frame_member
from siammae.shard.writer import HashingFile, file_sha256, output_sha256

MAX_PROBLEMS = 20  # problems kept verbatim; the count covers all


class InspectError(SiammaeError):
    """Nothing to inspect (no tar files at the given paths)."""


def find_shards(paths: Sequence[str | os.PathLike]) -> List[Path]:
    """Tar files named by ``paths``: files as given, folders' ``*.tar`` (not recursive), sorted."""
    shards: List[Path] = []
    for path in map(Path, paths):
        if path.is_dir():
            shards += ShardFolder(path).shards()
        elif path.is_file():
            shards.append(path)
        else:
            raise InspectError(f"{path} does not exist")
    if not shards:
        raise InspectError(f"no .tar shards in {', '.join(map(str, paths))}")
    return shards


@dataclass
class Report:
    shards: int = 0
    samples: int = 0
    bytes: int = 0
    jpegs: int = 0
    problems: List[str] = field(default_factory=list)
    problem_count: int = 0
    gaps: List[int] = field(default_factory=list)
    gap_seconds: List[float] = field(default_factory=list)
    frames_per_sample: Counter = field(default_factory=Counter)
    frame_sizes: Counter = field(default_factory=Counter)
    source_sizes: Counter = field(default_factory=Counter)
    fps: Counter = field(default_factory=Counter)
    labels: Counter = field(default_factory=Counter)
    splits: Counter = field(default_factory=Counter)
    videos: set = field(default_factory=set)
    checksums: List[tuple] = field(default_factory=list)  # (shard name, SHA-256) of every shard read
    picked: List[dict] = field(default_factory=list)  # reservoir for the contact sheet

    def problem(self, text: str) -> None:
        self.problem_count += 1
        if len(self.problems) < MAX_PROBLEMS:
            self.problems.append(text)

    def summary(self) -> dict:
        """A JSON-able summary (what ``siammae inspect --json`` prints)."""
        import numpy as np

        def spread(values):
            if not values:
                return None
            a = np.asarray(values, float)
            return {k: round(float(f(a)), 3) for k, f in
                    (("min", np.min), ("mean", np.mean), ("median", np.median), ("max", np.max))}  # fmt: skip

        return {
            "shards": self.shards,
            "samples": self.samples,
            "videos": len(self.videos),
            "bytes": self.bytes,
            # the checksum stats.json records for the output these shards make up
            "sha256": output_sha256(self.checksums),
            "jpegs": self.jpegs,
            "ok": self.problem_count == 0,
            "problems": self.problem_count,
            "problem_examples": self.problems,
            "gap_frames": spread(self.gaps),
            "gap_seconds": spread(self.gap_seconds),
            "frames_per_sample": dict(self.frames_per_sample),
            "frame_sizes": {f"{w}x{h}": n for (w, h), n in self.frame_sizes.most_common(5)},
            "source_sizes": {f"{w}x{h}": n for (w, h), n in self.source_sizes.most_common(5)},
            "fps": {f"{fps:g}": n for fps, n in self.fps.most_common(5)},
            "labels": len(self.labels),
            "top_labels": dict(self.labels.most_common(5)),
            "splits": {str(k): n for k, n in self.splits.most_common()},
        }


def _jpeg_size(data: bytes, decode: bool):
    """(W, H) of a JPEG; decodes it fully when ``decode``; raises ValueError if it is broken."""
    import simplejpeg

    if not (data[:2] == b"\xff\xd8" and data.rstrip(b"\x00")[-2:] == b"\xff\xd9"):
        raise ValueError("not a complete JPEG (start/end marker missing)")
    if decode:
        image = simplejpeg.decode_jpeg(data)
        return image.shape[1], image.shape[0]
    height, width, _, _ = simplejpeg.decode_jpeg_header(data)
    return width, height


def _check_sample(report: Report, where: str, key: str, members: Dict[str, bytes], decode: bool) -> Optional[dict]:
    try:
        record = json.loads(members[JSON_MEMBER].decode("utf-8"))
    except KeyError:
        return report.problem(f"{where}: {key}: no json member")
    except ValueError as error:
        return report.problem(f"{where}: {key}: json does not parse ({error})")
    missing = [f for f in FIELDS if f not in record]
    frames = record.get("frames")
    if missing or not isinstance(frames, list) or not frames:
        return report.problem(f"{where}: {key}: json lacks {missing or ['frames']}")
    if any(b <= a for a, b in zip(frames, frames[1:])) or record["gap"] != frames[-1] - frames[0]:
        report.problem(f"{where}: {key}: frames {frames} not strictly increasing or gap {record['gap']} wrong")
    wanted = {frame_member(i) for i in range(len(frames))}
    if set(members) != wanted | {JSON_MEMBER}:
        report.problem(f"{where}: {key}: members {sorted(members)}, expected {sorted(wanted | {JSON_MEMBER})}")
    for name in sorted(wanted & set(members)):
        try:
            report.frame_sizes[_jpeg_size(members[name], decode)] += 1
            report.jpegs += 1
        except Exception as error:  # simplejpeg raises ValueError/RuntimeError on broken data
            report.problem(f"{where}: {key}.{name}: {error}")
    report.gaps.append(record["gap"])
    if record["fps"]:
        report.gap_seconds.append(record["gap"] / record["fps"])
    report.frames_per_sample[len(frames)] += 1
    report.source_sizes[tuple(record["size"])] += 1
    report.fps[round(float(record["fps"]), 3)] += 1
    if record["label"] is not None:
        report.labels[record["label"]] += 1
    report.splits[record["split"]] += 1
    report.videos.add(record["src"])
    return record


def inspect_shards(
    paths: Sequence[str | os.PathLike], decode: bool = True, keep: int = 0, seed: int = 0, progress=None
) -> Report:
    """Check and summarise the shards at ``paths`` (see the module docstring); keeps ``keep`` random
    samples (members + record) in ``report.picked``. ``progress(shard_path)`` is called per shard."""
    report = Report()
    rng = random.Random(seed)
    seen_keys: Dict[str, str] = {}
    for shard in find_shards(paths):
        report.shards += 1
        report.bytes += shard.stat().st_size
        where = shard.name
        current, members, done_keys = None, {}, set()

        def finish():
            if current is None:
                return
            record = _check_sample(report, where, current, members, decode)
            report.samples += 1
            if keep and record is not None:
                item = {
                    "key": current,
                    "record": record,
                    "jpegs": [members.get(frame_member(i)) for i in range(len(record["frames"]))],
                }
                if len(report.picked) < keep:
                    report.picked.append(item)
                elif (slot := rng.randrange(report.samples)) < keep:
                    report.picked[slot] = item

        try:
            with open(shard, "rb") as raw, tarfile.open(fileobj=(hashed := HashingFile(raw)), mode="r|") as tar:
                for info in tar:
                    if not info.isfile():
                        continue
                    base = info.name.rsplit("/", 1)[-1]
                    key, dot, extension = base.partition(".")
                    if not dot:
                        report.problem(f"{where}: member {info.name} has no extension")
                        continue
                    data = tar.extractfile(info).read()
                    if key != current:
                        finish()
                        if key in done_keys:
                            report.problem(f"{where}: members of {key} are not contiguous")
                        elif key in seen_keys:
                            report.problem(f"{where}: key {key} also in {seen_keys[key]}")
                        current, members = key, {}
                        done_keys.add(key)
                        seen_keys.setdefault(key, where)
                    members[extension] = data
                report.checksums.append((shard.name, hashed.digest_to_end()))  # one read of the file for both
        except (tarfile.TarError, OSError, EOFError) as error:
            report.problem(f"{where}: unreadable tar ({error}); samples after the damage are lost")
            report.checksums.append((shard.name, file_sha256(shard)))
        finish()
        if progress:
            progress(shard)
    return report


def contact_sheet(picked: List[dict], path: str | os.PathLike, height: int = 128) -> Path:
    """Draw the ``picked`` samples as rows of their frames (in time order) with a caption; save PNG."""
    import simplejpeg
    from PIL import Image, ImageDraw

    if not picked:
        raise InspectError("no samples to draw")
    caption, pad = 16, 4
    rows = []
    for item in picked:
        tiles = []
        for data in item["jpegs"]:
            image = Image.fromarray(simplejpeg.decode_jpeg(data)) if data else Image.new("RGB", (height, height))
            tiles.append(image.resize((max(1, round(image.width * height / image.height)), height), Image.BILINEAR))
        rows.append((item, tiles))
    width = max(sum(t.width + pad for t in tiles) for _, tiles in rows) + pad
    width = max(width, 480)
    sheet = Image.new("RGB", (width, len(rows) * (height + caption + pad) + pad), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    y = pad
    for item, tiles in rows:
        r = item["record"]
        seconds = f", {r['gap'] / r['fps']:.2f} s" if r["fps"] else ""
        label = f"  [{r['label']}]" if r["label"] is not None else ""
        text = f"{r['src']}  frames {r['frames']}  gap {r['gap']}{seconds}{label}"
        draw.text((pad, y), text[: width // 6], fill=(230, 230, 230))
        x = pad
        for tile in tiles:
            sheet.paste(tile, (x, y + caption))
            x += tile.width + pad
        y += height + caption + pad
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
