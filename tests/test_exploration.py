"""Plan2Explore: the disagreement, where gradients go, who collects, and a run end to end."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from natural_dreamer import Dreamer
from natural_dreamer.behavior import task_reward
from natural_dreamer.exploration import Ensemble, RunningMean
from natural_dreamer.loop import Trainer

from conftest import VECTOR, random_batch, tiny_config

ROOT = Path(__file__).resolve().parent.parent
SIZES = {"units": 16, "mlp_layers": 2}


def explorer_config(**overrides):
    return tiny_config(exploration="plan2explore", **overrides)


def test_disagreement_is_zero_for_identical_members_and_positive_when_they_differ():
    ensemble = Ensemble(feat_dim=6, action_size=2, target_dim=5, members=4, sizes=SIZES)
    feat, action = torch.randn(3, 7, 6), torch.randn(3, 7, 2)
    different = ensemble.disagreement(feat, action)
    assert different.shape == (3, 7) and (different > 0).all()  # different initialisations
    for member in ensemble.members[1:]:
        member.load_state_dict(ensemble.members[0].state_dict())
    assert torch.allclose(ensemble.disagreement(feat, action), torch.zeros(3, 7), atol=1e-12)


def test_disagreement_is_the_variance_across_members_averaged_over_outputs():
    ensemble = Ensemble(feat_dim=6, action_size=2, target_dim=3, members=2, sizes=SIZES)
    with torch.no_grad():
        for member, value in zip(ensemble.members, [0.0, 2.0], strict=True):
            member[-1].weight.zero_()  # every input gives the output bias
            member[-1].bias.copy_(torch.tensor([value, value, 1.0]))
    got = ensemble.disagreement(torch.randn(4, 6), torch.randn(4, 2))
    # outputs 1 and 2 are {0, 2}: variance 1 each; output 3 is {1, 1}: variance 0
    assert torch.allclose(got, torch.full((4,), 2 / 3))


def test_running_mean_is_exact_after_one_update_then_an_ema():
    mean = RunningMean(decay=0.9)
    mean.update(torch.tensor(4.0))
    assert torch.isclose(mean.value(), torch.tensor(4.0))  # no bias toward the initial 0
    mean.update(torch.tensor(2.0))
    # weights 0.1 * 0.9 and 0.1, over their sum 0.19
    assert torch.isclose(mean.value(), torch.tensor((0.09 * 4 + 0.1 * 2) / 0.19))


def test_ensemble_gradient_does_not_reach_the_world_model():
    agent = Dreamer(VECTOR, 2, False, explorer_config())
    batch = agent.batch_to_torch(random_batch(VECTOR, 2, False))
    wm = agent.world_model
    # Posterior states that still carry the world model's graph (WorldModel.loss detaches
    # them; the ensemble must not rely on that).
    states, _, _ = wm.rssm.observe(
        wm.encoder({"vector": batch["vector"]}), batch["action"], batch["is_first"]
    )
    assert states["deter"].requires_grad
    loss, metrics = agent.explorer.ensemble_loss(states, batch)
    loss.backward()
    assert all(p.grad is None for p in wm.parameters())
    assert all(p.grad.abs().sum() > 0 for p in agent.explorer.ensemble.parameters())
    assert metrics["explore/ensemble_loss"] > 0


def test_exploration_actor_loss_reaches_the_exploration_actor_only():
    agent = Dreamer(VECTOR, 2, False, explorer_config())
    batch = agent.batch_to_torch(random_batch(VECTOR, 2, False))
    _, _, posterior = agent.world_model.loss(batch)
    actor_loss, critic_loss, _ = agent.explorer.behavior_loss(agent.world_model, posterior, batch)
    actor_loss.backward(retain_graph=True)
    grads = {name: p.grad for name, p in agent.named_parameters()}
    assert grads["explorer.behavior.actor.out.weight"].abs().sum() > 0
    assert all(g is None for n, g in grads.items() if not n.startswith("explorer.behavior.actor"))
    agent.zero_grad(set_to_none=True)
    critic_loss.backward()
    grads = {name: p.grad for name, p in agent.named_parameters()}
    assert grads["explorer.behavior.critic.out.weight"].abs().sum() > 0
    assert all(g is None for n, g in grads.items() if not n.startswith("explorer.behavior.critic"))


def test_explorer_reward_weighs_intrinsic_and_extrinsic_parts():
    config = explorer_config(**{"explore.intrinsic": 2.0, "explore.extrinsic": 3.0})
    agent = Dreamer(VECTOR, 2, False, config)
    wm, explorer = agent.world_model, agent.explorer
    with torch.no_grad():  # a reward head that predicts something other than 0
        wm.reward_head.out.bias.copy_(torch.linspace(-1, 1, config.model.bins))
    feats, actions = torch.randn(5, 4, wm.rssm.feat_dim), torch.rand(5, 3, 2) * 4 - 2
    explorer.novelty.update(torch.tensor(0.5))
    rewards, metrics = explorer.reward(wm, feats, actions)
    # Reaching s_{t+1} earns the disagreement about it at (s_t, a_t), with the clipped action.
    intrinsic = explorer.ensemble.disagreement(feats[:, :-1], actions.clamp(-1, 1)) / 0.5
    extrinsic = task_reward(wm, feats, actions)[0]
    assert rewards.shape == (5, 3) and extrinsic.abs().sum() > 0
    assert torch.allclose(rewards, 2 * intrinsic + 3 * extrinsic)
    assert torch.isclose(metrics["intrinsic_reward"], intrinsic.mean())


@pytest.mark.parametrize("discrete", [False, True], ids=["continuous", "discrete"])
def test_plan2explore_train_step_changes_every_network(discrete):
    agent = Dreamer(VECTOR, 3, discrete, explorer_config())
    before = {k: v.clone() for k, v in agent.state_dict().items()}
    metrics = agent.train_step(random_batch(VECTOR, 3, discrete))
    assert all(np.isfinite(v) for v in metrics.values()), metrics
    for key in ["explore/intrinsic_reward", "explore/ensemble_loss", "explore/actor/loss"]:
        assert key in metrics
    assert "explore/critic/loss" in metrics and "actor/loss" in metrics
    after = agent.state_dict()
    for prefix in [
        "world_model.",
        "behavior.actor.",
        "behavior.critic.",
        "explorer.ensemble.",
        "explorer.behavior.actor.",
        "explorer.behavior.critic.",
    ]:
        changed = [
            k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])
        ]
        assert changed, f"no parameter of {prefix} changed"
    assert after["explorer.novelty.weight"] > 0


def test_greedy_builds_and_trains_nothing_extra():
    torch.manual_seed(0)
    greedy = Dreamer(VECTOR, 2, False, tiny_config())
    torch.manual_seed(0)
    explorer = Dreamer(VECTOR, 2, False, explorer_config())
    assert greedy.explorer is None and greedy.collecting_actor() is greedy.behavior.actor
    assert list(greedy.optimizers) == ["world_model", "actor", "critic"]
    ours, theirs = greedy.state_dict(), explorer.state_dict()
    assert not [k for k in ours if k.startswith("explorer")]
    # The explorer is built after everything else, so the shared part starts the same.
    assert all(torch.equal(value, theirs[key]) for key, value in ours.items())
    metrics = greedy.train_step(random_batch(VECTOR, 2, False))
    assert not [key for key in metrics if key.startswith("explore")]


def set_actor_mean(actor, value: float) -> None:
    """Make a continuous actor's mean tanh(value) and its std the minimum, for any input."""
    with torch.no_grad():
        actor.out.weight.zero_()
        actor.out.bias.copy_(torch.tensor([value, -10.0]))  # (mean, std) of one action


