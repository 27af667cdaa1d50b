"""How fast is a training step, and how close to the machine's limit?

    python -m natural_dreamer.bench                 # every table (about an hour on 2 cores)
    python -m natural_dreamer.bench --quick         # the laptop preset only, a few minutes
    python -m natural_dreamer.bench --tables steps  # some tables: steps scaling envs memory
    python -m natural_dreamer.bench --device cpu    # on the CPU of a machine with a GPU
    python -m natural_dreamer.bench --project metrics/walker_walk_run.csv  # a run's pace

user     "as a user runs it": for every config in configs/, its own settings (preset, batch,
         precision and compile as `auto` chooses them here), seconds per gradient step, the
         warm-up, the updates its budget implies and the projected wall time of the budget.
steps    seconds per gradient step (median of --repeats after two warm-up steps), split into
         world model, imagination and actor-critic; FLOPs per step counted by
         torch.utils.flop_counter (matrix products and convolutions, forward and backward);
         the FLOP/s that gives, and that as a fraction of this machine's torch.mm peak in the
         same precision, measured in the same run.
         --modes: eager PyTorch and the compile: true agent (torch.compile'd networks).
         On CUDA two more columns: milliseconds per update and the peak GPU memory the
         row's training step allocated.
scaling  seconds per step against batch size, sequence length and model preset.
envs     environment steps per second of collection under random actions: DMC walker_walk
         pixels (default and fast rendering) and proprio, Gymnasium CartPole.
memory   replay bytes per stored step, and this process's peak resident memory.
paper    one eager fp32 update (batch 16 x 64) counted, not timed: its FLOPs, the operators it
         dispatches (each a kernel launch on a GPU, views aside) inside the sequential step
         regions and outside them, and what those imply on an H100 (H100_BF16_FLOPS dense,
         LAUNCH_US per launch) with and without CUDA graphs. Slow on a CPU (one 12m image
         update in eager fp32), the same on any device: `--device cpu` does.

--project CSV reads a run's metrics instead: the pace of its last whole interval that trained
(env steps per second, seconds per update, acting included) and the wall time that pace gives
1M and 100k env steps (walker_walk's budget and the 100k benchmark).

On a machine with CUDA the agents and the peak's products run on the GPU (--device auto, as
in a training run), and every timer waits for the GPU's work to finish.

Batches are random data shaped like replay (batch 16 x 64, horizon 15 unless a table says
otherwise). Run it on an idle machine: two torch processes sharing 2 cores slow each other
down many times over.
"""

import argparse
import csv
import resource
import time

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

from natural_dreamer.buffer import ReplayBuffer
from natural_dreamer.config import available_configs, load_config
from natural_dreamer.dreamer import Dreamer
from natural_dreamer.envs import make_env
from natural_dreamer.fastpath import (
    choose_threads,
    cpu_flags,
    cpu_model,
    native_bf16,
    planned_updates,
    use_heap_allocator,
    use_tf32,
)
from natural_dreamer.utils import pick_device

OBS = {"vector": {"vector": ((24,), np.float32)}, "image": {"image": ((64, 64, 3), np.uint8)}}
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}
TABLES = ("user", "steps", "scaling", "envs", "memory", "paper")
# An H100 SXM's dense bf16 tensor-core rate, and the host's cost of one kernel launch without
# CUDA graphs (the range usually quoted for PyTorch's eager dispatch plus cudaLaunchKernel).
H100_BF16_FLOPS = 990e12
LAUNCH_US = (5, 10)
# Operators that only make a new view of a tensor: no kernel on a GPU.
VIEWS = {
    "view", "_unsafe_view", "t", "transpose", "expand", "unsqueeze", "squeeze", "select",
    "slice", "permute", "as_strided", "detach", "alias", "unbind", "split", "split_with_sizes",
    "chunk", "narrow", "reshape", "flatten", "unflatten", "_reshape_alias", "view_as",
    "lift_fresh", "diagonal",
}  # fmt: skip


