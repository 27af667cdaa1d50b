"""The distributions the agent predicts: two-hot scalars, categorical latents and actions.

All of them compute probabilities in float32 whatever the autocast precision, since softmax
and log-softmax over 255 bins lose too much in bfloat16.
"""

import torch
import torch.nn.functional as F

from natural_dreamer.utils import symexp, two_hot_neighbours

_BINS_CACHE = {}


def twohot_bins(count: int = 255, device="cpu") -> torch.Tensor:
    """Bin positions symexp(linspace(-20, 20, count)) (v2 paper), exactly symmetric about 0."""
    key = (count, str(device))
    if key not in _BINS_CACHE:
        half = symexp(torch.linspace(0.0, 20.0, count // 2 + 1, device=device))
        _BINS_CACHE[key] = torch.cat([-half.flip(0)[:-1], half])  # (count,)
    return _BINS_CACHE[key]


class TwoHotDist:
    """A scalar predicted as a softmax over fixed bins (paper, "Robust predictions": two-hot).

    logits: (..., K). `mean` is sum(p * bins); `log_prob(x)` scores a target two-hot encoded.
    Both read the (N, 255) logits as few times as they can: on the imagined batch of the 1m
    model (16,384 rows) the critic's mean and two log-likelihoods with their gradient took
    75-93 ms written as softmax, two_hot weights and log_softmax, 37-40 ms as below (one
    thread beside two training runs, AMX host).
    """

    def __init__(self, logits: torch.Tensor):
        self.logits = logits.float()
        self.bins = twohot_bins(logits.shape[-1], logits.device)
        self._log_norm = None

    @property
    def mean(self) -> torch.Tensor:
        """(...) expected value. Each positive bin's probability is paired with its mirror's
        first (the middle bin is exactly 0), so equal probabilities on +b and -b cancel
        exactly and a fresh head predicts exactly 0."""
        probs = torch.softmax(self.logits, -1)
        m = self.bins.shape[0] // 2
        mirrored = probs[..., m + 1 :] - probs[..., :m].flip(-1)  # p(+b) - p(-b)
        return (mirrored * self.bins[m + 1 :]).sum(-1)

    def log_prob(self, target: torch.Tensor) -> torch.Tensor:
        """(...) log-likelihood of the two-hot encoding of target (...): the two weighted
        log-probabilities of the bins around it, gathered rather than a dense (..., K) sum."""
        below, above, weight = two_hot_neighbours(target.detach(), self.bins)
        if self._log_norm is None:  # log sum exp(logits), shared by every log_prob call
            self._log_norm = self.logits.logsumexp(-1)
        pair = self.logits.gather(-1, torch.stack([below, above], -1))  # (..., 2)
        return (1.0 - weight) * pair[..., 0] + weight * pair[..., 1] - self._log_norm


def log_normalize(logits: torch.Tensor) -> torch.Tensor:
    """log-softmax over the last axis, in float32.

    Written out with logsumexp because torch's softmax kernels are slow on the CPU when the
    last axis is as short as a latent's classes (measured: 4x slower for 4 classes).
    """
    logits = logits.float()
    return logits - logits.logsumexp(-1, keepdim=True)


def unimix(logits: torch.Tensor, mix: float) -> torch.Tensor:
    """Mix a categorical with `mix` of the uniform one; returns the new logits (log-probs).

    Keeps every probability at least mix / classes, so the KL terms stay bounded.
    """
    log_probs = log_normalize(logits)
    if mix == 0:
        return log_probs
    probs = (1.0 - mix) * log_probs.exp() + mix / logits.shape[-1]
    return torch.log(probs)


def sample_one_hot(
    logits: torch.Tensor, straight_through: bool = True, uniform: torch.Tensor | None = None
) -> torch.Tensor:
    """One-hot sample: (..., C) -> (..., C).

    With straight_through the forward value is the sample (up to rounding) and the gradient
    flows as if it were the probabilities; without, it is an exact one-hot with no gradient.
    Sampling inverts the cumulative distribution with one uniform number per categorical,
    which on the CPU is ten times faster than torch.multinomial. uniform (..., 1): those
    numbers, drawn by the caller (a compiled region then draws none itself); else drawn here.
    """
    probs = log_normalize(logits).exp()
    if uniform is None:
        uniform = torch.rand(*probs.shape[:-1], 1, device=probs.device)
    index = (probs.cumsum(-1) < uniform).sum(-1).clamp(max=probs.shape[-1] - 1)  # (...)
    sample = F.one_hot(index, probs.shape[-1]).to(probs.dtype)
    return sample + probs - probs.detach() if straight_through else sample


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL[p || q] of categoricals, summed over classes: (..., C) -> (...)."""
    log_p, log_q = log_normalize(logits_p), log_normalize(logits_q)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


class NormalAction:
    """Continuous policy: Normal(mean, std) per action dimension; the env gets clip(x, -1, 1).

    The score function uses the unclipped sample, so REINFORCE stays unbiased for the policy
    "sample, then clip".
    """

    def __init__(self, mean: torch.Tensor, std: torch.Tensor):
        # No argument validation: a NaN must reach the loss, where the trainer names it.
        self.dist = torch.distributions.Normal(mean.float(), std.float(), validate_args=False)

    def is_finite(self) -> bool:
        """Whether every mean and std is a finite number (a NaN here would end in
        torch.normal's 'std >= 0.0' error)."""
        return bool(torch.isfinite(self.dist.loc).all() and torch.isfinite(self.dist.scale).all())

    def sample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """A sample without gradient; noise (..., A): standard normals drawn by the caller."""
        return self.rsample(noise).detach()

    def rsample(self, noise: torch.Tensor | None = None) -> torch.Tensor:
        """A reparameterised sample mean + std * noise (noise drawn here when None)."""
        if noise is None:
            noise = torch.randn_like(self.dist.loc)
        return self.dist.loc + self.dist.scale * noise

    def mode(self) -> torch.Tensor:
        return self.dist.mean

    def log_prob(self, raw: torch.Tensor) -> torch.Tensor:
        return self.dist.log_prob(raw).sum(-1)

    def entropy(self) -> torch.Tensor:
        return self.dist.entropy().sum(-1)

    @staticmethod
    def to_env(raw: torch.Tensor) -> torch.Tensor:
        return raw.clamp(-1.0, 1.0)


class CategoricalAction:
    """Discrete policy: a categorical with 1% unimix over one-hot actions."""

    def __init__(self, logits: torch.Tensor, mix: float = 0.01):
        self.logits = unimix(logits, mix)

    def is_finite(self) -> bool:
        """Whether every logit is a finite number."""
        return bool(torch.isfinite(self.logits).all())

    def sample(self, uniform: torch.Tensor | None = None) -> torch.Tensor:
        """An exact one-hot sample; uniform (..., 1) drawn by the caller, or here."""
        return sample_one_hot(self.logits, straight_through=False, uniform=uniform)

    def rsample(self, uniform: torch.Tensor | None = None) -> torch.Tensor:
        return sample_one_hot(self.logits, uniform=uniform)

    def mode(self) -> torch.Tensor:
        return F.one_hot(self.logits.argmax(-1), self.logits.shape[-1]).float()

    def log_prob(self, one_hot: torch.Tensor) -> torch.Tensor:
        return (one_hot * log_normalize(self.logits)).sum(-1)

    def entropy(self) -> torch.Tensor:
        log_p = log_normalize(self.logits)
        return -(log_p.exp() * log_p).sum(-1)

    @staticmethod
    def to_env(raw: torch.Tensor) -> torch.Tensor:
        return raw
