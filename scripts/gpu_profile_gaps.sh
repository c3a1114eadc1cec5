#!/usr/bin/env bash
# For the next call (written in the thirteenth session, 2026-12-01): with the loop's checks read a step late,
# `alexnet train` at batch 256 from JPEG on 16 cores idles 0.164 ms a step, 0.138 of it in gaps under
# 0.5 ms whose place is unknown. `alexnet profile` now counts the gaps by length and by the kind of kernel
# that ended them: gaps before the step's first kernels (its input copy, memcpy) are the host or the
# handoff; gaps before convolutions inside the replayed graph are the GPU busy with the decoders (MPS).
# Runs: the defaults, `--gpu-workers 2` (fewer decoders beside the step), `--decode cpu` (none). A
# JPEG-90 replica store of 384,000 train images; steps 500-899 of epoch 1. .whl/ and .carry/ carried.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_profile_train.py 2>&1 | grep -E "^E |passed|failed" | cut -c1-1500 > "$OUT/tests.txt"
jpeg_store 384000 200
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
for spec in "defaults|" "gpu-workers-2|--gpu-workers 2" "decode-cpu|--decode cpu"; do
  IFS='|' read -r name opts <<< "$spec"
  profile_one "$name" $opts
done
cat "$OUT/tests.txt"
for name in defaults gpu-workers-2 decode-cpu; do echo "== $name"; sed -n '/^window:/,$p' "$OUT/e2e_$name.txt"; done
