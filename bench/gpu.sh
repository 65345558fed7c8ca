#!/usr/bin/env bash
# GPU benchmark, one prepared script for a lent GPU machine:
# 1. `ganpipe.training.loop.train` vs a plain PyTorch loop on CUDA (bench/train_speed.py: the whole
#    training loop's images/s side by side);
# 2. images/s of DCGAN-64 and ResNet-32 in fp32, bf16 and bf16 + torch.compile, FLOP/s and the fraction
#    of the GPU's bf16 peak (bench/gpu_speed.py);
# 3. `ganpipe train` with the split in GPU memory vs streamed by a DataLoader (bench/data_scale.py);
# 4. training recipes side by side at the default length, ranked by FID (bench/recipe_search.py).
#   bash bench/gpu.sh [OUT_DIR]      (results: OUT_DIR, default bench/results)
#   PARTS="train_speed gpu_speed data_scale recipes" selects parts (default: the first three); RECIPES names
#   the recipes of part 4 (default: all of bench/recipe_search.py's), RECIPE_PARALLEL how many train at once.
# Each part has its own time limit and a failed part does not stop the next (a lease is short).
# The GPU machine has no package index: a Python that already has torch is used, and the packages it
# lacks travel as wheels in .whl/ (installed into a temporary site directory), and InceptionV3's weights
# for part 4 as .gpu/inception-bf16.pth.xz (`bench/recipe_search.py --pack-weights .gpu/inception-bf16.pth.xz`;
# rounded to bf16 to fit the 64 MiB a call may carry: FIDs there rank recipes against each other, and the
# chosen one is scored again on a CPU with the exact weights).
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
parts=" ${PARTS:-train_speed gpu_speed data_scale} "
[[ $parts != *" train_speed "* ]] || part 150 "$py" bench/train_speed.py --device cuda --kimg 100 --repeats 2 --out "$out"
[[ $parts != *" gpu_speed "* ]] || part 200 "$py" bench/gpu_speed.py --out "$out"
[[ $parts != *" data_scale "* ]] || part 200 "$py" bench/data_scale.py --parts speed --rounds 2 --out "$out"
if [[ $parts == *" recipes "* ]]; then
  weights=()
  if [ -f .gpu/inception-bf16.pth.xz ]; then
    "$py" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' \
      .gpu/inception-bf16.pth.xz /tmp/inception-bf16.pth && weights=(--inception-weights /tmp/inception-bf16.pth)
  fi
  # shellcheck disable=SC2086  # RECIPES is a list of names
  part "${RECIPE_SECONDS:-480}" "$py" bench/recipe_search.py --parallel "${RECIPE_PARALLEL:-7}" --bootstrap 0 \
    "${weights[@]}" ${RECIPES:+--only $RECIPES} --out "$out"
fi
