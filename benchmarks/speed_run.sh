#!/bin/bash
# One GPU-machine session for docs/notes-speed.md: facts, the fast path's GPU tests, the layer and
# network variants (benchmarks/conv_variants.py), `alexnet bench` on ~100k prepared ImageNet photos,
# and a loader sweep. Run from the repository root with the 220 sample photos arranged as
# .carry/imagenet-sample/train/<wnid>/*.JPEG. Results go to $OUT (default /tmp/speed-out).
#
#   bash benchmarks/speed_run.sh [REPLICATE_TO] [STAGES]     (STAGES: any of tests,variants,bench,loader)
set -u
export PYTHONPATH="$PWD/src" PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/speed-out}
N=${1:-100000}
STAGES=${2:-tests,variants,bench,loader}
EXTRA=${BENCH_EXTRA:-}
mkdir -p "$OUT"
T0=$(date +%s)
el() { echo "[$(( $(date +%s) - T0 ))s] $*"; }
has() { [[ ",$STAGES," == *",$1,"* ]]; }

el facts
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw,power.limit --format=csv
python3 -c "import torch,triton,torchvision;print('torch',torch.__version__,'cuda',torch.version.cuda,'cudnn',torch.backends.cudnn.version(),'triton',triton.__version__,'torchvision',torchvision.__version__)"
df -h /tmp | tail -1; free -g | head -2; nproc; uname -r
if [ -f .carry/speed/inductor_cache.tgz ]; then tar xzf .carry/speed/inductor_cache.tgz -C /tmp && el "inductor cache restored"; fi

el prepare
python3 -m alexnet prepare .carry/imagenet-sample /tmp/prep --size 256 2>&1 | tail -1

if has tests; then
  el tests
  timeout 170 python3 -m pytest -q -x -p no:cacheprovider -m "not slow" tests/test_fastconv.py tests/test_bench.py \
    tests/test_loader.py 2>&1 | tail -6
fi

BEST=${FAST:-}
if has variants; then
  el variants
  timeout 150 python3 benchmarks/conv_variants.py --out "$OUT/variants.json" --best-file /tmp/best 2>&1 | tee "$OUT/variants.log"
  BEST=${FAST:-$(cat /tmp/best 2>/dev/null || echo "")}
fi

if has bench; then
  el "bench --fast '$BEST'"
  BT=$(( ${BUDGET:-455} - ($(date +%s) - T0) - 25 ))
  timeout $BT python3 -m alexnet bench --data /tmp/prep --replicate-to "$N" --workdir /tmp/bw \
    ${BEST:+--fast "$BEST"} --profile --json-out "$OUT/bench.json" $EXTRA 2>&1 | tee "$OUT/bench.log"
fi

if has loader && [ -d "/tmp/bw/replicated-$N" ] && [ $(( $(date +%s) - T0 )) -lt $(( ${BUDGET:-455} - 20 )) ]; then
  el loader
  timeout $(( ${BUDGET:-455} - ($(date +%s) - T0) - 3 )) python3 benchmarks/conv_variants.py --skip-layers --skip-network --loader-data "/tmp/bw/replicated-$N" \
    --out "$OUT/loader.json" 2>&1 | tail -8
fi
el "saving the inductor cache"
tar czf "$OUT/inductor_cache.tgz" -C /tmp torchinductor_root 2>/dev/null; ls -la "$OUT"
el done
