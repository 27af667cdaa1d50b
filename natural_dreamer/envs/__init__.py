"""Environments: DeepMind Control, Gymnasium, Atari, Crafter and a toy counter, one API.

Every suite follows the step-dict contract described in base.py; `make_env` builds the
environment an env config describes, taking each key the config leaves out from the env
section of configs/defaults.yml.

    base.py       Env, the step-dict contract, and the frame resize the suites share
    mujoco_gl.py  select_mujoco_gl: a headless OpenGL backend, chosen before dm_control loads
    dmc.py        DMCEnv: DeepMind Control Suite tasks
    gym_env.py    GymEnv: Gymnasium environments by id
    atari.py      AtariEnv: Atari 2600 games through ale-py
    crafter.py    CrafterEnv: Crafter and its achievements
    toy.py        ToyEnv: a deterministic counter for the tests

Imports run one way: base.py and mujoco_gl.py <- each suite <- this file. A suite imports its
simulator (dm_control, gymnasium, ale-py, crafter) only when one of its environments is built.
`python -m natural_dreamer.bench --tables envs` times the suites on this machine.
"""

from collections.abc import Mapping

from natural_dreamer.config import CONFIG_DIR, read_yaml
from natural_dreamer.envs.atari import AtariEnv
from natural_dreamer.envs.base import Env
from natural_dreamer.envs.crafter import CrafterEnv
from natural_dreamer.envs.dmc import DMCEnv
from natural_dreamer.envs.gym_env import GymEnv
from natural_dreamer.envs.mujoco_gl import select_mujoco_gl
from natural_dreamer.envs.toy import ToyEnv

__all__ = [
    "SUITES",
    "AtariEnv",
    "CrafterEnv",
    "DMCEnv",
    "Env",
    "GymEnv",
    "ToyEnv",
    "env_defaults",
    "make_env",
    "select_mujoco_gl",
]

SUITES = ("dmc", "gym", "toy", "atari", "crafter")


def env_defaults() -> dict:
    """The env section of configs/defaults.yml: the value of each env key a config omits."""
    return read_yaml(CONFIG_DIR / "defaults.yml")["env"]


def make_env(env_config: Mapping, seed: int) -> Env:
    """Build the environment an env config describes.

    Args:
      env_config: mapping of the env keys configs/defaults.yml documents: "suite" ("dmc",
        "gym", "atari", "crafter" or "toy"), "task" (atari: an ALE game name such as "pong";
        crafter: "reward" or "noreward"), "obs", "image_size", "action_repeat" (the toy
        ignores it), "time_limit" (environment steps before action repeat), "fast_render"
        (dmc) and "sticky" (atari). A key it lacks takes its value from defaults.yml, which
        describes a DMC task: a config from `load_config` has every key, and a mapping written
        by hand for another suite gives that suite's own values (configs/atari_pong.yml and
        configs/crafter.yml hold Atari's and Crafter's). Optional for dmc, and not in
        defaults.yml: "camera" (2 for quadruped, else 0). Atari runs with up to 30 noops at
        reset and the minimal action set; AtariEnv's arguments change those.
      seed: seeds the task's randomness (dmc, crafter) or the first reset (gym, atari).

    Returns:
      An Env following the step-dict contract described in base.py.
    """
    config = {**env_defaults(), **env_config}
    suite = config["suite"]
    common = {
        "obs": config["obs"],
        "image_size": int(config["image_size"]),
        "time_limit": int(config["time_limit"]),
    }
    action_repeat = int(config["action_repeat"])
    if suite == "dmc":
        return DMCEnv(
            config["task"],
            action_repeat=action_repeat,
            seed=seed,
            camera=config.get("camera"),
            fast_render=bool(config["fast_render"]),
            **common,
        )
    if suite == "gym":
        return GymEnv(config["task"], action_repeat=action_repeat, seed=seed, **common)
    if suite == "atari":
        sticky = float(config["sticky"])
        return AtariEnv(
            config["task"], action_repeat=action_repeat, seed=seed, sticky=sticky, **common
        )
    if suite == "crafter":
        return CrafterEnv(config["task"], action_repeat=action_repeat, seed=seed, **common)
    if suite == "toy":
        return ToyEnv(config["task"], **common)
    raise ValueError(f"Unknown env suite {suite!r}; choose one of: {', '.join(SUITES)}.")
