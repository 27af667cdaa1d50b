"""Small numerical tools shared by every part of the agent.

symlog / symexp squash values of any scale into a range networks can predict, two_hot turns
a scalar target into a distribution over bins (both: paper, "Robust predictions"), and
lambda_returns computes the TD(lambda) targets of imagined trajectories ("Critic learning").
"""

import contextlib
import errno
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch


def symlog(x: torch.Tensor) -> torch.Tensor:
    """symlog(x) = sign(x) * ln(|x| + 1), elementwise (paper, "Robust predictions": symlog)."""
    return torch.sign(x) * torch.log1p(torch.abs(x))


def symexp(x: torch.Tensor) -> torch.Tensor:
    """symexp(x) = sign(x) * (exp(|x|) - 1), the inverse of symlog."""
    return torch.sign(x) * torch.expm1(torch.abs(x))


def two_hot(x: torch.Tensor, bins: torch.Tensor) -> torch.Tensor:
    """Encode scalars as weights on their two neighbouring bins (paper, "Robust predictions").

    Args:
        x: (...) values to encode.
        bins: (K,) sorted bin positions.
    Returns:
        (..., K) float32 weights: two neighbours share the weight by linear interpolation,
        a value exactly on a bin puts all weight there, and a value outside the range puts
        all weight on the edge bin.
    """
    below, above, weight_above = two_hot_neighbours(x, bins)
    weights = torch.zeros(*x.shape, bins.shape[0], device=x.device)
    weights.scatter_(-1, below.unsqueeze(-1), (1.0 - weight_above).unsqueeze(-1))
    weights.scatter_add_(-1, above.unsqueeze(-1), weight_above.unsqueeze(-1))
    return weights


def two_hot_neighbours(x: torch.Tensor, bins: torch.Tensor) -> tuple:
    """The two bins two_hot puts weight on: (index below (...), index above (...), the
    weight of the one above (...)); the one below has 1 - that weight."""
    x, bins = x.float(), bins.float()
    K = bins.shape[0]
    # Index of the first bin strictly greater than x; its left neighbour is <= x.
    above = torch.searchsorted(bins, x.contiguous(), right=True).clamp(1, K - 1)  # (...)
    below = above - 1
    left, right = bins[below], bins[above]
    weight_above = ((x - left) / (right - left)).clamp(0.0, 1.0)  # 0 below range, 1 above
    return below, above, weight_above


def lambda_returns(
    rewards: torch.Tensor,
    values: torch.Tensor,
    continues: torch.Tensor,
    lambda_: float = 0.95,
) -> torch.Tensor:
    """TD(lambda) returns of a trajectory (paper, "Critic learning").

    R_t = rewards[t] + continues[t] * ((1 - lambda_) * values[t + 1] + lambda_ * R_{t+1}),
    bootstrapped with R_H = values[H].

    Args:
        rewards: (B, H) reward that arrives with step t + 1.
        values: (B, H + 1) value estimates v(s_0) ... v(s_H).
        continues: (B, H) discount * continue probability of step t + 1.
    Returns:
        (B, H) returns R_0 ... R_{H-1}.
    """
    H = rewards.shape[1]
    returns = []  # R_{H-1} ... R_0; stacked once at the end rather than written in one by one
    next_return = values[:, H]
    for t in range(H - 1, -1, -1):
        bootstrap = (1 - lambda_) * values[:, t + 1] + lambda_ * next_return
        next_return = rewards[:, t] + continues[:, t] * bootstrap
        returns.append(next_return)
    return torch.stack(returns[::-1], 1)


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch so a run on one machine repeats exactly."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """Resolve a device name; "auto" picks CUDA when present, else the CPU.

    A bare "cuda" (or "auto" on a GPU machine) becomes cuda:<local_rank>, so each process of
    a torchrun group gets its own GPU; an explicit "cuda:N" is kept.
    """
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device '{name}' was asked for but torch sees no CUDA device")
    if name == "cuda":
        name = f"cuda:{local_rank}"
    return torch.device(name)


def fast_mode() -> bool:
    """True when NATURAL_DREAMER_FAST=1: notebooks and demos shrink to run in seconds."""
    return os.environ.get("NATURAL_DREAMER_FAST", "0") not in ("", "0", "false", "False")


def resident_mb() -> float:
    """This process's resident memory in MiB (Linux /proc; NaN where that is missing)."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, IndexError, ValueError):
        return float("nan")
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


@contextlib.contextmanager
def naming_write_errors(path):
    """Make any OSError raised while writing `path` name that file. A write through an open
    handle or a pipe (ffmpeg's) reports a full disk without a file name, or as a broken
    pipe; seen from here it is the file that could not be written, and why."""
    try:
        yield
    except OSError as error:
        if error.filename is not None:
            raise
        code = error.errno
        folder = next((p for p in Path(path).parents if p.is_dir()), Path("."))
        if code in (None, errno.EPIPE) and shutil.disk_usage(folder).free < 2**20:
            code = errno.ENOSPC  # the pipe broke because the disk is full
        message = os.strerror(code) if code else str(error).splitlines()[0]
        raise OSError(code, message, str(path)) from None
