"""The optimiser of the v2 paper: LaProp with adaptive gradient clipping and a warm-up.

LaProp (Ziyin et al. 2020) divides each gradient by its running RMS BEFORE the momentum, so
the update size is set by the learning rate alone and the tiny eps (1e-20) never matters.
Adaptive gradient clipping (Brock et al. 2021) rescales a parameter's gradient whenever its
norm exceeds `agc` times the parameter's own norm, which bounds every relative update.
We follow the paper here rather than v1's Adam because one set of settings then serves every
model size; `name: adam` (with global-norm clipping) stays available for comparison.
"""

import torch


class LaProp(torch.optim.Optimizer):
    """LaProp with per-parameter adaptive gradient clipping and a linear learning-rate warm-up.

    Args:
        params: parameters or parameter groups.
        lr: peak learning rate (4e-5 in the paper).
        betas: (momentum, RMS) decay rates.
        eps: added to the RMS before dividing.
        agc: clip ||g|| to agc * max(||p||, 1e-3) per parameter tensor; 0 turns it off.
        warmup: optimiser steps over which the learning rate rises linearly from 0.
    """

    def __init__(self, params, lr=4e-5, betas=(0.9, 0.999), eps=1e-20, agc=0.3, warmup=1000):
        defaults = dict(lr=lr, betas=betas, eps=eps, agc=agc, warmup=warmup)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.zeros((), device=p.device)
                    state["momentum"] = torch.zeros_like(p)
                    state["rms"] = torch.zeros_like(p)
                state["step"] += 1
                step = state["step"]
                grad = p.grad
                if group["agc"] > 0:
                    limit = group["agc"] * p.norm().clamp(min=1e-3)
                    grad = grad * (limit / grad.norm().clamp(min=1e-6)).clamp(max=1.0)
                rms = state["rms"].mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                rms_hat = rms / (1 - beta2**step)
                normed = grad / (rms_hat.sqrt() + group["eps"])
                momentum = state["momentum"].mul_(beta1).add_(normed, alpha=1 - beta1)
                lr = group["lr"] * torch.clamp(step / max(group["warmup"], 1), max=1.0)
                p.sub_(lr * momentum / (1 - beta1**step))


def make_optimizer(params, lr: float, config) -> torch.optim.Optimizer:
    """The optimiser named in config.optimizer ("laprop" or "adam") for these parameters."""
    cfg = config.optimizer
    if cfg.name == "laprop":
        return LaProp(params, lr=lr, eps=cfg.eps, agc=cfg.agc, warmup=cfg.warmup)
    if cfg.name == "adam":
        return torch.optim.Adam(params, lr=lr, eps=cfg.eps)
    raise ValueError(f"optimizer.name must be laprop or adam, not '{cfg.name}'")


def clip_gradients(params, config) -> torch.Tensor:
    """Global-norm clipping for Adam (v1: 1000 for the world model, 100 for actor-critic).

    LaProp clips per parameter inside its step, so this returns the norm without clipping.
    """
    params = [p for p in params if p.grad is not None]
    max_norm = config.optimizer.clip_norm if config.optimizer.name == "adam" else float("inf")
    return torch.nn.utils.clip_grad_norm_(params, max_norm)
