"""Crafter (Hafner 2021) behind the step-dict contract of base.py.

Square RGB images (image_size, 64 in the configs) and 17 discrete actions taken as one-hot
vectors (the argmax is played). The achievements unlocked in an episode come with the
episode's last step dict, so the training loop can log their success rates. crafter is
imported when a CrafterEnv is built.
"""

import numpy as np

from natural_dreamer.envs.base import Env

CRAFTER_TASKS = ("reward", "noreward")


class CrafterEnv(Env):
    """Crafter (Hafner 2021): a 2D survival world with 22 achievements and 17 actions.

    task "reward" is the benchmark: +1 the first time in an episode each achievement is
    unlocked, and +-0.1 per health point gained or lost; "noreward" gives reward 0 (the
    achievements are still reported). The observation is Crafter's own top-down view with the
    inventory below it, drawn at image_size x image_size. The 17 discrete actions take a
    length-17 vector and use its argmax. is_terminal marks the player's death; time_limit
    steps (10,000 in the benchmark) truncate.

    The last step dict of an episode also holds "achievements": {name: times unlocked in this
    episode} for all 22 achievements (crafter.constants.achievements). An achievement's success
    rate is the fraction of episodes where its count is > 0; the Crafter score is the
    geometric mean of the 22 success rates (in percent). It is no observation: obs_space does
    not list it and the replay buffer does not store it.
    """

    def __init__(
        self,
        task: str = "reward",
        obs: str = "pixels",
        image_size: int = 64,
        action_repeat: int = 1,
        time_limit: int = 10_000,
        seed: int = 0,
    ):
        super().__init__(obs, image_size, action_repeat, time_limit)
        if obs != "pixels":
            raise ValueError(f"Crafter offers obs 'pixels' only, got {obs!r}.")
        if task not in CRAFTER_TASKS:
            raise ValueError(
                f"Unknown Crafter task {task!r}; choose one of: {', '.join(CRAFTER_TASKS)}."
            )
        self._reward = task == "reward"
        self.crafter_env = self._make(seed)  # a seedless first reset plays its first episode
        self.action_size, self.discrete = int(self.crafter_env.action_space.n), True
        self._image = None
        self._achievements = {}
        self._env_steps = 0

    def step(self, action: np.ndarray) -> dict:
        """As Env.step; the episode's last dict also carries "achievements"."""
        step = super().step(action)
        if step["is_last"]:
            step["achievements"] = dict(self._achievements)
        return step

    def render(self) -> np.ndarray:
        """Return the latest observation, (image_size, image_size, 3) uint8."""
        if self._image is None:
            raise RuntimeError("render() called before the first reset().")
        return self._image

    def _make(self, seed: int):
        import crafter

        # length=None: the time limit is counted here, so it can be told from a death.
        size = (self.image_size, self.image_size)
        return crafter.Env(size=size, reward=self._reward, length=None, seed=seed)

    def _reset(self, seed: int | None) -> dict:
        # Crafter seeds episode k of an env from (its seed, k): a new seed needs a new env
        # (0.06 s; generating the world at reset takes about 1.3 s anyway).
        if seed is not None:
            self.crafter_env = self._make(seed)
        self._image = self.crafter_env.reset()
        self._achievements = {}
        self._env_steps = 0
        return {"image": self._image}

    def _step(self, env_action: int) -> tuple[dict, float, bool, bool]:
        reward, dead, truncated = 0.0, False, False
        for _ in range(self.action_repeat):
            self._image, step_reward, _, info = self.crafter_env.step(env_action)
            self._env_steps += 1
            reward += float(step_reward)
            self._achievements = info["achievements"]
            dead = info["discount"] == 0.0
            truncated = self._env_steps >= self.time_limit
            if dead or truncated:
                break
        return {"image": self._image}, reward, dead, truncated and not dead
