"""One strict configuration path: typed defaults -> recipe YAML -> ``group.key=value`` overrides.

Every default lives in the dataclasses below (nowhere else: code reads ``cfg.group.key``, never a
``.get(key, default)``). A recipe may only set keys that exist here; an unknown key or a value of the
wrong type is a :class:`ConfigError` that names the key, where it came from and, for a typo, the
closest valid key. The resolved config is written to the run folder and reads back identically.

Recipes are YAML files read with ``yaml.safe_load``. A recipe may be given as a path or by the name of
a packaged recipe (``tiny`` -> ``siammae/recipes/tiny.yaml``). A recipe may start with
``inherit: other`` (a name or a path relative to it) to build on another recipe.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

import yaml

from siammae.errors import SiammaeError

RECIPES_DIR = Path(__file__).parent / "recipes"


class ConfigError(SiammaeError):
    """A recipe or override that does not fit the schema; the message is one line for the user."""


def _choices(default, *choices):
    """A string field restricted to ``choices`` (checked on load)."""
    return field(default=default, metadata={"choices": choices})


@dataclass
class ModelConfig:
    # Encoder: a timm ViT. Size names follow timm (vit_tiny/small/base/large).
    arch: str = _choices("vit_small", "vit_tiny", "vit_small", "vit_base", "vit_large")
    patch_size: int = 16
    img_size: int = 224
    # siamese: one encoder, shared weights, each frame on its own (paper, Sec. 3).
    # siamese-unshared: one encoder per frame (the student reproduction). joint: visible tokens of all
    # frames concatenated through one encoder (the paper's ablation, Table 2a).
    encoder: str = _choices("siamese", "siamese", "siamese-unshared", "joint")
    # cross-self (paper default): cross-attn f2->f1, self-attn among f2, MLP, in every block.
    decoder: str = _choices("cross-self", "cross-self", "cross", "joint")
    # The paper does not state the decoder size; these are MAE's defaults (8 blocks x 512 x 16 heads).
    decoder_depth: int = 8
    decoder_dim: int = 512
    decoder_heads: int = 16
    # One ratio per frame, earliest first: f1 unmasked, f2 95% masked (paper, Sec. 3.2).
    mask_ratio: List[float] = field(default_factory=lambda: [0.0, 0.95])
    # random: an independent random mask per frame; tube: one spatial mask shared by all masked frames
    # (VideoMAE). Both honour the per-frame ratios above.
    masking: str = _choices("random", "random", "tube")
    # MSE on per-patch normalised pixels (MAE); false: on raw (ImageNet-normalised) pixels.
    norm_pix_loss: bool = True
    # sdpa: torch.nn.functional.scaled_dot_product_attention; math: the plain softmax(QK^T)V path.
    attention: str = _choices("sdpa", "sdpa", "math")
    # SDPA kernel on CUDA. auto lets PyTorch pick FlashAttention under fp16/bf16.
    sdpa_backend: str = _choices("auto", "auto", "flash", "efficient", "math")
    drop_path: float = 0.0


@dataclass
class DataConfig:
    # A folder (every *.tar in it), a glob, a brace pattern ("shards-{000..099}.tar"), or a list of them.
    shards: List[str] = field(default_factory=list)
    # Frames per sample read from the shards (f0 earlier, f1 later).
    num_frames: int = 2
    # Each decoded pair yields this many independently augmented views (paper Table 4a: 2).
    repeated_sampling: int = 2
    # Random-resized crop, the same on every frame of a sample (paper Table 4a: scale [0.5, 1]).
    crop_scale: List[float] = field(default_factory=lambda: [0.5, 1.0])
    crop_ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333333])
    hflip: float = 0.5
    # Samples buffered per worker before decoding (compressed bytes, so this is cheap). A shard holds
    # each video's pairs one after another, so the buffer must span many videos: a batch drawn from a
    # buffer of a few videos' pairs trains on near-duplicates (seen in the tiny recipe, issue 6).
    shuffle_buffer: int = 2000
    num_workers: int = 8


@dataclass
class OptimConfig:
    # lr = base_lr * global_batch / 256 (MAE's scaling rule; paper Table 4a gives 1.5e-4).
    base_lr: float = 1.5e-4
    min_lr: float = 0.0
    weight_decay: float = 0.05
    betas: List[float] = field(default_factory=lambda: [0.9, 0.95])
    # Linear warm-up length in epochs of train.epoch_samples; warmup_samples > 0 takes precedence.
    warmup_epochs: float = 40.0
    warmup_samples: int = 0
    # Max global gradient norm; 0 disables clipping. Guards fp16 runs against spikes.
    clip_grad: float = 1.0
    # The encoder's lr as a fraction of the schedule's (the decoder always gets the full lr); 1 = the paper.
    encoder_lr_scale: float = 1.0


@dataclass
class TrainConfig:
    output_dir: str = "runs/siammae"
    # Length: epochs x epoch_samples training pairs (after repeated sampling); samples > 0 overrides.
    # Counting in samples keeps a recipe's meaning the same on 1 or 64 GPUs.
    epochs: float = 2000.0
    epoch_samples: int = 240_000
    samples: int = 0
    global_batch_size: int = 2048
    grad_accum: int = 1
    mixed_precision: str = _choices("fp16", "fp16", "bf16", "no")
    seed: int = 0
    log_every: int = 20
    save_every: int = 1000
    keep_last: int = 3
    recon_every: int = 1000
    recon_samples: int = 4
    # auto: continue from the newest complete checkpoint in output_dir; never: start fresh;
    # anything else: a checkpoint folder to resume from.
    resume: str = "auto"
    # Stop when this many consecutive steps have a non-finite loss.
    max_nonfinite: int = 20
    tensorboard: bool = True


@dataclass
class EvalConfig:
    # Label-propagation defaults for this run's features (see `siammae propagate --help`).
    # Empty / None values mean "use the protocol preset".
    protocol: str = _choices("siammae", "siammae", "dino", "crw")
    topk: Optional[int] = None
    queue: Optional[int] = None
    radius: Optional[float] = None
    temperature: Optional[float] = None
    # J&F during pre-training (siammae.monitor): a DAVIS-format folder; empty = no evaluation.
    davis: str = ""
    every: int = 0  # optimizer steps between evaluations; 0 = at every checkpoint (train.save_every)
    sequences: int = 0  # the first N sequences of the val split; 0 = all
    size: int = 0  # short side of the frames fed to the encoder; 0 = the protocol's (480)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------- type checking


def _type_name(tp) -> str:
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    return tp.__name__


def _convert(value, tp, where: str):
    """Check ``value`` against the annotation ``tp`` and convert it (int -> float, str -> [str])."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None:
            return None
        inner = [a for a in typing.get_args(tp) if a is not type(None)][0]
        return _convert(value, inner, where)
    if origin is list:
        inner = typing.get_args(tp)[0]
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value] if inner is str else value
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")
        return [_convert(v, inner, where) for v in value]
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # PyYAML reads "1e-4" (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{where}: expected {_type_name(tp)}, got {value!r}")


