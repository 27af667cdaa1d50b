"""Behaviour learning in imagination: the actor, the critic and the return normaliser.

behavior_training (paper, "Critic learning" and "Actor learning") starts from every
posterior state of the replayed batch, rolls the world model forward H steps with the actor,
and
  - trains the critic on lambda-returns R_t (two-hot NLL), regularised toward an EMA copy of
    itself, plus a replay value loss on the real sequences (v2);
  - trains the actor by REINFORCE on sg((R_t - v_t) / max(1, S)) plus an entropy bonus, where
    S is an EMA of the 5th-95th percentile range of the returns.
Both losses are weighted by the cumulative predicted discount * continue.
"""

import copy

import torch
from torch import nn

from natural_dreamer.distributions import CategoricalAction, NormalAction
from natural_dreamer.networks import MLP, TwoHotHead, frozen, init_weights, scale_output
from natural_dreamer.utils import lambda_returns


class Actor(nn.Module):
    """pi(a | s): (..., F) -> NormalAction (continuous) or CategoricalAction (discrete)."""

    def __init__(self, feat_dim: int, action_size: int, discrete: bool, sizes: dict, config):
        super().__init__()
        self.discrete, self.unimix, self.action_size = discrete, config.model.unimix, action_size
        self.min_std, self.max_std = config.behavior.action_min_std, config.behavior.action_max_std
        self.mlp = MLP(feat_dim, sizes["units"], sizes["mlp_layers"])
        self.out = nn.Linear(self.mlp.out_dim, action_size * (1 if discrete else 2))
        init_weights(self)
        # behavior.actor_outscale, official 0.01: the first policy is near uniform (discrete)
        # or near mean 0 with the default std (continuous), whatever the features say.
        scale_output(self.out, config.behavior.actor_outscale)

    def forward(self, feat: torch.Tensor):
        x = self.out(self.mlp(feat)).float()
        if self.discrete:
            return CategoricalAction(x, self.unimix)
        mean, std = x.chunk(2, -1)
        std = (self.max_std - self.min_std) * torch.sigmoid(std + 2.0) + self.min_std
        return NormalAction(torch.tanh(mean), std)


class ReturnNormalizer(nn.Module):
    """S = EMA of (Per95(R) - Per5(R)); returns are divided by max(1, S) (paper, "Actor learning").

    The floor keeps small returns from being blown up into noise (sparse rewards).
    """

    def __init__(self, decay: float = 0.99, low: float = 0.05, high: float = 0.95):
        super().__init__()
        self.decay = decay
        self.register_buffer("quantiles", torch.tensor([low, high]))
        self.register_buffer("range", torch.zeros(()))

    def update(self, returns: torch.Tensor) -> torch.Tensor:
        """Fold a batch of returns into the EMA; return the current scale max(1, S)."""
        low, high = torch.quantile(returns.detach().float().flatten(), self.quantiles)
        self.range.mul_(self.decay).add_((1 - self.decay) * (high - low))
        return self.scale()

    def scale(self) -> torch.Tensor:
        return self.range.clamp(min=1.0)


def task_reward(world_model, feats: torch.Tensor, raw_actions: torch.Tensor):
    """The world model's reward prediction for imagined states s_1 ... s_H.

    feats (N, H + 1, F) of s_0 ... s_H. Returns (rewards (N, H), no extra metrics).
    """
    return world_model.reward_head(feats[:, 1:]).mean, {}


