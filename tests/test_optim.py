"""LaProp with adaptive gradient clipping, against its formulas written out per tensor."""

import numpy as np
import pytest
import torch

from natural_dreamer import Dreamer
from natural_dreamer.optim import LaProp, clip_gradients, make_optimizer

from conftest import VECTOR, random_batch, tiny_config


def reference_step(param, grad, state, lr, agc, warmup, betas=(0.9, 0.999), eps=1e-20):
    """One LaProp step of one tensor, line by line from the paper's formulas."""
    beta1, beta2 = betas
    state["k"] += 1
    k = state["k"]
    limit = agc * max(param.norm().item(), 1e-3)
    grad = grad * min(1.0, limit / max(grad.norm().item(), 1e-6))
    state["nu"] = beta2 * state["nu"] + (1 - beta2) * grad * grad
    normed = grad / ((state["nu"] / (1 - beta2**k)).sqrt() + eps)
    state["m"] = beta1 * state["m"] + (1 - beta1) * normed
    param -= lr * min(k / warmup, 1.0) * state["m"] / (1 - beta1**k)


def test_laprop_matches_the_per_tensor_formulas_over_many_steps():
    torch.manual_seed(0)
    shapes = [(5, 3), (7,), (2, 2, 2), (4,)]
    params = [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]
    expected = [p.detach().clone() for p in params]
    states = [{"k": 0, "m": torch.zeros(s), "nu": torch.zeros(s)} for s in shapes]
    optimizer = LaProp(params, lr=1e-2, agc=0.3, warmup=3)
    for step in range(8):
        # Large gradients on odd steps, so AGC clips some tensors and leaves others.
        grads = [torch.randn(s) * (10.0 if step % 2 else 0.01) for s in shapes]
        skipped = 3 if step == 2 else None  # a tensor without a gradient keeps its state
        for i, (param, grad) in enumerate(zip(params, grads, strict=True)):
            param.grad = None if i == skipped else grad.clone()
        optimizer.step()
        for i, (param, grad) in enumerate(zip(expected, grads, strict=True)):
            if i != skipped:
                reference_step(param, grad, states[i], lr=1e-2, agc=0.3, warmup=3)
    for param, want, state in zip(params, expected, states, strict=True):
        assert torch.allclose(param, want, rtol=1e-5, atol=1e-6)
        assert optimizer.state[param]["step"].item() == state["k"]
    assert [s["k"] for s in states] == [8, 8, 8, 7]


def test_adam_clips_the_global_norm_and_bounds_each_step():
    config = tiny_config(**{"optimizer.name": "adam", "optimizer.clip_norm": 5.0})
    shapes = [(5, 3), (7,), (2, 2, 2)]
    params = [torch.nn.Parameter(torch.randn(*shape)) for shape in shapes]
    grads = [torch.randn(*shape) * 1e6 for shape in shapes]
    for param, grad in zip(params, grads, strict=True):
        param.grad = grad.clone()
    norm = clip_gradients(params, config)
    # The norm before clipping, over all tensors at once: sqrt of the sum of every square.
    total = float(np.sqrt(sum((g.double() ** 2).sum().item() for g in grads)))
    assert norm.item() == pytest.approx(total, rel=1e-5)
    after = float(np.sqrt(sum((p.grad.double() ** 2).sum().item() for p in params)))
    assert after == pytest.approx(5.0, rel=1e-5)
    for param, grad in zip(params, grads, strict=True):  # one factor for every tensor
        torch.testing.assert_close(param.grad, grad * (5.0 / total))

    lr = 1e-3
    optimizer = make_optimizer(params, lr, config)
    assert isinstance(optimizer, torch.optim.Adam)
    clipped = [p.grad.clone() for p in params]
    for _ in range(3):
        before = [p.detach().clone() for p in params]
        # The same gradient every step: m_hat = g and v_hat = g^2, so Adam moves every value
        # by lr exactly (eps 1e-20 is nothing beside |g|), however large g is.
        for param, grad in zip(params, clipped, strict=True):
            param.grad = grad.clone()
        optimizer.step()
        moves = [(p.detach() - b).flatten() for p, b in zip(params, before, strict=True)]
        signs = [-g.sign().flatten() for g in clipped]
        torch.testing.assert_close(torch.cat(moves), lr * torch.cat(signs), rtol=1e-4, atol=0)


def test_laprop_measures_the_norm_without_clipping():
    config = tiny_config(**{"optimizer.clip_norm": 5.0})  # laprop: clip_norm is not used
    param = torch.nn.Parameter(torch.zeros(4))
    param.grad = torch.tensor([300.0, 0.0, 400.0, 0.0])
    assert clip_gradients([param], config).item() == pytest.approx(500.0)
    torch.testing.assert_close(param.grad, torch.tensor([300.0, 0.0, 400.0, 0.0]))


def test_a_training_step_under_adam_clips_each_module_to_clip_norm():
    """Dreamer.update clips the world model's, the actor's and the critic's gradients each to
    the one optimizer.clip_norm, and reports the norms before clipping."""
    # A large entropy bonus gives the fresh actor a gradient far above the limit too (the
    # clip divides by the norm + 1e-6, which must stay small beside it).
    overrides = {"optimizer.clip_norm": 1e-2, "behavior.actor_entropy": 10.0}
    agent = Dreamer(VECTOR, 3, False, tiny_config(**{"optimizer.name": "adam", **overrides}))
    metrics = agent.train_step(random_batch(VECTOR, 3, False))
    modules = {
        "world_model": agent.world_model,
        "actor": agent.behavior.actor,
        "critic": agent.behavior.critic,
    }
    for name, module in modules.items():
        assert metrics[f"{name}/grad_norm"] > 1.0  # well above the limit before clipping
        grads = [p.grad for p in module.parameters() if p.grad is not None]
        norm = torch.sqrt(sum((g.double() ** 2).sum() for g in grads)).item()
        assert norm == pytest.approx(1e-2, rel=1e-5), name
