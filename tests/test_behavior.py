"""Behaviour learning: return normalisation, replay returns, where gradients go."""

import pytest
import torch

from natural_dreamer import Dreamer
from natural_dreamer.behavior import ReturnNormalizer, replay_returns

from conftest import VECTOR, random_batch, tiny_config


def test_return_normalizer_is_an_ema_of_the_percentile_range():
    norm = ReturnNormalizer(decay=0.99)
    returns = torch.linspace(0, 100, 101)  # Per5 = 5, Per95 = 95: range 90
    norm.update(returns)
    assert torch.isclose(norm.range, torch.tensor(0.9))  # 0.99 * 0 + 0.01 * 90
    assert torch.isclose(norm.scale(), torch.tensor(1.0))  # floored at 1
    for _ in range(2000):
        scale = norm.update(returns)
    assert torch.isclose(scale, torch.tensor(90.0), rtol=1e-3)
    norm.update(returns * 2)
    assert torch.isclose(norm.range, torch.tensor(0.99 * 90 + 0.01 * 180), rtol=1e-3)


def test_return_normalizer_never_scales_small_returns_up():
    norm = ReturnNormalizer(decay=0.0)
    assert norm.update(torch.linspace(0, 0.1, 50)) == 1.0


def test_replay_returns_by_hand():
    # One sequence of 4 steps; a new episode starts at step 3.
    batch = {
        "reward": torch.tensor([[0.0, 1.0, 2.0, 5.0]]),
        "is_first": torch.tensor([[True, False, False, True]]),
        "is_terminal": torch.tensor([[False, False, False, False]]),
    }
    boot = torch.tensor([[10.0, 20.0, 30.0, 40.0]])
    got = replay_returns(batch, boot, discount=0.5, lambda_=0.5)
    # R_2: step 3 starts a new episode, so it is cut: R_2 = boot_2 = 30.
    # R_1 = r_2 + 0.5 * (0.5 * boot_2 + 0.5 * R_2) = 2 + 0.5 * 30 = 17
    # R_0 = r_1 + 0.5 * (0.5 * boot_1 + 0.5 * R_1) = 1 + 0.5 * (10 + 8.5) = 10.25
    assert torch.allclose(got, torch.tensor([[10.25, 17.0, 30.0]]))


def test_replay_returns_stop_at_a_termination():
    batch = {
        "reward": torch.tensor([[0.0, 1.0, 3.0]]),
        "is_first": torch.zeros(1, 3, dtype=torch.bool),
        "is_terminal": torch.tensor([[False, False, True]]),
    }
    boot = torch.tensor([[7.0, 9.0, 100.0]])
    got = replay_returns(batch, boot, discount=1.0, lambda_=1.0)
    assert torch.allclose(got, torch.tensor([[4.0, 3.0]]))  # nothing after the terminal step


def grads_after(agent, loss):
    for p in agent.parameters():
        p.grad = None
    loss.backward(retain_graph=True)
    return {name: p.grad for name, p in agent.named_parameters()}


def test_reinforce_actor_loss_reaches_the_actor_only():
    agent = Dreamer(VECTOR, 2, False, tiny_config())
    batch = agent.batch_to_torch(random_batch(VECTOR, 2, False))
    _, _, posterior = agent.world_model.loss(batch)
    actor_loss, critic_loss, metrics = agent.behavior.loss(agent.world_model, posterior, batch)
    grads = grads_after(agent, actor_loss)
    assert any(
        g is not None and g.abs().sum() > 0
        for n, g in grads.items()
        if n.startswith("behavior.actor")
    )
    assert all(g is None for n, g in grads.items() if not n.startswith("behavior.actor"))
    grads = grads_after(agent, critic_loss)
    assert all(g is None for n, g in grads.items() if not n.startswith("behavior.critic"))
    assert grads["behavior.critic.out.weight"].abs().sum() > 0


def test_dynamics_actor_gradient_passes_through_the_frozen_world_model():
    agent = Dreamer(VECTOR, 2, False, tiny_config(**{"behavior.actor_grad": "dynamics"}))
    batch = agent.batch_to_torch(random_batch(VECTOR, 2, False))
    _, _, posterior = agent.world_model.loss(batch)
    actor_loss, _, _ = agent.behavior.loss(agent.world_model, posterior, batch)
    grads = grads_after(agent, actor_loss)
    assert any(
        g is not None and g.abs().sum() > 0
        for n, g in grads.items()
        if n.startswith("behavior.actor")
    )
    assert all(g is None for n, g in grads.items() if not n.startswith("behavior.actor"))
    # frozen() hands every parameter back trainable afterwards
    assert all(p.requires_grad for n, p in agent.named_parameters() if "slow_critic" not in n)


def test_discrete_actions_refuse_dynamics_gradients():
    with pytest.raises(ValueError, match="reinforce"):
        Dreamer(VECTOR, 2, True, tiny_config(**{"behavior.actor_grad": "dynamics"}))


def test_imagination_shapes_and_horizon():
    agent = Dreamer(VECTOR, 2, True, tiny_config(**{"behavior.horizon": 6}))
    start = agent.world_model.rssm.initial(5, "cpu")
    feats, actions = agent.behavior.imagine(agent.world_model, start)
    assert feats.shape == (5, 7, agent.world_model.rssm.feat_dim)  # s_0 ... s_H
    assert actions.shape == (5, 6, 2)
    assert torch.all(actions.sum(-1) == 1)  # one-hot discrete actions


def test_slow_critic_follows_the_critic_by_ema():
    agent = Dreamer(VECTOR, 2, False, tiny_config())
    critic, slow = agent.behavior.critic, agent.behavior.slow_critic
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in slow.parameters()]
    agent.behavior.update_slow_critic()
    for old, new, fast in zip(before, slow.parameters(), critic.parameters(), strict=True):
        assert torch.allclose(new, 0.98 * old + 0.02 * fast)
