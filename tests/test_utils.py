"""symlog, two_hot, lambda_returns and the two-hot distribution, checked by hand."""

import pytest
import torch

from natural_dreamer import lambda_returns, symexp, symlog, two_hot
from natural_dreamer.distributions import TwoHotDist, twohot_bins
from natural_dreamer.networks import TwoHotHead


def n_step_return(rewards, values, continues, t, n):
    """G_t^(n) = r_t + c_t r_{t+1} + ... + (c_t ... c_{t+n-1}) v_{t+n}, by summation."""
    total = torch.zeros(rewards.shape[0], dtype=torch.float64)
    discount = torch.ones(rewards.shape[0], dtype=torch.float64)
    for k in range(n):
        total += discount * rewards[:, t + k]
        discount = discount * continues[:, t + k]
    return total + discount * values[:, t + n]


def brute_force_lambda_return(rewards, values, continues, lambda_):
    """R^lambda_t as the (1 - lambda)-weighted mix of n-step returns, no recursion."""
    B, H = rewards.shape
    out = torch.zeros(B, H, dtype=torch.float64)
    for t in range(H):
        steps = H - t
        for n in range(1, steps):
            out[:, t] += (
                (1 - lambda_) * lambda_ ** (n - 1) * n_step_return(rewards, values, continues, t, n)
            )
        out[:, t] += lambda_ ** (steps - 1) * n_step_return(rewards, values, continues, t, steps)
    return out


def test_lambda_returns_two_steps_by_hand():
    rewards = torch.tensor([[1.0, 2.0]])
    values = torch.tensor([[10.0, 20.0, 30.0]])
    continues = torch.tensor([[0.9, 0.5]])
    # R_1 = 2 + 0.5 * (0.5 * 30 + 0.5 * 30) = 17; R_0 = 1 + 0.9 * (0.5 * 20 + 0.5 * 17) = 17.65
    expected = torch.tensor([[17.65, 17.0]])
    assert torch.allclose(lambda_returns(rewards, values, continues, 0.5), expected)


def test_lambda_returns_three_steps_by_hand():
    rewards = torch.tensor([[1.0, 0.0, -1.0]])
    values = torch.tensor([[0.0, 2.0, 4.0, 8.0]])
    continues = torch.tensor([[1.0, 0.5, 0.0]])
    # R_2 = -1 (terminal); R_1 = 0.5 * (0.2 * 4 + 0.8 * -1) = 0; R_0 = 1 + 0.2 * 2 + 0.8 * 0
    expected = torch.tensor([[1.4, 0.0, -1.0]])
    assert torch.allclose(lambda_returns(rewards, values, continues, 0.8), expected)


@pytest.mark.parametrize("lambda_", [0.0, 1.0, 0.95])
def test_lambda_returns_match_weighted_n_step_returns(lambda_):
    g = torch.Generator().manual_seed(1)
    rewards = torch.randn(4, 7, generator=g, dtype=torch.float64)
    values = torch.randn(4, 8, generator=g, dtype=torch.float64)
    continues = 0.99 * (torch.rand(4, 7, generator=g, dtype=torch.float64) > 0.2)
    got = lambda_returns(rewards, values, continues, lambda_)
    assert torch.allclose(got, brute_force_lambda_return(rewards, values, continues, lambda_))


def test_lambda_zero_is_one_step_td():
    rewards, values = torch.randn(2, 5), torch.randn(2, 6)
    continues = torch.full((2, 5), 0.9)
    one_step = rewards + continues * values[:, 1:]
    assert torch.allclose(lambda_returns(rewards, values, continues, 0.0), one_step)


def test_symlog_symexp_round_trip():
    x = torch.tensor(
        [-1e6, -100.0, -1.0, -1e-3, 0.0, 1e-3, 0.5, 1.0, 100.0, 1e6], dtype=torch.float64
    )
    assert torch.allclose(symexp(symlog(x)), x, rtol=1e-12)
    assert torch.allclose(
        symlog(torch.tensor([0.0, 1.0, -1.0])), torch.tensor([0.0, 0.6931472, -0.6931472])
    )


BINS = torch.tensor([0.0, 1.0, 2.0, 4.0])


