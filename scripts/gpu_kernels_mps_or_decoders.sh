#!/usr/bin/env bash
# Fifteenth session (2026-12-01), after scripts/gpu_kernels_e2e_vs_resident.sh: with CPU decoding the
# step's kernels took what the resident step's take (+0.3%), with the defaults (3 GPU workers under the
# run's MPS daemon) ~3% longer. Is it MPS itself or the decoders' work beside the step? On one machine:
# CPU decoding as an MPS client (a daemon started here, which the run then uses), and one GPU worker
# (a third of the defaults' GPU decoding) under the run's own daemon. Table last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 384000 200
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
if mps_start; then
  profile_one decode-cpu-mps --decode cpu
  grep -h "MPS" "$OUT/e2e_decode-cpu-mps.txt" | head -2 | cut -c1-200
  mps_stop
fi
profile_one gpu-workers-1 --gpu-workers 1
python - "$OUT" <<'PY'
import glob, json, os, sys
cats = ["convolutions", "fused elementwise (inductor Triton)", "other", "matmul (fc layers)", "elementwise (ATen)", "layout copies", "response norm (Triton)", "max-pool"]
print(f"{'run':16} {'img/s':>7} {'busy':>6} {'idle':>6} {'non-copy kernels':>16} " + " ".join(c.split()[0][:9] for c in cats))
for f in sorted(glob.glob(f"{sys.argv[1]}/e2e_*.json")):
    r = json.load(open(f)); k = r["kernel_ms"]
    print(f"{os.path.basename(f)[4:-5]:16} {r['images_per_s']:7.0f} {r['busy_ms']:6.3f} {r['idle_ms']:6.3f} "
          f"{sum(v for c, v in k.items() if c != 'memcpy/memset'):16.3f} " + " ".join(f"{k.get(c, 0):9.4f}" for c in cats))
PY
