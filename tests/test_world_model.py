"""The world model: KL balancing with free bits, is_first resets, gradients of one step."""

import contextlib
import gc

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from natural_dreamer import Dreamer
from natural_dreamer.distributions import categorical_kl
from natural_dreamer.rssm import BlockLinear
from natural_dreamer.world_model import kl_loss

from conftest import IMAGE, MIXED, VECTOR, random_batch, tiny_config


def test_kl_with_free_bits_value_sums_latents_before_the_clip():
    post = torch.randn(2, 3, 32, 4, requires_grad=True)
    prior = torch.randn(2, 3, 32, 4, requires_grad=True)
    dyn, rep, kl = kl_loss(post, prior, free=1.0)
    p, q = torch.softmax(post, -1), torch.softmax(prior, -1)
    expected = (p * (p.log() - q.log())).sum((-1, -2))  # (B, T): summed over all 32 latents
    assert dyn.shape == (2, 3)
    assert torch.allclose(kl, expected, atol=1e-5)
    assert torch.allclose(dyn, expected.clamp(min=1.0), atol=1e-5)
    assert torch.allclose(rep, expected.clamp(min=1.0), atol=1e-5)
    # per-latent clipping would give a different (larger) value
    per_latent = (p * (p.log() - q.log())).sum(-1).clamp(min=1.0).sum(-1)
    assert not torch.allclose(dyn, per_latent)


def test_kl_gradients_reach_the_right_nets():
    post = torch.randn(2, 3, 32, 4, requires_grad=True)
    prior = torch.randn(2, 3, 32, 4, requires_grad=True)
    dyn, rep, _ = kl_loss(post, prior, free=1.0)
    assert (dyn > 1).all()
    (grad_post,) = torch.autograd.grad(dyn.mean(), post, retain_graph=True, allow_unused=True)
    assert grad_post is None or torch.all(grad_post == 0)  # dyn trains the prior only
    (grad_prior,) = torch.autograd.grad(dyn.mean(), prior, retain_graph=True)
    assert grad_prior.abs().sum() > 0
    (grad_prior,) = torch.autograd.grad(rep.mean(), prior, retain_graph=True, allow_unused=True)
    assert grad_prior is None or torch.all(grad_prior == 0)  # rep trains the posterior only
    (grad_post,) = torch.autograd.grad(rep.mean(), post)
    assert grad_post.abs().sum() > 0


def test_kl_below_free_bits_gives_no_gradient():
    post = torch.randn(1, 4, 32, 4)
    prior = (post + 0.01 * torch.randn_like(post)).requires_grad_()
    dyn, _, kl = kl_loss(post, prior, free=1.0)
    assert (kl < 1).all() and torch.all(dyn == 1.0)
    (grad,) = torch.autograd.grad(dyn.sum(), prior)
    assert torch.all(grad == 0)


def test_categorical_kl_of_identical_is_zero():
    logits = torch.randn(5, 7)
    assert torch.allclose(categorical_kl(logits, logits), torch.zeros(5), atol=1e-6)


def test_is_first_resets_state_and_previous_action():
    config = tiny_config()
    agent = Dreamer(VECTOR, 3, False, config)
    rssm = agent.world_model.rssm
    B, T = 2, 6
    embed = torch.randn(B, T, agent.world_model.encoder.out_dim)
    actions = torch.randn(B, T, 3) * 5
    is_first = torch.zeros(B, T, dtype=torch.bool)
    is_first[:, 0] = True
    is_first[0, 3] = True
    states, _, _ = rssm.observe(embed, actions, is_first)
    # h_t = f(h_{t-1}, z_{t-1}, a_{t-1}) does not see x_t: after a reset it must be f(0, 0, 0),
    # the same as at the start of the sequence, whatever came before (state AND action).
    assert torch.allclose(states["deter"][0, 3], states["deter"][0, 0])
    assert not torch.allclose(states["deter"][1, 3], states["deter"][1, 0])
    # Without the reset the large previous action alone would change h_3.
    is_first[0, 3] = False
    states, _, _ = rssm.observe(embed, actions, is_first)
    assert not torch.allclose(states["deter"][0, 3], states["deter"][0, 0])


