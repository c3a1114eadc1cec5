#!/usr/bin/env bash
# Sixteenth session (2026-12-02), call 1: the step's graphs reading each batch where it lies (one graph per
# input buffer, the Feeder's fixed device buffers) and its loss and error compiled with the network. Here:
# the whole GPU suite on this code; the graphs' memory (one pool for all) at 256; then the resident step
# (`alexnet bench --rows step`, graphed: it alternates two batches, so the code before copies each into its
# graph's input and this code has a graph for each) with the code before (.carry/old: `git archive HEAD src`
# of the session's start) and this code, in turn, at 256 and 128. Table last.
source scripts/gpu_env.sh
nv_wheels
timeout 280 python -m pytest -q -p no:cacheprovider -m gpu tests -x -rfE 2>&1 | tail -15 > "$OUT/gpu_tests.txt"
stamp "tests: $(tail -1 $OUT/gpu_tests.txt)"
timeout 90 python - > "$OUT/memory.txt" 2>&1 <<'PY'
import torch
from alexnet.tools.bench_steps import build_form, random_u8
from alexnet.data.augment import Augment
from alexnet.optim import PaperSGD, param_groups
from alexnet.step import make_step
from alexnet.tools.bench_steps import stats_for
dev = torch.device("cuda")
for max_graphs in (0, 4):
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    p = build_form("alexnet2012", dev)
    opt = PaperSGD(param_groups(p.model, "paper", 0.01), lr=0.01, momentum=0.9, weight_decay=5e-4)
    gen = torch.Generator(device=dev).manual_seed(0)
    step = make_step(p, opt, Augment(crop=224), stats_for(dev), gen, torch.bfloat16, torch.channels_last,
                     compile=True, graphs=True, log=print, max_graphs=max_graphs)
    bufs = [(random_u8(256, dev, seed=k), torch.randint(0, 1000, (256,), device=dev)) for k in range(4)]
    for i in range(12):
        step(*bufs[i % 4])
    torch.cuda.synchronize()
    print(f"max_graphs {max_graphs}: graphs {len(step.graphs)} (in place {sum(k is not None for k in step.graphs)}), "
          f"allocated {torch.cuda.memory_allocated() / 2**30:.2f} GiB, reserved {torch.cuda.memory_reserved() / 2**30:.2f}, "
          f"peak {torch.cuda.max_memory_allocated() / 2**30:.2f}")
    step.release(); del step, p, opt, bufs
PY
stamp "memory"
for round in 1 2; do
  for code in old new; do
    if [ $code = old ]; then PP=/tmp/nvpkgs:$PWD/.carry/old/src; else PP=$PYTHONPATH; fi
    PYTHONPATH=$PP resident_step 256 128 > "$OUT/resident_${code}_$round.txt" 2>&1
    stamp "resident $code $round"
  done
done
cat "$OUT/gpu_tests.txt" "$OUT/memory.txt"
for f in "$OUT"/resident_*.txt; do echo "$(basename $f .txt): $(grep -E '^ *alexnet2012 +graphed' $f | tr -s ' ' | tr '\n' ';')"; done
