#!/usr/bin/env bash
# Fifteenth session (2026-12-01), after scripts/gpu_kernels_e2e_vs_resident.sh: with CPU decoding the
# step's kernels took what the resident step's take (+0.3%), with the defaults (3 GPU workers under the
# run's MPS daemon) ~3% longer. Is it MPS itself or the decoders' work beside the step? On one machine:
# CPU decoding as an MPS client (a daemon started here, which the run then uses), and one GPU worker
# (a third of the defaults' GPU decoding) under the run's own daemon. Table last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 384000 200
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
if mps_start; then
  profile_one decode-cpu-mps --decode cpu
  grep -h "MPS" "$OUT/e2e_decode-cpu-mps.txt" | head -2 | cut -c1-200
  mps_stop
fi
profile_one gpu-workers-1 --gpu-workers 1
kernel_table
