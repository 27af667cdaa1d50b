"""Choosing how this machine computes: threads, precision, torch.compile, the memory allocator.

Hosts differ. An Intel Sapphire Rapids CPU (AVX-512 BF16 and AMX) multiplies bfloat16
matrices about 5-9x faster than float32; an AMD EPYC with AVX2 only has no bfloat16 kernels
at all, so bf16 there runs PyTorch's reference loops, many times SLOWER than float32. The
config keys `precision: auto` and `compile: auto` (the defaults) therefore decide on the
machine the run starts on:

precision  "bf16" where the device has native bfloat16 (CUDA: is_bf16_supported; CPU: the
           avx512_bf16 or amx_bf16 flags) AND a model-shaped matrix product measures at least
           1.3x faster in bf16 than in fp32; otherwise "fp32".
           Under "bf16" the filtering loop (64 steps of 16 rows, one after another) may still
           be faster in float32: its products are too small for bf16's faster arithmetic to
           pay for the casts and the per-call cost of the bf16 kernels. One filtering step,
           timed both ways, decides (see choose_filter_precision): on a Sapphire Rapids host
           with AMX (2026-12-03) the 1m loop took 82 ms in fp32 and 109 ms in bf16 (the
           whole update 265 ms against 294), while the 12m update was 2.5% faster with the
           loop in bf16.
threads    one per core that no other process keeps busy, sampled from /proc/stat when the
           run starts (config `threads: 0`, or OMP_NUM_THREADS when the user exported it).
           Two threads on two cores when another run keeps one of them busy made every
           parallel region wait for the thread that shares its core: 0.161 s per smoke update
           beside one spinning process, 0.065 s with one thread (AMD EPYC, AVX-512 BF16,
           2026-12-02).
compile    on where the run's gradient steps repay a warm-up of 1-3 minutes (at least
           COMPILE_MIN_UPDATES) and the toolchain is there (a C++ compiler on a CPU, Triton
           on CUDA); otherwise off.

On CUDA (none of it measured yet: a GPU has not been lent; docs/performance.md "GPU: on
paper" projects what each is worth):

precision  "bf16" wherever the GPU multiplies bf16 natively (torch.cuda.is_bf16_supported:
           Ampere and newer), without timing it: tensor cores take bf16 at twice TF32's rate,
           and the filtering loop stays in bf16 (an eager step would time kernel launches,
           which the CUDA graphs below remove).
tf32       the float32 products left outside bf16 autocast (and every product under "fp32")
           in TF32 on GPUs of compute capability 8.0 and up (use_tf32).
compile    the sequential regions (a filtering step, an imagined step) with torch.compile's
           mode "reduce-overhead": each replayed as one CUDA graph, a single launch instead of
           dozens of kernels (compile_mode).
pinned     replay batches copied to the GPU from pinned memory without blocking, the next one
           sampled while the current update runs (loader.py, choose_pinned).

Each CUDA choice is made by a function of the device and a description of the GPU
(`cuda_facts`), so that tests on a CPU can ask what a GPU would get.

`use_heap_allocator` keeps freed memory inside the process: glibc hands every block above its
mmap threshold back to the kernel on free, and the next training step faults every page of
it in again (measured: 1.3 million minor faults and 2.7 s of system time per 12m image step;
45 thousand and 0.27 s with the setting). `pin_vector_width` (called by compile_networks) files
compiled graphs in inductor's disk cache by the CPU's vector width, so that a cache another
kind of CPU wrote is never read as this one's. Nothing here needs the user to export anything.
"""

import ctypes
import os
import shutil
import time
from contextlib import contextmanager
from functools import partial
from pathlib import Path

import torch

from natural_dreamer.networks import frozen

# Gradient steps below which torch.compile's warm-up costs more than it saves.
COMPILE_MIN_UPDATES = 1000
# How much faster bf16 must be, measured, before a run uses it.
BF16_MIN_SPEEDUP = 1.3
# How much faster one filtering step must be in float32, measured, before a bf16 run takes
# its filtering loop in float32. The eager step overstates fp32's gain in the compiled loop
# (AMX host: eager 1.3-1.4x for 1m, where the compiled loop gained 1.3x; 1.0-1.1x for
# 12m, whose compiled loop was faster in bf16), hence the margin.
FILTER_FP32_MIN_SPEEDUP = 1.2


