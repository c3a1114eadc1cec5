#!/usr/bin/env bash
# The one-GPU machine (`nvidia-h200`: one H200, 16 cores), 2026-11-30, third session: the machine
# issue 11 names. From a raw store (150,000 images, 3 epochs) and a JPEG-90 replica store
# (160,000 images), page cache warm, `alexnet train` at 256: CPU workers (simplejpeg), CPU + GPU
# workers (torchvision's nvJPEG, nvImageCodec), GPU workers alone; and at the paper's 128.
export COUNT_RAW=150000 COUNT=160000 RUNS="D-1-256|1|RAW|--batch-size 256
store|0|-|-
1-sj|1|REP|--batch-size 256
1-mixed-tv|1|REP|--batch-size 256 --decode mixed --gpu-decoder torchvision
1-mixed-nv|1|REP|--batch-size 256 --decode mixed
1-cuda-tv|1|REP|--batch-size 256 --decode cuda --gpu-decoder torchvision --gpu-workers 2
1-sj-128|1|REP|--batch-size 128"
exec bash scripts/gpu_raw_scaling_and_mixed.sh
