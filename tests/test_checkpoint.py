"""Checkpoint files survive a kill -9 mid-save and never run code when loaded."""

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from natural_dreamer.checkpoint import CheckpointError, load_checkpoint, save_checkpoint, suffixes

ROOT = Path(__file__).resolve().parent.parent
WRITER = textwrap.dedent(
    """
    import sys, torch
    from pathlib import Path
    from natural_dreamer.checkpoint import save_checkpoint
    path = Path(sys.argv[1])
    i = 0
    while True:  # keep saving a 40 MB checkpoint until killed
        save_checkpoint({"step": i, "weights": torch.full((10_000_000,), float(i))}, path)
        i += 1
    """
)


def test_kill_9_during_a_save_leaves_the_previous_checkpoint_loadable(tmp_path):
    path = tmp_path / "run_1k.pth"
    process = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], cwd=ROOT)
    try:
        deadline = time.time() + 60
        while not path.exists() and time.time() < deadline:
            time.sleep(0.05)
        assert path.exists(), "the writer never finished a first save"
        time.sleep(0.7)  # somewhere inside a later save
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait()
    state = load_checkpoint(path)
    assert torch.all(state["weights"] == state["step"])  # whole, not a mix of two saves


def test_save_replaces_atomically_and_links_latest(tmp_path):
    path, latest = tmp_path / "run_1k.pth", tmp_path / "run_latest.pth"
    save_checkpoint({"a": torch.ones(3)}, path, latest=latest)
    assert torch.equal(load_checkpoint(latest)["a"], torch.ones(3))
    assert path.stat().st_ino == latest.stat().st_ino  # a hard link, not a second copy
    assert not list(tmp_path.glob(".*tmp"))
    assert suffixes(tmp_path, "run") == ["1k", "latest"]


def test_garbage_file_is_refused_with_its_name(tmp_path):
    path = tmp_path / "run_2k.pth"
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="run_2k.pth"):
        load_checkpoint(path)
