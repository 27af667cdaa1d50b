"""scripts/inspect_policy.py: what it reads from replay and from the actor, and bad input.

The command on a real checkpoint runs in tests/test_main.py, on its smoke run."""

import importlib.util
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from natural_dreamer.buffer import ReplayBuffer
from natural_dreamer.distributions import CategoricalAction

ROOT = Path(__file__).resolve().parent.parent
spec = importlib.util.spec_from_file_location("inspect_policy", ROOT / "scripts/inspect_policy.py")
inspect_policy = importlib.util.module_from_spec(spec)
spec.loader.exec_module(inspect_policy)


def one_hot(index: int, size: int = 3) -> np.ndarray:
    return np.eye(size, dtype=np.float32)[index]


def add_actions(buffer: ReplayBuffer, actions) -> None:
    for action in actions:
        step = {"vector": np.zeros(1, np.float32), "action": action, "reward": 0.0}
        buffer.add({**step, "is_first": False, "is_terminal": False})


@pytest.mark.parametrize("count, mix", [(6, 0.01), (2, 0.01), (18, 0.05)])
def test_floor_entropy_is_the_entropy_of_a_saturated_unimix_actor(count, mix):
    logits = torch.full((count,), -1e4)
    logits[1] = 1e4  # every probability of the softmax on one action
    actual = CategoricalAction(logits, mix).entropy().item()
    assert inspect_policy.floor_entropy(count, mix) == pytest.approx(actual, rel=1e-4)
    assert inspect_policy.floor_entropy(count, 1.0) == pytest.approx(math.log(count))


def test_replayed_actions_show_one_action_taking_over_oldest_first():
    buffer = ReplayBuffer(100, {"vector": ((1,), np.float32)}, action_size=3)
    add_actions(buffer, [one_hot(i % 3) for i in range(60)] + [one_hot(2)] * 60)  # wraps
    lines = inspect_policy.replayed_actions(buffer, discrete=True, rows=4)
    assert len(lines) == 4
    shares = [[float(x) for x in line.split()[-3:]] for line in lines]
    # The ring holds steps 20-119: 40 mixed steps, then 60 of action 2. Steps 20-44 take
    # actions 2, 0, 1, 2, ...: 8, 8 and 9 of them (steps 0-19 were overwritten).
    assert shares[0] == pytest.approx([0.32, 0.32, 0.36], abs=1e-6)
    assert shares[-1] == [0.0, 0.0, 1.0]
    assert lines[0].split()[1] == "0-24"


def test_replayed_continuous_actions_give_mean_and_spread():
    buffer = ReplayBuffer(50, {"vector": ((1,), np.float32)}, action_size=2)
    add_actions(buffer, [np.array([0.5, -1.0], np.float32)] * 10)
    (line,) = inspect_policy.replayed_actions(buffer, discrete=False, rows=1)
    assert line.split()[-2:] == ["+0.50±0.00", "-1.00±0.00"]


def run_script(*args):
    return subprocess.run(
        [sys.executable, "scripts/inspect_policy.py", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_a_missing_checkpoint_is_named(tmp_path):
    result = run_script(str(tmp_path / "nothing.pth"))
    assert result.returncode == 2 and "no checkpoint at" in result.stderr
