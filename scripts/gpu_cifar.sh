#!/usr/bin/env bash
# GPU evidence for the main job (run on the device machine from the repo root):
#   the AlexNet-style CIFAR-10 net with the full recipe, 3 seeds in parallel on one GPU.
# Needs .carry/cifar10-jpeg.tar.gz (a copy of ../shared/data/cifar10-jpeg.tar.gz).
set -euo pipefail
OUT=${OUT:-/tmp/out}
EPOCHS=${EPOCHS:-40}
pip install -q --no-deps -e . >/dev/null 2>&1 || export PYTHONPATH=$PWD/src
mkdir -p /tmp/c && tar -xzf .carry/cifar10-jpeg.tar.gz -C /tmp/c
python -m alexnet prepare /tmp/c/cifar10-jpeg /tmp/c/prep --size 32 --workers 16 >/dev/null 2>&1
start=$(date +%s)
for seed in 0 1 2; do
  python -m alexnet train --data /tmp/c/prep --arch cifar-alexnet --out /tmp/c/run$seed --seed $seed \
    --epochs "$EPOCHS" --schedule step --milestones $((EPOCHS*25/90)) $((EPOCHS*51/90)) $((EPOCHS*79/90)) \
    --eval-crops 1 --no-progress > "$OUT/cifar-seed$seed.log" 2>&1 &
done
wait
end=$(date +%s)
echo "wall seconds for 3 seeds in parallel: $((end-start))"
python - <<'PY'
import json, statistics
rows = []
for s in range(3):
    t = json.load(open(f"/tmp/c/run{s}/test.json"))
    m = [json.loads(l) for l in open(f"/tmp/c/run{s}/metrics.jsonl")]
    rows.append((s, t["test_1crop"]["top1_error"], t["test_10crop"]["top1_error"], m[-1]["images_per_second"],
                 sum(x["seconds"] for x in m)))
print("seed  test_err_1crop  test_err_10crop  img/s(last epoch)  train_seconds")
for r in rows:
    print(f"{r[0]:4d}  {100*r[1]:13.2f}  {100*r[2]:15.2f}  {r[3]:17,.0f}  {r[4]:13.1f}")
for i, name in ((1, "1 crop"), (2, "10 crops")):
    v = [100 * r[i] for r in rows]
    print(f"mean {name}: {statistics.mean(v):.2f} +- {statistics.stdev(v):.2f} (sd over 3 seeds)")
PY
