"""The fast path: no reference kernels, precision and compile chosen by the machine, and no
page faults from freed buffers."""

import os
import re
import resource
import select
import subprocess
import sys
import time

import pytest
import torch
from torch.profiler import ProfilerActivity, profile

from natural_dreamer import Dreamer, distributions, fastpath, load_config
from natural_dreamer.dreamer import compile_networks
from natural_dreamer.fastpath import choose_compile, choose_precision, planned_updates

from conftest import IMAGE, VECTOR, random_batch, tiny_config

CPU = torch.device("cpu")


def test_a_small_image_agent_under_the_defaults_runs_no_reference_kernel():
    """PyTorch falls back to slow_conv2d / slow_conv_transpose2d where oneDNN has no kernel
    (bf16 on a CPU without native bf16): the defaults must never land there."""
    config = load_config("smoke", {"world_model.batch_size": 2, "world_model.batch_length": 8})
    agent = Dreamer(IMAGE, 3, False, config)
    batch = random_batch(IMAGE, 3, False, B=2, T=8)
    agent.train_step(batch)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        agent.train_step(batch)
    names = {event.key for event in prof.key_averages()}
    assert any("conv" in name for name in names)  # the convolutions were seen
    slow = sorted(name for name in names if "slow" in name or "reference" in name)
    assert not slow, f"reference kernels on the hot path (precision {agent.precision}): {slow}"


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_compiled_heads_on_imagined_features_take_plain_matrix_products(precision):
    """A strided 3-D input (feats[:, :-1]) reached torch.compile'd layers as a batched
    product with the weight copied once per row: 2.2 s per 12m update in bf16, 0.5 s in
    fp32. Block products have one batch entry per block (at most 8); nothing else may."""
    overrides = {"compile": True, "precision": precision, "behavior.horizon": 3}
    overrides |= {"world_model.batch_size": 4, "world_model.batch_length": 8}
    config = load_config("smoke", overrides)
    agent = Dreamer(VECTOR, 3, False, config)
    batch = random_batch(VECTOR, 3, False, B=4, T=8)
    agent.train_step(batch)
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        agent.train_step(batch)
    shapes = [e.input_shapes for e in prof.events() if e.name == "aten::bmm" and e.input_shapes]
    assert shapes, "no block products seen"
    blocks = agent.world_model.rssm.cell.gates.weight.shape[0]
    wide = [shape for shape in shapes if shape[0][0] > blocks]
    assert not wide, f"batched products over rows, with the weight copied per row: {wide[:3]}"


def test_a_training_step_builds_one_graph_per_region_and_kind_of_sequential_step(monkeypatch):
    """torch.compile builds a new graph whenever a function meets a new kind of input (one
    that needs a gradient where the last did not, a view instead of a fresh tensor, a cache
    it read that has changed, ...), and each graph is 5-30 s of a cold start. However many
    steps a training step filters and imagines, the filtering step is two graphs (the loop,
    and the pass that takes its weight gradients), the imagined step one, and the losses
    after each loop one each, in the first training step and never again. Counted through
    compile_networks with a backend that only counts graphs, so no C++ is compiled; the
    two-hot bins' cache starts empty, as in a fresh process."""
    monkeypatch.setattr(distributions, "_BINS_CACHE", {})
    torch._dynamo.reset()
    agent = Dreamer(VECTOR, 3, False, tiny_config(compile=False, **{"behavior.horizon": 5}))
    regions = ("filter_step", "rollout_step", "prediction_losses", "rollout_losses")
    graphs = dict.fromkeys(regions, 0)
    real_compile = torch.compile

    def counting_compile(fn=None, **kwargs):
        name = getattr(fn, "__name__", "")

        def backend(graph_module, example_inputs):
            if name in graphs:
                graphs[name] += 1
            return graph_module.forward

        return real_compile(fn, **{**kwargs, "backend": backend})

    monkeypatch.setattr(torch, "compile", counting_compile)
    compile_networks(agent)
    batch = random_batch(VECTOR, 3, False, B=3, T=6)
    try:
        agent.train_step(batch)
        first = dict(graphs)
        agent.train_step(batch)
    finally:
        torch._dynamo.reset()  # no later test meets these graphs
    expected = {"filter_step": 2, "rollout_step": 1, "prediction_losses": 1, "rollout_losses": 1}
    assert first == expected
    assert graphs == expected, "the second training step compiled again"


