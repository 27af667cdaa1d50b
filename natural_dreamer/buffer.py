"""Replay buffer: one ring of time steps per environment, sampled as (B, T) sequences.

Each stored step t holds (pitfall 1)
    x_t          the observation (images as uint8, stored once: no next-observation copy),
    r_t          the reward that ARRIVED with x_t (0 at an episode's first step),
    is_first_t   x_t starts an episode,
    is_terminal_t  the episode really ended at x_t (not a time limit),
    a_t          the action then taken at x_t (zeros at an episode's last step).
Sequences may cross episode boundaries (the RSSM resets at is_first), but never the seam of
a ring where the newest step sits beside the oldest one.

Replay context (official `replay_context: 1`): with `latent=(D, S, C)` the buffer also keeps,
for every step, the posterior state (h_t, z_t) that the latest update computed for it.
`sample(..., context=1)` then reads one step more in front of each sequence, and the model
starts the sequence from that step's stored state instead of from zeros, so a sequence that
begins in the middle of an episode does not begin blank (zeros there would act as a false
episode start). `write_latents` stores the fresh states after every update. A step that was
never trained on has no state yet; its sequences start from zeros, as before.

Online queue (official `replay.online`): with `online=True` every chunk of T freshly added
steps of a stream is queued, and `sample` takes queued chunks (oldest first) before drawing
the rest of the batch uniformly, so every step is trained on at least once while it is new.

With several environments stepping side by side, each writes into its own ring (a "stream"),
so a sequence always follows one environment: interleaving them in one ring would splice the
steps of two episodes into a sequence that never happened.
"""

import collections

import numpy as np


