"""One strict configuration path: typed defaults -> recipe YAML -> ``group.key=value`` overrides.

Every default lives in the dataclasses below (nowhere else: code reads ``cfg.group.key``, never a
``.get(key, default)``). A recipe may only set keys that exist here; an unknown key or a value of the
wrong type is a :class:`ConfigError` that names the key, where it came from and, for a typo, the
closest valid key. Once resolved, every value is checked against its rule (:data:`RULES`, ranges, list
lengths, choices) and the rules between keys (:data:`CROSS_RULES`), so a bad value fails before any
work, in one line naming key, value, source and rule. The resolved config is written to the run folder
and reads back identically.

Besides the groups below (model, data, optim, train, eval), a recipe has one section for its method's
own keys, named after it (``siammae:``, ``cmae:``, ...): the method module's ``Options`` dataclass and
rules, from the registry :data:`siammae.models.METHODS`.

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
from siammae.models import METHODS

RECIPES_DIR = Path(__file__).parent / "recipes"
GROUPS = ("model", "data", "optim", "train", "eval")


class ConfigError(SiammaeError):
    """A recipe or override that does not fit the schema; the message is one line for the user."""


def _choices(default, *choices):
    """A string field restricted to ``choices`` (checked on load); a callable gives them when asked."""
    return field(
        default=default, metadata={"choices": choices[0] if len(choices) == 1 and callable(choices[0]) else choices}
    )


@dataclass
class ModelConfig:
    # A registered pre-training method (siammae.models.METHODS): siammae, cmae (frame pairs), videomae,
    # maest (whole clips). Its own keys are in its section (siammae:, cmae:, ...).
    method: str = _choices("siammae", lambda: tuple(METHODS))
    # Encoder: a timm ViT. Size names follow timm (vit_tiny/small/base/large).
    arch: str = _choices("vit_small", "vit_tiny", "vit_small", "vit_base", "vit_large")
    patch_size: int = 16
    img_size: int = 224
    # The paper does not state the decoder size; these are MAE's defaults (8 blocks x 512 x 16 heads).
    decoder_depth: int = 8
    decoder_dim: int = 512
    decoder_heads: int = 16
    # One ratio per frame, earliest first: f1 unmasked, f2 95% masked (paper, Sec. 3.2). The clip
    # methods take one ratio for the whole clip (0.9 in both papers).
    mask_ratio: List[float] = field(default_factory=lambda: [0.0, 0.95])
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
    # Pairs drawn at load time: [min, max] gap in frames at 30 fps (the paper: [4, 48]). The shards then
    # hold runs of frames (siammae shard --frames 25 --gap 48-48: every 2nd frame over 48), and every
    # time a sample is read a new pair is drawn from its run, as the paper draws a new pair from each
    # video every epoch. [] = read the stored frames as they are (fixed pairs).
    pair_gap: List[int] = field(default_factory=list)
    # The views of a sample: "frames" (its frames, one shared crop: SiamMAE, CMAE) or "crops" (CropMAE:
    # a global crop of its first frame, data.crop_scale, and a local crop of that, local_crop_scale, in
    # area of the global crop; each view flipped on its own).
    views: str = _choices("frames", "frames", "crops")
    local_crop_scale: List[float] = field(default_factory=lambda: [0.3, 0.6])
    local_crop_ratio: List[float] = field(default_factory=lambda: [0.75, 1.3333333])
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
    # J&F during pre-training (siammae.train.monitor): a DAVIS-format folder; empty = no evaluation.
    davis: str = ""
    every: int = 0  # optimizer steps between evaluations; 0 = at every checkpoint (train.save_every)
    sequences: int = 0  # the first N sequences of the val split; 0 = all
    size: int = 0  # short side of the frames fed to the encoder; 0 = the protocol's (480)


@dataclass(eq=False)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    # Methods' own sections, made when first set or read (``cfg.cmae``): name -> its Options.
    sections: dict = field(default_factory=dict, repr=False)

    def __getattr__(self, name: str):
        """``cfg.<method>``: that method's section (its defaults until a recipe sets them)."""
        if name != "sections" and name in METHODS:
            if name not in self.sections:
                self.sections[name] = METHODS[name].options()
            return self.sections[name]
        raise AttributeError(name)

    def __eq__(self, other) -> bool:
        return isinstance(other, Config) and self.to_dict() == other.to_dict()

    def to_dict(self) -> dict:
        """Every group, and the section of the run's method (the only one it reads)."""
        out = {g: dataclasses.asdict(getattr(self, g)) for g in GROUPS}
        section = getattr(self, self.model.method)
        if section is not None:
            out[self.model.method] = dataclasses.asdict(section)
        return out


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


def _clips(method: str) -> bool:
    """A method that encodes whole clips (one mask ratio for the clip, space-time masking)."""
    return METHODS[method].clips


def _visible(patches: int, ratio: float) -> int:
    """Visible patches of a frame with ``ratio`` masked (the same rounding as siammae.models.masking.num_visible)."""
    return int(patches * (1.0 - ratio))


