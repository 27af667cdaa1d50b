"""Checkpoint files: written atomically, read without running any code.

A checkpoint holds only tensors, numbers, strings, lists and dicts, so it loads with
torch.load(weights_only=True): a file crafted to execute code when unpickled is refused.
"""

import errno
import io
import os
import pickle
import socket
from pathlib import Path

import numpy as np
import torch

from natural_dreamer.utils import naming_write_errors


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def save_checkpoint(state: dict, path: Path, latest: Path | None = None) -> None:
    """Write state to path via a temporary file and a rename, so a crash mid-save leaves the
    previous file intact; then point `latest` at it with a hard link (no second copy)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.tmp")
    # Serialised in memory first: torch.save reports a full disk as a bare RuntimeError,
    # a plain write reports it as an OSError that names the file.
    data = io.BytesIO()
    torch.save(state, data)
    try:
        with naming_write_errors(path), open(temporary, "wb") as handle:
            handle.write(data.getbuffer())
            handle.flush()
            os.fsync(handle.fileno())
    except BaseException as error:  # leave no half-written file behind
        temporary.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            needed = f"{error.strerror}; the checkpoint needs {data.tell() / 2**20:.1f} MB"
            raise OSError(errno.ENOSPC, needed, str(path)) from None
        raise
    os.replace(temporary, path)
    if latest is not None:
        link = latest.with_name(f".{latest.name}.tmp")
        link.unlink(missing_ok=True)
        os.link(path, link)
        os.replace(link, latest)


def load_checkpoint(path: Path) -> dict:
    """Read a checkpoint safely; a truncated, corrupted or code-carrying file raises
    CheckpointError naming the file."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, ValueError, OSError) as error:
        first_line = (
            str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        )
        raise CheckpointError(f"cannot load checkpoint {path}: {first_line[:200]}") from None


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
        handle = open(path, "a+")
    except OSError as error:
        raise CheckpointError(f"cannot open the run's lock {path}: {error.strerror}") from None
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