def test_act_resets_at_is_first():
    agent = Dreamer(VECTOR, 2, False, tiny_config())
    obs = {"vector": np.ones((1, 5), np.float32), "is_first": np.array([True])}
    _, fresh = agent.act(obs, agent.initial_state())
    _, state = agent.act({**obs, "is_first": np.array([False])}, fresh)
    _, state = agent.act({**obs, "is_first": np.array([False])}, state)
    assert not torch.allclose(state["deter"], fresh["deter"])
    _, reset = agent.act(obs, state)  # a new episode starts: h, z and a_{t-1} go back to zero
    assert torch.allclose(reset["deter"], fresh["deter"])


@pytest.mark.parametrize("obs_space", [IMAGE, VECTOR, MIXED], ids=["image", "vector", "mixed"])
@pytest.mark.parametrize("discrete", [False, True], ids=["continuous", "discrete"])
def test_world_model_step_gradients(obs_space, discrete):
    config = tiny_config(**{"world_model.free_nats": 0.0})
    agent = Dreamer(obs_space, 3, discrete, config)
    batch = agent.batch_to_torch(random_batch(obs_space, 3, discrete))
    loss, metrics, posterior = agent.world_model.loss(batch)
    assert torch.isfinite(loss)
    assert all(torch.isfinite(v) for v in metrics.values())
    loss.backward()
    zero = []
    for name, param in agent.world_model.named_parameters():
        assert param.grad is not None, f"{name} got no gradient"
        assert torch.isfinite(param.grad).all(), name
        if param.grad.abs().sum() == 0:
            zero.append(name)
    # Only the layers behind the zero-initialised reward output see no gradient on step one.
    assert all(name.startswith("reward_head.mlp") for name in zero), zero
    for name, param in agent.behavior.named_parameters():
        assert param.grad is None, f"world-model loss reached {name}"
    assert posterior["deter"].shape[:2] == (3, 6) and not posterior["deter"].requires_grad


def gradient_size(module) -> torch.Tensor:
    """The summed |gradient| over a module's parameters (0 where none arrived)."""
    grads = [p.grad for p in module.parameters()]
    return sum(torch.zeros(()) if g is None else g.abs().sum() for g in grads)


def prior_net_gradient(kl_dyn: float, kl_rep: float) -> torch.Tensor:
    """The summed |gradient| of WorldModel.loss on the prior network's parameters."""
    overrides = {
        "world_model.free_nats": 0.0,
        "world_model.kl_dyn": kl_dyn,
        "world_model.kl_rep": kl_rep,
    }
    agent = Dreamer(VECTOR, 3, False, tiny_config(**overrides))
    loss, metrics, _ = agent.world_model.loss(agent.batch_to_torch(random_batch(VECTOR, 3, False)))
    assert metrics["world_model/rep_loss"] > 0  # the rep term is there, not clipped away
    loss.backward()
    return gradient_size(agent.world_model.rssm.prior_net)


def test_kl_weights_reach_the_prior_only_through_kl_dyn():
    """The rep term sees the prior through a stop-gradient: with kl_dyn 0 the prior network
    (which nothing but the KL reads in WorldModel.loss) gets exactly no gradient however
    large kl_rep is; kl_dyn > 0 trains it. Swapping the two weights fails here, though the
    two terms have the same value."""
    assert prior_net_gradient(kl_dyn=0.0, kl_rep=0.5) == 0
    assert prior_net_gradient(kl_dyn=0.5, kl_rep=0.0) > 0