@pytest.mark.parametrize("exploration", ["greedy", "plan2explore"])
def test_the_exploration_actor_collects_and_the_task_actor_is_evaluated(tmp_path, exploration):
    config = tiny_config(exploration=exploration, **{"train.video": False})
    trainer = Trainer(config, root=tmp_path, quiet=True)
    agent = trainer.agent
    set_actor_mean(agent.behavior.actor, -10.0)  # the task actor pushes to -1
    if agent.explorer is not None:
        set_actor_mean(agent.explorer.behavior.actor, 10.0)  # the explorer to +1
    evaluated, act = [], agent.act

    def recording_act(*args):
        action, state = act(*args)
        evaluated.append(action)
        return action, state

    try:
        for _ in range(20):  # the training loop's collection
            trainer.collector.step(trainer.policy)
        agent.act = recording_act
        trainer.evaluate("test", 0)  # one evaluation episode
    finally:
        trainer.loader.close()
        trainer.envs.close()
        trainer.eval_env.close()
    collected = trainer.buffer.data["action"][: len(trainer.buffer)]
    assert len(collected) == 20
    assert (collected > 0).all() if exploration == "plan2explore" else (collected < 0).all()
    assert len(evaluated) == 200 and all((action < -0.99).all() for action in evaluated)


def run_main(*args, outdir):
    command = [sys.executable, "main.py", "smoke", *args, "--outdir", str(outdir)]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=300)


