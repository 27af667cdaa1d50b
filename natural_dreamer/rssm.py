"""The recurrent state-space model (RSSM): the world model's sense of time.

The model state has two parts (paper, "World model learning"):
  recurrent_state h_t = f(h_{t-1}, z_{t-1}, a_{t-1})      deterministic, a normalised GRU
  latent_state    z_t ~ q(z_t | h_t, x_t)  (posterior)     32 categoricals, one-hot samples
                  z_t ~ p(z_t | h_t)       (prior)         the same net, without the image
full_state = concat(h_t, flatten(z_t)) feeds every head.
"""

from contextlib import contextmanager, nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from natural_dreamer.distributions import sample_one_hot, unimix
from natural_dreamer.networks import MLP, BlockLinear, RMSNorm, frozen, init_weights

__all__ = ["RSSM", "BlockLinear", "LatentNet", "RecurrentCell"]


class RecurrentCell(nn.Module):
    """Block GRU: h_t = f(h_{t-1}, z_{t-1}, a_{t-1}), laid out as the official `_core`.

    h, z and a are each embedded (Linear -> RMSNorm -> SiLU) and the three embeddings are
    given to every block beside that block's own slice of h; each block sees only its slice,
    which keeps a wide state cheap (v2 paper). Then `layers` hidden BlockLinear(D) -> RMSNorm
    -> SiLU, and a BlockLinear to the 3 x D gate pre-activations, which are NOT normalised.
    The update gate has a bias of -1, so the state starts out mostly remembering itself.
    """

    def __init__(
        self,
        deter: int,
        stoch_dim: int,
        action_size: int,
        hidden: int,
        blocks: int,
        layers: int = 1,
    ):
        super().__init__()
        if deter % blocks:
            raise ValueError(f"deter {deter} must be divisible by blocks {blocks}")
        self.blocks = blocks

        def embed(in_dim: int) -> nn.Module:
            return nn.Sequential(nn.Linear(in_dim, hidden), RMSNorm(hidden), nn.SiLU())

        self.embed_deter, self.embed_stoch = embed(deter), embed(stoch_dim)
        self.embed_action = embed(action_size)
        block_dim = deter // blocks
        # The embeddings enter the first block layer (a hidden one, or the gates without any).
        self.hidden = nn.ModuleList(
            BlockLinear(blocks, block_dim, 3 * hidden if i == 0 else 0, block_dim)
            for i in range(layers)
        )
        self.hidden_norms = nn.ModuleList(RMSNorm(deter) for _ in range(layers))
        self.gates = BlockLinear(blocks, block_dim, 0 if layers else 3 * hidden, 3 * block_dim)
        init_weights(self)

    def forward(self, deter: torch.Tensor, stoch: torch.Tensor, action: torch.Tensor):
        """deter (N, D), stoch (N, S * C), action (N, A) -> next deter (N, D)."""
        N, G = deter.shape[0], self.blocks
        # Bounded actions keep one large input from dominating the embedding.
        action = action / action.abs().clamp(min=1.0).detach()
        shared = torch.cat(
            [self.embed_deter(deter), self.embed_stoch(stoch), self.embed_action(action)], -1
        )  # (N, 3 * hidden)
        x = deter.reshape(N, G, -1)  # (N, G, D / G): each block's own slice of h
        for layer, norm in zip(self.hidden, self.hidden_norms, strict=True):
            x = layer(x, shared).reshape(N, -1)  # (N, D)
            x = F.silu(norm(x)).reshape(N, G, -1)  # the norm spans all D units, as official
            shared = None  # only the first layer takes the embeddings
        x = self.gates(x, shared)  # (N, G, 3 * D / G), no norm on the gates
        reset, candidate, update = x.chunk(3, -1)  # each (N, G, D / G)
        reset = torch.sigmoid(reset)
        # tanh(x) = 2 sigmoid(2x) - 1, the same function: inductor's vectorised tanh costs
        # about twice its sigmoid, and this gate kernel was the imagined step's dearest (1m,
        # 1,024 rows: 1.66 -> 1.05 ms compiled, Sapphire Rapids).
        candidate = 2.0 * torch.sigmoid(2.0 * (reset * candidate)) - 1.0
        update = torch.sigmoid(update - 1.0)
        new = update * candidate + (1 - update) * deter.reshape(N, G, -1).to(x.dtype)
        return new.reshape(N, -1).to(deter.dtype)  # (N, D)