def cpu_flags() -> set:
    """The CPU feature flags Linux reports (empty where /proc/cpuinfo does not exist)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    for line in text.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


def cuda_facts(device: torch.device) -> dict:
    """What the CUDA choices depend on, read from the GPU: {"name": str, "capability":
    (major, minor), "bf16": native bfloat16 products, "triton": whether Triton (which
    torch.compile writes CUDA kernels in) imports}. Tests pass such a dict instead."""
    try:
        import triton  # noqa: F401

        triton_found = True
    except ImportError:
        triton_found = False
    return {
        "name": torch.cuda.get_device_name(device),
        "capability": torch.cuda.get_device_capability(device),
        "bf16": torch.cuda.is_bf16_supported(),
        "triton": triton_found,
    }


def describe_gpu(gpu: dict) -> str:
    """ "NVIDIA H100 80GB HBM3, compute capability 9.0" """
    return f"{gpu['name']}, compute capability {'.'.join(map(str, gpu['capability']))}"


def native_bf16(device: torch.device, gpu: dict | None = None) -> tuple:
    """(True or False, why): does this device multiply bfloat16 natively? gpu: cuda_facts of
    a CUDA device (read from it when None)."""
    if device.type == "cuda":
        gpu = gpu or cuda_facts(device)
        if gpu["bf16"]:
            return True, f"CUDA bf16 ({describe_gpu(gpu)})"
        return False, f"this GPU has no bf16 ({describe_gpu(gpu)})"
    flags = cpu_flags()
    if not flags:  # not Linux: let the measurement decide
        return True, "unknown CPU"
    have = sorted(flags & {"avx512_bf16", "amx_bf16"})
    if have:
        return True, "+".join(have)
    return False, "no avx512_bf16/amx_bf16 on this CPU"


def cpu_model() -> str:
    """The CPU's model name as Linux reports it ("unknown CPU" where it does not)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown CPU"
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "unknown CPU"


def machine_id(device: torch.device) -> str:
    """What the measured choices depend on, in one line: the GPU's name, or the CPU's model
    and the vector instruction sets its kernels use. A checkpoint records it beside the
    choices, so that a run resumed on the same kind of machine keeps them (see
    Dreamer.keep_measured_choices)."""
    if device.type == "cuda":
        return f"cuda: {torch.cuda.get_device_name(device)}"
    vector = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    return f"cpu: {cpu_model()}; {' '.join(vector) or 'no AVX2'}"


def own_generator(device: torch.device) -> torch.Generator:
    """A random stream for a measurement's inputs, apart from the global one: what a
    start-up measurement draws must not move the training's random numbers, or one seed
    would train differently wherever the measurement runs (bf16 hosts under precision
    "auto") and wherever it does not (other hosts, a precision set in the config)."""
    return torch.Generator(device).manual_seed(0)


def round_seconds(fn, device: torch.device, calls: int) -> float:
    """Seconds per call of `calls` calls of fn, the device's queued work included."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return (time.perf_counter() - start) / calls


@contextmanager
def one_thread():
    """Measure per core: a busy neighbour core cannot skew a ratio taken on one thread."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def matmul_seconds(dtype, width: int, device: torch.device, rounds: int = 7) -> float:
    """Seconds of one (1024 x width) @ (width x 4 width) product, the shape of a hidden layer
    over the imagined batch: the fastest of `rounds` rounds of 5, so that another process on
    the machine does not decide the choice."""
    draw = own_generator(device)
    a = torch.randn(1024, width, device=device, generator=draw).to(dtype)
    b = torch.randn(width, 4 * width, device=device, generator=draw).to(dtype)
    a @ b
    return min(round_seconds(lambda: a @ b, device, 5) for _ in range(rounds))


def choose_precision(requested: str, device: torch.device, width: int, gpu=None) -> tuple:
    """(precision, why) for a config's `precision` ("auto", "bf16" or "fp32"). gpu: cuda_facts
    of a CUDA device (read from it when None)."""
    if requested != "auto":
        return requested, "set in the config"
    native, why = native_bf16(device, gpu)
    if not native:
        return "fp32", why
    if device.type == "cuda":  # tensor cores: bf16 at twice TF32's rate, nothing to measure
        return "bf16", why
    with one_thread():
        fp32 = matmul_seconds(torch.float32, width, device)
        bf16 = matmul_seconds(torch.bfloat16, width, device)
    speedup = fp32 / bf16
    choice = "bf16" if speedup >= BF16_MIN_SPEEDUP else "fp32"
    return choice, f"{why}, bf16 products measured {speedup:.1f}x fp32's speed"


