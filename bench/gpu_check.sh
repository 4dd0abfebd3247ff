#!/usr/bin/env bash
# One prepared GPU check (< 5 minutes on one H100): bert-base seq 128 bf16 pretraining throughput and MFU of
# our loop vs the Trainer, the same with the whole objective compiled, peak GPU memory, one SQuAD fine-tuning line.
# Needs torch + transformers + accelerate + pyyaml only. Everything lands in $OUT (default ./bench_out):
# <part>.json per part, gpu_check.json (the summary with every part in it, also printed) and gpu_check.log
# (nvidia-smi and the parts' output; few files, because a device run returns only a handful).
#
#   OUT=bench_out bash bench/gpu_check.sh                                     # on the GPU machine
#   OUT=/tmp/dry bash bench/gpu_check.sh --device cpu --tiny --simulate_no_datasets   # dry run on CPU (~2 min)
#
# Each part runs in its own process under `timeout`, within a total budget (GPU_CHECK_BUDGET_S, default 280 s):
# a part that fails or runs out of time leaves {"failed": ...} in its JSON and the check goes on.
# GPU_CHECK_PARTS="pretrain_ours squad_ours" runs only those parts (default: all four).
set -euo pipefail

cd "$(dirname "$0")/.."
OUT="${OUT:-./bench_out}"
mkdir -p "$OUT"
BUDGET="${GPU_CHECK_BUDGET_S:-280}"
START=$(date +%s)
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
PYTHON="${PYTHON:-python}"

LOG="$OUT/gpu_check.log"
(nvidia-smi || echo "nvidia-smi not available") > "$LOG" 2>&1 || true

PARTS="${GPU_CHECK_PARTS:-pretrain_ours pretrain_trainer squad_ours pretrain_ours_compiled}"

run_part() {  # name, seconds it may take at most, extra args for the part
  local name=$1 limit=$2 left rc
  shift 2
  if [[ " $PARTS " != *" $name "* ]]; then
    echo "{\"part\": \"$name\", \"failed\": true, \"error\": \"not selected (GPU_CHECK_PARTS)\"}" > "$OUT/$name.json"
    return 0
  fi
  left=$((BUDGET - ($(date +%s) - START)))
  if (( left < limit )); then limit=$left; fi
  if (( limit < 20 )); then
    echo "{\"part\": \"$name\", \"failed\": true, \"error\": \"skipped: the time budget is spent\"}" > "$OUT/$name.json"
    echo "[gpu_check] $name skipped (budget spent)"
    return 0
  fi
  echo "[gpu_check] $name (up to ${limit}s)"
  echo "===== $name" >> "$LOG"
  rc=0
  timeout -k 10 "$limit" "$PYTHON" -m bench.gpu_throughput --part "$name" --out "$OUT/$name.json" "$@" \
    >> "$LOG" 2>&1 || rc=$?
  if (( rc != 0 )); then
    echo "{\"part\": \"$name\", \"failed\": true, \"exit_code\": $rc, \"error\": \"see gpu_check.log (124: timed out)\"}" \
      > "$OUT/$name.json"
    echo "[gpu_check] $name FAILED (exit $rc); last lines of $LOG:"
    tail -n 15 "$LOG" || true
  fi
}

run_part pretrain_ours 75 "$@"
run_part pretrain_trainer 75 "$@"
run_part squad_ours 60 "$@"
run_part pretrain_ours_compiled 110 "$@"   # last: compilation is the slow, optional part

"$PYTHON" -m bench.gpu_throughput --summarize "$OUT" --out "$OUT/gpu_check.json" > /dev/null
cat "$OUT/gpu_check.json"
echo "[gpu_check] done in $(( $(date +%s) - START ))s; results in $OUT"
