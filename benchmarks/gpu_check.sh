#!/usr/bin/env bash
# The GPU measurements of issue 7 (docs/performance.md) in one call, for a machine with a
# CUDA GPU. Run by hand, never in CI:
#
#     bash benchmarks/gpu_check.sh                # python3 must be one that has torch
#     PYTHON=.venv/bin/python OUT=gpu-logs bash benchmarks/gpu_check.sh
#     DEVICE=cpu QUICK=1 bash benchmarks/gpu_check.sh   # smoke run of the script itself
#
# It needs no install step and no network (a GPU machine may have neither): the source tree
# is put on PYTHONPATH, so the Python that runs it needs torch, torchvision, numpy,
# scikit-learn, safetensors and matplotlib. Each step has its own time limit, so one that
# hangs or fails does not stop the others (together at most 13.5 minutes; QUICK=1 takes about 2); each step's output
# goes to $OUT/<step>.log (default benchmarks/gpu-logs, git-ignored), and the last line
# printed says which steps failed (the exit code is non-zero then).
# Steps, in order of what issue 7 asks for:
#   env        the GPU and the torch build
#   builtin    built-in model, batch 64: ceiling, 4 attacks streamed, 1-by-1 speedup
#   resnet101  ResNet-101 at 448 px (random weights, random images), TkMIA and kFool
#   scaling    per-iteration cost vs number of labels and vs batch size
#   run        `tkmia run` on the GPU end to end (the built-in benchmark's table)
#   equivalence  every attack on the CPU and on the GPU, same images: success and norms agree
#   equivalence-fp32  the same with TF32 off (is a difference TF32's rounding or a bug?)
#   commands   evaluate, certify (with its attack), universal, a stealth run and its audit
#              on the GPU, small sizes, each must exit 0
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
DEV=${DEVICE:-cuda}
LOGS=${OUT:-benchmarks/gpu-logs}
mkdir -p "$LOGS"
export PYTHONPATH="$PWD/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
BENCH=(benchmarks/attack_throughput.py --device "$DEV")
if [[ ${QUICK:-0} == 1 ]]; then
    BUILTIN=(--images 32 --single-images 2 --max-iter 5 --rounds 1 --methods tkmia,kfool)
    RESNET=(--model resnet50 --image-size 64 --images 4 --batch-size 4 --max-iter 2
        --single-images 1 --rounds 1 --methods tkmia)
    SCALING=(--classes-list 20 --batch-list 4)
    RUN=(--methods tkmia --samples 4 --k 3 --n 1 --no-progress)
    EQUIV=(--images 8)
    SMALL=1
else
    BUILTIN=(--lr 1e-4 --max-iter 300 --single-images 64)
    RESNET=(--model resnet101 --image-size 448 --images 128 --batch-size 32 --max-iter 20
        --single-images 4 --methods tkmia,kfool)
    SCALING=()
    RUN=(--no-progress)
    EQUIV=(--images 64)
    SMALL=4
fi
failed=()
step() {
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    timeout "$limit" "$@" >"$LOGS/$name.log" 2>&1
    local rc=$?
    cat "$LOGS/$name.log"
    echo "== $name: exit $rc"
    [[ $rc == 0 ]] || failed+=("$name")
}
step env 30 "$PY" -c "import torch; print('torch', torch.__version__); \
print('cuda', torch.cuda.is_available() and torch.cuda.get_device_name())"
step builtin 180 "$PY" "${BENCH[@]}" "${BUILTIN[@]}"
step resnet101 150 "$PY" "${BENCH[@]}" "${RESNET[@]}"
step scaling 60 "$PY" "${BENCH[@]}" --scaling "${SCALING[@]}"
RUN_DIR=$(mktemp -d)
step run 120 "$PY" -m tkmia run --device "$DEV" --out "$RUN_DIR" "${RUN[@]}"
cp "$RUN_DIR/summary.md" "$LOGS/run-summary.md" 2>/dev/null
rm -rf "$RUN_DIR"
step equivalence 60 "$PY" benchmarks/cuda_equivalence.py --device "$DEV" "${EQUIV[@]}"
step equivalence-fp32 60 "$PY" benchmarks/cuda_equivalence.py --device "$DEV" --no-tf32 "${EQUIV[@]}"
step commands 150 env DEVICE="$DEV" PYTHON="$PY" SMALL=$SMALL bash benchmarks/gpu_commands.sh
echo "failed steps: ${failed[*]:-none}"
[[ ${#failed[@]} == 0 ]]
