#!/usr/bin/env bash
# Issue 12's GPU round in one run: fused-kernel detection, parity (fp32 and mixed precision,
# CUDA graphs against the eager decode), per-refiner correlation with the fused kernel, and
# Relocalizer.process with each decode lever off and on against romatch's batched match()
# (with and without the fused kernel) at 560 without upsampling and at 560/864.
# Usage: bash bench/gpu_round2.sh WHEEL_DIR LOG  (WHEEL_DIR: romatch + loguru wheels, the
# fused-local-corr wheel in WHEEL_DIR/fused; installed in separate folders so every step can
# run with and without the kernel).
set -uo pipefail
cd "$(dirname "$0")/.."
wheels=${1:?wheel folder}
log=${2:-bench/results/gpu-round2.log}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$wheels"/*.whl || exit 1
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/fused "$wheels"/fused/*.whl \
  || echo "fused-local-corr did not install"
export PYTHONUNBUFFERED=1
plain="$PWD:$PWD/bench:/tmp/site"
fused="$plain:/tmp/fused"
step() { echo "== $1 (t=${SECONDS}s)"; }
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())"
  step "has_fused_correlation"
  PYTHONPATH=$plain python3 -c "from roma_ros.matching.roma import has_fused_correlation as h; print('without the kernel folder:', h())"
  PYTHONPATH=$fused python3 -c "from roma_ros.matching.roma import has_fused_correlation as h; print('with the kernel folder:', h())"
  step "bench/parity.py (560/864)"
  PYTHONPATH=$fused timeout 150 python3 bench/parity.py --device cuda
  if [ -z "${SKIP_CORRELATION:-}" ]; then
    step "bench/correlation.py"
    PYTHONPATH=$fused timeout 90 python3 bench/correlation.py --device cuda
  fi
  step "bench/speed.py --vs-romatch, K=8, 560, no upsampling"
  PYTHONPATH=$fused timeout 240 python3 bench/speed.py --device cuda --vs-romatch --ks 8 --upsample 0 --profile \
    ${VARIANTS_560:+--variants $VARIANTS_560}
  step "bench/speed.py --vs-romatch, K=8, 560/864"
  PYTHONPATH=$fused timeout 200 python3 bench/speed.py --device cuda --vs-romatch --ks 8 --upsample 864 --repeat 3 \
    --variants "${VARIANTS_864:-none,all-graphs,all-batch_vgg,all}"
  step "done"
} 2>&1 | grep --line-buffered -v -E "UserWarning|warnings.warn|INFO|_warn_once" | tee "$log"
