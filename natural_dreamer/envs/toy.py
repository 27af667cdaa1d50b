"""A deterministic counter behind the step-dict contract of base.py, for the tests and the
first chapter: every reward, flag and observation is known in advance.
"""

import numpy as np

from natural_dreamer.envs.base import Env

TOY_TASKS = ("counter", "counter_terminal", "counter_nan", "action")


class ToyEnv(Env):
    """A deterministic counter for testing reward alignment; other tests rely on it exactly.

    Observation t (t = policy steps since reset): "vector" [t / 10, 1.0] float32 (2,), and
    for obs "pixels"/"both" an "image" whose every value is t * 10 (mod 256, uint8). The
    reward arriving with observation t is float(t), so reward == 10 * vector[0] (except in
    task "action"). One continuous action, ignored except by task "action"; action_repeat
    is ignored too, so time_limit counts policy steps. Task "counter" truncates at
    t == time_limit; "counter_terminal" terminates (is_terminal True) at t == 7, unless
    time_limit truncates it first; "counter_nan" puts a NaN into the vector at t == 50
    (for the tests of the NaN guard); "action" pays the action just taken instead of t
    (clipped to [-1, 1]): the one thing a policy can learn here, to push +1 (for the test
    that an agent learns).
    """

    def __init__(
        self,
        task: str = "counter",
        obs: str = "proprio",
        image_size: int = 64,
        time_limit: int = 1000,
    ):
        super().__init__(obs, image_size, action_repeat=1, time_limit=time_limit)
        if task not in TOY_TASKS:
            raise ValueError(f"Unknown toy task {task!r}; choose one of: {', '.join(TOY_TASKS)}.")
        self._terminates = task == "counter_terminal"
        self._nan_at = 50 if task == "counter_nan" else None
        self._pays_action = task == "action"
        if obs in ("proprio", "both"):
            self.obs_space["vector"] = ((2,), np.dtype(np.float32))
        self.action_size, self.discrete = 1, False
        self._action_low, self._action_high = np.array([-1.0]), np.array([1.0])
        self._t = 0

    def render(self) -> np.ndarray:
        """Return a (image_size, image_size, 3) uint8 frame filled with t * 10 (mod 256)."""
        return np.full((self.image_size, self.image_size, 3), (self._t * 10) % 256, np.uint8)

    def _reset(self, seed: int | None) -> dict:
        self._t = 0
        return self._observe()

    def _step(self, env_action) -> tuple[dict, float, bool, bool]:
        self._t += 1
        terminated = self._terminates and self._t == 7
        truncated = not terminated and self._t >= self.time_limit
        reward = float(env_action[0]) if self._pays_action else float(self._t)
        return self._observe(), reward, terminated, truncated

    def _observe(self) -> dict:
        obs = {}
        if "vector" in self.obs_space:
            obs["vector"] = np.array([self._t / 10, 1.0], dtype=np.float32)
            if self._t == self._nan_at:
                obs["vector"][0] = np.nan
        if "image" in self.obs_space:
            obs["image"] = self.render()
        return obs
