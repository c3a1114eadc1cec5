#!/usr/bin/env bash
# On the two-GPU machine (nvidia-h200-x2), from the repository root, with .carry/cifar10-jpeg.tar.gz:
#   1. the multi-node launch on one machine: two "nodes" of one GPU each (torchrun --nnodes 2
#      --node-rank 0|1, rendezvous on localhost, NCCL), one epoch of cifar-alexnet on CIFAR-10;
#   2. the paper's CIFAR-10 normalisation claim: scripts/gpu_cifar_normalisation.sh (its table last).
# Environment: OUT (default /tmp/out); the CIFAR script's own (SEEDS, BUDGET_S, EXTRA).
source scripts/gpu_env.sh
if [ ! -f /tmp/c32/meta.json ]; then
  mkdir -p /tmp/cifar && timeout 120 tar -xzf .carry/cifar10-jpeg.tar.gz -C /tmp/cifar
  timeout 300 python -m alexnet prepare /tmp/cifar/cifar10-jpeg /tmp/c32 --size 32 --workers 16 > "$OUT/nodes.log" 2>&1
fi
stamp "CIFAR-10 prepared"
PORT=29517
for rank in 0 1; do
  CUDA_VISIBLE_DEVICES=$rank timeout 240 torchrun --nnodes 2 --node-rank $rank --nproc-per-node 1 \
      --master-addr 127.0.0.1 --master-port $PORT -m alexnet train --data /tmp/c32 --arch cifar-alexnet \
      --epochs 1 --batch-per-process 128 --out /tmp/runs/nodes --no-progress >> "$OUT/nodes.log" 2>&1 &
done
wait
stamp "two nodes of one GPU: $(grep -E 'x2|epoch 1:|data parallel' "$OUT/nodes.log" | tr '\n' ' ' | cut -c1-400)"
bash scripts/gpu_cifar_normalisation.sh
