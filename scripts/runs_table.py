"""The table the device scripts print last: every epoch of each run named in RUNS.

    python scripts/runs_table.py "$RUNS"

RUNS: lines "name|gpus|...|options" (the middle fields, if any, are ignored; a line named "store" is
not a run); each run's metrics are read from /tmp/runs/NAME/metrics.jsonl (gpu_env.sh's `train`).
"waited s": the training process's waits for batches in the epoch, in all (ring full / CPU workers /
GPU workers), where the run recorded them.
"""

import json
import pathlib
import sys


def main(runs: str) -> None:
    print(f"{'run':<13}{'GPUs':>5}{'epoch':>6}{'img/s':>10}{'epoch s':>9}{'warm-up s':>10}{'loss':>8}{'val %':>7}{'GPU dec':>8}{'waited s (ring/CPU/GPU)':>25}  options")
    for line in runs.splitlines():
        if not line.strip():
            continue
        fields = line.split("|")
        name, gpus, options = fields[0], fields[1], fields[-1]
        if name == "store":
            continue
        metrics = pathlib.Path("/tmp/runs") / name / "metrics.jsonl"
        if not metrics.exists():
            print(f"{name:<13}{gpus:>5}  no metrics  {options}")
            continue
        for r in map(json.loads, metrics.read_text().splitlines()):
            print(f"{name:<13}{gpus:>5}{r.get('epoch', 0):>6}{r['images_per_second']:>10,.0f}{r['seconds']:>9.2f}"
                  f"{r.get('warmup_seconds') or 0:>10.1f}{r.get('train_loss', float('nan')):>8.4f}"
                  f"{100 * r.get('val_top1_error', float('nan')):>7.2f}"
                  f"{'-' if 'gpu_decoded_share' not in r else format(r['gpu_decoded_share'], '.0%'):>8}"
                  f"{_waited(r.get('data_wait_seconds')):>25}  {options}")


def _waited(w: dict | None) -> str:
    if not w:
        return "-"
    return f"{sum(w.values()):.2f} ({w['ring full']:.2f}/{w['CPU workers']:.2f}/{w['GPU workers']:.2f})"


if __name__ == "__main__":
    main(sys.argv[1])
