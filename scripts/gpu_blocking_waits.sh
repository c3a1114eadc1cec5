#!/usr/bin/env bash
# 2026-11-30, eighth session, the one-GPU machine (16 cores; .whl/ and .carry/imagenet-sample carried).
# Batch 256 from a JPEG store under MPS (auto: 11 CPU + 3 GPU workers) stops at 81-84% of the resident
# step. Where do the 16 cores go? Each run is watched by scripts/cpu_monitor.py over its epoch 2 (in
# the recorded call the monitor slept a fixed 42 s and sampled 5 s, which fell after the epochs; it now
# follows the run's metrics.jsonl).
# The training process now sleeps on a blocking event where it waits for the GPU (every tenth step's
# loss; a full ring), instead of spinning a core (alexnet.runtime.BLOCKING_WAITS); the spinning run
# patches it back with a sitecustomize. Then 4 GPU workers, and 12 CPU workers (--loader-workers). Tables last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 128000
sitecustomize /tmp/spin "import alexnet.runtime as r; r.BLOCKING_WAITS = False"
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256)
if mps_start; then
  watch block; train block 85 "${ONE[@]}" "${REP[@]}"
  watch spin; train spin 85 env PYTHONPATH=/tmp/spin:$PYTHONPATH "${ONE[@]}" "${REP[@]}"
  watch gw4; train gw4 85 "${ONE[@]}" "${REP[@]}" --gpu-workers 4
  watch w12; train w12 85 "${ONE[@]}" "${REP[@]}" --loader-workers 12
  mps_stop
fi
wait
grep -E "^loader|rror" "$LOG" | sort | uniq -c | cut -c1-250
cat "$OUT/cpu.txt"
python scripts/runs_table.py "block|1|MPS, 256, blocking waits (the new default)
spin|1|MPS, 256, spinning waits (before)
gw4|1|MPS, 256, --gpu-workers 4
w12|1|MPS, 256, --loader-workers 12"
