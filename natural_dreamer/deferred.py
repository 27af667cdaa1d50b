"""A training step's numbers left on the device until the host needs them.

On a GPU every read of a tensor's value by Python (`bool(loss.isfinite())`, `.item()`,
`.tolist()`) waits until the device has run every kernel queued before it: the host can no
longer run ahead and queue the next kernels while the device works, and no CUDA graph can
hold a step that stops half-way for the host. So a training step reads nothing:

    TrainStep     what Dreamer.train_step returns: the values the update guarded (each loss,
                  each gradient norm) and the step's metrics, stacked into one vector on the
                  device, and the posterior states of the batch (for the replay context).
    UnreadSteps   the steps the host has not read yet (Dreamer.unread). A metrics row reads
                  them all at once, in one transfer (`read`); a checkpoint makes sure of them
                  first (`check`, through Dreamer.state_dict); either raises FloatingPointError
                  at the first non-finite value, naming it and its gradient step.

How far the check can lag, and why that is safe: a non-finite update is found at the first of
(a) the next metrics row, every train.log_every env steps (walker_walk: 5,000 env steps, 1,250
updates); (b) the next save of any kind, since every checkpoint takes Dreamer.state_dict; (c)
the next policy step, whose one transfer tells whether the model's state or the policy came
out non-finite, and then asks these steps whether an update was the cause (Dreamer.act). So
no checkpoint ever holds the parameters of a non-finite update, no environment is ever handed
a non-finite action, and the error names the same loss and the same gradient step as a check
inside the update would have. What the lag costs is time: the updates after a bad one compute
on NaNs until (c) stops the run one policy step later (a NaN loss's gradient reaches the world
model or the actor), or else until (a) or (b).
"""

from collections.abc import Mapping

import numpy as np
import torch


class TrainStep(Mapping):
    """One training step's numbers, on the device.

    checks: labels of the values the update guarded, in the order it met them ("the
    world_model loss", "the world_model gradient norm", ...); names: the metric names;
    vector: (len(checks) + len(names),) float32 on the device, the guarded values and then
    the metrics; posterior: {"deter": (B, T, D), "stoch": (B, T, S, C)}, detached.

    As a mapping it reads {metric name: float}, as train_step returned before: the first value
    read copies the whole vector to the host once (a wait for the device's queue), so a
    caller that only trains never waits for it.
    """

    def __init__(self, checks, names, vector: torch.Tensor, posterior: dict):
        self.checks, self.names = tuple(checks), tuple(names)
        self.vector, self.posterior = vector, posterior
        self.position = {name: len(self.checks) + i for i, name in enumerate(self.names)}
        self.host = None  # the vector as a NumPy array, once read

    def labels(self) -> tuple:
        """What each entry of the vector is, for an error message."""
        return self.checks + self.names

    def __getitem__(self, name: str) -> float:
        if self.host is None:
            self.host = self.vector.cpu().numpy()
        return float(self.host[self.position[name]])

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def posterior_on_host(self) -> tuple:
        """(deter (B, T, D), stoch (B, T, S, C)) as float32 NumPy arrays, in one transfer."""
        deter, stoch = self.posterior["deter"], self.posterior["stoch"]
        both = torch.cat([deter.float(), stoch.float().flatten(2)], -1).cpu().numpy()
        D = deter.shape[-1]
        return both[..., :D], both[..., D:].reshape(stoch.shape)


def first_fault(labels: tuple, row: np.ndarray) -> str | None:
    """ "<label> became <value>" for the first non-finite value of a step's row, else None."""
    bad = np.flatnonzero(~np.isfinite(row))
    if not len(bad):
        return None
    return f"{labels[bad[0]]} became {float(row[bad[0]])}"


class UnreadSteps:
    """The training steps whose numbers the host has not read yet, in order: for each, its
    gradient step and its vector on the device (a few hundred bytes; never its posterior)."""

    def __init__(self):
        self.waiting = []  # (gradient step, TrainStep's labels and names, vector on the device)
        self.rows = []  # (gradient step, names, metric values) copied and checked

    def __len__(self) -> int:
        return len(self.waiting) + len(self.rows)

    def add(self, step: int, result: TrainStep) -> None:
        """Keep gradient step `step`'s numbers (reads nothing)."""
        self.waiting.append((step, result.labels(), result.names, result.vector))

    def check(self) -> None:
        """Copy the steps not yet copied to the host in one transfer, and raise
        FloatingPointError("<what> became <value> at gradient step <N>") at the first
        non-finite value among them."""
        if not self.waiting:
            return
        vectors = [vector for *_, vector in self.waiting]
        host = torch.cat(vectors).cpu().numpy()
        rows = np.split(host, np.cumsum([len(vector) for vector in vectors])[:-1])
        waiting, self.waiting = self.waiting, []
        for (step, labels, names, _), row in zip(waiting, rows, strict=True):
            self.rows.append((step, names, row[len(labels) - len(names) :].tolist()))
            fault = first_fault(labels, row)
            if fault:
                raise FloatingPointError(f"{fault} at gradient step {step}")

    def read(self) -> dict:
        """Check, then hand over every unread step's metrics as {name: [float per step]} and
        forget them."""
        self.check()
        metrics = {}
        for _, names, values in self.rows:
            for name, value in zip(names, values, strict=True):
                metrics.setdefault(name, []).append(value)
        self.rows = []
        return metrics
