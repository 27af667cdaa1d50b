"""The layers, initialisation and gradient paths that match the official DreamerV3 code.

Each test pins one of the differences the line-by-line read against danijar/dreamerv3 found
(docs/choices.md): the recurrent cell's hidden layer and unnormalised gates, the prior's two
hidden layers, the replay value loss reaching the world model, the initialisation, the
decoder's first norm, the replay context and the online queue, and Atari's sticky actions.
"""

import numpy as np
import pytest
import torch
from torch import nn

from natural_dreamer import Dreamer, ReplayBuffer, load_config
from natural_dreamer.networks import RMSNorm, model_sizes
from natural_dreamer.rssm import RSSM

from conftest import IMAGE, VECTOR, random_batch, tiny_config


def linear_count(i, o):
    return i * o + o


def official_rssm_parameters(preset: str, embed: int, actions: int, stoch: int = 32) -> int:
    """The parameter count of the official RSSM (dreamerv3/rssm.py) for a v2 preset, counted
    from its layer list: three input embeddings with norms, one hidden BlockLinear(deter) with
    its norm, the gate BlockLinear(3 deter), a 2-hidden-layer prior and a 1-layer posterior."""
    s = model_sizes(preset)
    D, H, G, C = s["deter"], s["hidden"], s["blocks"], s["classes"]
    embed_in = sum(linear_count(i, H) + H for i in (D, stoch * C, actions))
    hidden = G * (D // G + 3 * H) * (D // G) + D + D  # kernel, bias, norm scale
    gates = G * (D // G) * (3 * D // G) + 3 * D
    prior = linear_count(D, H) + H + linear_count(H, H) + H + linear_count(H, stoch * C)
    posterior = linear_count(D + embed, H) + H + linear_count(H, stoch * C)
    return embed_in + hidden + gates + prior + posterior


@pytest.mark.parametrize("preset", ["1m", "12m"])
def test_rssm_has_the_official_parameter_count(preset):
    sizes = model_sizes(preset)
    rssm = RSSM(embed_dim=100, action_size=6, sizes=sizes, stoch=32, mix=0.01)
    count = sum(p.numel() for p in rssm.parameters())
    assert count == official_rssm_parameters(preset, embed=100, actions=6)


def test_recurrent_cell_has_a_hidden_block_layer_and_unnormalised_gates():
    sizes = model_sizes("1m")
    D, H, G = sizes["deter"], sizes["hidden"], sizes["blocks"]
    cell = RSSM(10, 3, sizes, 32, 0.01).cell
    assert len(cell.hidden) == 1 and cell.hidden[0].weight.shape == (G, D // G + 3 * H, D // G)
    assert cell.gates.weight.shape == (G, D // G, 3 * D // G)  # the blocks only, no inputs
    # No norm on the gates: scaling the gate layer's weights scales its pre-activations.
    assert not any(
        isinstance(m, RMSNorm) and m.scale.shape[-1] == 3 * D // G for m in cell.modules()
    )
    x = torch.randn(4, G, D // G)
    with torch.no_grad():
        a = cell.gates(x)
        cell.gates.weight.mul_(2.0)
        b = cell.gates(x)
    assert torch.allclose(b, 2 * a, atol=1e-5)  # bias is zero at init


def test_recurrent_cell_is_the_official_gru_update():
    # The gates written out as the official _core writes them, with torch.tanh: the cell's
    # own form (tanh through a sigmoid, for speed) must give the same state and gradient.
    torch.manual_seed(0)
    sizes = model_sizes("1m")
    cell = RSSM(10, 3, sizes, 32, 0.01).cell
    D, G = sizes["deter"], sizes["blocks"]
    deter = torch.randn(5, D, requires_grad=True)
    stoch, action = torch.randn(5, 32 * sizes["classes"]), torch.randn(5, 3) * 2
    with torch.no_grad():
        cell.gates.bias.normal_()  # gate pre-activations well away from zero
    out = cell(deter, stoch, action)

    a = action / action.abs().clamp(min=1.0)
    shared = torch.cat([cell.embed_deter(deter), cell.embed_stoch(stoch), cell.embed_action(a)], -1)
    x = cell.hidden[0](deter.reshape(5, G, -1), shared).reshape(5, -1)
    x = torch.nn.functional.silu(cell.hidden_norms[0](x)).reshape(5, G, -1)
    reset, cand, update = cell.gates(x).chunk(3, -1)
    reset, update = torch.sigmoid(reset), torch.sigmoid(update - 1.0)
    h = deter.reshape(5, G, -1)
    expected = (update * torch.tanh(reset * cand) + (1 - update) * h).reshape(5, D)
    assert torch.allclose(out, expected, atol=1e-6)
    g = torch.randn(5, D)
    (grad,) = torch.autograd.grad(out, deter, g)
    (expected_grad,) = torch.autograd.grad(expected, deter, g)
    assert torch.allclose(grad, expected_grad, atol=1e-5)


def test_dyn_layers_zero_is_the_cheaper_cell_without_a_hidden_layer():
    cfg = tiny_config(**{"model.dyn_layers": 0})
    agent = Dreamer(VECTOR, 2, False, cfg)
    cell = agent.world_model.rssm.cell
    assert len(cell.hidden) == 0 and cell.gates.weight.shape[1] > cell.gates.weight.shape[2] // 3
    agent.train_step(random_batch(VECTOR, 2, False))


def test_prior_has_two_hidden_layers_and_the_posterior_one():
    rssm = RSSM(10, 3, model_sizes("1m"), 32, 0.01)
    linears = lambda net: [m for m in net.modules() if isinstance(m, nn.Linear)]  # noqa: E731
    assert len(linears(rssm.prior_net)) == 3  # 2 hidden + logits
    assert len(linears(rssm.posterior_net)) == 2  # 1 hidden + logits


def test_initialisation_is_a_truncated_normal_with_std_one_over_sqrt_fan_in():
    agent = Dreamer(IMAGE, 6, False, load_config("smoke", {"model.preset": "12m"}))
    wm = agent.world_model
    layers = [
        (wm.rssm.cell.embed_deter[0].weight, 2048),
        (wm.encoder.image.net[0].weight, 3 * 4 * 4),  # conv: in channels x kernel area
        (wm.decoder.image.net[0].weight, 64 * 4 * 4),  # transposed conv from 16 x 4 channels
        (wm.rssm.cell.hidden[0].weight, 8 * (256 + 3 * 256)),  # blocks x inputs per block
    ]
    for weight, fan in layers:
        std = weight.detach().float().std().item()
        assert abs(std * fan**0.5 - 1.0) < 0.05, (weight.shape, std * fan**0.5)
        assert weight.abs().max().item() <= 2 * 1.1368 / fan**0.5 + 1e-6  # truncated at 2 sigma
    biases = [m.bias for m in agent.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    assert all(torch.all(b == 0) for b in biases if b is not None)
    # eps 1e-4 in every norm
    assert {m.eps for m in agent.modules() if isinstance(m, RMSNorm)} == {1e-4}


def test_output_layers_start_as_the_official_ones():
    agent = Dreamer(VECTOR, 6, False, tiny_config())
    out = agent.behavior.actor.out.weight
    fan = out.shape[1]
    assert abs(out.std().item() * fan**0.5 - 0.01) < 0.002  # outscale 0.01
    assert torch.all(agent.world_model.reward_head.out.weight == 0)
    assert torch.all(agent.behavior.critic.out.weight == 0)
    # behavior.actor_outscale 1.0: the actor's output layer as every other layer
    agent = Dreamer(VECTOR, 6, False, tiny_config(**{"behavior.actor_outscale": 1.0}))
    assert abs(agent.behavior.actor.out.weight.std().item() * fan**0.5 - 1.0) < 0.2


def test_image_decoder_normalises_and_activates_its_first_map():
    agent = Dreamer(IMAGE, 2, False, tiny_config())
    decoder = agent.world_model.decoder.image
    seen = {}
    decoder.linear_norm.register_forward_hook(lambda m, i, o: seen.setdefault("out", o))
    decoder(torch.randn(3, agent.world_model.rssm.feat_dim))
    rms = seen["out"].square().mean(-1).sqrt()  # (N, h, w): RMS over the channels
    assert torch.allclose(rms, torch.ones_like(rms), atol=1e-3)


@pytest.mark.parametrize("grad", [True, False])
def test_replay_value_loss_reaches_the_world_model_only_when_asked(grad):
    agent = Dreamer(VECTOR, 2, False, tiny_config(**{"behavior.replay_value_grad": grad}))
    batch = agent.batch_to_torch(random_batch(VECTOR, 2, False))
    with torch.no_grad():  # a critic that is not all zero, so its loss has a gradient
        agent.behavior.critic.out.weight.normal_(0, 0.1)
    _, _, posterior = agent.world_model.loss(batch, keep_graph=True)
    _, critic_loss, _ = agent.behavior.loss(agent.world_model, posterior, batch)
    critic_loss.backward()
    wm_grads = [p.grad for p in agent.world_model.parameters() if p.grad is not None]
    reached = sum(g.abs().sum().item() for g in wm_grads)
    assert (reached > 0) == grad
    assert all(p.grad is None for p in agent.behavior.actor.parameters())


def test_one_train_step_equals_the_gradient_of_the_summed_losses():
    """The world model's update includes the replay value loss's gradient (official)."""
    agent = Dreamer(VECTOR, 2, False, tiny_config())  # LaProp: clips inside its (skipped) step
    with torch.no_grad():
        agent.behavior.critic.out.weight.normal_(0, 0.1)
    batch = random_batch(VECTOR, 2, False)
    torch.manual_seed(1)
    tensors = agent.batch_to_torch(batch)
    wm_loss, _, posterior = agent.world_model.loss(tensors, keep_graph=True)
    _, critic_loss, _ = agent.behavior.loss(agent.world_model, posterior, tensors)
    expected = torch.autograd.grad(
        wm_loss + critic_loss, agent.world_model.rssm.cell.gates.weight, retain_graph=True
    )[0]
    without = torch.autograd.grad(wm_loss, agent.world_model.rssm.cell.gates.weight)[0]
    assert not torch.allclose(expected, without)
    torch.manual_seed(1)
    agent.optimizers["world_model"].step = lambda: None  # keep the gradient to look at it
    agent.train_step(batch)
    assert torch.allclose(agent.world_model.rssm.cell.gates.weight.grad, expected, atol=1e-6)


def context_buffer(steps=40, latent=(8, 2, 3), online=False):
    buffer = ReplayBuffer(100, {"vector": ((1,), np.float32)}, 1, latent=latent, online=online)
    for i in range(steps):
        step = {"vector": [i], "reward": 0.0, "is_first": i == 0, "is_terminal": False}
        buffer.add({**step, "action": [float(i)]})
    return buffer


def test_replay_context_reads_the_step_before_each_sequence():
    buffer = context_buffer()
    batch = buffer.sample(16, 5, context=1)
    first = batch["vector"][:, 0, 0]  # the first training step's counter
    assert batch["vector"].shape == (16, 5, 1) and (first >= 1).all()
    assert np.array_equal(batch["context_action"][:, 0], first - 1)  # a_{t-1}, taken there
    states = buffer.context_states(batch["context_row"])
    assert not states["context_valid"].any() and not states["context_deter"].any()
    # After an update writes its posterior states back, the next sequences start from them.
    deter = np.random.default_rng(0).uniform(-1, 1, (16, 5, 8)).astype(np.float32)
    stoch = np.eye(3, dtype=np.float32)[np.random.default_rng(1).integers(0, 3, (16, 5, 2))]
    buffer.write_latents(batch["index"], deter, stoch)
    later = buffer.sample(64, 5, context=1)
    states = buffer.context_states(later["context_row"])
    written = set(batch["index"].ravel().tolist())
    for b, row in enumerate(later["context_row"]):
        assert states["context_valid"][b] == (row in written)
    row = batch["index"][0, 2]
    row_states = buffer.context_states(np.array([row]))
    # A row in several overlapping sequences holds one of their states (the last written).
    assert any(
        np.allclose(row_states["context_deter"][0], deter[b, t], atol=1e-3)  # float16
        and np.array_equal(row_states["context_stoch"][0], stoch[b, t])
        for b, t in np.argwhere(batch["index"] == row)
    )
    # A step written again (new data in its place) has no state until trained on.
    buffer.add({"vector": [0], "reward": 0, "is_first": 0, "is_terminal": 0, "action": [0]})
    assert not buffer.latents["valid"][40]


def test_the_world_model_starts_from_the_stored_state():
    agent = Dreamer(VECTOR, 2, False, tiny_config())
    batch = agent.batch_to_torch(random_batch(VECTOR, 2, False, B=2, T=4))
    batch["is_first"][:] = False
    rssm = agent.world_model.rssm
    generator = torch.Generator().manual_seed(3)
    classes = torch.randint(0, rssm.classes, (2, rssm.stoch), generator=generator)
    stored = {
        "deter": torch.rand(2, rssm.deter_dim, generator=generator) * 2 - 1,
        "stoch": nn.functional.one_hot(classes, rssm.classes).float(),
    }
    # An action unlike zero, unlike the sequence's own first action, and unequal per entry.
    context_action = torch.tensor([[0.5, -0.25], [0.75, 0.125]])
    assert not torch.allclose(context_action, batch["action"][:, 0].float())
    context = {
        "context_deter": stored["deter"],
        "context_stoch": stored["stoch"],
        "context_action": context_action,
        "context_valid": torch.tensor([True, False]),
    }
    torch.manual_seed(0)
    _, _, from_zero = agent.world_model.loss(batch)
    torch.manual_seed(0)
    _, _, with_context = agent.world_model.loss({**batch, **context})
    # Sequence 0 starts from its stored state; sequence 1 has none and starts from zeros.
    assert not torch.allclose(with_context["deter"][0, 0], from_zero["deter"][0, 0])
    assert torch.allclose(with_context["deter"][1], from_zero["deter"][1])
    # h_1 = f(h_0, z_0, a_0): the recurrent cell applied to the stored state of the context
    # step and the action taken there; for sequence 1, to all-zero inputs.
    D, SC, A = rssm.deter_dim, rssm.stoch * rssm.classes, 2
    with torch.no_grad():
        expected_0 = rssm.cell(
            stored["deter"][:1], stored["stoch"][:1].reshape(1, SC), context_action[:1]
        )[0]
        expected_1 = rssm.cell(torch.zeros(1, D), torch.zeros(1, SC), torch.zeros(1, A))[0]
    assert torch.allclose(with_context["deter"][0, 0], expected_0, rtol=1e-5, atol=1e-6)
    assert torch.allclose(with_context["deter"][1, 0], expected_1, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("online, context", [(True, 1), (False, 0)])
def test_the_trainer_builds_its_replay_from_the_config(tmp_path, online, context):
    """train.online_queue and world_model.replay_context reach the trainer's buffer (the
    tests above build buffers directly)."""
    from natural_dreamer.loop import Trainer

    overrides = {"train.online_queue": online, "world_model.replay_context": context}
    trainer = Trainer(load_config("smoke", overrides), root=tmp_path, quiet=True)
    try:
        rssm = trainer.agent.world_model.rssm
        assert trainer.buffer.online is online
        expected = (rssm.deter_dim, rssm.stoch, rssm.classes) if context else None
        assert trainer.buffer.latent == expected
    finally:
        trainer.envs.close()
        trainer.eval_env.close()


def test_the_online_queue_trains_each_fresh_chunk_once_before_uniform_draws():
    buffer = context_buffer(steps=10, online=True)
    buffer.sample(1, 4, context=1)  # the queue starts with the first sample (T = 4)
    for i in range(10, 22):  # three fresh chunks: ends 12, 16, 20
        buffer.add({"vector": [i], "reward": 0, "is_first": 0, "is_terminal": 0, "action": [0]})
    batch = buffer.sample(2, 4, context=1)
    assert batch["vector"][:, :, 0].tolist() == [[8, 9, 10, 11], [12, 13, 14, 15]]
    batch = buffer.sample(3, 4, context=1)
    assert batch["vector"][0, :, 0].tolist() == [16, 17, 18, 19]  # then uniform draws
    state = buffer.state_dict()
    copy = context_buffer(steps=0, online=True)
    copy.load_state_dict(state)
    assert list(copy.queue) == list(buffer.queue) and copy.chunk == 4


def test_make_env_passes_sticky_actions_to_atari():
    pytest.importorskip("ale_py")
    from natural_dreamer.envs import make_env

    env = make_env({**load_config("atari_pong").env, "sticky": 0.25}, seed=0)
    assert env.ale_env.ale.getFloat("repeat_action_probability") == 0.25
    env = make_env(load_config("atari_pong").env, seed=0)
    assert env.ale_env.ale.getFloat("repeat_action_probability") == 0.0


def test_latent_logits_are_the_latent_major_rows_laid_out_class_major():
    """LatentNet reads its output rows class-major for speed; the logits must still be the
    plain (stoch, classes) reading of `Linear(x)`, and lie class-major in memory."""
    from natural_dreamer.distributions import unimix
    from natural_dreamer.rssm import LatentNet

    torch.manual_seed(0)
    net = LatentNet(in_dim=12, hidden=16, stoch=8, classes=4, mix=0.01, layers=1)
    with torch.no_grad():
        net.net[1].bias.normal_()  # the zero bias would not show a misread row
    x = torch.randn(3, 5, 12)
    logits = net(x)
    plain = unimix(net.net(x).reshape(3, 5, 8, 4), 0.01)
    assert logits.shape == (3, 5, 8, 4)
    assert torch.allclose(logits, plain, atol=1e-6)
    assert logits.stride()[-2:] == (1, 8)  # the 8 latents of one class side by side
