"""DeepMind Control Suite tasks (dm_control) behind the step-dict contract of base.py.

dm_control is imported lazily, when a DMCEnv is built and after `select_mujoco_gl` has picked
a headless OpenGL backend (see mujoco_gl.py).
"""

import difflib

import numpy as np

from natural_dreamer.envs.base import Env
from natural_dreamer.envs.mujoco_gl import select_mujoco_gl


class DMCEnv(Env):
    """A dm_control suite task, e.g. "walker_walk" or "ball_in_cup_catch".

    The vector observation concatenates the task's observation entries, each flattened, in
    sorted key order. Episodes end at time_limit environment steps (or at the task's own
    limit, 1000 steps for the standard suite, if that comes first) as a truncation; is_terminal
    is True only when the task reports discount 0. `dmc_env` is the underlying dm_env.
    """

    def __init__(
        self,
        task: str,
        obs: str = "pixels",
        image_size: int = 64,
        action_repeat: int = 2,
        time_limit: int = 1000,
        seed: int = 0,
        camera: int | None = None,
        fast_render: bool = True,
    ):
        super().__init__(obs, image_size, action_repeat, time_limit)
        select_mujoco_gl(need_render=obs != "proprio")
        from dm_control import suite  # lazy: the import fixes the GL backend for the process

        domain, task_name = _resolve_dmc_task(task, suite.ALL_TASKS)
        self.dmc_env = suite.load(domain, task_name, task_kwargs={"random": seed})
        self.camera_id = (2 if domain == "quadruped" else 0) if camera is None else camera
        if fast_render:
            # Read when the GL context is created (first render), so it must be set now.
            self.dmc_env.physics.model.vis.quality.offsamples = 0
        self._render_flags = {"shadow": False, "reflection": False} if fast_render else None
        self._camera = None  # created on the first render(): proprio-only never touches GL
        self._obs_keys = sorted(self.dmc_env.observation_spec())
        if obs in ("proprio", "both"):
            spec = self.dmc_env.observation_spec()
            size = sum(int(np.prod(spec[key].shape)) for key in self._obs_keys)
            self.obs_space["vector"] = ((size,), np.dtype(np.float32))
        action_spec = self.dmc_env.action_spec()
        self.action_size = int(np.prod(action_spec.shape))
        self.discrete = False
        self._action_low = np.broadcast_to(action_spec.minimum, action_spec.shape).reshape(-1)
        self._action_high = np.broadcast_to(action_spec.maximum, action_spec.shape).reshape(-1)
        self._env_steps = 0

    def render(self) -> np.ndarray:
        """Return the current frame from camera_id, (image_size, image_size, 3) uint8."""
        if self._camera is None:
            select_mujoco_gl(need_render=True)  # a clear error if no backend works
            from dm_control.mujoco import Camera

            # One camera for the whole run: building its scene costs more than a 64x64 frame.
            size = self.image_size
            physics = self.dmc_env.physics
            self._camera = Camera(physics, height=size, width=size, camera_id=self.camera_id)
        # The camera returns a view of its own buffer, which the next frame overwrites.
        return self._camera.render(render_flag_overrides=self._render_flags).copy()

    def close(self) -> None:
        """Free the camera and the MuJoCo physics."""
        self._camera = None
        self.dmc_env.close()

    def _reset(self, seed: int | None) -> dict:
        if seed is not None:
            self.dmc_env.task.random.seed(seed)
        self._env_steps = 0
        return self._observe(self.dmc_env.reset())

    def _step(self, env_action: np.ndarray) -> tuple[dict, float, bool, bool]:
        reward = 0.0
        for _ in range(self.action_repeat):
            time_step = self.dmc_env.step(env_action)
            self._env_steps += 1
            reward += time_step.reward or 0.0
            if time_step.last() or self._env_steps >= self.time_limit:
                break
        terminated = time_step.last() and time_step.discount == 0.0
        truncated = not terminated and (time_step.last() or self._env_steps >= self.time_limit)
        return self._observe(time_step), reward, terminated, truncated

    def _observe(self, time_step) -> dict:
        obs = {}
        if "vector" in self.obs_space:
            parts = [np.asarray(time_step.observation[key]).reshape(-1) for key in self._obs_keys]
            obs["vector"] = np.concatenate(parts).astype(np.float32)
        if "image" in self.obs_space:
            obs["image"] = self.render()
        return obs


def _resolve_dmc_task(task: str, all_tasks) -> tuple[str, str]:
    """Split "domain_task" into (domain, task) by lookup, since domains contain underscores."""
    names = {f"{domain}_{name}": (domain, name) for domain, name in all_tasks}
    if task in names:
        return names[task]
    close = difflib.get_close_matches(task, names, n=5, cutoff=0.5)
    raise ValueError(
        f"Unknown DMC task {task!r}. Close matches: {', '.join(close) or 'none'}. "
        "List all (domain, task) pairs with: from dm_control import suite; print(suite.ALL_TASKS)"
    )
