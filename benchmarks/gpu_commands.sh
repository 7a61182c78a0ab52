#!/usr/bin/env bash
# Each newer command once on a device, small sizes, stopping at the first that fails: evaluate,
# certify (with its attack on the smoothed model), universal, a stealth run and its audit.
# Run by benchmarks/gpu_check.sh (step "commands"); SMALL scales the sizes (1: smoke run).
set -euo pipefail
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
SMALL=${SMALL:-1}
d=$(mktemp -d)
trap 'rm -rf "$d"' EXIT
"$PY" -m tkmia evaluate --device "$DEV" --samples $((16 * SMALL)) --out "$d/ev" --no-progress
"$PY" -m tkmia certify --device "$DEV" --samples $((4 * SMALL)) --n $((100 * SMALL)) \
    --sigma 0.25 --attack-radii 0.5 --out "$d/ce" --no-progress
"$PY" -m tkmia universal --device "$DEV" --samples $((8 * SMALL)) \
    --fit-samples $((16 * SMALL)) --epochs 1 --out "$d/un" --no-progress
"$PY" -m tkmia run --device "$DEV" --methods tkmia --success stealth --k 3 --n 1 \
    --samples $((8 * SMALL)) --out "$d/st" --no-progress
"$PY" -m tkmia audit "$d/st"
