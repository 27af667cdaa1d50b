"""One environment API for DeepMind Control, Gymnasium, Atari, Crafter and a toy counter.

The agent talks to every suite through the same step dicts:

    reset() -> {"image"?, "vector"?, "reward", "is_first", "is_last", "is_terminal"}
    step(action) -> the same keys (Crafter adds "achievements" to an episode's last dict)

The reward in a dict is the one that ARRIVED with that dict's observation, so a replay
buffer can store each dict as one row without shifting credit by a step.
`is_terminal` marks a real end of the task (the value after it is zero); `is_last` marks any
end of an episode, including truncation at a time limit, which must not be learned as
termination.

Continuous actions are always in [-1, 1] for the agent and rescaled here to the suite's
bounds; discrete actions arrive as a vector of length n (one-hot or probabilities) and
the argmax is taken.

dm_control is imported lazily, after `select_mujoco_gl` has picked a headless OpenGL
backend, because dm_control fixes its backend for the whole process when imported; ale-py
and crafter are imported when their suite is built.

Atari and Crafter live in worlds.py; `python -m natural_dreamer.bench --tables envs` times
the suites on this machine.
"""

import difflib
import os
import subprocess
import sys
from collections.abc import Mapping

import numpy as np

# Gymnasium's classic-control renderer initialises SDL; without a screen it should not look
# for one (and then print "XDG_RUNTIME_DIR is invalid" on every run).
os.environ.setdefault("SDL_VIDEODRIVER", "dummy")

SUITES = ("dmc", "gym", "toy", "atari", "crafter")
OBS_MODES = ("pixels", "proprio", "both")
MIN_IMAGE_SIZE = 16
TOY_TASKS = ("counter", "counter_terminal", "counter_nan", "action")

_GL_PACKAGES = {"egl": "libegl1 libgl1-mesa-dri libopengl0", "osmesa": "libosmesa6"}
_GL_DISABLED = ("off", "disable", "disabled", "false", "0")
# Runs in a child process: a failed GL initialisation can leave PyOpenGL bound to a
# platform for good, so it must not happen in the process that will render.
_GL_PROBE = (
    "from dm_control import _render\n"
    "context = _render.Renderer(16, 16)\n"
    "with context.make_current():\n"
    "    pass\n"
    "context.free()\n"
)
_gl_failure = ""  # why no backend worked, shown when rendering is asked for later


def select_mujoco_gl(need_render: bool = True) -> str:
    """Set MUJOCO_GL to a working headless backend before dm_control is imported.

    A MUJOCO_GL set by the user is kept. Otherwise "egl" is tried, then "osmesa", each by
    creating a 16x16 context in a child process (about 0.4 s, once per process: the choice
    is written to os.environ and inherited by child processes).

    Args:
      need_render: if True, raise when neither backend works; if False, set MUJOCO_GL to
        "disable" instead so that vector-only environments still run.

    Returns:
      The backend now in effect ("egl", "osmesa", "disable", or the user's own value).

    Raises:
      RuntimeError: need_render is True but rendering is off; after a failed probe the
        message names the Debian packages each backend needs.
    """
    backend = os.environ.get("MUJOCO_GL")
    if not backend and "dm_control._render" in sys.modules:
        # Too late to choose: dm_control picked its backend when it was imported.
        backend = sys.modules["dm_control._render"].BACKEND or "default"
    backend = backend or _first_working_gl()
    if need_render and backend.lower() in _GL_DISABLED:
        raise RuntimeError(_gl_failure or f"Rendering is off because MUJOCO_GL={backend!r}.")
    return backend


def _first_working_gl() -> str:
    """Probe egl then osmesa; export and return the first that works, else "disable"."""
    global _gl_failure
    failures = []
    for backend, packages in _GL_PACKAGES.items():
        error = _probe_gl(backend)
        if error is None:
            os.environ["MUJOCO_GL"] = backend
            return backend
        failures.append(f"{backend} ({error}; needs Debian packages: {packages})")
    _gl_failure = "No headless OpenGL backend works for MuJoCo rendering: " + "; ".join(failures)
    os.environ["MUJOCO_GL"] = "disable"
    return "disable"


