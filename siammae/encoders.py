"""Load a frozen ViT encoder from whatever a user has, strictly; export it in timm's layout.

Sources (:func:`load_encoder`):

- a training run folder (``config.yaml`` + ``checkpoints/checkpoint_<N>/``): the newest checkpoint
  with the trainer's ``complete`` marker (others may be half written and are skipped);
- one checkpoint folder or its ``model.safetensors`` / ``pytorch_model.bin``: the architecture comes
  from the run's ``config.yaml`` found above it;
- an exported ``encoder.safetensors`` (:func:`export_encoder`): its metadata names the timm model;
- a timm ViT name plus ``weights`` (DINO, MAE, ... weights a user has locally): patch and image size
  are read off the weights' shapes;
- published weights by name, through timm's own pretrained mechanism and the Hugging Face cache: a
  timm name with a pretrained tag (``vit_small_patch16_224.dino``), ``hf-hub:owner/repo`` or
  ``local-dir:PATH`` (a folder with timm's ``config.json`` + ``model.safetensors``, as
  :func:`export_timm_hub` writes it); offline, weights missing from the cache are one error naming
  the repository to download and the cache it must land in;
- a timm ViT name (or a run folder) with ``random_init=True``: random weights, only when asked.

A training checkpoint holds the whole SiamMAE; its frame encoder is ``encoder.*`` (the one that sees
the full, unmasked first frame; a ``siamese-unshared`` model's ``encoder_f2.*`` is not used). A CMAE
checkpoint's ``encoder.*`` is its online encoder; ``prefix="target_encoder."`` (``--weights-prefix``)
picks the momentum encoder instead.
Weights are read from safetensors or with ``torch.load(weights_only=True)``: never by unpickling
arbitrary objects. Loading is strict: missing, unexpected or mis-shaped keys are a
:class:`CheckpointError` that lists them (DINO's script only prints them, so a wrong file silently
evaluates a random network).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn

from siammae.config import ConfigError, config_from_mapping, read_config
from siammae.files import write_atomic
from siammae.models import METHODS
from siammae.models.common import build_encoder, timm_spec
from siammae.weights import (
    COMPLETE,
    WEIGHT_FILES,
    CheckpointError,
    checkpoint_dirs,
    checkpoint_step,
    encoder_state_dict,
    load_strict,
    read_weights,
    weights_in,
)

EXPORT_FORMAT = "siammae-encoder"
# A clip encoder (VideoMAE, MAE-ST): its CubeEncoder state dict, the run's resolved config as JSON in
# the metadata ("config"); the method's ``frame_encoder`` rebuilds it.
CLIP_EXPORT_FORMAT = "siammae-clip-encoder"


@dataclass
class EncoderInfo:
    """What was loaded, recorded in ``propagation.json`` and in exported metadata."""

    timm_model: str  # a timm model name, or METHOD:ARCH for a clip encoder (frame_input says how it is fed)
    patch_size: int
    img_size: int
    source: str
    weights: Optional[str] = None  # the file the weights came from; None for random init
    step: Optional[int] = None  # training step of a run checkpoint
    config: Optional[object] = field(default=None, repr=False)  # a run's Config, when known
    frame_input: Optional[str] = None  # a clip encoder ("METHOD:ARCH" above): how a frame is fed to it

    def timm_kwargs(self) -> dict:
        return {"num_classes": 0, "patch_size": self.patch_size, "img_size": self.img_size}

    def to_dict(self) -> dict:
        d = asdict(self)
        d.pop("config")
        return d


def _run_config(start: Path):
    """The run's resolved config.yaml in ``start`` or up to three folders above it, else None."""
    for folder in [start, *list(start.parents)[:3]]:
        if (folder / "config.yaml").is_file():
            try:
                return read_config(folder / "config.yaml")
            except ConfigError as e:
                raise CheckpointError(str(e)) from None
    return None


def _is_timm_name(name: str) -> bool:
    import timm

    return timm.is_model(name)


# ----------------------------------------------------------------------------- building


def create_vit(info: EncoderInfo, dynamic: bool = True, empty: bool = True) -> nn.Module:
    """A timm ViT for ``info``; ``dynamic`` lets it take any input size (position embeddings
    interpolated bicubically by timm, as DINO and MAE evaluations do); ``empty`` builds it on the
    meta device, to be filled by :func:`load_strict` (random initialisation is slow on a CPU)."""
    import timm

    kwargs = info.timm_kwargs()
    if dynamic:
        kwargs["dynamic_img_size"] = True
    if empty:
        kwargs["device"] = "meta"
    try:
        return timm.create_model(info.timm_model, pretrained=False, **kwargs)
    except Exception as e:
        raise CheckpointError(f"timm cannot build {info.timm_model} with {kwargs}: {e}") from None