def test_loss_scales_weight_each_term():
    """Distinct weights on every term: the total is the hand-written weighted sum of the
    per-term means the loss reports, and a zero reward scale keeps the reward head out."""
    scales = {"image": 7.0, "vector": 2.0, "reward": 3.0, "continue": 5.0}
    overrides = {f"world_model.loss_scales.{key}": value for key, value in scales.items()}
    overrides |= {"world_model.kl_dyn": 0.5, "world_model.kl_rep": 0.25}
    agent = Dreamer(MIXED, 3, False, tiny_config(**overrides))
    batch = agent.batch_to_torch(random_batch(MIXED, 3, False))
    loss, m, _ = agent.world_model.loss(batch)
    expected = (
        7.0 * m["world_model/image_loss"]
        + 2.0 * m["world_model/vector_loss"]
        + 3.0 * m["world_model/reward_loss"]
        + 5.0 * m["world_model/continue_loss"]
        + 0.5 * m["world_model/dyn_loss"]
        + 0.25 * m["world_model/rep_loss"]
    )
    torch.testing.assert_close(loss, expected)
    # An independent value for one term: the fresh reward head's output layer is zero, so
    # every one of the 255 bins has probability 1/255 and any two-hot target scores log 255.
    torch.testing.assert_close(m["world_model/reward_loss"], torch.tensor(float(np.log(255.0))))
    # The metrics differ enough that a weight on the wrong term would change the sum.
    values = [m[f"world_model/{key}_loss"].item() for key in ("image", "vector", "continue")]
    assert len({round(v, 3) for v in values}) == 3

    def reward_head_gradient(reward_scale: float) -> torch.Tensor:
        config = tiny_config(**{**overrides, "world_model.loss_scales.reward": reward_scale})
        agent = Dreamer(MIXED, 3, False, config)
        agent.world_model.loss(agent.batch_to_torch(random_batch(MIXED, 3, False)))[0].backward()
        return gradient_size(agent.world_model.reward_head)

    assert reward_head_gradient(0.0) == 0
    assert reward_head_gradient(1.0) > 0


@pytest.mark.parametrize("obs_space", [IMAGE, VECTOR, MIXED], ids=["image", "vector", "mixed"])
@pytest.mark.parametrize("discrete", [False, True], ids=["continuous", "discrete"])
def test_full_train_step_changes_every_network(obs_space, discrete):
    """Two training steps move every trainable tensor of the world model, the actor and the
    critic (the reward head's hidden layers get a gradient only once its zero output layer
    has moved, so one step is not enough for them), and each step pulls the slow critic
    toward the critic by exactly the configured EMA."""
    # No warm-up: the first steps' learning rate (lr / 1000) is near float32's resolution.
    config = tiny_config(**{"behavior.critic_ema_decay": 0.75, "optimizer.warmup": 0})
    agent = Dreamer(obs_space, 3, discrete, config)
    behavior = agent.behavior
    modules = {
        "world_model": agent.world_model,
        "actor": behavior.actor,
        "critic": behavior.critic,
    }

    def trainable():
        return {
            f"{prefix}.{name}": p.detach().clone()
            for prefix, module in modules.items()
            for name, p in module.named_parameters()
            if p.requires_grad
        }

    before = trainable()
    for _ in range(2):
        slow_before = [p.clone() for p in behavior.slow_critic.parameters()]
        metrics = agent.train_step(random_batch(obs_space, 3, discrete))
        assert all(np.isfinite(v) for v in metrics.values()), metrics
        slow, fast_critic = behavior.slow_critic.parameters(), behavior.critic.parameters()
        moved = False
        for old, new, fast in zip(slow_before, slow, fast_critic, strict=True):
            # slow <- 0.75 slow + 0.25 critic, with the critic as it is after its update
            torch.testing.assert_close(new, 0.75 * old + 0.25 * fast, rtol=1e-6, atol=1e-7)
            assert (new - fast).norm() <= (old - fast).norm()
            moved = moved or not torch.equal(new, old)
        assert moved, "the slow critic did not move"
    after = trainable()
    assert after.keys() == before.keys() and len(before) > 0
    unchanged = [name for name in before if torch.equal(before[name], after[name])]
    assert not unchanged, f"no update reached {unchanged}"


