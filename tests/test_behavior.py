"""Behaviour learning: return normalisation, replay returns, where gradients go."""

import math

import pytest
import torch

from natural_dreamer import Dreamer
from natural_dreamer.behavior import Behavior, ReturnNormalizer, replay_returns
from natural_dreamer.networks import model_sizes

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
    agent = Dreamer(VECTOR, 2, False, tiny_config(**{"behavior.critic_ema_decay": 0.5}))
    critic, slow = agent.behavior.critic, agent.behavior.slow_critic
    with torch.no_grad():
        for p in critic.parameters():
            p.add_(1.0)
    before = [p.clone() for p in slow.parameters()]
    agent.behavior.update_slow_critic()
    for old, new, fast in zip(before, slow.parameters(), critic.parameters(), strict=True):
        assert torch.allclose(new, 0.5 * old + 0.5 * fast)


BEHAVIOR_SETTINGS = {
    "behavior.discount_horizon": 100,  # gamma = 0.99
    "behavior.actor_entropy": 0.01,
    "behavior.action_min_std": 0.2,
    "behavior.action_max_std": 0.7,
    "behavior.critic_ema_decay": 0.5,
    "behavior.critic_ema_reg": 0.3,
    "behavior.return_norm_decay": 0.9,
    "behavior.horizon": 4,
}


def make_behavior(**overrides) -> Behavior:
    config = tiny_config(**{**BEHAVIOR_SETTINGS, **overrides})
    torch.manual_seed(0)  # the same initial networks for every config
    return Behavior(16, 2, False, model_sizes("1m"), config)


def test_behavior_settings_reach_what_they_drive():
    behavior = make_behavior()
    assert behavior.discount == pytest.approx(0.99)

    # Action std at extreme logits: exactly the configured ends of the range.
    actor = behavior.actor
    with torch.no_grad():
        actor.out.weight.zero_()
        actor.out.bias.copy_(torch.tensor([0.0, 0.0, 100.0, -100.0]))  # means, then stds
    std = actor(torch.randn(3, 16)).dist.scale
    torch.testing.assert_close(std[:, 0], torch.full((3,), 0.7))
    torch.testing.assert_close(std[:, 1], torch.full((3,), 0.2))

    # The return normaliser: range = (1 - 0.9) * (Per95 - Per5) after one update.
    behavior.return_norm.update(torch.linspace(0, 100, 101))  # Per5 = 5, Per95 = 95
    torch.testing.assert_close(behavior.return_norm.range, torch.tensor(9.0))


def test_entropy_bonus_and_critic_regulariser_weights_by_hand():
    """rollout_losses on the same rollout with actor_entropy 0.01 and critic_ema_reg 0.3, and
    with both 0. The actor's output layer is zeroed, so every state's policy is Normal(0, s)
    per action dimension with s = 0.2 + 0.5 sigmoid(2); the critics' output layers start at
    zero, so every two-hot target scores -log 255. With cont = 1 and no termination the
    weights are gamma^t = 0.99^t, t < H = 4, and every replayed step is alive."""
    N, H, A = 6, 4, 2  # N = B * T with B = 2, T = 3
    feats, raw = torch.randn(N, H + 1, 16), torch.randn(N, H, A)
    rewards, cont = torch.randn(N, H), torch.ones(N, H)
    real = {
        "reward": torch.randn(2, 3),
        "is_first": torch.zeros(2, 3, dtype=torch.bool),
        "is_terminal": torch.zeros(2, 3, dtype=torch.bool),
    }
    losses = []
    for settings in ({}, {"behavior.actor_entropy": 0.0, "behavior.critic_ema_reg": 0.0}):
        behavior = make_behavior(**settings)
        with torch.no_grad():
            behavior.actor.out.weight.zero_()
            behavior.actor.out.bias.zero_()
        actor_loss, critic_loss, _ = behavior.rollout_losses(feats, raw, rewards, cont, real, None)
        losses.append((actor_loss.item(), critic_loss.item()))
    (actor_on, critic_on), (actor_off, critic_off) = losses
    std = 0.2 + 0.5 / (1 + math.exp(-2.0))
    entropy = A * (0.5 * math.log(2 * math.pi * math.e) + math.log(std))
    mean_weight = sum(0.99**t for t in range(H)) / H
    assert actor_on - actor_off == pytest.approx(-0.01 * mean_weight * entropy, rel=1e-4)
    # imagined: 0.3 * mean(weight * log 255); replay (scale 0.3): 0.3 * mean(alive * log 255)
    expected = 0.3 * math.log(255) * (mean_weight + 0.3 * 1.0)
    assert critic_on - critic_off == pytest.approx(expected, rel=1e-4)
