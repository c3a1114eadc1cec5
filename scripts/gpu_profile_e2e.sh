#!/usr/bin/env bash
# Twelfth session (2026-12-01), for the next call: at batch 256 from JPEG on 16 cores `alexnet train` runs at
# 88-90% of the resident step while it waits under 1 s an epoch, and its CPU workers at nice 10 changed
# nothing. Where does the rest go? `alexnet profile` traces 400 steps of real runs (the training
# process's kernels and copies: busy, idle, time by category) against the resident step's profile.
# A JPEG-90 replica store of 384,000 train images (1,500 steps an epoch at 256; page cache warm); the window
# is steps 500-899 of epoch 1. .whl/ and .carry/imagenet-sample carried.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_profile_train.py 2>&1 | grep -E "^E |passed|failed" | cut -c1-1500 > "$OUT/tests.txt"
jpeg_store 384000 200
resident_step 256 --profile --json-out "$OUT/resident_256.json" > "$OUT/resident_256.txt" 2>&1
stamp "resident step profiled"
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
for spec in "defaults|" "decode-cpu|--decode cpu" "gpu-workers-4|--gpu-workers 4"; do
  IFS='|' read -r name opts <<< "$spec"
  profile_one "$name" $opts
done
cat "$OUT/tests.txt"
grep -E "^MPS|^loader" "$OUT"/e2e_*.txt | cut -c1-200
tail -4 "$OUT/resident_256.txt"
python -c "
import json; p = json.load(open('$OUT/resident_256.json'))['profile']['alexnet2012']['kernels']
print(f'resident step (compiled, profiled): kernel and copy time {p[\"total_ms\"]:.3f} ms a step')
for c, ms in sorted(p['ms_per_step'].items(), key=lambda kv: -kv[1]): print(f'  {c:<40}{ms:>9.3f}')"
for name in defaults decode-cpu gpu-workers-4; do echo "== $name"; sed -n '/^window:/,$p' "$OUT/e2e_$name.txt"; done
