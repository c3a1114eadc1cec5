#!/usr/bin/env bash
# 2026-11-30, fourth session, on the two-GPU machine (.carry/imagenet-sample carried): the step's
# reducer with the convolutions' gradients all-reduced as one flattened buffer (one collective, not
# ten) and NCCL's AVG (no division pass over the 244 MB of gradients): its exactness test over NCCL,
# then DDP weak scaling from a raw store against one GPU (the same call), 3 epochs each.
source scripts/gpu_env.sh
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_distributed.py -k "exact_mean" > "$OUT/test.txt" 2>&1
stamp "reducer test: $(tail -1 "$OUT/test.txt")"
export COUNT_RAW=${COUNT_RAW:-160000} LIMIT=${LIMIT:-470} RUNS="D-2-256|2|RAW|--batch-per-process 256
D-2-128|2|RAW|--batch-per-process 128
D-1-256|1|RAW|--batch-size 256
D-1-128|1|RAW|--batch-size 128"
bash scripts/gpu_raw_scaling_and_mixed.sh
