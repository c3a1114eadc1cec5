#!/usr/bin/env bash
# JPEG decoding end to end, on the two-GPU machine, from the repository root with .whl/ holding
# the nvImageCodec, nvJPEG and simplejpeg wheels for Python 3.12 (made by scripts/make_device_wheels.sh)
# and .carry/imagenet-sample/:
#   0. nvImageCodec installed (no network there: the carried wheels) and the GPU decoder tests;
#   1. the loader alone (alexnet.data.loader_bench.measure, batch 256): CPU workers, GPU workers
#      (1 or 2), both;
#   2. one epoch of `alexnet train` (defaults otherwise) from a JPEG-90 replica store of COUNT
#      train images (default 256,000), page cache warm, at batch 256 per GPU, for each way of
#      decoding (CPU workers with torchvision or simplejpeg, CPU + GPU workers): on 1 GPU and under
#      DDP on 2.
# Prints a table last. Environment: OUT, COUNT, RUNS (the runs of step 2, "name|gpus|args" lines).
source scripts/gpu_env.sh
COUNT=${COUNT:-256000}
LOG="$OUT/decode_e2e.log"
: > "$LOG"
python -m pip install -q --no-deps --no-index --target /tmp/nvpkgs .whl/*.whl >> "$LOG" 2>&1
export PYTHONPATH=/tmp/nvpkgs:$PYTHONPATH
python -c "from alexnet.data.gpu_decode import nvimgcodec_available as a; print('nvimgcodec:', a())" 2>&1 | tail -1
timeout 120 python -c "
import time; from alexnet.data.replica import make_replica_store
t = time.time(); make_replica_store('.carry/imagenet-sample', '/tmp/rep', count=$COUNT, progress=False)
print(f'replica store: {$COUNT:,} images in {time.time() - t:.0f} s')" >> "$LOG" 2>&1
stamp "store: $(tail -1 "$LOG")"
timeout 120 python -m pytest -q -m gpu tests/test_feeder.py -k "gpu_decoders or test_cuda" >> "$LOG" 2>&1
stamp "GPU decoder tests: $? ($(tail -1 "$LOG"))"
timeout 150 python -c "
from alexnet.data.loader_bench import measure
measure('/tmp/rep', batch=256, workers_list=(28,), decode_modes=('cpu', 'cuda', 'mixed'), seconds=5,
        gpu_workers_list=(1, 2), cpu_decoders=('torchvision', 'simplejpeg'))" > "$OUT/loader_alone.txt" 2>> "$LOG"
stamp "loader alone: $?"
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500)
RUNS=${RUNS:-"1-tv|1|--cpu-decoder torchvision
1-sj|1|--cpu-decoder simplejpeg
1-mixed|1|--decode mixed
2-tv|2|--cpu-decoder torchvision
2-sj|2|--cpu-decoder simplejpeg
2-mixed|2|--decode mixed"}
while IFS='|' read -r name gpus args; do
  [ -z "$name" ] && continue
  if [ "$gpus" = 1 ]; then
    train "$name" 110 "${ONE[@]}" "${REP[@]}" --batch-size 256 $args
  else
    train "$name" 110 "${TWO[@]}" "${REP[@]}" --batch-per-process 256 $args
  fi
done <<< "$RUNS"
grep -E "^device:|loader" "$LOG" | sort | uniq -c | head -12
cat "$OUT/loader_alone.txt"
python scripts/runs_table.py "$RUNS"
