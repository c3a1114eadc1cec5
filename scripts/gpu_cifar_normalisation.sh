#!/usr/bin/env bash
# The paper's CIFAR-10 normalisation claim (13% without, 11% with) on the device machine (2 GPUs),
# from the repo root:
#   cuda-convnet-11pct, cuda-convnet-13pct and cuda-convnet-11pct-no-norm, 3 seeds each, with
#   cuda-convnet's full schedule (520 / 160 epochs), spread over cuda:0 and cuda:1.
# Needs .carry/cifar10-jpeg.tar.gz (a copy of ../shared/data/cifar10-jpeg.tar.gz). Writes the logs and
# the JSON results to $OUT; the final table is the last thing printed.
# Stages, each under a timeout so that nothing can hang: extract, prepare, smoke (a few steps of each
# net on cuda:0, eager and as CUDA graphs, compared: stops here if they disagree), the experiment
# (which first times its steps and prints the plan), the table.
# Environment: OUT (default /tmp/out), SEEDS (default "0 1 2"), BUDGET_S (the experiment stops before
# training when its timed plan projects more seconds than this; default 600), RUN_TIMEOUT (a hard
# limit in seconds, default 1200), CALL_LIMIT (the device call's limit in seconds: the hard limit is
# cut so that the finished nets' results are copied to $OUT before it), EXTRA (more options for the
# experiment, e.g. "--precision fp32").
set -euo pipefail
OUT=${OUT:-/tmp/out}
SEEDS=${SEEDS:-0 1 2}
BUDGET_S=${BUDGET_S:-600}
RUN_TIMEOUT=${RUN_TIMEOUT:-1200}
EXTRA=${EXTRA:-}
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1
mkdir -p "$OUT"
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }

ARCHIVE=.carry/cifar10-jpeg.tar.gz
[ -f "$ARCHIVE" ] || { echo "missing $ARCHIVE (copy ../shared/data/cifar10-jpeg.tar.gz there)"; exit 2; }
stamp "start: $(python -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__)')"
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader || true
WORK=$(mktemp -d /tmp/cifar-norm.XXXXXX)
timeout 120 tar -xzf "$ARCHIVE" -C "$WORK"
stamp "extracted to $WORK"
timeout 300 python -m alexnet prepare "$WORK/cifar10-jpeg" "$WORK/prep" --size 32 --workers 16 > "$OUT/prepare.log" 2>&1
stamp "prepared (32x32, uint8)"

RUN=(python -m alexnet experiment cifar-normalisation --data "$WORK/prep" --out "$WORK/run" --seeds $SEEDS $EXTRA)
timeout 300 "${RUN[@]}" --devices cuda:0 --smoke 2>&1 | tee "$OUT/smoke.log"
stamp "smoke test passed"

if [ -n "${CALL_LIMIT:-}" ]; then
  left=$(( CALL_LIMIT - ($(date +%s) - T0) - 30 ))
  [ "$left" -lt "$RUN_TIMEOUT" ] && RUN_TIMEOUT=$left
  stamp "hard limit for the experiment: $RUN_TIMEOUT s"
fi
status=0
timeout --kill-after=20 "$RUN_TIMEOUT" "${RUN[@]}" --devices cuda:0 cuda:1 --budget-seconds "$BUDGET_S" 2>&1 | tee "$OUT/run.log" || status=$?
stamp "experiment finished (exit $status)"
cp "$WORK/run/cifar_normalisation.json" "$OUT/" 2>/dev/null || true
mkdir -p "$OUT/runs" && cp "$WORK"/run/runs/*.json "$OUT/runs/" 2>/dev/null || true
nvidia-smi --query-gpu=index,memory.used --format=csv,noheader || true
if [ "$status" -ne 0 ] || [ ! -f "$OUT/cifar_normalisation.json" ]; then
  echo "the experiment did not finish (exit $status); finished nets, if any: $(ls "$OUT/runs" 2>/dev/null | tr '\n' ' ')"
  exit 1
fi
stamp "done; results in $OUT"
python - "$OUT/cifar_normalisation.json" <<'PY'
import json, sys
from alexnet.experiments.cifar_normalisation_report import format_result
r = json.load(open(sys.argv[1]))
for net, v in r["nets"].items():
    print(f"{net}: {v['steps']:,} steps, {', '.join(f'{m:.3f}' for m in v['ms_per_step'])} ms/step "
          f"(seeds together), {v['graph_replays']:,} graph replays, on {', '.join(v['devices'])}")
print(f"experiment wall time: {r['seconds']:.0f} s")
print()
print(format_result(r))
PY
