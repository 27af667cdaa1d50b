"""Replay batches as tensors on the agent's device, sampled ahead on a GPU.

On a CPU a batch is sampled when a gradient step asks for it. On a GPU that would leave the
GPU idle while NumPy gathers the sequences and the copy waits, so `BatchLoader(ahead=True)`
samples the NEXT batch in a background thread, pins it and copies it to the GPU on a side
stream while the current gradient step runs. The thread only runs during a gradient step
(`wait` is called before the buffer is written again), so which batches come out never
depends on timing: a run is as repeatable as on the CPU. The one difference is that the
batch of update k + 1 is drawn during update k, before any steps collected in between.

The replay rows of a batch (HOST_KEYS: where the context states are read, where the fresh ones
are written back) stay NumPy arrays on the host, where they are used: on a GPU, reading them
back from the device would make the host wait for every kernel queued before.
"""

import contextlib
from concurrent.futures import ThreadPoolExecutor

import torch

from natural_dreamer.fastpath import choose_pinned

# Keys of ReplayBuffer.sample's batches that address replay rows: the host's, not the model's.
HOST_KEYS = ("context_row", "index")


def to_device(batch: dict, device: torch.device) -> dict:
    """NumPy (B, T, ...) arrays (or tensors) -> tensors on `device`; to a GPU through pinned
    memory, without blocking (fastpath.choose_pinned). Images stay uint8 until the encoder
    converts them; HOST_KEYS stay NumPy arrays."""
    device = torch.device(device)
    pinned, _ = choose_pinned(device)
    tensors = {}
    for key, array in batch.items():
        if key in HOST_KEYS:
            tensors[key] = array
            continue
        tensor = torch.as_tensor(array)
        if pinned and tensor.device.type == "cpu":
            tensor = tensor.pin_memory()
        tensors[key] = tensor.to(device, non_blocking=pinned)
    return tensors


class BatchLoader:
    """Sample (batch_size, length) sequences from a ReplayBuffer onto `device`.

    ahead: prepare the next batch in a background thread while the current one trains.
    context: steps read in front of each sequence (replay context, 0 or 1); their stored
    states are read when the batch is handed out, after the previous update wrote its own.
    """

    def __init__(
        self, buffer, batch_size: int, length: int, device, ahead: bool = False, context: int = 0
    ):
        self.buffer, self.batch_size, self.length = buffer, batch_size, length
        self.context = context
        self.device, self.ahead = torch.device(device), ahead
        self.pool = ThreadPoolExecutor(max_workers=1) if ahead else None
        self.stream = (
            torch.cuda.Stream(self.device) if ahead and self.device.type == "cuda" else None
        )
        self.pending = None  # the next batch being prepared (a Future)
        self.state_before_pending = None  # the sampler's state before that batch was drawn

    def next(self) -> dict:
        """The next batch: dict of (batch_size, length, ...) tensors on the device."""
        batch = self.pending.result() if self.pending else self.load()
        if self.stream is not None:
            for tensor in batch.values():  # used on the main stream, made on the side stream
                tensor.record_stream(torch.cuda.current_stream(self.device))
        self.pending = None
        if self.context:
            rows = batch.pop("context_row")  # (B,) NumPy: read on the host
            batch.update(to_device(self.buffer.context_states(rows), self.device))
        if self.ahead:
            self.state_before_pending = self.buffer.sampler_state()
            self.pending = self.pool.submit(self.load)
        return batch

    def load(self) -> dict:
        stream = torch.cuda.stream(self.stream) if self.stream else contextlib.nullcontext()
        with stream:
            sample = self.buffer.sample(self.batch_size, self.length, self.context)
            batch = to_device(sample, self.device)
        if self.stream is not None:
            self.stream.synchronize()  # this thread waits for the copy, not the main one
        return batch

    def wait(self) -> None:
        """Let the batch being prepared finish: call before the buffer is written to."""
        if self.pending:
            self.pending.result()

    def drop(self) -> None:
        """Forget the batch being prepared and rewind the sampler to before it, so the state
        a checkpoint saves is the one a resumed run continues from exactly."""
        if self.pending:
            self.pending.result()
            self.buffer.set_sampler_state(self.state_before_pending)
            self.pending = None

    @contextlib.contextmanager
    def rewound(self):
        """Within: the sampler reads as it was before the batch being prepared, which stays
        (a save that must not change the run making it)."""
        if not self.pending:
            yield
            return
        self.pending.result()
        now = self.buffer.sampler_state()
        self.buffer.set_sampler_state(self.state_before_pending)
        try:
            yield
        finally:
            self.buffer.set_sampler_state(now)

    def close(self) -> None:
        if self.pool:
            self.pool.shutdown(wait=True)
