"""Checkpoint files: written atomically, read without running any code.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads with
torch.load(weights_only=True): a file crafted to execute code when unpickled is refused.
"""

import errno
import io
import os
import socket
from pathlib import Path

import numpy as np
import torch

from natural_dreamer.files import open_in_place, write_atomically
from natural_dreamer.utils import naming_write_errors


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def save_checkpoint(state: dict, path: Path, latest: Path | None = None) -> None:
    """Write state to path via a new temporary file of an unpredictable name and a rename, so
    a crash mid-save leaves the previous file intact and a link planted in the folder is
    replaced, never written through; `latest` becomes a second name of the same file (a hard
    link, no second copy)."""
    # Serialised in memory first: torch.save reports a full disk as a bare RuntimeError,
    # a plain write reports it as an OSError that names the file.
    data = io.BytesIO()
    torch.save(state, data)
    try:
        with naming_write_errors(path):
            write_atomically(path, data.getbuffer(), link=latest)
    except OSError as error:
        if error.errno == errno.ENOSPC:
            needed = f"{error.strerror}; the checkpoint needs {data.tell() / 2**20:.1f} MB"
            raise OSError(errno.ENOSPC, needed, str(path)) from None
        raise


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely: a truncated, corrupted or code-carrying file, a link, a file
    that is not a checkpoint at all (text, a pipe) or a torch file of another shape raises
    CheckpointError naming the file. Returns the dict it holds (check_resumable says whether
    training can go on from it)."""
    try:
        with os.fdopen(open_in_place(path, os.O_RDONLY, single=False), "rb") as handle:
            state = torch.load(handle, map_location="cpu", weights_only=True)
    except OSError as error:
        why = "a symbolic link (refused)" if error.errno == errno.ELOOP else error.strerror
        raise CheckpointError(f"cannot load checkpoint {path}: {why or error}") from None
    except Exception as error:  # the unpickler's errors come in many types
        text = str(error).strip()
        first_line = text.splitlines()[0] if text else type(error).__name__
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line[:200]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(
            f"{path.name} is not a checkpoint of natural_dreamer: it holds a "
            f"{type(state).__name__}, not a dict"
        )
    return state


# What a checkpoint must hold to continue training: section -> {key: accepted types}.
RESUMABLE = {
    "agent": {},
    "config": {},
    "optimizers": {},
    "buffer": {"data": (dict,)},
    "counters": {
        "env_steps": (int,),
        "policy_steps": (int,),
        "gradient_steps": (int,),
        "train_policy_steps": (int,),
        "next_checkpoint": (int,),
        "returns": (list,),
        "wall_seconds": (int, float),
    },
    "rng": {"torch": (torch.Tensor,), "python": (list,), "random_policy": (dict,)},
    "collection": {"collector": (dict,), "policy": (dict,)},
    "interval": {},
}


def check_resumable(state: dict, path: Path) -> None:
    """Raise CheckpointError naming the file and what is missing, unless state (from
    load_checkpoint) holds everything a resumed run reads, with replayed data in it."""
    for section, keys in RESUMABLE.items():
        if not isinstance(state.get(section), dict):
            raise CheckpointError(f"{path.name} cannot be resumed: it holds no '{section}'")
        for key, kinds in keys.items():
            value = state[section].get(key)
            if not isinstance(value, kinds) or isinstance(value, bool):
                raise CheckpointError(
                    f"{path.name} cannot be resumed: '{section}.{key}' is missing or not "
                    f"{' or '.join(kind.__name__ for kind in kinds)}"
                )
    data = state["buffer"]["data"]
    if not data or not all(isinstance(v, torch.Tensor) and len(v) for v in data.values()):
        raise CheckpointError(f"{path.name} cannot be resumed: its replay buffer is empty")


def suffixes(folder: Path, run: str) -> list:
    """The suffixes of the checkpoints of a run that exist, e.g. ["1k", "2k", "latest"]."""
    found = [p.name[len(run) + 1 : -len(".pth")] for p in folder.glob(f"{run}_*.pth")]
    return sorted(
        found,
        key=lambda s: (s == "latest", float(s[:-1]) if s[:-1].replace(".", "").isdigit() else 0),
    )


def numpy_to_torch(tree):
    """Convert NumPy arrays in a nested dict to tensors (safe to load); leaves others."""
    if isinstance(tree, dict):
        return {key: numpy_to_torch(value) for key, value in tree.items()}
    if isinstance(tree, np.ndarray):
        return torch.from_numpy(tree)
    return tree


def torch_to_numpy(tree):
    """The inverse of numpy_to_torch."""
    if isinstance(tree, dict):
        return {key: torch_to_numpy(value) for key, value in tree.items()}
    if isinstance(tree, torch.Tensor):
        return tree.numpy()
    return tree


def suffix_of(gradient_steps: int) -> str:
    """The file suffix for a number of gradient steps: 10000 -> "10k", 50 -> "0.05k"."""
    return f"{gradient_steps / 1000:g}k"


def claim_run(path: Path):
    """Hold an exclusive lock on `path` (checkpoints/<run>.lock) for as long as this process
    lives, so that two processes never train one run (their checkpoints and CSV rows would
    interleave). The operating system drops the lock when the process ends, however it ends
    (a crash, SIGKILL, the OOM killer), so a stale lock cannot block a later --resume.
    Returns the open file (keep it); raises CheckpointError naming the process that holds it.
    Where file locks do not exist (Windows) it returns None and guards nothing.
    """
    try:
        import fcntl
    except ImportError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle = os.fdopen(open_in_place(path, os.O_RDWR | os.O_CREAT), "r+")
    except OSError as error:
        why = "it is a symbolic link" if error.errno == errno.ELOOP else error.strerror
        raise CheckpointError(
            f"cannot open the run's lock {path}: {why} (a run's files must be plain files: "
            "remove it and run again)"
        ) from None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        raise CheckpointError(
            f"run '{path.stem}' is being trained by {holder} right now: stop that one first "
            "(SIGTERM saves 'latest'), or start another with --run_name NAME"
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()} on {socket.gethostname()}")
    handle.flush()
    return handle