def test_compiled_networks_take_their_python_floats_as_constants(monkeypatch):
    """Left to dynamo's default, every Python float a compiled region reads (RMSNorm's eps,
    the unimix share) becomes a graph input: a 0-d tensor built from it before every call,
    6 per filtering step, 64 steps per update. compile_networks compiles them in as the
    constants they are. Seen through a backend that records each graph's inputs."""
    monkeypatch.setattr(torch._dynamo.config, "specialize_float", False)  # restored after
    inputs = []

    def recording(graph_module, example_inputs):
        inputs.append(example_inputs)
        return graph_module.forward

    real_compile = torch.compile
    monkeypatch.setattr(
        torch, "compile", lambda fn=None, **kw: real_compile(fn, **{**kw, "backend": recording})
    )
    torch._dynamo.reset()
    agent = Dreamer(VECTOR, 3, False, tiny_config(compile=False, **{"behavior.horizon": 3}))
    compile_networks(agent)
    try:
        agent.train_step(random_batch(VECTOR, 3, False, B=3, T=6))
    finally:
        torch._dynamo.reset()  # no later test meets these graphs
    assert len(inputs) >= 5  # the MLPs, the filtering and imagined steps were compiled
    # 0-d state of the agent (the return normaliser's running range) is an input by right.
    state = {id(t) for t in agent.state_dict(keep_vars=True).values()}
    scalars = [
        x
        for graph in inputs
        for x in graph
        if isinstance(x, torch.Tensor) and x.dim() == 0 and id(x) not in state
    ]
    assert not scalars, f"{len(scalars)} Python floats passed as 0-d tensors: {scalars[:6]}"


def test_no_native_bf16_means_fp32_without_measuring(monkeypatch):
    monkeypatch.setattr(fastpath, "cpu_flags", lambda: {"avx2", "fma"})
    monkeypatch.setattr(fastpath, "matmul_seconds", lambda *a, **k: pytest.fail("measured"))
    precision, why = choose_precision("auto", CPU, 64)
    assert precision == "fp32" and "no avx512_bf16" in why


@pytest.mark.parametrize("bf16_seconds, expected", [(1.0, "fp32"), (0.5, "bf16")])
def test_native_bf16_is_used_only_where_it_measures_faster(monkeypatch, bf16_seconds, expected):
    monkeypatch.setattr(fastpath, "cpu_flags", lambda: {"amx_bf16", "avx512_bf16"})
    seconds = {torch.float32: 1.0, torch.bfloat16: bf16_seconds}
    monkeypatch.setattr(fastpath, "matmul_seconds", lambda dtype, *a, **k: seconds[dtype])
    precision, why = choose_precision("auto", CPU, 64)
    assert precision == expected and f"{1 / bf16_seconds:.1f}x" in why


def test_a_set_precision_is_kept():
    assert choose_precision("bf16", CPU, 64) == ("bf16", "set in the config")


def test_a_set_precision_keeps_the_filtering_loop_in_it(monkeypatch):
    monkeypatch.setattr(fastpath, "filter_step_seconds", lambda *a, **k: pytest.fail("measured"))
    rssm = Dreamer(VECTOR, 3, False, tiny_config()).world_model.rssm
    assert fastpath.choose_filter_precision("bf16", "bf16", rssm, 16) == (False, "")
    assert fastpath.choose_filter_precision("fp32", "auto", rssm, 16) == (False, "")


