#!/usr/bin/env bash
# Tenth session (2026-12-01), the one-GPU machine (16 cores; .whl/ and .carry/imagenet-sample carried).
# The paper's update as one Triton pass per parameter (alexnet.kernels.paper_update) against the four
# foreach passes (alexnet.optim.FUSED_ON_CUDA = False through a sitecustomize): (1) the kernel's tests on
# CUDA (bitwise equal to the foreach passes); (2) the resident step, `alexnet bench --rows step`, batch 256
# and 128, graphed, in turn: foreach, fused, foreach, fused; (3) time left: `alexnet train` at 128 and 256
# (defaults, no MPS) from a 128,000-image JPEG store. Tables last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
timeout 120 python -m pytest -q -p no:cacheprovider tests/test_kernels.py -k "update or sgd" 2>&1 | tail -4 > "$OUT/tests.txt"
stamp "tests: $(tail -1 "$OUT/tests.txt")"
sitecustomize /tmp/foreach "import alexnet.optim as o; o.FUSED_ON_CUDA = False"
for r in foreach1 fused1 foreach2 fused2; do
  path=$PYTHONPATH; [ "${r:0:7}" = foreach ] && path=/tmp/foreach:$PYTHONPATH
  PYTHONPATH=$path resident_step 256 128 > "$OUT/bench_$r.txt" 2>>"$LOG"
  stamp "bench $r"
done
if [ $(( $(date +%s) - T0 )) -lt 250 ]; then
  jpeg_store 128000
  REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
  train e2e128 80 "${ONE[@]}" "${REP[@]}"
  [ $(( $(date +%s) - T0 )) -lt 420 ] && train e2e256 80 "${ONE[@]}" "${REP[@]}" --batch-size 256
fi
cat "$OUT/tests.txt"
grep -iE "rror|Traceback" "$LOG" | head -5
grep -E "^loader" "$LOG" | sort | uniq -c | cut -c1-250
echo "resident step, graphed, images/s (batch 256, 128):"
for r in foreach1 fused1 foreach2 fused2; do echo "$r $(grep -E '^alexnet2012' "$OUT/bench_$r.txt" | awk '{print $(NF-1), $NF}')"; done
python scripts/runs_table.py "e2e128|1|128, defaults (fused update), no MPS
e2e256|1|256, defaults (fused update), no MPS"
