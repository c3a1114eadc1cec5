#!/usr/bin/env bash
# After scripts/gpu_checks_late.sh, on the same warm machine (its store /tmp/rep is reused): the resident
# step at 256 and 128, then two ImageNet-size epochs of `alexnet train` with its defaults (the run's own
# MPS daemon) at 256 and at the paper's 128, one H200, with the loop's checks read a step late.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 1281167 430
resident_step 256 128 > "$OUT/resident.txt" 2>&1
stamp "resident step"
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
LIMIT=${LIMIT:-590} RUN_LIMIT=${RUN_LIMIT:-150}
RUNS="a256|1|REP|--batch-size 256
a128|1|REP|--batch-size 128"
run_all "$RUNS"
grep -E "^loader|^MPS|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-200
tail -4 "$OUT/resident.txt"
python scripts/runs_table.py "$RUNS"
