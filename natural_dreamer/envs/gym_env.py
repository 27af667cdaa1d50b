"""Gymnasium environments by id (classic control, Box2D, MuJoCo) behind the step-dict
contract of base.py. Gymnasium is imported when a GymEnv is built.
"""

import os

import numpy as np

from natural_dreamer.envs.base import Env, resize_frame
from natural_dreamer.envs.mujoco_gl import select_mujoco_gl

# Gymnasium's classic-control renderer initialises SDL; without a screen it should not look
# for one (and then print "XDG_RUNTIME_DIR is invalid" on every run).
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")


class GymEnv(Env):
    """A Gymnasium environment by id, e.g. "Pendulum-v1" (Box actions) or "CartPole-v1".

    Box observations become "vector" (float32, flattened); images come from
    render_mode="rgb_array" resized to image_size x image_size with PIL (aspect ratio not
    kept). An env whose observation already is an (H, W, 3) uint8 image, such as
    CarRacing-v3 (96x96), is seen through that observation resized instead: it is what the
    env means the agent to see, and cheaper than a render. Discrete(n) actions take a
    length-n vector and use its argmax. Episodes end at the env's own TimeLimit or at
    time_limit environment steps, both as truncations. `gym_env` is the underlying env.
    """

    def __init__(
        self,
        task: str,
        obs: str = "proprio",
        image_size: int = 64,
        action_repeat: int = 1,
        time_limit: int = 1000,
        seed: int = 0,
    ):
        super().__init__(obs, image_size, action_repeat, time_limit)
        import gymnasium as gym

        try:
            spec = gym.spec(task)
        except gym.error.Error as error:
            raise ValueError(f"Unknown Gymnasium id {task!r}: {error}") from None
        if "mujoco" in str(spec.entry_point):
            # Gymnasium's MuJoCo envs read MUJOCO_GL when their module imports mujoco.
            select_mujoco_gl(need_render=obs != "proprio")
        can_render = "rgb_array" in _gym_render_modes(spec)
        self.gym_env = gym.make(task, render_mode="rgb_array" if can_render else None)
        self._image_obs = _is_image_space(self.gym_env.observation_space, gym.spaces)
        if obs != "proprio" and not (can_render or self._image_obs):
            self.gym_env.close()
            raise ValueError(f"obs {obs!r} needs rgb_array rendering, which {task} does not offer.")
        self._seed = seed
        self._set_spaces(gym.spaces, task)
        self._frame = None  # the latest image observation, when the env observes images
        self._env_steps = 0

    def _set_spaces(self, spaces, task: str) -> None:
        """Fill obs_space, action_size, discrete and the action bounds from the gym spaces."""
        if self.obs_mode != "pixels":
            if not isinstance(self.gym_env.observation_space, spaces.Box) or self._image_obs:
                raise ValueError(f"{task} has no vector observation; use obs 'pixels'.")
            size = int(np.prod(self.gym_env.observation_space.shape))
            self.obs_space["vector"] = ((size,), np.dtype(np.float32))
        space = self.gym_env.action_space
        if isinstance(space, spaces.Discrete):
            self.action_size, self.discrete = int(space.n), True
            self._discrete_start = int(space.start)
        elif isinstance(space, spaces.Box):
            if not (np.all(np.isfinite(space.low)) and np.all(np.isfinite(space.high))):
                raise ValueError(f"{task} has an unbounded Box action space; cannot rescale.")
            self.action_size, self.discrete = int(np.prod(space.shape)), False
            self._action_low = space.low.reshape(-1).astype(np.float64)
            self._action_high = space.high.reshape(-1).astype(np.float64)
        else:
            raise ValueError(f"{task} has action space {space}; only Discrete and Box work.")

    def render(self) -> np.ndarray:
        """Return the current frame resized to (image_size, image_size, 3) uint8: the latest
        image observation for envs that observe images, else a rendered frame."""
        if self._image_obs:
            if self._frame is None:
                raise RuntimeError("render() called before the first reset().")
            return resize_frame(self._frame, self.image_size)
        frame = self.gym_env.render() if self.gym_env.render_mode == "rgb_array" else None
        if frame is None:
            raise RuntimeError(f"{self.gym_env.spec.id} cannot render rgb_array frames.")
        return resize_frame(np.asarray(frame, dtype=np.uint8), self.image_size)

    def close(self) -> None:
        """Close the gymnasium env."""
        self.gym_env.close()

    def _reset(self, seed: int | None) -> dict:
        # Without a seed, only the first reset is seeded; later ones continue its stream.
        raw_obs, _ = self.gym_env.reset(seed=self._seed if seed is None else seed)
        self._seed = None
        self._env_steps = 0
        return self._observe(raw_obs)

    def _step(self, env_action) -> tuple[dict, float, bool, bool]:
        if self.discrete:
            env_action = env_action + self._discrete_start
        else:
            env_action = env_action.reshape(self.gym_env.action_space.shape)
            env_action = env_action.astype(self.gym_env.action_space.dtype)
        reward, terminated, truncated = 0.0, False, False
        for _ in range(self.action_repeat):
            raw_obs, step_reward, terminated, truncated, _ = self.gym_env.step(env_action)
            self._env_steps += 1
            reward += float(step_reward)
            truncated = truncated or self._env_steps >= self.time_limit
            if terminated or truncated:
                break
        return self._observe(raw_obs), reward, bool(terminated), bool(truncated and not terminated)

    def _observe(self, raw_obs) -> dict:
        obs = {}
        if self._image_obs:
            self._frame = np.asarray(raw_obs, dtype=np.uint8)
        if "vector" in self.obs_space:
            obs["vector"] = np.asarray(raw_obs, dtype=np.float32).reshape(-1)
        if "image" in self.obs_space:
            obs["image"] = self.render()
        return obs


def _is_image_space(space, spaces) -> bool:
    """True for an (H, W, 3) uint8 Box: an observation that is already an RGB picture."""
    is_box = isinstance(space, spaces.Box)
    return is_box and space.dtype == np.uint8 and len(space.shape) == 3 and space.shape[2] == 3


def _gym_render_modes(spec) -> list[str]:
    """The render modes an env class declares, read without building the env."""
    from gymnasium.envs.registration import load_env_creator

    entry_point = spec.entry_point
    creator = entry_point if callable(entry_point) else load_env_creator(entry_point)
    metadata = getattr(creator, "metadata", None)
    return list(metadata.get("render_modes", [])) if isinstance(metadata, dict) else []