def random_batch(obs_space: dict, action_size: int, B: int, T: int, discrete=False, seed=0):
    """A (B, T) batch with ReplayBuffer.sample's layout and random contents; every sequence
    starts an episode and none terminates."""
    rng = np.random.default_rng(seed)
    batch = {}
    for key, (shape, dtype) in obs_space.items():
        if dtype == np.uint8:
            batch[key] = rng.integers(0, 256, (B, T, *shape), dtype=np.uint8)
        else:
            batch[key] = rng.normal(size=(B, T, *shape)).astype(dtype)
    if discrete:
        batch["action"] = np.eye(action_size, dtype=np.float32)[
            rng.integers(0, action_size, (B, T))
        ]
    else:
        batch["action"] = rng.uniform(-1, 1, (B, T, action_size)).astype(np.float32)
    batch["reward"] = rng.normal(size=(B, T)).astype(np.float32)
    batch["is_first"] = np.zeros((B, T), bool)
    batch["is_first"][:, 0] = True
    batch["is_terminal"] = np.zeros((B, T), bool)
    return batch


# The agents' device: --device, by default "auto" (CUDA where present, else the CPU).
DEVICE = pick_device("auto")


def synchronize() -> None:
    """Wait for the GPU's queued work, so a timer sees it done (nothing to do on a CPU)."""
    if DEVICE.type == "cuda":
        torch.cuda.synchronize(DEVICE)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        fn()
        synchronize()
        times.append(time.perf_counter() - start)
    return float(np.median(times))


def make_agent(preset: str, obs: str, precision: str, B=16, T=64, H=15, compiled=False):
    """A fresh agent and a random batch for one configuration."""
    overrides = {
        "model.preset": preset,
        "precision": precision,
        "compile": compiled,
        "world_model.batch_size": B,
        "world_model.batch_length": T,
        "behavior.horizon": H,
    }
    config = load_config("smoke", {**overrides, "device": str(DEVICE)})
    return Dreamer(OBS[obs], 6, False, config, DEVICE), random_batch(OBS[obs], 6, B, T)


def step_seconds(preset, obs, precision, repeats: int, B=16, T=64, compiled=False) -> float:
    """Median seconds of a full training step."""
    agent, batch = make_agent(preset, obs, precision, B, T, compiled=compiled)
    for _ in range(2):
        agent.train_step(batch)
    return median_seconds(lambda: agent.train_step(batch), repeats)


