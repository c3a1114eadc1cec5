#!/usr/bin/env bash
# 2026-11-30, seventh session, first call on the two-GPU machine (`nvidia-h200-x2`; .whl/ and
# .carry/imagenet-sample carried): (1) the shared-out classifier update against `overlap` over NCCL,
# bounded by the run-to-run noise it measures (GPU test, prints both differences); (2) the feeder's GPU
# tests (the pipelined GPU workers, the dispatch rewritten in review); (3) `--decode auto` itself: a plain
# `alexnet train` on a JPEG store, pinned to 16 cores (the one-GPU machine's count) and then on all 32;
# (4) `alexnet bench`, the two-GPU rows beside the one-GPU forms, each at its best setting, one run.
source scripts/gpu_env.sh
LOG=$OUT/auto.log; : > "$LOG"
timeout 220 python -m pytest -q -s -p no:cacheprovider tests/test_distributed.py -k "over_nccl" > "$OUT/shard_test.txt" 2>&1
stamp "shard test over NCCL: $(tail -1 "$OUT/shard_test.txt")"
jpeg_store 40000
timeout 90 python -m pytest -q -p no:cacheprovider -m gpu tests/test_feeder.py > "$OUT/feeder_tests.txt" 2>&1
stamp "feeder GPU tests: $(tail -1 "$OUT/feeder_tests.txt")"
AUTO=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
train auto-16 80 taskset -c 0-15 "${ONE[@]}" "${AUTO[@]}"
train auto-32 80 "${ONE[@]}" "${AUTO[@]}"
left=$(( 585 - ($(date +%s) - T0) ))
timeout --kill-after=10 $left python -m alexnet bench --batch 256 128 --rows step parallel \
    --steps 20 --repeats 3 --warmup 6 --json-out "$OUT/bench.json" --only \
    alexnet2012:graphed torchvision:graphed one-column:graphed columns-2gpu:eager columns-2streams:eager \
    columns-2proc:graphed ddp:graphed ddp:graphed-shard > "$OUT/bench.log" 2>&1
stamp "bench: exit $? ($left s given)"
grep -E "largest difference|passed|failed|^E " "$OUT/shard_test.txt" | head -8
grep -E "^decode|auto:|^loader|images/s|rror" "$LOG" | head -16
python scripts/runs_table.py "auto-16|1|REP|
auto-32|1|REP|"
sed -n '/^alexnet bench:/,$p' "$OUT/bench.log"  # the table and comparisons alexnet bench prints last
