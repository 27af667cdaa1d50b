"""Replay buffer: one ring of time steps per environment, sampled as (B, T) sequences.

Each stored step t holds (pitfall 1)
    x_t          the observation (images as uint8, stored once: no next-observation copy),
    r_t          the reward that ARRIVED with x_t (0 at an episode's first step),
    is_first_t   x_t starts an episode,
    is_terminal_t  the episode really ended at x_t (not a time limit),
    a_t          the action then taken at x_t (zeros at an episode's last step).
Sequences may cross episode boundaries (the RSSM resets at is_first), but never the seam of
a ring where the newest step sits beside the oldest one.

With several environments stepping side by side, each writes into its own ring (a "stream"),
so a sequence always follows one environment: interleaving them in one ring would splice the
steps of two episodes into a sequence that never happened.
"""

import numpy as np


class ReplayBuffer:
    """Fixed-capacity rings of time steps, one per environment.

    obs_space: dict name -> (shape, dtype) of the observation keys to store.
    streams: how many environments write into the buffer; each gets capacity // streams steps.
    """

    def __init__(
        self, capacity: int, obs_space: dict, action_size: int, seed: int = 0, streams: int = 1
    ):
        if streams < 1 or capacity < streams:
            raise ValueError(
                f"replay capacity must be at least one step per stream, got {capacity} steps "
                f"for {streams} streams"
            )
        self.streams = int(streams)
        self.stream_capacity = int(capacity) // self.streams
        self.capacity = self.stream_capacity * self.streams
        self.obs_keys = list(obs_space)
        # np.empty reserves address space only; pages are touched as steps arrive.
        # Stream i owns rows [i * stream_capacity, (i + 1) * stream_capacity).
        self.data = {
            key: np.empty((self.capacity, *shape), dtype)
            for key, (shape, dtype) in obs_space.items()
        }
        self.data["action"] = np.zeros((self.capacity, action_size), np.float32)
        self.data["reward"] = np.zeros(self.capacity, np.float32)
        self.data["is_first"] = np.zeros(self.capacity, bool)
        self.data["is_terminal"] = np.zeros(self.capacity, bool)
        self.positions = np.zeros(self.streams, np.int64)  # where each stream writes next
        self.counts = np.zeros(self.streams, np.int64)  # steps ever added to each stream
        self.rng = np.random.default_rng(seed)

    def __len__(self) -> int:
        return int(self.stream_sizes().sum())

    @property
    def count(self) -> int:
        """Steps ever added, over all streams."""
        return int(self.counts.sum())

    @property
    def position(self) -> int:
        """Where stream 0 writes next: with one stream, the ring's write position."""
        return int(self.positions[0])

    def stream_sizes(self) -> np.ndarray:
        """(streams,) steps held by each stream."""
        return np.minimum(self.counts, self.stream_capacity)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stored arrays (at full capacity)."""
        return sum(array.nbytes for array in self.data.values())

    def add(self, step: dict, stream: int = 0) -> None:
        """Store one time step of environment `stream`: the observation keys, "reward",
        "is_first", "is_terminal" and "action" (the action taken at this observation)."""
        row = stream * self.stream_capacity + self.positions[stream]
        for key, array in self.data.items():
            array[row] = step[key]
        self.positions[stream] = (self.positions[stream] + 1) % self.stream_capacity
        self.counts[stream] += 1

    def sample(self, batch_size: int, length: int) -> dict:
        """Uniformly sampled sequences: dict of arrays (batch_size, length, ...).

        Every start position of every stream is equally likely, so a stream with more steps
        gives more sequences; with one stream this is a plain uniform draw of start positions.
        """
        sizes = self.stream_sizes()  # (N,)
        starts_per_stream = np.maximum(sizes - length + 1, 0)  # (N,) valid sequence starts
        if starts_per_stream.sum() == 0:
            raise ValueError(
                f"the buffer holds {len(self)} steps, fewer than one sequence of {length}"
                + (" in any one environment's stream" if self.streams > 1 else "")
            )
        # One draw over all valid starts of all streams, then found back in its stream.
        flat = self.rng.integers(0, starts_per_stream.sum(), batch_size)  # (B,)
        ends = np.cumsum(starts_per_stream)  # (N,)
        stream = np.searchsorted(ends, flat, side="right")  # (B,)
        start = flat - (ends - starts_per_stream)[stream]  # (B,) offset within the stream
        # Offsets count from a stream's oldest step, so a sequence never runs past its newest.
        oldest = np.where(self.counts > self.stream_capacity, self.positions, 0)[stream]  # (B,)
        offset = (oldest + start)[:, None] + np.arange(length)  # (B, T)
        index = stream[:, None] * self.stream_capacity + offset % self.stream_capacity  # (B, T)
        return {key: array[index] for key, array in self.data.items()}

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: the filled part of each ring and the RNG."""
        sizes = self.stream_sizes()
        rows = np.concatenate(
            [i * self.stream_capacity + np.arange(n) for i, n in enumerate(sizes)]
        )
        return {
            "data": {key: array[rows] for key, array in self.data.items()},  # streams in order
            "sizes": sizes.tolist(),
            "positions": self.positions.tolist(),
            "counts": self.counts.tolist(),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict) -> None:
        saved = len(next(iter(state["data"].values())))
        # Checkpoints from before streams existed hold one ring as "position" and "count".
        sizes = state.get("sizes", [saved])
        positions = state.get("positions", [state.get("position")])
        counts = state.get("counts", [state.get("count")])
        if len(sizes) != self.streams:
            raise ValueError(f"saved buffer has {len(sizes)} streams, this one {self.streams}")
        if max(sizes) > self.stream_capacity:
            raise ValueError(
                f"saved buffer holds {max(sizes)} steps per stream, more than capacity "
                f"{self.stream_capacity}"
            )
        first = 0  # where stream i's steps begin in the saved arrays
        for i, size in enumerate(sizes):
            rows = slice(i * self.stream_capacity, i * self.stream_capacity + size)
            for key, array in self.data.items():
                array[rows] = state["data"][key][first : first + size]
            first += size
        self.positions = np.array(positions, np.int64)
        self.counts = np.array(counts, np.int64)
        self.rng.bit_generator.state = state["rng"]
