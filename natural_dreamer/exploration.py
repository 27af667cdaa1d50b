"""Plan2Explore (Sekar et al. 2020): collect data where the model's ensemble disagrees.

An ensemble of K one-step predictors learns, from the replayed posterior sequences, to guess
the next stochastic latent z_{t+1} from (s_t, a_t). Where the agent has been often, the
members agree; where it has not, each still shows its own random initialisation, so the
variance of their predictions measures how new a transition is (what the model does not know
yet, rather than noise it can never predict).

A second actor-critic (another `Behavior`) learns in imagination to reach such transitions,
and its actor collects the training data. The task actor-critic keeps learning from the task
reward in the same world model, from the same start states, and is the one evaluated.
"""

import torch
from torch import nn

from natural_dreamer.behavior import Behavior, frozen, task_reward
from natural_dreamer.networks import MLP, init_weights
from natural_dreamer.rssm import RSSM


class Ensemble(nn.Module):
    """K one-step predictors, each an MLP: concat(s_t, a_t) -> z_{t+1}.

    The target is the next stochastic latent z_{t+1} (S * C one-hot numbers), as in
    DreamerV3's code, not the next observation embedding of the Plan2Explore paper:
      - z_{t+1} ~ q(z | h_{t+1}, x_{t+1}) is where the next observation enters the model, so
        it carries the novelty of what the agent will see; h_{t+1} would not, since it is a
        fixed function of (s_t, a_t);
      - it is already computed, and of the same size and scale (numbers in [0, 1]) for image
        and vector observations, so one reward scale suits every task.
    z_{t+1} is a sample; trained by squared error, every member moves toward the same
    probabilities, so with enough data the sampling noise does not keep them apart.
    Members differ only by their random initialisation and all train on the same batch.
    """

    def __init__(self, feat_dim: int, action_size: int, target_dim: int, members: int, sizes):
        super().__init__()
        self.members = nn.ModuleList(
            self.member(feat_dim + action_size, target_dim, sizes) for _ in range(members)
        )

    @staticmethod
    def member(in_dim: int, out_dim: int, sizes: dict) -> nn.Module:
        mlp = MLP(in_dim, sizes["units"], sizes["mlp_layers"])
        return init_weights(nn.Sequential(mlp, nn.Linear(mlp.out_dim, out_dim)))

    def forward(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """feat (..., F), action (..., A) -> every member's prediction (K, ..., S * C)."""
        x = torch.cat([feat, action.to(feat.dtype)], -1)
        return torch.stack([member(x) for member in self.members])

    def disagreement(self, feat: torch.Tensor, action: torch.Tensor) -> torch.Tensor:
        """Variance across the members, averaged over the outputs: (...) >= 0."""
        return self(feat, action).float().var(0, correction=0).mean(-1)


def transitions(posterior: dict, batch: dict):
    """The replayed transitions (s_t, a_t) -> z_{t+1}, detached from the world model.

    posterior {"deter": (B, T, D), "stoch": (B, T, S, C)}; batch["action"] (B, T, A) holds a_t.
    Returns feat (B, T - 1, F), action (B, T - 1, A), target (B, T - 1, S * C) and valid
    (B, T - 1): 0 where s_{t+1} starts a new episode and so does not follow from (s_t, a_t).
    """
    feat = RSSM.full_state(posterior).detach()
    target = posterior["stoch"][:, 1:].detach().flatten(-2)
    valid = (~batch["is_first"][:, 1:]).float()
    return feat[:, :-1], batch["action"][:, :-1], target, valid


class RunningMean(nn.Module):
    """An EMA of batch means, debiased: exact after one update, whatever the decay."""

    def __init__(self, decay: float):
        super().__init__()
        self.decay = decay
        self.register_buffer("total", torch.zeros(()))
        self.register_buffer("weight", torch.zeros(()))  # sum of the EMA's weights so far

    def update(self, mean: torch.Tensor) -> None:
        self.total.mul_(self.decay).add_((1 - self.decay) * mean.detach().float())
        self.weight.mul_(self.decay).add_(1 - self.decay)

    def value(self) -> torch.Tensor:
        """The mean, kept above 0 so it can divide."""
        return (self.total / self.weight.clamp(min=1e-12)).clamp(min=1e-8)


class Plan2Explore(nn.Module):
    """The ensemble, the exploration actor-critic and the scale of the intrinsic reward.

    The explorer's reward for reaching s_{t+1} is
        intrinsic * disagreement(s_t, a_t) / running mean of the disagreement on replayed steps
        + extrinsic * the task reward of s_{t+1}
    Dividing by the running mean puts a usual step at about 1 whatever the size of the target
    or how far training has gone: the explorer seeks states that are newer than the data it
    already has, and the two weights (config explore.intrinsic, explore.extrinsic) compare
    like with like.
    """

    def __init__(self, feat_dim, target_dim, action_size, discrete, sizes, config):
        """feat_dim F of a full state; target_dim S * C of a flattened latent."""
        super().__init__()
        cfg = config.explore
        self.ensemble = Ensemble(feat_dim, action_size, target_dim, cfg.ensemble, sizes)
        self.behavior = Behavior(feat_dim, action_size, discrete, sizes, config)
        self.novelty = RunningMean(cfg.novelty_decay)
        self.intrinsic, self.extrinsic = cfg.intrinsic, cfg.extrinsic

    def ensemble_loss(self, posterior: dict, batch: dict):
        """Squared error of every member on the replayed transitions; inputs are detached, so
        the ensemble never shapes the world model's states.

        Returns (loss summed over the members, each training on its own error; metrics).
        """
        feat, action, target, valid = transitions(posterior, batch)
        error = (self.ensemble(feat, action).float() - target).square().mean(-1)  # (K, B, T-1)
        per_member = (error * valid).sum((1, 2)) / valid.sum().clamp(min=1)  # (K,)
        return per_member.sum(), {"explore/ensemble_loss": per_member.mean().detach()}

    @torch.no_grad()
    def replay_reward(self, posterior: dict, batch: dict) -> torch.Tensor:
        """The explorer's reward of the real steps (B, T), for its replay value loss.

        Step t + 1 earns the disagreement at (s_t, a_t); step 0 has no transition and gets 0
        (replay_returns reads neither it nor the first step of an episode). Also folds the
        valid steps into the running mean.
        """
        feat, action, _, valid = transitions(posterior, batch)
        novelty = self.ensemble.disagreement(feat, action)  # (B, T - 1)
        self.novelty.update((novelty * valid).sum() / valid.sum().clamp(min=1))
        intrinsic = torch.cat([torch.zeros_like(novelty[:, :1]), novelty], 1) / self.novelty.value()
        return self.intrinsic * intrinsic + self.extrinsic * batch["reward"].float()

    def reward(self, world_model, feats: torch.Tensor, raw_actions: torch.Tensor):
        """The explorer's reward of imagined steps, a `reward_fn` for Behavior.loss.

        feats (N, H + 1, F) of s_0 ... s_H, raw_actions (N, H, A) taken at s_0 ... s_{H-1}.
        Returns (rewards (N, H) for reaching s_1 ... s_H, metrics).
        """
        # What the dynamics were given: continuous samples clipped to [-1, 1] as the
        # environment gets them (NormalAction.to_env); one-hot actions are unchanged.
        actions = raw_actions.clamp(-1.0, 1.0)
        with frozen(self.ensemble):  # under "dynamics" gradients pass through, never into it
            novelty = self.ensemble.disagreement(feats[:, :-1], actions)  # (N, H)
        intrinsic = novelty / self.novelty.value()
        rewards = self.intrinsic * intrinsic
        if self.extrinsic:  # skip the reward head when its weight is 0
            rewards = rewards + self.extrinsic * task_reward(world_model, feats, raw_actions)[0]
        metrics = {
            "disagreement": novelty.mean().detach(),
            "intrinsic_reward": intrinsic.mean().detach(),
        }
        return rewards, metrics

    def behavior_loss(self, world_model, posterior: dict, batch: dict):
        """behavior_training of the exploration actor-critic from the task's start states.

        Returns (actor loss, critic loss, metrics), every metric named "explore/...".
        """
        batch = {**batch, "reward": self.replay_reward(posterior, batch)}
        actor_loss, critic_loss, metrics = self.behavior.loss(
            world_model, posterior, batch, reward_fn=self.reward
        )
        # The explorer's "world_model/imagined_reward" is its own reward, not the model's.
        metrics = {f"explore/{key.removeprefix('world_model/')}": v for key, v in metrics.items()}
        return actor_loss, critic_loss, metrics
