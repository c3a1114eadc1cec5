#!/usr/bin/env bash
# The last checks of 2026-11-30 (two-GPU machine, .whl/ and .carry/imagenet-sample carried): the GPU
# decoder tests, the columns-per-process exit test, one epoch of `alexnet train --decode mixed` on one
# GPU from a 128,000-image replica store. (That day the device time ran out: the exit test and the
# store hit the shorter limits they had then.)
source scripts/gpu_env.sh
nv_wheels
timeout 45 python -m pytest -q -m gpu tests/test_feeder.py -k "gpu_decoders or test_cuda" > $OUT/feeder_gpu.txt 2>&1; stamp "feeder GPU tests: $(tail -1 $OUT/feeder_gpu.txt)"
timeout 200 python -m pytest -q -m gpu tests/test_distributed.py -k "graphed_distributed and columns" > $OUT/exit_columns.txt 2>&1; stamp "columns exit test: $(tail -1 $OUT/exit_columns.txt)"
timeout 90 python -c "from alexnet.data.replica import make_replica_store as m; m('.carry/imagenet-sample', '/tmp/rep', count=128000, progress=False)" > /dev/null 2>&1; stamp store
LOG=$OUT/e2e.log; REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500)
train 1-mixed 70 "${ONE[@]}" "${REP[@]}" --batch-size 256 --decode mixed
grep -E "loader:|epoch 1" $LOG
