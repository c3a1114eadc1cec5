#!/usr/bin/env bash
# Needs GPU_WORKER_SM_PERCENT (alexnet.data.gpu_decode), which was removed after these measurements
# (docs/RESULTS.md, fourteenth session): run it on commit 77e1882.
# For the next call (fourteenth session, 2026-12-01): at batch 256 from JPEG on 16 cores, `alexnet train`
# idles only 0.138 ms a step (97.5% busy), yet its kernels take 5.453 ms a step against 5.324 on resident
# data: under MPS the GPU workers' decoding kernels run beside the step's and take SMs from them. Here the
# GPU workers are held to a share of the SMs (GPU_WORKER_SM_PERCENT, patched by a sitecustomize, which
# sets CUDA_MPS_ACTIVE_THREAD_PERCENTAGE in each GPU worker): none, 50, 25, 12. The resident step first,
# on the same machine. A JPEG-90 replica store of 384,000 train images; steps 500-899 of epoch 1.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 384000 200
resident_step 256 > "$OUT/resident.txt" 2>&1; stamp "resident step"
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
profile_one defaults
for pct in 50 25 12; do
  sitecustomize /tmp/sm$pct "import alexnet.data.gpu_decode as g; g.GPU_WORKER_SM_PERCENT = $pct"
  PYTHONPATH=/tmp/sm$pct:$PYTHONPATH profile_one "sm$pct"
done
profile_one defaults2
grep "alexnet2012 graphed" "$OUT/resident.txt"
for name in defaults sm50 sm25 sm12 defaults2; do
  echo "== $name: $(grep -E '^window:' "$OUT/e2e_$name.txt" | cut -d: -f2)"
  grep -E "^GPU busy|^idle gaps a step, by the kind|^  (convolutions|fused|max-pool|matmul)" "$OUT/e2e_$name.txt"
done
