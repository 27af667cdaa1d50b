"""The Dreamer agent: world model + behaviour, their optimisers, one training step, acting.

A training step is the paper's loop body: world_model_training on a replayed batch, then
behavior_training in imagination from every posterior state of that batch. Neither a training
step nor acting reads a value back to the host before its end (see deferred.py): a training
step's metrics and finiteness checks stay on the device, and acting reads its action and its
checks in one transfer.
"""

import contextlib
import shutil

import numpy as np
import torch
from torch import nn

from natural_dreamer.behavior import Behavior
from natural_dreamer.deferred import TrainStep, UnreadSteps
from natural_dreamer.distributed import average_gradients
from natural_dreamer.distributions import NormalAction, twohot_bins
from natural_dreamer.exploration import Plan2Explore
from natural_dreamer.fastpath import (
    choose_compile,
    choose_filter_precision,
    choose_precision,
    compile_mode,
    machine_id,
    pin_vector_width,
    planned_updates,
    use_tf32,
)
from natural_dreamer.loader import HOST_KEYS, to_device
from natural_dreamer.networks import MLP, ImageDecoder, ImageEncoder, TwoHotHead, model_sizes
from natural_dreamer.optim import clip_gradients, make_optimizer
from natural_dreamer.rssm import LatentNet, RecurrentCell
from natural_dreamer.world_model import WorldModel