def filter_step_seconds(rssm, rows: int, rounds: int = 9) -> tuple:
    """(bf16 seconds, fp32 seconds) of one eager filtering step of `rows` rows, forward and
    backward, as the training loop runs it: the weights frozen (RSSM.filter_batched takes
    their gradients in one batched pass), the gradient going back to the state. Timed under
    bf16 autocast and without it in alternating rounds of 3, the fastest round of each, so
    that a machine whose pace drifts moves both alike. Changes nothing in the model, and draws
    nothing from the global random stream."""
    device = rssm.cell.gates.weight.device
    state = rssm.initial(rows, device)
    draw = own_generator(device)
    embed_dim = rssm.posterior_net.in_dim - rssm.deter_dim
    embed = torch.randn(rows, embed_dim, device=device, generator=draw)
    action = torch.zeros(rows, rssm.action_size, device=device)
    is_first = torch.zeros(rows, dtype=torch.bool, device=device)
    uniform = torch.rand(rows, rssm.stoch, 1, device=device, generator=draw)

    def step(bf16):
        deter = state["deter"].clone().requires_grad_()
        inputs = (deter, state["stoch"], action, embed, is_first, uniform)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            new, _, logits = rssm.filter_step(*inputs)
        torch.autograd.grad(new.float().sum() + logits.float().sum(), deter)

    best = {True: float("inf"), False: float("inf")}
    # enable_grad: an agent may be built where gradients are off (scripts that only read a
    # checkpoint), and the loop it measures always takes them.
    with frozen(rssm.cell, rssm.posterior_net), torch.enable_grad():
        for bf16 in best:  # once untimed: first-call costs
            step(bf16)
        for _ in range(rounds):
            for bf16 in best:
                best[bf16] = min(best[bf16], round_seconds(partial(step, bf16), device, 3))
    return best[True], best[False]


def choose_filter_precision(precision: str, requested: str, rssm, rows: int) -> tuple:
    """(True or False, why): take the filtering loop in float32 under a bf16 run? Only where
    the config's precision is "auto" and chose bf16 (a precision set in the config is kept
    everywhere), and only where the step measures at least FILTER_FP32_MIN_SPEEDUP faster."""
    if precision != "bf16" or requested != "auto":
        return False, ""
    if rssm.cell.gates.weight.device.type == "cuda":
        return False, "filtering loop in bf16 (a GPU's eager step times kernel launches)"
    with one_thread():
        bf16, fp32 = filter_step_seconds(rssm, rows)
    speedup = bf16 / fp32
    measured = f"its {rows}-row step measured {speedup:.1f}x"
    if speedup >= FILTER_FP32_MIN_SPEEDUP:
        return True, f"filtering loop in fp32: {measured} faster"
    return False, f"filtering loop in bf16: {measured} as fast in fp32"


def choose_compile(requested, device: torch.device, updates: int, gpu=None) -> tuple:
    """(True or False, why) for a config's `compile` (True, False or "auto"). gpu: cuda_facts
    of a CUDA device (read from it when None)."""
    if requested is not True and requested != "auto":
        return False, "set in the config"
    if device.type == "cuda":
        if not (gpu or cuda_facts(device))["triton"]:
            return False, "no Triton for CUDA kernels"
    elif not any(shutil.which(name) for name in ("c++", "g++", "clang++")):
        if requested is True:
            return True, "set in the config"  # compile_networks names what to install
        return False, "no C++ compiler on PATH"
    if requested is True:
        return True, "set in the config"
    if updates < COMPILE_MIN_UPDATES:
        return False, f"{updates} updates do not repay the warm-up"
    return True, f"{updates} updates repay the 1-3 minute warm-up"


def use_tf32(device: torch.device, gpu: dict | None = None, apply: bool = True) -> tuple:
    """(True or False, why): take float32 matrix products and convolutions in TF32 (10-bit
    mantissa, float32's range) on this device? Yes on CUDA GPUs of compute capability 8.0
    and up (Ampere and newer); a CPU has no TF32. apply: set torch's CUDA backend flags
    accordingly (a setting of the whole process; leave it False to only ask)."""
    if device.type != "cuda":
        return False, "no TF32 off CUDA"
    gpu = gpu or cuda_facts(device)
    if tuple(gpu["capability"]) < (8, 0):
        return False, f"no TF32 before compute capability 8.0 ({describe_gpu(gpu)})"
    if apply:
        matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn
        if hasattr(matmul, "fp32_precision"):  # torch 2.9 and later
            matmul.fp32_precision = conv.conv.fp32_precision = "tf32"
        else:
            matmul.allow_tf32 = conv.allow_tf32 = True
    return True, "float32 products in TF32"


def compile_mode(device: torch.device) -> tuple:
    """(torch.compile mode, why) for the sequential regions, a filtering step and an imagined
    step, run 64 and 15 times one after another per update. On CUDA "reduce-overhead": each
    call replays one CUDA graph, a single launch for the dozens of kernels inside (on a GPU
    an eager 12m update is launch-bound, docs/performance.md "GPU: on paper"). Elsewhere
    "default" (why is empty: nothing to add to the start-up line)."""
    if device.type == "cuda":
        return "reduce-overhead", "filtering and imagination steps as CUDA graphs"
    return "default", ""


