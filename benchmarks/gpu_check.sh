#!/usr/bin/env bash
# The prepared check for a machine with one CUDA GPU, at most 8 minutes, everything under one folder:
#   1. make bench's benchmark (python -m benchmarks.run, size small) with bf16 autocast;
#   2. the multi-image scaling study at N up to 400 (python -m benchmarks.scaling);
#   3. a short training run of every bridge with trainer=gpu (experiment=smoke);
#   4. one run with trainer=fsdp on the single device.
# Each step has its own time limit (on the GPU the sum stays under 8 minutes) and its own log; summary.tsv holds
# step, exit status and seconds. Without CUDA it falls back to the CPU at tiny sizes (bench tiny, scaling --quick,
# trainer=cpu, FSDP skipped), so the script itself is tested anywhere.
#
# Usage: bash benchmarks/gpu_check.sh [OUT_DIR]        (default runs/gpu_check)
# Environment: PY (python, default .venv/bin/python), BRIDGES (default: all seven), STEPS (training steps, default
# 20 on GPU, 2 on CPU), DRY_RUN=1 (print the commands, run nothing; CUDA=0|1 picks the plan), FORCE_CPU=1 (the CPU
# fallback even where a GPU is present).
set -uo pipefail

OUT="${1:-runs/gpu_check}"
PY="${PY:-.venv/bin/python}"
[ -x "$PY" ] || PY="$(command -v python3)"
BRIDGES="${BRIDGES:-mlp qformer perceiver eagle mmfuser flamingo hyper_attention}"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false

if [ "${DRY_RUN:-0}" = 1 ]; then
    CUDA=${CUDA:-1}
elif [ "${FORCE_CPU:-0}" = 1 ]; then
    CUDA=0
else
    CUDA=$("$PY" -c "import torch; print(int(torch.cuda.is_available()))" 2>/dev/null || echo 0)
fi
if [ "$CUDA" = 1 ]; then
    DEVICE=cuda TRAINER=gpu STEPS="${STEPS:-20}" SCALE=1
    BENCH_ARGS=(--size small --device cuda --bf16)
    SCALING_ARGS=(--device cuda --ns 1 4 16 64 128 256 400 --budget-gib 60 --max-call-s 30 --repeats 3)
else
    DEVICE=cpu TRAINER=cpu STEPS="${STEPS:-2}" SCALE=6  # a (shared) CPU is slower: longer limits
    BENCH_ARGS=(--size tiny --device cpu --bf16 --repeats 1 --warmup 0 --threads 1)
    SCALING_ARGS=(--device cpu --quick --threads 1 --bridges mlp hyper_attention)
fi

mkdir -p "$OUT"
SUMMARY="$OUT/summary.tsv"
printf 'step\tstatus\tseconds\n' > "$SUMMARY"
{
    echo "date: $(date -u +%FT%TZ)"
    echo "device: $DEVICE (cuda available: $CUDA)"
    "$PY" -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu')" 2>&1
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>&1
} > "$OUT/machine.txt"

# step NAME LIMIT_S COMMAND...: run with a time limit, log to OUT/NAME.log, record status and seconds
step() {
    local name="$1" limit="$(($2 * SCALE))"
    shift 2
    if [ "${DRY_RUN:-0}" = 1 ]; then
        echo "$name (${limit}s): $*"
        printf '%s\tdry-run\t0\n' "$name" >> "$SUMMARY"
        return 0
    fi
    local start=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - start))" >> "$SUMMARY"
    echo "$name: exit $rc after $((SECONDS - start)) s (log $OUT/$name.log)"
}

step bench 100 "$PY" -m benchmarks.run "${BENCH_ARGS[@]}" --out "$OUT/bench"
step scaling 150 "$PY" -m benchmarks.scaling "${SCALING_ARGS[@]}" --out "$OUT/scaling"
limit=60  # the first run also builds the tiny world (cached for the others)
for bridge in $BRIDGES; do
    step "train_$bridge" "$limit" "$PY" -m experiments.cli train experiment=smoke "bridge=$bridge" "trainer=$TRAINER" \
        "stages.align.max_steps=$STEPS" "run_dir=$OUT/train/$bridge" eval.limit=8 trainer.progress_bar=false
    limit=20
done
if [ "$CUDA" = 1 ]; then
    step train_fsdp 40 "$PY" -m experiments.cli train experiment=smoke bridge=mlp trainer=fsdp trainer.devices=1 \
        "stages.align.max_steps=$STEPS" "run_dir=$OUT/train/fsdp_mlp" eval.limit=8 trainer.progress_bar=false
else
    printf 'train_fsdp\tskipped (no CUDA)\t0\n' >> "$SUMMARY"
fi
echo "summary: $SUMMARY"
cat "$SUMMARY"
# the exit status: 0 when every step that ran succeeded
! awk -F'\t' 'NR > 1 && $2 ~ /^[0-9]+$/ && $2 != 0 { bad = 1 } END { exit !bad }' "$SUMMARY"