class Dreamer(nn.Module):
    """The whole agent.

    obs_space: dict "image" -> ((H, W, 3), uint8) and/or "vector" -> ((N,), float32);
    action_size: number of action dimensions (or of discrete actions, given one-hot).

    `unread` holds the training steps whose numbers the host has not read yet (the Trainer
    adds each; deferred.py says how far that check lags and why that is safe): state_dict
    checks them first, so no checkpoint holds the parameters of a non-finite update.
    """

    def __init__(self, obs_space: dict, action_size: int, discrete: bool, config, device="cpu"):
        super().__init__()
        self.unread = UnreadSteps()  # the training steps the host has not read yet
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
        # Built last and only when asked for, so a greedy agent is the same as before.
        self.explorer = self.build_explorer(sizes) if config.exploration == "plan2explore" else None
        self.to(self.device)
        # "auto" (the default) decides by this machine: see fastpath.py.
        self.precision, self.precision_reason = choose_precision(
            config.precision, self.device, sizes["units"]
        )
        # Under bf16 the 16-row filtering loop may still be faster in fp32: measured here.
        rssm = self.world_model.rssm
        rssm.filter_fp32, why = choose_filter_precision(
            self.precision, config.precision, rssm, config.world_model.batch_size
        )
        self.precision_reason += f"; {why}" if why else ""
        self.measured_reason = self.precision_reason  # what a checkpoint records
        # The float32 products left (outside bf16 autocast) in TF32 where a GPU has it.
        tf32, why = use_tf32(self.device)
        self.precision_reason += f"; {why}" if tf32 else ""
        self.compiled, self.compile_reason = choose_compile(
            config.compile, self.device, planned_updates(config)
        )
        if self.compiled:
            mode, why = compile_mode(self.device)
            compile_networks(self, mode)
            self.compile_reason += f"; {why}" if why else ""

    def build_explorer(self, sizes: dict) -> Plan2Explore:
        """Plan2Explore's ensemble and exploration actor-critic, with their optimisers."""
        config, rssm = self.config, self.world_model.rssm
        explorer = Plan2Explore(
            rssm.feat_dim, rssm.stoch * rssm.classes, self.action_size, self.discrete, sizes, config
        )
        opt = config.optimizer
        self.optimizers["explore_ensemble"] = make_optimizer(
            explorer.ensemble.parameters(), config.explore.ensemble_lr, config
        )
        self.optimizers["explore_actor"] = make_optimizer(
            explorer.behavior.actor.parameters(), opt.actor_lr, config
        )
        self.optimizers["explore_critic"] = make_optimizer(
            explorer.behavior.critic.parameters(), opt.critic_lr, config
        )
        return explorer

    def measured_choices(self) -> dict:
        """The precisions this agent computes in and where they came from, with the machine
        that chose them: what a checkpoint records (Trainer.state_dict)."""
        return {
            "machine": machine_id(self.device),
            "measured": self.config.precision == "auto",
            "precision": self.precision,
            "filter_fp32": self.world_model.rssm.filter_fp32,
            "reason": self.measured_reason,
        }

    def keep_measured_choices(self, saved: dict | None) -> bool:
        """On resuming a run whose config leaves the precision to `auto`: take the choices the
        checkpoint records when they were measured on this kind of machine, instead of this
        start's own measurement. A measurement near its threshold can fall either way from
        one start to the next (the 1m filtering loop: 1.2x against a line at 1.2x, AVX-512
        BF16 EPYC), and a resumed run that switched precision would no longer be the run it
        continues. Another machine, a precision set in the config now, or one that was set
        when the checkpoint was made keeps this start's choices, and the start-up line says
        how the run computed before where that differs. Returns whether the saved choices
        were taken."""
        if not saved:
            return False
        same_machine = saved["machine"] == machine_id(self.device)
        # Checkpoints of commit 4fb8917 lack "measured"; a set precision's reason said so.
        measured = saved.get("measured", saved["reason"] != "set in the config")
        if self.config.precision != "auto" or not measured or not same_machine:
            before = precision_label(saved["precision"], saved["filter_fp32"])
            if self.precision_label != before:
                self.precision_reason += (
                    f"; the run so far computed in {before} on {saved['machine']}"
                )
            return False
        self.precision = saved["precision"]
        self.world_model.rssm.filter_fp32 = bool(saved["filter_fp32"])
        self.measured_reason = saved["reason"]
        kept = "kept from the checkpoint, measured on this machine"
        self.precision_reason = f"{kept}: {self.measured_reason}"
        return True

    @property
    def precision_label(self) -> str:
        """The precision as tables print it: "fp32", "bf16", or "bf16 (filtering loop fp32)"."""
        return precision_label(self.precision, self.world_model.rssm.filter_fp32)

    def autocast(self):
        """bf16 autocast for the training passes when the precision is bf16."""
        if self.precision == "bf16":
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def batch_to_torch(self, batch: dict) -> dict:
        """NumPy (B, T, ...) arrays -> tensors on the device (tensors are used as they are);
        images stay uint8 until encoded. The replay rows (loader.HOST_KEYS, the trainer's
        business) are left out."""
        model = {key: value for key, value in batch.items() if key not in HOST_KEYS}
        return to_device(model, self.device)

    def train_step(self, batch: dict) -> TrainStep:
        """One gradient step of the world model, the actor and the critic (and under
        plan2explore of the ensemble and the exploration actor and critic).

        batch: dict of (B, T, ...) arrays from ReplayBuffer.sample (tensors are used as they
        are). Returns a TrainStep: the metrics (a mapping {name: float} when read), the
        values the update guarded and the posterior states of the batch ({"deter": (B, T, D),
        "stoch": (B, T, S, C)}, detached), all on the device: nothing here waits for it.
        """
        batch = self.batch_to_torch(batch)
        replay_grad = self.behavior.replay_grad
        # The filtering loop's weight gradients in one pass each (RSSM.filter_batched).
        with self.autocast(), self.world_model.rssm.batched_weight_grads():
            wm_loss, metrics, posterior = self.world_model.loss(batch, keep_graph=replay_grad)
            actor_loss, critic_loss, behavior_metrics = self.behavior.loss(
                self.world_model, posterior, batch
            )
        metrics.update(behavior_metrics)
        # One backward pass for the three losses, as the official agent takes one gradient of
        # their sum: imagination starts from the posterior of the world model BEFORE this
        # update, and the replay value loss reaches the world model (replay_value_grad).
        # The actor's loss cannot reach the world model or the critic (imagination runs with
        # them frozen), and the imagined critic loss sees detached features.
        losses = {"world_model": wm_loss, "actor": actor_loss, "critic": critic_loss}
        modules = {
            "world_model": self.world_model,
            "actor": self.behavior.actor,
            "critic": self.behavior.critic,
        }
        checks = []  # (label, value) of each loss and gradient norm, in the order met
        metrics.update(self.update(losses, modules, checks))
        self.behavior.update_slow_critic()
        posterior = {key: value.detach() for key, value in posterior.items()}
        if self.explorer is not None:
            metrics.update(self.train_explorer(posterior, batch, checks))
        # One vector, so that the host reads a step (or a whole interval of them) at once.
        values = [value for _, value in checks] + [value.detach() for value in metrics.values()]
        vector = torch.stack([value.float() for value in values])  # (C + M,)
        return TrainStep([label for label, _ in checks], metrics, vector, posterior)

    def train_explorer(self, posterior: dict, batch: dict, checks: list) -> dict:
        """Plan2Explore's step: the ensemble on the replayed transitions, then the exploration
        actor and critic in imagination from the same posterior states. Returns metrics;
        appends what its updates guard to `checks`."""
        explorer = self.explorer
        with self.autocast():
            loss, metrics = explorer.ensemble_loss(posterior, batch)
        norms = self.update(
            {"explore_ensemble": loss}, {"explore_ensemble": explorer.ensemble}, checks
        )
        metrics["explore/ensemble_grad_norm"] = norms["explore_ensemble/grad_norm"]
        with self.autocast():
            actor_loss, critic_loss, behavior_metrics = explorer.behavior_loss(
                self.world_model, posterior, batch
            )
        metrics.update(behavior_metrics)
        behavior = explorer.behavior
        norms = self.update(
            {"explore_actor": actor_loss, "explore_critic": critic_loss},
            {"explore_actor": behavior.actor, "explore_critic": behavior.critic},
            checks,
        )
        metrics["explore/actor/grad_norm"] = norms["explore_actor/grad_norm"]
        metrics["explore/critic/grad_norm"] = norms["explore_critic/grad_norm"]
        behavior.update_slow_critic()
        return metrics

    def update(self, losses: dict, modules: dict, checks: list) -> dict:
        """Backpropagate the sum of `losses` {name: scalar} once, then step each module's
        optimiser with its own clipped gradient. Returns {"<name>/grad_norm": norm}.

        Every loss must reach only its own module's parameters (the callers make sure). Each
        loss and each norm goes into `checks` as ("the <name> loss", value) and ("the <name>
        gradient norm", value), for the host to check later (deferred.py): asking here
        whether they are finite would make the host wait for the device twice per update.
        """
        checks += [(f"the {name} loss", loss.detach()) for name, loss in losses.items()]
        for name in losses:
            self.optimizers[name].zero_grad(set_to_none=True)
        sum(losses.values()).backward()
        norms = {}
        for name, module in modules.items():
            # Data-parallel runs: every rank steps with the mean gradient (distributed.py).
            average_gradients(module.parameters())
            norm = clip_gradients(module.parameters(), self.config)
            checks.append((f"the {name} gradient norm", norm))
            norms[f"{name}/grad_norm"] = norm
        for name in modules:
            self.optimizers[name].step()
        return norms

    def initial_state(self, batch: int = 1) -> dict:
        """The acting state: the RSSM state and the previous action, all zero."""
        state = self.world_model.rssm.initial(batch, self.device)
        state["action"] = torch.zeros(batch, self.action_size, device=self.device)
        return state

    def collecting_actor(self) -> nn.Module:
        """The actor whose samples fill the replay buffer: the explorer's under plan2explore,
        else the task actor."""
        return self.behavior.actor if self.explorer is None else self.explorer.behavior.actor

    @torch.no_grad()
    def act(self, obs: dict, state: dict, explore: bool = True, actor: nn.Module | None = None):
        """Choose actions for a batch of environment steps.

        obs: dict of (N, ...) arrays with the observation keys and "is_first" (N,).
        state: from initial_state or the previous call. explore: sample (else the mode).
        actor: the Actor that chooses; the task actor when None. Returns (actions (N, A) as a
        NumPy float32 array ready for the environment, new state). The one transfer to the
        host of a policy step: the actions with their two checks (policy_step). Where one
        fails, an unread training step may be the cause, and is named instead (deferred.py).
        """
        action, finite, state = self.policy_step(obs, state, explore, actor)
        host = torch.cat([action.float().flatten(), finite.float()]).cpu().numpy()
        state_ok, policy_ok = host[-2:]
        if not state_ok or not policy_ok:
            self.unread.check()  # a non-finite update raises here, naming its loss
        if not state_ok:
            raise FloatingPointError("the model state became non-finite while acting")
        if not policy_ok:
            raise FloatingPointError("the actor's output became non-finite while acting")
        return host[:-2].reshape(action.shape).astype(np.float32), state

    @torch.no_grad()
    def policy_step(self, obs: dict, state: dict, explore: bool = True, actor=None) -> tuple:
        """act's work on the device, reading nothing back: (actions (N, A), finite (2,) bool:
        whether the model state and the policy's parameters are all finite numbers, new
        state), every tensor on the agent's device."""
        actor = self.behavior.actor if actor is None else actor
        wm = self.world_model
        arrays = {key: np.asarray(obs[key]) for key in (*wm.obs_keys, "is_first")}
        obs_t = to_device(arrays, self.device)  # pinned, without blocking, on a GPU
        is_first = obs_t.pop("is_first").bool()
        embed = wm.encoder(obs_t)  # (N, E)
        rssm_state = {"deter": state["deter"], "stoch": state["stoch"]}
        rssm_state, _ = wm.rssm.observe_step(rssm_state, state["action"], embed, is_first)
        feat = wm.rssm.full_state(rssm_state)
        policy = actor(feat)
        finite = torch.stack([torch.isfinite(feat).all(), policy_is_finite(policy)])  # (2,)
        raw = policy.sample() if explore else policy.mode()
        action = policy.to_env(raw)
        return action, finite, {**rssm_state, "action": action}

    def state_dict(self, *args, **kwargs):
        """nn.Module's state_dict, after checking the unread training steps (UnreadSteps.check
        raises FloatingPointError at a non-finite one): every checkpoint is made from here,
        so none holds the parameters of a non-finite update."""
        self.unread.check()
        return super().state_dict(*args, **kwargs)