@pytest.mark.parametrize("fp32_seconds, expected", [(1.0, False), (0.7, True)])
def test_the_filtering_loop_goes_fp32_only_where_it_measures_faster(
    monkeypatch, fp32_seconds, expected
):
    monkeypatch.setattr(fastpath, "filter_step_seconds", lambda rssm, rows: (1.0, fp32_seconds))
    monkeypatch.setattr(fastpath, "cpu_flags", lambda: {"amx_bf16", "avx512_bf16"})
    monkeypatch.setattr(fastpath, "matmul_seconds", lambda dtype, *a, **k: dtype.itemsize / 4)
    agent = Dreamer(VECTOR, 3, False, tiny_config(precision="auto"))
    assert agent.precision == "bf16"
    assert agent.world_model.rssm.filter_fp32 is expected
    assert agent.precision_label == ("bf16 (filtering loop fp32)" if expected else "bf16")
    fp32 = f"filtering loop in fp32: its 4-row step measured {1 / fp32_seconds:.1f}x faster"
    assert (fp32 if expected else "filtering loop in bf16") in agent.precision_reason


def test_timing_a_filtering_step_changes_nothing_in_the_model():
    rssm = Dreamer(VECTOR, 3, False, tiny_config()).world_model.rssm
    before = {k: v.clone() for k, v in rssm.state_dict().items()}
    bf16, fp32 = fastpath.filter_step_seconds(rssm, 16, rounds=2)
    assert bf16 > 0 and fp32 > 0
    with torch.no_grad():  # as scripts that only read a checkpoint build their agent
        assert min(fastpath.filter_step_seconds(rssm, 16, rounds=1)) > 0
    assert all(torch.equal(before[k], v) for k, v in rssm.state_dict().items())
    assert all(p.grad is None and p.requires_grad for p in rssm.parameters())


def test_the_start_up_measurements_draw_nothing_from_the_training_stream():
    # Where they run (precision "auto" on a bf16 host) and where they do not, one seed must
    # give the same random numbers after the agent is built: once a change of the
    # measurement (two draws of its inputs became one) silently changed every later run.
    rssm = Dreamer(VECTOR, 3, False, tiny_config()).world_model.rssm
    torch.manual_seed(0)
    expected = torch.rand(8)
    torch.manual_seed(0)
    fastpath.matmul_seconds(torch.float32, 16, CPU, rounds=1)
    fastpath.filter_step_seconds(rssm, 4, rounds=1)
    assert torch.equal(torch.rand(8), expected)


def test_compile_auto_weighs_the_warm_up_against_the_run(monkeypatch):
    assert choose_compile("auto", CPU, 100)[0] is False
    assert choose_compile("auto", CPU, 50_000)[0] is True
    assert choose_compile(False, CPU, 50_000)[0] is False
    monkeypatch.setattr(fastpath.shutil, "which", lambda name: None)
    on, why = choose_compile("auto", CPU, 50_000)
    assert on is False and "no C++ compiler" in why


def test_planned_updates_follow_the_train_ratio():
    config = load_config("walker_walk_proprio")
    # (100k - 5k prefill) env steps / repeat 2 * 512 / 1024 = 23,750 updates
    assert planned_updates(config) == 23_750
    assert planned_updates(load_config("smoke")) == 100


