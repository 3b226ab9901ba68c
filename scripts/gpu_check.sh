#!/usr/bin/env bash
# The prepared check for a lent GPU machine: one call of the device tool, then give the machine back.
#
# The GPU image has PyTorch, numpy, scipy, scikit-image, OpenCV, h5py, tqdm, joblib, psutil and pytest,
# but not PyMaxflow, platformdirs, nvdiffrast, autofacemonker (the demo model's face template) or
# MediaPipe, and it reaches no package registry. So, here, first:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl PyMaxflow==1.3.2 platformdirs==4.14.8 diffrp-nvdiffrast==0.3.3.1 autofacemonker==0.2.0
#
# (`.whl/` is git-ignored), then call the device tool's run with
#   command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=540
# The script stops starting steps at DEADLINE seconds (default 500) so that its results come back.
# On an H200 (2026-11-27) the whole script took 290 s, the nvdiffrast build 28 s of it.
#
# Steps, in order of importance, each time-limited:
#   1. installs the wheels into /tmp/site, prints the GPU, builds nvdiffrast's CUDA code (JIT, timed);
#   2. pytest -m gpu: nvdiffrast <-> PyTorch rasterizer parity (tests/render/test_nvdiffrast_parity.py),
#      the CUDA fit against the CPU fit and the photometric Jacobian on CUDA (tests/test_fit_gpu.py),
#      the solver on CUDA (tests/optim/test_solver.py);
#   3. benchmarks/bench_raster.py on CUDA for both backends (224² and 512², 7k/35k/53k meshes + demo);
#   4. benchmarks/bench_fit.py on CUDA with nvdiffrast at 224² (demo, BFM-2009- and BFM-2017-sized
#      models), with one profiled fit per model;
#   5. benchmarks/bench_segnet.py on CUDA (predict at batch 1/8/64/256, and the net alone on the device);
#   6. benchmarks/bench_annotate.py on CUDA: BFM-2009-sized model, true landmarks, 1 / 4 / 8 loky workers;
#   7. benchmarks/bench_fit.py at 512² (demo and BFM-2017-sized).
# Everything is logged to $OUT/all.log; results (JSON, logs, profiles, JUnit XML) are packed into
# $OUT/results.tar.gz after every step, so what finished comes back even when a later step is cut off.
# DEVICE=cpu BACKEND=torch QUICK=1 bash scripts/gpu_check.sh runs the same steps here, small, as a dry run.
set -uo pipefail
OUT=${OUT:-gpu_out}
DEVICE=${DEVICE:-cuda}
BACKEND=${BACKEND:-nvdiffrast}
DEADLINE=${DEADLINE:-500}
QUICK=${QUICK:-0}
RAW=$(mktemp -d /tmp/gpu_raw.XXXX)
mkdir -p "$OUT"
START=$SECONDS
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD" MAX_JOBS=16
export PATH="$(dirname "$(python3 -c 'import sys; print(sys.executable)')"):$PATH"  # ninja next to python3
log() { echo "== [$((SECONDS - START)) s] $*" | tee -a "$OUT/all.log"; }
pack() { tar -czf "$OUT/.results.tmp" -C "$RAW" . && mv "$OUT/.results.tmp" "$OUT/results.tar.gz"; }
# step NAME CAP_SECONDS COMMAND...: runs COMMAND for at most min(CAP, time left before DEADLINE)
step() {
    local name=$1 cap=$2; shift 2
    local left=$((DEADLINE - (SECONDS - START)))
    if ((left < 20)); then log "$name: skipped, ${left} s left before the deadline"; return; fi
    ((cap > left)) && cap=$left
    log "$name (at most $cap s): $*"
    timeout "$cap" "$@" 2>&1 | tee -a "$OUT/all.log" > "$RAW/$name.log"
    log "$name: rc ${PIPESTATUS[0]}"
    pack
}
if [ "$DEVICE" = cuda ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        || { log "wheel install failed: see the header of scripts/gpu_check.sh"; exit 1; }
    { nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc
      python3 -c "import torch, sys; print('python', sys.version.split()[0], 'torch', torch.__version__, torch.cuda.get_device_name())"; } \
        2>&1 | tee -a "$OUT/all.log" > "$RAW/gpu.txt"
    step nvdiffrast_build 240 python3 -c "
import time
t = time.perf_counter()
from fitem.render import nvdiffrast_available
from fitem.render.raster import _NVDR_VERDICT
print('nvdiffrast available:', nvdiffrast_available('cuda'), f'(first use incl. build {time.perf_counter() - t:.0f} s)', _NVDR_VERDICT)
"
    step gpu_tests 150 python3 -m pytest -m gpu -q -rA -p no:cacheprovider --junitxml "$RAW/gpu_tests.xml" \
        tests/render/test_nvdiffrast_parity.py tests/test_fit_gpu.py tests/optim/test_solver.py
fi
if [ "$QUICK" = 1 ]; then R=2; N=4; JOBS="1 2"; SIZES="224"; else R=5; N=32; JOBS="1 4 8"; SIZES="224 512"; fi
BACKENDS="torch"; [ "$BACKEND" = nvdiffrast ] && BACKENDS="torch nvdiffrast"
step bench_raster 60 python3 benchmarks/bench_raster.py --device "$DEVICE" --threads 1 --repeats $((4 * R)) \
    --sizes $SIZES --backends $BACKENDS --out "$RAW/bench_raster_$DEVICE.json"
step bench_fit_224 150 python3 benchmarks/bench_fit.py --device "$DEVICE" --backend "$BACKEND" --repeats "$R" \
    --models demo,bfm2009-sized,bfm2017-sized --profile "$RAW" --out "$RAW/bench_fit_${DEVICE}_224.json"
step bench_segnet 60 python3 benchmarks/bench_segnet.py --device "$DEVICE" --bases 8 --modes 3,6 \
    --batches 8,64,256 --repeats $((4 * R)) --out "$RAW/bench_segnet_$DEVICE.json"
step bench_annotate 150 python3 benchmarks/bench_annotate.py --device "$DEVICE" --backend "$BACKEND" \
    --model bfm2009-sized --landmarks truth --n "$N" --jobs $JOBS --out "$RAW/bench_annotate_$DEVICE.json"
[ "$QUICK" = 1 ] || step bench_fit_512 100 python3 benchmarks/bench_fit.py --device "$DEVICE" --backend "$BACKEND" \
    --repeats 3 --size 512 --models demo,bfm2017-sized --out "$RAW/bench_fit_${DEVICE}_512.json"
log "done; results in $OUT/results.tar.gz"
