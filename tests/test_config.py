"""Recipes: defaults -> YAML -> overrides, strict keys and types, run-folder round trip."""

import dataclasses

import pytest

from siammae.config import (
    CROSS_RULES,
    GROUPS,
    RECIPES_DIR,
    RULES,
    Config,
    ConfigError,
    dump_config,
    load_config,
    read_config,
)
from siammae.models import METHODS


def write(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(text)
    return path


def test_override_order_defaults_then_recipe_then_command_line(tmp_path):
    assert load_config().optim.base_lr == pytest.approx(1.5e-4)
    recipe = write(tmp_path, "optim:\n  base_lr: 1e-3\nmodel:\n  arch: vit_tiny\n")
    cfg = load_config(recipe)
    assert cfg.optim.base_lr == pytest.approx(1e-3) and cfg.model.arch == "vit_tiny"
    cfg = load_config(recipe, ["optim.base_lr=2e-3", "data.shards=/data/shards"])
    assert cfg.optim.base_lr == pytest.approx(2e-3)
    assert cfg.data.shards == ["/data/shards"]
    assert cfg.model.arch == "vit_tiny"


def test_yes_no_on_off_in_an_override_mean_what_the_key_takes():
    """YAML 1.1 reads no/yes/on/off as booleans; on the command line they stay words for a word-valued key
    (train.mixed_precision=no) and still switch a boolean one."""
    cfg = load_config("tiny", ["train.mixed_precision=no", "model.norm_pix_loss=yes"])
    assert cfg.train.mixed_precision == "no" and cfg.model.norm_pix_loss is True
    assert load_config("tiny", ["model.norm_pix_loss=off", "train.mixed_precision=bf16"]).model.norm_pix_loss is False
    assert load_config(None, ["model.norm_pix_loss=false"]).model.norm_pix_loss is False


def test_unknown_key_in_recipe_names_key_file_and_closest(tmp_path):
    recipe = write(tmp_path, "optim:\n  base_lrr: 1e-3\n")
    with pytest.raises(ConfigError) as e:
        load_config(recipe)
    msg = str(e.value)
    assert "optim.base_lrr" in msg and str(recipe) in msg and "optim.base_lr" in msg.split("did you mean")[1]


def test_unknown_key_or_group_in_override():
    with pytest.raises(ConfigError, match=r"'trian.epochs' in override.*did you mean 'train.epochs'"):
        load_config(None, ["trian.epochs=3"])
    with pytest.raises(ConfigError, match="expected group.key=value"):
        load_config(None, ["train.epochs"])


def test_wrong_type_names_key_and_expected_type(tmp_path):
    with pytest.raises(ConfigError, match=r"'train.global_batch_size'.*expected int, got 'big'"):
        load_config(None, ["train.global_batch_size=big"])
    with pytest.raises(ConfigError, match=r"'model.mask_ratio'.*expected list of float"):
        load_config(write(tmp_path, "model:\n  mask_ratio: {a: 1}\n"))
    with pytest.raises(ConfigError, match=r"'siammae.decoder'.*not one of cross-self, cross, joint"):
        load_config(None, ["siammae.decoder=crossself"])
    with pytest.raises(ConfigError, match="expected bool"):
        load_config(None, ["model.norm_pix_loss=maybe"])


def test_values_are_converted():
    cfg = load_config(None, ["train.epochs=3", "optim.clip_grad=0", "model.mask_ratio=[0, 0.9]"])
    assert cfg.train.epochs == 3.0 and isinstance(cfg.train.epochs, float)
    assert cfg.model.mask_ratio == [0.0, 0.9]


def test_cross_key_checks():
    with pytest.raises(ConfigError, match="multiple of model.patch_size"):
        load_config(None, ["model.img_size=100"])
    with pytest.raises(ConfigError, match="data.num_frames"):
        load_config(None, ["model.mask_ratio=[0.0, 0.5, 0.9]"])


def test_yaml_is_read_safely(tmp_path):
    recipe = write(tmp_path, "train:\n  output_dir: !!python/object/apply:os.system ['echo hacked']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(recipe)


def test_resolved_config_round_trips(tmp_path):
    cfg = load_config(None, ["model.arch=vit_base", "optim.betas=[0.9, 0.99]", "eval.topk=5"])
    dump_config(cfg, tmp_path / "config.yaml")
    assert read_config(tmp_path / "config.yaml") == cfg


def test_inherit(tmp_path):
    write(tmp_path, "model:\n  arch: vit_base\noptim:\n  base_lr: 1e-3\n", "parent.yaml")
    child = write(tmp_path, "inherit: parent.yaml\noptim:\n  base_lr: 2e-3\n", "child.yaml")
    cfg = load_config(child)
    assert cfg.model.arch == "vit_base" and cfg.optim.base_lr == pytest.approx(2e-3)


def test_a_recipe_that_switches_method_drops_the_parents_method_section(tmp_path):
    write(tmp_path, "siammae:\n  context_positions: false\n", "parent.yaml")
    child = write(tmp_path, "inherit: parent.yaml\nmodel:\n  method: cmae\n", "child.yaml")
    assert load_config(child).model.method == "cmae"
    # set on the child itself or the command line, the other method's key is still refused
    with pytest.raises(ConfigError, match="siammae.* keys are set"):
        load_config(child, ["siammae.context_positions=false"])


def test_missing_recipe_is_a_clear_error():
    with pytest.raises(ConfigError, match="recipe 'nosuch' not found"):
        load_config("nosuch")


@pytest.mark.parametrize(
    "recipe", sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml"))
)
def test_every_packaged_recipe_loads(recipe):
    load_config(recipe)


# ----------------------------------------------------------------------------- value rules

# One value of the right type that each key refuses, as it would be typed on the command line.
BAD = {
    "model.method": "dino",
    "videomae.tubelet": "0",
    "maest.tubelet": "0",
    "model.arch": "vit_huge",
    "model.patch_size": "0",
    "model.img_size": "0",
    "siammae.encoder": "twin",
    "siammae.decoder": "self",
    "cropmae.encoder": "twin",
    "rsp.stoch": "0",
    "rsp.discrete": "1",
    "rsp.kl_scale": "-1",
    "rsp.kl_balance": "2",
    "rsp.free_bits": "-1",
    "rsp.noise_scale": "-1",
    "tobo.mim_weight": "-1",
    "tobo.tobo_weight": "-1",
    "cropmae.decoder": "self",
    "model.decoder_depth": "0",
    "model.decoder_dim": "130",  # not a multiple of 4
    "model.decoder_heads": "0",
    "model.mask_ratio": "[0.0, 1.0]",
    "model.masking": "block",
    "model.attention": "flash",
    "model.init": "xavier",
    "model.sdpa_backend": "cudnn",
    "model.drop_path": "1.0",
    "data.num_frames": "1",
    "data.repeated_sampling": "0",
    "data.crop_scale": "[1.0, 0.5]",
    "data.crop_ratio": "[0.0, 1.0]",
    "data.views": "both",
    "data.local_crop_scale": "[0.0, 0.5]",
    "data.local_crop_ratio": "[2.0, 1.0]",
    "data.hflip": "1.5",
    "data.shuffle_buffer": "0",
    "data.num_workers": "-1",
    "optim.base_lr": "-1e-4",
    "optim.min_lr": "-1e-6",
    "optim.weight_decay": "-0.05",
    "optim.betas": "[0.9, 1.0]",
    "optim.warmup_epochs": "-1",
    "optim.warmup_samples": "-1",
    "optim.clip_grad": "-1",
    "optim.encoder_lr_scale": "-0.3",
    "train.output_dir": "",
    "train.epochs": "-1",
    "train.epoch_samples": "0",
    "train.samples": "-1",
    "train.global_batch_size": "0",
    "train.grad_accum": "0",
    "train.mixed_precision": "fp8",
    "train.seed": "-1",
    "train.log_every": "0",
    "train.save_every": "0",
    "train.keep_last": "-1",
    "train.recon_every": "-1",
    "train.recon_samples": "0",
    "train.max_nonfinite": "0",
    "train.log_with": "neptune",
    "cmae.feature_decoder_depth": "0",
    "cmae.momentum": "1.5",
    "cmae.momentum_end": "-0.1",
    "cmae.nce_temperature": "0",
    "cmae.nce_weight": "-1",
    "data.view_shift": "-1",
    "data.pair_gap": "[0,4]",
    "eval.protocol": "stc",
    "eval.topk": "0",
    "eval.queue": "-1",
    "eval.radius": "-1",
    "eval.temperature": "0",
    "eval.every": "-1",
    "eval.sequences": "-1",
    "eval.size": "-1",
}

# Keys for which every value of the right type is acceptable here, and why.
ANY_VALUE = {
    "model.norm_pix_loss": "a bool: both values are valid",
    "siammae.context_positions": "a bool: both values are valid",
    "cmae.target_augment": "a bool: both values are valid",
    "cropmae.context_positions": "a bool: both values are valid",
    "data.shards": "paths: resolved (and refused if missing or empty) by data.resolve_shards at start",
    "train.resume": "auto, never or a checkpoint folder, checked by the trainer at start",
    "eval.davis": "a DAVIS folder (empty = off), checked by the monitor at start",
}


def all_keys():
    """Every group's keys and every registered method's own section's."""
    cfg = Config()
    sections = [*GROUPS, *(m for m in METHODS if getattr(cfg, m) is not None)]
    return [f"{g}.{f.name}" for g in sections for f in dataclasses.fields(getattr(cfg, g))]


def test_every_key_has_a_rule_or_a_reason():
    keys = all_keys()
    missing = [k for k in keys if k not in BAD and k not in ANY_VALUE]
    assert not missing, f"keys with neither a bad value in BAD nor a reason in ANY_VALUE: {missing}"
    assert not (set(BAD) | set(ANY_VALUE)) - set(keys), "BAD / ANY_VALUE name keys that no longer exist"
    assert not set(BAD) & set(ANY_VALUE)
    assert set(RULES) <= set(keys) and all(set(k) <= set(keys) for k, _, _ in CROSS_RULES)


@pytest.mark.parametrize("key", sorted(BAD))
def test_bad_value_is_refused_up_front(key):
    group = key.split(".")[0]
    recipe = METHODS[group].recipe if group in METHODS else "tiny"  # a method's keys: checked in its runs
    with pytest.raises(ConfigError) as e:
        load_config(recipe, [f"{key}={BAD[key]}"])
    msg = str(e.value)
    assert key in msg and "\n" not in msg


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.grad_accum=0", "train.grad_accum=0 (from the command line): must be >= 1"),
        ("data.crop_scale=[0.5]", "data.crop_scale=[0.5] (from the command line): must be [min, max]"),
        ("train.save_every=0", "train.save_every=0 (from the command line): must be >= 1"),
        ("train.log_every=0", "train.log_every=0 (from the command line): must be >= 1"),
        ("optim.betas=[0.9]", "optim.betas=[0.9] (from the command line): must be two numbers in [0, 1)"),
    ],
)
def test_values_that_used_to_crash_later(override, expected):
    with pytest.raises(ConfigError) as e:
        load_config("tiny", [override])
    assert str(e.value).startswith(expected)


