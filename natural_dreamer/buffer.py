"""Replay buffer: one ring of time steps, sampled as (B, T) sequences.

Each stored step t holds (pitfall 1)
    x_t          the observation (images as uint8, stored once: no next-observation copy),
    r_t          the reward that ARRIVED with x_t (0 at an episode's first step),
    is_first_t   x_t starts an episode,
    is_terminal_t  the episode really ended at x_t (not a time limit),
    a_t          the action then taken at x_t (zeros at an episode's last step).
Sequences may cross episode boundaries (the RSSM resets at is_first), but never the seam of
the ring where the newest step sits beside the oldest one.
"""

import numpy as np


class ReplayBuffer:
    """A fixed-capacity ring of time steps from one environment.

    obs_space: dict name -> (shape, dtype) of the observation keys to store.
    """

    def __init__(self, capacity: int, obs_space: dict, action_size: int, seed: int = 0):
        if capacity < 1:
            raise ValueError(f"replay capacity must be positive, got {capacity}")
        self.capacity = int(capacity)
        self.obs_keys = list(obs_space)
        # np.empty reserves address space only; pages are touched as steps arrive.
        self.data = {
            key: np.empty((self.capacity, *shape), dtype)
            for key, (shape, dtype) in obs_space.items()
        }
        self.data["action"] = np.zeros((self.capacity, action_size), np.float32)
        self.data["reward"] = np.zeros(self.capacity, np.float32)
        self.data["is_first"] = np.zeros(self.capacity, bool)
        self.data["is_terminal"] = np.zeros(self.capacity, bool)
        self.position = 0  # where the next step is written
        self.count = 0  # steps ever added
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return min(self.count, self.capacity)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays (at full capacity)."""
        return sum(array.nbytes for array in self.data.values())

    def add(self, step: dict) -> None:
        """Store one time step: the observation keys, "reward", "is_first", "is_terminal" and
        "action" (the action taken at this observation)."""
        for key, array in self.data.items():
            array[self.position] = step[key]
        self.position = (self.position + 1) % self.capacity
        self.count += 1

    def sample(self, batch_size: int, length: int) -> dict:
        """Uniformly sampled sequences: dict of arrays (batch_size, length, ...)."""
        size = len(self)
        if size < length:
            raise ValueError(f"the buffer holds {size} steps, fewer than one sequence of {length}")
        # Offsets count from the oldest step, so a sequence never runs past the newest one.
        oldest = self.position if self.count > self.capacity else 0
        starts = self.rng.integers(0, size - length + 1, batch_size)  # (B,)
        index = (oldest + starts[:, None] + np.arange(length)) % self.capacity  # (B, T)
        return {key: array[index] for key, array in self.data.items()}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: the filled part of the ring and the RNG."""
        size = len(self)
        return {
            "data": {key: array[:size].copy() for key, array in self.data.items()},
            "position": self.position,
            "count": self.count,
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        size = len(next(iter(state["data"].values())))
        if size > self.capacity:
            raise ValueError(f"saved buffer holds {size} steps, more than capacity {self.capacity}")
        for key, array in self.data.items():
            array[:size] = state["data"][key]
        self.position, self.count = state["position"], state["count"]
        self.rng.bit_generator.state = state["rng"]