RULES = {
    "model.patch_size": _at_least(1),
    "model.img_size": _at_least(1),
    "model.decoder_depth": _at_least(1),
    "model.decoder_dim": (lambda v: v >= 4 and v % 4 == 0, "must be a positive multiple of 4 (sin-cos positions)"),
    "model.decoder_heads": _at_least(1),
    "model.mask_ratio": (lambda v: all(0 <= r < 1 for r in v), "each ratio must be in [0, 1)"),
    "model.drop_path": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "data.num_frames": _at_least(2, " (context frames, then the target frame)"),
    "data.repeated_sampling": _at_least(1),
    "data.crop_scale": (lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1, "must be [min, max] with 0 < min <= max <= 1"),
    "data.crop_ratio": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "must be [min, max] with 0 < min <= max"),
    "data.hflip": (lambda v: 0 <= v <= 1, "must be a probability in [0, 1]"),
    "data.view_shift": _at_least(0, " (pixels; 0 = no shift)"),
    "data.local_crop_scale": (
        lambda v: len(v) == 2 and 0 < v[0] <= v[1] <= 1,
        "must be [min, max] with 0 < min <= max <= 1",
    ),
    "data.local_crop_ratio": (lambda v: len(v) == 2 and 0 < v[0] <= v[1], "must be [min, max] with 0 < min <= max"),
    "data.pair_gap": (
        lambda v: len(v) == 0 or (len(v) == 2 and 1 <= v[0] <= v[1]),
        "must be [] or [min, max] with 1 <= min <= max",
    ),
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
    (
        ("model.img_size", "model.patch_size"),
        lambda size, p: size % p == 0,
        "model.img_size must be a multiple of model.patch_size",
    ),
    (
        ("model.decoder_dim", "model.decoder_heads"),
        lambda dim, heads: dim % heads == 0,
        "model.decoder_dim must be divisible by model.decoder_heads",
    ),
    (
        ("model.method", "model.mask_ratio", "data.num_frames"),
        lambda method, ratios, frames: _clips(method) or len(ratios) == frames,
        "model.mask_ratio needs one ratio per frame",
    ),
    (
        ("data.views", "data.num_frames"),
        lambda views, frames: views == "frames" or frames == 2,
        "data.views=crops makes two views of one frame: data.num_frames must be 2",
    ),
    (
        ("data.pair_gap", "data.num_frames"),
        lambda gap, frames: not gap or frames == 2,
        "data.pair_gap draws a pair (2 frames) from each run of frames: data.num_frames must be 2",
    ),
    (
        ("model.masking", "model.method"),
        lambda masking, method: masking != "spacetime" or _clips(method),
        "model.masking=spacetime draws over the whole clip (a frame's share varies): for videomae / maest, not "
        "siammae / cmae, whose frames are encoded one by one",
    ),
    (
        ("model.method", "model.mask_ratio", "model.img_size", "model.patch_size"),
        lambda method, ratios, size, p: _clips(method) or all(_visible((size // p) ** 2, r) >= 1 for r in ratios[:-1]),
        "every context frame (all but the last) must keep at least one of its (img_size / patch_size)^2 "
        "patches visible",
    ),
    (
        ("model.mask_ratio", "model.img_size", "model.patch_size"),
        lambda ratios, size, p: _visible((size // p) ** 2, ratios[-1]) < (size // p) ** 2,
        "the last frame must mask at least one patch (the loss is over the masked ones; a clip method: the clip)",
    ),
    (
        ("train.global_batch_size", "train.grad_accum"),
        lambda batch, accum: batch % accum == 0,
        "train.global_batch_size must be divisible by train.grad_accum",
    ),
    (
        ("train.samples", "train.epochs"),
        lambda samples, epochs: samples > 0 or epochs > 0,
        "the run needs a length: train.samples > 0 or train.epochs > 0",
    ),
    (
        ("optim.min_lr", "optim.base_lr", "train.global_batch_size"),
        lambda min_lr, base_lr, batch: min_lr <= base_lr * batch / 256 * (1 + 1e-9),  # equal is fine (a constant lr)
        "optim.min_lr must not exceed the peak lr, optim.base_lr x train.global_batch_size / 256",
    ),
]


# ----------------------------------------------------------------------------- type checking


def _type_name(tp) -> str:
    if typing.get_origin(tp) is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if typing.get_origin(tp) is typing.Union:
        inner = [a for a in typing.get_args(tp) if a is not type(None)]
        return f"{_type_name(inner[0])} or null"
    return tp.__name__


_WORDS = {"yes": True, "on": True, "y": True, "no": False, "off": False, "n": False}


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
        if isinstance(value, str) and value.lower() in _WORDS:  # an override's yes/no/on/off
            return _WORDS[value.lower()]
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


def _group(cfg: Config, name: str):
    """The group or method section ``name`` of ``cfg`` (None: no such group, or a method without keys)."""
    return getattr(cfg, name) if name in GROUPS or name in METHODS else None


def _all_keys(cfg: Config) -> list:
    named = [*GROUPS, *(m for m in METHODS if _group(cfg, m) is not None)]
    return [f"{g}.{k}" for g in named for k in _group_fields(_group(cfg, g))]


def _set(cfg: Config, dotted: str, value, source: str) -> None:
    """Set ``group.key`` on ``cfg`` after checking that it exists and has the right type."""
    group_name, _, key = dotted.partition(".")
    group = _group(cfg, group_name)
    if group is None or not key:
        raise ConfigError(f"unknown key '{dotted}' in {source}{_closest(dotted, _all_keys(cfg))}")
    fields = _group_fields(group)
    if key not in fields:
        options = [f"{group_name}.{k}" for k in fields]
        raise ConfigError(f"unknown key '{dotted}' in {source}{_closest(dotted, options)}")
    hints = typing.get_type_hints(type(group))
    converted = _convert(value, hints[key], f"'{dotted}' in {source}")
    choices = fields[key].metadata.get("choices")
    choices = choices() if callable(choices) else choices
    if choices and converted not in choices:
        raise ConfigError(f"'{dotted}' in {source}: {converted!r} is not one of {', '.join(choices)}")
    setattr(group, key, converted)


def _apply_mapping(cfg: Config, mapping, source: str, sources: dict) -> None:
    """Set every key of a recipe's ``mapping``, recording ``source`` as where each one came from."""
    if not isinstance(mapping, dict):
        raise ConfigError(f"{source}: expected a mapping of groups ({', '.join(GROUPS)}, and the method's section)")
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
    inherited = cfg.model.method
    _apply_mapping(cfg, data, str(path), sources)
    if cfg.model.method != inherited:
        # A recipe that switches method (cmae_tiny on tiny) takes the parent's model, data and schedule,
        # not the parent method's own section, which the new method would never read.
        cfg.sections.pop(inherited, None)
        for key in [k for k in sources if k.startswith(f"{inherited}.")]:
            del sources[key]


def parse_override(text: str):
    """``group.key=value`` -> (``group.key``, value parsed as YAML so ``1e-4``, ``[1,2]``, ``null`` work)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override '{text}': expected group.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    if isinstance(value, bool) and raw.strip().lower() not in ("true", "false"):
        value = raw.strip()  # YAML 1.1 reads no/yes/on/off as booleans: train.mixed_precision=no is the word
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

    method = cfg.model.method
    own_rules, own_cross = METHODS[method].rules()

    def name(key):  # a method's rules name its own keys options.<key>
        return f"{method}.{key[len('options.') :]}" if key.startswith("options.") else key

    def value(key):
        group, _, field_name = key.partition(".")
        return getattr(_group(cfg, group), field_name)

    def refuse(keys, text):
        shown = ", ".join(f"{k}={_show(value(k))} ({sources.get(k, 'the default')})" for k in keys)
        raise ConfigError(f"{shown}: {text}")

    rules = [*RULES.items(), *((f"{method}.{k}", rule) for k, rule in own_rules.items())]
    for key, (holds, text) in rules:
        if not holds(value(key)):
            refuse([key], text)
    for keys, holds, text in [*CROSS_RULES, *own_cross]:
        keys = [name(k) for k in keys]
        if not holds(*map(value, keys)):
            refuse(keys, text)
    for other in sorted(set(cfg.sections) - {method}):  # e.g. cmae.momentum set for a siammae run
        if cfg.sections[other] != METHODS[other].options():
            refuse(["model.method"], f"{other}.* keys are set, which only method {other} reads")


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
# Method keys that 0.1.0 kept under model: (every run folder had all of them) -> the method that reads
# them now; None: every method whose section has that key (the clip methods' tubelet).
MOVED = {
    "encoder": "siammae",
    "decoder": "siammae",
    "tubelet": None,
    "feature_decoder_depth": "cmae",
    "momentum": "cmae",
    "momentum_end": "cmae",
    "nce_temperature": "cmae",
    "nce_weight": "cmae",
}


def _renamed(mapping: dict) -> dict:
    out = {group: dict(values) if isinstance(values, dict) else values for group, values in mapping.items()}
    for old, (new, convert) in RENAMED.items():
        group, key = old.split(".")
        if isinstance(out.get(group), dict) and key in out[group]:
            new_group, new_key = new.split(".")
            out.setdefault(new_group, {})[new_key] = convert(out[group].pop(key))
    model = out.get("model")
    if isinstance(model, dict):
        method = model.get("method", ModelConfig.method)
        section = METHODS[method].options() if method in METHODS else None
        for key, owner in MOVED.items():
            if key not in model:
                continue
            value = model.pop(key)  # the run's method reads it, or it was another method's default
            if owner in (method, None) and section is not None and hasattr(section, key):
                out.setdefault(method, {})[key] = value
    return out


def config_from_mapping(mapping: dict, source: str) -> Config:
    """A resolved config given as a mapping (``Config.to_dict()``, e.g. kept in an exported file's
    metadata, or a run folder's config.yaml from an earlier version: :data:`RENAMED`), checked as
    strictly as a recipe; ``source`` names it in errors."""
    cfg, sources = Config(), {}
    _apply_mapping(cfg, _renamed(mapping), source, sources)
    validate(cfg, sources)
    return cfg
