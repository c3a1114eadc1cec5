#!/usr/bin/env bash
# Ninth session (2026-11-30), the one-GPU machine, the last ~4 min of device time: are the H200's JPEG
# engines saturated? nvidia-smi's JPEG utilisation (1) while 3 GPU workers decode alone (the loader
# alone, `--decode cuda`) and (2) beside training at 256 under MPS (`auto`: 11 CPU + 3 GPU workers),
# 128,000-image JPEG store. Tables last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
jpeg_store 128000
mps_start || exit 1
( for i in $(seq 1 24); do echo "$(nvidia-smi -q -d UTILIZATION -i 0 | grep -E '^ *(Gpu|JPEG) ' | tr -s ' ' | tr '\n' ' ')"; sleep 0.5; done > "$OUT/smi_alone.txt" ) &
timeout 40 python -c "from alexnet.data.loader_bench import measure as m; m('/tmp/rep', batch=256, workers_list=(0,), decode_modes=('cuda',), gpu_workers_list=(3,), seconds=10)" > "$OUT/alone.txt" 2>&1
wait
watch jp; train jp 80 "${ONE[@]}" --data /tmp/rep --epochs 3 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256
mps_stop
wait
tail -2 "$OUT/alone.txt"; sort "$OUT/smi_alone.txt" | uniq -c
cat "$OUT/cpu.txt"
python scripts/runs_table.py "jp|1|MPS, 256, 128k store"
