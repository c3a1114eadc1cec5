#!/usr/bin/env bash
# 2026-11-30, fourth session, on the two-GPU machine (.carry/imagenet-sample carried). Is the ~0.63 ms a
# step that two GPUs add (constant at 128 and 256 per GPU; the bf16 all-reduce, half the bytes, did not
# remove it) NCCL's kernels taking SMs from the convolutions' backward pass? (1) the data-parallel step
# on GPU-resident batches (bench_parallel, graphed, classifier all-reduce overlapped), one process
# against two, with NCCL_MAX_NCHANNELS (the CTAs, so the SMs, NCCL's kernels take) unset, 1, 2, 4, 8;
# (2) `alexnet train` from a raw store with the best channel count at 256 and 128 per GPU. Run in the
# fourth session (RESULTS.md; the one-process run then hit a 150 s limit on a cold compile, now 240 s).
source scripts/gpu_env.sh
LOG=$OUT/e2e.log; : > "$LOG"
python -c "import torch; print('torch', torch.__version__, 'nccl', torch.cuda.nccl.version())"
bench() {  # name, processes, then env assignments
  local name=$1 n=$2; shift 2
  timeout 240 env "$@" torchrun --standalone --nproc-per-node "$n" -m alexnet.tools.bench_parallel --form ddp \
    --batches 128 256 --variants graphed --json "$OUT/$name.json" >> "$OUT/bench.log" 2>&1
  stamp "$name: exit $?"
}
bench one 1 X=1
bench two-default 2 X=1
for c in 1 2 4 8; do bench two-ch$c 2 NCCL_MAX_NCHANNELS=$c; done
python - "$OUT" <<'PY' | tee "$OUT/resident.txt"
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
one = json.loads((out / "one.json").read_text())["rows"] if (out / "one.json").exists() else {}
print(f"{'run':<13}{'batch':>6}{'ms':>8}{'img/s':>10}{'weak':>6}")
best = (0, "")
for name in ["one", "two-default", "two-ch1", "two-ch2", "two-ch4", "two-ch8"]:
    f = out / f"{name}.json"
    if not f.exists():
        print(f"{name:<13} no result"); continue
    for key, r in json.loads(f.read_text())["rows"].items():
        b = r["batch"]; base = one.get(key, {}).get("images_per_s")
        weak = r["images_per_s"] / (2 * base) if base and name != "one" else float("nan")
        print(f"{name:<13}{b:>6}{r['ms']:>8.3f}{r['images_per_s']:>10,.0f}{weak:>6.3f}")
        if name.startswith("two-ch") and b == 256 and r["images_per_s"] > best[0]:
            best = (r["images_per_s"], name[6:])
(out / "best").write_text(best[1] or "0")
PY
best=$(cat "$OUT/best")
photo_tree /tmp/photos
timeout 60 python -m alexnet prepare /tmp/photos /tmp/D0 --encoding raw >> "$LOG" 2>&1
timeout 120 python -c "
from alexnet.tools.bench_data import replicate_prepared
print(replicate_prepared('/tmp/D0', '/tmp/D', 160000))" >> "$LOG" 2>&1
stamp "raw store; best channels $best"
RAW=(--data /tmp/D --epochs 3 --test-crops 1)
RUNS="D-2-256-ch$best|2|RAW|NCCL_MAX_NCHANNELS=$best --batch-per-process 256
D-2-128-ch$best|2|RAW|NCCL_MAX_NCHANNELS=$best --batch-per-process 128"
left=$(( 585 - ($(date +%s) - T0) ))
[ "$best" != 0 ] && [ $left -gt 60 ] && train "D-2-256-ch$best" $(( left < 100 ? left : 100 )) env NCCL_MAX_NCHANNELS=$best "${TWO[@]}" "${RAW[@]}" --batch-per-process 256
left=$(( 585 - ($(date +%s) - T0) ))
[ "$best" != 0 ] && [ $left -gt 60 ] && train "D-2-128-ch$best" $(( left < 100 ? left : 100 )) env NCCL_MAX_NCHANNELS=$best "${TWO[@]}" "${RAW[@]}" --batch-per-process 128
grep -iE "rror|nccl" "$OUT/bench.log" | sort | uniq -c | head -5
cat "$OUT/resident.txt"
python scripts/runs_table.py "$RUNS"
