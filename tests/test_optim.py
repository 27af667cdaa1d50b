"""LaProp with adaptive gradient clipping, against its formulas written out per tensor."""

import torch

from natural_dreamer.optim import LaProp


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
