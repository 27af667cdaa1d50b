"""Several environments at once, through gymnasium's vector API.

`GymnasiumEnv` puts any of our environments (DeepMind Control, Gymnasium or the toy) behind
the plain gymnasium.Env interface, so gymnasium's vector classes can run them:

    make_vector_env(config.env, seed, count=1)  ->  SyncVectorEnv: the environment runs here
    make_vector_env(config.env, seed, count=4)  ->  AsyncVectorEnv: one worker process each

Workers start with "spawn": a fresh interpreter, so no half-initialised OpenGL context or
torch thread pool is inherited from this process. Observations come back through shared
memory (cheap for images). Autoreset is off: `collector.VectorCollector` resets an ended
environment itself, after storing its last step, with that episode's own seed.
"""

import functools
import signal

import gymnasium as gym
import numpy as np
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv

from natural_dreamer.envs import Env, make_env


class GymnasiumEnv(gym.Env):
    """One of our `Env`s as a gymnasium.Env.

    observation: dict of the env's observation keys ("image" (H, W, 3) uint8 and/or "vector"
    (N,) float32); action: (action_size,) float32 in [-1, 1] (one-hot for discrete actions).
    reset(seed) -> (obs, {}); step(action) -> (obs, reward, terminated, truncated, {}), where
    reward is the one that arrived with obs and truncated marks a time limit.
    """

    metadata = {"render_modes": []}

    def __init__(self, env: Env, index: int = 0):
        self.env, self.index = env, index  # index: its place in the vector of environments
        self.observation_space = gym.spaces.Dict(
            {key: _box(shape, dtype) for key, (shape, dtype) in env.obs_space.items()}
        )
        self.action_space = gym.spaces.Box(-1.0, 1.0, (env.action_size,), np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)  # gymnasium's own bookkeeping; our env seeds itself
        step = self.env.reset(seed)
        return self._obs(step), {}

    def step(self, action):
        step = self.env.step(action)
        terminated = bool(step["is_terminal"])
        truncated = bool(step["is_last"]) and not terminated
        # Crafter reports the episode's achievements with its last step; gymnasium stacks
        # them as infos["achievements"][name] (N,) with the mask infos["_achievements"].
        info = {"achievements": step["achievements"]} if "achievements" in step else {}
        return self._obs(step), float(step["reward"]), terminated, truncated, info

    def replay(self, plans: dict):
        """Bring this environment back to the middle of an episode: plans maps an
        environment's index to (seed, actions (L, A)); this one, if named, resets with the
        seed and takes the actions. Returns the last observation (None if not named).
        Environments are deterministic given their seed and actions, so this restores the
        state a checkpoint cannot hold (a simulator's internals) for an exact resume."""
        if self.index not in plans:
            return None
        seed, actions = plans[self.index]
        obs, _ = self.reset(seed=int(seed))
        for action in actions:
            obs, *_ = self.step(action)
        return obs

    def close(self):
        self.env.close()

    def _obs(self, step: dict) -> dict:
        return {key: step[key] for key in self.env.obs_space}


def _box(shape: tuple, dtype) -> gym.spaces.Box:
    if np.dtype(dtype) == np.uint8:
        return gym.spaces.Box(0, 255, shape, np.uint8)
    return gym.spaces.Box(-np.inf, np.inf, shape, dtype)


def build_env(env_config: dict, seed: int, index: int = 0) -> GymnasiumEnv:
    """Build environment `index` of a vector behind the gymnasium API (runs inside a worker
    process when there are several)."""
    return GymnasiumEnv(make_env(env_config, seed=seed), index)


def in_worker(env_fn):
    """Build the environment in a worker that leaves Ctrl-C to the main process: a Ctrl-C in a
    terminal reaches every process of the group, and the main process saves, then closes
    the workers itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    return env_fn()


def vector_env(env_fns: list, workers: bool) -> gym.vector.VectorEnv:
    """A gymnasium VectorEnv of these environment builders, with autoreset off.

    workers: True runs each environment in its own process (AsyncVectorEnv), False runs them
    all in this process, one after the other (SyncVectorEnv).
    """
    if workers:
        fns = [functools.partial(in_worker, fn) for fn in env_fns]
        return AsyncVectorEnv(fns, context="spawn", autoreset_mode=AutoresetMode.DISABLED)
    return SyncVectorEnv(env_fns, autoreset_mode=AutoresetMode.DISABLED)


def make_vector_env(env_config, seed: int, count: int) -> gym.vector.VectorEnv:
    """`count` copies of the environment an env config describes (see `envs.make_env`);
    copy i is built with seed + i. One copy runs in this process, more run in workers."""
    plain = dict(env_config)  # a plain dict pickles into the worker processes
    fns = [functools.partial(build_env, plain, seed + i, i) for i in range(count)]
    return vector_env(fns, workers=count > 1)
