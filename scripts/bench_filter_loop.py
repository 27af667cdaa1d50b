"""The training filtering loop, forward and backward: 64 compiled steps against one scan graph.

    python scripts/bench_filter_loop.py pendulum walker_walk_proprio --repeats 15

For each config, builds the agent `python main.py NAME` builds (compile on, precision as
`auto` chooses it here) and a random batch shaped like its replay, and times what
train_step runs for the filtering loop:
RSSM.observe inside batched_weight_grads on a batch of the config's shape, with a loss on
its states and logits, forward and backward. Once with the loop of compiled steps
(RSSM.filter) and once with the loop as one scan graph (RSSM.filter_scan), whichever of the
two compile_networks chose for the config; then the whole training step each way. Each pair
is timed in turns, so a change in the machine's speed reaches both. Prints the first two
filtering passes' seconds (their compile) and medians of --repeats rounds, loop / scan:
the measurement behind SCAN_MAX_PARAMETERS in dreamer.py.
Run it on an idle machine.
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from natural_dreamer.bench import configured_agent, host  # noqa: E402
from natural_dreamer.config import load_config  # noqa: E402
from natural_dreamer.dreamer import (  # noqa: E402
    Dreamer,
    compile_filter_scan,
    filtering_parameters,
)
from natural_dreamer.fastpath import use_heap_allocator  # noqa: E402


def filtering_pass(agent: Dreamer, inputs: dict, scan: bool) -> float:
    """Seconds of one filtering loop forward and backward, as a loop or as a scan."""
    rssm = agent.world_model.rssm
    rssm.scan_loop = scan
    start = time.perf_counter()
    with agent.autocast(), rssm.batched_weight_grads():
        states, post, prior = rssm.observe(**inputs)
        loss = states["deter"].float().square().mean() + post.float().square().mean()
        loss = loss + prior.float().square().mean()
    loss.backward()
    return time.perf_counter() - start


def update(agent: Dreamer, batch: dict, scan: bool) -> float:
    """Seconds of one whole training step, its filtering loop as a loop or as a scan."""
    agent.world_model.rssm.scan_loop = scan
    start = time.perf_counter()
    agent.train_step(batch)
    return time.perf_counter() - start


def interleaved(fn, repeats: int) -> tuple:
    """fn(scan) for scan False and True: (seconds of the first two calls of each, median
    seconds of `repeats` calls of each taken in turns)."""
    warm = {scan: fn(scan) + fn(scan) for scan in (False, True)}
    times = {False: [], True: []}
    for _ in range(repeats):
        for scan in (False, True):
            times[scan].append(fn(scan))
    return warm, {scan: statistics.median(times[scan]) for scan in (False, True)}


def measure(name: str, repeats: int) -> None:
    config = load_config(name, {"compile": True})
    agent, batch = configured_agent(config)
    rssm = agent.world_model.rssm
    if not rssm.scan_loop:
        compile_filter_scan(rssm)
    B, T = batch["is_first"].shape
    tensors = agent.batch_to_torch(batch)
    inputs = {
        "embed": agent.world_model.encoder({k: tensors[k] for k in agent.world_model.obs_keys}),
        "actions": tensors["action"],
        "is_first": tensors["is_first"],
    }
    inputs["embed"] = inputs["embed"].detach().requires_grad_()
    warm, loop = interleaved(lambda scan: filtering_pass(agent, inputs, scan), repeats)
    _, whole = interleaved(lambda scan: update(agent, batch, scan), repeats)
    print(
        f"| {name} | {config.model.preset} | {filtering_parameters(rssm):,} | {B} x {T} "
        f"| {agent.precision} | {warm[False]:.0f} / {warm[True]:.0f} "
        f"| {loop[False] * 1000:.0f} / {loop[True] * 1000:.0f} "
        f"| {whole[False] * 1000:.0f} / {whole[True] * 1000:.0f} "
        f"| {whole[False] / whole[True]:.2f}x |",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("configs", nargs="+")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    use_heap_allocator()  # as main.py does
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {host()}")
    print(
        "| config | preset | filtering parameters | B x T | precision | first two passes s "
        "| filtering ms | whole update ms | update: steps / scan |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name in args.configs:
        measure(name, args.repeats)


if __name__ == "__main__":
    main()
