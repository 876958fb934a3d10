"""Label propagation on DAVIS-2017 with a frozen ViT: every protocol choice is a named field.

For each frame t > 0 of a sequence (the common scheme of DINO, CRW and the SiamMAE paper):

1. Features: the frame resized as the protocol says, through the ViT; tokens of the last block after
   the final norm, prefix tokens ([CLS]) dropped, each token L2-normalised -> (N, D), N = h * w.
2. Context: the first frame (ground truth) plus a FIFO queue of the last ``queue`` frames' *soft*
   predicted label maps, each with its features. Memory is bounded by the queue, not the video.
3. Affinity: cosine similarity / temperature between each target token and every context token;
   tokens outside the local window (in token units) are excluded; the top-k over all context tokens
   *jointly* get softmax weights (renormalised over the k); the soft label is their weighted sum.
4. Output: bilinear upsampling of the soft labels straight to the original frame size, argmax, a
   palette PNG named like the frame.

Small objects: an object whose first-frame mask covers too little of any token can never be
predicted. With ``first_labels="area"`` the first mask is area-averaged onto the token grid (each
token holds the fraction of each object in it) and ``keep_small`` then makes sure every object of
the first frame owns at least one token: where an object is not the majority of any token, the token
with its largest fraction is given to it outright. DINO's script instead resizes the mask with
nearest neighbour (``first_labels="nearest"``) and loses such objects (they score 0).

Presets (:data:`PROTOCOLS`) and where each value comes from:

- ``siammae``: the paper's Table 4b for DAVIS (top-k 7, queue 20, neighbourhood 20). The paper gives
  no temperature or resolution; we use CropMAE's SiamMAE evaluation: temperature 0.7, a disk of
  radius 20 tokens (dy^2 + dx^2 < r^2) not applied to the first frame, frames 480 high with the
  width rounded to the nearest multiple of the patch (854 -> 848 for patch 16, 856 for patch 8;
  CropMAE used a fixed 480x880).
- ``dino``: facebookresearch/dino ``eval_video_segmentation.py``: top-k 5, 7 previous frames, a
  square window of +-12 tokens on every context frame, temperature 0.1, short side 480 with the long
  side floored to a multiple of 64, std 0.228 (its typo of 0.229), nearest-neighbour first mask,
  per-channel min-max rescaling before the argmax. (It upsamples by the patch factor then resizes the
  argmax with nearest; we upsample once, bilinearly, to the original size.)
- ``crw``: ajabri/videowalk ``test.py``: top-k 10, 20 context frames front-padded with copies of
  frame 0, a disk of radius 12 not applied to the first frame, temperature 0.05, native 480p.
- ``siammae-jhmdb``: the paper's Table 4b for JHMDB (top-k 7, queue 20, neighbourhood 20), frames
  resized to 320x320 as CropMAE's JHMDB evaluation does, temperature 0.7 and the disk as ``siammae``.
- ``siammae-vip``: the paper's Table 4b for VIP (top-k 10, queue 20, neighbourhood 8), the long side
  880 as CropMAE's VIP evaluation, temperature 0.7 and the disk as ``siammae``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from siammae.affinity import LabelPropagator
from siammae.allocator import keep_freed_memory
from siammae.attention import attention_heads, written_out, written_out_pays
from siammae.davis import (
    DavisError,
    DavisSequence,
    load_sequence,
    read_annotation,
    read_frame,
    select_sequences,
    write_labels,
)
from siammae.errors import SiammaeError
from siammae.files import write_atomic
from siammae.pixels import IMAGENET_MEAN, IMAGENET_STD
from siammae.precision import DTYPES, autocast, resolve_precision


class ProtocolError(SiammaeError):
    """A propagation setting out of its range; one line for the user."""


class VideoError(SiammaeError):
    """A video whose frames cannot be propagated as they are (e.g. frames of different sizes)."""


@dataclass(frozen=True)
class Protocol:
    """Every knob of label propagation. Distances are in tokens (feature-grid cells)."""

    name: str
    topk: int
    queue: int  # previous predicted frames kept as context, besides the first frame
    radius: float  # local window radius; 0 = no window
    window: str  # "disk": dy^2 + dx^2 < radius^2 (CRW); "square": |dy|, |dx| <= radius (DINO)
    window_on_first: bool  # restrict the first frame's tokens too
    temperature: float
    pad_queue: bool = False  # start with the queue full of copies of frame 0 (CRW)
    short_side: int = 480  # frames resized so that their short side is this; 0 = native size
    long_side: int = 0  # instead: the long side is this (VIP's 880); 0 = use short_side
    input_size: tuple = ()  # instead: every frame resized to this (H, W) (JHMDB's 320x320); () = aspect kept
    multiple: int = 0  # the long side (and a native short side) is made a multiple of this; 0 = patch
    rounding: str = "nearest"  # how the long side reaches the multiple: "nearest" or "floor"
    mean: tuple = IMAGENET_MEAN
    std: tuple = IMAGENET_STD
    first_labels: str = "area"  # first mask onto the grid: "area" (fractions) or "nearest"
    keep_small: bool = True  # every first-frame object keeps >= 1 token (see module docstring)
    minmax: bool = False  # min-max rescale each upsampled channel before argmax (DINO)

    def __post_init__(self):
        checks = [
            (self.topk >= 1, "topk must be >= 1"),
            (self.queue >= 0, "queue must be >= 0"),
            (self.radius >= 0, "radius must be >= 0"),
            (self.window in ("disk", "square"), "window must be disk or square"),
            (self.temperature > 0, "temperature must be > 0"),
            (self.short_side >= 0 and self.multiple >= 0, "short_side and multiple must be >= 0"),
            (self.long_side >= 0, "long_side must be >= 0"),
            (len(self.input_size) in (0, 2) and all(v > 0 for v in self.input_size),
             "input_size must be (height, width) or empty"),
            (self.rounding in ("nearest", "floor"), "rounding must be nearest or floor"),
            (self.first_labels in ("area", "nearest"), "first_labels must be area or nearest"),
            (len(self.mean) == 3 and len(self.std) == 3, "mean and std need 3 values"),
        ]
        for ok, message in checks:
            if not ok:
                raise ProtocolError(f"protocol {self.name}: {message}")

    def replace(self, **changes) -> "Protocol":
        """A copy with the given knobs changed (None values are ignored); renamed ``<name>+custom``.
        The input size is one choice: setting ``short_side``, ``long_side`` or ``input_size`` clears
        the other two unless they are given too."""
        changes = {k: v for k, v in changes.items() if v is not None}
        if not changes:
            return self
        sizes = {"short_side": 0, "long_side": 0, "input_size": ()}
        if sizes.keys() & changes.keys():
            changes = {**{k: v for k, v in sizes.items() if k != "short_side"}, **changes}
        differs = any(getattr(self, k) != v for k, v in changes.items() if k != "name")
        custom = self.name if self.name.endswith("+custom") else f"{self.name}+custom"
        name = changes.pop("name", custom if differs else self.name)
        return dataclasses.replace(self, name=name, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PROTOCOLS = {
    "siammae": Protocol("siammae", topk=7, queue=20, radius=20, window="disk", window_on_first=False,
                        temperature=0.7),
    "dino": Protocol("dino", topk=5, queue=7, radius=12, window="square", window_on_first=True,
                     temperature=0.1, multiple=64, rounding="floor", std=(0.228, 0.224, 0.225),
                     first_labels="nearest", keep_small=False, minmax=True),
    "crw": Protocol("crw", topk=10, queue=20, radius=12, window="disk", window_on_first=False,
                    temperature=0.05, pad_queue=True, keep_small=False),
    "siammae-jhmdb": Protocol("siammae-jhmdb", topk=7, queue=20, radius=20, window="disk", window_on_first=False,
                              temperature=0.7, input_size=(320, 320)),
    "siammae-vip": Protocol("siammae-vip", topk=10, queue=20, radius=8, window="disk", window_on_first=False,
                            temperature=0.7, long_side=880),
}

# The preset each task uses unless told otherwise.
TASK_PRESETS = {"davis": "siammae", "jhmdb": "siammae-jhmdb", "vip": "siammae-vip"}


# ----------------------------------------------------------------------------- geometry


def resized_shape(height: int, width: int, protocol: Protocol, patch: int) -> tuple[int, int]:
    """Network input size (H', W') for a frame: short side -> ``short_side``, long side keeping the
    aspect ratio, both multiples of the patch (and of ``multiple`` for the long side)."""
    multiple = protocol.multiple or patch
    if protocol.input_size:  # a fixed size, aspect ratio not kept
        return tuple(max(patch, int(round(v / patch)) * patch) for v in protocol.input_size)
    short, long_ = min(height, width), max(height, width)
    if protocol.long_side:
        new_long, new_short = float(protocol.long_side), short * protocol.long_side / long_
        new_long = max(multiple, int(round(new_long / multiple)) * multiple)
        new_short = max(patch, int(round(new_short / patch)) * patch)
        return (new_short, new_long) if height <= width else (new_long, new_short)
    if protocol.short_side:
        new_short = protocol.short_side
        new_long = long_ * new_short / short
    else:
        new_short, new_long = short, float(long_)
    to_multiple = math.floor if protocol.rounding == "floor" else round
    new_long = max(multiple, int(to_multiple(new_long / multiple)) * multiple)
    new_short = max(patch, int(round(new_short / patch)) * patch)
    return (new_short, new_long) if height <= width else (new_long, new_short)


def first_frame_labels(labels: np.ndarray, grid: tuple[int, int], protocol: Protocol) -> torch.Tensor:
    """First-frame ids (H, W) -> soft labels (K + 1, h * w) on the token grid, K = max id."""
    num = int(labels.max()) + 1
    lab = torch.from_numpy(labels.astype(np.int64))
    if protocol.first_labels == "nearest":
        # Pixel-centre sampling, as PIL's NEAREST resize in DINO's script.
        small = F.interpolate(lab[None, None].float(), size=grid, mode="nearest-exact")[0, 0].long()
        return F.one_hot(small, num).permute(2, 0, 1).reshape(num, -1).float()
    onehot = F.one_hot(lab, num).permute(2, 0, 1).float()[None]  # (1, K+1, H, W)
    soft = F.interpolate(onehot, size=grid, mode="area")[0].reshape(num, -1)
    if protocol.keep_small:
        owner = soft.argmax(0)
        given = torch.zeros_like(owner, dtype=torch.bool)  # cells already handed to a small object
        for k in range(1, num):
            if (lab == k).any() and not (owner == k).any():
                cell = int(soft[k].masked_fill(given, -1).argmax())
                soft[:, cell] = 0
                soft[k, cell] = 1
                owner[cell] = k
                given[cell] = True
    return soft


# ----------------------------------------------------------------------------- features


# Bytes of activations one forward pass may hold when the batch size is not given. On the CPU one
# 480p frame per pass was the fastest (ViT-S/16, 2 threads: 1 frame 662 ms/frame in bf16, 3 frames 739,
# 8 frames 991; fp32 1127 / 1143 / 1297): the 1590 tokens of one frame already fill the cores, and a
# bigger batch only leaves the caches. Small frames (JHMDB's 320x320) still go several at a time.
BATCH_BUDGET = {"cpu": 32 * 2**20, "cuda": 2 * 2**30}


class FeatureExtractor:
    """Frames -> L2-normalised patch tokens of the last block after the final norm.

    ``precision`` (fp32, bf16, fp16 or auto; :mod:`siammae.precision`) is the forward pass's number
    format; the tokens come out fp32 either way. On a CPU in bf16 the encoder's attention runs written
    out as matmuls and a softmax where that is faster than the fused kernel (:mod:`siammae.attention`)."""

    def __init__(self, encoder: torch.nn.Module, protocol: Protocol, device: torch.device, precision: str = "fp32"):
        self.encoder = encoder.to(device).eval()
        self.protocol = protocol
        self.device = torch.device(device)
        self.precision = resolve_precision(precision, self.device)
        self.patch = int(encoder.patch_embed.patch_size[0])
        self.prefix = int(getattr(encoder, "num_prefix_tokens", 1))
        self.mean = torch.tensor(protocol.mean, device=device).view(1, 3, 1, 1)
        self.std = torch.tensor(protocol.std, device=device).view(1, 3, 1, 1)
        self.heads = attention_heads(self.encoder)
        self.attention = "fused"  # the attention form of the last forward pass (siammae.attention)

    @property
    def feature_dtype(self) -> torch.dtype:
        """The number format of the forward pass, which the propagation's context keeps its features in."""
        return DTYPES.get(self.precision, torch.float32)

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        return resized_shape(height, width, self.protocol, self.patch)

    def batch_frames(self, height: int, width: int, budget: Optional[int] = None) -> int:
        """Frames of (height, width) per forward pass that keep its activations within ``budget`` bytes
        (default: :data:`BATCH_BUDGET` of the device):
        about 14 token-width vectors per token live inside a block (input, norm, q, k, v, attention
        output, the MLP's 4x hidden and its activation), plus the resized input, plus the score and
        probability matrices (heads x N x N each) where attention runs written out."""
        h, w = self.input_size(height, width)
        tokens = (h // self.patch) * (w // self.patch) + self.prefix
        width_ = int(getattr(self.encoder, "embed_dim", 768))
        per_frame = tokens * width_ * 14 * (4 if self.precision == "fp32" else 2) + 3 * h * w * 4
        if written_out_pays(self.device, self.precision, 1, tokens, self.heads):
            per_frame += 2 * self.heads * tokens * tokens * 2
        budget = budget or BATCH_BUDGET.get(self.device.type, BATCH_BUDGET["cpu"])
        return max(1, min(64, budget // per_frame))

    @torch.inference_mode()
    def __call__(self, frames: List[np.ndarray]) -> torch.Tensor:
        """A list of (H, W, 3) uint8 frames of one size -> (B, h * w, D) unit-norm fp32 tokens."""
        size = self.input_size(*frames[0].shape[:2])
        x = torch.cat([self._resized(frame, size) for frame in frames])  # one full-size float frame at a time
        x = (x - self.mean) / self.std
        n = (size[0] // self.patch) * (size[1] // self.patch) + self.prefix
        unfused = written_out_pays(self.device, self.precision, len(frames), n, self.heads)
        unfused = unfused and keep_freed_memory()  # without it the written-out form is slower
        self.attention = "written-out" if unfused else "fused"
        with autocast(self.precision, self.device), written_out(self.encoder, unfused):
            tokens = self.encoder.forward_features(x)[:, self.prefix :]
        return F.normalize(tokens.float(), dim=-1)

    def _resized(self, frame: np.ndarray, size: tuple[int, int]) -> torch.Tensor:
        x = torch.tensor(frame, device=self.device).permute(2, 0, 1)[None].float() / 255.0
        if tuple(x.shape[-2:]) != size:
            x = F.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)
        return x


# ----------------------------------------------------------------------------- propagation


def soft_to_ids(soft: torch.Tensor, grid: tuple[int, int], size: tuple[int, int], minmax: bool) -> np.ndarray:
    """Soft labels (L, h*w) -> ids (H, W) uint8 at the original frame size."""
    up = F.interpolate(soft.view(1, -1, *grid), size=size, mode="bilinear", align_corners=False)[0]
    if minmax:
        lo = up.amin(dim=(1, 2), keepdim=True)
        hi = up.amax(dim=(1, 2), keepdim=True)
        up = (up - lo) / (hi - lo).clamp_min(1e-12)
    # argmax over the last, contiguous dimension: over the first one the CPU kernel is ~13x slower
    # (78 vs 6 ms for 4 labels at 480x854), same result, ties to the lowest label included.
    return up.movedim(0, -1).contiguous().argmax(-1).to(torch.uint8).cpu().numpy()


# ----------------------------------------------------------------------------- sequences


def propagate_video(
    extractor: FeatureExtractor,
    frame_paths: Sequence[Path],
    protocol: Protocol,
    first_labels: Callable[[tuple[int, int]], torch.Tensor],
    emit: Callable[[int, Optional[torch.Tensor], tuple[int, int], np.ndarray], None],
    batch_size: Optional[int] = None,
    progress: bool = True,
    name: str = "",
) -> dict:
    """The propagation loop every task shares (DAVIS masks, JHMDB joints, VIP parts).

    ``first_labels(grid)`` gives frame 0's soft labels (L, h * w) on the token grid (h, w); then, in
    frame order, ``emit(t, soft, grid, frame)`` receives each frame's propagated soft labels (L, h * w)
    (None for frame 0) and the frame (H, W, 3) uint8, to write or decode them. Frames are read and
    encoded ``batch_size`` at a time (None: as many as :meth:`FeatureExtractor.batch_frames` allows),
    so memory holds one batch and the context queue, whatever the video's length. All frames must
    have frame 0's size. Returns timing figures."""
    from tqdm import tqdm

    T = len(frame_paths)
    t_feat = t_prop = 0.0
    propagator, frame_size = None, None
    start = time.perf_counter()
    bar = tqdm(total=T, desc=name, unit="frame", dynamic_ncols=True, disable=not progress, leave=False)
    first = read_frame(frame_paths[0])  # decoded once: it also sizes the batches
    batch_size = batch_size or extractor.batch_frames(*first.shape[:2])
    for b0 in range(0, T, batch_size):
        frames = [first if t == 0 else read_frame(p) for t, p in enumerate(frame_paths[b0 : b0 + batch_size], b0)]
        frame_size = frame_size or frames[0].shape[:2]
        if any(f.shape[:2] != frame_size for f in frames):
            raise VideoError(f"video '{name}': frames differ in size from frame 0 ({frame_size[1]}x{frame_size[0]})")
        t0 = time.perf_counter()
        feats = extractor(frames)
        _sync(extractor.device)
        t_feat += time.perf_counter() - t0
        size = extractor.input_size(*frame_size)
        grid = (size[0] // extractor.patch, size[1] // extractor.patch)
        for i, frame in enumerate(frames):
            t0 = time.perf_counter()
            if propagator is None:
                propagator = LabelPropagator(protocol, grid, feats[0], first_labels(grid).to(extractor.device),
                                             store=extractor.feature_dtype)
                soft = None
            else:
                soft = propagator.step(feats[i])
            t_prop += time.perf_counter() - t0
            emit(b0 + i, soft, grid, frame)
            bar.update(1)
    bar.close()
    elapsed = time.perf_counter() - start
    return dict(frames=T, seconds=elapsed, fps=T / max(elapsed, 1e-9), feature_seconds=t_feat,
                propagation_seconds=t_prop, grid=list(grid), input_size=list(size), batch_size=batch_size,
                attention=extractor.attention)


def propagate_sequence(
    extractor: FeatureExtractor,
    seq: DavisSequence,
    protocol: Protocol,
    out_dir: Path,
    batch_size: Optional[int] = None,
    overlay: int = 0,
    progress: bool = True,
) -> dict:
    """Write ``out_dir/<seq>/<frame>.png`` for every frame of a DAVIS sequence (frame 0 = its ground
    truth). ``overlay`` > 0 also writes ``out_dir/overlays/<seq>.png``, a strip of that many frames.
    Returns timing figures."""
    seq_dir = Path(out_dir) / seq.name
    seq_dir.mkdir(parents=True, exist_ok=True)
    first_ids = read_annotation(seq.first_annotation)
    T = len(seq.frames)
    shown = set(np.linspace(0, T - 1, min(overlay, T)).round().astype(int).tolist()) if overlay else set()
    strip_frames, strip_labels = [], []

    def emit(t, soft, grid, frame):
        if frame.shape[:2] != first_ids.shape:
            raise DavisError(f"sequence '{seq.name}': frames differ in size from the first annotation "
                             f"{first_ids.shape[1]}x{first_ids.shape[0]}")
        ids = first_ids if soft is None else soft_to_ids(soft, grid, first_ids.shape, protocol.minmax)
        write_labels(seq_dir / f"{seq.frames[t].stem}.png", ids)
        if t in shown:
            strip_frames.append(frame)
            strip_labels.append(ids)

    timing = propagate_video(extractor, seq.frames, protocol, lambda grid: first_frame_labels(first_ids, grid, protocol),
                             emit, batch_size, progress, seq.name)
    if overlay:
        from PIL import Image

        from siammae.pictures import overlay_strip

        (Path(out_dir) / "overlays").mkdir(exist_ok=True)
        Image.fromarray(overlay_strip(strip_frames, strip_labels)).save(Path(out_dir) / "overlays" / f"{seq.name}.png")
    return timing


def total_timing(per_video: dict) -> dict:
    """Frames, seconds and frames/s over the per-video timings of :func:`propagate_video`."""
    frames = sum(t["frames"] for t in per_video.values())
    seconds = sum(t["seconds"] for t in per_video.values())
    return dict(frames=frames, seconds=round(seconds, 3), fps=round(frames / max(seconds, 1e-9), 3))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def choose_protocol(preset: Optional[str] = None, run_eval=None, task: str = "davis", **knobs) -> Protocol:
    """The protocol of one propagation, layered: the preset (``preset``, else for DAVIS the run's
    ``eval.protocol``, else the task's own, :data:`TASK_PRESETS`), then for DAVIS the run's own
    ``eval`` settings (top-k, queue, radius, temperature: a run's eval settings are DAVIS settings),
    then ``knobs`` (any :class:`Protocol` field; None = not given)."""
    run_eval = run_eval if task == "davis" else None
    base = PROTOCOLS[preset or (run_eval.protocol if run_eval is not None else TASK_PRESETS[task])]
    changes = {}
    if run_eval is not None:
        changes = dict(topk=run_eval.topk, queue=run_eval.queue, radius=run_eval.radius,
                       temperature=run_eval.temperature)
    changes.update({k: v for k, v in knobs.items() if v is not None})
    return base.replace(**changes)


def check_davis(davis_root, split="val", sequences=None, resolution="480p") -> List[DavisSequence]:
    """Every selected sequence's files, checked before any work starts (raises DavisError)."""
    return [load_sequence(davis_root, n, resolution) for n in select_sequences(davis_root, split, sequences)]


def propagate(
    encoder: torch.nn.Module,
    davis_root,
    out_dir,
    protocol: Protocol,
    split: str = "val",
    sequences: Optional[Sequence[str]] = None,
    resolution: str = "480p",
    device: str | torch.device = "cpu",
    batch_size: Optional[int] = None,
    overlay: int = 0,
    progress: bool = True,
    settings: Optional[dict] = None,
    precision: str = "fp32",
    workers: int = 1,
    processes=None,
) -> Optional[dict]:
    """Propagate every selected sequence into ``out_dir``; writes ``out_dir/propagation.json`` (the
    protocol, the precision, ``settings`` such as the encoder's description, per-sequence timings) and
    returns it.

    ``workers`` > 1 propagates that many sequences at once in worker processes, each with its share of
    the CPU threads. ``processes`` (Accelerate's ``PartialState`` of ``accelerate launch``, see
    :func:`siammae.parallel.launched_processes`) makes every launched process take its share of the
    sequences on its own device; the main process merges the timings, writes the one
    ``propagation.json`` and returns it, the others return None. The predictions are the same files as
    a single process writes."""
    from siammae import __version__
    from siammae.parallel import SequenceJob, merge_parts, propagate_in_workers

    state = processes
    device = state.device if state and torch.device(device).type == "cuda" else torch.device(device)
    out_dir = Path(out_dir)
    seqs = check_davis(davis_root, split, sequences, resolution)
    out_dir.mkdir(parents=True, exist_ok=True)
    job = SequenceJob(encoder, protocol, device, resolve_precision(precision, device), out_dir, batch_size, overlay)
    record = dict(
        siammae_version=__version__,
        protocol=protocol.to_dict(),
        davis=str(davis_root), split=split, resolution=resolution, sequences=[s.name for s in seqs],
        device=str(device), precision=job.precision, batch_size=batch_size or "auto",
        patch_size=int(encoder.patch_embed.patch_size[0]),
        features="last block after final norm, prefix tokens dropped, L2-normalised",
        **(settings or {}),
    )
    start = time.perf_counter()
    if state is not None:  # this process's share; the main process gathers the others' timings
        mine = seqs[state.process_index :: state.num_processes]
        timings = propagate_in_workers(job, mine, workers, progress and state.is_main_process)
        timings = merge_parts(state, timings, [s.name for s in seqs])
        if timings is None:
            return None
    else:
        timings = propagate_in_workers(job, seqs, workers, progress)
    # Wall time: with several workers or processes the sequences' own times overlap.
    total = total_timing(timings)
    wall = time.perf_counter() - start
    total.update(seconds=round(wall, 3), fps=round(total["frames"] / max(wall, 1e-9), 3))
    record["timing"] = dict(total, per_sequence=timings)
    write_atomic(out_dir / "propagation.json", json.dumps(record, indent=2) + "\n")
    return record


if __name__ == "__main__":  # accelerate launch -m siammae.propagate --davis ... (the command's options)
    from siammae.cli.propagate import propagate as _command

    _command(prog_name="python -m siammae.propagate")
