#!/usr/bin/env bash
# The one-shot H200 check, sized for one short GPU slot (at most GPU_CHECK_BUDGET_S, default 480 s, in all):
# environment (GPU -> peak TFLOP/s), the eager bert-base seq 128 bf16 step, compiled batch 512 with its kernel
# table, no mask, CUDA graphs, the fused encoder compiled with and without CUDA graphs, train/pretrain.py with
# bert_base.yaml on the shipped WikiText sample for ~90 s (per-epoch perplexity and NSP beside their baselines),
# the real loop at batch 512, max-autotune last. The list and each variant's time cap: bench/gpu_check.py.
#
#   OUT=bench_out bash bench/gpu_check.sh            # on the GPU machine (bench/README.md: the device command)
#   OUT=/tmp/dry bash bench/gpu_check.sh --dry-run   # the same sequence on CPU, tiny, one thread (~1.5 min)
#
# Needs torch + transformers + accelerate + pyyaml + tokenizers; the real-script variant also needs `datasets`:
# where it is missing and .whl/ holds its wheels (bench/README.md), they are installed into a temporary folder.
# Each variant runs in its own process under its own `timeout` and writes $OUT/variants/<name>.json when it ends
# (a failed, timed-out or skipped one leaves {"failed": true, "error": ...}); $OUT/summary.json is rewritten
# after every variant with all records so far, and $OUT/gpu_check.log holds nvidia-smi and every variant's output.
# At the end the variants/ folder becomes $OUT/variants.tar.gz: three files come back from the GPU machine.
set -euo pipefail

cd "$(dirname "$0")/.."
DRY=()
if [[ "${1:-}" == "--dry-run" ]]; then
  DRY=(--dry-run)
  export OMP_NUM_THREADS=1 CUDA_VISIBLE_DEVICES=""
elif [[ $# -gt 0 ]]; then
  echo "usage: [OUT=folder] [GPU_CHECK_BUDGET_S=480] bash bench/gpu_check.sh [--dry-run]" >&2
  exit 2
fi
OUT="${OUT:-./bench_out}"
BUDGET="${GPU_CHECK_BUDGET_S:-480}"
START=$(date +%s)
PYTHON="${PYTHON:-python3}"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
mkdir -p "$OUT/variants"
rm -f "$OUT"/variants/*.json "$OUT/summary.json" "$OUT/variants.tar.gz"
LOG="$OUT/gpu_check.log"
(nvidia-smi || echo "nvidia-smi not available") > "$LOG" 2>&1 || true

if ! "$PYTHON" -c "import datasets" > /dev/null 2>&1 && compgen -G ".whl/*.whl" > /dev/null; then
  SITE=$(mktemp -d /tmp/gpu-check-site.XXXXXX)
  echo "[gpu_check] installing .whl/*.whl into $SITE (for the real-script variant)" | tee -a "$LOG"
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" .whl/*.whl \
    >> "$LOG" 2>&1 && export PYTHONPATH="$PYTHONPATH:$SITE" || echo "[gpu_check] wheel install failed" | tee -a "$LOG"
fi

failed_record() {  # name, error
  "$PYTHON" -m bench.gpu_check --variant "$1" --failed "$2" --out "$OUT/variants/$1.json"
}

mapfile -t PLAN < <("$PYTHON" -m bench.gpu_check --plan)
(( ${#PLAN[@]} > 0 )) || { echo "[gpu_check] python -m bench.gpu_check --plan gave no variants" >&2; exit 1; }
for entry in "${PLAN[@]}"; do
  read -r name cap <<< "$entry"
  left=$((BUDGET - ($(date +%s) - START)))
  limit=$(( cap < left ? cap : left ))
  if (( limit < 20 )); then
    echo "[gpu_check] $name skipped: ${left}s of the ${BUDGET}s budget left" | tee -a "$LOG"
    failed_record "$name" "skipped: ${left}s of the ${BUDGET}s budget (GPU_CHECK_BUDGET_S) left"
  else
    echo "[gpu_check] $name (up to ${limit}s; $(( $(date +%s) - START ))s so far)" | tee -a "$LOG"
    rc=0
    timeout -k 10 "$limit" "$PYTHON" -m bench.gpu_check --variant "$name" --out "$OUT/variants/$name.json" \
      --limit_s "$limit" "${DRY[@]}" >> "$LOG" 2>&1 || rc=$?
    if (( rc != 0 )); then
      why="exit $rc; its output is in gpu_check.log"
      (( rc == 124 || rc == 137 )) && why="timed out after ${limit}s (exit $rc); its output is in gpu_check.log"
      echo "[gpu_check] $name FAILED: $why" | tee -a "$LOG"
      tail -n 8 "$LOG" | sed 's/^/    /'
      # A variant that failed in Python wrote its own record (with the error); one killed or crashed did not.
      [[ -s "$OUT/variants/$name.json" ]] || failed_record "$name" "$why"
    fi
  fi
  "$PYTHON" -m bench.gpu_check --summary "$OUT"
done

"$PYTHON" -m bench.gpu_check --summary "$OUT"
# summary.json holds every record whole; one archive instead of a file per variant, because the GPU machine
# sends back at most 8 files.
tar -czf "$OUT/variants.tar.gz" -C "$OUT" variants && rm -r "$OUT/variants"
cat "$OUT/summary.json"
echo "[gpu_check] done in $(( $(date +%s) - START ))s; results in $OUT/summary.json"