@pytest.mark.parametrize("context", [False, True], ids=["zeros", "replay_context"])
def test_batched_weight_gradients_equal_the_step_by_step_ones(context):
    """RSSM.batched_weight_grads (what train_step uses) forms the filtering loop's weight
    gradients in one pass; they, and every other gradient, must equal plain backprop's,
    with an episode start inside the sequences, a replay context, and the replay value
    loss's path through the posterior states (keep_graph)."""
    config = tiny_config(**{"world_model.free_nats": 0.0})
    agent = Dreamer(MIXED, 3, False, config)
    wm = agent.world_model
    batch = agent.batch_to_torch(random_batch(MIXED, 3, False, B=4, T=7))
    if context:
        batch["context_deter"] = torch.randn(4, wm.rssm.deter_dim)
        stoch = torch.randint(0, wm.rssm.classes, (4, wm.rssm.stoch))
        batch["context_stoch"] = F.one_hot(stoch, wm.rssm.classes).float()
        batch["context_action"] = torch.rand(4, 3) * 2 - 1
        batch["context_valid"] = torch.tensor([True, False, True, True])
    grads = []
    for batched in (False, True):
        agent.zero_grad(set_to_none=True)
        torch.manual_seed(5)  # the same posterior samples both times
        with wm.rssm.batched_weight_grads() if batched else contextlib.nullcontext():
            loss, _, posterior = wm.loss(batch, keep_graph=True)
        # A stand-in for the replay value loss: reaches the model through the states only.
        (loss + wm.rssm.full_state(posterior).square().mean()).backward()
        grads.append({name: p.grad.clone() for name, p in wm.named_parameters()})
    plain, batched = grads
    assert plain.keys() == batched.keys()
    for name in plain:  # float32 sums in another order: equal to ~1e-6 of the gradient's size
        scale = plain[name].abs().max().clamp(min=1e-8)
        difference = (plain[name] - batched[name]).abs().max()
        assert difference <= 1e-5 * scale, (name, difference.item(), scale.item())
    cell = "rssm.cell.hidden.0.weight"
    assert plain[cell].abs().sum() > 0  # the loop's weights did get a gradient


def test_training_steps_leave_no_tensors_behind():
    """The batched weight gradients hook into backward(); nothing of a step (its probes, its
    batched pass) may outlive it, or memory grows by a graph per update. With the garbage
    collector off, a reference cycle would keep every step's tensors."""
    agent = Dreamer(VECTOR, 3, False, tiny_config())
    batch = random_batch(VECTOR, 3, False)

    def live_tensors() -> int:
        return sum(isinstance(obj, torch.Tensor) for obj in gc.get_objects())

    gc.collect()
    gc.disable()
    try:
        agent.train_step(batch)
        before = live_tensors()
        for _ in range(3):
            agent.train_step(batch)
        after = live_tensors()
    finally:
        gc.enable()
    assert after <= before, f"{after - before} tensors left behind by 3 training steps"


def test_image_loss_by_hand(monkeypatch):
    """The decoder forced to predict 0.25 everywhere, against images of known pixels: the
    target is x / 255 - 0.5 and the loss sums the squared error over the 64 * 64 * 3 values
    of each step (12288), one loss per (batch, time) entry."""
    agent = Dreamer(IMAGE, 2, False, tiny_config())
    decoder = agent.world_model.decoder
    monkeypatch.setattr(
        decoder.image, "forward", lambda feat: torch.full((*feat.shape[:-1], 64, 64, 3), 0.25)
    )
    image = torch.zeros(1, 3, 64, 64, 3, dtype=torch.uint8)
    image[0, 0] = 255  # target 0.5: (0.25 - 0.5)^2 = 0.0625 per value -> 768
    # step 1 all 0: target -0.5, (0.75)^2 = 0.5625 per value -> 6912
    image[0, 2, :32] = 255  # half 0.0625, half 0.5625 -> 6144 * 0.625 = 3840
    feat = torch.randn(1, 3, agent.world_model.rssm.feat_dim)
    loss = decoder.loss(feat, {"image": image})["image"]
    assert loss.shape == (1, 3)
    torch.testing.assert_close(loss, torch.tensor([[768.0, 6912.0, 3840.0]]))
    image = torch.full((1, 1, 64, 64, 3), 51, dtype=torch.uint8)  # 51 / 255 - 0.5 = -0.3
    loss = decoder.loss(feat[:, :1], {"image": image})["image"]
    torch.testing.assert_close(loss, torch.tensor([[0.55**2 * 12288]]))  # 3717.12


