#!/usr/bin/env bash
# 2026-11-30, seventh session (.whl/ and .carry/imagenet-sample carried): nvImageCodec's decoding (the
# JPEG engines; its CUDA backend cannot be created here) slows to 1,271 images/s beside a GPU-saturating
# neighbour while the neighbour keeps 102%: the decoder's own small kernels wait. Does a high-priority
# decoder stream fix it? (1) scripts/bench_decode_sm_cost.py at priority 0 and -1; (2) under MPS, pinned
# to 16 cores, `alexnet train --batch-size 256 --decode mixed --gpu-workers 3`, 4 epochs, the GPU
# workers' stream at priority -1 (DECODE_STREAM_PRIORITY patched by a sitecustomize) and at 0.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 128000
for p in 0 -1; do
  timeout 60 python scripts/bench_decode_sm_cost.py /tmp/rep --seconds 3 --backends HW_GPU_ONLY --priority=$p > "$OUT/sm_p$p.txt" 2>&1
  stamp "sm cost, priority $p: $?"
done
mkdir -p /tmp/prio
echo "import alexnet.data.gpu_decode as g; g.DECODE_STREAM_PRIORITY = -1" > /tmp/prio/sitecustomize.py
REP=(--data /tmp/rep --epochs 4 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --decode mixed --gpu-workers 3)
if mps_start; then
  train mps-prio-high 85 env PYTHONPATH=/tmp/prio:$PYTHONPATH taskset -c 0-15 "${ONE[@]}" "${REP[@]}"
  train mps-prio-0 85 taskset -c 0-15 "${ONE[@]}" "${REP[@]}"
  mps_stop
fi
grep -E "^loader|rror" "$LOG" | sort | uniq -c
grep -hE "^\(|Error|neighbour:" "$OUT"/sm_p*.txt
python scripts/runs_table.py "mps-prio-high|1|priority -1
mps-prio-0|1|priority 0"
