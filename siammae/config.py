"""One strict configuration path: typed defaults -> recipe YAML -> ``group.key=value`` overrides.

Every default lives in the dataclasses below (nowhere else: code reads ``cfg.group.key``, never a
``.get(key, default)``). A recipe may only set keys that exist here; an unknown key or a value of the
wrong type is a :class:`ConfigError` that names the key, where it came from and, for a typo, the
closest valid key. Once resolved, every value is checked against its rule (:data:`RULES`, ranges, list
lengths, choices) and the rules between keys (:data:`CROSS_RULES`), so a bad value fails before any
work, in one line naming key, value, source and rule. The resolved config is written to the run folder
and reads back identically.

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
# Masked autoencoders of whole clips (siammae.clipmae); siammae and cmae take frame pairs, frame by frame.
CLIP_METHODS = ("videomae", "maest")


class ConfigError(SiammaeError):
    """A recipe or override that does not fit the schema; the message is one line for the user."""


def _choices(default, *choices):
    """A string field restricted to ``choices`` (checked on load)."""
    return field(default=default, metadata={"choices": choices})


@dataclass
class ModelConfig:
    # siammae: frame pairs (siammae.model). cmae: contrastive MAE on frame pairs (siammae.cmae).
    # videomae / maest: masked autoencoders of whole clips (siammae.clipmae).
    # model.encoder and model.decoder apply to siammae only.
    method: str = _choices("siammae", "siammae", "cmae", "videomae", "maest")
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
    # One ratio per frame, earliest first: f1 unmasked, f2 95% masked (paper, Sec. 3.2). The clip
    # methods take one ratio for the whole clip (0.9 in both papers).
    mask_ratio: List[float] = field(default_factory=lambda: [0.0, 0.95])
    # Clip methods: frames per cube (the Conv3d's temporal kernel and stride; 2 in both papers).
    tubelet: int = 2
    # random: an independent random mask per frame; tube: one spatial mask shared by all masked frames
    # (VideoMAE). Both honour the per-frame ratios above.
    # spacetime: one draw over all tokens of a clip (MAE-ST); needs one ratio for the clip.
    masking: str = _choices("random", "random", "tube", "spacetime")
    # MSE on per-patch normalised pixels (MAE); false: on raw (ImageNet-normalised) pixels.
    norm_pix_loss: bool = True
    # sdpa: torch.nn.functional.scaled_dot_product_attention; math: the plain softmax(QK^T)V path.
    attention: str = _choices("sdpa", "sdpa", "math")
    # SDPA kernel on any device. auto lets PyTorch pick (FlashAttention under fp16/bf16 on CUDA); a kernel
    # the device has not for the run's precision (efficient on a CPU, flash in fp32 on CUDA) stops at start.
    sdpa_backend: str = _choices("auto", "auto", "flash", "efficient", "math")
    drop_path: float = 0.0
    # Initial weights of the encoder: mae (xavier-uniform linear layers, MAE's), or timm (timm's own:
    # truncated normal of std 0.02, which `siammae propagate --random-init` also makes). The decoder
    # always starts from MAE's.
    init: str = _choices("mae", "mae", "timm")
    # cmae: the feature decoder's blocks (width and heads as the pixel decoder's; public config: 2).
    feature_decoder_depth: int = 2
    # cmae: the target encoder's EMA momentum, on BYOL's cosine from `momentum` (step 0) to
    # `momentum_end` (last step); CMAE keeps it fixed at 0.996.
    momentum: float = 0.996
    momentum_end: float = 0.996
    # cmae: L = L_rec + nce_weight x InfoNCE at nce_temperature. The public code weights InfoNCE by
    # 2 x temperature (with weight 1): 0.14 at 0.07.
    nce_temperature: float = 0.07
    nce_weight: float = 0.14


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
    # CMAE's pixel shift: the first frame's crop box moves by up to this many pixels of the shards'
    # frames in x and y (uniform integers, kept inside the frame); 0 = one box for all frames.
    view_shift: int = 0
    # Samples buffered per worker before decoding (compressed bytes, so this is cheap). A shard holds
    # each video's pairs one after another, so the buffer must span many videos: a batch drawn from a
    # buffer of a few videos' pairs trains on near-duplicates (seen in the tiny recipe).
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
    # Where metrics go besides metrics.jsonl (Accelerate's trackers): tensorboard (OUTPUT/tensorboard),
    # wandb (Weights & Biases, project "siammae"; WANDB_MODE=offline works without network), all, none.
    log_with: str = _choices("tensorboard", "tensorboard", "wandb", "all", "none")


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


# ----------------------------------------------------------------------------- value rules
# Checked once the config is resolved (a recipe's value may be fixed by an override), before any work:
# every key's own rule first, then the rules between keys. A rule is (holds, text): ``holds(value)`` is
# true for a good value; ``text`` says what a good value is. Keys without a rule take any value of their
# type: the ``_choices`` fields (checked on load), the booleans, and the paths checked where the run
# starts (data.shards, train.resume, eval.davis).


def _at_least(n, note=""):
    return (lambda v: v >= n), f"must be >= {n}{note}"


def _above(n):
    return (lambda v: v > n), f"must be > {n}"


def _optional(rule):
    holds, text = rule
    return (lambda v: v is None or holds(v)), f"{text} or null"


def _visible(patches: int, ratio: float) -> int:
    """Visible patches of a frame with ``ratio`` masked (the same rounding as siammae.masking.num_visible)."""
    return int(patches * (1.0 - ratio))


RULES = {
    "model.patch_size": _at_least(1),
    "model.img_size": _at_least(1),
    "model.decoder_depth": _at_least(1),
    "model.decoder_dim": (lambda v: v >= 4 and v % 4 == 0, "must be a positive multiple of 4 (sin-cos positions)"),
    "model.decoder_heads": _at_least(1),
    "model.mask_ratio": (lambda v: all(0 <= r < 1 for r in v), "each ratio must be in [0, 1)"),
    "model.drop_path": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "model.tubelet": _at_least(1),
    "model.feature_decoder_depth": _at_least(1),
    "model.momentum": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "model.momentum_end": (lambda v: 0 <= v <= 1, "must be in [0, 1]"),
    "model.nce_temperature": _above(0),
    "model.nce_weight": _at_least(0),
    "data.num_frames": _at_least(2, " (context frames, then the target frame)"),
    "data.repeated_sampling": _at_least(1),
    "data.crop_scale": (lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "must be [min, max] with 0 < min <= max <= 1"),
    "data.crop_ratio": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "must be [min, max] with 0 < min <= max"),
    "data.hflip": (lambda v: 0 <= v <= 1, "must be a probability in [0, 1]"),
    "data.view_shift": _at_least(0, " (pixels; 0 = no shift)"),
    "data.shuffle_buffer": _at_least(1),
    "data.num_workers": _at_least(0),
    "optim.base_lr": _at_least(0),
    "optim.min_lr": _at_least(0),
    "optim.weight_decay": _at_least(0),
    "optim.betas": (lambda v: len(v) == 2 and all(0 <= b < 1 for b in v), "must be two numbers in [0, 1)"),
    "optim.warmup_epochs": _at_least(0),
    "optim.warmup_samples": _at_least(0),
    "optim.clip_grad": _at_least(0, " (0 = no clipping)"),
    "optim.encoder_lr_scale": _at_least(0),
    "train.output_dir": (lambda v: v.strip() != "", "must not be empty"),
    "train.epochs": _at_least(0),
    "train.epoch_samples": _at_least(1),
    "train.samples": _at_least(0, " (0 = train.epochs x train.epoch_samples)"),
    "train.global_batch_size": _at_least(1),
    "train.grad_accum": _at_least(1),
    "train.seed": (lambda v: 0 <= v < 2**32, "must be in [0, 2**32) (numpy's seeds)"),
    "train.log_every": _at_least(1),
    "train.save_every": _at_least(1),
    "train.keep_last": _at_least(0, " (0 = keep every checkpoint)"),
    "train.recon_every": _at_least(0, " (0 = no pictures)"),
    "train.recon_samples": _at_least(1),
    "train.max_nonfinite": _at_least(1),
    "eval.topk": _optional(_at_least(1)),
    "eval.queue": _optional(_at_least(0)),
    "eval.radius": _optional(_at_least(0)),
    "eval.temperature": _optional(_above(0)),
    "eval.every": _at_least(0, " (0 = at every checkpoint)"),
    "eval.sequences": _at_least(0, " (0 = all)"),
    "eval.size": _at_least(0, " (0 = the protocol's)"),
}

# (keys, holds(*values), text), checked in order once every key's own rule holds. The trainer checks
# what needs the process count (the global batch divisible by processes x train.grad_accum).
CROSS_RULES = [
    (("model.img_size", "model.patch_size"), lambda size, p: size % p == 0,
     "model.img_size must be a multiple of model.patch_size"),
    (("model.decoder_dim", "model.decoder_heads"), lambda dim, heads: dim % heads == 0,
     "model.decoder_dim must be divisible by model.decoder_heads"),
    (("model.method", "model.mask_ratio", "data.num_frames"),
     lambda method, ratios, frames: method in CLIP_METHODS or len(ratios) == frames,
     "model.mask_ratio needs one ratio per frame"),
    (("model.method", "model.mask_ratio"), lambda method, ratios: method not in CLIP_METHODS or len(ratios) == 1,
     "model.mask_ratio of a clip method is one ratio for the whole clip, e.g. [0.9]"),
    (("model.method", "data.num_frames", "model.tubelet"),
     lambda method, frames, tubelet: method not in CLIP_METHODS or frames % tubelet == 0,
     "data.num_frames must be a multiple of model.tubelet (frames per cube)"),
    (("model.masking", "model.method"), lambda masking, method: masking != "spacetime" or method in CLIP_METHODS,
     "model.masking=spacetime draws over the whole clip (a frame's share varies): for videomae / maest, not "
     "siammae / cmae, whose frames are encoded one by one"),
    (("model.method", "data.num_frames"), lambda method, frames: method != "cmae" or frames == 2,
     "cmae takes frame pairs: data.num_frames must be 2"),
    (("model.init", "model.method"), lambda init, method: init == "mae" or method not in CLIP_METHODS,
     "model.init=timm is for the frame methods (siammae, cmae): a clip encoder has no timm counterpart"),
    (("model.method", "model.mask_ratio"), lambda method, ratios: method != "cmae" or ratios[0] == 0,
     "cmae's target branch sees the first frame whole: its mask ratio must be 0, e.g. [0.0, 0.65]"),
    (("model.method", "model.mask_ratio", "model.img_size", "model.patch_size"),
     lambda method, ratios, size, p: method in CLIP_METHODS or all(_visible((size // p) ** 2, r) >= 1 for r in ratios[:-1]),
     "every context frame (all but the last) must keep at least one of its (img_size / patch_size)^2 "
     "patches visible"),
    (("model.mask_ratio", "model.img_size", "model.patch_size"),
     lambda ratios, size, p: _visible((size // p) ** 2, ratios[-1]) < (size // p) ** 2,
     "the last frame must mask at least one patch (the loss is over the masked ones; a clip method: the clip)"),
    (("train.global_batch_size", "train.grad_accum"), lambda batch, accum: batch % accum == 0,
     "train.global_batch_size must be divisible by train.grad_accum"),
    (("train.samples", "train.epochs"), lambda samples, epochs: samples > 0 or epochs > 0,
     "the run needs a length: train.samples > 0 or train.epochs > 0"),
    (("optim.min_lr", "optim.base_lr", "train.global_batch_size"),
     lambda min_lr, base_lr, batch: min_lr <= base_lr * batch / 256 * (1 + 1e-9),  # equal is fine (a constant lr)
     "optim.min_lr must not exceed the peak lr, optim.base_lr x train.global_batch_size / 256"),
]


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


def _apply_mapping(cfg: Config, mapping, source: str, sources: dict) -> None:
    """Set every key of a recipe's ``mapping``, recording ``source`` as where each one came from."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping of groups (model, data, optim, train, eval)")
    for group_name, values in mapping.items():
        # A flat "group.key: value" line is allowed too.
        items = values.items() if isinstance(values, dict) else [(None, values)]
        for key, value in items:
            dotted = str(group_name) if key is None else f"{group_name}.{key}"
            _set(cfg, dotted, value, source)
            sources[dotted] = f"from {source}"


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


