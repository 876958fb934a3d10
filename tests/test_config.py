"""Recipes: defaults -> YAML -> overrides, strict keys and types, run-folder round trip."""

import pytest

from siammae.config import RECIPES_DIR, ConfigError, dump_config, load_config, read_config


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
    with pytest.raises(ConfigError, match=r"'model.decoder'.*not one of cross-self, cross, joint"):
        load_config(None, ["model.decoder=crossself"])
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


def test_missing_recipe_is_a_clear_error():
    with pytest.raises(ConfigError, match="recipe 'nosuch' not found"):
        load_config("nosuch")


@pytest.mark.parametrize("recipe", sorted(str(p.relative_to(RECIPES_DIR).with_suffix("")) for p in RECIPES_DIR.rglob("*.yaml")))
def test_every_packaged_recipe_loads(recipe):
    load_config(recipe)