def test_freed_buffers_stay_in_the_process():
    """With the heap allocator a large buffer allocated again faults no pages in. 48 MiB:
    above 32 MiB, the most glibc's own sliding mmap threshold rises to, so that without the
    setting every call maps and faults the whole buffer (a 16 MiB buffer is reused either
    way once a first free has raised that threshold: this test could not fail at that size);
    below the 64 MiB a thread on a secondary malloc arena serves from its heaps."""
    if not fastpath.use_heap_allocator():
        pytest.skip("not glibc: mallopt is not available")

    def faults_of_one_buffer() -> int:
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        buffer = torch.ones(12 * 2**20)  # 48 MiB, every page written
        del buffer
        return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before

    # The heap first grows a few regions (a small block freed later sits above each,
    # and an aligned request does not fit a freed region exactly): seen on the AVX-512 BF16
    # EPYC host, up to 5 calls under pytest before every call reused one, and on the
    # AVX2-only EPYC once more after 8 (at 16 MiB). So: most calls reuse, not all of them.
    for _ in range(8):
        faults_of_one_buffer()
    pages = 48 * 2**20 // resource.getpagesize()
    faults = [faults_of_one_buffer() for _ in range(8)]
    assert sum(faults) < 2 * pages, faults  # without the setting: every page (12k), every call
    assert sorted(faults)[len(faults) // 2] < pages // 10, faults  # the median call reuses


def test_the_user_table_times_a_config_as_it_runs(capsys):
    """bench --tables user: one row per config with its own settings, its updates and the
    projected time of its budget."""
    from natural_dreamer import bench

    bench.table_user(["smoke"], repeats=1)
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    name, preset, obs, shape, precision, compiled, warmup, seconds, updates, projected = cells
    assert (name, preset, obs, shape) == ("smoke", "1m", "proprio", "4 x 16")
    assert compiled == "off"  # 100 updates do not repay a compile
    assert float(seconds) > 0 and updates == "100" and projected.endswith(("min", "h"))


def test_the_steps_table_counts_a_1m_update_and_its_rate(capsys):
    """bench --tables steps, one row: the 1m vector update's FLOPs as torch's counter sees
    them (29.4 GFLOP: products and their gradients over a 16 x 64 batch and 15 imagined
    steps), and the rate and share of the peak computed from the measured seconds."""
    from natural_dreamer import bench

    bench.row_steps("1m", "vector", "fp32", "eager", repeats=1, peak=50e9)
    row = capsys.readouterr().out.strip().splitlines()[-1]
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[:4] == ["1m", "vector", "fp32", "eager"]
    step, world_model, imagination, actor_critic, gflop, rate = map(float, cells[4:10])
    assert gflop == 29.4
    assert min(world_model, imagination, actor_critic) > 0 and step > 0
    assert abs(rate - gflop / step) <= 0.5 + 0.01 * rate  # printed rounded to 1 GFLOP/s
    assert abs(float(cells[10].rstrip("%")) - 100 * gflop / step / 50) <= 1  # of the 50 GFLOP/s


def load_profile_step():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "scripts" / "profile_step.py"
    spec = importlib.util.spec_from_file_location("profile_step", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_profile_step_sums_the_time_of_compiled_kernels_products_and_the_rest_by_kind():
    """profile_step --kernels: each event goes to one kind (names as torch 2.13's profiler
    records them with inductor's kernel profile on), and the kinds add up to the whole."""
    from types import SimpleNamespace as Event

    profile_step = load_profile_step()
    events = [  # (key, self time in microseconds, calls) over 2 profiled steps
        ("graph_8_cpp_fused__to_copy_exp_log_logsumexp_sub_view_11", 6000, 28),
        ("graph_2_cpp_fused__to_copy__unsafe_view_clone_slice_transpose_4", 2000, 126),
        ("aten::addmm", 5000, 1000),
        ("aten::bmm", 3000, 500),
        ("aten::copy_", 1000, 4000),
        ("aten::mul", 2000, 1200),
        ("## Call CompiledFxGraph fpblq5rcj5cte ##", 1000, 140),
        ("TorchDynamo Cache Lookup", 0, 180),
    ]
    events = [Event(key=k, self_cpu_time_total=us, count=n) for k, us, n in events]
    rows = {name: rest for name, *rest in profile_step.time_by_kind(events, 2)}
    assert list(rows) == list(profile_step.KINDS)
    assert rows["generated kernels"] == [4.0, 8000 / 20000, 77]
    assert rows["matrix products"] == [4.0, 8000 / 20000, 750]
    assert rows["copies and casts"] == [0.5, 1000 / 20000, 2000]
    assert rows["other operators"] == [1.0, 2000 / 20000, 600]
    assert rows["the rest (graph calls, autograd, Python)"] == [0.5, 1000 / 20000, 160]
    assert sum(share for _, share, _ in rows.values()) == pytest.approx(1.0)


def test_profile_step_kernels_on_an_eager_agent_says_there_are_none_and_still_sums(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "scripts/profile_step.py", "smoke", "--set", "compile=false"]
    command += ["--kernels", "--steps", "1", "--warmup", "1", "--rows", "3"]
    out = subprocess.run(command, cwd=root, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "compile off" in out.stdout and "not compiled, so no generated kernels" in out.stdout
    lines = {line[:42].strip(): line[42:].split() for line in out.stdout.splitlines()}
    assert float(lines["generated kernels"][0]) == 0.0  # ms/step
    assert float(lines["matrix products"][0]) > 0.0
    assert float(lines["other operators"][0]) > 0.0


def test_busy_cores_counts_the_time_other_processes_kept_each_core_busy():
    before = {0: (100, 1000), 1: (500, 1000), 2: (0, 1000)}
    after = {0: (190, 1100), 1: (510, 1100), 2: (100, 1100)}  # core 0 90% busy, 1 10%, 2 100%
    assert fastpath.busy_cores(before, after, [0, 1]) == pytest.approx(1.0)
    assert fastpath.busy_cores(before, after, [0, 1, 2]) == pytest.approx(2.0)
    assert fastpath.busy_cores(before, after, [7]) == 0.0  # a core /proc/stat does not list


def test_cpu_times_reads_every_core_of_this_machine():
    times = fastpath.cpu_times()
    assert set(os.sched_getaffinity(0)) <= set(times)
    assert all(0 <= busy <= total for busy, total in times.values())


def test_a_core_a_process_spins_on_reads_as_busy():
    """Whatever else the machine runs, the core a spinner is pinned to is busy, and
    cpu_times must say so (reading idle time as busy, or the wrong column, would not)."""
    core = max(os.sched_getaffinity(0))
    # The child pins itself and says so just before it spins: the measurement starts only
    # then, however long a loaded machine takes to start it.
    code = (
        f"import os, time\nos.sched_setaffinity(0, {{{core}}})\nprint('spinning', flush=True)\n"
        "end = time.time() + 30\nwhile time.time() < end: pass"
    )
    spinner = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([spinner.stdout], [], [], 20)
        assert ready, "the spinner did not start spinning within 20 s"
        assert spinner.stdout.readline().strip() == "spinning"
        before = fastpath.cpu_times()
        time.sleep(0.5)
        busy = fastpath.busy_cores(before, fastpath.cpu_times(), [core])
    finally:
        spinner.kill()
        spinner.wait()
        spinner.stdout.close()
    assert busy > 0.85, busy


def test_a_core_kept_busy_by_another_process_gets_no_thread(monkeypatch):
    """Two threads on two cores, one of them shared with another run: every parallel region
    waits for the thread that shares a core (0.161 s per smoke update against 0.065 s with
    one thread, beside one spinning process)."""
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1})
    readings = iter([{0: (0, 100), 1: (0, 100)}, {0: (95, 200), 1: (5, 200)}])
    monkeypatch.setattr(fastpath, "cpu_times", lambda: next(readings))
    saved = torch.get_num_threads()
    try:
        assert fastpath.choose_threads(0, sample_seconds=0) == (
            1,
            "1 of 2 cores busy with other processes",
        )
        assert torch.get_num_threads() == 1
        readings = iter([{0: (0, 100), 1: (0, 100)}, {0: (10, 200), 1: (5, 200)}])
        monkeypatch.setattr(fastpath, "DEFAULT_THREADS", 2)
        assert fastpath.choose_threads(0, sample_seconds=0) == (2, "2 free core(s)")
        assert torch.get_num_threads() == 2
        # Four idle logical CPUs on two physical cores (torch's default): two threads.
        monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 1, 2, 3})
        idle = {core: (0, 100) for core in range(4)}
        readings = iter([idle, {core: (1, 200) for core in range(4)}])
        assert fastpath.choose_threads(0, sample_seconds=0)[0] == 2
    finally:
        torch.set_num_threads(saved)


