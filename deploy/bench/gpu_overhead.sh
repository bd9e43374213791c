#!/usr/bin/env bash
# GPU training throughput with and without the score service in the loop.
#
# On a machine with one CUDA GPU and docl installed with a CUDA build of torch
# (`pip install torch==2.13.0` from the CUDA index, then `pip install -e '.[all]'`):
#
#     deploy/bench/gpu_overhead.sh [OUT_DIR]        # ~5 minutes
#
# For each batch size it runs `docl bench overhead --gpu`: the same in-process
# training loop, plan and steps, once drawing locally with no server and once
# with the score server (embedded Redis) drawing every epoch and scoring every
# step's report; median of 3, alternating. The model is MNIST-1D's 1D CNN widened
# to 256 channels on 40k samples, so a step is GPU work rather than launch
# overhead. The tables go to stdout and OUT_DIR/overhead-b*.txt; put them in
# docs/performance.md beside the CPU figures.
set -euo pipefail
out=${1:-${OUT:-out/gpu-overhead}}
mkdir -p "$out"
docl=${DOCL:-docl}

python - <<'PY'
import torch
assert torch.cuda.is_available(), "no CUDA device visible: this benchmark needs a GPU"
print("GPU:", torch.cuda.get_device_name(0), "| torch", torch.__version__)
PY
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
nproc

for bs in 128 1024; do
    echo "== batch ${bs} =="
    "$docl" bench overhead --task mnist1d --gpu --epochs 10 --repeats 3 \
        --task-param channels=256 --task-param num_samples=40000 \
        -p batch_size="${bs}" | tee "$out/overhead-b${bs}.txt"
done