@pytest.mark.parametrize(
    "x, expected",
    [
        (1.0, [0, 1, 0, 0]),  # exactly on a bin
        (0.0, [1, 0, 0, 0]),  # exactly on the first bin
        (4.0, [0, 0, 0, 1]),  # exactly on the last bin
        (1.25, [0, 0.75, 0.25, 0]),  # between bins: linear interpolation
        (3.0, [0, 0, 0.5, 0.5]),
        (-5.0, [1, 0, 0, 0]),  # below the range: the edge bin
        (10.0, [0, 0, 0, 1]),  # above the range
    ],
)
def test_two_hot(x, expected):
    assert torch.allclose(
        two_hot(torch.tensor(x), BINS), torch.tensor(expected, dtype=torch.float32)
    )


def test_two_hot_keeps_batch_shape_and_decodes_back():
    bins = twohot_bins(255)
    x = torch.tensor([[-3.7, 0.0, 12.5], [1e4, -0.01, 250.0]])
    weights = two_hot(x, bins)
    assert weights.shape == (2, 3, 255)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 3))
    assert torch.allclose((weights * bins).sum(-1), x, rtol=1e-5)
    assert ((weights > 0).sum(-1) <= 2).all()


def test_bins_are_symmetric_and_span_symexp_20():
    bins = twohot_bins(255)
    assert bins.shape == (255,) and bins[127] == 0
    assert torch.equal(bins, -bins.flip(0))
    assert torch.isclose(bins[-1], symexp(torch.tensor(20.0)))


def test_fresh_two_hot_head_predicts_exactly_zero():
    head = TwoHotHead(in_dim=16, units=32, layers=2, bins=255)
    prediction = head(torch.randn(64, 16) * 10).mean
    assert torch.equal(prediction, torch.zeros(64))


def test_two_hot_dist_mean_and_log_prob():
    bins = twohot_bins(255)
    logits = torch.full((255,), -1e9)
    logits[130] = 0.0  # all mass on one bin
    dist = TwoHotDist(logits)
    assert torch.isclose(dist.mean, bins[130])
    assert torch.isclose(dist.log_prob(bins[130]), torch.tensor(0.0))


def test_two_hot_dist_computes_in_float32_from_bf16_logits():
    """Under bf16 autocast the heads hand over bf16 logits; the softmax, log-softmax, mean and
    log-likelihood must still be float32 (pitfall 3): the same numbers as from the float32
    copy of those logits, where bf16 arithmetic would be off in the third digit."""
    torch.manual_seed(0)
    logits = (torch.randn(8, 255) * 3).bfloat16()
    targets = symexp(torch.randn(8) * 4)
    low, ref = TwoHotDist(logits), TwoHotDist(logits.float())
    assert low.mean.dtype == torch.float32 and low.log_prob(targets).dtype == torch.float32
    assert torch.equal(low.mean, ref.mean)
    assert torch.equal(low.log_prob(targets), ref.log_prob(targets))


def test_two_hot_dist_equals_the_dense_formulas_with_their_gradient():
    """mean = sum(softmax * bins) and log_prob = sum(two_hot(x) * log_softmax), written
    densely; the distribution gathers two bins instead, to the same values and gradient."""
    torch.manual_seed(0)
    bins = twohot_bins(255)
    logits = (torch.randn(6, 40, 255) * 3).requires_grad_()
    inside = symexp(torch.randn(6, 40) * 4)
    targets = [inside, bins[torch.randint(0, 255, (6, 40))], torch.full((6, 40), 1e12), -inside]
    dense_logits = logits.detach().clone().requires_grad_()
    log_softmax = torch.log_softmax(dense_logits, -1)
    dense = sum((two_hot(x, bins) * log_softmax).sum(-1) for x in targets)
    dist = TwoHotDist(logits)
    gathered = sum(dist.log_prob(x) for x in targets)
    assert torch.allclose(gathered, dense, rtol=1e-5, atol=1e-4)
    gathered.sum().backward()
    dense.sum().backward()
    assert torch.allclose(logits.grad, dense_logits.grad, atol=1e-6)
    expected = (torch.softmax(logits.detach().double(), -1) * bins.double()).sum(-1)
    assert torch.allclose(dist.mean.double(), expected, rtol=1e-5, atol=1e-3)
