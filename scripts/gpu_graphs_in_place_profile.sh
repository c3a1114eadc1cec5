#!/usr/bin/env bash
# Sixteenth session (2026-12-02), call 3: the GPU tests of the changed code in the order that failed in call
# 1 (an in-process `alexnet train --deterministic` left deterministic mode on; the fixture now turns it off,
# and a run sets it either way); then `alexnet profile` of `alexnet train` at 256 (steps 500-899, JPEG-90
# store of 384,000 images, page cache warm) with this code and the code before (.carry/old), in turn:
# the step's kernel time beside the loader, which epoch rates on a data-starved machine (call 2) hide.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_checks.py tests/test_train.py tests/test_step.py \
  tests/test_feeder.py tests/test_profile_train.py --tb=short 2>&1 | grep -vE "^\s*$|[Ww]arn" | tail -25 > "$OUT/tests.txt"
stamp "tests: $(tail -1 $OUT/tests.txt)"
jpeg_store 384000 200
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
STOP_AFTER=${STOP_AFTER:-420} profile_in_turn new1 old1 new2 old2
cat "$OUT/tests.txt"
for f in "$OUT"/e2e_*.txt; do echo "== $f"; grep -E "^window|^GPU busy|of which" "$f"; done
kernel_table
