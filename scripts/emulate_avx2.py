"""Run a script or module as if on a CPU with AVX2 but no AVX-512 and no AMX.

    python scripts/emulate_avx2.py -m natural_dreamer.bench --tables user --configs pendulum
    python scripts/emulate_avx2.py scripts/profile_step.py pendulum --products
    python scripts/emulate_avx2.py -m pytest

For a host with AVX-512 (or AMX) that wants a figure for the other kind of host this project
meets (an AMD EPYC with AVX2 and FMA only, like most laptops), without one to hand:
- ATEN_CPU_CAPABILITY=avx2: ATen's kernels and the C++ torch.compile generates use 256-bit
  vectors;
- ONEDNN_MAX_CPU_ISA=AVX2: oneDNN's convolutions and bf16 products likewise (MKL's float32
  products are left alone: on an AMD CPU they run AVX2 code anyway);
- the CPU flags the program reads (fastpath.cpu_flags) lose avx512* and amx*, so
  `precision: auto` takes float32 without measuring, as it does on such a host;
- an inductor cache of its own (a new temporary folder, unless TORCHINDUCTOR_CACHE_DIR is
  set): see fastpath.pin_vector_width for why a cache must not be shared across widths.
All of it holds in the Python processes the run starts as well (a sitecustomize module on
PYTHONPATH narrows their flags), so the test suite runs whole under it:

    python scripts/emulate_avx2.py -m pytest

What it cannot change is the core: clock, caches and memory are this host's. On an AVX-512
BF16 EPYC (2026-12-06) the 1m update ran 2.3x faster under this emulation than on the real
AVX2 host of 2026-12-02 (docs/performance.md, session 23), so read its figures as ratios
between settings or commits, never as that host's seconds.
"""

import os
import runpy
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


# Run at the start of every Python process the emulated one starts (tests, benchmarks and
# their subprocesses), through a sitecustomize module on PYTHONPATH.
SITECUSTOMIZE = """
from natural_dreamer import fastpath

_flags = fastpath.cpu_flags()
_narrowed = {flag for flag in _flags if not flag.startswith(("avx512", "amx"))}
fastpath.cpu_flags = lambda: set(_narrowed)
"""


def emulate() -> None:
    """Set up this process and the Python processes it starts (before torch is imported) as
    if their CPU had AVX2 at most."""
    # torch reads ATEN_CPU_CAPABILITY once, when imported: only an emulated parent (whose
    # sitecustomize imported it here already) may have imported it before.
    if "torch" in sys.modules and os.environ.get("ATEN_CPU_CAPABILITY") != "avx2":
        raise RuntimeError("emulate() must run before torch is imported")
    os.environ["ATEN_CPU_CAPABILITY"] = "avx2"
    os.environ["ONEDNN_MAX_CPU_ISA"] = "AVX2"
    if "TORCHINDUCTOR_CACHE_DIR" not in os.environ:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="inductor_avx2_")
    site = Path(tempfile.mkdtemp(prefix="emulate_avx2_"))
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    paths = [str(site), str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(":") if p]
    os.environ["PYTHONPATH"] = ":".join(paths)
    sys.path[:0] = [str(site), str(ROOT)]
    # Here, before anything imports fastpath.cpu_flags by name (natural_dreamer.bench does).
    exec(SITECUSTOMIZE, {})


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(__doc__)
        sys.exit(0 if len(sys.argv) >= 2 else 2)
    emulate()
    import torch

    print(
        f"emulating AVX2: torch CPU capability {torch.backends.cpu.get_cpu_capability()}, "
        f"inductor cache {os.environ['TORCHINDUCTOR_CACHE_DIR']}",
        flush=True,
    )
    if sys.argv[1] == "-m":
        sys.argv = sys.argv[2:]
        runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
    else:
        sys.argv = sys.argv[1:]
        sys.path.insert(0, str(Path(sys.argv[0]).resolve().parent))
        runpy.run_path(sys.argv[0], run_name="__main__")


if __name__ == "__main__":
    main()