def test_rule_messages_name_each_key_value_and_source(tmp_path):
    recipe = write(tmp_path, "train:\n  global_batch_size: 30\n")
    with pytest.raises(ConfigError) as e:
        load_config(recipe, ["train.grad_accum=4"])
    assert str(e.value) == (
        f"train.global_batch_size=30 (from {recipe}), train.grad_accum=4 (from the command line): "
        "train.global_batch_size must be divisible by train.grad_accum"
    )
    with pytest.raises(ConfigError, match=r"model\.patch_size=16 \(the default\)"):
        load_config(None, ["model.img_size=100"])
    with pytest.raises(ConfigError, match=rf"data\.hflip=2\.0 \(from {recipe}\): must be a probability"):
        load_config(write(tmp_path, "data:\n  hflip: 2\n"))
    # An override may fix a recipe's bad value: only the resolved value is checked.
    assert load_config(write(tmp_path, "data:\n  hflip: 2\n"), ["data.hflip=0.5"]).data.hflip == 0.5


def test_cross_key_rules_between_good_values():
    for overrides, rule in [
        (["model.mask_ratio=[0.0, 0.0]"], "last frame must mask at least one patch"),
        (["model.mask_ratio=[0.99, 0.9]"], "keep at least one"),  # 64 patches: int(64 x 0.01) = 0 visible
        (["model.decoder_heads=3"], "divisible by model.decoder_heads"),
        (["train.samples=0", "train.epochs=0"], "the run needs a length"),
        (["optim.min_lr=0.01"], "must not exceed the peak lr"),  # tiny's peak: 1.6e-2 x 16 / 256 = 1e-3
        (["train.global_batch_size=16", "train.grad_accum=3"], "divisible by train.grad_accum"),
    ]:
        with pytest.raises(ConfigError, match=rule):
            load_config("tiny", overrides)
    # At the limits: a constant lr (min_lr = peak, as ucf101_vitt16), 1 visible patch, 1 masked patch.
    load_config("tiny", ["optim.min_lr=1e-3"])
    load_config("tiny", ["model.img_size=32", "model.mask_ratio=[0.0, 0.9]"])  # 16 patches: 1 visible
    load_config("tiny", ["model.mask_ratio=[0.0, 0.01]"])  # 64 patches: 1 masked


