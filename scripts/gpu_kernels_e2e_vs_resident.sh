#!/usr/bin/env bash
# Fifteenth session (2026-12-01): at batch 256 `alexnet train`'s kernels take ~0.12 ms a step (2.3%) longer
# end to end than the resident step's (with CPU decoding as with GPU workers), and neither the next batch's
# copy beside the step (+0.07-0.37%), nor photos instead of noise (-0.06%), nor the SM clock (1980 MHz
# throughout) accounts for it (scripts/bench_copy_beside_step.py). `alexnet profile` now lists kernels by
# name, as `alexnet bench --profile` does: here both on one machine, kernel by kernel. A JPEG-90 replica
# store of 384,000 train images; steps 500-899 of epoch 1. .whl/ and .carry/ carried. Table last.
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
nv_wheels
jpeg_store 384000 200
resident_step 256 --profile --json-out "$OUT/resident_256.json" > "$OUT/resident_256.txt" 2>&1; stamp "resident step profiled"
REP=(--data /tmp/rep --epochs 1 --val-split val --test-crops 1 --eval-batch-size 500 --stall-epochs 0 --batch-size 256 --no-progress)
profile_one defaults
profile_one decode-cpu --decode cpu
python - "$OUT" <<'PY' > "$OUT/kernels.txt"
import json, sys
out = sys.argv[1]
res = {k["name"]: k for k in json.load(open(f"{out}/resident_256.json"))["profile"]["alexnet2012"]["kernels"]["top_kernels"]}
runs = {n: json.load(open(f"{out}/e2e_{n}.json")) for n in ("defaults", "decode-cpu")}
for n, r in runs.items():
    print(f"{n}: {r['images_per_s']:.0f} img/s, {r['wall_ms']:.3f} ms a step, busy {r['busy_ms']:.3f}, idle {r['idle_ms']:.3f}")
top = {k["name"]: k for k in runs["defaults"]["top_kernels"]}
cpu = {k["name"]: k for k in runs["decode-cpu"]["top_kernels"]}
rows = []
for name in set(res) | set(top):
    r, d, c = res.get(name), top.get(name), cpu.get(name)
    ms = lambda k: k["ms_per_step"] if k else 0.0
    calls = lambda k: k["calls_per_step"] if k else 0.0
    rows.append((ms(d) - ms(r), name, ms(r), calls(r), ms(d), calls(d), ms(c), calls(c)))
rows.sort(key=lambda t: -abs(t[0]))
print(f"{'e2e-res':>8} {'resident':>8} {'calls':>5} {'e2e':>8} {'calls':>5} {'cpu-dec':>8} {'calls':>5}  kernel")
for diff, name, r, rc, d, dc, c, cc in rows[:25]:
    print(f"{diff:+8.4f} {r:8.4f} {rc:5.1f} {d:8.4f} {dc:5.1f} {c:8.4f} {cc:5.1f}  {name[:90]}")
PY
grep -h "alexnet2012" "$OUT/resident_256.txt" | head -3
cat "$OUT/kernels.txt"
