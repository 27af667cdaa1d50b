"""The world model: encoder, RSSM, decoder, reward and continue heads, and their losses.

world_model_training (paper, "World model learning") minimises, averaged over the (B, T) batch,
    L = L_pred + dyn * L_dyn + rep * L_rep
    L_pred = reconstruction + reward NLL (two-hot) + continue NLL (Bernoulli)
    L_dyn  = max(free, KL[sg(posterior) || prior])   trains the prior (dynamics predictor)
    L_rep  = max(free, KL[posterior || sg(prior)])   trains the encoder's representations
with the KL summed over the 32 latents BEFORE the free-bits clip, per (batch, time) entry.
"""

import torch
import torch.nn.functional as F
from torch import nn

from natural_dreamer.distributions import categorical_kl
from natural_dreamer.networks import (
    ContinueHead,
    MultiDecoder,
    MultiEncoder,
    TwoHotHead,
    check_image_size,
    init_weights,
    model_sizes,
    scale_output,
)
from natural_dreamer.rssm import RSSM


def kl_loss(post_logits, prior_logits, free: float):
    """Balanced KL terms with free bits (paper, "World model learning").

    post_logits, prior_logits: (B, T, S, C). Returns (dyn, rep, kl), each (B, T): the loss
    that trains the prior, the loss that trains the posterior, and the raw KL.
    """
    dyn = categorical_kl(post_logits.detach(), prior_logits).sum(-1)  # (B, T)
    rep = categorical_kl(post_logits, prior_logits.detach()).sum(-1)  # (B, T)
    return dyn.clamp(min=free), rep.clamp(min=free), dyn.detach()


class WorldModel(nn.Module):
    """Learns to predict observations, rewards and episode ends from a compact state.

    obs_space: dict "image" -> ((H, W, 3), uint8) and/or "vector" -> ((N,), float32).
    """

    def __init__(self, obs_space: dict, action_size: int, config):
        super().__init__()
        model, wm = config.model, config.world_model
        sizes = model_sizes(model.preset)
        if "image" in obs_space:
            check_image_size(obs_space["image"][0][0], sizes["cnn_mults"])
        self.encoder = MultiEncoder(obs_space, sizes)
        self.rssm = RSSM(
            self.encoder.out_dim,
            action_size,
            sizes,
            model.stoch,
            model.unimix,
            dyn_layers=model.dyn_layers,
            prior_layers=model.prior_layers,
        )
        feat = self.rssm.feat_dim
        self.decoder = MultiDecoder(feat, obs_space, sizes)
        self.reward_head = TwoHotHead(feat, sizes["units"], sizes["head_layers"], model.bins)
        self.continue_head = ContinueHead(feat, sizes["units"], sizes["head_layers"])
        self.obs_keys = list(obs_space)
        self.kl_dyn, self.kl_rep, self.free_nats = wm.kl_dyn, wm.kl_rep, wm.free_nats
        self.loss_scales = dict(wm.loss_scales)
        init_weights(self)  # the official initialisation of every layer ...
        scale_output(self.reward_head.out, 0.0)  # ... but the reward head starts at exactly 0

    def loss(self, batch: dict, keep_graph: bool = False):
        """world_model_training on one batch of (B, T) sequences.

        batch holds the observation keys, "action" (B, T, A), "reward" (B, T), "is_first" and
        "is_terminal" (B, T). Step t pairs x_t with the reward r_t that arrived with it, so the
        state built from x_t predicts r_t (pitfall 1).
        Returns (scalar loss, metrics dict of 0-d tensors, posterior states): the states are
        detached unless keep_graph, which lets a later loss on them (the replay value loss)
        train the world model too.
        """
        obs = {key: batch[key] for key in self.obs_keys}
        embed = self.encoder(obs)  # (B, T, E)
        state, first_action = self.context(batch)
        states, post_logits, prior_logits = self.rssm.observe(
            embed, batch["action"], batch["is_first"], state, first_action
        )
        total, metrics = self.prediction_losses(
            states, post_logits, prior_logits, obs, batch["reward"], batch["is_terminal"]
        )
        if not keep_graph:
            states = {key: value.detach() for key, value in states.items()}
        return total, metrics, states

    def prediction_losses(self, states, post_logits, prior_logits, obs, reward, is_terminal):
        """The weighted sum of the decoder's, the reward's and the continue losses and the
        KL terms for the filtered states, with their metrics. A function of its inputs
        alone, so compile: true makes it one compiled region (heads, losses and the sum)."""
        feat = self.rssm.full_state(states)  # (B, T, F)
        losses = self.decoder.loss(feat, obs)  # each (B, T)
        losses["reward"] = -self.reward_head(feat).log_prob(reward)
        continues = 1.0 - is_terminal.float()  # a time-limit end is not a termination
        cont_logits = self.continue_head(feat).float()
        losses["continue"] = F.binary_cross_entropy_with_logits(
            cont_logits, continues, reduction="none"
        )
        dyn, rep, kl = kl_loss(post_logits, prior_logits, self.free_nats)
        total = self.kl_dyn * dyn.mean() + self.kl_rep * rep.mean()
        for key, value in losses.items():
            total = total + self.loss_scales.get(key, 1.0) * value.mean()
        # Metrics stay tensors: one host transfer per training step instead of one per value.
        metrics = {f"world_model/{key}_loss": value.mean() for key, value in losses.items()}
        metrics["world_model/kl"] = kl.mean()
        metrics["world_model/dyn_loss"] = dyn.mean()
        metrics["world_model/rep_loss"] = rep.mean()
        metrics["world_model/loss"] = total
        return total, metrics

    @staticmethod
    def context(batch: dict):
        """The replay context of a batch (ReplayBuffer.sample with context=1): the stored
        state before each sequence and the action taken there, both zero where no state is
        stored yet. (None, None) for a batch without one: sequences start from zeros."""
        if "context_deter" not in batch:
            return None, None
        valid = batch["context_valid"].float()  # (B,)
        state = {
            "deter": batch["context_deter"] * valid[:, None],
            "stoch": batch["context_stoch"] * valid[:, None, None],
        }
        return state, batch["context_action"] * valid[:, None]

    @torch.no_grad()
    def dream(self, obs: dict, actions: torch.Tensor, context: int = 5) -> torch.Tensor:
        """Open-loop predictions of one episode's images (the "dream" video).

        obs["image"] (B, T, H, W, 3) uint8 starting at an episode's first step; actions
        (B, T, A). The first `context` steps are filtered (reconstructions); later ones are
        imagined from the real actions alone. Returns predicted images (B, T, H, W, 3) uint8.
        """
        T = actions.shape[1]
        is_first = torch.zeros(actions.shape[:2], dtype=torch.bool, device=actions.device)
        is_first[:, 0] = True
        embed = self.encoder({key: value[:, :context] for key, value in obs.items()})
        states, _, _ = self.rssm.observe(embed, actions[:, :context], is_first[:, :context])
        state = {key: value[:, -1] for key, value in states.items()}
        imagined = []
        for t in range(context, T):
            state = self.rssm.imagine_step(state, actions[:, t - 1])  # s_t from (s_{t-1}, a_{t-1})
            imagined.append(state)
        for key in states:
            states[key] = torch.cat([states[key], *[s[key][:, None] for s in imagined]], 1)
        image = self.decoder(self.rssm.full_state(states))["image"]  # (B, T, H, W, 3)
        return ((image.float() + 0.5) * 255).clamp(0, 255).to(torch.uint8)
