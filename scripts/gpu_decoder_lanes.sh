#!/usr/bin/env bash
# Ran in the ninth session of 2026-11-30 (RESULTS.md; two decoders gave nothing, so the setting it patches,
# gpu_decode.DECODERS_PER_GPU_WORKER, was removed after). Written in the eighth session for the one-GPU machine (16
# cores; .whl/ and .carry/imagenet-sample carried). nvImageCodec's hardware decoder waits on the host
# for its previous batch before it starts the next, so a GPU worker keeps one batch in flight per
# decoder. (1) The GPU tests this session could not run: two decoders per GPU worker give the right
# pixels; the host sleeps while it waits for the GPU. (2) Batch 256 from JPEG under MPS (auto: 11 CPU +
# 3 GPU workers), one decoder per GPU worker against two (DECODERS_PER_GPU_WORKER patched by a
# sitecustomize, which the Feeder reads in the training process), 256,000 images (7-s epochs), each run
# watched by scripts/cpu_monitor.py over its epoch 2. Then the resident step. Tables last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 256000
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_feeder.py tests/test_runtime.py > "$OUT/gpu_tests.txt" 2>&1
stamp "GPU tests: $? $(tail -1 "$OUT/gpu_tests.txt")"
sitecustomize /tmp/lanes2 "import alexnet.data.gpu_decode as g; g.DECODERS_PER_GPU_WORKER = 2"
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256)
if mps_start; then
  watch lanes1; train lanes1 110 "${ONE[@]}" "${REP[@]}"
  watch lanes2; train lanes2 110 env PYTHONPATH=/tmp/lanes2:$PYTHONPATH "${ONE[@]}" "${REP[@]}"
  watch lanes1b; train lanes1b 110 "${ONE[@]}" "${REP[@]}"
  watch lanes2b; train lanes2b 110 env PYTHONPATH=/tmp/lanes2:$PYTHONPATH "${ONE[@]}" "${REP[@]}"
  mps_stop
fi
timeout 100 python -m alexnet bench --batch 256 --rows step --steps 20 --repeats 3 --warmup 6 \
  --only alexnet2012:graphed > "$OUT/bench.txt" 2>&1
wait
grep -E "^loader|rror" "$LOG" | sort | uniq -c | cut -c1-250
tail -3 "$OUT/bench.txt"; cat "$OUT/cpu.txt"
python scripts/runs_table.py "lanes1|1|MPS, 256, one decoder per GPU worker
lanes2|1|MPS, 256, two decoders per GPU worker
lanes1b|1|MPS, 256, one decoder (again)
lanes2b|1|MPS, 256, two decoders (again)"
