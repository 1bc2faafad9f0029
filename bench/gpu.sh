#!/usr/bin/env bash
# Every GPU figure in the README, in one run: sampler, parity, local correlation, K-keyframe
# speed-up at RoMa's defaults, the resolution x precision table and a profile. Usage: bash bench/gpu.sh [LOG]
set -uo pipefail
cd "$(dirname "$0")/.."
log=${1:-bench/results/gpu.log}
mkdir -p "$(dirname "$log")"
export PYTHONPATH="$PWD:$PWD/bench${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python3 -c "import torch; print('torch', torch.__version__)"
  echo "== bench/sampler.py";  python3 bench/sampler.py --device cuda
  echo "== bench/parity.py";   python3 bench/parity.py --device cuda
  echo "== bench/correlation.py"; python3 bench/correlation.py --device cuda
  echo "== bench/speed.py (560/864)"; python3 bench/speed.py --device cuda
  echo "== bench/speed.py (560, no upsample)"; python3 bench/speed.py --device cuda --upsample 0
  echo "== bench/speed.py --gpu-table"; python3 bench/speed.py --device cuda --gpu-table
  echo "== bench/gpu_profile.py"; python3 bench/gpu_profile.py
} 2>&1 | grep -v -E "UserWarning|warnings.warn|INFO" | tee "$log"