def time_phases(preset, obs, precision, repeats: int, B=16, T=64, H=15, compiled=False) -> dict:
    """Median seconds of a full step and of its phases, and the FLOPs of one step."""
    agent, batch = make_agent(preset, obs, precision, B, T, H, compiled)
    for _ in range(2):
        agent.train_step(batch)
    step = median_seconds(lambda: agent.train_step(batch), repeats)
    tensors = agent.batch_to_torch(batch)

    def world_model():
        with agent.autocast(), agent.world_model.rssm.batched_weight_grads():
            loss, _, posterior = agent.world_model.loss(tensors)
        loss.backward()
        return posterior

    posterior = world_model()
    start = {k: v.reshape(B * T, *v.shape[2:]) for k, v in posterior.items()}

    def imagine():
        with agent.autocast():
            agent.behavior.imagine(agent.world_model, start)

    def behavior():
        with agent.autocast():
            actor_loss, critic_loss, _ = agent.behavior.loss(agent.world_model, posterior, tensors)
        (actor_loss + critic_loss).backward()

    wm = median_seconds(world_model, max(3, repeats // 2))
    im = median_seconds(imagine, max(3, repeats // 2))
    beh = median_seconds(behavior, max(3, repeats // 2))
    # The counter sees the operators eager PyTorch dispatches; compiled kernels bypass it, so
    # an eager twin (the same work) is counted.
    if compiled:
        agent, batch = make_agent(preset, obs, precision, B, T, H)
    agent.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        agent.train_step(batch)
    return {
        "step": step,
        "world_model": wm,
        "imagination": im,
        "actor_critic": beh - im,
        "flops": counter.get_total_flops(),
    }


class OperatorCount(TorchDispatchMode):
    """Counts the operators dispatched with a kernel (views left out): in the forward pass
    inside the sequential step regions (while `inside` > 0), elsewhere in the forward pass,
    and in the backward pass (autograd's engine running a node)."""

    def __init__(self):
        super().__init__()
        self.inside = 0
        self.counts = {"forward, step regions": 0, "forward, elsewhere": 0, "backward": 0}

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ not in VIEWS:
            if torch._C._current_autograd_node() is not None:
                self.counts["backward"] += 1
            elif self.inside:
                self.counts["forward, step regions"] += 1
            else:
                self.counts["forward, elsewhere"] += 1
        return func(*args, **(kwargs or {}))

    def region(self, fn):
        """fn, counted as a step region while it runs."""

        def counted(*args, **kwargs):
            self.inside += 1
            try:
                return fn(*args, **kwargs)
            finally:
                self.inside -= 1

        return counted


def count_update(preset: str, obs: str, B: int = 16, T: int = 64) -> dict:
    """{"flops": FLOPs, "operators": OperatorCount.counts, "region calls": step region calls
    per update} of one eager fp32 update, after a first one (the optimisers' state built)."""
    agent, batch = make_agent(preset, obs, "fp32", B, T)
    agent.train_step(batch)
    counter, calls = OperatorCount(), []
    rssm, behavior = agent.world_model.rssm, agent.behavior
    for owner, name in ((rssm, "filter_step"), (behavior, "rollout_step")):
        fn = getattr(owner, name)
        setattr(owner, name, counter.region(lambda *a, fn=fn, **k: calls.append(1) or fn(*a, **k)))
    with FlopCounterMode(display=False) as flops, counter:
        agent.train_step(batch)
    return {"flops": flops.get_total_flops(), "operators": counter.counts, "calls": len(calls)}


def table_paper(presets, observations) -> None:
    """FLOPs and operators of one update, and an H100's time for them on paper."""
    low, high = LAUNCH_US
    print(
        "| preset | obs | GFLOP/update | H100 at 990 TFLOP/s, ms | operators: step regions "
        "(fwd) / elsewhere (fwd) / backward | step region calls | eager launches, ms | "
        "graphs: launches, ms |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for preset in presets:
        for obs in observations:
            c = count_update(preset, obs)
            ops = c["operators"]
            forward = ops["forward, step regions"] + ops["forward, elsewhere"]
            total = forward + ops["backward"]
            # The backward pass split as the forward is (autograd does not say which region a
            # node came from); under CUDA graphs each region call is one launch each way.
            share = ops["forward, step regions"] / forward
            graphs = round((1 - share) * total) + 2 * c["calls"]
            floor = 1e3 * c["flops"] / H100_BF16_FLOPS
            print(
                f"| {preset} | {obs} | {c['flops'] / 1e9:.0f} | {floor:.2f} "
                f"| {ops['forward, step regions']:,} / {ops['forward, elsewhere']:,} / "
                f"{ops['backward']:,} | {c['calls']} | {total:,}: {total * low / 1e3:.0f}-"
                f"{total * high / 1e3:.0f} | {graphs:,}: {graphs * low / 1e3:.0f}-"
                f"{graphs * high / 1e3:.0f} |",
                flush=True,
            )


def matmul_peak(precision: str, sizes=(1024, 2048, 4096), repeats: int = 5) -> float:
    """FLOP/s of the fastest square torch.mm in this precision: the machine's practical
    ceiling (the best of a few sizes, so the fraction of peak is not flattered)."""
    best = 0.0
    for size in sizes:
        a = torch.randn(size, size, dtype=DTYPES[precision], device=DEVICE)
        b = torch.randn(size, size, dtype=DTYPES[precision], device=DEVICE)
        torch.mm(a, b)
        seconds = median_seconds(lambda a=a, b=b: torch.mm(a, b), repeats)
        best = max(best, 2 * size**3 / seconds)
    return best


def env_steps_per_second(env_config: dict, steps: int = 2000) -> float:
    """Environment steps (after action repeat) per second under random actions."""
    from natural_dreamer.envs import make_env

    env = make_env(env_config, seed=0)
    rng = np.random.default_rng(0)
    env.reset(seed=0)
    start = time.perf_counter()
    for _ in range(steps // env.action_repeat):
        if env.discrete:
            action = np.eye(env.action_size, dtype=np.float32)[rng.integers(env.action_size)]
        else:
            action = rng.uniform(-1, 1, env.action_size).astype(np.float32)
        if env.step(action)["is_last"]:
            env.reset()
    rate = steps / (time.perf_counter() - start)
    env.close()
    return rate


def host() -> str:
    """The CPU model and whether it has native bf16, for every printed figure."""
    native = sorted(cpu_flags() & {"avx512_bf16", "amx_bf16"})
    cpu = f"{cpu_model()}; {'+'.join(native) if native else 'no native bf16 (AVX2 or less)'}"
    return f"{torch.cuda.get_device_name(DEVICE)} (timed), {cpu}" if DEVICE.type == "cuda" else cpu


def configured_agent(config):
    """The agent a config builds (its own spaces, precision and compile as `auto` chooses)
    and a random batch shaped like its replay."""
    env = make_env(config.env, seed=0)
    agent = Dreamer(
        env.obs_space, env.action_size, env.discrete, config, pick_device(config.device)
    )
    env.close()
    wm = config.world_model
    batch = random_batch(
        env.obs_space, env.action_size, wm.batch_size, wm.batch_length, env.discrete
    )
    return agent, batch


def table_user(names, repeats: int) -> None:
    """Each config as `python main.py NAME` runs it: seconds per update and the budget."""
    print(
        "| config | preset | obs | B x T | precision | compile | warm-up s | s/update "
        "| updates | projected |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        config = load_config(name, {"device": str(DEVICE)})
        agent, batch = configured_agent(config)
        wm = config.world_model
        start = time.perf_counter()
        for _ in range(2):
            agent.train_step(batch)
        warmup = time.perf_counter() - start
        step = median_seconds(lambda: agent.train_step(batch), repeats)  # noqa: B023
        updates = planned_updates(config)
        hours = (warmup + updates * step) / 3600
        projected = f"{hours * 60:.0f} min" if hours < 2 else f"{hours:.1f} h"
        print(
            f"| {name} | {config.model.preset} | {config.env.obs} | {wm.batch_size} x "
            f"{wm.batch_length} | {agent.precision_label} | {'on' if agent.compiled else 'off'} "
            f"| {warmup:.0f} | {step:.3f} | {updates:,} | {projected} |",
            flush=True,
        )


def table_steps(presets, observations, precisions, modes, repeats: int) -> None:
    if "bf16" in precisions and not native_bf16(DEVICE)[0]:
        # Without native bf16 every bf16 product runs reference loops: minutes per row.
        print(f"bf16 rows left out: this {DEVICE.type} has no native bf16 (auto picks fp32)")
        precisions = [p for p in precisions if p != "bf16"]
    peaks = {precision: matmul_peak(precision) for precision in precisions}
    for precision, peak in peaks.items():
        print(f"torch.mm peak (best square of 1024-4096), {precision}: {peak / 1e9:.0f} GFLOP/s")
    print()
    cuda = " ms/update | peak GPU MiB |" if DEVICE.type == "cuda" else ""
    print(
        "| preset | obs | precision | mode | s/step | world model | imagination | actor-critic "
        "| GFLOP/step | GFLOP/s | % of peak |" + cuda
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|" + "---|" * cuda.count("|"))
    for preset in presets:
        for obs in observations:
            for precision in precisions:
                for mode in modes:
                    row_steps(preset, obs, precision, mode, repeats, peaks[precision])


def row_steps(preset, obs, precision, mode, repeats, peak) -> None:
    if DEVICE.type == "cuda":
        torch.cuda.reset_peak_memory_stats(DEVICE)
    t = time_phases(preset, obs, precision, repeats, compiled=mode == "compiled")
    rate = t["flops"] / t["step"]
    cuda = ""
    if DEVICE.type == "cuda":
        cuda = f" {1000 * t['step']:.1f} | {torch.cuda.max_memory_allocated(DEVICE) / 2**20:.0f} |"
    print(
        f"| {preset} | {obs} | {precision} | {mode} | {t['step']:.3f} "
        f"| {t['world_model']:.3f} | {t['imagination']:.3f} "
        f"| {t['actor_critic']:.3f} | {t['flops'] / 1e9:.1f} | {rate / 1e9:.0f} "
        f"| {100 * rate / peak:.0f}% |" + cuda,
        flush=True,
    )


def table_scaling(presets, precision: str, repeats: int, compiled: bool) -> None:
    mode = "compiled" if compiled else "eager"
    print(f"| what changes | preset | obs | batch | length | s/step ({precision}, {mode}) |")
    print("|---|---|---|---|---|---|")
    rows = [("batch", "1m", "vector", B, 64) for B in (8, 16, 32)]
    rows += [("length", "1m", "vector", 16, T) for T in (16, 32, 64)]
    rows += [("preset", preset, obs, 16, 64) for preset in presets for obs in ("vector", "image")]
    for what, preset, obs, B, T in rows:
        seconds = step_seconds(preset, obs, precision, repeats, B, T, compiled)
        print(f"| {what} | {preset} | {obs} | {B} | {T} | {seconds:.3f} |", flush=True)


def table_envs() -> None:
    walker = {"suite": "dmc", "task": "walker_walk", "action_repeat": 2, "obs": "pixels"}
    cartpole = {"suite": "gym", "task": "CartPole-v1", "action_repeat": 1, "obs": "proprio"}
    rows = [
        ("DMC walker_walk pixels, full-quality frames", {**walker, "fast_render": False}),
        ("DMC walker_walk pixels, fast_render", {**walker, "fast_render": True}),
        ("DMC walker_walk proprio (no frames)", {**walker, "obs": "proprio"}),
        ("Gymnasium CartPole-v1 vector", cartpole),
    ]
    print("| environment | env steps/s |")
    print("|---|---|")
    for name, env_config in rows:
        print(f"| {name} | {env_steps_per_second(env_config):.0f} |", flush=True)


def table_memory() -> None:
    buffer = ReplayBuffer(1000, OBS["image"], action_size=6)
    per_step = buffer.nbytes / buffer.capacity
    print(f"replay bytes per stored 64x64x3 step (6 action dims): {per_step:.0f}")
    print("(the image alone is 12,288 bytes; NaturalDreamer spends about 98,000)")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(f"peak resident memory of this benchmark process: {peak:.0f} MiB")


def project(csv_path: str, budgets=(1_000_000, 100_000)) -> list:
    """Lines: a run's pace over its last whole interval with updates (the final row, written
    after the final evaluation, is left out where there is an interval before it), and the
    wall time of each budget of env steps at that pace."""
    with open(csv_path, newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row.get("wall_seconds")]
    trained = [row for row in rows if float(row["gradient_steps"] or 0) > 0]
    if len(trained) < 2:
        return [f"{csv_path}: fewer than two rows with updates, no pace to project"]
    a, b = trained[-3:-1] if len(trained) >= 3 else trained[-2:]
    seconds = float(b["wall_seconds"]) - float(a["wall_seconds"])
    env = float(b["env_steps"]) - float(a["env_steps"])
    updates = float(b["gradient_steps"]) - float(a["gradient_steps"])
    lines = [
        f"pace from env step {a['env_steps']} to {b['env_steps']}: {env / seconds:.1f} env "
        f"steps/s, {1000 * seconds / max(updates, 1):.0f} ms per update (acting included)"
    ]
    for steps in budgets:
        hours = seconds / env * steps / 3600
        lines.append(f"projected wall time of {steps:,} env steps at that pace: {hours:.1f} h")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--tables", nargs="+", choices=TABLES, default=list(TABLES))
    parser.add_argument("--presets", nargs="+", default=["1m", "v1_s", "12m"])
    parser.add_argument("--obs", nargs="+", choices=list(OBS), default=list(OBS))
    parser.add_argument("--precision", nargs="+", choices=list(DTYPES), default=list(DTYPES))
    parser.add_argument(
        "--modes",
        nargs="+",
        choices=["eager", "compiled"],
        default=["eager", "compiled"],
        help="eager PyTorch and/or the compile: true agent (the scaling table uses the last)",
    )
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--device", default="auto", help='"auto", "cpu" or "cuda[:N]"')
    parser.add_argument("--project", metavar="CSV", help="a run's pace and projections, only")
    parser.add_argument(
        "--configs", nargs="+", default=available_configs(), help="the configs of the user table"
    )
    parser.add_argument("--quick", action="store_true", help="the 1m preset only, 3 repeats")
    args = parser.parse_args()
    if args.project:
        print("\n".join(project(args.project)))
        return
    global DEVICE
    DEVICE = pick_device(args.device)
    use_tf32(DEVICE)  # as the agents set it: the fp32 peak and rows alike (CUDA only)
    if args.quick:
        args.presets, args.repeats = ["1m"], 3
    heap = use_heap_allocator()  # as main.py runs: freed buffers stay in the process
    threads, why = choose_threads(0)  # as main.py chooses them
    print(
        f"torch {torch.__version__}, {threads} threads ({why}), {host()}, "
        f"freed memory kept for reuse: {'yes' if heap else 'no (not glibc)'}"
    )
    for table in args.tables:
        print(f"\n## {table}\n")
        if table == "user":
            table_user(args.configs, max(3, args.repeats // 3))
        elif table == "steps":
            table_steps(args.presets, args.obs, args.precision, args.modes, args.repeats)
        elif table == "scaling":
            compiled = args.modes[-1] == "compiled"
            table_scaling(args.presets, args.precision[-1], max(3, args.repeats // 3), compiled)
        elif table == "envs":
            table_envs()
        elif table == "paper":
            table_paper(args.presets, args.obs)
        else:
            table_memory()


if __name__ == "__main__":
    main()