def _closest(name: str, options) -> str:
    match = difflib.get_close_matches(name, list(options), n=1, cutoff=0.5)
    return f" (did you mean '{match[0]}'?)" if match else f" (valid: {', '.join(sorted(options))})"


def _group_fields(group) -> dict:
    return {f.name: f for f in dataclasses.fields(group)}


def _set(cfg: Config, dotted: str, value, source: str) -> None:
    """Set ``group.key`` on ``cfg`` after checking that it exists and has the right type."""
    groups = _group_fields(cfg)
    group_name, _, key = dotted.partition(".")
    if group_name not in groups or not key:
        all_keys = [f"{g}.{k}" for g in groups for k in _group_fields(getattr(cfg, g))]
        raise ConfigError(f"unknown key '{dotted}' in {source}{_closest(dotted, all_keys)}")
    group = getattr(cfg, group_name)
    fields = _group_fields(group)
    if key not in fields:
        options = [f"{group_name}.{k}" for k in fields]
        raise ConfigError(f"unknown key '{dotted}' in {source}{_closest(dotted, options)}")
    hints = typing.get_type_hints(type(group))
    converted = _convert(value, hints[key], f"'{dotted}' in {source}")
    choices = fields[key].metadata.get("choices")
    if choices and converted not in choices:
        raise ConfigError(f"'{dotted}' in {source}: {converted!r} is not one of {', '.join(choices)}")
    setattr(group, key, converted)


