#!/usr/bin/env bash
# On the two-GPU machine, from the repository root, with .carry/cifar10-jpeg.tar.gz: the GPU tests that
# failed on their first run (tolerances, a device index), the CIFAR-10 normalisation experiment, the
# two-process columns replayed as one CUDA graph per process, and where the one-process columns' time
# goes per GPU. Logs in $OUT; each stage under a timeout.
source scripts/gpu_env.sh
timeout 150 python -m pytest -q -p no:cacheprovider -m gpu tests/test_columns_gpu.py tests/test_cuda_convnet.py \
    -k "fp32 or 200 or graph_steps" -rfE > "$OUT/tests2.log" 2>&1
stamp "tests: $(tail -1 "$OUT/tests2.log")"
BUDGET_S=${BUDGET_S:-230} RUN_TIMEOUT=${RUN_TIMEOUT:-300} bash scripts/gpu_cifar_normalisation.sh > "$OUT/cifar.log" 2>&1
stamp "cifar: exit $?"
timeout 110 python -m alexnet bench --rows parallel --batch 256 128 --only columns-2proc:graphed --steps 20 \
    --repeats 3 --warmup 6 --json-out "$OUT/cols.json" > "$OUT/cols.log" 2>&1
stamp "columns graphed: exit $?"
timeout 60 python - > "$OUT/busy.log" 2>&1 <<'PY'
import torch
from alexnet.tools import bench_steps
from alexnet.tools.timing import Timer, device_busy
d = torch.device("cuda")
torch.backends.cudnn.benchmark = True
for form in ("columns-2gpu", "alexnet2012"):
    fn = bench_steps.step_fn(bench_steps.build_form(form, d), "eager", 256, d)
    for _ in range(5):
        fn()
    for dev, b in device_busy(fn, 10, Timer(d)).items():
        print(f"{form} eager b256 GPU {dev}: busy {b['busy_ms']:.2f} of {b['wall_ms']:.2f} ms/step, "
              f"exchanges {b['exchange_ms']:.2f} ms, idle {b['idle_ms']:.2f} ms")
PY
stamp "busy: exit $?"
echo "=== tests"; grep -E "passed|failed|^E  " "$OUT/tests2.log" | tail -8
echo "=== columns graphed"; tail -5 "$OUT/cols.log"
echo "=== busy"; cat "$OUT/busy.log" | tail -6
echo "=== cifar"; tail -45 "$OUT/cifar.log"
