#!/usr/bin/env bash
# GPU evidence for the paper's experiments and the GPU tests, in one device call (repo root).
# Needs .carry/cifar10-jpeg.tar.gz (a copy of ../shared/data/cifar10-jpeg.tar.gz).
set -uo pipefail
OUT=${OUT:-/tmp/out}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
R=/tmp/res; mkdir -p $R
echo "== GPU tests"; timeout 150 python -m pytest -q -p no:warnings -m gpu tests/test_columns.py tests/test_distributed.py tests/test_fastconv.py tests/test_kernels.py 2>&1 | tail -4
mkdir -p /tmp/c && tar -xzf .carry/cifar10-jpeg.tar.gz -C /tmp/c
python -m alexnet prepare /tmp/c/cifar10-jpeg /tmp/c32 --size 32 --workers 16 >/dev/null 2>&1
echo "== relu vs tanh"; s=$(date +%s)
timeout 200 python -m alexnet experiment relu-vs-tanh --data /tmp/c32 --out /tmp/fig1 --device cuda --epochs ${FIG1_EPOCHS:-15} --seeds 0 1 2 --jobs 3 2>&1 | grep -v "it/s\|batch/s" | tail -25
echo "relu-vs-tanh wall s: $(( $(date +%s) - s ))"
echo "== ablations"; s=$(date +%s)
timeout 210 python -m alexnet experiment ablations --data /tmp/c32 --out /tmp/abl --device cuda --epochs ${ABL_EPOCHS:-8} --seeds 0 1 --jobs 4 2>&1 | grep -v "it/s\|batch/s" | tail -25
echo "ablations wall s: $(( $(date +%s) - s ))"
C=/tmp/abl/runs/baseline-seed0
python -m alexnet figures kernels --checkpoint $C/last.pt --out $R/kernels.png 2>&1 | tail -3
python -m alexnet figures predictions --checkpoint $C/last.pt --data /tmp/c32 --out $R/predictions.png 2>&1 | tail -1
python -m alexnet figures neighbours --checkpoint $C/last.pt --data /tmp/c32 --out $R/neighbours.png 2>&1 | tail -1
python -m alexnet report $C --out $R/report-baseline.html 2>&1 | tail -1
cp /tmp/fig1/relu_vs_tanh.* /tmp/abl/ablations.* $R/ 2>/dev/null
tar -czf $OUT/experiments.tar.gz -C $R .
ls -la $R
