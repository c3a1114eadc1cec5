#!/usr/bin/env bash
# 2026-11-30, fifth session, one call on the two-GPU machine (.carry/imagenet-sample carried):
# (1) the reducers' exact-mean test over NCCL and DDP weak scaling from a raw store with the classifier's
#     small gradients bucketed (25 MB buckets: four collectives instead of six; not yet run on GPUs),
#     `scripts/gpu_ddp_avg.sh`; (2) where the remaining time a step goes, `scripts/gpu_ddp_profile.sh`
#     (one process against two, GPU time per kernel category; NCCL_PROTO, NCCL_NTHREADS), in what time is
#     left of the call's 590 s.
source scripts/gpu_env.sh
LIMIT=330 COUNT_RAW=144000 bash scripts/gpu_ddp_avg.sh > "$OUT/avg.txt" 2>&1
stamp "e2e done"; tail -25 "$OUT/avg.txt"
cp "$OUT/e2e.log" "$OUT/raw_ddp_buckets.log" 2>/dev/null
BUDGET=$(( 585 - ($(date +%s) - T0) )) bash scripts/gpu_ddp_profile.sh
stamp "all done"
