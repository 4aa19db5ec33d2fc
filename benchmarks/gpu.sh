#!/usr/bin/env bash
# One CUDA benchmark run, from a clone, on a machine that already has PyTorch (>= 2.6), Triton and
# timm: no venv, no downloads. Runs the package from this checkout and writes JSON results to
# benchmarks/results/*-cuda*.json, then prints the headline figures against their targets.
#
#   bash benchmarks/gpu.sh            # or: make bench-gpu
#   PYTHON=/path/to/python bash benchmarks/gpu.sh
#
# Budget: under 5 minutes on one H100/H200. Each section has its own time limit, so that a slow
# torch.compile cannot take the others' results with it; the compiled runs come last.
# QUICK=1 runs every section at toy sizes (DEVICE=cpu checks the script without a GPU; COMPILE=0
# leaves out the torch.compile sections, which take minutes on a CPU).
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-$(command -v python3 || command -v python)}"
DEVICE="${DEVICE:-cuda}"
QUICK="${QUICK:-0}"
COMPILE="${COMPILE:-1}"
OUT="${OUT:-benchmarks/results}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"

if [ "$QUICK" = 1 ]; then
    Q=(--quick); B1=2; B2=4; LIMIT=300
else
    Q=(); B1=64; B2=256; LIMIT=150
fi
failed=()
section() {  # section NAME SECONDS CMD...: run with a time limit; note a failure and go on
    local name=$1 seconds=$2
    shift 2
    echo
    echo "=== $name ($(date +%H:%M:%S))"
    if ! timeout "$seconds" "$@"; then
        echo "!!! $name did not finish (time limit ${seconds}s or error)"
        failed+=("$name")
    fi
}

section "environment and kernel check" 120 "$PYTHON" -m benchmarks.gpu_check --device "$DEVICE"
section "merge kernel and blocks: bandwidth, ARL/plain per ResNet-50 stage" "$LIMIT" \
    "$PYTHON" -m benchmarks.blocks --device "$DEVICE" "${Q[@]}" --batch-sizes "$B1" \
    --dtypes bf16 --channels-last off on --rounds 5 --min-run-time 0.1 \
    --out "$OUT/blocks-$DEVICE-bf16.json"
section "peak memory, bf16 channels_last" "$LIMIT" \
    "$PYTHON" -m benchmarks.memory --device "$DEVICE" "${Q[@]}" --pairs resnet50 vgg16 \
    --batch-size "$B1" --amp bf16 --channels-last --normalizations spatial \
    --merge-backends native reference --out "$OUT/memory-$DEVICE-bf16.json"
for b in "$B1" "$B2"; do
    section "ARL-ResNet-50 / ResNet-50 eager, batch $b" "$LIMIT" \
        "$PYTHON" -m benchmarks.models --device "$DEVICE" "${Q[@]}" --pairs resnet50 \
        --batch-size "$b" --amp bf16 --channels-last --rounds 5 --min-run-time 0.3 \
        --out "$OUT/models-$DEVICE-bf16-b$b.json"
done
section "AttnMel-VGG16 / VGG-16-GAP eager, batch $B1" "$LIMIT" \
    "$PYTHON" -m benchmarks.models --device "$DEVICE" "${Q[@]}" --pairs vgg16 \
    --batch-size "$B1" --amp bf16 --channels-last --rounds 5 --min-run-time 0.3 \
    --out "$OUT/models-$DEVICE-bf16-vgg16-b$B1.json"
for b in "$B1" "$B2"; do
    [ "$COMPILE" = 1 ] || break
    section "ARL-ResNet-50 / ResNet-50 torch.compile, batch $b" "$LIMIT" \
        "$PYTHON" -m benchmarks.models --device "$DEVICE" "${Q[@]}" --pairs resnet50 \
        --batch-size "$b" --amp bf16 --channels-last --compile --rounds 5 --min-run-time 0.3 \
        --out "$OUT/models-$DEVICE-bf16-compile-b$b.json"
done
echo
"$PYTHON" -m benchmarks.gpu_report --device "$DEVICE" --results "$OUT"
if [ ${#failed[@]} -gt 0 ]; then
    echo "sections that did not finish: ${failed[*]}"
    exit 1
fi