def test_read_config_checks_values_too(tmp_path):
    cfg = load_config("tiny")
    dump_config(cfg, tmp_path / "config.yaml")
    text = (tmp_path / "config.yaml").read_text().replace("grad_accum: 1", "grad_accum: 0")
    (tmp_path / "config.yaml").write_text(text)
    with pytest.raises(ConfigError, match=rf"train\.grad_accum=0 \(from {tmp_path / 'config.yaml'}\)"):
        read_config(tmp_path / "config.yaml")


def test_run_folders_of_earlier_versions_still_load(tmp_path):
    """A config.yaml written before train.tensorboard became train.log_with reads back as the same run."""
    import yaml

    for old, new in ((True, "tensorboard"), (False, "none")):
        mapping = Config().to_dict()
        mapping["train"].pop("log_with")
        mapping["train"]["tensorboard"] = old
        (tmp_path / "config.yaml").write_text(yaml.safe_dump(mapping))
        assert read_config(tmp_path / "config.yaml").train.log_with == new
    with pytest.raises(ConfigError, match="unknown key 'train.tensorboard'"):  # recipes get no such leniency
        load_config(None, ["train.tensorboard=true"])


def test_init_timm_is_for_frame_methods_only():
    assert load_config("tiny", ["model.init=timm"]).model.init == "timm"
    with pytest.raises(ConfigError, match="model.init=timm is for the frame methods"):
        load_config("videomae_tiny", ["model.init=timm"])