def test_block_linear_equals_each_block_seeing_its_slice_and_the_shared_inputs():
    torch.manual_seed(0)
    layer = BlockLinear(blocks=4, own_dim=3, shared_dim=5, out_dim=6)
    nn.init.normal_(layer.bias)
    own, shared = torch.randn(7, 4, 3), torch.randn(7, 5)
    out = layer(own, shared)
    for g in range(4):
        expected = torch.cat([own[:, g], shared], -1) @ layer.weight[g] + layer.bias[g]
        torch.testing.assert_close(out[:, g], expected)


def test_compiled_agent_computes_what_the_eager_one_does():
    """compile: true fuses kernels but must not change the maths, the parameters' names (so
    checkpoints load either way) or the random streams."""
    obs_space = MIXED
    torch.manual_seed(0)
    eager = Dreamer(obs_space, 3, False, tiny_config())
    torch.manual_seed(0)
    compiled = Dreamer(obs_space, 3, False, tiny_config(compile=True))
    assert eager.state_dict().keys() == compiled.state_dict().keys()
    batch = random_batch(obs_space, 3, False)
    results = []
    for agent in (eager, compiled):
        torch.manual_seed(1)
        metrics = agent.train_step(batch)
        obs = {key: batch[key][:, 0] for key in obs_space} | {"is_first": batch["is_first"][:, 0]}
        action, _ = agent.act(obs, agent.initial_state(3), explore=False)
        results.append((metrics, action, agent.state_dict()))
    (m1, a1, s1), (m2, a2, s2) = results
    for key in m1:
        assert np.isclose(m1[key], m2[key], rtol=1e-3, atol=1e-4), (key, m1[key], m2[key])
    assert np.allclose(a1, a2, atol=1e-4)
    for key in s1:
        assert torch.allclose(s1[key].float(), s2[key].float(), rtol=1e-3, atol=1e-5), key
    # As in eager PyTorch, a graph kept with retain_graph=True can be walked back twice
    # (chapter 06 does this to see which parameters each loss reaches).
    tensors = compiled.batch_to_torch(batch)
    _, _, posterior = compiled.world_model.loss(tensors)
    actor_loss, critic_loss, _ = compiled.behavior.loss(compiled.world_model, posterior, tensors)
    for loss in (actor_loss, critic_loss):
        loss.backward(retain_graph=True)


def test_compile_without_a_cpp_compiler_says_what_to_install(monkeypatch):
    monkeypatch.setattr("natural_dreamer.dreamer.shutil.which", lambda name: None)
    with pytest.raises(RuntimeError, match="no C\\+\\+ compiler.*--compile false"):
        Dreamer(VECTOR, 3, False, tiny_config(compile=True))


def test_the_filtering_loop_in_fp32_under_bf16_is_the_fp32_loop():
    """RSSM.filter_fp32 (chosen by fastpath where the 16-row step measures faster in fp32):
    under a bf16 autocast the loop's states and logits are exactly those of the loop run
    without autocast, in float32, while the bf16 loop's differ from them."""
    agent = Dreamer(VECTOR, 3, False, tiny_config())
    rssm = agent.world_model.rssm
    B, T = 4, 6
    torch.manual_seed(0)
    embed = torch.randn(B, T, rssm.posterior_net.in_dim - rssm.deter_dim)
    steps = (torch.rand(B, T, 3) * 2 - 1, embed, torch.zeros(B, T, dtype=torch.bool))
    uniform = torch.rand(T, B, rssm.stoch, 1)

    def loop(bf16, fp32_loop):
        rssm.filter_fp32 = fp32_loop
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            return rssm.filter(rssm.initial(B, torch.device("cpu")), *steps, uniform)

    (fp32_states, fp32_logits), (kept_states, kept_logits), (_, bf16_logits) = (
        loop(False, False),
        loop(True, True),
        loop(True, False),
    )
    assert kept_states["deter"].dtype == kept_logits.dtype == torch.float32
    assert torch.equal(kept_states["deter"], fp32_states["deter"])
    assert torch.equal(kept_states["stoch"], fp32_states["stoch"])
    assert torch.equal(kept_logits, fp32_logits)
    assert not torch.equal(bf16_logits.float(), fp32_logits)  # bf16 did change the loop
