#!/usr/bin/env bash
# Seventeenth session (2026-12-02), call 1: the whole GPU test suite on the final code of the sixteenth session
# (its last changes had not run on a GPU) in one process, as a user runs it; then a JPEG-90 store of 384,000
# images (page cache warm), the resident step at 256 and 128, and two-epoch `alexnet train` runs with the
# defaults at 256 and 128 (issue 11, item 2), as long as the call's time allows.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
timeout 260 python -m pytest -q -p no:cacheprovider -m gpu tests/ --tb=short -rfE 2>&1 \
  | grep -vE "^\s*$|[Ww]arn|jit" > "$OUT/gpu_tests.txt"
stamp "gpu tests: $(tail -1 $OUT/gpu_tests.txt)"
jpeg_store 384000 170
resident_step 256 128 > "$OUT/resident.txt" 2>&1
stamp "resident: $(grep -E '^ *alexnet2012 +graphed' $OUT/resident.txt | tr -s ' ' | head -2 | tr '\n' ';')"
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
LIMIT=${LIMIT:-585} RUN_LIMIT=${RUN_LIMIT:-80}
RUNS="d256a|1|REP|--batch-size 256
d128|1|REP|--batch-size 128
d256b|1|REP|--batch-size 256"
run_all "$RUNS"
grep -E "^loader|^MPS|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-200 | head
grep -E "passed|failed|FAILED|ERROR" "$OUT/gpu_tests.txt" | head -20
tail -5 "$OUT/resident.txt"
python scripts/runs_table.py "$RUNS"
