#!/usr/bin/env bash
# Twelfth session (2026-12-01): batch 256 from the ImageNet-size JPEG store stops at 88.6-90.0% of the
# resident step with waits under 2 s an epoch, so the step itself runs slower beside the loader. Do the
# CPU workers take cores the training process and the GPU workers need when they wake? The same runs with
# the CPU workers at niceness NICE (alexnet.data.procs.WORKER_NICE, patched by a sitecustomize) and at 0.
# Defaults otherwise (--mps auto starts the daemon; 11 CPU + 3 GPU workers). .whl/, .carry/imagenet-sample carried.
#   bash scripts/gpu_worker_nice.sh "NAME|NICE|OPTIONS|LABEL" ...
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 1281167 430
sitecustomize /tmp/nice "import os, alexnet.data.procs as p; p.WORKER_NICE = int(os.environ.get('EXP_NICE', '0'))"
export PYTHONPATH=/tmp/nice:$PYTHONPATH
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
LIMIT=${LIMIT:-590} RUN_LIMIT=${RUN_LIMIT:-120}
run_one() { export EXP_NICE=$2; run_all "$1|1|REP|$3"; }  # NAME NICE OPTIONS
each_run "$@"
grep -E "^loader|^MPS|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-200
python scripts/runs_table.py "$RUNS"
