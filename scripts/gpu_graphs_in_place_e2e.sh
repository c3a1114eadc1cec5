#!/usr/bin/env bash
# Sixteenth session (2026-12-02), call 2: `alexnet train` at 256 from a JPEG-90 store of 384,000 images (page
# cache warm), two epochs each, with the code before the session (.carry/old), this code (graphs reading
# each batch in place, the loss and error compiled), and this code with GPU workers copying each decoded
# image straight into the ring (.carry/nostack: dfaade9's change on top), in turn, twice; the resident step
# (old, new) on the same machine. First the GPU test that failed in call 1, its error in full.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
timeout 90 python -m pytest -q -p no:cacheprovider -m gpu tests/test_step.py --tb=short 2>&1 | grep -vE "^\s*$|warn" | tail -40 > "$OUT/step_test.txt"
stamp "step test: $(tail -1 $OUT/step_test.txt)"
jpeg_store 384000 200
for code in new old; do
  if [ $code = old ]; then PP=/tmp/nvpkgs:$PWD/.carry/old/src; else PP=$PYTHONPATH; fi
  PYTHONPATH=$PP resident_step 256 > "$OUT/resident_$code.txt" 2>&1
  stamp "resident $code: $(grep -E '^ *alexnet2012 +graphed' $OUT/resident_$code.txt | tr -s ' ')"
done
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256)
RUNS=""
for name in new1 old1 nostack1 new2 old2 nostack2; do
  left=$(( ${LIMIT:-575} - ($(date +%s) - T0) ))
  if [ $left -lt 45 ]; then stamp "$name: skipped, $left s left"; continue; fi
  case $name in old*) PP=/tmp/nvpkgs:$PWD/.carry/old/src;; nostack*) PP=/tmp/nvpkgs:$PWD/.carry/nostack/src;; *) PP=$PYTHONPATH;; esac
  PYTHONPATH=$PP train "$name" $(( left < 90 ? left : 90 )) "${ONE[@]}" "${REP[@]}"
  RUNS+="$name|1|$name"$'\n'
done
grep -E "rror|Traceback|graph" "$LOG" | sort | uniq -c | cut -c1-200 | head
cat "$OUT/step_test.txt" | head -30
python scripts/runs_table.py "$RUNS"
