#!/usr/bin/env bash
# Tenth session of 2026-11-30 (2026-12-01), the one-GPU machine (16 cores; .whl/ and .carry/imagenet-sample
# carried). The ninth session's waits (gpu_blocking_sync.sh) showed the one-GPU run at 256 waiting 0.25-0.5 s
# for batches in a 6.2-6.6 s epoch, while the epoch takes 0.5-0.9 s longer than the resident step's: the
# step itself runs slower beside the loader. How much, and which part of the loader slows it? The resident
# step (`alexnet bench --rows step`, batch 256, graphed) alone, then beside the loader alone
# (`loader_bench.measure`, batch 256, into GPU memory, as fast as it goes) in three forms: 11 CPU + 3 GPU
# workers (auto's choice here), 3 GPU workers only, 14 CPU workers only; all under MPS. Tables last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 128000
bench() {  # LABEL: the resident step at 256, one line
  resident_step 256 2>>"$LOG" | tail -1 | sed "s|^|$1 |" >> "$OUT/step.txt"
  stamp "bench $1"
}
beside() {  # LABEL WORKERS MODE GPU_WORKERS START_S: the step while the loader runs
  timeout 120 python -c "from alexnet.data.loader_bench import measure as m; m('/tmp/rep', batch=256, workers_list=($2,), decode_modes=('$3',), gpu_workers_list=($4,), seconds=40)" 2>&1 | tail -1 | sed "s|^|$1 |" >> "$OUT/loader.txt" &
  sleep "$5"; bench "$1"; wait
}
if mps_start; then
  bench alone0     # compiles (the inductor cache is cold)
  bench alone1
  beside mixed 11 mixed 3 12
  beside gpu_only 0 cuda 3 20
  beside cpu_only 14 cpu 1 8
  bench alone2
  mps_stop
fi
grep -iE "rror|Traceback" "$LOG" | head -5
echo "loader alone beside the step (workers, decode, images/s, MB/s, start s, GPU share, cores main/CPU/GPU workers):"
cat "$OUT/loader.txt"
echo "resident step, batch 256, graphed (images/s):"
cat "$OUT/step.txt"
