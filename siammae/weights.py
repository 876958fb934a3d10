"""Weights on disk: reading them (safetensors, or torch files without unpickling), picking an encoder's
keys, loading them strictly, and where a training run keeps its checkpoints.

Loading is strict: missing, unexpected or mis-shaped keys are a :class:`CheckpointError` that lists
them (DINO's script only prints them, so a wrong file silently evaluates a random network).
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from siammae.errors import SiammaeError

COMPLETE = "complete"  # the trainer's marker file inside a finished checkpoint folder
WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin", "model.bin", "model.pt", "model.pth")
CONTAINER_KEYS = ("state_dict", "model", "teacher", "module", "encoder")
WRAPPER_PREFIXES = ("_orig_mod.", "module.")  # torch.compile / DDP wrappers
ENCODER_PREFIXES = ("encoder.", "backbone.")  # SiamMAE training model / DINO teacher


class CheckpointError(SiammaeError):
    """A checkpoint that cannot be used as asked; the message is for the user."""


# ----------------------------------------------------------------------------- reading weights


def read_weights(path: Path) -> tuple[dict, dict]:
    """(state dict, safetensors metadata or {}) from a .safetensors file or a torch file read with
    ``weights_only=True``. Containers (``{"model": ...}``, DINO's ``{"teacher": ...}``) are unwrapped."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"weights file not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return {k: f.get_tensor(k) for k in f.keys()}, dict(f.metadata() or {})
        except Exception as e:  # safetensors raises its own error types
            raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from None
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: cannot be read with torch.load(weights_only=True) ({str(e).splitlines()[0]}); "
            "only plain tensors are loaded, never pickled objects. Re-save just the state dict."
        ) from None
    return unwrap_state_dict(obj, path), {}


def unwrap_state_dict(obj, where="checkpoint") -> dict:
    """The tensor dict inside common checkpoint containers."""
    for _ in range(3):
        if isinstance(obj, dict) and obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
            return obj
        if not isinstance(obj, dict):
            break
        inner = next((obj[k] for k in CONTAINER_KEYS if isinstance(obj.get(k), dict)), None)
        if inner is None:
            break
        obj = inner
    keys = list(obj)[:10] if isinstance(obj, dict) else type(obj).__name__
    raise CheckpointError(f"{where}: no state dict of tensors found (top level: {keys})")


def _strip(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


def encoder_state_dict(sd: dict, prefix: Optional[str] = None) -> dict:
    """The encoder's keys in timm's layout: wrapper prefixes removed, then ``prefix`` (or, when None,
    ``encoder.`` of a SiamMAE checkpoint / ``backbone.`` of a DINO one, if present) selected and
    stripped. A pure function, applied before the strict load."""
    for wrapper in WRAPPER_PREFIXES:
        if sd and all(k.startswith(wrapper) for k in sd):
            sd = _strip(sd, wrapper)
    if prefix is None:
        prefix = next((p for p in ENCODER_PREFIXES if any(k.startswith(p) for k in sd)), "")
    if prefix:
        selected = _strip(sd, prefix)
        if not selected:
            raise CheckpointError(f"no keys start with '{prefix}' (first keys: {list(sd)[:5]})")
        return selected
    return sd


def _listing(keys, limit=12) -> str:
    keys = sorted(keys)
    more = f" ... (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_strict(model: nn.Module, sd: dict, what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that lists every mismatch by name.

    ``model`` may live on the meta device (built without initialising weights that are about to be
    replaced): the loaded tensors are then assigned, as float32."""
    own = model.state_dict()
    missing = set(own) - set(sd)
    unexpected = set(sd) - set(own)
    shapes = [
        f"{k} {tuple(sd[k].shape)} vs {tuple(own[k].shape)}" for k in set(sd) & set(own) if sd[k].shape != own[k].shape
    ]
    if missing or unexpected or shapes:
        parts = []
        if missing:
            parts.append(f"missing keys: {_listing(missing)}")
        if unexpected:
            parts.append(f"unexpected keys: {_listing(unexpected)}")
        if shapes:
            parts.append(f"shape mismatches (checkpoint vs model): {_listing(shapes, 6)}")
        raise CheckpointError(f"{what} does not match the model: " + "; ".join(parts))
    sd = {k: v.float() if v.is_floating_point() else v for k, v in sd.items()}
    model.load_state_dict(sd, strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise CheckpointError(f"{what}: tensors not in the state dict stayed uninitialised: {_listing(left)}")


# ----------------------------------------------------------------------------- locating checkpoints


def checkpoint_dirs(folder: Path, complete_only: bool = True) -> list:
    """``checkpoint_<step>`` folders in ``folder``, oldest first; by default only those with the trainer's
    ``complete`` marker (the trainer and the loaders below share this one definition)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = [
        p
        for p in folder.iterdir()
        if p.is_dir() and checkpoint_step(Path(p.name)) is not None and (not complete_only or (p / COMPLETE).is_file())
    ]
    return sorted(found, key=lambda p: checkpoint_step(Path(p.name)))


def weights_in(folder: Path) -> Path:
    """The weights file of a checkpoint folder."""
    for name in WEIGHT_FILES:
        if (folder / name).is_file():
            return folder / name
    raise CheckpointError(f"{folder}: no weights file ({', '.join(WEIGHT_FILES)})")


def checkpoint_step(path: Path) -> Optional[int]:
    """N of a ``checkpoint_<N>`` folder (or of a file in one); None for anything else."""
    for part in (path.name, path.parent.name):
        prefix, _, number = part.rpartition("_")
        if prefix == "checkpoint" and number.isdigit():
            return int(number)
    return None
