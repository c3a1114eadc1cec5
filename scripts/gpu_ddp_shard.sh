#!/usr/bin/env bash
# 2026-11-30, fifth session, one call on the two-GPU machine (.carry/imagenet-sample carried): the
# classifier's update shared out (`--ddp-reduce shard`), its first version (a flat copy of the gradients;
# rewritten per parameter since: scripts/gpu_ddp_shard_final.sh; results in RESULTS.md). The profile of the previous call showed the
# two-GPU step's compute kernels alone take about the one-GPU step (6.1 of 6.2 ms at 256 per GPU), the
# optimizer 0.71 ms of it: sharing out the classifier's update (58.6 M of 61 M parameters) halves that.
# (1) its equality with `overlap` over NCCL (GPU test); (2) `alexnet train` end to end from a raw store,
# 3 epochs, 2 GPUs at 256 and 128 per GPU, shard against overlap (the default) in the same call;
# (3) the resident step, graphed against graphed-shard, profiled, in what time is left of the 585 s.
source scripts/gpu_env.sh
timeout 150 python -m pytest -q -p no:cacheprovider tests/test_distributed.py -k "over_nccl" > "$OUT/test.txt" 2>&1
stamp "shard test over NCCL: $(tail -1 "$OUT/test.txt")"
export COUNT_RAW=144000 LIMIT=330 RUNS="S-2-256|2|RAW|--batch-per-process 256 --ddp-reduce shard
S-2-128|2|RAW|--batch-per-process 128 --ddp-reduce shard
D-2-256|2|RAW|--batch-per-process 256
D-2-128|2|RAW|--batch-per-process 128"
bash scripts/gpu_raw_scaling_and_mixed.sh > "$OUT/e2e.txt" 2>&1
stamp "e2e done"
END=$(( T0 + 585 ))
left=$(( END - $(date +%s) ))
if [ $left -gt 60 ]; then
  timeout $left torchrun --standalone --nproc-per-node 2 -m alexnet.tools.bench_parallel --form ddp \
    --batches 256 128 --variants graphed-shard graphed --profile 20 --json "$OUT/resident.json" > "$OUT/resident.log" 2>&1
  stamp "resident: exit $?"
fi
tail -3 "$OUT/test.txt"; grep -v "^\[" "$OUT/e2e.txt" | tail -16; grep "^\[" "$OUT/e2e.txt"
python - "$OUT/resident.json" <<'PY'
import json, sys, pathlib
f = pathlib.Path(sys.argv[1])
if f.exists():
    rows = json.loads(f.read_text())["rows"]
    cats = sorted({c for r in rows.values() for c in r.get("profile", {}).get("ms_per_step", {})})
    print(f"{'resident, 2 processes':<34}" + "".join(f"{k:>16}" for k in rows))
    print(f"{'step ms':<34}" + "".join(f"{r['ms']:>16.3f}" for r in rows.values()))
    print(f"{'images/s':<34}" + "".join(f"{r['images_per_s']:>16,.0f}" for r in rows.values()))
    for c in cats:
        print(f"{c:<34}" + "".join(f"{r.get('profile', {}).get('ms_per_step', {}).get(c, 0):>16.3f}" for r in rows.values()))
PY
