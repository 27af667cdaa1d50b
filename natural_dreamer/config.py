"""Configs: YAML files in configs/, each laid over configs/defaults.yml, with overrides.

A config is read with yaml.safe_load (a YAML file cannot run code), resolved into nested
AttrDicts (`config.world_model.batch_size`), checked against the defaults (every key must
exist there, with a value of the same type), and saved back as plain YAML.
"""

import difflib
import os
import re
from pathlib import Path

import numpy as np
import yaml

from natural_dreamer.files import write_atomically
from natural_dreamer.utils import naming_write_errors

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


class NoAliasLoader(yaml.SafeLoader):
    """yaml.SafeLoader that refuses aliases (*name): a few nested anchors and aliases (an
    "alias bomb") expand ninefold per level into gigabytes. No config needs them; refusing the
    first alias means the expansion is never built."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            mark = self.peek_event().start_mark
            raise yaml.MarkedYAMLError(
                problem="aliases (*name) are not allowed in configs", problem_mark=mark
            )
        return super().compose_node(parent, index)


def safe_load(text):
    """yaml.safe_load without aliases (NoAliasLoader); nesting deep enough to exhaust the
    parser's recursion is a YAMLError too."""
    try:
        return yaml.load(text, Loader=NoAliasLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise yaml.YAMLError("nested too deeply") from None


def shown(value, limit: int = 60) -> str:
    """repr(value) for a message, cut to `limit` characters: a message stays one line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def read_yaml(path: Path) -> dict:
    """Parse a YAML file safely; a syntax error names the file and line."""
    try:
        with open(path) as f:
            data = safe_load(f) or {}
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
    """Return value if it fits the default's type (ints may stand for floats), else raise.
    (The schema in defaults.yml decides the rest; keys whose values mix types, like compile's
    auto/true/false, are left to it.)"""
    if key in MIXED_TYPES:
        return value
    if value is None:
        raise ConfigError(f"{key} needs a value (like {shown(default)}), got none")
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(default, bool) != isinstance(value, bool) or not isinstance(value, type(default)):
        raise ConfigError(
            f"{key} must be {type(default).__name__} (like {shown(default)}), "
            f"got {type(value).__name__} {shown(value)}"
        )
    return value


# Keys whose valid values are of several types ("auto", true or false).
MIXED_TYPES = {"compile"}

# A key's schema: the {braces} opening its comment in defaults.yml.
SCHEMA_LINE = re.compile(r"^(\s*)([A-Za-z_]\w*):\s*([^#\s][^#]*?)?\s*(?:#\s*(?:\{([^}]*)\})?.*)?$")
NUMBER_SPEC = re.compile(r"^(int|float) (?:(>=|>) (\S+)|in ([\[(])(\S+), (\S+?)([\])]))$")


def read_schema(path: Path) -> dict:
    """{dotted key: spec} from the {braces} of defaults.yml; a leaf key without one is a
    ConfigError naming it (so a key added later without its valid values fails at once)."""
    schema, parents = {}, []  # parents: (indent, name) of the enclosing sections
    for number, line in enumerate(path.read_text().splitlines(), 1):
        match = SCHEMA_LINE.match(line)
        if not match or not line.strip() or line.lstrip().startswith("#"):
            continue
        indent, name, value, spec = len(match[1]), match[2], match[3], match[4]
        while parents and parents[-1][0] >= indent:
            parents.pop()
        key = ".".join([*(p for _, p in parents), name])
        if not value:  # a section: its keys follow, indented
            parents.append((indent, name))
        elif spec is None:
            raise ConfigError(f"{path.name}:{number}: key '{key}' declares no {{valid values}}")
        else:
            schema[key] = spec.strip()
    return schema


def describe(spec: str) -> str:
    """A spec in words for messages: "int >= 1" -> "an int >= 1"."""
    if spec.startswith("one of "):
        return spec.replace(" | ", ", ")
    return {"name": "a name of letters, digits, '.', '_' or '-'", "text": "non-empty text"}.get(
        spec, f"{'an' if spec.startswith('int') else 'a'} {spec}"
    )


def check_value(key: str, value, spec: str) -> None:
    """Raise ConfigError unless value satisfies spec (see defaults.yml's header)."""
    problem = f"{key} must be {describe(spec)}, got {shown(value)}"
    number = NUMBER_SPEC.match(spec)
    if number:
        kind, op, bound, open_, low, high, close = number.groups()
        numeric = isinstance(value, int | float) and not isinstance(value, bool)
        if not numeric or (kind == "int" and not isinstance(value, int)) or value != value:
            raise ConfigError(problem)  # (value != value: NaN)
        if op:
            ok = value >= float(bound) if op == ">=" else value > float(bound)
        else:
            above = value >= float(low) if open_ == "[" else value > float(low)
            below = value <= float(high) if close == "]" else value < float(high)
            ok = above and below
        if not ok or value in (float("inf"), float("-inf")):
            raise ConfigError(problem)
    elif spec == "bool":
        if not isinstance(value, bool):
            raise ConfigError(problem)
    elif spec.startswith("one of "):
        choices = spec[len("one of ") :].split(" | ")
        text = str(value).lower() if isinstance(value, bool) else value
        if not isinstance(value, str | bool) or text not in choices:
            raise ConfigError(problem)
    elif spec == "name":
        check_name(key, value)
    elif spec == "text":
        if not isinstance(value, str) or not value.strip():
            raise ConfigError(problem)
    elif spec == "device":
        if not isinstance(value, str) or not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ConfigError(f"{key} must be auto, cpu, cuda or cuda:N, got {shown(value)}")
    else:
        raise ConfigError(f"{key} declares an unknown kind of values {{{spec}}} in defaults.yml")


def set_key(tree: dict, key: str, value, defaults: dict, source: str) -> None:
    """Set a dotted key after checking it exists in the defaults and has the right type."""
    if key not in defaults:
        close = difflib.get_close_matches(key, list(defaults), n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(close)}?" if close else ""
        raise ConfigError(f"unknown config key {shown(key)} in {source}{hint}")
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
        # A text key keeps the text as typed: --run_name 2024 is the name "2024", not a number.
        text_key = isinstance(defaults.get(key), str) and key not in MIXED_TYPES
        if isinstance(value, str) and not text_key:
            value = parse_scalar(value)
        set_key(config, key, value, defaults, "the command line")
    config["config_name"] = name
    config = AttrDict(config)
    validate(config)
    return config


def saved_config(saved: dict) -> AttrDict:
    """The config a checkpoint was made with (its state["config"]), with every key added to
    defaults.yml since then at its default: a new key's default is what the code did before
    the key existed, so an older agent is rebuilt exactly as it was trained."""
    defaults_tree = read_yaml(CONFIG_DIR / "defaults.yml")
    defaults = flatten(defaults_tree)
    config = yaml.safe_load(yaml.safe_dump(defaults_tree))  # a deep copy
    for key, value in flatten({k: v for k, v in saved.items() if k != "config_name"}).items():
        set_key(config, key, value, defaults, "the checkpoint's config")
    config["config_name"] = saved.get("config_name", "")
    return AttrDict(config)


# A run name (and a --resume suffix) becomes part of file names in the output folders, so it
# is one path component of safe characters: no separator, no "..", nothing hidden.
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")


def check_name(kind: str, name) -> str:
    """Return name if it is a safe file-name part (letters, digits, '.', '_', '-'; starting
    with a letter or digit; at most 64 characters; no '..'), else raise ConfigError."""
    if not isinstance(name, str) or not SAFE_NAME.fullmatch(name) or ".." in name:
        raise ConfigError(
            f"{kind} {shown(name)} is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit, without '..' (it names files in the output folders)"
        )
    return name


def validate(config: AttrDict) -> None:
    """Refuse values no run can use, with the reason in the message."""
    flat = flatten(config.to_dict())
    for key, spec in read_schema(CONFIG_DIR / "defaults.yml").items():
        check_value(key, flat[key], spec)
    # What no single key's range can say: how keys go together.
    if config.env.image_size % 16:
        raise ConfigError(f"env.image_size must be a multiple of 16, got {config.env.image_size}")
    if config.model.bins % 2 == 0:
        raise ConfigError(f"model.bins must be odd (a bin sits at 0), got {config.model.bins}")
    if config.behavior.action_min_std > config.behavior.action_max_std:
        raise ConfigError(
            f"behavior.action_min_std {config.behavior.action_min_std} must not exceed "
            f"behavior.action_max_std {config.behavior.action_max_std}"
        )
    if config.train.replay_capacity // config.train.envs < config.world_model.batch_length:
        raise ConfigError(
            "train.replay_capacity / train.envs must hold a whole sequence of "
            f"world_model.batch_length {config.world_model.batch_length} steps per environment"
        )


def machine_memory() -> int:
    """Bytes of physical memory (os.sysconf); 0 where the system does not say."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 0


def memory_needed(config: AttrDict, obs_space: dict, action_size: int) -> tuple:
    """(replay bytes, batch bytes) at the least, before anything is allocated.

    A replay row holds every observation, the action (float32), the reward (float32) and two
    flags. The buffer's pages are only touched as steps arrive, so replay counts the rows the
    budget can fill: min(capacity, policy steps + one first observation per episode). A batch
    holds B x T rows as float32 (images too), on the host before any device.
    obs_space: {name: (shape, dtype)} as an environment reports it; action_size: its length.
    """
    observation = sum(
        int(np.prod(shape)) * np.dtype(dtype).itemsize for shape, dtype in obs_space.values()
    )
    floats = sum(int(np.prod(shape)) * 4 for shape, _ in obs_space.values())
    row = observation + 4 * action_size + 4 + 2
    train, repeat = config.train, config.env.action_repeat
    policy_steps = train.steps // repeat + train.envs
    episodes = policy_steps // max(1, config.env.time_limit // repeat) + train.envs
    rows = min(train.replay_capacity, policy_steps + episodes)
    wm = config.world_model
    batch = wm.batch_size * wm.batch_length * (floats + 4 * action_size + 4 + 2)
    return rows * row, batch


def check_memory(config: AttrDict, obs_space: dict, action_size: int, have: int = 0) -> None:
    """Refuse in one line (ConfigError) a config whose replay and batch alone need more
    memory than the machine has (`have` bytes; machine_memory() by default)."""
    have = have or machine_memory()
    replay, batch = memory_needed(config, obs_space, action_size)
    if have and replay + batch > have:
        wm, gb = config.world_model, 2**30
        raise ConfigError(
            f"this config needs more memory than the machine's {have / gb:.1f} GB: "
            f"{replay / gb:.1f} GB of replay (the steps train.steps fills of "
            f"train.replay_capacity {config.train.replay_capacity}) and {batch / gb:.1f} GB "
            f"per batch (world_model.batch_size {wm.batch_size} x batch_length "
            f"{wm.batch_length}): lower them"
        )


def parse_scalar(text: str):
    """A command-line value as YAML reads it, with 1e-4-style floats read as floats."""
    try:
        value = safe_load(text)
    except yaml.YAMLError:
        return text
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def save_config(config: AttrDict, path: Path) -> None:
    """Write the resolved config as plain YAML (through a new file and a rename: a link
    planted at `path` is replaced, not written through)."""
    with naming_write_errors(path):
        write_atomically(path, yaml.safe_dump(config.to_dict(), sort_keys=False))
