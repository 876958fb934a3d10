"""One encoder on whichever of the propagation tasks (:data:`siammae.tasks.TASKS`) are given, as one
table and one record.

``OUT/benchmark.json``::

    {"siammae_version": "...", "encoder": {...EncoderInfo...}, "weights_sha256": "...",
     "tasks": {"davis": {"scores": {"J&F": 0.62, ...}, "protocol": {...}, "timing": {...}}, ...}}

and each task's own files in ``OUT/<task>/``. :func:`compare` puts such records side by side, each against the first.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from siammae import __version__
from siammae.errors import SiammaeError
from siammae.files import write_atomic
from siammae.tasks import TASKS


class BenchmarkError(SiammaeError):
    """A benchmark record that cannot be read or compared."""


def weights_sha256(encoder) -> str:
    """A fingerprint of the encoder's weights (names, shapes and values in name order), so two records
    say whether they measured the same network."""
    digest = hashlib.sha256()
    for name, tensor in sorted(encoder.state_dict().items()):
        digest.update(f"{name}:{tuple(tensor.shape)}:{tensor.dtype}".encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def run_benchmark(encoder, info: dict, roots: dict, data: dict, protocols: dict, out, options: dict, log=print) -> dict:
    """Run every task in ``roots`` (task -> dataset root; ``data``: task -> its loaded dataset, see
    :meth:`siammae.tasks.Task.load`) with ``protocols`` (task -> Protocol) into ``out/<task>/``; write
    and return the record. ``options`` (task -> dict) go to the task's runner."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    record = dict(siammae_version=__version__, encoder=info, weights_sha256=weights_sha256(encoder), tasks={})
    for task in TASKS:
        if task in roots:
            log(f"{task}: {roots[task]} (protocol {protocols[task].name})")
            record["tasks"][task] = dict(
                root=str(roots[task]),
                **TASKS[task].run(
                    encoder, roots[task], out / task, protocols[task], data=data[task], **options.get(task, {})
                ),
            )
            write_atomic(out / "benchmark.json", json.dumps(record, indent=2) + "\n")  # what is done is kept
    return record


def read_record(path) -> dict:
    """A benchmark.json, given as the file or its folder."""
    path = Path(path)
    path = path / "benchmark.json" if path.is_dir() else path
    try:
        record = json.loads(path.read_text())
        record["tasks"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise BenchmarkError(f"{path}: not a benchmark record ({type(e).__name__}: {e})") from None
    return record


def _columns(records: list) -> list:
    """(task, score) pairs any of the records has, in the table's order."""
    return [
        (task, key)
        for task in TASKS
        for key in TASKS[task].headline
        if any(key in r["tasks"].get(task, {}).get("scores", {}) for r in records)
    ]


def _label(record: dict) -> str:
    enc = record.get("encoder", {})
    step = f" step {enc['step']}" if enc.get("step") is not None else ""
    random = " random init" if "weights" in enc and enc["weights"] is None else ""  # EncoderInfo: None = random
    return f"{enc.get('source', '?')}{step}{random}"


def format_table(records: list, labels=None) -> str:
    """One row per record, one column per task score (blank where a record lacks the task)."""
    columns = _columns(records)
    labels = labels or [_label(r) for r in records]
    width = max(len(x) for x in labels + ["encoder"])
    head = f"{'encoder':<{width}} | " + " | ".join(f"{t} {k}" for t, k in columns)
    lines = [head, "-" * len(head)]
    for label, r in zip(labels, records):
        cells = []
        for task, key in columns:
            value = r["tasks"].get(task, {}).get("scores", {}).get(key)
            cells.append(f"{'' if value is None else f'{value:.3f}':>{len(task) + len(key) + 1}}")
        lines.append(f"{label:<{width}} | " + " | ".join(cells))
    return "\n".join(lines)


def compare(*records: dict) -> str:
    """Records side by side (A, B, C, ...) and each one minus the first (A, the baseline); notes where
    a record's protocols, datasets or weights are those of A or differ from them."""
    if len(records) < 2:
        raise BenchmarkError(f"compare needs at least two records, got {len(records)}")
    names = [chr(ord("A") + i) if i < 26 else f"R{i}" for i in range(len(records))]
    a = records[0]
    lines = [format_table(list(records), [f"{n} {_label(r)}" for n, r in zip(names, records)])]
    notes = []
    for name, b in zip(names[1:], records[1:]):
        diffs = []
        for task, key in _columns([a, b]):
            va, vb = (r["tasks"].get(task, {}).get("scores", {}).get(key) for r in (a, b))
            if va is not None and vb is not None:
                diffs.append(f"{task} {key} {vb - va:+.3f}")
        lines.append(f"{name} - A: " + (", ".join(diffs) or "no task in common"))
        for t in TASKS:
            if t in a["tasks"] and t in b["tasks"]:
                ta, tb = a["tasks"][t], b["tasks"][t]
                notes += [
                    f"{name}, {t}: the {what} differ from A's"
                    for what, key in (("protocols", "protocol"), ("datasets", "root"))
                    if ta.get(key) != tb.get(key)
                ]
        if a.get("weights_sha256") and a.get("weights_sha256") == b.get("weights_sha256"):
            notes.append(f"{name}: same weights as A")
    return "\n".join(lines + notes)