class Behavior(nn.Module):
    """The actor, the critic, its EMA copy and the return normaliser, with their losses."""

    def __init__(self, feat_dim: int, action_size: int, discrete: bool, sizes: dict, config):
        super().__init__()
        cfg = config.behavior
        self.actor = Actor(feat_dim, action_size, discrete, sizes, config)
        self.critic = TwoHotHead(feat_dim, sizes["units"], sizes["mlp_layers"], config.model.bins)
        self.slow_critic = copy.deepcopy(self.critic).requires_grad_(False)
        self.return_norm = ReturnNormalizer(cfg.return_norm_decay)
        self.horizon, self.lambda_ = cfg.horizon, cfg.lambda_
        self.discount = 1.0 - 1.0 / cfg.discount_horizon
        self.entropy_scale, self.actor_grad = cfg.actor_entropy, cfg.actor_grad
        self.slow_reg, self.slow_decay = cfg.critic_ema_reg, cfg.critic_ema_decay
        self.replay_scale, self.replay_grad = cfg.replay_value_loss, cfg.replay_value_grad
        if self.actor_grad not in ("reinforce", "dynamics"):
            raise ValueError(
                f"behavior.actor_grad must be reinforce or dynamics, not {self.actor_grad}"
            )
        if discrete and self.actor_grad == "dynamics":
            # A sampled discrete action passes no gradient to the policy (pitfall 6).
            raise ValueError("discrete actions need behavior.actor_grad: reinforce")

    def imagine(self, world_model, start: dict):
        """Roll the dynamics H steps from start states {"deter": (N, D), "stoch": (N, S, C)}.

        Returns (feats (N, H + 1, F) of s_0 ... s_H, raw actions (N, H, A) taken at
        s_0 ... s_{H-1}).
        Under REINFORCE nothing here needs gradients; under "dynamics" they flow through the
        frozen world model into the actor.
        """
        rssm, feats, actions = world_model.rssm, [], []
        # Copies, not the views of the replayed states they may be: torch.compile guards a
        # view by its base, so a first step on views would build a graph of its own.
        deter, stoch = start["deter"].clone(), start["stoch"].clone()
        N, H = deter.shape[0], self.horizon
        # Each step's random numbers are drawn outside it: the steps themselves are then pure
        # functions, which compile: true fuses without changing the random streams. Fresh
        # tensors rather than slices of one: a slice's storage offset grows with t, and
        # torch.compile would build a new graph for the first steps' offsets.
        action_shape = (N, 1) if self.actor.discrete else (N, self.actor.action_size)
        draw_action = torch.rand if self.actor.discrete else torch.randn
        with torch.set_grad_enabled(self.actor_grad == "dynamics"):
            for _ in range(H):
                action_noise = draw_action(action_shape, device=deter.device)
                latent_noise = torch.rand(N, rssm.stoch, 1, device=deter.device)
                feat, raw, deter, stoch = self.rollout_step(
                    rssm, deter, stoch, action_noise, latent_noise
                )
                feats.append(feat)
                actions.append(raw)
            feats.append(rssm.full_state({"deter": deter, "stoch": stoch}))
        return torch.stack(feats, 1), torch.stack(actions, 1)

    def rollout_step(self, rssm, deter, stoch, action_noise, latent_noise):
        """One imagined step: the actor acts at s_t, the dynamics predict s_{t+1}.

        Returns (feat of s_t (N, F), raw action (N, A), deter and stoch of s_{t+1})."""
        feat = rssm.full_state({"deter": deter, "stoch": stoch})
        dynamics = self.actor_grad == "dynamics"
        policy = self.actor(feat if dynamics else feat.detach())
        raw = policy.rsample(action_noise) if dynamics else policy.sample(action_noise)
        deter, stoch = rssm.predict_step(
            deter, stoch, policy.to_env(raw).to(feat.dtype), latent_noise
        )
        return feat, raw, deter, stoch

    def loss(self, world_model, start: dict, batch: dict, reward_fn=task_reward):
        """behavior_training from posterior states {"deter": (B, T, D), "stoch": (B, T, S, C)}.

        reward_fn(world_model, feats, raw_actions) -> (rewards (N, H), metrics) is the reward
        of reaching s_1 ... s_H, the task's by default; the replay value loss takes the real
        steps' rewards from batch["reward"]. Returns (actor loss, critic loss, metrics dict of
        0-d tensors).
        """
        B, T = start["deter"].shape[:2]
        # With replay_value_grad the posterior carries the world model's graph: the replay
        # value loss trains the world model through it, nothing else does.
        replay_feats = world_model.rssm.full_state(start) if self.replay_grad else None
        start = {
            key: value.detach().reshape(B * T, *value.shape[2:]) for key, value in start.items()
        }
        dynamics = self.actor_grad == "dynamics"
        # Under "dynamics" the actor's gradient passes through these modules, never into them.
        with frozen(world_model), torch.set_grad_enabled(dynamics):
            feats, raw_actions = self.imagine(world_model, start)  # (N, H+1, F), (N, H, A)
            rewards, reward_metrics = reward_fn(world_model, feats, raw_actions)
            cont = torch.sigmoid(world_model.continue_head(feats[:, 1:]).float())  # (N, H)
        real = {key: batch[key] for key in ("reward", "is_first", "is_terminal")}
        actor_loss, critic_loss, metrics = self.rollout_losses(
            feats, raw_actions, rewards, cont, real, replay_feats
        )
        return actor_loss, critic_loss, {**metrics, **reward_metrics}

    def rollout_losses(self, feats, raw_actions, rewards, cont, real, replay_feats):
        """The actor's and the critic's losses on an imagined rollout.

        feats (N, H + 1, F) and raw_actions (N, H, A) from `imagine`; rewards and cont (N, H)
        the world model's predictions for s_1 ... s_H; real: the batch's "reward", "is_first"
        and "is_terminal" (B, T), N = B * T. A function of its inputs alone (besides the
        return normaliser's running range), so compile: true makes it one compiled region:
        eager, its few hundred small operations cost more than their arithmetic.
        """
        B, T = real["is_terminal"].shape
        dynamics = self.actor_grad == "dynamics"
        # One critic pass over the imagined states: its loss trains the critic, and its mean
        # is v_t for the returns. Under "dynamics" v_t must pass gradient to the actor through
        # the world model (never into the critic), which takes a second, frozen pass.
        critic_dist = self.critic(feats.detach())  # logits (N, H + 1, K)
        if dynamics:
            with frozen(self.critic):
                values = self.critic(feats).mean  # (N, H + 1)
        else:
            values = critic_dist.mean.detach()
        discounts = self.discount * cont
        returns = lambda_returns(rewards, values, discounts, self.lambda_)  # (N, H)
        # weight_t = c_0 * prod_{1<=i<=t} gamma * c_i: how likely the imagined step is reached.
        start_alive = 1.0 - real["is_terminal"].float().reshape(B * T, 1)
        weight = start_alive * torch.cat([torch.ones_like(cont[:, :1]), discounts[:, :-1]], 1)
        weight = weight.cumprod(1).detach()  # (N, H)

        scale = self.return_norm.update(returns)
        policy = self.actor(feats[:, :-1].detach())
        entropy = policy.entropy()  # (N, H)
        if self.actor_grad == "reinforce":
            advantage = ((returns - values[:, :-1]) / scale).detach()
            objective = policy.log_prob(raw_actions) * advantage
        else:
            objective = returns / scale  # backpropagated through the world model
        actor_loss = -(weight * (objective + self.entropy_scale * entropy)).mean()

        critic_loss, critic_metrics = self.critic_loss(
            critic_dist, feats, returns, weight, real, (B, T), replay_feats
        )
        metrics = {
            "actor/loss": actor_loss.detach(),
            "actor/entropy": entropy.mean().detach(),
            "actor/return_scale": scale.detach(),
            "critic/loss": critic_loss.detach(),
            "critic/imagined_return": returns.mean().detach(),
            "critic/value": values.mean().detach(),
            "world_model/imagined_reward": rewards.mean().detach(),
            **critic_metrics,
        }
        return actor_loss, critic_loss, metrics

    def critic_loss(self, critic_dist, feats, returns, weight, batch, shape, replay_feats=None):
        """Two-hot NLL of the lambda-returns, toward the EMA critic, and on replayed data.

        critic_dist: the critic at feats (N, H + 1, F), N = B * T; returns and weight (N, H).
        replay_feats: the posterior features (B, T, F) with the world model's graph, for a
        replay value loss that trains the world model too (official repval_grad); None: the
        loss uses the critic at the detached s_0 of every rollout, the same numbers.
        """
        B, T = shape
        dist = type(critic_dist)(critic_dist.logits[:, :-1])  # the states that have R_t
        with torch.no_grad():
            slow_mean = self.slow_critic(feats[:, :-1].detach()).mean  # (N, H)
        imagined = -dist.log_prob(returns.detach()) - self.slow_reg * dist.log_prob(slow_mean)
        loss = (weight * imagined).mean()

        # Replay value loss (v2): s_0 of every imagined rollout is a real posterior state, so
        # the first column of `dist` is the critic on the replayed sequence.
        if replay_feats is None:
            replay_logits = dist.logits[:, 0].reshape(B, T, -1)[:, :-1]
        else:
            replay_logits = self.critic(replay_feats[:, :-1]).logits
        replay_dist = type(dist)(replay_logits)  # (B, T - 1, K)
        boot = returns[:, 0].detach().reshape(B, T)  # imagined R_0 at every real state
        targets = replay_returns(batch, boot, self.discount, self.lambda_)  # (B, T - 1)
        slow_replay = slow_mean[:, 0].reshape(B, T)[:, :-1]
        replay = -replay_dist.log_prob(targets) - self.slow_reg * replay_dist.log_prob(slow_replay)
        alive = 1.0 - batch["is_terminal"].float()[:, :-1]
        replay_loss = (alive * replay).mean()
        metrics = {
            "critic/imagined_loss": loss.detach(),
            "critic/replay_loss": replay_loss.detach(),
        }
        return loss + self.replay_scale * replay_loss, metrics

    @torch.no_grad()
    def update_slow_critic(self) -> None:
        """slow <- decay * slow + (1 - decay) * critic, after every critic update."""
        for slow, fast in zip(self.slow_critic.parameters(), self.critic.parameters(), strict=True):
            slow.lerp_(fast, 1.0 - self.slow_decay)


def replay_returns(batch: dict, boot: torch.Tensor, discount: float, lambda_: float):
    """Lambda-returns along the real sequences, bootstrapped with imagined returns.

    boot (B, T) is the imagined R_0 from each real state. Rewards and terminations are the
    real ones; where the next step starts a new episode the return is cut there and the
    bootstrap value stands alone. Returns (B, T - 1).
    """
    next_first = batch["is_first"][:, 1:]
    next_alive = 1.0 - batch["is_terminal"][:, 1:].float()
    rewards = torch.where(next_first, boot[:, :-1], batch["reward"][:, 1:].float())
    continues = discount * next_alive * (~next_first).float()
    return lambda_returns(rewards, boot, continues, lambda_)