def _probe_gl(backend: str) -> str | None:
    """Return None if `backend` can create a GL context, else the last error line."""
    env = dict(os.environ, MUJOCO_GL=backend)
    try:
        result = subprocess.run(
            [sys.executable, "-c", _GL_PROBE], env=env, capture_output=True, text=True, timeout=120
        )
    except subprocess.TimeoutExpired:
        return "timed out"
    if result.returncode == 0:
        return None
    lines = result.stderr.strip().splitlines()
    return lines[-1] if lines else f"exit status {result.returncode}"


class Env:
    """The step-dict contract shared by every suite.

    Attributes:
      obs_space: dict name -> (shape tuple, numpy dtype); "image": ((H, W, 3), uint8) for
        obs "pixels"/"both", "vector": ((N,), float32) for obs "proprio"/"both".
      action_size: int, length of the action vector given to step().
      discrete: bool, True when step() takes the argmax of the action vector.

    Subclasses set those attributes (plus _action_low/_action_high, shape (action_size,),
    for continuous actions) and implement _reset() -> obs dict,
    _step(env_action) -> (obs dict, reward, terminated, truncated), render() and close().
    """

    obs_space: dict[str, tuple[tuple[int, ...], np.dtype]]
    action_size: int
    discrete: bool

    def __init__(self, obs: str, image_size: int, action_repeat: int, time_limit: int):
        if obs not in OBS_MODES:
            raise ValueError(f"Unknown obs {obs!r}; choose one of: {', '.join(OBS_MODES)}.")
        if image_size < MIN_IMAGE_SIZE:
            raise ValueError(f"image_size must be at least {MIN_IMAGE_SIZE}, got {image_size}.")
        if action_repeat < 1 or time_limit < 1:
            raise ValueError(
                f"action_repeat and time_limit must be >= 1, got {action_repeat}, {time_limit}."
            )
        self.obs_mode = obs
        self.image_size = image_size
        self.action_repeat = action_repeat
        self.time_limit = time_limit
        self.obs_space = {}
        if obs in ("pixels", "both"):
            self.obs_space["image"] = ((image_size, image_size, 3), np.dtype(np.uint8))
        self._phase = "new"  # "new" -> "running" -> "ended" -> (reset) "running"

    def reset(self, seed: int | None = None) -> dict:
        """Start an episode; returns the first step dict (reward 0.0, is_first True).

        A seed makes this episode's start a function of the seed alone (the training loop
        seeds each episode by its index, so a resumed run meets the same episodes).
        """
        obs = self._reset(seed)
        self._phase = "running"
        return self._step_dict(obs, 0.0, first=True, terminal=False, last=False)

    def step(self, action: np.ndarray) -> dict:
        """Apply `action` (shape (action_size,)) action_repeat times; returns a step dict.

        The dict's reward is the sum over the repeats that led to its observation.
        """
        if self._phase != "running":
            when = "before the first reset()" if self._phase == "new" else "after is_last"
            raise RuntimeError(f"step() called {when}; call reset() to start an episode.")
        obs, reward, terminated, truncated = self._step(self._to_env_action(action))
        last = bool(terminated or truncated)
        if last:
            self._phase = "ended"
        return self._step_dict(obs, reward, first=False, terminal=bool(terminated), last=last)

    def render(self) -> np.ndarray:
        """Return the current frame, (image_size, image_size, 3) uint8."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the simulator and any rendering resources."""

    def _to_env_action(self, action: np.ndarray) -> int | np.ndarray:
        """Agent action -> suite action: argmax index, or [-1, 1] mapped onto the bounds."""
        action = np.asarray(action, dtype=np.float64).reshape(-1)
        if action.shape != (self.action_size,):
            raise ValueError(
                f"Expected an action of shape ({self.action_size},), got {action.shape}."
            )
        if self.discrete:
            return int(np.argmax(action))
        action = np.clip(action, -1.0, 1.0)
        return self._action_low + (action + 1.0) * 0.5 * (self._action_high - self._action_low)

    @staticmethod
    def _step_dict(obs: dict, reward: float, first: bool, terminal: bool, last: bool) -> dict:
        flags = {"is_first": first, "is_last": last, "is_terminal": terminal}
        return {**obs, "reward": np.float32(reward), **flags}

    def _reset(self, seed: int | None) -> dict:
        raise NotImplementedError

    def _step(self, env_action) -> tuple[dict, float, bool, bool]:
        raise NotImplementedError


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
            return _resize(self._frame, self.image_size)
        frame = self.gym_env.render() if self.gym_env.render_mode == "rgb_array" else None
        if frame is None:
            raise RuntimeError(f"{self.gym_env.spec.id} cannot render rgb_array frames.")
        return _resize(np.asarray(frame, dtype=np.uint8), self.image_size)

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


