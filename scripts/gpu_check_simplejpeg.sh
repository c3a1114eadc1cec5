#!/usr/bin/env bash
# One call on the two-GPU machine (.whl/ and .carry/imagenet-sample carried), 2026-11-30, third
# session: (1) the GPU tests left unverified by the last session (the GPU decoder tests after the
# blocking-event and resolve_gpu_decoder changes; the columns-per-process exit test); (2) the loader
# alone with torchvision and with simplejpeg in the CPU workers; (3) one epoch of `alexnet train`
# (defaults otherwise) from a 256,000-image JPEG-90 replica store, page cache warm, at 256 per GPU,
# simplejpeg against torchvision, on 1 GPU and under DDP on 2. Runs are skipped once the call nears
# its 600 s limit. Prints a table last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
python -c "import simplejpeg, torch; print('simplejpeg', simplejpeg.__version__, 'torch', torch.__version__)"
timeout 60 python -m pytest -q -m gpu tests/test_feeder.py -k "gpu_decoders or test_cuda" > $OUT/feeder_gpu.txt 2>&1
stamp "feeder GPU tests: $(tail -1 $OUT/feeder_gpu.txt)"
timeout 150 python -m pytest -q -m gpu tests/test_distributed.py -k "graphed_distributed and columns" > $OUT/exit_columns.txt 2>&1
stamp "columns exit test: $(tail -1 $OUT/exit_columns.txt)"
timeout 90 python -c "from alexnet.data.replica import make_replica_store as m; m('.carry/imagenet-sample', '/tmp/rep', count=256000, progress=False)" > /dev/null 2>&1
stamp "store: $?"
timeout 60 python -c "
from alexnet.data.loader_bench import measure
measure('/tmp/rep', batch=256, workers_list=(28,), decode_modes=('cpu',), seconds=5,
        cpu_decoders=('torchvision', 'simplejpeg'))" > "$OUT/loader_alone.txt" 2>> "$LOG"
stamp "loader alone: $?"
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500)
RUNS="1-sj|1|--cpu-decoder simplejpeg
1-tv|1|--cpu-decoder torchvision
2-sj|2|--cpu-decoder simplejpeg
2-tv|2|--cpu-decoder torchvision
1-sj-128|1|--cpu-decoder simplejpeg --batch-size 128"
while IFS='|' read -r name gpus args; do
  left=$(( 585 - ($(date +%s) - T0) ))
  if [ $left -lt 45 ]; then stamp "$name: skipped, ${left} s left"; continue; fi
  lim=$(( left < 100 ? left : 100 ))
  if [ "$gpus" = 1 ]; then
    train "$name" $lim "${ONE[@]}" "${REP[@]}" --batch-size 256 $args
  else
    train "$name" $lim "${TWO[@]}" "${REP[@]}" --batch-per-process 256 $args
  fi
done <<< "$RUNS"
grep -E "^loader" "$LOG" | sort | uniq -c
cat "$OUT/loader_alone.txt"
python scripts/runs_table.py "$RUNS"
