"""What compiling the two-hot arithmetic would save: the critic's two-hot work, eager and compiled.

    python scripts/bench_twohot.py                  # the pendulum's shapes (1m, 1,024 rollouts)
    python scripts/bench_twohot.py --rows 1024 --horizon 15 --repeats 31
    python scripts/bench_twohot.py --whole-update --repeats 21   # what it is worth in an update

Times, in turns in one process (this machine drifts between runs minutes apart), the two-hot
work of one update's critic loss as the agent does it with TwoHotDist (eager PyTorch): the
mean of the critic's logits for the returns, the two log-likelihoods (lambda-returns and the
EMA critic's mean) and their gradient, plus the means of the reward head and the EMA critic;
then the same TwoHotDist code as torch.compile'd functions. Prints the median of each in
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
from natural_dreamer.distributions import TwoHotDist  # noqa: E402

# The package's own two-hot code, as torch.compile'd functions: no second copy of its maths.
EAGER_MEAN, EAGER_LOG_PROB = TwoHotDist.mean, TwoHotDist.log_prob


def two_hot_mean(logits):
    return EAGER_MEAN.fget(TwoHotDist(logits))


def two_hot_log_prob(logits, target):
    return EAGER_LOG_PROB(TwoHotDist(logits), target)


def two_hot_log_prob_pair(logits, first, second):
    """The log-likelihoods of two targets under one set of logits (one log-normaliser)."""
    dist = TwoHotDist(logits)
    return EAGER_LOG_PROB(dist, first) + EAGER_LOG_PROB(dist, second)


def critic_work(critic_logits, reward_logits, slow_logits, returns, mean, log_prob_pair):
    """The two-hot part of Behavior.loss and critic_loss: the critic's mean for the values,
    the reward head's and the EMA critic's means, the two log-likelihoods and their gradient."""
    with torch.no_grad():
        values, rewards, slow = (mean(x) for x in (critic_logits, reward_logits, slow_logits))
    loss = -log_prob_pair(critic_logits[:, :-1], returns, slow).mean()
    loss.backward()
    return values, rewards, loss


def whole_update(repeats: int) -> None:
    """Pendulum updates in turns: TwoHotDist as it is, then with compiled mean and log_prob."""
    from natural_dreamer.bench import configured_agent
    from natural_dreamer.config import load_config
    from natural_dreamer.fastpath import use_heap_allocator

    use_heap_allocator()
    compiled_mean = torch.compile(two_hot_mean, dynamic=True)
    compiled_log_prob = torch.compile(two_hot_log_prob, dynamic=True)
    ways = {
        "eager": (EAGER_MEAN, EAGER_LOG_PROB),
        "compiled": (
            property(lambda dist: compiled_mean(dist.logits)),
            lambda dist, target: compiled_log_prob(dist.logits, target),
        ),
    }
    agent, batch = configured_agent(load_config("pendulum"))
    times = {name: [] for name in ways}
    try:
        for repeat in range(repeats + 2):  # the first two rounds build the graphs
            for name, (mean_property, log_prob_method) in ways.items():
                TwoHotDist.mean, TwoHotDist.log_prob = mean_property, log_prob_method
                begin = time.perf_counter()
                agent.train_step(batch)
                if repeat >= 2:
                    times[name].append(time.perf_counter() - begin)
    finally:
        TwoHotDist.mean, TwoHotDist.log_prob = EAGER_MEAN, EAGER_LOG_PROB
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
    leaf = torch.randn(N, H + 1, K, dtype=torch.bfloat16, requires_grad=True)
    reward_logits = torch.randn(N, H, K, dtype=torch.bfloat16)
    slow_logits = torch.randn(N, H, K, dtype=torch.bfloat16)
    returns = torch.randn(N, H) * 10
    ways = {
        "eager": (two_hot_mean, two_hot_log_prob_pair),
        "compiled": (
            torch.compile(two_hot_mean, dynamic=True),
            torch.compile(two_hot_log_prob_pair, dynamic=True),
        ),
    }

    def run(name):
        leaf.grad = None
        outputs = critic_work(leaf * 1, reward_logits, slow_logits, returns, *ways[name])
        return outputs, leaf.grad

    begin = time.perf_counter()
    for _ in range(2):
        run("compiled")
    build = time.perf_counter() - begin
    (a, grad_eager), (b, grad_compiled) = run("eager"), run("compiled")
    error = max(  # relative: the outer bins are as large as 5e8
        ((x.float() - y.float()).abs().max() / x.float().abs().max().clamp(min=1e-9)).item()
        for x, y in zip(a, b, strict=True)
    )
    grad_error = (grad_eager.float() - grad_compiled.float()).abs().max().item()

    times = {name: [] for name in ways}
    for _ in range(args.repeats):
        for name in times:
            begin = time.perf_counter()
            run(name)
            times[name].append(time.perf_counter() - begin)
    print(f"{host()}; {torch.get_num_threads()} thread(s); logits ({N}, {H + 1}, {K}) bf16")
    for name, values in times.items():
        print(f"{name:>9}: {1e3 * statistics.median(values):7.2f} ms (median of {args.repeats})")
    print(f"compiled functions built in {build:.1f} s; largest difference: values {error:.1e}")
    print(f"(relative), the logits' gradient {grad_error:.2e}")


if __name__ == "__main__":
    main()
