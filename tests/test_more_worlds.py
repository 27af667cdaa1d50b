"""The Atari, Crafter and CarRacing configs: they load with their settings, and each runs the
real main.py end to end (collect, train, checkpoint, evaluate, videos) at a tiny size."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from natural_dreamer.config import load_config
from natural_dreamer.envs import make_env

ROOT = Path(__file__).resolve().parent.parent

# config name -> (env.suite, env.task, action repeat, train.steps, train.train_ratio)
SETTINGS = {
    "atari_pong": ("atari", "pong", 4, 400_000, 256),
    "atari_breakout": ("atari", "breakout", 4, 400_000, 256),
    "crafter": ("crafter", "reward", 1, 1_000_000, 512),
    "car_racing": ("gym", "CarRacing-v3", 2, 1_000_000, 512),
}

# A tiny model on short episodes: each run takes seconds. Per config: env steps of the run,
# of the prefill, and per episode (so that training and evaluation episodes end).
TINY = [
    "--model.preset", "1m",
    "--world_model.batch_size", "2",
    "--world_model.batch_length", "8",
    "--behavior.horizon", "3",
    "--train.train_ratio", "8",
    "--train.replay_capacity", "1000",
    "--train.checkpoint_every", "100000",
    "--precision", "fp32",
]  # fmt: skip
STEPS = {
    "atari_pong": (400, 200, 160),
    "atari_breakout": (400, 200, 160),
    "crafter": (100, 50, 50),
    "car_racing": (200, 100, 60),
}


@pytest.mark.parametrize("name", sorted(SETTINGS))
def test_config_loads_with_its_settings(name):
    config = load_config(name)
    suite, task, action_repeat, steps, train_ratio = SETTINGS[name]
    assert (config.env.suite, config.env.task, config.env.obs) == (suite, task, "pixels")
    assert config.env.action_repeat == action_repeat and config.model.preset == "12m"
    assert (config.train.steps, config.train.train_ratio) == (steps, train_ratio)
    env = make_env(config.env, seed=0)
    assert env.obs_space == {"image": ((64, 64, 3), np.uint8)}
    env.close()


@pytest.mark.parametrize("name", sorted(STEPS))
def test_config_runs_end_to_end(name, tmp_path):
    steps, prefill, time_limit = STEPS[name]
    args = [
        *TINY,
        "--max_steps", str(steps),
        "--train.prefill", str(prefill),
        "--train.log_every", str(steps // 4),
        "--env.time_limit", str(time_limit),
    ]  # fmt: skip
    result = subprocess.run(
        [sys.executable, "main.py", name, *args, "--outdir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = pd.read_csv(tmp_path / "metrics" / f"{name}_run.csv")
    assert len(metrics) >= 4 and metrics["env_steps"].iloc[-1] == steps
    assert metrics["gradient_steps"].iloc[-1] > 0
    assert metrics["episode_return"].notna().any() and metrics["eval_return"].notna().any()
    assert np.isfinite(metrics["world_model/loss"].dropna()).all()
    assert list((tmp_path / "videos").glob(f"{name}_run_*_eval_*.mp4"))
    assert list((tmp_path / "videos").glob(f"{name}_run_*_dream.mp4"))
    if name == "crafter":  # every achievement's success rate, and the score
        rates = metrics.filter(like="achievements/").drop(columns="achievements/score")
        values = rates.to_numpy().ravel()
        values = values[~np.isnan(values)]  # rows where no episode ended are empty
        assert rates.shape[1] == 22 and len(values) and ((values >= 0) & (values <= 1)).all()
        assert metrics["achievements/score"].dropna().between(0, 100).all()


def test_crafter_score_is_the_geometric_mean_of_success_rates():
    from types import SimpleNamespace

    from natural_dreamer.loop import Trainer

    run = SimpleNamespace(achievements={"a": 4, "b": 0}, achievement_episodes=4)
    assert Trainer.crafter_score(run) == pytest.approx(np.sqrt(101) - 1)  # rates 100% and 0%
    run.achievements = {"a": 1, "b": 1}
    assert Trainer.crafter_score(run) == pytest.approx(25.0)  # both 25%
