#!/usr/bin/env bash
# Written in the tenth session (2026-12-01) for the next call (not yet run): the ImageNet-size epochs again
# now that the paper's update runs as one Triton pass (the step 7% faster at 256, 11% at 128, resident).
# On whichever machine runs it (.whl/ and .carry/imagenet-sample carried): the ImageNet-size JPEG-90
# replica store (1,281,167 + 10,000 images, page cache warm), then two epochs a run with the defaults,
# so that epoch 2 is the steady rate; the resident step first, in the same call.
#   one GPU (16 cores): 256 under MPS, 128 without MPS (auto: CPU decoding), 128 under MPS, while time is left;
#   two GPUs: 2 x 256 under MPS, 2 x 128 without MPS.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
GPUS=$(nvidia-smi -L | wc -l)
# the update kernel's GPU tests first (its weight-decay-free branch and the bit-level comparison came after
# the tenth session's GPU call)
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "update or sgd" 2>&1 | tail -3 > "$OUT/tests.txt"
resident_step 256 128 2>>"$LOG" | grep -E "^form|^alexnet2012" > "$OUT/bench.txt"
jpeg_store 1281167 430  # about 265 s on the one-GPU machine's 16 cores, 162 s on 32
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
LIMIT=590 RUN_LIMIT=130
if [ "$GPUS" -ge 2 ]; then
  RUNS="in-2x256|2|2 x 256, MPS (defaults)
in-2x128|2|2 x 128, no MPS (defaults)"
  ONE=("${TWO[@]}")  # run_all starts "${ONE[@]}": torchrun on two GPUs here
  if mps_start; then run_all "in-2x256|2|REP|--batch-per-process 256"; mps_stop; fi
  run_all "in-2x128|2|REP|--batch-per-process 128"
else
  RUNS="in-1x256|1|1 x 256, MPS (defaults)
in-1x128c|1|1 x 128, no MPS (defaults: CPU decoding)
in-1x128|1|1 x 128, MPS (defaults)"
  if mps_start; then run_all "in-1x256|1|REP|--batch-size 256"; mps_stop; fi
  run_all "in-1x128c|1|REP|--batch-size 128"
  if mps_start; then run_all "in-1x128|1|REP|--batch-size 128"; mps_stop; fi
fi
cat "$OUT/tests.txt"
grep -E "^loader|rror|Traceback" "$LOG" | sort | uniq -c | cut -c1-300
echo "resident step, graphed (images/s):"; cat "$OUT/bench.txt"
python scripts/runs_table.py "$RUNS"
