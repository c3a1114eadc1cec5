#!/usr/bin/env bash
# Written 2026-11-30 (run in the fourth session: RESULTS.md), on the two-GPU machine with
# .carry/imagenet-sample carried: DDP weak scaling from a raw store (the third session's 0.90 at 256
# and 0.86 at 128 per GPU, target 0.95) with the gradients all-reduced in bf16 (--ddp-reduce-dtype
# bf16, half the bytes) against fp32, both overlapped with the convolutions' backward pass (the default).
export COUNT_RAW=${COUNT_RAW:-160000} LIMIT=${LIMIT:-560} RUNS="D-1-256|1|RAW|--batch-size 256
D-2-256|2|RAW|--batch-per-process 256
D-2-256-bf16|2|RAW|--batch-per-process 256 --ddp-reduce-dtype bf16
D-1-128|1|RAW|--batch-size 128
D-2-128|2|RAW|--batch-per-process 128
D-2-128-bf16|2|RAW|--batch-per-process 128 --ddp-reduce-dtype bf16"
exec bash scripts/gpu_raw_scaling_and_mixed.sh
