#!/usr/bin/env bash
# Written 2026-11-30 (fourth session) for the next call on the two-GPU machine (nothing carried); not
# run yet. Where the 0.39 ms a step that two GPUs still add (weak scaling 0.94 at 256, 0.90 at 128 per
# GPU; RESULTS.md) goes: the graphed data-parallel step on GPU-resident batches, one process against
# two, timed, then profiled (`bench_parallel --profile 20`: rank 0's GPU time per step by kernel
# category). If the convolutions' kernels take longer beside NCCL's, the collectives slow them (SMs,
# memory bandwidth); if the kernel times match and the step is longer, the GPU waits for the all-reduce.
# Then NCCL's protocol (Simple, LL128) and threads per CTA (256), timed.
source scripts/gpu_env.sh
END=$(( T0 + ${BUDGET:-585} ))  # BUDGET: seconds this script may take in all
lim() { local l=$(( END - $(date +%s) )); echo $(( l < $1 ? l : $1 )); }
for n in 2 1; do
  [ "$(lim 270)" -lt 40 ] && { stamp "$n process(es): skipped, no time left"; continue; }
  timeout "$(lim 270)" torchrun --standalone --nproc-per-node $n -m alexnet.tools.bench_parallel --form ddp \
    --batches 128 256 --variants graphed --profile 20 --json "$OUT/p$n.json" >> "$OUT/profile.log" 2>&1
  stamp "$n process(es): exit $?"
done
# NCCL's protocol and threads per CTA (two processes, timed only; NCCL's choice is the run above)
for e in NCCL_PROTO=Simple NCCL_PROTO=LL128 NCCL_NTHREADS=256; do
  [ "$(lim 120)" -lt 30 ] && { stamp "$e: skipped, no time left"; continue; }
  timeout "$(lim 120)" env $e torchrun --standalone --nproc-per-node 2 -m alexnet.tools.bench_parallel --form ddp \
    --batches 128 256 --variants graphed --json "$OUT/$e.json" >> "$OUT/profile.log" 2>&1
  stamp "$e: exit $?"
done
python - "$OUT" <<'PY'
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
runs = {n: json.loads((out / f"p{n}.json").read_text())["rows"] for n in (1, 2) if (out / f"p{n}.json").exists()}
for key in ("128/graphed", "256/graphed"):
    rows = {n: r[key] for n, r in runs.items() if key in r}
    if not rows:
        continue
    print(f"\nbatch {key.split('/')[0]} per GPU: step ms " + ", ".join(f"{n} GPU(s) {r['ms']:.3f}" for n, r in rows.items()))
    cats = sorted({c for r in rows.values() for c in r.get("profile", {}).get("ms_per_step", {})})
    print(f"{'GPU ms per step (rank 0)':<40}" + "".join(f"{f'{n} GPU(s)':>12}" for n in rows))
    for c in cats + ["total"]:
        vals = [r.get("profile", {}).get("total_ms" if c == "total" else "ms_per_step", {}) for r in rows.values()]
        vals = [v if c == "total" else v.get(c, 0.0) for v in vals]
        print(f"{c:<40}" + "".join(f"{v:>12.3f}" for v in vals))
print(f"\n{'two processes, graphed':<28}{'128: ms':>9}{'img/s':>9}{'256: ms':>9}{'img/s':>9}")
for f in [out / "p2.json", *sorted(out.glob("NCCL_*.json"))]:
    if f.exists():
        r = json.loads(f.read_text())["rows"]
        cells = "".join(f"{r[k]['ms']:>9.3f}{r[k]['images_per_s']:>9,.0f}" if k in r else f"{'-':>18}"
                        for k in ("128/graphed", "256/graphed"))
        print(f"{'default' if f.name == 'p2.json' else f.stem:<28}{cells}")
PY