class LatentNet(nn.Module):
    """Maps an input to the logits of `stoch` categoricals of `classes` classes, with unimix.

    One class, two instances: the prior sees h_t through `layers` hidden layers (2 official),
    the posterior sees (h_t, embedding of x_t) through 1.
    """

    def __init__(
        self, in_dim: int, hidden: int, stoch: int, classes: int, mix: float, layers: int = 1
    ):
        super().__init__()
        self.stoch, self.classes, self.mix, self.in_dim = stoch, classes, mix, in_dim
        self.net = nn.Sequential(
            MLP(in_dim, hidden, layers), nn.Linear(hidden if layers else in_dim, stoch * classes)
        )
        init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (..., in) -> unimixed logits (..., S, C), laid out class-major in memory."""
        hidden, out = self.net[0](x), self.net[1]
        S, C = self.stoch, self.classes
        # The output rows are stored latent-major (row s * C + c) and used class-major (row
        # c * S + s), so the C logits of one latent lie S apart and each softmax over C runs
        # across whole vectors of S latents. With 4 classes (1m) the latent-major softmax is
        # scalar code, as 4 is shorter than a vector register: 3.7 ms -> 1.1 ms per imagined
        # step, compiled. The state_dict and the maths are unchanged.
        weight = out.weight.reshape(S, C, -1).transpose(0, 1).reshape(S * C, -1)
        bias = out.bias.reshape(S, C).t().reshape(-1)
        logits = F.linear(hidden, weight, bias).unflatten(-1, (C, S)).transpose(-1, -2)
        return unimix(logits, self.mix)


class RSSM(nn.Module):
    """Recurrent state-space model. States are dicts {"deter": (..., D), "stoch": (..., S, C)}."""

    def __init__(
        self,
        embed_dim: int,
        action_size: int,
        sizes: dict,
        stoch: int,
        mix: float,
        dyn_layers: int = 1,
        prior_layers: int = 2,
    ):
        super().__init__()
        self.deter_dim, self.stoch, self.classes = sizes["deter"], stoch, sizes["classes"]
        self.action_size = action_size
        stoch_dim = stoch * sizes["classes"]
        hidden, classes = sizes["hidden"], sizes["classes"]
        self.cell = RecurrentCell(
            self.deter_dim, stoch_dim, action_size, hidden, sizes["blocks"], dyn_layers
        )
        self.prior_net = LatentNet(self.deter_dim, hidden, stoch, classes, mix, prior_layers)
        self.posterior_net = LatentNet(self.deter_dim + embed_dim, hidden, stoch, classes, mix)
        self.feat_dim = self.deter_dim + stoch_dim
        self.batch_weight_grads = False  # see batched_weight_grads()
        self.filter_fp32 = False  # see filter()

    def initial(self, batch: int, device) -> dict:
        """The all-zero state an episode starts from."""
        return {
            "deter": torch.zeros(batch, self.deter_dim, device=device),
            "stoch": torch.zeros(batch, self.stoch, self.classes, device=device),
        }

    @staticmethod
    def full_state(state: dict) -> torch.Tensor:
        """concat(h, flatten(z)): (..., D + S * C), the input of every head."""
        stoch = state["stoch"]
        return torch.cat([state["deter"], stoch.reshape(*stoch.shape[:-2], -1)], -1)

    def observe_step(self, state, prev_action, embed, is_first, uniform=None):
        """One filtering step on real data: (s_{t-1}, a_{t-1}, x_t) -> posterior s_t.

        state: dict of (B, ...); prev_action (B, A); embed (B, E); is_first (B,) bool. Where an
        episode starts, h, z AND the previous action are reset to zero (pitfall 5).
        uniform (B, S, 1): the sample's random numbers (drawn here when None).
        Returns (new state, posterior logits (B, S, C)).
        """
        if uniform is None:
            uniform = torch.rand(embed.shape[0], self.stoch, 1, device=embed.device)
        deter, stoch, logits = self.filter_step(
            state["deter"], state["stoch"], prev_action, embed, is_first, uniform
        )
        return {"deter": deter, "stoch": stoch}, logits

    def filter_step(self, deter, stoch, prev_action, embed, is_first, uniform, probe=None):
        """observe_step's arithmetic, with every random number given: one region that
        compile: true turns into a few fused kernels. Returns (deter, stoch, logits).
        probe (B, D + S * C) or None: zeros added to the new deter (after the posterior has
        read it) and to the logits, whose gradient is then the gradient of the step's
        outputs (see filter_batched)."""
        keep = (~is_first).to(embed.dtype)  # (B,)
        deter = deter * keep[:, None]
        stoch = stoch * keep[:, None, None]
        prev_action = prev_action * keep[:, None]
        deter = self.cell(deter, stoch.reshape(stoch.shape[0], -1), prev_action)
        logits = self.posterior_net(torch.cat([deter, embed], -1))  # (B, S, C)
        if probe is not None:
            deter = deter + probe[:, : self.deter_dim].to(deter.dtype)
            logits = logits + probe[:, self.deter_dim :].reshape(logits.shape).to(logits.dtype)
        return deter, sample_one_hot(logits, uniform=uniform), logits

    def observe(self, embed, actions, is_first, state=None, first_action=None):
        """Filter a batch of sequences (the paper's encoder / representation model).

        embed (B, T, E); actions (B, T, A) where actions[:, t] was taken at step t, so step t
        is driven by actions[:, t - 1]; is_first (B, T) bool. state: the state before the
        first step (zeros when None) and first_action (B, A) the action taken there (zeros
        when None): a replay context.
        Returns (states {"deter": (B, T, D), "stoch": (B, T, S, C)}, posterior logits
        (B, T, S, C), prior logits (B, T, S, C)).
        """
        B, T = embed.shape[:2]
        state = state or self.initial(B, embed.device)
        first = torch.zeros_like(actions[:, 0]) if first_action is None else first_action
        prev_actions = torch.cat([first[:, None].to(actions.dtype), actions[:, :-1]], 1)
        uniform = torch.rand(T, B, self.stoch, 1, device=embed.device)  # every step's draws
        steps = (prev_actions, embed, is_first, uniform)
        trains = torch.is_grad_enabled() and self.cell.gates.weight.requires_grad
        if self.batch_weight_grads and trains:
            states, post_logits = self.filter_batched(state, *steps)
        else:
            states, post_logits = self.filter(state, *steps)
        # The prior depends on h_t alone, so all T steps go through it in one batched call.
        prior_logits = self.prior_net(states["deter"])  # (B, T, S, C)
        return states, post_logits, prior_logits

    def filter(self, state, prev_actions, embed, is_first, uniform, probes=None):
        """The T filtering steps, one after another: observe's loop. uniform (T, B, S, 1);
        probes: T tensors (B, D + S * C) or None. Returns (states of (B, T, ...), posterior
        logits (B, T, S, C)).

        With filter_fp32 set (fastpath.choose_filter_precision, where it measures faster),
        the loop runs in float32 under a bf16 autocast: B rows are too few for bf16 products
        to pay for their casts. What comes after the loop is bf16 as before."""
        device = embed.device.type
        fp32 = self.filter_fp32 and torch.is_autocast_enabled(device)
        if fp32:
            embed = embed.float()
        deter, stoch = state["deter"], state["stoch"]
        deters, stochs, post_logits = [], [], []
        with torch.autocast(device, enabled=False) if fp32 else nullcontext():
            for t in range(embed.shape[1]):
                probe = None if probes is None else probes[t]
                deter, stoch, logits = self.filter_step(
                    deter, stoch, prev_actions[:, t], embed[:, t], is_first[:, t], uniform[t], probe
                )
                deters.append(deter)
                stochs.append(stoch)
                post_logits.append(logits)
        states = {"deter": torch.stack(deters, 1), "stoch": torch.stack(stochs, 1)}
        return states, torch.stack(post_logits, 1)

    def filter_batched(self, state, prev_actions, embed, is_first, uniform):
        """filter() with the same values and gradients, but the weight gradients of the loop
        taken for all T steps at once.

        Backpropagating the loop step by step forms every weight's gradient T times from B
        rows (each a product as large as the weight, then added into its .grad): on a 12m
        model that is most of the loop's backward. Here the loop runs with the cell and the
        posterior frozen, so its backward only carries gradients from step to step, and
        zero `probes` on each step's outputs catch the gradient g_t of those outputs. The
        step is then applied once more to all B * T inputs together (the same values), and
        its backward with the g_t gives every weight gradient, sum_t of each step's, in one
        large product: dL/dW = sum_t (d out_t / dW)^T g_t.
        """
        B, T = embed.shape[:2]
        D, SC = self.deter_dim, self.stoch * self.classes
        # One tensor per step: slices of one tensor would each get a full-size gradient.
        probes = [torch.zeros(B, D + SC, device=embed.device, requires_grad=True) for _ in range(T)]
        # The state before the first step takes a gradient (never used) like every later
        # step's, so all T steps are one graph for compile: true, not two.
        start = {key: value.detach().requires_grad_() for key, value in state.items()}
        with frozen(self.cell, self.posterior_net):
            states, post_logits = self.filter(start, prev_actions, embed, is_first, uniform, probes)
        # Each step's inputs: the state before it (the initial one, then the steps' outputs).
        before = {
            key: torch.cat([state[key][:, None], states[key][:, :-1]], 1).detach()
            for key in ("deter", "stoch")
        }

        def flat(x):  # (B, T, ...) -> (B * T, ...)
            return x.reshape(B * T, *x.shape[2:])

        deter, _, logits = self.filter_step(
            flat(before["deter"]), flat(before["stoch"]), flat(prev_actions),
            flat(embed.detach()), flat(is_first), flat(uniform.transpose(0, 1)),
        )  # fmt: skip
        outputs = [deter, logits.reshape(B * T, SC)]
        grads = [None] * T  # g_t, filled in by the probes' hooks during backward()

        def weight_gradients():  # once the g_t of all T steps are in
            g = torch.stack(grads, 1).reshape(B * T, D + SC)  # (B * T, D + S * C)
            torch.autograd.backward(outputs, [g[:, :D], g[:, D:]])
            outputs.clear()  # frees the batched pass: one backward per forward
            grads[:] = [None] * T

        def catch(t):
            def hook(grad):
                grads[t] = grad
                if outputs and all(g is not None for g in grads):
                    weight_gradients()

            return hook

        # Plain hooks that hold no reference to the probes, so nothing here outlives the step.
        for t, probe in enumerate(probes):
            probe.register_hook(catch(t))
        return states, post_logits

    @contextmanager
    def batched_weight_grads(self):
        """Within: observe() takes the loop's weight gradients in one pass (filter_batched),
        as Dreamer.train_step does. Gradients then reach the weights through a hook that runs
        during backward(), not through the graph, so torch.autograd.grad cannot see them:
        outside this context observe() builds the plain graph, and the loss can be
        backpropagated once (no retain_graph)."""
        previous, self.batch_weight_grads = self.batch_weight_grads, True
        try:
            yield
        finally:
            self.batch_weight_grads = previous

    def imagine_step(self, state: dict, action: torch.Tensor, uniform=None) -> dict:
        """One step of the dynamics without an observation: (s_t, a_t) -> prior s_{t+1}.
        uniform (N, S, 1): the sample's random numbers (drawn here when None)."""
        if uniform is None:
            uniform = torch.rand(action.shape[0], self.stoch, 1, device=action.device)
        deter, stoch = self.predict_step(state["deter"], state["stoch"], action, uniform)
        return {"deter": deter, "stoch": stoch}

    def predict_step(self, deter, stoch, action, uniform):
        """imagine_step's arithmetic with its random numbers given. Returns (deter, stoch)."""
        deter = self.cell(deter, stoch.reshape(stoch.shape[0], -1), action)
        return deter, sample_one_hot(self.prior_net(deter), uniform=uniform)
