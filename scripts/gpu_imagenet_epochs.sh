#!/usr/bin/env bash
# Two ImageNet-size epochs of `alexnet train` on one H200 per run, against the resident step on the same
# machine (issue 11, items 2 and 4): the seventeenth session's runs (defaults at 256 and 128) and the
# eighteenth's (3 GPU workers against 4 and 5, in alternation; STARVED=1 for the "data-bound:" line).
#   bash scripts/gpu_imagenet_epochs.sh store RUNSPEC...   # writes the store (1,281,167 + 10,000 JPEG-90
#                                                           # images, /tmp/rep), the resident step, then runs
#   bash scripts/gpu_imagenet_epochs.sh runs RUNSPEC...    # the next call on the same machine: runs only
# RUNSPEC: "NAME|BATCH" or "NAME|BATCH|OPTIONS" (defaults otherwise; e.g. "g4|256|--gpu-workers 4"), one process;
# "NAME|BATCH|OPTIONS|2": torchrun on two GPUs (the two-GPU machine), BATCH per process, under an MPS daemon
# this script starts (torchrun's processes cannot start their own). A run is started only while RUN_MIN (100)
# s of LIMIT (590) are left (gpu_env.sh's run_all).
# STARVED=1: last, a small store (/tmp/small: 20,000 + 2,000 images) trained 2 epochs at 256 with 2 CPU workers
# and no GPU workers (--decode cpu --loader-workers 2), which must print the "data-bound:" line after epoch 2.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
mode=$1; shift
if [ "$mode" = store ]; then
  jpeg_store 1281167 430
  [ "$(nvidia-smi -L | wc -l)" -gt 1 ] && export CUDA_VISIBLE_DEVICES=0  # the step of one GPU
  resident_step 256 128 > "$OUT/resident.txt" 2>&1
  unset CUDA_VISIBLE_DEVICES
  stamp "resident: $(grep -E '^ *alexnet2012 +graphed' $OUT/resident.txt | tr -s ' ')"
else
  nv_wheels
  [ -f /tmp/rep/meta.json ] || { stamp "no store: the machine is not the one of the last call"; exit 3; }
  stamp "store: $(du -sb /tmp/rep | cut -f1) bytes, from the last call"
fi
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
RUNS=""
for spec in "$@"; do
  IFS='|' read -r name batch opts gpus <<< "$spec"
  if [ "${gpus:-1}" = 2 ]; then run="$name|2|REP|--batch-per-process $batch $opts"; runner=with_mps
  else run="$name|1|REP|--batch-size $batch $opts"; runner=run_all; fi
  LIMIT=${LIMIT:-590} RUN_MIN=${RUN_MIN:-100} RUN_LIMIT=160 $runner "$run"
  RUNS+="$run"$'\n'
done
if [ "${STARVED:-0}" = 1 ]; then
  timeout 60 python -c "from alexnet.data.replica import make_replica_store as m; m('.carry/imagenet-sample', '/tmp/small', count=20000, val_count=2000, progress=False)" > /dev/null 2>&1
  stamp "small store: $? $(du -sh /tmp/small | cut -f1)"
  REP=(--data /tmp/small --epochs 2 --val-split val --test-crops 1 --stall-epochs 0 --batch-size 256 --decode cpu --loader-workers 2)
  RUNS+="starved|1|REP|"$'\n'
  LIMIT=$(( ${LIMIT:-590} + 60 )) RUN_MIN=50 RUN_LIMIT=110 run_all "starved|1|REP|"
  stamp "data-bound lines: $(grep -c '^data-bound' "$LOG")"
  grep '^data-bound' "$LOG" | cut -c1-400
fi
grep -E "^loader|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-200 | head
tail -4 "$OUT/resident.txt" 2>/dev/null
python scripts/runs_table.py "$RUNS"
