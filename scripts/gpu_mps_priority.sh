#!/usr/bin/env bash
# 2026-11-30, eighth session, the one-GPU machine (16 cores; .whl/ and .carry/imagenet-sample carried).
# Found by reading nvImageCodec's source: its hardware decoder runs its own kernels (colour conversion
# of the engines' output) on a stream of its own, at default priority, and waits on the host for the
# previous batch before it starts the next; so the GPU workers' stream priority could not help, and
# beside busy training kernels each batch waits. Under MPS a whole client can be put below normal
# (CUDA_MPS_CLIENT_PRIORITY=1); for this run GPU workers set 0 for themselves before their CUDA context
# existed (removed after it: no gain).
# (1) The decoder (engines only; its "alone" column) beside a matmul neighbour in another MPS client,
#     the neighbour at priority 0 and at 1. (2) `alexnet train` under MPS at 256 and 128 (auto: 11 CPU
#     + 3 GPU workers) with the training process at priority 0 and at 1.
# (3) Without MPS, a plain `alexnet train` at 128 (auto should keep CPU decoding and say why).
# (4) The resident step at 256 and 128 in the same call. Tables last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
LIMIT=${LIMIT:-560}
jpeg_store 128000
NEIGHBOUR="import torch, time
a = torch.randn(8192, 8192, device='cuda', dtype=torch.bfloat16); t = time.time(); n = 0
while time.time() - t < 30:
    [a @ a for _ in range(20)]; torch.cuda.synchronize(); n += 20
print('neighbour matmuls/s', round(n / (time.time() - t)))"
if mps_start; then
  for p in 0 1; do
    CUDA_MPS_CLIENT_PRIORITY=$p timeout 45 python -c "$NEIGHBOUR" > "$OUT/neighbour_p$p.txt" 2>&1 &
    sleep 4
    timeout 40 python scripts/bench_decode_sm_cost.py /tmp/rep --seconds 3 --backends HW_GPU_ONLY > "$OUT/sm_beside_p$p.txt" 2>&1
    wait
    stamp "decoder beside a neighbour client at priority $p: done"
  done
  REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
  train mps-256 80 "${ONE[@]}" "${REP[@]}" --batch-size 256
  train mps-256-low 80 env CUDA_MPS_CLIENT_PRIORITY=1 "${ONE[@]}" "${REP[@]}" --batch-size 256
  train mps-128-low 80 env CUDA_MPS_CLIENT_PRIORITY=1 "${ONE[@]}" "${REP[@]}"
  train mps-128 80 "${ONE[@]}" "${REP[@]}"
  mps_stop
fi
REP=(--data /tmp/rep --epochs 2 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0)
train auto-128 70 "${ONE[@]}" "${REP[@]}"
timeout 100 python -m alexnet bench --batch 256 128 --rows step --steps 20 --repeats 3 --warmup 6 \
  --only alexnet2012:graphed > "$OUT/bench.txt" 2>&1
stamp "bench: $?"
grep -E "^loader|auto:|rror" "$LOG" | sort | uniq -c | cut -c1-300
tail -4 "$OUT/bench.txt"
for p in 0 1; do echo "neighbour client at priority $p:"; cat "$OUT/neighbour_p$p.txt"; grep -hE "^HW|neighbour:" "$OUT/sm_beside_p$p.txt"; done
python scripts/runs_table.py "mps-256|1|MPS, batch 256, training at priority 0
mps-256-low|1|MPS, batch 256, training at priority 1
mps-128-low|1|MPS, batch 128, training at priority 1
mps-128|1|MPS, batch 128, training at priority 0
auto-128|1|no MPS, batch 128 (defaults)"
