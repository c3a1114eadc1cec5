#!/usr/bin/env bash
# One call on the two-GPU machine (.whl/ and .carry/imagenet-sample carried), 2026-11-30, third
# session: (1) DDP weak scaling with the JPEG decoding taken out: a raw store (the 220 photos
# prepared raw at 256, repeated to COUNT_RAW images), 3 epochs each so that epochs 2-3 give a window
# without warm-up, graphed DDP (the default) on 2 GPUs against 1 GPU at 256 and 128 per GPU;
# (2) the JPEG-90 replica store of 256,000 images again: GPU workers beside simplejpeg CPU workers on
# two GPUs (nvImageCodec, torchvision's nvJPEG), and one GPU with fewer CPU workers. Runs are skipped
# once the call nears its 600 s limit. RUNS ("name|gpus|RAW or REP|options" lines, "store|0|-|-" where
# the JPEG store is written), COUNT and COUNT_RAW change what runs. Prints a table (every epoch of every run) last.
source scripts/gpu_env.sh
COUNT_RAW=${COUNT_RAW:-200000} COUNT=${COUNT:-256000}
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
raw_store $COUNT_RAW
RAW=(--data /tmp/D --epochs 3 --test-crops 1)
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500)
RUNS=${RUNS:-"D-1-256|1|RAW|--batch-size 256
D-2-256|2|RAW|--batch-per-process 256
D-1-128|1|RAW|--batch-size 128
D-2-128|2|RAW|--batch-per-process 128
store|0|-|-
2-mixed-nv|2|REP|--batch-per-process 256 --decode mixed
2-mixed-tv|2|REP|--batch-per-process 256 --decode mixed --gpu-decoder torchvision
1-sj-24|1|REP|--batch-size 256 --loader-workers 24
1-sj|1|REP|--batch-size 256"}
while IFS='|' read -r name gpus data args; do
  if [ "$name" = store ]; then
    rm -rf /tmp/D /tmp/D0  # the page cache for the JPEG store
    timeout 90 python -c "from alexnet.data.replica import make_replica_store as m; m('.carry/imagenet-sample', '/tmp/rep', count=$COUNT, progress=False)" > /dev/null 2>&1
    stamp "JPEG store: $?"; continue
  fi
  left=$(( ${LIMIT:-585} - ($(date +%s) - T0) ))
  if [ $left -lt 45 ]; then stamp "$name: skipped, ${left} s left"; continue; fi
  lim=$(( left < 110 ? left : 110 ))
  if [ "$data" = RAW ]; then D=("${RAW[@]}"); else D=("${REP[@]}"); fi
  if [ "$gpus" = 1 ]; then train "$name" $lim "${ONE[@]}" "${D[@]}" $args
  else train "$name" $lim "${TWO[@]}" "${D[@]}" $args; fi
done <<< "$RUNS"
grep -E "^loader|^data:|^parallel|rror|capture" "$LOG" | sort | uniq -c
python scripts/runs_table.py "$RUNS"
