"""What fusing the two-hot arithmetic would save: the critic's two-hot work, eager and compiled.

    python scripts/bench_twohot.py                  # the pendulum's shapes (1m, 1,024 rollouts)
    python scripts/bench_twohot.py --rows 1024 --horizon 15 --repeats 31
    python scripts/bench_twohot.py --whole-update --repeats 21   # what it is worth in an update

Times, in turns in one process (this machine drifts between runs minutes apart), the two-hot
work of one update's critic loss as the agent does it with TwoHotDist (eager PyTorch): the
mean of the critic's logits for the returns, the two log-likelihoods (lambda-returns and the
EMA critic's mean) and their gradient, plus the means of the reward head and the EMA critic;
then the same maths written as two torch.compile'd functions. Prints the median of each in
milliseconds and the seconds the compiled functions took to build. --whole-update times
whole pendulum updates in turns instead, with TwoHotDist's mean and log_prob as they are and
swapped for compiled functions: the figure that decides. A measurement, not part of the agent.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from natural_dreamer.bench import host  # noqa: E402
from natural_dreamer.distributions import TwoHotDist, twohot_bins  # noqa: E402
from natural_dreamer.utils import two_hot_neighbours  # noqa: E402


def eager_work(critic_logits, reward_logits, slow_logits, returns):
    """The two-hot part of Behavior.loss and critic_loss, as the agent runs it."""
    values = TwoHotDist(critic_logits).mean.detach()
    rewards = TwoHotDist(reward_logits).mean
    slow = TwoHotDist(slow_logits).mean
    dist = TwoHotDist(critic_logits[:, :-1])
    loss = -(dist.log_prob(returns) + dist.log_prob(slow)).mean()
    loss.backward()
    return values, rewards, loss


def mean(logits, bins):
    probs = torch.softmax(logits.float(), -1)
    m = bins.shape[0] // 2
    return ((probs[..., m + 1 :] - probs[..., :m].flip(-1)) * bins[m + 1 :]).sum(-1)


def log_prob_pair(logits, first, second, bins):
    """The log-likelihoods of two targets under one set of logits, summed."""
    logits = logits.float()
    log_norm = logits.logsumexp(-1)
    total = 0.0
    for target in (first, second):
        below, above, weight = two_hot_neighbours(target.detach(), bins)
        pair = logits.gather(-1, torch.stack([below, above], -1))
        total = total + (1.0 - weight) * pair[..., 0] + weight * pair[..., 1] - log_norm
    return total


def fused_work(critic_logits, reward_logits, slow_logits, returns, fused_mean, fused_pair, bins):
    with torch.no_grad():
        values = fused_mean(critic_logits, bins)
        rewards = fused_mean(reward_logits, bins)
        slow = fused_mean(slow_logits, bins)
    loss = -fused_pair(critic_logits[:, :-1], returns, slow, bins).mean()
    loss.backward()
    return values, rewards, loss


def log_prob(logits, target, bins):
    """TwoHotDist.log_prob as one function of its inputs."""
    logits = logits.float()
    below, above, weight = two_hot_neighbours(target.detach(), bins)
    pair = logits.gather(-1, torch.stack([below, above], -1))
    return (1.0 - weight) * pair[..., 0] + weight * pair[..., 1] - logits.logsumexp(-1)


def whole_update(repeats: int) -> None:
    """Pendulum updates in turns: TwoHotDist as it is, then with compiled mean and log_prob."""
    from natural_dreamer.bench import configured_agent
    from natural_dreamer.config import load_config
    from natural_dreamer.fastpath import use_heap_allocator

    use_heap_allocator()
    compiled_mean = torch.compile(mean, dynamic=True)
    compiled_log_prob = torch.compile(log_prob, dynamic=True)
    ways = {
        "eager": (TwoHotDist.mean, TwoHotDist.log_prob),
        "compiled": (
            property(lambda dist: compiled_mean(dist.logits, dist.bins)),
            lambda dist, target: compiled_log_prob(dist.logits, target, dist.bins),
        ),
    }
    agent, batch = configured_agent(load_config("pendulum"))
    times = {name: [] for name in ways}
    for repeat in range(repeats + 2):  # the first two rounds build the graphs
        for name, (mean_property, log_prob_method) in ways.items():
            TwoHotDist.mean, TwoHotDist.log_prob = mean_property, log_prob_method
            begin = time.perf_counter()
            agent.train_step(batch)
            if repeat >= 2:
                times[name].append(time.perf_counter() - begin)
    TwoHotDist.mean, TwoHotDist.log_prob = ways["eager"]
    print(f"{host()}; {torch.get_num_threads()} thread(s); pendulum updates, in turns")
    for name, values in times.items():
        print(f"{name:>9} two-hot: {1e3 * statistics.median(values):7.1f} ms per update")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1024, help="imagined rollouts (B x T)")
    parser.add_argument("--horizon", type=int, default=15)
    parser.add_argument("--bins", type=int, default=255)
    parser.add_argument("--repeats", type=int, default=31)
    parser.add_argument("--whole-update", action="store_true")
    args = parser.parse_args(argv)
    if args.whole_update:
        return whole_update(args.repeats)
    torch.manual_seed(0)
    N, H, K = args.rows, args.horizon, args.bins
    bins = twohot_bins(K)
    leaf = torch.randn(N, H + 1, K, dtype=torch.bfloat16, requires_grad=True)
    reward_logits = torch.randn(N, H, K, dtype=torch.bfloat16)
    slow_logits = torch.randn(N, H, K, dtype=torch.bfloat16)
    returns = torch.randn(N, H) * 10

    fused_mean = torch.compile(mean, dynamic=True)
    fused_pair = torch.compile(log_prob_pair, dynamic=True)
    begin = time.perf_counter()
    fused = (fused_mean, fused_pair, bins)
    for _ in range(2):
        leaf.grad = None
        fused_work(leaf * 1, reward_logits, slow_logits, returns, *fused)
    build = time.perf_counter() - begin

    leaf.grad = None
    a = eager_work(leaf * 1, reward_logits, slow_logits, returns)
    grad_eager, leaf.grad = leaf.grad, None
    b = fused_work(leaf * 1, reward_logits, slow_logits, returns, *fused)
    error = max(  # relative: the outer bins are as large as 5e8
        ((x.float() - y.float()).abs().max() / x.float().abs().max().clamp(min=1e-9)).item()
        for x, y in zip(a, b, strict=True)
    )
    grad_error = (grad_eager.float() - leaf.grad.float()).abs().max().item()

    times = {"eager": [], "compiled": []}
    for _ in range(args.repeats):
        for name in times:
            leaf.grad = None
            begin = time.perf_counter()
            if name == "eager":
                eager_work(leaf * 1, reward_logits, slow_logits, returns)
            else:
                fused_work(leaf * 1, reward_logits, slow_logits, returns, *fused)
            times[name].append(time.perf_counter() - begin)
    print(f"{host()}; {torch.get_num_threads()} thread(s); logits ({N}, {H + 1}, {K}) bf16")
    for name, values in times.items():
        print(f"{name:>9}: {1e3 * statistics.median(values):7.2f} ms (median of {args.repeats})")
    print(f"compiled functions built in {build:.1f} s; largest difference: values {error:.1e}")
    print(f"(relative), the logits' gradient {grad_error:.2e}")


if __name__ == "__main__":
    main()
