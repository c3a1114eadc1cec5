#!/usr/bin/env bash
# On the two-GPU machine (nvidia-h200-x2), from the repository root, with the 220 sample photos in
# .carry/imagenet-sample/ (a copy of ../shared/data/imagenet-sample):
#   1. an ImageNet-size JPEG store (1,281,167 train images in 1,000 classes + 10,000 val, quality 90),
#      made from the sample photos varied per copy (alexnet.data.replica), in /tmp/rep (kept if there);
#   2. store D: the 220 photos prepared raw at 256 and repeated to 60,000 images, in /tmp/D;
#   3. the loader alone on both stores;
#   4. `alexnet train` end to end with its defaults (compile, CUDA graphs on one GPU, loader workers):
#      one full ImageNet-size epoch on one GPU at batch 256 and 128, under torchrun DDP on two GPUs at
#      256 and 128 per GPU; 400 steps from store D at 256 and 128.
# Writes logs under $OUT; prints a table last: images/s per run (compile and warm-up excluded, reported
# apart), the epoch's time and the 90-epoch projection. Environment: OUT (default /tmp/out), COUNT.
source scripts/gpu_env.sh
COUNT=${COUNT:-1281167}
LOG="$OUT/data_path.log"
: > "$LOG"

if [ ! -f /tmp/rep/meta.json ]; then
  timeout 400 python -c "
import time; from alexnet.data.replica import make_replica_store
t = time.time(); make_replica_store('.carry/imagenet-sample', '/tmp/rep', count=$COUNT, progress=False)
print(f'replica store: {$COUNT:,} images in {time.time() - t:.0f} s')" >> "$LOG" 2>&1
fi
stamp "replica store: $(du -sh /tmp/rep | cut -f1) $(tail -1 "$LOG")"

if [ ! -f /tmp/D/meta.json ]; then
  photo_tree /tmp/photos
  timeout 120 python -m alexnet prepare /tmp/photos /tmp/D0 --encoding raw >> "$LOG" 2>&1
  timeout 120 python -c "
from alexnet.tools.bench_data import replicate_prepared
print(replicate_prepared('/tmp/D0', '/tmp/D', 60000))" >> "$LOG" 2>&1
fi
stamp "store D: $(du -sh /tmp/D | cut -f1)"

timeout 150 python -c "
from alexnet.data.loader_bench import measure
measure('/tmp/rep', batch=256, workers_list=(12, 14), decode_modes=('cpu', 'mixed'), seconds=6, gpu_workers_list=(1,))
measure('/tmp/D', batch=256, workers_list=(2, 4), decode_modes=('cpu',), seconds=4)" > "$OUT/loader.log" 2>&1
stamp "loader alone: exit $?"

IMAGENET=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500)
train rep-1gpu-256 240 "${ONE[@]}" "${IMAGENET[@]}" --batch-size 256
train rep-2gpu-256 200 "${TWO[@]}" "${IMAGENET[@]}" --batch-per-process 256
train rep-1gpu-128 240 "${ONE[@]}" "${IMAGENET[@]}"
train rep-2gpu-128 200 "${TWO[@]}" "${IMAGENET[@]}" --batch-per-process 128
train D-1gpu-256 120 "${ONE[@]}" --data /tmp/D --epochs 1 --max-steps 400 --batch-size 256 --test-crops 1
train D-1gpu-128 120 "${ONE[@]}" --data /tmp/D --epochs 1 --max-steps 400 --test-crops 1

echo "=== log tail"; tail -20 "$LOG"
echo "=== loader alone"; grep -vE "^\s*$" "$OUT/loader.log" | tail -12
echo "=== alexnet train end to end (page cache warm: the stores were just written, 256 GB of memory)"
python - <<'PY'
import json, pathlib
print(f"{'run':<14}{'GPUs':>5}{'batch/GPU':>10}{'images':>11}{'img/s':>10}{'epoch s':>9}{'warm-up s':>10}"
      f"{'90 epochs':>11}  val top-1")
for run in sorted(pathlib.Path("/tmp/runs").iterdir()):
    m = run / "metrics.jsonl"
    if not m.exists():
        print(f"{run.name:<14} no metrics"); continue
    line = json.loads(m.read_text().splitlines()[-1])
    cfg = json.loads((run / "config.json").read_text())["config"]
    gpus, rate = cfg["world_size"], line["images_per_second"]
    imgs = 1_281_167
    print(f"{run.name:<14}{gpus:>5}{cfg['local_batch']:>10}{int(rate * line['seconds']):>11,}{rate:>10,.0f}"
          f"{line['seconds']:>9.1f}{line['warmup_seconds']:>10.1f}{90 * imgs / rate / 60:>9.1f} m  "
          f"{line['val_top1_error']:.3f}  compile={cfg['compile']} graphs={cfg['cuda_graphs']}")
PY
du -sh /tmp/rep/train.jpeg 2>/dev/null
