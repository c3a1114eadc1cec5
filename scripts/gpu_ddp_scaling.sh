#!/usr/bin/env bash
# DDP scaling of `alexnet train` end to end on the two-GPU machine (nvidia-h200-x2), from the
# repository root, with the 220 sample photos in .carry/imagenet-sample/:
#   a JPEG store of COUNT train images (default 384,000) in 1,000 classes + 10,000 val, quality 90,
#   made from the sample photos varied per copy (alexnet.data.replica), in /tmp/rep-ddp;
#   one epoch of `alexnet train` with its defaults on 1 GPU at batch 128 and 256, under torchrun DDP
#   on 2 GPUs at 128 and 256 per GPU (weak scaling) -- 2 x 128 against 1 x 256 is the strong scaling
#   at a global 256 -- and the same 2 x 128 run launched as two nodes of one GPU each
#   (torchrun --nnodes 2 --node-rank 0|1, rendezvous on localhost).
# Prints a table last: images/s per run (warm-up -- compile, capture, loader start -- excluded and
# reported apart), the efficiencies, the 90-epoch ImageNet projection. Environment: OUT, COUNT.
source scripts/gpu_env.sh
COUNT=${COUNT:-384000}
LOG="$OUT/ddp.log"
: > "$LOG"
timeout 200 python -c "
import time; from alexnet.data.replica import make_replica_store
t = time.time(); make_replica_store('.carry/imagenet-sample', '/tmp/rep-ddp', count=$COUNT, progress=False)
print(f'replica store: {$COUNT:,} images in {time.time() - t:.0f} s')" >> "$LOG" 2>&1
stamp "store: $(du -sh /tmp/rep-ddp | cut -f1); $(tail -1 "$LOG")"

ARGS=(--data /tmp/rep-ddp --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500)
train 1gpu-128 150 "${ONE[@]}" "${ARGS[@]}" --batch-size 128
train 1gpu-256 150 "${ONE[@]}" "${ARGS[@]}" --batch-size 256
train 2gpu-128 150 "${TWO[@]}" "${ARGS[@]}" --batch-per-process 128
train 2gpu-256 150 "${TWO[@]}" "${ARGS[@]}" --batch-per-process 256
rm -rf /tmp/runs/2nodes-128
for rank in 0 1; do
  CUDA_VISIBLE_DEVICES=$rank timeout --kill-after=15 150 torchrun --nnodes 2 --node-rank $rank --nproc-per-node 1 \
      --master-addr 127.0.0.1 --master-port 29519 -m alexnet train "${ARGS[@]}" --batch-per-process 128 \
      --out /tmp/runs/2nodes-128 --no-progress >> "$OUT/nodes-rank$rank.log" 2>&1 &
done
wait
stamp "2nodes-128 done"
echo "=== log tail"; tail -8 "$LOG"; tail -3 "$OUT/nodes-rank0.log"
echo "=== alexnet train end to end, one epoch of $COUNT JPEG-90 images (page cache warm: just written)"
python - <<'PY'
import json, pathlib
rates = {}
print(f"{'run':<12}{'GPUs':>5}{'batch/GPU':>10}{'img/s':>10}{'epoch s':>9}{'warm-up s':>10}{'90 ImageNet epochs':>20}")
for name in ["1gpu-128", "1gpu-256", "2gpu-128", "2gpu-256", "2nodes-128"]:
    m = pathlib.Path("/tmp/runs") / name / "metrics.jsonl"
    if not m.exists():
        print(f"{name:<12} no metrics"); continue
    line = json.loads(m.read_text().splitlines()[-1])
    cfg = json.loads((m.parent / "config.json").read_text())["config"]
    rates[name] = rate = line["images_per_second"]
    print(f"{name:<12}{cfg['world_size']:>5}{cfg['local_batch']:>10}{rate:>10,.0f}{line['seconds']:>9.1f}"
          f"{line['warmup_seconds']:>10.1f}{90 * 1_281_167 / rate / 60:>18.1f} m")
def eff(a, b, f=2):
    return f"{rates[a] / (f * rates[b]):.2f}" if a in rates and b in rates else "-"
print(f"weak scaling (rate on 2 / (2 x rate on 1)): 128/GPU {eff('2gpu-128', '1gpu-128')}, 256/GPU {eff('2gpu-256', '1gpu-256')}")
print(f"strong scaling at a global 256 (2 x 128 against 1 x 256): speed-up {eff('2gpu-128', '1gpu-256', 1)}")
print(f"two nodes of one GPU against one node of two (128/GPU): {eff('2nodes-128', '2gpu-128', 1)}")
PY