EXPLORE = ("--exploration", "plan2explore", "--train.video", "false")


@pytest.fixture(scope="module")
def explore_run(tmp_path_factory):
    """400 steps of the smoke run with plan2explore (200 of them training)."""
    out = tmp_path_factory.mktemp("explore")
    result = run_main(*EXPLORE, "--max_steps", "400", outdir=out)
    assert result.returncode == 0, result.stderr[-3000:]
    return out


def test_plan2explore_run_writes_explore_metrics_and_checkpoints(explore_run):
    metrics = pd.read_csv(explore_run / "metrics" / "smoke_run.csv")
    for key in ["explore/intrinsic_reward", "explore/ensemble_loss", "explore/actor/loss"]:
        assert np.isfinite(metrics[key].iloc[-1]), key
    assert metrics["explore/intrinsic_reward"].iloc[-1] > 0
    checkpoint = explore_run / "checkpoints" / "smoke_run_latest.pth"
    state = torch.load(checkpoint, weights_only=True)  # plain tensors and dicts only
    assert any(key.startswith("explorer.ensemble.") for key in state["agent"])
    assert {"explore_ensemble", "explore_actor", "explore_critic"} <= set(state["optimizers"])


def test_resuming_a_plan2explore_run_as_greedy_is_refused(explore_run):
    result = run_main("--resume", "latest", outdir=explore_run)
    assert result.returncode == 2 and "exploration" in result.stderr


def test_plan2explore_resumes_exactly(explore_run, tmp_path):
    result = run_main(*EXPLORE, "--resume", "latest", "--max_steps", "600", outdir=explore_run)
    assert result.returncode == 0, result.stderr[-3000:]
    assert run_main(*EXPLORE, "--max_steps", "600", outdir=tmp_path).returncode == 0
    a = pd.read_csv(explore_run / "metrics" / "smoke_run.csv")
    b = pd.read_csv(tmp_path / "metrics" / "smoke_run.csv")
    assert a["env_steps"].tolist() == [200, 280, 400, 600]  # 280: after the 20th update
    machine = ["wall_seconds", "memory/resident_mb"]
    pd.testing.assert_frame_equal(a.drop(columns=machine), b.drop(columns=machine))
    a = torch.load(explore_run / "checkpoints" / "smoke_run_latest.pth", weights_only=True)
    b = torch.load(tmp_path / "checkpoints" / "smoke_run_latest.pth", weights_only=True)
    assert a["agent"].keys() == b["agent"].keys()
    assert all(torch.equal(a["agent"][k], b["agent"][k]) for k in a["agent"])