def _resize(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8; PIL low-pass filters when shrinking."""
    if frame.shape[:2] == (size, size):
        return frame
    from PIL import Image

    # np.array, not np.asarray: PIL hands out read-only arrays, which torch warns about.
    return np.array(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR))


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


def make_env(env_config: Mapping, seed: int) -> Env:
    """Build the environment an env config describes.

    Args:
      env_config: mapping with "suite" ("dmc", "gym", "atari", "crafter" or "toy"), "task"
        (atari: an ALE game name such as "pong"; crafter: "reward" or "noreward"), and
        optionally "obs" ("pixels", "proprio" or "both"; default "proprio", and "pixels",
        the only choice, for atari and crafter), "image_size" (default 64), "action_repeat"
        (default 2 for dmc, 4 for atari, 1 otherwise; the toy ignores it), "time_limit"
        (environment steps before action repeat; default 108000 for atari, 10000 for
        crafter, 1000 otherwise), and for dmc "camera" (default 2 for quadruped, else 0) and
        "fast_render" (default True: no multisampling, shadows or reflections, about 10x
        cheaper frames), and for atari "sticky" (default 0.0, the Atari100k protocol: the
        probability of repeating the previous action on each frame). Atari runs with up to 30
        noops at reset and the minimal action set; AtariEnv's arguments change those.
      seed: seeds the task's randomness (dmc, crafter) or the first reset (gym, atari).

    Returns:
      An Env following the step-dict contract described in this module's docstring.
    """
    suite = env_config.get("suite")
    common = {
        "obs": env_config.get("obs", "proprio"),
        "image_size": int(env_config.get("image_size", 64)),
        "time_limit": int(env_config.get("time_limit", 1000)),
    }
    if suite == "dmc":
        return DMCEnv(
            env_config["task"],
            action_repeat=int(env_config.get("action_repeat", 2)),
            seed=seed,
            camera=env_config.get("camera"),
            fast_render=bool(env_config.get("fast_render", True)),
            **common,
        )
    if suite == "gym":
        action_repeat = int(env_config.get("action_repeat", 1))
        return GymEnv(env_config["task"], action_repeat=action_repeat, seed=seed, **common)
    if suite == "atari":
        from natural_dreamer.worlds import AtariEnv

        return AtariEnv(
            env_config["task"],
            obs=env_config.get("obs", "pixels"),
            image_size=common["image_size"],
            action_repeat=int(env_config.get("action_repeat", 4)),
            time_limit=int(env_config.get("time_limit", 108_000)),
            seed=seed,
            sticky=float(env_config.get("sticky", 0.0)),
        )
    if suite == "crafter":
        from natural_dreamer.worlds import CrafterEnv

        return CrafterEnv(
            env_config.get("task", "reward"),
            obs=env_config.get("obs", "pixels"),
            image_size=common["image_size"],
            action_repeat=int(env_config.get("action_repeat", 1)),
            time_limit=int(env_config.get("time_limit", 10_000)),
            seed=seed,
        )
    if suite == "toy":
        return ToyEnv(env_config.get("task", "counter"), **common)
    raise ValueError(f"Unknown env suite {suite!r}; choose one of: {', '.join(SUITES)}.")
