"""Configs: every file loads, overrides are checked by key and type, YAML is safe."""

import pytest
import yaml

from natural_dreamer import AttrDict, ConfigError, load_config
from natural_dreamer.config import available_configs, save_config


def test_every_config_loads():
    names = available_configs()
    assert "smoke" in names and "defaults" not in names
    for name in names:
        config = load_config(name)
        assert config.config_name == name


def test_attribute_access_and_overrides_parse_as_yaml():
    config = load_config(
        "smoke", {"seed": "3", "world_model.batch_size": 8, "optimizer.actor_lr": "1e-4"}
    )
    assert config.seed == 3 and config.world_model.batch_size == 8
    assert config.optimizer.actor_lr == pytest.approx(1e-4)
    assert isinstance(config.world_model, AttrDict)


def test_unknown_config_lists_the_available_ones():
    with pytest.raises(ConfigError, match="available: .*smoke"):
        load_config("no_such_run")


def test_unknown_key_names_the_closest_keys():
    with pytest.raises(ConfigError, match="did you mean world_model.batch_size"):
        load_config("smoke", {"world_model.batch_sise": 4})


def test_wrong_type_names_the_key():
    with pytest.raises(ConfigError, match="world_model.batch_size must be int"):
        load_config("smoke", {"world_model.batch_size": "many"})
    with pytest.raises(ConfigError, match="train.video must be bool"):
        load_config("smoke", {"train.video": "3"})


def test_int_is_accepted_where_a_float_is_expected():
    assert load_config("smoke", {"behavior.lambda_": "1"}).behavior.lambda_ == 1.0


def test_saved_config_is_plain_yaml(tmp_path):
    config = load_config("smoke")
    save_config(config, tmp_path / "c.yml")
    assert yaml.safe_load((tmp_path / "c.yml").read_text()) == config.to_dict()


def test_yaml_that_would_build_python_objects_is_refused(tmp_path, monkeypatch):
    from natural_dreamer import config as config_module

    (tmp_path / "defaults.yml").write_text("seed: 0\n")
    (tmp_path / "evil.yml").write_text("seed: !!python/object/apply:os.system ['touch pwned']\n")
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match="evil.yml"):
        load_config("evil")
    assert not (tmp_path / "pwned").exists()


def test_malformed_yaml_names_file_and_line(tmp_path, monkeypatch):
    from natural_dreamer import config as config_module

    (tmp_path / "defaults.yml").write_text("seed: 0\n")
    (tmp_path / "bad.yml").write_text("seed: 1\nenv: [unclosed\n")
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"bad.yml:\d"):
        load_config("bad")
