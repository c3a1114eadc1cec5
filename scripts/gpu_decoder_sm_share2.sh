#!/usr/bin/env bash
# Needs GPU_WORKER_SM_PERCENT (alexnet.data.gpu_decode), which was removed after these measurements
# (docs/RESULTS.md, fourteenth session): run it on commit 77e1882.
# For the next call (fourteenth session, 2026-12-01), after gpu_decoder_sm_share.sh: on that call's host the
# defaults waited for data (39,261-39,931 img/s, 0.7-0.8 ms a step in gaps of 0.5 ms or more) and the GPU
# workers held to 25% of the SMs did best (42,756), within what may be noise. Here, alternated on one
# machine: the defaults, GPU workers at 25% of the SMs, 4 GPU workers, both; then again while time is left.
# A JPEG-90 replica store of 384,000 train images; steps 500-899 of epoch 1. One table last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 384000 200
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
sitecustomize /tmp/sm25 "import alexnet.data.gpu_decode as g; g.GPU_WORKER_SM_PERCENT = 25"
for round in 1 2; do
  for spec in "d|" "s25|" "g4|--gpu-workers 4" "s25g4|--gpu-workers 4"; do
    IFS='|' read -r name opts <<< "$spec"
    [ $(( $(date +%s) - T0 )) -gt 500 ] && { stamp "$name$round: skipped"; continue; }
    if [[ $name == s25* ]]; then PYTHONPATH=/tmp/sm25:$PYTHONPATH profile_one "$name$round" $opts
    else profile_one "$name$round" $opts; fi
  done
done
python - "$OUT" <<'PY' > "$OUT/table.txt"
import glob, json, os, sys
out = sys.argv[1]
print(f"{'run':8} {'img/s':>7} {'ms/step':>7} {'busy ms':>7} {'idle ms':>7} {'long-gap ms':>11}")
for f in sorted(glob.glob(f"{out}/e2e_*.json"), key=os.path.getmtime):
    d = json.load(open(f))
    print(f"{os.path.basename(f)[4:-5]:8} {d['images_per_s']:7.0f} {d['wall_ms']:7.3f} {d['busy_ms']:7.3f} {d['idle_ms']:7.3f} {d['long_gap_ms']:11.3f}")
PY
cat "$OUT"/e2e_*.txt > "$OUT/profiles.txt"; rm -f "$OUT"/e2e_*.txt
python -c "import glob,json,os; json.dump({os.path.basename(f):json.load(open(f)) for f in glob.glob('$OUT/e2e_*.json')}, open('$OUT/profiles.json','w'))"; rm -f "$OUT"/e2e_*.json
nproc; lscpu | grep -E "Model name|MHz" | head -3
cat "$OUT/table.txt"
