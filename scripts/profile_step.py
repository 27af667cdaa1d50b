"""Profile training steps of a config as `python main.py NAME` runs it: where the time goes.

    python scripts/profile_step.py walker_walk_proprio            # its own settings
    python scripts/profile_step.py walker_walk_proprio --set compile=false precision=fp32
    python scripts/profile_step.py pendulum --steps 3 --rows 25
    python scripts/profile_step.py walker_walk_proprio --kernels   # compiled kernels one by one
    python scripts/profile_step.py pendulum --products   # matrix products by shape, GFLOP/s

Builds the agent the config describes (precision and compile as `auto` chooses them here,
unless --set overrides them), trains it on a random batch shaped like replay until warm
(compiled graphs built), then records --steps steps with torch.profiler and prints: seconds
per step, operators dispatched per step, and the operators with the most self CPU time.
--kernels also times each C++ kernel torch.compile generates (inductor's kernel profile, set
before the first graph is built) and sums the step's time by kind: generated kernels,
matrix products, copies, other operators, and the rest (graph calls, autograd, Python).
--products lists the matrix products (not convolutions) by input shape with their GFLOP per
step and the rate they ran at (torch.profiler's FLOP count): how far from the machine's peak.
Run it on an idle machine, or with OMP_NUM_THREADS=1 beside another torch process.
"""

import argparse
import re
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


MATRIX_PRODUCTS = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::convolution"}
KINDS = (
    "generated kernels",
    "matrix products",
    "copies and casts",
    "other operators",
    "the rest (graph calls, autograd, Python)",
)


def kind(name: str) -> str:
    """Which of KINDS a profiler event's self time belongs to."""
    if re.match(r"graph_\d+_cpp_fused", name) or name.startswith("cpp_fused"):
        return KINDS[0]
    if name in MATRIX_PRODUCTS or name.startswith(("aten::_convolution", "mkldnn")):
        return KINDS[1]
    if name in ("aten::copy_", "aten::_to_copy", "aten::clone", "aten::contiguous"):
        return KINDS[2]
    return KINDS[3] if name.startswith("aten::") else KINDS[4]


def time_by_kind(events, steps: int) -> list:
    """[(kind, ms per step, share of the self time, calls per step)] over `events` (objects
    with .key, .self_cpu_time_total in us and .count), in KINDS order."""
    totals = {name: [0.0, 0] for name in KINDS}
    for event in events:
        total = totals[kind(event.key)]
        total[0] += event.self_cpu_time_total
        total[1] += event.count
    whole = sum(us for us, _ in totals.values()) or 1.0
    return [
        (name, us / 1e3 / steps, us / whole, calls / steps) for name, (us, calls) in totals.items()
    ]


def print_kernels(events, steps: int, rows: int) -> None:
    print(f"{'self CPU time by kind':42s} {'ms/step':>9s} {'share':>7s} {'calls/step':>11s}")
    for name, ms, share, calls in time_by_kind(events, steps):
        print(f"{name:42s} {ms:9.1f} {share:7.1%} {calls:11,.0f}")
    kernels = [event for event in events if kind(event.key) == KINDS[0]]
    kernels.sort(key=lambda event: -event.self_cpu_time_total)
    print(f"\nthe {min(rows, len(kernels))} dearest generated kernels (named by the ops fused):")
    for event in kernels[:rows]:
        per_call = event.self_cpu_time_total / max(event.count, 1) / 1e3
        print(
            f"{event.self_cpu_time_total / 1e3 / steps:8.1f} ms/step {event.count / steps:6.0f} "
            f"calls {per_call:8.3f} ms/call  {event.key[:100]}"
        )


def product_rows(events, steps: int) -> list:
    """[(ms per step, calls per step, GFLOP per step, GFLOP/s, name, input shapes)] for the
    matrix products among `events` (objects with .key, .self_cpu_time_total in us, .count,
    .flops and .input_shapes), dearest first: mm, addmm, bmm and baddbmm, the products
    torch.profiler counts the FLOP of."""
    rows = []
    for event in events:
        if event.key in ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm"):
            seconds = event.self_cpu_time_total / 1e6 / steps
            gflop = event.flops / 1e9 / steps
            rate = gflop / seconds if seconds else 0.0
            shapes = [shape for shape in event.input_shapes if shape]
            rows.append((seconds * 1e3, event.count / steps, gflop, rate, event.key, shapes))
    return sorted(rows, key=lambda row: -row[0])


def print_products(events, steps: int, rows: int) -> None:
    products = product_rows(events, steps)
    total_ms = sum(row[0] for row in products)
    total_gflop = sum(row[2] for row in products)
    total_rate = total_gflop / total_ms * 1e3 if total_ms else 0.0
    print(
        f"matrix products: {total_ms:.1f} ms per step, {total_gflop:.2f} GFLOP per step, "
        f"{total_rate:.0f} GFLOP/s"
    )
    print(f"the {min(rows, len(products))} dearest by input shape:")
    for ms, calls, gflop, rate, name, shapes in products[:rows]:
        print(
            f"{ms:8.2f} ms/step {calls:6.0f} calls {gflop:7.3f} GFLOP {rate:6.0f} GFLOP/s  "
            f"{name} {shapes}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    parser.add_argument("--set", nargs="*", default=[], help="key=value overrides")
    parser.add_argument("--warmup", type=int, default=3, help="steps before profiling")
    parser.add_argument("--steps", type=int, default=2, help="steps profiled")
    parser.add_argument("--rows", type=int, default=20, help="operators listed")
    parser.add_argument("--shapes", action="store_true", help="group operators by input shape")
    parser.add_argument(
        "--kernels", action="store_true", help="time compiled kernels one by one, sum by kind"
    )
    parser.add_argument(
        "--products", action="store_true", help="matrix products by shape: GFLOP and GFLOP/s"
    )
    args = parser.parse_args()
    if args.kernels:
        import torch._inductor.config as inductor_config

        inductor_config.cpp.enable_kernel_profile = True  # before any graph is compiled
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
    shapes = args.shapes or args.products
    cpu = [ProfilerActivity.CPU]
    with profile(activities=cpu, record_shapes=shapes, with_flops=args.products) as prof:
        for _ in range(args.steps):
            agent.train_step(batch)
    events = prof.key_averages(group_by_input_shape=shapes)
    calls = sum(event.count for event in events if event.key.startswith("aten::"))
    print(host())
    print(
        f"{args.config}: preset {config.model.preset}, obs {config.env.obs}, batch "
        f"{wm.batch_size} x {wm.batch_length}, precision {agent.precision_label}, compile "
        f"{'on' if agent.compiled else 'off'}, {torch.get_num_threads()} thread(s)"
    )
    print(
        f"warm-up {warmup:.1f} s for {args.warmup} steps; one step unprofiled {unprofiled:.3f} s; "
        f"aten operators dispatched per step: {calls / args.steps:,.0f}"
    )
    print(
        events.table(sort_by="self_cpu_time_total", row_limit=args.rows, max_name_column_width=40)
    )
    if args.kernels:
        if not agent.compiled:
            print("--kernels: this agent is not compiled, so no generated kernels to time")
        print_kernels(events, args.steps, args.rows)
    if args.products:
        print()
        print_products(events, args.steps, args.rows)


if __name__ == "__main__":
    main()
