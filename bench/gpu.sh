#!/usr/bin/env bash
# GPU benchmark, one prepared script for a lent GPU machine (see bench/gpu_speed.py):
# images/s of DCGAN-64 and ResNet-32 in fp32, bf16 and bf16 + torch.compile, FLOP/s and the fraction
# of the GPU's bf16 peak; then `ganpipe train` end to end on the digits for the whole-loop figure.
#   bash bench/gpu.sh [OUT_DIR]      (results: OUT_DIR, default bench/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
if [ ! -x .venv/bin/python ]; then
  python3 -m venv .venv
  .venv/bin/pip install -q -c constraints.txt -e .
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
.venv/bin/python bench/gpu_speed.py --out "$out"
.venv/bin/python bench/train_speed.py --device cuda --kimg 200 --repeats 2 --out "$out"
