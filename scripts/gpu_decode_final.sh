#!/usr/bin/env bash
# 2026-11-30, sixth session, the one-GPU machine (`nvidia-h200`, 16 cores; .whl/ and .carry/imagenet-sample
# carried). (1) What GPU decoding takes from a neighbour on the same GPU, per nvImageCodec backend
# (scripts/bench_decode_sm_cost.py); (2) on one machine and one store, `alexnet train` end to end, 3 epochs,
# at 256 and 128: CPU decoding (the default) against mixed with one GPU worker, then with NVIDIA's MPS
# daemon running, mixed with three GPU workers.
source scripts/gpu_env.sh
LIMIT=${LIMIT:-520} RUN_LIMIT=75
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store ${COUNT:-128000}
timeout 70 python scripts/bench_decode_sm_cost.py /tmp/rep --seconds 3 > "$OUT/sm_cost.txt" 2>&1
stamp "sm cost: $?"
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
PLAIN="256-cpu|1|REP|--batch-size 256
256-m1|1|REP|--batch-size 256 --decode mixed --gpu-workers 1
128-cpu|1|REP|--batch-size 128
128-m1|1|REP|--batch-size 128 --decode mixed --gpu-workers 1"
MPS="mps-256-m3|1|REP|--batch-size 256 --decode mixed --gpu-workers 3
mps-128-m3|1|REP|--batch-size 128 --decode mixed --gpu-workers 3"
run_all "$PLAIN"
with_mps "$MPS"
grep -E "^loader|rror" "$LOG" | sort | uniq -c
tail -6 "$OUT/sm_cost.txt"
python scripts/runs_table.py "$PLAIN
$MPS"
