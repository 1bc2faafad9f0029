#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv on a machine
# without ROS and without a GPU: torch, romatch, OpenCV, the ROS 2 wheels, test
# tools, and roma_ros itself in editable mode. Idempotent: when nothing in
# requirements/ or setup.py changed since the last run it returns at once.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
VENV=${VENV:-.venv}
stamp="$VENV/.roma_ros-setup"
want=$(cat requirements/*.txt setup.py setup.cfg package.xml | sha256sum | cut -d' ' -f1)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi
echo "[setup] creating/updating $VENV (first run installs ~6 GB, a few minutes)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip=("$VENV/bin/python" -m pip install --disable-pip-version-check -q)
"${pip[@]}" -r requirements/torch.txt
# torch is pinned again as a constraint so nothing below can replace it.
"${pip[@]}" -c requirements/torch.txt -r requirements/base.txt -r requirements/ros.txt -r requirements/dev.txt
"${pip[@]}" --no-deps -r requirements/romatch.txt
"${pip[@]}" --no-deps --no-build-isolation -e .
echo "$want" > "$stamp"
echo "[setup] done: $VENV"
