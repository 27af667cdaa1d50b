"""The Dreamer agent: world model + behaviour, their optimisers, one training step, acting.

A training step is the paper's loop body: world_model_training on a replayed batch, then
behavior_training in imagination from every posterior state of that batch.
"""

import contextlib

import numpy as np
import torch
from torch import nn

from natural_dreamer.behavior import Behavior
from natural_dreamer.distributed import average_gradients
from natural_dreamer.networks import model_sizes
from natural_dreamer.optim import clip_gradients, make_optimizer
from natural_dreamer.world_model import WorldModel


class Dreamer(nn.Module):
    """The whole agent.

    obs_space: dict "image" -> ((H, W, 3), uint8) and/or "vector" -> ((N,), float32);
    action_size: number of action dimensions (or of discrete actions, given one-hot).
    """

    def __init__(self, obs_space: dict, action_size: int, discrete: bool, config, device="cpu"):
        super().__init__()
        self.config, self.discrete, self.action_size = config, discrete, action_size
        self.device = torch.device(device)
        self.world_model = WorldModel(obs_space, action_size, config)
        feat_dim = self.world_model.rssm.feat_dim
        sizes = model_sizes(config.model.preset)
        self.behavior = Behavior(feat_dim, action_size, discrete, sizes, config)
        opt = config.optimizer
        self.optimizers = {
            "world_model": make_optimizer(
                self.world_model.parameters(), opt.world_model_lr, config
            ),
            "actor": make_optimizer(self.behavior.actor.parameters(), opt.actor_lr, config),
            "critic": make_optimizer(self.behavior.critic.parameters(), opt.critic_lr, config),
        }
        self.to(self.device)

    def autocast(self):
        """bf16 autocast for the training passes when config.precision is bf16."""
        if self.config.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batch_to_torch(self, batch: dict) -> dict:
        """NumPy (B, T, ...) arrays -> tensors on the device; images stay uint8 until encoded."""
        return {key: torch.as_tensor(value, device=self.device) for key, value in batch.items()}

    def train_step(self, batch: dict) -> dict:
        """One gradient step of the world model, the actor and the critic.

        batch: dict of (B, T, ...) arrays from ReplayBuffer.sample. Returns metrics as floats.
        """
        batch = self.batch_to_torch(batch)
        with self.autocast():
            wm_loss, metrics, posterior = self.world_model.loss(batch)
        metrics["world_model/grad_norm"] = self.update("world_model", wm_loss, self.world_model)

        with self.autocast():
            actor_loss, critic_loss, behavior_metrics = self.behavior.loss(
                self.world_model, posterior, batch
            )
        metrics.update(behavior_metrics)
        metrics["actor/grad_norm"] = self.update("actor", actor_loss, self.behavior.actor)
        metrics["critic/grad_norm"] = self.update("critic", critic_loss, self.behavior.critic)
        self.behavior.update_slow_critic()
        values = torch.stack([value.detach().float() for value in metrics.values()]).tolist()
        return dict(zip(metrics, values, strict=True))

    def update(self, name: str, loss: torch.Tensor, module: nn.Module) -> torch.Tensor:
        """Backpropagate `loss` into `module` alone and step its optimiser."""
        if not torch.isfinite(loss):
            raise FloatingPointError(f"the {name} loss became {loss.item()}")
        optimizer = self.optimizers[name]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        # Data-parallel runs: every rank steps with the mean gradient (distributed.py).
        average_gradients(module.parameters())
        norm = clip_gradients(module.parameters(), self.config)
        if not torch.isfinite(norm):  # stop before a bad step reaches the parameters
            raise FloatingPointError(f"the {name} gradient norm became {norm.item()}")
        optimizer.step()
        return norm

    def initial_state(self, batch: int = 1) -> dict:
        """The acting state: the RSSM state and the previous action, all zero."""
        state = self.world_model.rssm.initial(batch, self.device)
        state["action"] = torch.zeros(batch, self.action_size, device=self.device)
        return state

    @torch.no_grad()
    def act(self, obs: dict, state: dict, explore: bool = True):
        """Choose actions for a batch of environment steps.

        obs: dict of (N, ...) arrays with the observation keys and "is_first" (N,).
        state: from initial_state or the previous call. Returns (actions (N, A) as a NumPy
        float32 array ready for the environment, new state).
        """
        wm = self.world_model
        obs_t = {
            key: torch.as_tensor(np.asarray(obs[key]), device=self.device) for key in wm.obs_keys
        }
        is_first = torch.as_tensor(np.asarray(obs["is_first"]), device=self.device).bool()
        embed = wm.encoder(obs_t)  # (N, E)
        rssm_state = {"deter": state["deter"], "stoch": state["stoch"]}
        rssm_state, _ = wm.rssm.observe_step(rssm_state, state["action"], embed, is_first)
        policy = self.behavior.actor(wm.rssm.full_state(rssm_state))
        raw = policy.sample() if explore else policy.mode()
        action = policy.to_env(raw)
        return action.cpu().numpy().astype(np.float32), {**rssm_state, "action": action}