def _from_config(cfg, source: str, weights: Optional[Path], sd: Optional[dict], dynamic: bool):
    method = METHODS[cfg.model.method]
    step = checkpoint_step(Path(weights)) if weights else None
    info = EncoderInfo(timm_spec(cfg.model)[0], cfg.model.patch_size, cfg.model.img_size, source,
                       str(weights) if weights else None, step, cfg)  # fmt: skip
    if method.clips:  # a clip encoder, used on single frames
        model = method.frame_encoder(cfg, sd)
        info.timm_model, info.frame_input = f"{cfg.model.method}:{cfg.model.arch}", model.frame_input
        return model, info
    if sd is None:  # random init: the run's own encoder (sin-cos positions), rebuilt dynamic
        enc = build_encoder(cfg.model)
        sd = enc.state_dict()
    model = create_vit(info, dynamic)
    load_strict(model, sd, f"encoder weights from {source}")
    return model, info


def _default_vit(name: str) -> nn.Module:
    """The named timm model without weights (on the meta device: no memory, no initialisation)."""
    import timm

    return timm.create_model(name, pretrained=False, num_classes=0, device="meta")


def _infer_sizes(sd: dict, name: str) -> tuple[int, int]:
    """(patch size, image size) of ViT weights from the shapes of the patch and position embeddings."""
    default = _default_vit(name)
    patch = default.patch_embed.patch_size[0]
    img = default.patch_embed.img_size[0]
    w = sd.get("patch_embed.proj.weight")
    if w is not None and w.ndim == 4:
        patch = int(w.shape[-1])
    pos = sd.get("pos_embed")
    if pos is not None and pos.ndim == 3:
        prefix = 0 if getattr(default, "no_embed_class", False) else default.num_prefix_tokens
        side = int(round((pos.shape[1] - prefix) ** 0.5))
        if side * side == pos.shape[1] - prefix:
            img = side * patch
    else:
        img = img // default.patch_embed.patch_size[0] * patch
    return patch, img


def load_encoder(
    checkpoint: str | os.PathLike,
    weights: Optional[str | os.PathLike] = None,
    random_init: bool = False,
    prefix: Optional[str] = None,
    dynamic: bool = True,
) -> tuple[nn.Module, EncoderInfo]:
    """(timm ViT in eval mode, :class:`EncoderInfo`) for any of the sources in the module docstring."""
    path = Path(checkpoint)
    source = str(checkpoint)
    if path.exists():
        if weights is not None:
            raise CheckpointError("--weights goes with a timm model name, not with a checkpoint path")
        if path.is_dir() and (path / "config.yaml").is_file() and not any((path / n).is_file() for n in WEIGHT_FILES):
            cfg = _run_config(path)
            if random_init:
                model, info = _from_config(cfg, source, None, None, dynamic)
                return model.eval(), info
            ckpts = checkpoint_dirs(path / "checkpoints")
            if not ckpts:
                raise CheckpointError(
                    f"{path}: no complete checkpoint in {path / 'checkpoints'} "
                    f"(a checkpoint counts once the trainer has written its '{COMPLETE}' marker)"
                )
            file = weights_in(ckpts[-1])
        elif path.is_dir():
            if path.name.startswith("checkpoint_") and not (path / COMPLETE).is_file():
                raise CheckpointError(f"{path}: incomplete checkpoint (no '{COMPLETE}' marker)")
            file = weights_in(path)
            cfg = _run_config(path)
        else:
            file, cfg = path, None
        if random_init:
            raise CheckpointError("--random-init goes with a timm model name or a run folder, not a weights file")
        sd, meta = read_weights(file)
        if meta.get("format") == CLIP_EXPORT_FORMAT:
            cfg = config_from_mapping(json.loads(meta["config"]), f"{file} (metadata)")
            model, info = _from_config(cfg, source, None, sd, dynamic)
            info.weights = str(file)
            return model.eval(), info
        if meta.get("format") == EXPORT_FORMAT:
            info = EncoderInfo(meta["timm_model"], int(meta["patch_size"]), int(meta["img_size"]), source, str(file))
            model = create_vit(info, dynamic)
            load_strict(model, encoder_state_dict(sd, prefix if prefix is not None else ""), f"{file}")
            return model.eval(), info
        if cfg is None:
            cfg = _run_config(file.parent)
        if cfg is None:
            raise CheckpointError(
                f"{file}: cannot tell the architecture (no run config.yaml above it, no export metadata); "
                "pass a timm model name as the checkpoint and this file as --weights"
            )
        model, info = _from_config(cfg, source, file, encoder_state_dict(sd, prefix), dynamic)
        return model.eval(), info

    if source.startswith(("hf-hub:", "local-dir:")) or (weights is None and not random_init and "." in source):
        if weights is not None or random_init:
            raise CheckpointError(f"'{source}' names published weights: --weights / --random-init do not apply")
        return load_named(source, dynamic)
    if not _is_timm_name(source):
        raise CheckpointError(f"'{source}' is neither an existing path nor a timm model name")
    if weights is None and not random_init:
        raise CheckpointError(
            f"'{source}' is a timm model name: pass --weights FILE, --random-init for random weights, or name "
            f"published weights with a pretrained tag (e.g. {source}.dino; `timm.list_pretrained('{source}*')`)"
        )
    if weights is not None and random_init:
        raise CheckpointError("--weights and --random-init exclude each other")
    if random_init:
        default = _default_vit(source)
        info = EncoderInfo(source, default.patch_embed.patch_size[0], default.patch_embed.img_size[0], source)
        model = create_vit(info, dynamic, empty=False)
        return model.eval(), info
    sd, _ = read_weights(Path(weights))
    sd = encoder_state_dict(sd, prefix)
    patch, img = _infer_sizes(sd, source)
    info = EncoderInfo(source, patch, img, source, str(weights))
    model = create_vit(info, dynamic)
    load_strict(model, sd, f"{weights}")
    return model.eval(), info


