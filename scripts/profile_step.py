"""Profile training steps of a config as `python main.py NAME` runs it: where the time goes.

    python scripts/profile_step.py walker_walk_proprio            # its own settings
    python scripts/profile_step.py walker_walk_proprio --set compile=false precision=fp32
    python scripts/profile_step.py pendulum --steps 3 --rows 25

Builds the agent the config describes (precision and compile as `auto` chooses them here,
unless --set overrides them), trains it on a random batch shaped like replay until warm
(compiled graphs built), then records --steps steps with torch.profiler and prints: seconds
per step, operators dispatched per step, and the operators with the most self CPU time.
Run it on an idle machine, or with OMP_NUM_THREADS=1 beside another torch process.
"""

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from natural_dreamer.bench import configured_agent, host  # noqa: E402
from natural_dreamer.config import load_config  # noqa: E402
from natural_dreamer.fastpath import use_heap_allocator  # noqa: E402


def parse_overrides(pairs: list) -> dict:
    """["compile=false", "model.preset=12m"] -> {"compile": False, "model.preset": "12m"}."""
    words = {"true": True, "false": False}
    overrides = {}
    for pair in pairs:
        key, _, value = pair.partition("=")
        overrides[key] = words.get(value.lower(), value)
    return overrides


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides")
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling")
    parser.add_argument("--steps", type=int, default=2, help="steps profiled")
    parser.add_argument("--rows", type=int, default=20, help="operators listed")
    parser.add_argument("--shapes", action="store_true", help="group operators by input shape")
    args = parser.parse_args()
    use_heap_allocator()  # as main.py does
    config = load_config(args.config, parse_overrides(args.set))
    agent, batch = configured_agent(config)
    wm = config.world_model
    start = time.perf_counter()
    for _ in range(args.warmup):
        agent.train_step(batch)
    warmup = time.perf_counter() - start
    start = time.perf_counter()
    agent.train_step(batch)
    unprofiled = time.perf_counter() - start
    with profile(activities=[ProfilerActivity.CPU], record_shapes=args.shapes) as prof:
        for _ in range(args.steps):
            agent.train_step(batch)
    events = prof.key_averages(group_by_input_shape=args.shapes)
    calls = sum(event.count for event in events if event.key.startswith("aten::"))
    print(host())
    print(
        f"{args.config}: preset {config.model.preset}, obs {config.env.obs}, batch "
        f"{wm.batch_size} x {wm.batch_length}, precision {agent.precision}, compile "
        f"{'on' if agent.compiled else 'off'}, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"warm-up {warmup:.1f} s for {args.warmup} steps; one step unprofiled {unprofiled:.3f} s; "
        f"aten operators dispatched per step: {calls / args.steps:,.0f}"
    )
    print(
        events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40)
    )


if __name__ == "__main__":
    main()
