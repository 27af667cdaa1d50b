"""Collection throughput with N environments in parallel, as the training loop collects.

    python scripts/bench_envs.py [--envs 1 2 4] [--seconds 20] [--configs walker_walk ...]

For each config and each N, the training loop's own collector steps N environments (N = 1:
in this process; N > 1: one worker process each, gymnasium's AsyncVectorEnv) into a replay
buffer with one stream per environment for about `seconds` after a warm-up, twice: with
uniform random actions (the environments alone, as in the prefill) and with the config's
untrained agent choosing the actions (as in training: one batched forward pass serves all N
environments). It prints a Markdown table of environment steps per second (action repeat
counted) and the speed-up over N = 1. Worker start-up is reported apart: a run pays it once.

Run it on an idle machine: other processes on the same cores take their share.
"""

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from natural_dreamer import Dreamer, ReplayBuffer, load_config  # noqa: E402
from natural_dreamer.collector import AgentPolicy, RandomPolicy, VectorCollector  # noqa: E402
from natural_dreamer.envs import make_env  # noqa: E402
from natural_dreamer.vector import make_vector_env  # noqa: E402

LABELS = {
    "walker_walk": "DMC walker_walk, 64x64 pixels",
    "walker_walk_proprio": "DMC walker_walk, proprio",
    "cartpole": "Gymnasium CartPole-v1",
}


def measure(config_name: str, count: int, seconds: float, agent: bool) -> tuple:
    """(env steps per second, worker start-up seconds) for `count` environments, with random
    actions or (agent=True) the config's agent acting on the CPU."""
    config = load_config(config_name)
    spec = make_env(config.env, seed=0)
    buffer = ReplayBuffer(200_000, spec.obs_space, spec.action_size, streams=count)
    policy = RandomPolicy(spec.action_size, spec.discrete)
    if agent:
        dreamer = Dreamer(spec.obs_space, spec.action_size, spec.discrete, config, "cpu")
        policy = AgentPolicy(dreamer, count=count)
    start = time.perf_counter()
    envs = make_vector_env(config.env, seed=0, count=count)
    collector = VectorCollector(envs, buffer, seed=0)
    for _ in range(10):  # warm-up: first resets, first frames, shared-memory set-up
        collector.step(policy)
    startup = time.perf_counter() - start
    steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        collector.step(policy)
        steps += count
    elapsed = time.perf_counter() - start
    envs.close()
    spec.close()
    return steps * spec.action_repeat / elapsed, startup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--envs", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--configs", nargs="+", default=list(LABELS))
    args = parser.parse_args()
    print(f"{os.cpu_count()} CPU cores; load average before: {os.getloadavg()[0]:.2f}")
    print()
    print(
        "| environment (config) | N | env steps/s, random actions | speed-up "
        "| env steps/s, agent acting | speed-up | worker start-up (s) |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in args.configs:
        base = {}
        for count in args.envs:
            cells = []
            for agent in (False, True):
                rate, startup = measure(name, count, args.seconds, agent)
                base.setdefault(agent, rate)
                cells += [f"{rate:,.0f}", f"{rate / base[agent]:.2f}x"]
            label = f"{LABELS.get(name, name)} (`{name}`)"
            print(f"| {label} | {count} | {' | '.join(cells)} | {startup:.1f} |")
            sys.stdout.flush()
    print()
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
