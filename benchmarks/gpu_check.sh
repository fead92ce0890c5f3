#!/usr/bin/env bash
# Predicted vs measured XL peak memory and step time on one CUDA GPU (bf16, int8, nf4, checkpointing off).
# Builds a fresh virtual environment from uv.lock (pinned uv from PyPI), then runs benchmarks/gpu_check.py.
# Needs PyPI access; on an offline machine point UV_FIND_LINKS at a folder of the locked wheels and set UV_OFFLINE=1.
# About 2-4 minutes of installs (cached: seconds) plus ~1 minute per variant on an H100/H200.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV="${HOUSEVOX_GPU_VENV:-${TMPDIR:-/tmp}/housevox-gpu-check}"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check uv==0.13.9
UV_PROJECT_ENVIRONMENT="$VENV" "$VENV/bin/uv" sync --locked --quiet
"$VENV/bin/python" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 420 "$VENV/bin/python" benchmarks/gpu_check.py "$@"
