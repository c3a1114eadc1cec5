#!/usr/bin/env bash
# Written 2026-11-30 for a device call, on the one-GPU machine (`nvidia-h200`,
# 16 cores) with .whl/ and .carry/imagenet-sample carried: what GPU decoding costs the CPU.
#   1. the decoders alone (scripts/bench_gpu_decode.py): images/s and the CPU cores each keeps busy,
#      nvImageCodec with 1, 2, 4 and 8 CPU threads, torchvision's nvJPEG;
#   2. the loader alone (batch 256): GPU workers only (1, 2) and CPU workers beside one GPU worker
#      (8, 11, 13 of them), against CPU workers alone (14).
# The question: if nvJPEG kept about a core per 1,800 images/s busy, its Huffman decoding would run on
# the host (as DALI's hybrid_huffman_threshold says for images under 1 MP). Run in the fourth session
# (RESULTS.md): each GPU decoder keeps one core busy, at 9,000-18,000 images/s.
source scripts/gpu_env.sh
nv_wheels
timeout 60 python -c "from alexnet.data.replica import make_replica_store as m; m('.carry/imagenet-sample', '/tmp/rep', count=64000, progress=False)" > /dev/null 2>&1
stamp "store: $?"
timeout 200 python scripts/bench_gpu_decode.py /tmp/rep --images 25600 --nvimgcodec-threads 1 2 4 8 --no-all-gpus \
  > "$OUT/decoders.txt" 2>&1
stamp "decoders: $?"
timeout 200 python -c "
from alexnet.data.loader_bench import measure
measure('/tmp/rep', batch=256, workers_list=(14,), decode_modes=('cpu',), seconds=5)
measure('/tmp/rep', batch=256, workers_list=(8, 11, 13), decode_modes=('cuda', 'mixed'), seconds=5, gpu_workers_list=(1, 2))
" > "$OUT/loader.txt" 2>&1
stamp "loader: $?"
tail -8 "$OUT/decoders.txt"; grep -v "^$" "$OUT/loader.txt" | tail -14
