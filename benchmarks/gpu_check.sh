#!/usr/bin/env bash
# Predicted vs measured XL step time and peak memory on one CUDA GPU, offline.
#
#   bash benchmarks/gpu_check.sh [--wheels DIR] [--dry-run] [gpu_check.py options, e.g. --only "bf16 1x4"]
#
# Uses the machine's own Python (PYTHON, default python3) with its CUDA torch, lightning, peft and transformers;
# installs only what it lacks from benchmarks/gpu_wheels.txt, as wheels from DIR (default benchmarks/wheels, made
# with the pip download command in gpu_wheels.txt: 59.6 MB), into a private folder (no index, no venv, nothing
# else touched). --dry-run (any machine, no GPU needed): checks the wheel folder and what this Python would need,
# imports everything the check runs, and prints what it would measure. The measurement: 7 variants, one process
# each, about 8 minutes on an H100/H200 (not yet run there).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
WHEELS=benchmarks/wheels
DEPS="${HOUSEVOX_GPU_DEPS:-${TMPDIR:-/tmp}/housevox-gpu-deps}"
DRY=0
ARGS=()
while (($#)); do
    case "$1" in
        --wheels) WHEELS="$2"; shift 2 ;;
        --dry-run) DRY=1; shift ;;
        *) ARGS+=("$1"); shift ;;
    esac
done
"$PY" benchmarks/gpu_deps.py check "$WHEELS"
INSTALL="$("$PY" benchmarks/gpu_deps.py missing "$WHEELS")"
if [[ -n "$INSTALL" ]]; then
    echo "installing from $WHEELS into $DEPS: $(for w in $INSTALL; do basename "$w"; done | tr '\n' ' ')"
    # shellcheck disable=SC2086  # one argument per wheel
    "$PY" -m pip install --quiet --disable-pip-version-check --no-index --no-deps --target "$DEPS" $INSTALL
else
    echo "nothing to install: this Python has every package gpu_check needs"
fi
export PYTHONPATH="$DEPS:$PWD:$PWD/benchmarks${PYTHONPATH:+:$PYTHONPATH}"
"$PY" -c "import gpu_check, train_step, housevox.train.memory; print('imports: ok (torch', __import__('torch').__version__ + ')')"
if ((DRY)); then
    exec "$PY" benchmarks/gpu_check.py --dry-run ${ARGS[@]+"${ARGS[@]}"}
fi
"$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 'gpu_check: no CUDA device')"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
timeout 480 "$PY" benchmarks/gpu_check.py ${ARGS[@]+"${ARGS[@]}"}