def _apply_recipe(cfg: Config, path: Path, sources: dict, seen=()) -> None:
    if path.resolve() in seen:
        raise ConfigError(f"{path}: 'inherit' loops back to itself")
    data = _read_yaml(path)
    if isinstance(data, dict) and "inherit" in data:
        parent = str(data.pop("inherit"))
        parent_path = path.parent / parent if (path.parent / parent).is_file() else resolve_recipe(parent)
        _apply_recipe(cfg, parent_path, sources, seen + (path.resolve(),))
    _apply_mapping(cfg, data, str(path), sources)


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
    """Defaults, then the recipe (if any), then ``group.key=value`` overrides, in that order; then every
    value is checked (:func:`validate`)."""
    cfg, sources = Config(), {}
    if recipe is not None:
        _apply_recipe(cfg, resolve_recipe(recipe), sources)
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, f"override '{text}'")
        sources[key] = "from the command line"
    validate(cfg, sources)
    return cfg


def _show(value) -> str:
    return repr(value) if isinstance(value, str) else str(value)


def validate(cfg: Config, sources: dict | None = None) -> None:
    """Every key's rule (:data:`RULES`), then the rules between keys (:data:`CROSS_RULES`). The error names
    each key involved with its value and where it came from (``sources``: key -> "from <where>")."""
    sources = sources or {}

    def value(key):
        group, _, name = key.partition(".")
        return getattr(getattr(cfg, group), name)

    def refuse(keys, text):
        shown = ", ".join(f"{k}={_show(value(k))} ({sources.get(k, 'the default')})" for k in keys)
        raise ConfigError(f"{shown}: {text}")

    for key, (holds, text) in RULES.items():
        if not holds(value(key)):
            refuse([key], text)
    for keys, holds, text in CROSS_RULES:
        if not holds(*map(value, keys)):
            refuse(keys, text)


