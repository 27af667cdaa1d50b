"""Configs: YAML files in configs/, each laid over configs/defaults.yml, with overrides.

A config is read with yaml.safe_load (a YAML file cannot run code), resolved into nested
AttrDicts (`config.world_model.batch_size`), checked against the defaults (every key must
exist there, with a value of the same type), and saved back as plain YAML.
"""

import difflib
import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "configs"


class ConfigError(ValueError):
    """A config that cannot be used; the message says what to change."""


class AttrDict(dict):
    """A dict whose keys read as attributes; nested dicts become AttrDicts too."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        for key, value in self.items():
            if isinstance(value, dict) and not isinstance(value, AttrDict):
                self[key] = AttrDict(value)

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(f"config has no key '{key}'") from None

    def __setattr__(self, key, value):
        self[key] = value

    def to_dict(self) -> dict:
        """A plain nested dict (for YAML files and checkpoints)."""
        return {k: v.to_dict() if isinstance(v, AttrDict) else v for k, v in self.items()}


def available_configs() -> list:
    """Names of the run configs in configs/ (defaults.yml is the base, not a run)."""
    return sorted(p.stem for p in CONFIG_DIR.glob("*.yml") if p.stem != "defaults")


def read_yaml(path: Path) -> dict:
    """Parse a YAML file safely; a syntax error names the file and line."""
    try:
        with open(path) as f:
            data = yaml.safe_load(f) or {}
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(
            f"malformed YAML in {where}: {getattr(error, 'problem', error)}"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping of keys to values")
    return data


def flatten(tree: dict, prefix: str = "") -> dict:
    """{"a": {"b": 1}} -> {"a.b": 1}."""
    flat = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def check_type(key: str, value, default):
    """Return value if it fits the default's type (ints may stand for floats), else raise."""
    if default is None or value is None:
        return value
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, type(default)):
        raise ConfigError(
            f"{key} must be {type(default).__name__} (like {default!r}), "
            f"got {type(value).__name__} {value!r}"
        )
    return value


def set_key(tree: dict, key: str, value, defaults: dict, source: str) -> None:
    """Set a dotted key after checking it exists in the defaults and has the right type."""
    if key not in defaults:
        close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key '{key}' in {source}{hint}")
    value = check_type(key, value, defaults[key])
    *parents, leaf = key.split(".")
    for part in parents:
        tree = tree.setdefault(part, {})
    tree[leaf] = value


def load_config(name: str, overrides=None) -> AttrDict:
    """The resolved config of a run: defaults, then configs/<name>.yml, then overrides.

    overrides: a dict {dotted key: value} or a list of (dotted key, value) pairs; string
    values are parsed as YAML scalars ("3" -> 3, "true" -> True, "1e-4" -> 0.0001).
    """
    path = CONFIG_DIR / f"{name}.yml"
    if name not in available_configs():  # also refuses "../x": a name is a file in configs/
        raise ConfigError(f"unknown config '{name}'; available: {', '.join(available_configs())}")
    defaults_tree = read_yaml(CONFIG_DIR / "defaults.yml")
    defaults = flatten(defaults_tree)
    config = yaml.safe_load(yaml.safe_dump(defaults_tree))  # a deep copy
    for key, value in flatten(read_yaml(path)).items():
        set_key(config, key, value, defaults, str(path))
    pairs = overrides.items() if isinstance(overrides, dict) else overrides or []
    for key, value in pairs:
        if isinstance(value, str):
            value = parse_scalar(value)
        set_key(config, key, value, defaults, "the command line")
    config["config_name"] = name
    config = AttrDict(config)
    validate(config)
    return config


# (dotted key, smallest allowed value) for every key that must be a positive size or count.
LOWER_BOUNDS = {
    "world_model.batch_size": 1,
    "world_model.batch_length": 2,
    "behavior.horizon": 1,
    "behavior.discount_horizon": 1,
    "model.stoch": 1,
    "model.bins": 3,
    "env.image_size": 16,
    "env.action_repeat": 1,
    "env.time_limit": 1,
    "train.envs": 1,
    "train.steps": 1,
    "train.replay_capacity": 2,
    "train.log_every": 1,
    "train.checkpoint_every": 1,
    "explore.ensemble": 2,  # a variance needs two members
    "model.dyn_layers": 0,
    "model.prior_layers": 0,
    "world_model.replay_context": 0,
}


# A run name (and a --resume suffix) becomes part of file names in the output folders, so it
# is one path component of safe characters: no separator, no "..", nothing hidden.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(kind: str, name) -> str:
    """Return name if it is a safe file-name part (letters, digits, '.', '_', '-'; starting
    with a letter or digit; at most 64 characters; no '..'), else raise ConfigError."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{kind} {name!r} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..' (it names files in the output folders)"
        )
    return name


# The metric writers `logger` may name, comma-separated.
LOGGERS = ("csv", "tensorboard")
# Who collects the training data (`exploration`).
EXPLORATIONS = ("greedy", "plan2explore")


def validate(config: AttrDict) -> None:
    """Refuse values no run can use, with the reason in the message."""
    flat = flatten(config.to_dict())
    check_name("run_name", config.run_name)
    for key, low in LOWER_BOUNDS.items():
        if flat[key] < low:
            raise ConfigError(f"{key} must be at least {low}, got {flat[key]}")
    if config.train.train_ratio <= 0:
        raise ConfigError(f"train.train_ratio must be positive, got {config.train.train_ratio}")
    if config.env.image_size % 16:
        raise ConfigError(f"env.image_size must be a multiple of 16, got {config.env.image_size}")
    if config.model.bins % 2 == 0:
        raise ConfigError(f"model.bins must be odd (a bin sits at 0), got {config.model.bins}")
    if not 0 <= config.behavior.lambda_ <= 1:
        raise ConfigError(f"behavior.lambda_ must lie in [0, 1], got {config.behavior.lambda_}")
    for key in ("train.prefill", "train.eval_episodes"):
        if flat[key] < 0:
            raise ConfigError(f"{key} must not be negative, got {flat[key]}")
    if config.train.replay_capacity // config.train.envs < config.world_model.batch_length:
        raise ConfigError(
            "train.replay_capacity / train.envs must hold a whole sequence of "
            f"world_model.batch_length {config.world_model.batch_length} steps per environment"
        )
    if config.world_model.replay_context > 1:
        raise ConfigError(
            f"world_model.replay_context must be 0 or 1, got {config.world_model.replay_context}"
        )
    if config.exploration not in EXPLORATIONS:
        raise ConfigError(f"exploration must be greedy or plan2explore, got {config.exploration!r}")
    loggers = config.logger.split(",")
    if not loggers or not set(loggers) <= set(LOGGERS) or len(set(loggers)) < len(loggers):
        raise ConfigError(
            f"logger must be csv, tensorboard or csv,tensorboard, got {config.logger!r}"
        )


def parse_scalar(text: str):
    """A command-line value as YAML reads it, with 1e-4-style floats read as floats."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def save_config(config: AttrDict, path: Path) -> None:
    """Write the resolved config as plain YAML."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        yaml.safe_dump(config.to_dict(), f, sort_keys=False)
