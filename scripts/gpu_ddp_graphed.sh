#!/usr/bin/env bash
# DDP with the step replayed as one CUDA graph (the gradients all-reduced inside it: --ddp-reduce
# step, what --cuda-graphs gives under torchrun) on the two-GPU machine, from the repository root, with
# .carry/imagenet-sample/ and .carry/cifar10-jpeg.tar.gz:
#   0. do the graphed distributed runs exit? (the GPU test: the graph must be freed before the
#      process group is destroyed, pytorch/pytorch#115388);
#   1. does it train like torch's DDP? cifar-alexnet on CIFAR-10, 2 x 128, 2 epochs, --cuda-graphs
#      (graphed, in-step all-reduce) against --no-cuda-graphs --ddp-reduce ddp;
#   2. how fast is it end to end? one epoch of a JPEG-90 replica store (COUNT train images, default
#      128,000): one GPU at 128 (its default, graphed), two GPUs graphed at 128 and 256 per GPU.
# Prints a table last. Environment: OUT, COUNT.
source scripts/gpu_env.sh
COUNT=${COUNT:-128000}
LOG="$OUT/ddp_graphed.log"
: > "$LOG"
mkdir -p /tmp/cifar && timeout 60 tar -xzf .carry/cifar10-jpeg.tar.gz -C /tmp/cifar
timeout 60 python -m alexnet prepare /tmp/cifar/cifar10-jpeg /tmp/c32 --size 32 --workers 16 >> "$LOG" 2>&1 &
timeout 100 python -c "
import time; from alexnet.data.replica import make_replica_store
t = time.time(); make_replica_store('.carry/imagenet-sample', '/tmp/rep-g', count=$COUNT, progress=False)
print(f'replica store: {$COUNT:,} images in {time.time() - t:.0f} s')" >> "$LOG" 2>&1 &
wait
stamp "stores ready"
timeout 300 python -m pytest -q -x -m gpu tests/test_distributed.py -k graphed_distributed >> "$LOG" 2>&1
stamp "exit test: $? ($(tail -1 "$LOG"))"
TWO=(torchrun --standalone --nproc-per-node 2 -m alexnet train --no-progress)
CIFAR=(--data /tmp/c32 --arch cifar-alexnet --epochs 2 --batch-per-process 128 --seed 0)
timeout --kill-after=10 70 "${TWO[@]}" "${CIFAR[@]}" --cuda-graphs --out /tmp/runs/cifar-graphed >> "$LOG" 2>&1; stamp "cifar graphed: $?"
timeout --kill-after=10 70 "${TWO[@]}" "${CIFAR[@]}" --no-cuda-graphs --ddp-reduce ddp --out /tmp/runs/cifar-ddp >> "$LOG" 2>&1; stamp "cifar ddp: $?"
REP=(--data /tmp/rep-g --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500)
timeout --kill-after=10 90 python -m alexnet train --no-progress "${REP[@]}" --out /tmp/runs/rep-1gpu-128 >> "$LOG" 2>&1
stamp "rep 1 x 128: $?"
for b in 128 256; do
  timeout --kill-after=10 90 "${TWO[@]}" "${REP[@]}" --cuda-graphs --batch-per-process $b --out /tmp/runs/rep-2gpu-$b >> "$LOG" 2>&1
  stamp "rep 2 x $b graphed: $?"
done
grep -E "data parallel|CUDA graph|capture" "$LOG" | sort | uniq -c | head -8
python - <<'PY'
import json, pathlib
print(f"{'run':<16}{'epoch':>6}{'train loss':>11}{'train err':>10}{'val err':>9}{'img/s':>10}{'warm-up s':>10}  graphs")
for name in ["cifar-graphed", "cifar-ddp", "rep-1gpu-128", "rep-2gpu-128", "rep-2gpu-256"]:
    m = pathlib.Path("/tmp/runs") / name / "metrics.jsonl"
    if not m.exists():
        print(f"{name:<16} no metrics"); continue
    cfg = json.loads((m.parent / "config.json").read_text())["config"]
    for line in map(json.loads, m.read_text().splitlines()):
        print(f"{name:<16}{line['epoch']:>6}{line['train_loss']:>11.4f}{line['train_top1_error']:>10.4f}"
              f"{line['val_top1_error']:>9.4f}{line['images_per_second']:>10,.0f}{line['warmup_seconds']:>10.1f}  "
              f"{cfg['cuda_graphs']} reduce={cfg.get('ddp_reduce')}")
PY
