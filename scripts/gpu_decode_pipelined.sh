#!/usr/bin/env bash
# 2026-11-30, sixth session, the one-GPU machine (`nvidia-h200`, 16 cores; .whl/ and .carry/imagenet-sample
# carried). GPU workers now keep every batch they are given in flight (read and submit the next while the
# GPU decodes and copies back the earlier ones) and are given up to GPU_DEPTH (4) batches, before any CPU
# worker. (1) the GPU feeder tests; (2) the loader alone, batch 256, JPEG-90 replica store, with the cores
# each kind of process keeps busy and the share of batches the GPU workers decode; (3) `alexnet train`
# end to end, 3 epochs, at 256 and 128, CPU decoding (the default) against mixed with 1-3 GPU workers.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store ${COUNT:-160000}
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_feeder.py -m gpu > "$OUT/feeder_gpu_tests.txt" 2>&1
stamp "gpu tests: $? $(tail -1 "$OUT/feeder_gpu_tests.txt")"
timeout 150 python -c "
from alexnet.data.loader_bench import measure
measure('/tmp/rep', batch=256, workers_list=(14,), decode_modes=('cpu',), seconds=5)
measure('/tmp/rep', batch=256, decode_modes=('cuda',), seconds=5, gpu_workers_list=(1, 2, 3))
measure('/tmp/rep', batch=256, workers_list=(13,), decode_modes=('mixed',), seconds=5, gpu_workers_list=(1,))
measure('/tmp/rep', batch=256, workers_list=(12,), decode_modes=('mixed',), seconds=5, gpu_workers_list=(2,))
measure('/tmp/rep', batch=256, workers_list=(11, 9), decode_modes=('mixed',), seconds=5, gpu_workers_list=(3,))
" > "$OUT/loader.txt" 2>&1
stamp "loader: $?"
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500)
RUNS="256-cpu|1|REP|--batch-size 256
256-mixed-1|1|REP|--batch-size 256 --decode mixed --gpu-workers 1
256-mixed-2|1|REP|--batch-size 256 --decode mixed --gpu-workers 2
256-mixed-3|1|REP|--batch-size 256 --decode mixed --gpu-workers 3
128-mixed-2|1|REP|--batch-size 128 --decode mixed --gpu-workers 2
128-cpu|1|REP|--batch-size 128
128-mixed-1|1|REP|--batch-size 128 --decode mixed --gpu-workers 1"
LIMIT=${LIMIT:-580} RUN_LIMIT=100 run_all "$RUNS"
grep -E "^loader|^data:|rror" "$LOG" | sort | uniq -c
grep -v "^$" "$OUT/loader.txt" | grep -v "arn" | grep -v "^loader alone" | tail -14
python scripts/runs_table.py "$RUNS"
