"""The step-dict contract every environment suite follows, and the frame resize they share.

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
"""

import numpy as np

OBS_MODES = ("pixels", "proprio", "both")
MIN_IMAGE_SIZE = 16


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


def resize_frame(frame: np.ndarray, size: int) -> np.ndarray:
    """(H, W, 3) uint8 -> (size, size, 3) uint8; PIL low-pass filters when shrinking."""
    if frame.shape[:2] == (size, size):
        return frame
    from PIL import Image

    # np.array, not np.asarray: PIL hands out read-only arrays, which torch warns about.
    return np.array(Image.fromarray(frame).resize((size, size), Image.Resampling.BILINEAR))
