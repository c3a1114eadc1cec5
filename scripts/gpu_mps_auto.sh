#!/usr/bin/env bash
# Eleventh session (2026-12-01): `alexnet train` starting its own MPS daemon (--mps auto, the default) on
# one H200, against --mps off; the daemon gone afterwards. .whl/ and .carry/imagenet-sample carried.
# A JPEG-90 replica store of 128,000 train images (page cache warm), three epochs a run at the paper's 128.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_mps.py 2>&1 | grep -E "^E |passed|failed" | cut -c1-1500 > "$OUT/tests.txt"
jpeg_store 128000 100
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
RUNS="mps-auto|1|1 x 128, defaults (--mps auto: starts its daemon)
mps-off|1|1 x 128, --mps off"
train mps-auto 100 "${ONE[@]}" "${REP[@]}"
for s in 3 10; do sleep $s; echo "after mps-auto +${s}s: $(pgrep -a -f nvidia-cuda-mps | tr '\n' ';') dirs: $(ls -d /tmp/alexnet-mps-* 2>/dev/null | wc -l)" >> "$OUT/tests.txt"; done
train mps-off 100 "${ONE[@]}" "${REP[@]}" --mps off
cat "$OUT/tests.txt"
grep -E "^MPS|^loader|rror|Traceback" "$LOG" | cut -c1-300
python scripts/runs_table.py "$RUNS"
