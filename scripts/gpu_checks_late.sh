#!/usr/bin/env bash
# Thirteenth session (2026-12-01): `alexnet profile` showed the defaults at batch 256 from JPEG idle 0.34 ms
# a step (5.8%) while the step's kernels ran within 2% of the resident step's. The loop read the loss every
# 10 steps right after launching the step, emptying the GPU's queue; now (alexnet.checks) it reads it a
# step late. This call: the GPU tests of what changed; the ImageNet-size JPEG-90 store (1,281,167 images,
# page cache warm); `alexnet profile` of the defaults at 256 (steps 500-899 of epoch 1) with this code and
# with the code before the change (.carry/before/src: `git archive dbe782a src`), same store, same machine.
# .whl/ and .carry/ carried. Then, on the same warm machine: scripts/gpu_checks_late_epochs.sh.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
timeout 200 python -m pytest -q -p no:cacheprovider tests/test_checks.py tests/test_gpu_decode_import.py \
  tests/test_profile_train.py tests/test_runtime.py 2>&1 | grep -E "^E |passed|failed" | cut -c1-1500 > "$OUT/tests.txt"
stamp "tests: $(tail -1 "$OUT/tests.txt")"
jpeg_store 1281167 430
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
for spec in "late|$PWD/src" "before|$PWD/.carry/before/src"; do
  IFS='|' read -r name src <<< "$spec"
  PYTHONPATH=/tmp/nvpkgs:$src profile_one "$name"
done
cat "$OUT/tests.txt"
echo "stderr lines before the first 'network:' line (nvImageCodec's noise; 'before' has it):"
for name in late before; do echo "  $name: $(sed '/^network:/q' "$OUT/e2e_$name.txt" | grep -c -i "nvjpeg2k\|nvtiff")"; done
for name in late before; do echo "== $name"; sed -n '/^window:/,$p' "$OUT/e2e_$name.txt"; done
