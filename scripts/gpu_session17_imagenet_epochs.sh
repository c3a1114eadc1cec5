#!/usr/bin/env bash
# Seventeenth session (2026-12-02), calls 2-3 on one warm machine: two ImageNet-size epochs of `alexnet train`
# with its defaults on one H200 (16 cores), the code with the step's graphs reading each batch in place
# (sixteenth session), against the resident step on the same machine (issue 11, items 2 and 4).
#   bash scripts/gpu_session17_imagenet_epochs.sh store RUNSPEC...   # writes the store (1,281,167 + 10,000 JPEG-90
#                                                                     # images, /tmp/rep), the resident step, then runs
#   bash scripts/gpu_session17_imagenet_epochs.sh runs RUNSPEC...    # the next call on the same machine: runs only
# RUNSPEC: "NAME|BATCH" or "NAME|BATCH|OPTIONS" (defaults otherwise; e.g. "g4|256|--gpu-workers 4", for the next
# session: 3 against 4 GPU workers on a machine whose CPU workers fall behind). A run is started only while
# 100 s of LIMIT (590) are left (gpu_env.sh's run_all).
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
mode=$1; shift
if [ "$mode" = store ]; then
  jpeg_store 1281167 430
  resident_step 256 128 > "$OUT/resident.txt" 2>&1
  stamp "resident: $(grep -E '^ *alexnet2012 +graphed' $OUT/resident.txt | tr -s ' ')"
else
  nv_wheels
  [ -f /tmp/rep/meta.json ] || { stamp "no store: the machine is not the one of the last call"; exit 3; }
  stamp "store: $(du -sb /tmp/rep | cut -f1) bytes, from the last call"
fi
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
RUNS=""
for spec in "$@"; do
  IFS='|' read -r name batch opts <<< "$spec"
  RUNS+="$name|1|REP|--batch-size $batch $opts"$'\n'
done
LIMIT=${LIMIT:-590} RUN_MIN=100 RUN_LIMIT=160 run_all "$RUNS"
grep -E "^loader|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-200 | head
tail -4 "$OUT/resident.txt" 2>/dev/null
python scripts/runs_table.py "$RUNS"