class ReplayBuffer:
    """Fixed-capacity rings of time steps, one per environment.

    obs_space: dict name -> (shape, dtype) of the observation keys to store.
    streams: how many environments write into the buffer; each gets capacity // streams steps.
    """

    def __init__(
        self,
        capacity: int,
        obs_space: dict,
        action_size: int,
        seed: int = 0,
        streams: int = 1,
        latent: tuple | None = None,
        online: bool = False,
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
        # Stored posterior states: h as float16 (it lies in [-1, 1]), z as the index of each
        # one-hot latent, and whether the step has one yet. np.zeros touches no pages.
        self.latent = latent
        if latent is not None:
            deter, stoch, classes = latent
            if classes > 256:
                raise ValueError(f"stored latents hold at most 256 classes, got {classes}")
            self.latents = {
                "deter": np.zeros((self.capacity, deter), np.float16),
                "stoch": np.zeros((self.capacity, stoch), np.uint8),
                "valid": np.zeros(self.capacity, bool),
            }
        self.online = online
        self.queue = collections.deque()  # (stream, end) of fresh chunks: steps [end - T, end)
        self.chunk = None  # T of the queued chunks, set by the first online sample

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
        if self.latent is not None:
            self.latents["valid"][row] = False  # a new step has no posterior state yet
        self.positions[stream] = (self.positions[stream] + 1) % self.stream_capacity
        self.counts[stream] += 1
        if self.online and self.chunk and self.counts[stream] % self.chunk == 0:
            self.queue.append((stream, int(self.counts[stream])))

    def sample(self, batch_size: int, length: int, context: int = 0) -> dict:
        """Sequences: dict of arrays (batch_size, length, ...), uniformly sampled (after any
        queued fresh chunks when the buffer is online).

        Every start position of every stream is equally likely, so a stream with more steps
        gives more sequences; with one stream this is a plain uniform draw of start positions.
        context=1 (needs `latent`) reads one step more in front of each sequence and adds
        "context_action" (B, A), the action taken there, "context_row" (B,), where its stored
        state lies (read it with `context_states`), and "index" (B, T), the rows of the
        sequence (for `write_latents`).
        """
        span = length + context
        sizes = self.stream_sizes()  # (N,)
        starts_per_stream = np.maximum(sizes - span + 1, 0)  # (N,) valid sequence starts
        if starts_per_stream.sum() == 0:
            raise ValueError(
                f"the buffer holds {len(self)} steps, fewer than one sequence of {span}"
                + (" in any one environment's stream" if self.streams > 1 else "")
            )
        if self.online:
            self.chunk = length
        stream, first = self.pop_fresh(batch_size, span)  # (k,) each, absolute step numbers
        # One draw over all valid starts of all streams, then found back in its stream.
        flat = self.rng.integers(0, starts_per_stream.sum(), batch_size - len(stream))  # (B-k,)
        ends = np.cumsum(starts_per_stream)  # (N,)
        drawn = np.searchsorted(ends, flat, side="right")  # (B - k,)
        start = flat - (ends - starts_per_stream)[drawn]  # offset from the stream's oldest step
        oldest = (self.counts - sizes)[drawn]  # absolute step number of each oldest step
        stream = np.concatenate([stream, drawn])  # (B,)
        first = np.concatenate([first, oldest + start])  # (B,) absolute first step (context)
        steps = first[:, None] + np.arange(span)  # (B, T + context), never past the newest
        rows = stream[:, None] * self.stream_capacity + steps % self.stream_capacity
        batch = {key: array[rows[:, context:]] for key, array in self.data.items()}
        if context:
            batch["context_action"] = self.data["action"][rows[:, 0]]
            batch["context_row"] = rows[:, 0]
            batch["index"] = rows[:, context:]
        return batch

    def pop_fresh(self, batch_size: int, span: int):
        """Up to batch_size queued fresh chunks that still lie whole in their rings, as
        (streams (k,), absolute first steps (k,)) of sequences of `span` steps ending there."""
        streams, firsts = [], []
        while self.queue and len(streams) < batch_size:
            stream, end = self.queue.popleft()
            first = end - span
            if first >= self.counts[stream] - self.stream_sizes()[stream]:  # still stored
                streams.append(stream)
                firsts.append(first)
        return np.array(streams, np.int64), np.array(firsts, np.int64)

    def context_states(self, rows: np.ndarray) -> dict:
        """The stored posterior states at `rows` (B,): "context_deter" (B, D) float32,
        "context_stoch" (B, S, C) float32 one-hot, "context_valid" (B,) bool (False where no
        update has stored a state yet; the state is zeros there)."""
        valid = self.latents["valid"][rows]
        classes = self.latent[2]
        stoch = np.eye(classes, dtype=np.float32)[self.latents["stoch"][rows]]  # (B, S, C)
        return {
            "context_deter": self.latents["deter"][rows].astype(np.float32) * valid[:, None],
            "context_stoch": stoch * valid[:, None, None],
            "context_valid": valid,
        }

    def write_latents(self, index: np.ndarray, deter: np.ndarray, stoch: np.ndarray) -> None:
        """Store fresh posterior states: index (B, T) rows, deter (B, T, D), stoch
        (B, T, S, C) one-hot."""
        self.latents["deter"][index] = deter
        self.latents["stoch"][index] = stoch.argmax(-1)
        self.latents["valid"][index] = True

    def sampler_state(self) -> dict:
        """What decides the next samples: the random stream and the queue of fresh chunks."""
        return {"rng": self.rng.bit_generator.state, "queue": list(self.queue)}

    def set_sampler_state(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.queue = collections.deque(tuple(entry) for entry in state["queue"])

    def state_dict(self) -> dict:
        """Everything needed to continue exactly: the filled part of each ring and the RNG."""
        sizes = self.stream_sizes()
        rows = np.concatenate(
            [i * self.stream_capacity + np.arange(n) for i, n in enumerate(sizes)]
        )
        state = {
            "data": {key: array[rows] for key, array in self.data.items()},  # streams in order
            "sizes": sizes.tolist(),
            "positions": self.positions.tolist(),
            "counts": self.counts.tolist(),
            "rng": self.rng.bit_generator.state,
            "queue": [list(entry) for entry in self.queue],
            "chunk": self.chunk,
        }
        if self.latent is not None:
            state["latents"] = {key: array[rows] for key, array in self.latents.items()}
        return state

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
            if self.latent is not None and "latents" in state:  # older files hold none
                for key, array in self.latents.items():
                    array[rows] = state["latents"][key][first : first + size]
            first += size
        self.queue = collections.deque(tuple(entry) for entry in state.get("queue", []))
        self.chunk = state.get("chunk")
        self.positions = np.array(positions, np.int64)
        self.counts = np.array(counts, np.int64)
        self.rng.bit_generator.state = state["rng"]
