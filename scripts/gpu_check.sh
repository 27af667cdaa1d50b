#!/usr/bin/env bash
# The CUDA check of the speed issue, for a machine with a GPU and no network (the device
# tool's H200: Python 3.12 with a CUDA build of torch, no MuJoCo, dm_control or plotly).
#
#   bash scripts/gpu_check.sh prepare   # HERE, with PyPI: the wheels and EGL libraries it lacks
#   bash scripts/gpu_check.sh           # THERE: at most about 8 minutes, everything to $OUT
#
# prepare writes .whl/ (Python 3.12 wheels; dm_control without the assets of the domains
# DMC proprio and pixel runs never load, so all of it travels in the 64 MiB a call may
# carry) and .gl/ (the Debian EGL packages MuJoCo renders with). Both are git-ignored; the
# device call carries them: run(command="bash scripts/gpu_check.sh", carry=[".whl", ".gl"]).
# The check, within 8 minutes of the GPU's time (each part under a timeout of its own):
#   1. the device tests on CUDA (tests/test_device.py, tests/test_gpu_ready.py)     <= 60 s
#   2. the steps table, bf16 and compiled as `auto` chooses on a GPU, with milliseconds per
#      update and the peak GPU memory: 12m images and vectors                        <= 170 s
#      and 1m vectors                                                                <= 60 s
#   3. 5,000 env steps of walker_walk from pixels (1,000 of them prefill), the progress
#      bar's last pace, and from the run's CSV the pace of its last whole interval and the
#      projected wall time of walker_walk's 1M env steps and of the 100k benchmark   <= 170 s
# and writes gpu_check.log under $OUT (or gpu_check_out/). Everything it runs also runs on a
# CPU (bench --device cpu, bench --project), so it can be tried before a GPU is lent.
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
    set -e
    rm -rf .whl .gl && mkdir -p .whl .gl
    download() {
        python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl "$@"
    }
    download mujoco==3.17.0 dm-control==1.0.50 dm-env==1.6 dm-tree==0.1.10 pyopengl==3.1.10 \
        plotly==7.1.0
    python3 - <<'EOF'
"""Repack dm_control's wheel without what a DMC suite task never reads (the dog's and the
locomotion tasks' assets, the test frames, Blender tools): 56 MB -> about 2 MB."""
import base64, hashlib, zipfile
from pathlib import Path

KEEP = ("__init__.py", "_render/", "mujoco/", "rl/", "suite/", "utils/")
DROP = ("mujoco/testing/", "suite/dog_assets/")
source = next(Path(".whl").glob("dm_control-*.whl"))
target = source.with_suffix(".slim")
with zipfile.ZipFile(source) as old, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as new:
    kept = []
    for item in old.infolist():
        name = item.filename
        inner = name.split("/", 1)[1] if name.startswith("dm_control/") else None
        if inner is None and ".dist-info/" not in name:
            continue
        if inner is not None and (not inner.startswith(KEEP) or inner.startswith(DROP)):
            continue
        if name.endswith(".dist-info/RECORD"):
            record = name
            continue
        data = old.read(name)
        new.writestr(item, data)
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        kept.append(f"{name},sha256={digest},{len(data)}")
    new.writestr(record, "\n".join(kept + [f"{record},,"]) + "\n")
target.replace(source)
print(f"{source.name}: {source.stat().st_size / 2**20:.1f} MB after repacking")
EOF
    # The EGL libraries, as the device tool's notes give them (unpacked there in each call).
    o='-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64'
    mkdir -p /tmp/amd64/partial
    # shellcheck disable=SC2086
    apt-get $o update -qq
    # shellcheck disable=SC2086
    (cd .gl && apt-get $o download -qq libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
    du -sh .whl .gl
    echo "carry .whl and .gl with the device call; the tracked files travel as well"
    exit 0
fi

out=${OUT:-gpu_check_out}
mkdir -p "$out"
log="$out/gpu_check.log"
export MUJOCO_GL=egl PYTHONUNBUFFERED=1
# Where the EGL vendor files live on the device tool's NVIDIA machines.
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
{
    echo "== $(date -u) gpu_check at $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    if [ -d .gl ]; then
        for f in .gl/*.deb; do dpkg -x "$f" /; done
        ldconfig
    fi
    if [ -d .whl ]; then
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
    fi
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
    python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0))"

    echo "== device tests on CUDA"
    timeout 60 python3 -m pytest -q -p no:cacheprovider tests/test_device.py \
        tests/test_gpu_ready.py

    echo "== steps table: 12m, images and vectors, bf16, compiled, on CUDA"
    timeout 170 python3 -m natural_dreamer.bench --device cuda --tables steps --presets 12m \
        --obs image vector --precision bf16 --modes compiled --repeats 5
    echo "== steps table: 1m, vectors, bf16, compiled, on CUDA"
    timeout 60 python3 -m natural_dreamer.bench --device cuda --tables steps --presets 1m \
        --obs vector --precision bf16 --modes compiled --repeats 5

    echo "== walker_walk from pixels, 5,000 env steps (1,000 prefill), on CUDA"
    start=$(date +%s)
    timeout 170 python3 main.py walker_walk --max_steps 5000 --train.prefill 1000 \
        --train.video false --train.log_every 1000 --device cuda --outdir "$out/walker" \
        2> "$out/walker.err"
    echo "walker_walk: exit $?, $(( $(date +%s) - start )) s wall"
    tr '\r' '\n' < "$out/walker.err" | grep -Ev 'step/s|s/step' | tail -n 12
    echo "the progress bar's last pace: $(tr '\r' '\n' < "$out/walker.err" \
        | grep -Eo '[0-9.]+(step/s|s/step)' | tail -n 1)"
    for csv in "$out"/walker/metrics/*.csv; do
        [ -f "$csv" ] || continue
        cut -d, -f1-3 "$csv" | tail -n 6
        python3 -m natural_dreamer.bench --project "$csv"
    done
} 2>&1 | tee "$log"
