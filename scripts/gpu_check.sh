#!/usr/bin/env bash
# The prepared check for a lent GPU machine: one call of the device tool, then give the machine back.
#
# The GPU image has PyTorch, numpy, scipy, scikit-image, OpenCV, h5py, tqdm and pytest, but not
# PyMaxflow, platformdirs or nvdiffrast, and it reaches no package registry. So, here, first:
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#       --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
#       -d .whl PyMaxflow==1.3.2 platformdirs==4.14.8 diffrp-nvdiffrast==0.3.3.1
#
# (`.whl/` is git-ignored), then call the device tool's run with
#   command="bash scripts/gpu_check.sh", carry=[".whl"], timeout_s=480
# which leaves about 5 minutes of a 15-minute lease for one rerun.
#
# What it does, each step time-limited so that the logs come back even when one hangs:
#   1. installs the wheels into /tmp/site, prints the GPU, builds nvdiffrast's CUDA code (JIT, timed);
#   2. pytest -m gpu: nvdiffrast <-> PyTorch rasterizer parity (tests/render/test_nvdiffrast_parity.py),
#      the CUDA fit against the CPU fit and the photometric Jacobian on CUDA (tests/test_fit_gpu.py),
#      the solver on CUDA (tests/optim/test_solver.py);
#   3. benchmarks/bench_raster.py on CUDA for both backends (224² and 512², 7k/35k/53k meshes + demo);
#   4. benchmarks/bench_fit.py on CUDA with nvdiffrast (demo and the BFM-2009-sized model).
# Logs, JUnit XML and JSON land in $OUT (the device tool's; ./gpu_out when run by hand).
set -uo pipefail
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="/tmp/site:$PWD"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "wheel install failed: see the header of scripts/gpu_check.sh"; exit 1; }
{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"; } 2>&1 | tee "$OUT/gpu.txt"
timeout 240 python3 -c "
import time
t = time.perf_counter()
from fitem.render import nvdiffrast_available
print('nvdiffrast available:', nvdiffrast_available('cuda'), f'(first use incl. build {time.perf_counter() - t:.0f} s)')
" 2>&1 | tee "$OUT/nvdiffrast_build.log"
timeout 240 python3 -m pytest -m gpu -q -rs -p no:cacheprovider --junitxml "$OUT/gpu_tests.xml" \
    tests/render/test_nvdiffrast_parity.py tests/test_fit_gpu.py tests/optim/test_solver.py 2>&1 | tee "$OUT/gpu_tests.log"
timeout 150 python3 benchmarks/bench_raster.py --device cuda --threads 1 --repeats 30 --backends torch nvdiffrast \
    --out "$OUT/bench_raster_cuda.json" 2>&1 | tee "$OUT/bench_raster_cuda.log"
timeout 150 python3 benchmarks/bench_fit.py --device cuda --backend nvdiffrast --repeats 5 \
    --out "$OUT/bench_fit_cuda.json" 2>&1 | tee "$OUT/bench_fit_cuda.log"
echo "done; files in $OUT"
