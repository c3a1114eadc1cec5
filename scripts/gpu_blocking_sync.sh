#!/usr/bin/env bash
# Written in the ninth session of 2026-11-30 for the next (not yet run), the one-GPU machine (16 cores;
# .whl/ and .carry/imagenet-sample carried). Do the GPU workers spin a core each? The sixth session's
# loader alone: 1 / 2 / 3 GPU workers gave 15,108 / 27,591 / 27,850 images/s on 1.07 / 2.15 / 3.20 cores,
# so the third added a core and no images. nvImageCodec waits for its previous batch with
# cudaEventSynchronize, which spins unless the context blocks. Here the GPU workers' primary context is
# set to block (CU_CTX_SCHED_BLOCKING_SYNC, through a sitecustomize that wraps GpuDecoding.__init__; no
# product code until it is measured): (1) the loader alone, 3 GPU workers only, and 11 CPU + 3 GPU,
# spinning against blocking; (2) batch 256 under MPS (auto: 11 CPU + 3 GPU workers), in turn, twice, each
# watched (cores, JPEG engines); every epoch's waits for batches are in the table (ring/CPU/GPU). Then
# the resident step. Tables last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 256000
sitecustomize /tmp/blocking "
import ctypes, alexnet.data.gpu_decode as g
_init = g.GpuDecoding.__init__
def _blocking(self, ring, source, device, decoder):
    import torch
    d = torch.device(device)
    if d.type == 'cuda':
        cu, dev = ctypes.CDLL('libcuda.so.1'), ctypes.c_int()
        ok = cu.cuInit(0) == 0 and cu.cuDeviceGet(ctypes.byref(dev), d.index or 0) == 0
        rc = cu.cuDevicePrimaryCtxSetFlags_v2(dev, 4) if ok else -1  # CU_CTX_SCHED_BLOCKING_SYNC
        print('GPU worker: blocking sync', 'set' if rc == 0 else 'NOT set (%s)' % rc, flush=True)
    _init(self, ring, source, device, decoder)
g.GpuDecoding.__init__ = _blocking"
BLOCK=(env PYTHONPATH=/tmp/blocking:$PYTHONPATH)
REP=(--data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256)
if mps_start; then
  for v in spin block; do
    pre=(); [ $v = block ] && pre=("${BLOCK[@]}")
    timeout 60 "${pre[@]}" python -c "from alexnet.data.loader_bench import measure as m; m('/tmp/rep', batch=256, workers_list=(0, 11), decode_modes=('cuda', 'mixed'), gpu_workers_list=(3,), seconds=8)" 2>&1 | grep -E "gpu|blocking" | sed "s|^|$v |" >> "$OUT/alone.txt"
  done
  for r in spin1 block1 spin2 block2; do
    pre=(); [ "${r:0:5}" = block ] && pre=("${BLOCK[@]}")
    watch $r; train $r 100 "${pre[@]}" "${ONE[@]}" "${REP[@]}"
  done
  timeout 60 python -m alexnet bench --batch 256 --rows step --steps 20 --repeats 3 --warmup 6 \
    --only alexnet2012:graphed 2>&1 | tail -1 > "$OUT/bench.txt"
  mps_stop
fi
wait
grep -E "^loader|rror|blocking" "$LOG" | sort | uniq -c | cut -c1-250
cat "$OUT/alone.txt" "$OUT/bench.txt" "$OUT/cpu.txt"
python scripts/runs_table.py "spin1|1|MPS, 256, GPU workers spin (CUDA's default)
block1|1|MPS, 256, GPU workers' context blocks
spin2|1|MPS, 256, spin (again)
block2|1|MPS, 256, blocks (again)"