def test_threads_from_the_config_or_from_omp_num_threads_are_kept(monkeypatch):
    saved = torch.get_num_threads()
    try:
        assert fastpath.choose_threads(1) == (1, "set in the config")
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        monkeypatch.setattr(fastpath, "cpu_times", lambda: pytest.fail("sampled"))
        assert fastpath.choose_threads(0, sample_seconds=0) == (1, "OMP_NUM_THREADS")
    finally:
        torch.set_num_threads(saved)


def test_compile_census_names_every_graph_and_why_it_is_new():
    command = [sys.executable, "scripts/compile_census.py", "smoke", "--backend", "eager"]
    out = subprocess.run(command + ["--steps", "2"], capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [
        line.split(None, 2) for line in out.stdout.splitlines() if re.match(r"\s+\d+/\d+ ", line)
    ]
    functions = [row[2] for row in rows]
    assert sum(f.startswith("rollout_step") for f in functions) == 1
    # The filter loop, its weight-gradient pass, and acting (no gradient, no autocast). The
    # pass differs from the loop by its inputs' requires_grad, or where the loop runs in
    # fp32 under bf16 (fastpath.choose_filter_precision, host-dependent) by autocast.
    filters = [f for f in functions if f.startswith("filter_step")]
    assert len(filters) == 3 and "first graph" in filters[0]
    fp32_loop = "precision bf16 (filtering loop fp32)" in out.stdout
    assert ("autocast(cpu)_enabled" if fp32_loop else "requires_grad mismatch") in filters[1]
    assert "GLOBAL_STATE changed: grad_mode" in filters[2]
    assert f"{len(rows)} graphs traced" in out.stdout
    assert re.search(r"first training step [\d.]+ s, first act [\d.]+ s", out.stdout)


@pytest.mark.parametrize(
    "flags, what, floats",
    [
        ([], "16 filtering steps of 4 rows", "constants"),
        (["--floats-as-inputs", "--whole-update"], "training steps", "graph inputs"),
    ],
)
def test_the_filter_loop_benchmark_times_a_configs_loop(flags, what, floats):
    command = [sys.executable, "scripts/bench_filter_loop.py", "smoke", "--repeats", "2", *flags]
    out = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    assert re.search(rf"smoke: {what}, .* floats as {floats}.*median [\d.]+ ms", out.stdout)


def test_compiling_the_networks_pins_the_vector_width():
    """compile_networks writes this CPU's vector width into inductor's config, which is part of
    the key its disk cache files compiled graphs under (see the test below)."""
    from torch._inductor import config as inductor_config
    from torch._inductor.cpu_vec_isa import pick_vec_isa

    # config.patch, not monkeypatch: pytest would restore the setting by deleting it (the
    # class inductor's config replaces has no such attribute), which hides it for good.
    with inductor_config.patch({"cpp.simdlen": None}):
        width = pick_vec_isa().bit_width()
        agent = Dreamer(VECTOR, 3, False, tiny_config(compile=False))
        try:
            compile_networks(agent)
            assert inductor_config.cpp.simdlen == width
        finally:
            torch._dynamo.reset()


# A compiled function's values and gradient against eager PyTorch's, in a process whose vector
# width ATEN_CPU_CAPABILITY may narrow (as if on another CPU); the inductor cache is the
# caller's. Prints the largest difference.
COMPILED_AGAINST_EAGER = """
import torch
from natural_dreamer.fastpath import pin_vector_width

width = pin_vector_width()

def f(x, w):
    h = torch.nn.functional.silu(x @ w)
    return (h * h.sigmoid()).sum(-1), torch.softmax(h, -1)

def values_and_gradient(g):
    a, b = g(x, w)
    (a.sum() + b.square().sum()).backward()
    grad, w.grad = w.grad, None
    return [a.detach(), b.detach(), grad]

x = torch.randn(37, 100, generator=torch.Generator().manual_seed(0))
w = torch.randn(100, 203, generator=torch.Generator().manual_seed(1), requires_grad=True)
compiled = values_and_gradient(torch.compile(f, dynamic=True))
eager = values_and_gradient(f)
diff = max((c - e).abs().max().item() for c, e in zip(compiled, eager))
print(f"width {width} diff {diff}")
"""


def test_a_compile_cache_written_at_one_vector_width_is_not_read_at_another(tmp_path):
    """torch 2.13's inductor cache key does not say which vector width its C++ kernels were
    written for: without pin_vector_width, an AVX2 process reading the graphs an AVX-512 one
    had cached computed garbage (this test's function off by 1018; AMD EPYC with AVX-512,
    2026-12-06). One cache, three widths one after another: this CPU's own, AVX2, scalar.
    On an AVX2-only host the first two are one width, and the check is that the scalar
    process reads nothing wrong."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    widths = []
    for capability in (None, "avx2", "default"):
        env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(tmp_path), "PYTHONPATH": root}
        env.pop("ATEN_CPU_CAPABILITY", None)
        if capability:
            env["ATEN_CPU_CAPABILITY"] = capability
        command = [sys.executable, "-c", COMPILED_AGAINST_EAGER]
        out = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{capability}: {out.stderr[-3000:]}"
        width, diff = re.search(r"width (\d+) diff (\S+)", out.stdout).groups()
        assert float(diff) < 1e-3, f"{capability} (width {width}): compiled differs by {diff}"
        widths.append(int(width))
    assert widths[2] == 0  # scalar code


def test_profile_step_products_gives_each_shape_its_gflop_and_rate():
    """profile_step --products: a row per product and input shape, dearest first, with the
    profiler's FLOP count turned into GFLOP per step and GFLOP/s; other operators left out."""
    from types import SimpleNamespace as Event

    profile_step = load_profile_step()
    events = [  # over 2 profiled steps
        Event(key="aten::addmm", self_cpu_time_total=4000, count=8, flops=6e8,
              input_shapes=[[64], [1024, 640], [640, 64], [], []]),
        Event(key="aten::bmm", self_cpu_time_total=10000, count=2, flops=4e9,
              input_shapes=[[8, 1024, 64], [8, 64, 192]]),
        Event(key="aten::mul", self_cpu_time_total=50000, count=100, flops=1e8,
              input_shapes=[[1024, 64], [1024, 64]]),
    ]  # fmt: skip
    rows = profile_step.product_rows(events, 2)
    assert [row[4] for row in rows] == ["aten::bmm", "aten::addmm"]
    ms, calls, gflop, rate, _, shapes = rows[0]
    assert (ms, calls, gflop) == (5.0, 1.0, 2.0) and rate == pytest.approx(400.0)
    assert shapes == [[8, 1024, 64], [8, 64, 192]]
    assert rows[1][:4] == (2.0, 4.0, 0.3, pytest.approx(150.0))
    assert rows[1][5] == [[64], [1024, 640], [640, 64]]


def test_emulate_avx2_runs_a_script_as_on_a_host_without_avx512(tmp_path):
    """scripts/emulate_avx2.py: torch at AVX2, no native bf16 for the program's choices, an
    inductor cache of the run's own (a shared one would mix vector widths), and the same in
    a Python process the script starts."""
    script = tmp_path / "probe.py"
    child = "import torch; from natural_dreamer import fastpath; "
    child += "print('child', fastpath.native_bf16(torch.device('cpu'))[0])"
    script.write_text(
        "import os, subprocess, sys, torch\n"
        "from natural_dreamer import fastpath\n"
        "print(torch.backends.cpu.get_cpu_capability(), sys.argv[1:],\n"
        "      fastpath.native_bf16(torch.device('cpu'))[0], os.environ['ONEDNN_MAX_CPU_ISA'],\n"
        "      os.path.basename(os.environ['TORCHINDUCTOR_CACHE_DIR'])[:14])\n"
        f"subprocess.run([sys.executable, '-c', {child!r}], check=True)\n"
    )
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {k: v for k, v in os.environ.items() if k != "TORCHINDUCTOR_CACHE_DIR"}
    command = [sys.executable, os.path.join(root, "scripts", "emulate_avx2.py"), str(script)]
    out = subprocess.run(command + ["--x", "1"], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = out.stdout.splitlines()
    assert lines[0].startswith("emulating AVX2: torch CPU capability AVX2")
    assert lines[1] == "AVX2 ['--x', '1'] False AVX2 inductor_avx2_"
    assert lines[2] == "child False"  # a process it started: no native bf16 either


def test_a_resumed_run_keeps_the_precisions_measured_on_the_machine_that_chose_them(
    tmp_path, monkeypatch
):
    """A start-up measurement near its threshold can fall either way from one start to the
    next. A run resumed on the machine that measured its choices keeps them (so it goes on as
    the run it continues); on another machine, with a precision set in the config, or from a
    checkpoint whose precision was set rather than measured, the resumed run's own choice
    holds, and its reason says how the run computed before."""
    from natural_dreamer import dreamer
    from natural_dreamer.loop import Trainer

    monkeypatch.setattr(fastpath, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setattr(fastpath, "matmul_seconds", lambda dtype, *a, **k: dtype.itemsize / 4)
    monkeypatch.setattr(fastpath, "filter_step_seconds", lambda rssm, rows: (1.0, 0.8))
    config = load_config("smoke", {"train.video": False})
    first = Trainer(config, root=tmp_path, quiet=True)
    assert first.agent.precision_label == "bf16 (filtering loop fp32)"
    measured, first_choices = first.agent.precision_reason, first.agent.measured_choices()
    for _ in range(20):  # a checkpoint resumes only with replayed data in it
        first.collector.step(first.random_policy)
    first.save("latest")

    # The next start measures the loop 1.19x faster in fp32: bf16 by its own measurement.
    monkeypatch.setattr(fastpath, "filter_step_seconds", lambda rssm, rows: (1.0, 0.84))
    resumed = Trainer(config, root=tmp_path, quiet=True)
    assert resumed.agent.precision_label == "bf16"
    resumed.resume("latest")
    assert resumed.agent.precision_label == "bf16 (filtering loop fp32)"
    assert (
        resumed.agent.precision_reason
        == f"kept from the checkpoint, measured on this machine: {measured}"
    )
    # Saved again, the checkpoint records the measurement itself, not a chain of "kept".
    assert resumed.agent.measured_choices()["reason"] == measured

    monkeypatch.setattr(dreamer, "machine_id", lambda device: "cpu: another model; avx2")
    elsewhere = Trainer(config, root=tmp_path, quiet=True)
    elsewhere.resume("latest")
    assert elsewhere.agent.precision_label == "bf16"
    assert "kept" not in elsewhere.agent.precision_reason
    before = "bf16 (filtering loop fp32) on cpu: "
    assert f"; the run so far computed in {before}" in elsewhere.agent.precision_reason

    monkeypatch.undo()
    set_fp32 = Trainer(
        load_config("smoke", {"train.video": False, "precision": "fp32"}), root=tmp_path, quiet=True
    )
    set_fp32.resume("latest")
    assert set_fp32.agent.precision_label == "fp32"
    assert set_fp32.agent.precision_reason.startswith(
        f"set in the config; the run so far computed in {before}"
    )
    # A precision that was set, not measured, is no measurement to keep: `auto` measures.
    set_fp32.save("latest")
    monkeypatch.setattr(fastpath, "cpu_flags", lambda: {"avx2", "avx512f", "avx512_bf16"})
    monkeypatch.setattr(fastpath, "matmul_seconds", lambda dtype, *a, **k: dtype.itemsize / 4)
    monkeypatch.setattr(fastpath, "filter_step_seconds", lambda rssm, rows: (1.0, 1.0))
    auto_again = Trainer(config, root=tmp_path, quiet=True)
    auto_again.resume("latest")
    assert "kept" not in auto_again.agent.precision_reason
    assert "; the run so far computed in fp32 on cpu: " in auto_again.agent.precision_reason
    # Checkpoints from before the "measured" key: a set precision's reason said so.
    legacy = {key: value for key, value in first_choices.items() if key != "measured"}
    assert not auto_again.agent.keep_measured_choices({**legacy, "reason": "set in the config"})
    assert auto_again.agent.keep_measured_choices(legacy)
    assert auto_again.agent.precision_label == "bf16 (filtering loop fp32)"


def test_the_machine_id_names_the_cpu_model_and_its_vector_sets(monkeypatch):
    monkeypatch.setattr(fastpath, "cpu_flags", lambda: {"fpu", "avx2", "amx_bf16", "sse4_2"})
    assert re.fullmatch(r"cpu: .+; amx_bf16 avx2", fastpath.machine_id(CPU))
    monkeypatch.setattr(fastpath, "cpu_flags", lambda: {"fpu", "avx2"})
    assert fastpath.machine_id(CPU).endswith("; avx2")
