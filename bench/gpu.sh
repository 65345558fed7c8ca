#!/usr/bin/env bash
# GPU benchmark, one prepared script for a lent GPU machine:
# 1. `ganpipe.training.loop.train` vs a plain PyTorch loop on CUDA (bench/train_speed.py: the whole
#    training loop's images/s side by side);
# 2. images/s of DCGAN-64 and ResNet-32 in fp32, bf16 and bf16 + torch.compile, FLOP/s and the fraction
#    of the GPU's bf16 peak (bench/gpu_speed.py);
# 3. `ganpipe train` with the split in GPU memory vs streamed by a DataLoader (bench/data_scale.py).
#   bash bench/gpu.sh [OUT_DIR]      (results: OUT_DIR, default bench/results; SKIP_TRAIN_SPEED=1 skips part 1)
# Each part has its own time limit and a failed part does not stop the next (a lease is short).
# The GPU machine has no package index: a Python that already has torch is used, and the packages it
# lacks travel as wheels in .whl/ (installed into a temporary site directory).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-bench/results}"
mkdir -p "$out"
py=.venv/bin/python
if [ ! -x "$py" ]; then
  py=python3
  if [ -d .whl ]; then
    "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/ganpipe-site .whl/*.whl
    export PYTHONPATH="/tmp/ganpipe-site:$PWD"
  fi
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
export PYTHONUNBUFFERED=1 MLFLOW_DISABLE_TELEMETRY=true
part() {  # part SECONDS COMMAND...: run one part, say how it ended
  local limit=$1; shift
  local t0=$SECONDS
  timeout "$limit" "$@"
  echo "== $* : exit $? after $((SECONDS - t0)) s"
}
[ -n "${SKIP_TRAIN_SPEED:-}" ] || part 150 "$py" bench/train_speed.py --device cuda --kimg 100 --repeats 2 --out "$out"
part 200 "$py" bench/gpu_speed.py --out "$out"
part 200 "$py" bench/data_scale.py --parts speed --rounds 2 --out "$out"
