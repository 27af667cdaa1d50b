"""Time a config's filtering loop as a training step runs it: observe() forward and backward.

    python scripts/bench_filter_loop.py pendulum                   # as compile_networks builds it
    python scripts/bench_filter_loop.py pendulum --floats-as-inputs  # dynamo's default instead
    python scripts/bench_filter_loop.py pendulum --whole-update     # whole training steps
    python scripts/bench_filter_loop.py pendulum --precision bf16   # not the config's own

The loop is 64 steps of 16 rows, one after another, each a compiled graph call in both
directions: a few milliseconds of arithmetic and a fixed cost per call, so per-call overheads
show here first. --floats-as-inputs undoes one of compile_networks' settings (Python floats
compiled in as constants, dynamo's `specialize_float`), so that the two can be timed in
turns, one process each (this machine's speed drifts by 10-30% within an hour; compare only
runs taken one after another):

    for i in 1 2 3; do python scripts/bench_filter_loop.py pendulum --floats-as-inputs
                       python scripts/bench_filter_loop.py pendulum; done

or side by side, one thread on each core (swap the cores between rounds):

    OMP_NUM_THREADS=1 taskset -c 0 python scripts/bench_filter_loop.py pendulum --whole-update &
    OMP_NUM_THREADS=1 taskset -c 1 python scripts/bench_filter_loop.py pendulum --whole-update \
        --floats-as-inputs; wait

Prints the median of --repeats loops (or training steps on a random replay-shaped batch)
after 5 warm-up ones (the first builds the graphs).
"""

import argparse
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from natural_dreamer import dreamer  # noqa: E402
from natural_dreamer.bench import configured_agent, host, median_seconds  # noqa: E402
from natural_dreamer.config import load_config  # noqa: E402
from natural_dreamer.fastpath import use_heap_allocator  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("config")
    parser.add_argument("--floats-as-inputs", action="store_true")
    parser.add_argument("--whole-update", action="store_true", help="time Dreamer.train_step")
    parser.add_argument("--repeats", type=int, default=60)
    parser.add_argument(
        "--precision", choices=["auto", "bf16", "fp32"], help="instead of the config's own"
    )
    args = parser.parse_args()

    if args.floats_as_inputs:
        compile_networks = dreamer.compile_networks

        def floats_as_inputs(agent):
            compile_networks(agent)
            torch._dynamo.config.specialize_float = False

        dreamer.compile_networks = floats_as_inputs
    use_heap_allocator()  # as main.py runs
    overrides = {"precision": args.precision} if args.precision else None
    config = load_config(args.config, overrides)
    agent, batch = configured_agent(config)
    rssm, wm = agent.world_model.rssm, config.world_model
    B, T = wm.batch_size, wm.batch_length
    embed = torch.randn(B, T, rssm.posterior_net.in_dim - rssm.deter_dim, requires_grad=True)
    actions = torch.randn(B, T, rssm.action_size)
    is_first = torch.zeros(B, T, dtype=torch.bool)

    def loop():
        with agent.autocast(), rssm.batched_weight_grads():
            states, post_logits, _ = rssm.observe(embed, actions, is_first)
        (states["deter"].float().sum() + post_logits.sum()).backward()

    timed = (lambda: agent.train_step(batch)) if args.whole_update else loop
    for _ in range(5):
        timed()
    seconds = median_seconds(timed, args.repeats)
    floats = "graph inputs (dynamo's default)" if args.floats_as_inputs else "constants"
    what = "training steps" if args.whole_update else f"{T} filtering steps of {B} rows"
    print(
        f"{host()}; {args.config}: {what}, precision "
        f"{agent.precision_label}, compile {'on' if agent.compiled else 'off'}, "
        f"{torch.get_num_threads()} thread(s), Python floats as {floats}: "
        f"median {seconds * 1e3:.1f} ms per "
        + ("training step" if args.whole_update else "loop, forward and backward")
    )


if __name__ == "__main__":
    main()
