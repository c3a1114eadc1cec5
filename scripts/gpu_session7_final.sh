#!/usr/bin/env bash
# 2026-11-30, seventh session, last call on the two-GPU machine (.whl/ and .carry/imagenet-sample
# carried): (1) `--ddp-reduce auto` now picks shard for graphed DDP: the default torchrun run at 128 per
# GPU from a raw store, its log line and rate; (2) what GPU decoding takes from a neighbour per
# nvImageCodec backend, each backend set in its own process (scripts/bench_decode_sm_cost.py);
# (3) under MPS, pinned to 16 cores as on the one-GPU machine, `alexnet train --batch-size 256 --decode
# mixed --gpu-workers 3` with the loader's backends (engines, then CUDA) and with the engines alone
# (nvImageCodec's default backends patched by a sitecustomize for that run only).
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
lscpu | grep -E "^(CPU\(s\)|Thread|Core|Socket|NUMA node[0-9])" > "$OUT/lscpu.txt"
raw_store 144000
train def-2-128 100 "${TWO[@]}" --data /tmp/D --epochs 3 --test-crops 1 --batch-per-process 128
rm -rf /tmp/D /tmp/D0
jpeg_store 128000
for b in HW_GPU_ONLY GPU_ONLY HW_GPU_ONLY+GPU_ONLY; do
  timeout 60 python scripts/bench_decode_sm_cost.py /tmp/rep --seconds 3 --backends $b > "$OUT/sm_$b.txt" 2>&1
  stamp "sm cost $b: $?"
done
mkdir -p /tmp/hwonly
cat > /tmp/hwonly/sitecustomize.py <<'PY'
import alexnet.data.gpu_decode as g
g.NvImageCodec.__init__.__defaults__ = (4, ("HW_GPU_ONLY",))
PY
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --decode mixed --gpu-workers 3)
if mps_start; then
  train mps-both 75 taskset -c 0-15 "${ONE[@]}" "${REP[@]}"
  train mps-hw 75 env PYTHONPATH=/tmp/hwonly:$PYTHONPATH taskset -c 0-15 "${ONE[@]}" "${REP[@]}"
  mps_stop
fi
cat "$OUT/lscpu.txt"
grep -E "^parallel|^loader|rror" "$LOG" | sort | uniq -c
for b in HW_GPU_ONLY GPU_ONLY HW_GPU_ONLY+GPU_ONLY; do tail -1 "$OUT/sm_$b.txt"; done
grep -hE "^\(|Error|neighbour:" "$OUT"/sm_*.txt | head -8
python scripts/runs_table.py "def-2-128|2|
mps-both|1|
mps-hw|1|HW only"
