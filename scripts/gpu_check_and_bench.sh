#!/usr/bin/env bash
# On the two-GPU machine (device kind nvidia-h200-x2), from the repository root:
#   1. every GPU test (pytest -m gpu): kernels, fast layers, both column forms on two GPUs element by
#      element in fp32 and bf16, 200 steps of each form, the loader's CUDA path, memory;
#   2. `alexnet bench`: the training step of each form on GPU-resident batches at 256 and 128, each
#      form at its candidate best settings, and the forms that need torchrun (one column per process,
#      DDP), with the per-GPU busy/idle profile of the two columns.
# Writes $OUT/gpu_tests.log, $OUT/bench.json, $OUT/bench.log; prints the test summary and the table last.
# Environment: OUT (default /tmp/out), TEST_TIMEOUT (default 300 s), BENCH_TIMEOUT (default 330 s).
source scripts/gpu_env.sh
stamp "$(python -c 'import torch, torchvision, triton; print("torch", torch.__version__, "torchvision", torchvision.__version__, "triton", triton.__version__, "gpus", torch.cuda.device_count())')"
nvidia-smi --query-gpu=index,name,memory.used,memory.total --format=csv,noheader || true

timeout --kill-after=15 "${TEST_TIMEOUT:-300}" python -m pytest -q -p no:cacheprovider -m gpu tests/ -rfE \
    --durations=12 > "$OUT/gpu_tests.log" 2>&1
stamp "GPU tests: exit $?"

# The forms' candidate best settings (graphs: one device only); b256 first, the 1.2x target.
timeout --kill-after=15 "${BENCH_TIMEOUT:-330}" python -m alexnet bench --batch 256 128 --rows step parallel \
    --steps 20 --repeats 3 --warmup 6 --profile --json-out "$OUT/bench.json" --only \
    alexnet2012:graphed alexnet2012:compiled torchvision:graphed columns-2gpu:compiled columns-2gpu:eager \
    one-column:graphed columns-2streams:eager columns-2proc:compiled columns-2proc:eager ddp:compiled \
    > "$OUT/bench.log" 2>&1
stamp "bench: exit $?"

echo "=== GPU tests (tail)"
grep -E "passed|failed|error|PASSED|FAILED|ERROR|SKIPPED|worst|loss every|  +(grouped|two)" "$OUT/gpu_tests.log" | tail -40
echo "=== bench (progress tail)"
tail -12 "$OUT/bench.log"
echo "=== bench table"
python - "$OUT/bench.json" <<'PY'
import json, sys
from alexnet.tools.bench import comparisons, format_table
r = json.load(open(sys.argv[1]))
r["comparisons"] = comparisons(r, r["config"]["batches"])
print(format_table(r))
for form, p in (r.get("profile") or {}).items():
    if isinstance(p, dict) and "per_gpu" in p:
        for dev, d in p["per_gpu"].items():
            print(f"profile {form} GPU {dev}: busy {d['busy_ms']:.2f} of {d['wall_ms']:.2f} ms/step, "
                  f"exchanges {d['exchange_ms']:.2f} ms, idle {d['idle_ms']:.2f} ms")
    elif isinstance(p, dict) and "kernels" in p:
        k = p["kernels"]
        print(f"profile {form}: {k['total_ms']:.2f} ms/step GPU time: " + ", ".join(
            f"{c} {v:.2f}" for c, v in sorted(k["ms_per_step"].items(), key=lambda kv: -kv[1])[:6]))
PY
