#!/bin/bash
# One GPU-machine session for docs/notes-speed.md: facts, the fast path's GPU tests, the max-pool and
# network variants (benchmarks/conv_variants.py), `alexnet bench` on ~100k prepared ImageNet photos,
# a loader sweep, and the training rows again under CUDA graphs. Run from the repository root with
# the 220 sample photos arranged as .carry/imagenet-sample/train/<wnid>/*.JPEG. Results: $OUT.
#
#   BUDGET=455 bash benchmarks/speed_run.sh [REPLICATE_TO] [STAGES]
#   STAGES: any of tests,variants,bench,loader,graphs (default: all); FAST=... skips the choice.
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/speed-out}
N=${1:-100000}
STAGES=${2:-tests,variants,bench,graphs}
BUDGET=${BUDGET:-455}
mkdir -p "$OUT"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
has() { [[ ",$STAGES," == *",$1,"* ]]; }
left() { echo $(( BUDGET - ($(date +%s) - T0) - ${1:-0} )); }

el facts
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv
python3 -c "import torch,triton,torchvision;print('torch',torch.__version__,'cuda',torch.version.cuda,'cudnn',torch.backends.cudnn.version(),'triton',triton.__version__,'torchvision',torchvision.__version__)"
df -h /tmp | tail -1; free -g | head -2; nproc; uname -r

el prepare
python3 -m alexnet prepare .carry/imagenet-sample /tmp/prep --size 256 2>&1 | tail -1

if has tests; then
  el tests
  timeout 150 python3 -m pytest -q -p no:cacheprovider -m "gpu or not slow" tests/test_fastconv.py tests/test_bench.py \
    tests/test_loader.py 2>&1 | tail -4
fi

BEST=${FAST:-}
if has variants; then
  el variants
  timeout 100 python3 benchmarks/conv_variants.py --layers pool --out "$OUT/variants.json" --best-file /tmp/best 2>&1 \
    | tee "$OUT/variants.log"
  BEST=${FAST:-$(cat /tmp/best 2>/dev/null || echo "")}
fi

if has bench; then
  el "bench --fast '$BEST'"
  timeout $(left 120) python3 -m alexnet bench --data /tmp/prep --replicate-to "$N" --workdir /tmp/bw \
    ${BEST:+--fast "$BEST"} --profile --loader-variants gather:1 pread:4 --json-out "$OUT/bench.json" 2>&1 \
    | tee "$OUT/bench.log"
fi

if has loader && [ -d "/tmp/bw/replicated-$N" ] && [ "$(left 60)" -gt 20 ]; then
  el loader
  timeout $(left 45) python3 benchmarks/conv_variants.py --skip-layers --skip-network --loader-data "/tmp/bw/replicated-$N" \
    --out "$OUT/loader.json" 2>&1 | tail -6
fi

if has graphs && [ "$(left)" -gt 40 ]; then
  el "train rows under CUDA graphs (compile mode reduce-overhead)"
  timeout $(left 3) python3 -m alexnet bench --rows train --compile-mode reduce-overhead ${BEST:+--fast "$BEST"} \
    --json-out "$OUT/bench_graphs.json" 2>&1 | tail -9
fi
el done
