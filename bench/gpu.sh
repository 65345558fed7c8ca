#!/usr/bin/env bash
# GPU benchmark, one prepared script for a lent GPU machine (see bench/gpu_speed.py):
# images/s of DCGAN-64 and ResNet-32 in fp32, bf16 and bf16 + torch.compile, FLOP/s and the fraction
# of the GPU's bf16 peak; then `ganpipe train` end to end on the digits for the whole-loop figure, and
# training with the split in GPU memory vs streamed by a DataLoader (pinned memory, 2 and 0 workers).
#   bash bench/gpu.sh [OUT_DIR]      (results: OUT_DIR, default bench/results)
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
# the GPU machine may have no package index: use a Python that already has torch when there is one
py=.venv/bin/python
if [ ! -x "$py" ]; then
  if python3 -c "import torch, mlflow, pydantic, yaml" 2>/dev/null; then py=python3
  else python3 -m venv .venv && .venv/bin/pip install -q -c constraints.txt -e . ; fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
"$py" bench/gpu_speed.py --out "$out"
"$py" bench/train_speed.py --device cuda --kimg 200 --repeats 2 --out "$out"
"$py" bench/data_scale.py --parts speed --rounds 2 --out "$out"
