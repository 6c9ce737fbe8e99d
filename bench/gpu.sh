#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: run the GPU tests, then time our TVM cuda artifacts against
# PyTorch eager for every zoo model (bench/gpu_bench.py prints a table with the card name).
# Installs nothing; uses the project's .venv if there is one. About 5-8 minutes in all.
#   bash bench/gpu.sh
set -u
cd "$(dirname "$0")/.."
PY=python3
[ -x .venv/bin/python ] && PY=.venv/bin/python
export PYTHONPATH=.

if ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; then
    echo "bench/gpu.sh: no NVIDIA GPU here (nvidia-smi missing or finds no device); run it on a GPU machine" >&2
    exit 2
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version,memory.total --format=csv
if ! "$PY" -c "import tvm, sys; sys.exit(0 if tvm.cuda(0).exist else 1)" 2>/dev/null; then
    echo "bench/gpu.sh: TVM cannot see the GPU (apache-tvm with CUDA and libcudart needed)" >&2
    exit 2
fi
# nvcc compiles the embedded CUDA source at load time when present (NVRTC otherwise)
command -v nvcc >/dev/null 2>&1 && export TVM_CUDA_COMPILE_MODE=nvcc
export AOT_COMPILER_CACHE="${AOT_COMPILER_CACHE:-$(mktemp -d)}"

status=0
echo "== GPU tests"
timeout 300 "$PY" -m pytest -q -m gpu tests/test_tvm_cuda.py -p no:cacheprovider || status=1
echo "== latency: our cuda artifacts vs PyTorch eager"
timeout 240 "$PY" bench/gpu_bench.py "$@" || status=1
exit $status
