"""The whole agent learns, end to end, in CI time: a regression guard for the signs and the
wiring that no unit test sees whole (the learning runs themselves are scripts: docs/results.md)."""

import pandas as pd

from natural_dreamer import load_config
from natural_dreamer.loop import Trainer


def test_the_agent_learns_to_push_the_action_that_pays(tmp_path):
    """The toy task "action" pays the action just taken, in [-1, 1], for 20 steps an episode:
    random actions earn 0 on average (a 10-episode mean within about +-2.5), the best policy
    20. The reward arrives with the NEXT observation, so the world model must carry the action
    in its recurrent state, the reward head must read it there, and the actor must learn from
    imagined returns. 1,200 env steps, 250 updates: seeds 0-3 reached 16.9, 15.6, 17.4, 17.1
    (2026-12-06); a flipped advantage or an actor cut off from its loss stays near or below 0."""
    overrides = {
        "env.suite": "toy",
        "env.task": "action",
        "env.time_limit": 20,
        "train.steps": 1200,
        "train.prefill": 200,
        "train.log_every": 200,
        "train.checkpoint_every": 100_000,  # the final checkpoint only
        "train.video": False,
        "compile": "false",
        "precision": "fp32",
        "optimizer.world_model_lr": 1e-3,
        "optimizer.actor_lr": 3e-4,
        "optimizer.critic_lr": 3e-4,
        "optimizer.warmup": 0,
    }
    trainer = Trainer(load_config("smoke", overrides), root=tmp_path, quiet=True)
    trainer.train()
    metrics = pd.read_csv(tmp_path / "metrics" / f"{trainer.run}.csv")
    first, last = metrics["return_last10"].iloc[0], metrics["return_last10"].iloc[-1]
    assert abs(first) < 5, first  # the prefill's random actions
    assert last > 10, metrics[["env_steps", "return_last10"]].to_string()