# ----------------------------------------------------------------------------- run folder


def dump_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML (every key, so the file is a complete recipe)."""
    with open(path, "w") as f:
        yaml.safe_dump(cfg.to_dict(), f, sort_keys=False)


def read_config(path: str | Path) -> Config:
    """Read a resolved config (``config.yaml`` in a run folder) strictly."""
    return config_from_mapping(_read_yaml(Path(path)), str(path))


# Keys that resolved configs written by earlier versions hold (every run folder's config.yaml has every
# key): old key -> (new key, old value -> new value). Recipes get no such leniency.
RENAMED = {"train.tensorboard": ("train.log_with", lambda on: "tensorboard" if on else "none")}


def _renamed(mapping: dict) -> dict:
    out = {group: dict(values) if isinstance(values, dict) else values for group, values in mapping.items()}
    for old, (new, convert) in RENAMED.items():
        group, key = old.split(".")
        if isinstance(out.get(group), dict) and key in out[group]:
            new_group, new_key = new.split(".")
            out.setdefault(new_group, {})[new_key] = convert(out[group].pop(key))
    return out


def config_from_mapping(mapping: dict, source: str) -> Config:
    """A resolved config given as a mapping (``Config.to_dict()``, e.g. kept in an exported file's
    metadata, or a run folder's config.yaml from an earlier version: :data:`RENAMED`), checked as
    strictly as a recipe; ``source`` names it in errors."""
    cfg, sources = Config(), {}
    _apply_mapping(cfg, _renamed(mapping), source, sources)
    validate(cfg, sources)
    return cfg
