#!/usr/bin/env bash
# 2026-11-30, fifth session, the one-GPU machine (`nvidia-h200`, 16 cores; .whl/ and
# .carry/imagenet-sample carried). Are GPU workers starved of ring slots? Batches are used in order and a
# CPU worker holds its two batches ~0.3 s, so a GPU worker (~40 batches/s) soon has no free slot to fill:
# the Feeder now gives each GPU worker GPU_AHEAD (16) more slots (`gpu_ahead`). (1) The loader alone,
# batch 256, JPEG-90 replica store: CPU workers alone (14) against CPU + GPU workers (nvImageCodec) with
# 0 (the old ring), 16 and 32 slots ahead; (2) `alexnet train --batch-size 256` end to end, 2 epochs,
# CPU workers (the default) against mixed with 1 and 2 GPU workers. Prints the tables last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
timeout 150 python -c "from alexnet.data.replica import make_replica_store as m; m('.carry/imagenet-sample', '/tmp/rep', count=${COUNT:-160000}, progress=False)" > /dev/null 2>&1
stamp "store: $? $(du -sh /tmp/rep | cut -f1)"
timeout 200 python -c "
from alexnet.data.loader_bench import measure
measure('/tmp/rep', batch=256, workers_list=(14,), decode_modes=('cpu',), seconds=5)
measure('/tmp/rep', batch=256, workers_list=(13,), decode_modes=('mixed',), seconds=5, gpu_workers_list=(1,), gpu_ahead_list=(0, 16, 32))
measure('/tmp/rep', batch=256, workers_list=(12,), decode_modes=('mixed',), seconds=5, gpu_workers_list=(2,), gpu_ahead_list=(0, 16))
measure('/tmp/rep', batch=256, decode_modes=('cuda',), seconds=5, gpu_workers_list=(2,), gpu_ahead_list=(0, 16))
" > "$OUT/loader.txt" 2>&1
stamp "loader: $?"
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500)
RUNS="1-cpu|1|REP|--batch-size 256
1-mixed-1|1|REP|--batch-size 256 --decode mixed --gpu-workers 1
1-mixed-2|1|REP|--batch-size 256 --decode mixed --gpu-workers 2"
while IFS='|' read -r name gpus data args; do
  left=$(( ${LIMIT:-585} - ($(date +%s) - T0) ))
  if [ $left -lt 45 ]; then stamp "$name: skipped, ${left} s left"; continue; fi
  train "$name" $(( left < 130 ? left : 130 )) "${ONE[@]}" "${REP[@]}" $args
done <<< "$RUNS"
grep -E "^loader|^data:|rror" "$LOG" | sort | uniq -c
grep -v "^$" "$OUT/loader.txt" | grep -v "arn" | tail -14
python scripts/runs_table.py "$RUNS"
