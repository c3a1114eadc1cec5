#!/usr/bin/env bash
# The change it measures was reverted (device time ran out before its runs): check out dfaade9 and make
# .carry/old with `git archive dfaade9^ src | tar -x -C .carry/old` first.
# Fifteenth session (2026-12-01), last call: with GPU workers decoding under MPS the step's kernels take
# ~3% longer than with CPU decoding, most of it the decoders' work beside the step (MPS alone: ~0.8%). A GPU
# worker stacked each decoded batch on the GPU (a kernel reading and writing 50 MB on the SMs) before one
# copy back; now each image is copied straight into the ring (copy engines only) where nvImageCodec's
# images are contiguous. Here: whether they are; the GPU tests of the changed code (feeder, profile);
# then `alexnet profile` of the defaults at 256 with the code before (.carry/old)
# and after, alternated while time is left. A JPEG-90 replica store of 384,000 images. Table last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
timeout 40 python - > "$OUT/contiguous.txt" 2>&1 <<'PY'
import glob, torch
from alexnet.data.gpu_decode import NvImageCodec
files = sorted(glob.glob(".carry/imagenet-sample/*.JPEG"))[:8]
dec = NvImageCodec(torch.device("cuda", 0))
ims, _ = dec([torch.frombuffer(bytearray(open(f, "rb").read()), dtype=torch.uint8) for f in files], torch.cuda.current_stream())
print("nvImageCodec images contiguous:", [im.is_contiguous() for im in ims], "strides", [im.stride() for im in ims[:2]])
PY
timeout 120 python -m pytest -q -p no:cacheprovider -m gpu tests/test_profile_train.py tests/test_feeder.py -rfE 2>&1 | tail -3 > "$OUT/tests.txt"
stamp "tests: $(tail -1 $OUT/tests.txt)"
jpeg_store 384000 200
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
profile_in_turn old1 new1 old2 new2
cat "$OUT/contiguous.txt" "$OUT/tests.txt"
kernel_table
