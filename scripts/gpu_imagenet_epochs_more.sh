#!/usr/bin/env bash
# More ImageNet-size runs after scripts/gpu_imagenet_epochs_next.sh, on the same machine while it is warm
# (its store /tmp/rep is then reused: make_replica_store returns at once when the store's parameters match;
# on a fresh machine it is written again, about 265 s on 16 cores). Two epochs a run, one GPU.
#   bash scripts/gpu_imagenet_epochs_more.sh "NAME|MPS|OPTIONS|LABEL" ...   (MPS: 1 under MPS, 0 without)
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 1281167 430
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
LIMIT=${LIMIT:-590} RUN_LIMIT=${RUN_LIMIT:-130}
run_one() {  # NAME MPS OPTIONS
  if [ "$2" = 1 ]; then
    if mps_start; then run_all "$1|1|REP|$3"; mps_stop; fi
  else
    run_all "$1|1|REP|$3"
  fi
}
each_run "$@"
grep -E "^loader|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-300
python scripts/runs_table.py "$RUNS"
