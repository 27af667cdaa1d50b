"""A run stopped at any moment and resumed gives the numbers of the run never stopped: in the
middle of an episode, between updates, and during an evaluation."""

import signal

import pandas as pd
import pytest
import torch

from natural_dreamer import load_config
from natural_dreamer.loop import StopRequest, Trainer

# The machine's numbers, not the run's: they differ between any two runs.
MACHINE = ["wall_seconds", "memory/resident_mb"]


def smoke(steps=1000):
    """The smoke run (Pendulum, 200-step episodes, prefill 200, a checkpoint with an
    evaluation every 50 updates), without videos."""
    overrides = {"train.steps": steps, "train.video": False, "precision": "fp32"}
    return load_config("smoke", overrides)  # fp32: no measured choice between the runs


def stop_when(trainer, where: str, at: int) -> None:
    """Make `trainer` receive SIGTERM at a chosen moment: after the at-th policy step
    ("step"), the at-th update ("update") or inside the at-th evaluation ("evaluation")."""
    calls = [0]

    def wrap(function):
        def wrapped(*args, **kwargs):
            calls[0] += 1
            if where == "evaluation" and calls[0] == at:
                trainer.stop_signal = signal.SIGTERM  # arrives while the episode plays
            result = function(*args, **kwargs)
            if where != "evaluation" and calls[0] == at:
                trainer.stop_signal = signal.SIGTERM
            return result

        return wrapped

    if where == "step":
        trainer.collector.step = wrap(trainer.collector.step)
    elif where == "update":
        trainer.agent.train_step = wrap(trainer.agent.train_step)
    else:
        trainer.evaluate = wrap(trainer.evaluate)


def run(root, where=None, at=0, resume=None) -> bool:
    """Train smoke in root (resuming from `resume`); returns False when it stopped."""
    trainer = Trainer(smoke(), root=root, quiet=True)
    trainer.claim()
    if resume:
        trainer.resume(resume)
    if where:
        stop_when(trainer, where, at)
    try:
        trainer.train()
    except StopRequest:
        return False
    return True


@pytest.fixture(scope="module")
def whole(tmp_path_factory):
    root = tmp_path_factory.mktemp("whole")
    assert run(root)
    return root


@pytest.mark.parametrize(
    "where, at",
    [
        ("step", 260),  # 60 steps into the second episode, 15 updates in
        ("step", 470),  # 70 steps into the third episode
        ("update", 31),  # between two updates of the second episode
        ("evaluation", 2),  # during the evaluation of the 0.1k checkpoint
    ],
)
def test_a_run_stopped_anywhere_resumes_to_the_same_numbers(whole, tmp_path, where, at):
    assert not run(tmp_path, where, at)  # stopped, 'latest' saved
    stopped = torch.load(tmp_path / "checkpoints" / "smoke_run_latest.pth", weights_only=True)
    env_steps = stopped["counters"]["env_steps"]
    if where == "step":
        assert env_steps == at and env_steps % 200  # in the middle of an episode
    assert run(tmp_path, resume="latest")
    a = pd.read_csv(tmp_path / "metrics" / "smoke_run.csv")
    b = pd.read_csv(whole / "metrics" / "smoke_run.csv")
    assert len(a) == len(b) and a["env_steps"].tolist() == b["env_steps"].tolist()
    pd.testing.assert_frame_equal(a.drop(columns=MACHINE), b.drop(columns=MACHINE))
    agent_a = torch.load(tmp_path / "checkpoints" / "smoke_run_latest.pth", weights_only=True)
    agent_b = torch.load(whole / "checkpoints" / "smoke_run_latest.pth", weights_only=True)
    agent_a, agent_b = agent_a["agent"], agent_b["agent"]
    assert all(torch.equal(agent_a[key], agent_b[key]) for key in agent_b)