def policy_is_finite(policy) -> torch.Tensor:
    """0-d bool on the device: whether every parameter of a policy (NormalAction's mean and
    std, CategoricalAction's logits) is a finite number. Unlike policy.is_finite(), it does
    not read the answer back to the host."""
    if isinstance(policy, NormalAction):
        return torch.isfinite(policy.dist.loc).all() & torch.isfinite(policy.dist.scale).all()
    return torch.isfinite(policy.logits).all()


def precision_label(precision: str, filter_fp32: bool) -> str:
    """ "fp32", "bf16", or "bf16 (filtering loop fp32)": a precision as tables print it."""
    return precision + (" (filtering loop fp32)" if filter_fp32 else "")


# The modules whose forward passes torch.compile fuses: every Linear/conv -> RMSNorm -> SiLU
# chain and the GRU's gate arithmetic, where eager PyTorch spends most of its time passing
# whole tensors through memory once per elementwise op.
COMPILED = (MLP, ImageEncoder, ImageDecoder, RecurrentCell, LatentNet)


def compile_networks(agent: nn.Module, mode: str = "default") -> None:
    """torch.compile those modules in place (their parameters and state_dict keys unchanged);
    mode: torch.compile's mode for the sequential step regions (fastpath.compile_mode:
    "reduce-overhead", CUDA graphs, on a GPU).

    dynamic=True gives one graph for every batch size (acting, training, imagination), so
    the first steps compile a handful of graphs and later steps compile none. The graphs
    are cached per forward function, which many MLP instances share (with and without
    gradients, sliced inputs...), so the default limit of 8 per function would send the
    rest back to eager PyTorch without a word beyond a warning. Donated buffers (a memory
    saving that frees saved tensors during backward) are off, so backward(retain_graph=True)
    works as it does in eager PyTorch. Python floats the networks read (norm epsilons, the
    unimix share, the action std range: constants of a run) are compiled in as constants;
    left to dynamo's default they would be graph inputs, a 0-d tensor made from each before
    every call (6 per filtering step: the 1m loop 2-21% faster without them, in turns).
    """
    cpu = any(p.device.type == "cpu" for p in agent.parameters())
    if cpu and not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
        raise RuntimeError(
            "compile: true builds C++ kernels, but no C++ compiler (c++, g++ or clang++) is on "
            "PATH: install one (bash scripts/install.sh does) or run with --compile false"
        )
    if cpu:
        pin_vector_width()  # inductor's disk cache told apart by vector width
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    torch._functorch.config.donated_buffer = False
    torch._dynamo.config.specialize_float = True
    for module in agent.modules():
        if isinstance(module, COMPILED):
            module.compile(dynamic=True)
    # The sequential steps as whole regions (cell, latent net, sample; in imagination the actor
    # too), so each of the 64 filtering and 15 imagined steps is a few fused kernels instead
    # of a hundred small operations. Their random numbers are drawn outside (see
    # RSSM.observe), so compiled and eager runs consume the same random streams.
    # On a GPU each step is replayed as one CUDA graph: one launch instead of dozens.
    rssm = agent.world_model.rssm
    rssm.filter_step = torch.compile(rssm.filter_step, dynamic=True, mode=mode)
    rssm.predict_step = torch.compile(rssm.predict_step, dynamic=True, mode=mode)
    behaviors = [agent.behavior] + ([agent.explorer.behavior] if agent.explorer else [])
    for behavior in behaviors:
        behavior.rollout_step = torch.compile(behavior.rollout_step, dynamic=True, mode=mode)
    # What follows the loops, each as one region too: the world model's heads and losses on
    # the filtered states, and the actor's and critic's losses on the imagined rollout.
    # Eager, their few hundred small operations each pay a fixed cost (on two threads, a
    # fork and join of the thread pool): the 1m update 0.197 -> 0.173 s (AVX-512 BF16
    # EPYC, two threads, docs/performance.md session 22), for about 35 s more first compile.
    wm = agent.world_model
    wm.prediction_losses = torch.compile(wm.prediction_losses, dynamic=True)
    for behavior in behaviors:
        behavior.rollout_losses = torch.compile(behavior.rollout_losses, dynamic=True)
    # The two-hot bins are made on first use and cached per (count, device): made inside a
    # region, that first use changes what the region's guards read, and its next call would
    # compile the region a second time.
    for module in agent.modules():
        if isinstance(module, TwoHotHead):
            twohot_bins(module.out.out_features, module.out.weight.device)