def _apply_mapping(cfg: Config, mapping, source: str) -> None:
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping of groups (model, data, optim, train, eval)")
    for group_name, values in mapping.items():
        if not isinstance(values, dict):
            # A flat "group.key: value" line is allowed too.
            _set(cfg, str(group_name), values, source)
            continue
        for key, value in values.items():
            _set(cfg, f"{group_name}.{key}", value, source)


# ----------------------------------------------------------------------------- recipes


def resolve_recipe(recipe: str | Path) -> Path:
    """A recipe path, or the name of a packaged recipe (``tiny``, ``base``, ``ablations/joint``)."""
    path = Path(recipe)
    if path.is_file():
        return path
    packaged = RECIPES_DIR / f"{recipe}.yaml"
    if packaged.is_file():
        return packaged
    names = sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))
    raise ConfigError(f"recipe '{recipe}' not found: not a file, nor a packaged recipe{_closest(str(recipe), names)}")


def _read_yaml(path: Path):
    try:
        with open(path) as f:
            return yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}".replace("\n", " ")) from None


def _apply_recipe(cfg: Config, path: Path, seen=()) -> None:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'inherit' loops back to itself")
    data = _read_yaml(path)
    if isinstance(data, dict) and "inherit" in data:
        parent = str(data.pop("inherit"))
        parent_path = path.parent / parent if (path.parent / parent).is_file() else resolve_recipe(parent)
        _apply_recipe(cfg, parent_path, seen + (path.resolve(),))
    _apply_mapping(cfg, data, str(path))


def parse_override(text: str):
    """``group.key=value`` -> (``group.key``, value parsed as YAML so ``1e-4``, ``[1,2]``, ``null`` work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}': expected group.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def load_config(recipe: str | Path | None = None, overrides=()) -> Config:
    """Defaults, then the recipe (if any), then ``group.key=value`` overrides, in that order."""
    cfg = Config()
    if recipe is not None:
        _apply_recipe(cfg, resolve_recipe(recipe))
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, f"override '{text}'")
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Checks that involve more than one key."""
    m = cfg.model
    if m.img_size % m.patch_size:
        raise ConfigError(f"model.img_size={m.img_size} is not a multiple of model.patch_size={m.patch_size}")
    if len(m.mask_ratio) != cfg.data.num_frames:
        raise ConfigError(
            f"model.mask_ratio has {len(m.mask_ratio)} values but data.num_frames={cfg.data.num_frames}"
        )
    if not all(0.0 <= r < 1.0 for r in m.mask_ratio):
        raise ConfigError(f"model.mask_ratio={m.mask_ratio}: each ratio must be in [0, 1)")
    if m.decoder_dim % m.decoder_heads:
        raise ConfigError(f"model.decoder_dim={m.decoder_dim} is not divisible by model.decoder_heads")
    lo, hi = cfg.data.crop_scale
    if not 0 < lo <= hi <= 1:
        raise ConfigError(f"data.crop_scale={cfg.data.crop_scale}: need 0 < min <= max <= 1")
    for key in ("every", "sequences", "size"):
        if getattr(cfg.eval, key) < 0:
            raise ConfigError(f"eval.{key}={getattr(cfg.eval, key)}: must be >= 0")
    if cfg.train.global_batch_size % cfg.train.grad_accum:
        raise ConfigError("train.global_batch_size must be divisible by train.grad_accum")


# ----------------------------------------------------------------------------- run folder


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, so the file is a complete recipe)."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)


def read_config(path: str | Path) -> Config:
    """Read a resolved config (``config.yaml`` in a run folder) strictly."""
    cfg = Config()
    _apply_mapping(cfg, _read_yaml(Path(path)), str(path))
    validate(cfg)
    return cfg
