"""Atari 2600 games (ale-py) behind the step-dict contract of base.py.

Square RGB images (image_size, 64 in the configs) and discrete actions taken as one-hot
vectors (the argmax is played), in DreamerV3's Atari100k setting (see AtariEnv). ale-py is
imported when an AtariEnv is built; the ROMs ship inside its wheel.
"""

import difflib

import numpy as np

from natural_dreamer.envs.base import Env, resize_frame


class AtariEnv(Env):
    """An Atari 2600 game through ale-py, by ALE's name: "pong", "breakout", "ms_pacman".

    The ROMs ship inside the ale-py wheel; nothing is downloaded. One policy step is
    action_repeat emulator frames (4) of the same action with their rewards summed (unclipped:
    the two-hot reward head copes with any scale). The observation is the pixelwise maximum of
    the last two of those frames, because some games draw sprites only on every other frame,
    resized to image_size x image_size RGB with PIL's bilinear filter.

    sticky: the probability that the emulator keeps the previous frame's action instead of the
      new one, on every frame (Machado et al. 2018: 0.25), so that a memorised action sequence
      cannot exploit the deterministic emulator. 0 turns it off, as the Atari100k protocol has it.
    noops: each reset plays a uniform random number in [0, noops] of NOOP frames, drawn from
      the episode's seed, so that episodes do not all start from one emulator state.
    full_action_space: False (default) offers the game's minimal action set (6 actions in Pong,
      4 in Breakout), as the DreamerV3 Atari100k setting does; True offers all 18.

    Losing a life is not an end; is_terminal marks game over only. Games that wait for FIRE
    after a reset or a lost life (Breakout) are not pressed for: the agent learns to fire.
    time_limit counts emulator frames (108,000, 30 minutes of play, in the Atari benchmarks);
    reaching it truncates. `ale_env` is ale-py's gymnasium env, stepped one frame at a time.
    """

    def __init__(
        self,
        game: str,
        obs: str = "pixels",
        image_size: int = 64,
        action_repeat: int = 4,
        time_limit: int = 108_000,
        seed: int = 0,
        sticky: float = 0.25,
        noops: int = 30,
        full_action_space: bool = False,
    ):
        super().__init__(obs, image_size, action_repeat, time_limit)
        if obs != "pixels":
            raise ValueError(f"Atari games offer obs 'pixels' only, got {obs!r}.")
        import ale_py
        from ale_py import roms

        ale_py.ALEInterface.setLoggerMode(ale_py.LoggerMode.Error)  # no banner on stdout
        games = roms.get_all_rom_ids()
        if game not in games:
            close = difflib.get_close_matches(game, games, n=5, cutoff=0.5)
            raise ValueError(
                f"Unknown Atari game {game!r}. Close matches: {', '.join(close) or 'none'}. "
                "List them all with: from ale_py import roms; print(roms.get_all_rom_ids())"
            )
        self.ale_env = ale_py.AtariEnv(
            game=game,
            frameskip=1,  # the repeat and the max-pooling happen here
            repeat_action_probability=sticky,
            full_action_space=full_action_space,
        )
        self.action_size, self.discrete = int(self.ale_env.action_space.n), True
        self._noop = self.ale_env.get_action_meanings().index("NOOP")
        self.noops = noops
        self._seed = seed
        self._rng = np.random.default_rng(seed)
        self._frames = None  # the last two emulator frames, (210, 160, 3) uint8 each
        self._image = None
        self._env_steps = 0

    def render(self) -> np.ndarray:
        """Return the latest observation, (image_size, image_size, 3) uint8."""
        if self._image is None:
            raise RuntimeError("render() called before the first reset().")
        return self._image

    def close(self) -> None:
        """Close the emulator."""
        self.ale_env.close()

    def _reset(self, seed: int | None) -> dict:
        # Without a seed, only the first reset is seeded; later ones continue its streams.
        seed = self._seed if seed is None else seed
        self._seed = None
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        frame, _ = self.ale_env.reset(seed=seed)  # a seed also seeds the sticky actions
        for _ in range(self._rng.integers(self.noops + 1)):
            frame, _, game_over, _, _ = self.ale_env.step(self._noop)
            if game_over:
                frame, _ = self.ale_env.reset()
        self._frames = [frame, frame]
        self._env_steps = 0
        return self._observe()

    def _step(self, env_action: int) -> tuple[dict, float, bool, bool]:
        reward, terminated, truncated = 0.0, False, False
        for _ in range(self.action_repeat):
            frame, frame_reward, terminated, truncated, _ = self.ale_env.step(env_action)
            self._frames = [self._frames[1], frame]
            self._env_steps += 1
            reward += float(frame_reward)
            truncated = truncated or self._env_steps >= self.time_limit
            if terminated or truncated:
                break
        return self._observe(), reward, bool(terminated), bool(truncated and not terminated)

    def _observe(self) -> dict:
        pooled = np.maximum(self._frames[0], self._frames[1])  # (210, 160, 3)
        self._image = resize_frame(pooled, self.image_size)
        return {"image": self._image}