def choose_pinned(device: torch.device) -> tuple:
    """(True or False, why): copy replay batches to the device from pinned (page-locked)
    memory, without blocking? On CUDA yes: the copy then runs beside the GPU's work instead of
    making the host wait for it. Elsewhere the batch is used where it lies."""
    if device.type == "cuda":
        return True, "batches copied from pinned memory without blocking"
    return False, f"batches used in place on the {device.type}"


# torch's own default when this module was imported: one thread per physical core. The
# affinity below counts logical CPUs, and a second thread on a hyperthread only waits.
DEFAULT_THREADS = torch.get_num_threads()


def cpu_times() -> dict:
    """{cpu index: (busy, total)} jiffies of each CPU since boot, from /proc/stat ({} where
    it does not exist). Idle and I/O wait count as free; everything else (time stolen by the
    hypervisor included) as busy."""
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return {}
    times = {}
    for line in lines:
        name, *fields = line.split()
        if name.startswith("cpu") and name[3:].isdigit():
            values = [int(v) for v in fields[:8]]
            total = sum(values)
            times[int(name[3:])] = (total - values[3] - values[4], total)
    return times


def busy_cores(before: dict, after: dict, cores) -> float:
    """How many of `cores` other processes kept busy between two cpu_times() readings (this
    process sleeps in between, so the busy time is theirs)."""
    busy = 0.0
    for core in cores:
        if core in before and core in after:
            spent, total = (a - b for a, b in zip(after[core], before[core], strict=True))
            busy += spent / total if total > 0 else 0.0
    return busy


def choose_threads(requested: int, sample_seconds: float = 0.25) -> tuple:
    """Set torch's CPU threads; returns (threads, why). requested: the config's `threads`
    (0 = auto: one per core of this process's affinity that other processes leave free, at
    most torch's default)."""
    if requested > 0:
        torch.set_num_threads(requested)
        return requested, "set in the config"
    if os.environ.get("OMP_NUM_THREADS"):
        return torch.get_num_threads(), "OMP_NUM_THREADS"
    cores = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    if not cores:
        return torch.get_num_threads(), "torch's default"
    before = cpu_times()
    time.sleep(sample_seconds)
    busy = round(busy_cores(before, cpu_times(), cores))
    threads = max(1, min(DEFAULT_THREADS, len(cores) - busy))
    torch.set_num_threads(threads)
    if busy == 0:
        return threads, f"{len(cores)} free core(s)"
    return threads, f"{busy} of {len(cores)} cores busy with other processes"


def planned_updates(config) -> int:
    """Gradient steps the config's budget pays for (train_ratio per policy step)."""
    train, wm = config.train, config.world_model
    policy_steps = max(train.steps - train.prefill, 0) / config.env.action_repeat
    return int(policy_steps * train.train_ratio / (wm.batch_size * wm.batch_length))


_HEAP_SET = False


def use_heap_allocator() -> bool:
    """Ask glibc to keep freed memory for reuse instead of returning it to the kernel
    (mallopt M_MMAP_MAX = 0, M_TRIM_THRESHOLD = 1 GiB). Returns whether it took effect;
    elsewhere (macOS, musl) it does nothing."""
    global _HEAP_SET
    if _HEAP_SET:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    _HEAP_SET = bool(libc.mallopt(m_mmap_max, 0)) and bool(libc.mallopt(m_trim_threshold, 2**30))
    return _HEAP_SET


def pin_vector_width() -> int:
    """Write the vector width torch.compile's C++ kernels are generated for (this CPU's widest
    that the compiler builds: 512 bits with AVX-512, 256 with AVX2) into inductor's config,
    and return it (0: no vector instructions, scalar code).

    Inductor caches compiled graphs on disk under a key made from the graph and its config,
    and in torch 2.13 nothing in that key says which vector width the kernels were written
    for. A cache written on a CPU of another width (a TORCHINDUCTOR_CACHE_DIR on a shared
    disk, a copied home or container) is then read back as if it were this CPU's, and its
    kernels compute garbage: a small compiled function written with AVX-512 and read back
    under AVX2 was off by 897 and freed an invalid pointer on exit (AMD EPYC with AVX-512,
    2026-12-06; the pendulum agent's training step corrupted the heap). With the width in
    the config it is in the key, and each width finds only its own graphs. A width the
    user set (config.cpp.simdlen) is kept."""
    from torch._inductor import config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    if config.cpp.simdlen is None:
        config.cpp.simdlen = pick_vec_isa().bit_width()
    return config.cpp.simdlen