def open_encoder(
    checkpoint, weights=None, weights_prefix=None, random_init: bool = False
) -> tuple[nn.Module, EncoderInfo]:
    """:func:`load_encoder` as the commands use it: random weights are drawn with seed 0, so a random
    baseline is the same network on every run (and ``benchmark --compare`` can say so)."""
    if random_init:
        torch.manual_seed(0)
    return load_encoder(checkpoint, weights=weights, random_init=random_init, prefix=weights_prefix)


def _hub_repo(name: str) -> Optional[str]:
    """The Hugging Face repository timm fetches ``name``'s weights from (None: not from the Hub)."""
    if name.startswith("hf-hub:"):
        return name[len("hf-hub:") :]
    if name.startswith("local-dir:"):
        return None
    from timm.models import get_pretrained_cfg

    cfg = get_pretrained_cfg(name)
    return getattr(cfg, "hf_hub_id", None) if cfg is not None else None


def load_named(name: str, dynamic: bool = True) -> tuple[nn.Module, EncoderInfo]:
    """Published weights by name through ``timm.create_model(name, pretrained=True)``: a timm name with
    a pretrained tag, ``hf-hub:owner/repo`` or ``local-dir:PATH``. -> (ViT in eval mode, info)."""
    import timm

    if name.startswith("local-dir:") and not (Path(name[len("local-dir:") :]) / "config.json").is_file():
        raise CheckpointError(f"{name}: no config.json in that folder (siammae export --format timm-hub writes one)")
    if not (name.startswith(("hf-hub:", "local-dir:")) or _is_timm_name(name)):
        raise CheckpointError(f"'{name}' is neither an existing path nor a timm model name with a pretrained tag")
    kwargs = {"num_classes": 0, **({"dynamic_img_size": True} if dynamic else {})}
    try:
        model = timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:
        from huggingface_hub import constants

        repo = _hub_repo(name)
        where = (
            f"its weights come from the Hugging Face repository {repo}: on a machine with network run "
            f"`hf download {repo}` and copy the cache to {constants.HF_HUB_CACHE} (or set HF_HOME)"
            if repo
            else ""
        )
        reason = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot load '{name}' ({reason})" + (f"; {where}" if where else "")) from None
    architecture = model.pretrained_cfg.get("architecture") or name.split(".")[0]
    info = EncoderInfo(architecture, model.patch_embed.patch_size[0], model.patch_embed.img_size[0], name, name)
    return model.eval(), info


# ----------------------------------------------------------------------------- export


def export_timm_hub(model: nn.Module, info: EncoderInfo, out: str | os.PathLike) -> Path:
    """Write the encoder as a folder in the layout timm reads back (``config.json`` +
    ``model.safetensors``, timm's own ``save_for_hf``): ``timm.create_model("local-dir:OUT")``, and the
    same folder uploaded to the Hub as is, ``hf-hub:owner/repo``."""
    from timm.models import save_for_hf

    if info.frame_input:
        raise CheckpointError(
            f"{info.timm_model} is a clip encoder, which timm has no architecture for: export it with --format siammae"
        )
    vit = create_vit(info, dynamic=False)
    load_strict(vit, {k: v.detach().to("cpu") for k, v in model.state_dict().items()}, "the encoder")
    out = Path(out)
    save_for_hf(vit, str(out), safe_serialization=True)
    return out


def export_encoder(model: nn.Module, info: EncoderInfo, out: str | os.PathLike) -> Path:
    """Write the encoder as timm's state dict to safetensors, with metadata::

        timm.create_model(meta["timm_model"], num_classes=0, **json.loads(meta["timm_kwargs"]))

    loads it with ``strict=True`` (for patch 16 at 224, plain ``create_model(name, num_classes=0)``)."""
    from safetensors.torch import save_file

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if info.frame_input:  # a clip encoder: see CLIP_EXPORT_FORMAT
        sd = {k: v.detach().to("cpu").contiguous() for k, v in model.encoder.state_dict().items()}
        meta = {"format": CLIP_EXPORT_FORMAT, "config": json.dumps(info.config.to_dict()), "source": info.source}
        save_file(sd, str(out), metadata=meta)
        return out
    sd = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    kwargs = {k: v for k, v in info.timm_kwargs().items() if k != "num_classes"}
    meta = {
        "format": EXPORT_FORMAT,
        "timm_model": info.timm_model,
        "patch_size": str(info.patch_size),
        "img_size": str(info.img_size),
        "timm_kwargs": json.dumps(kwargs),
        "source": info.source,
    }
    if info.step is not None:
        meta["step"] = str(info.step)
    return write_atomic(out, lambda tmp: save_file(sd, str(tmp), metadata=meta))
