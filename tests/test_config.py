"""Configs: every file loads, overrides are checked by key and type, YAML is safe."""

import numpy as np
import pytest
import yaml

from natural_dreamer import AttrDict, ConfigError, load_config
from natural_dreamer.config import available_configs, flatten, save_config, saved_config


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


def use_configs(folder, monkeypatch, defaults: str = "seed: 0   # {int >= 0}\n", **files):
    """Make `folder` the configs folder, holding defaults.yml and the files {name: text}."""
    from natural_dreamer import config as config_module

    (folder / "defaults.yml").write_text(defaults)
    for name, text in files.items():
        (folder / f"{name}.yml").write_text(text)
    monkeypatch.setattr(config_module, "CONFIG_DIR", folder)


def test_yaml_that_would_build_python_objects_is_refused(tmp_path, monkeypatch):
    use_configs(
        tmp_path, monkeypatch, evil="seed: !!python/object/apply:os.system ['touch pwned']\n"
    )
    with pytest.raises(ConfigError, match="evil.yml"):
        load_config("evil")
    assert not (tmp_path / "pwned").exists()


def test_malformed_yaml_names_file_and_line(tmp_path, monkeypatch):
    use_configs(tmp_path, monkeypatch, bad="seed: 1\nenv: [unclosed\n")
    with pytest.raises(ConfigError, match=r"bad.yml:\d"):
        load_config("bad")


def just_outside(spec: str) -> list:
    """Values just outside a key's declared valid values (see defaults.yml's header)."""
    from natural_dreamer.config import NUMBER_SPEC

    number = NUMBER_SPEC.match(spec)
    if number:
        kind, op, bound, open_, low, high, close = number.groups()
        integer = kind == "int"

        def below(x, inclusive):  # the nearest value that is out when x is the lower end
            if not inclusive:
                return int(x) if integer else float(x)
            return int(x) - 1 if integer else float(np.nextafter(float(x), -np.inf))

        def above(x, inclusive):
            if not inclusive:
                return int(x) if integer else float(x)
            return int(x) + 1 if integer else float(np.nextafter(float(x), np.inf))

        values = (
            [below(bound, op == ">=")]
            if op
            else [below(low, open_ == "["), above(high, close == "]")]
        )
        values += [1.5, "three"] if integer else [float("nan"), float("inf"), "three"]
        return values
    return {
        "bool": [3, "maybe"],
        "name": ["../up", "", "a/b"],
        "text": [""],
        "device": ["tpu", 3],
    }.get(spec, ["no_such_choice", 3.5] if spec.startswith("one of ") else None)


def test_every_key_declares_its_values_and_refuses_one_just_outside():
    """Walks every key of defaults.yml: each must declare its valid values (a key added
    without them fails here), and values just outside them stop with one line naming it."""
    from natural_dreamer.config import CONFIG_DIR, read_schema

    schema = read_schema(CONFIG_DIR / "defaults.yml")
    flat_keys = set(flatten(yaml.safe_load((CONFIG_DIR / "defaults.yml").read_text())))
    assert set(schema) == flat_keys
    for key, spec in schema.items():
        values = just_outside(spec)
        assert values, f"{key}: no test values for {{{spec}}}"
        for value in values:
            with pytest.raises(ConfigError) as error:
                load_config("smoke", [(key, value)])
            message = str(error.value)
            assert key in message and "\n" not in message, (key, value, message)


def test_a_key_without_declared_values_is_refused(tmp_path, monkeypatch):
    defaults = "seed: 0   # {int >= 0} fine\nnew_key: 3   # no spec\n"
    use_configs(tmp_path, monkeypatch, defaults, run="seed: 1\n")
    with pytest.raises(ConfigError, match="new_key.*declares no"):
        load_config("run")


def test_values_at_the_ends_of_a_range_are_accepted():
    config = load_config("smoke", {"model.unimix": 0.0, "behavior.lambda_": 1, "seed": 0})
    assert config.model.unimix == 0.0 and config.behavior.lambda_ == 1.0
    assert load_config("smoke", {"compile": "true"}).compile is True


def test_a_checkpoints_config_gets_the_keys_added_since_at_their_defaults():
    saved = load_config("pendulum", {"seed": 3}).to_dict()
    del saved["behavior"]["actor_outscale"]  # as in a checkpoint older than the key
    config = saved_config(saved)
    assert config.behavior.actor_outscale == 0.01  # the default: what older code did
    assert config.seed == 3 and config.config_name == "pendulum"
    assert config.behavior.replay_value_grad is False  # what the run was trained with
    assert config.to_dict() == load_config("pendulum", {"seed": 3}).to_dict()
