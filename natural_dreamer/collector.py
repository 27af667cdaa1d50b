"""Environment interaction: step an environment with a policy and store every step.

The order of one policy step is what makes the replay data line up (pitfall 1):
    x_t, r_t arrive  ->  a_t = policy(x_t)  ->  store (x_t, r_t, flags_t, a_t)  ->  env.step(a_t)
An episode's last observation is stored too, with a zero action, since nothing acts on it.
"""

import numpy as np
import torch


class RandomPolicy:
    """Uniform actions: continuous in [-1, 1], or a random one-hot for discrete actions."""

    def __init__(self, action_size: int, discrete: bool, seed: int = 0):
        self.action_size, self.discrete = action_size, discrete
        self.rng = np.random.default_rng(seed)

    def __call__(self, obs: dict) -> np.ndarray:
        if self.discrete:
            return np.eye(self.action_size, dtype=np.float32)[self.rng.integers(self.action_size)]
        return self.rng.uniform(-1, 1, self.action_size).astype(np.float32)


class AgentPolicy:
    """The agent's policy for one environment, carrying its recurrent state between calls."""

    def __init__(self, agent, explore: bool = True):
        self.agent, self.explore = agent, explore
        self.state = agent.initial_state(1)

    def __call__(self, obs: dict) -> np.ndarray:
        keys = [*self.agent.world_model.obs_keys, "is_first"]
        batch = {key: np.asarray(obs[key])[None] for key in keys}  # add a batch axis of 1
        action, self.state = self.agent.act(batch, self.state, self.explore)
        return action[0]


class Collector:
    """Runs one environment, writing each step into a replay buffer (or nowhere)."""

    def __init__(self, env, buffer=None, seed: int | None = None):
        self.env, self.buffer, self.seed = env, buffer, seed
        self.obs = None
        self.episodes = 0  # finished episodes; with a seed, episode k starts from seed + k
        self.episode_return, self.episode_length = 0.0, 0

    def step(self, policy):
        """Take one policy step; returns {"return", "length"} when an episode ends, else None."""
        if self.obs is None:
            self.reset()
        action = policy(self.obs)
        self.store(self.obs, action)
        self.obs = self.env.step(action)
        self.episode_return += float(self.obs["reward"])
        self.episode_length += 1
        if not self.obs["is_last"]:
            return None
        self.store(self.obs, np.zeros_like(action))
        self.obs = None
        self.episodes += 1
        return {"return": self.episode_return, "length": self.episode_length}

    def reset(self) -> None:
        """Start a new episode."""
        self.obs = self.env.reset(None if self.seed is None else self.seed + self.episodes)
        self.episode_return, self.episode_length = 0.0, 0

    def store(self, obs: dict, action: np.ndarray) -> None:
        if self.buffer is not None:
            self.buffer.add({**obs, "action": action})


def run_episode(env, policy, render: bool = False, seed: int | None = None):
    """Play one whole episode without storing it, starting from `seed` when given.

    Returns (episode return, frames (N, H, W, 3) uint8 or None).
    """
    collector = Collector(env, seed=seed)
    collector.reset()
    frames = [env.render()] if render else []
    while True:
        with torch.no_grad():
            done = collector.step(policy)
        if render:
            frames.append(env.render())
        if done:
            return done["return"], (np.stack(frames) if render else None)
