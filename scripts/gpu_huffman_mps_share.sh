#!/usr/bin/env bash
# Ninth session (2026-11-30), the one-GPU machine (16 cores; .whl/ and .carry/imagenet-sample carried).
# (1) The store's JPEGs with optimised Huffman tables (decode.OPTIMIZE_HUFFMAN, the same pixels) against
# the standard tables: two 256,000-image replica stores, the loader alone (14 CPU workers) on each, in
# turn, twice. (2) Batch 256 under MPS (auto: 11 CPU + 3 GPU workers) on each store, and with the
# training process held to 90% of the SMs (CUDA_MPS_ACTIVE_THREAD_PERCENTAGE, which its workers inherit)
# so that the GPU workers' decoding kernels need not wait behind training's. Then the resident step
# under MPS at 100% and 90%. Tables last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
sitecustomize /tmp/stdhuff "import alexnet.data.decode as d; d.OPTIMIZE_HUFFMAN = False"
store() {  # DEST, then env assignments for the writing processes
  local dest=$1; shift
  env "$@" timeout 200 python -c "from alexnet.data.replica import make_replica_store as m; m('.carry/imagenet-sample', '$dest', count=256000, progress=False)" >> "$LOG" 2>&1
  stamp "store $dest: $? $(du -sb "$dest" | cut -f1) bytes"
}
store /tmp/rep PYTHONPATH=/tmp/stdhuff:$PYTHONPATH
store /tmp/repo
for s in rep repo rep repo; do
  timeout 40 python -c "from alexnet.data.loader_bench import measure as m; m('/tmp/$s', batch=256, workers_list=(14,), decode_modes=('cpu',), seconds=5)" 2>&1 | tail -1 | sed "s|^|$s |" >> "$OUT/loader.txt"
done
REP=(--epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256)
if mps_start; then
  watch std; train std 100 "${ONE[@]}" --data /tmp/rep "${REP[@]}"
  watch opt; train opt 100 "${ONE[@]}" --data /tmp/repo "${REP[@]}"
  watch std90; train std90 100 env CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=90 "${ONE[@]}" --data /tmp/rep "${REP[@]}"
  watch opt90; train opt90 100 env CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=90 "${ONE[@]}" --data /tmp/repo "${REP[@]}"
  for p in 100 90; do
    CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$p timeout 60 python -m alexnet bench --batch 256 --rows step --steps 20 \
      --repeats 3 --warmup 6 --only alexnet2012:graphed 2>&1 | tail -1 | sed "s|^|MPS $p% |" >> "$OUT/bench.txt"
  done
  mps_stop
fi
wait
grep -E "^loader|rror" "$LOG" | sort | uniq -c | cut -c1-250
cat "$OUT/loader.txt" "$OUT/bench.txt" "$OUT/cpu.txt"
python scripts/runs_table.py "std|1|MPS, 256, standard Huffman tables
opt|1|MPS, 256, optimised Huffman tables
std90|1|MPS, 256, standard, training at 90% of SMs
opt90|1|MPS, 256, optimised, training at 90% of SMs"
