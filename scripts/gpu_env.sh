# Sourced by the device scripts: the output folder, the environment every GPU run needs (NVLink
# multicast off, as the device machines require; one inductor cache for all the runs of a call),
# `stamp`, which prefixes a line with the seconds since the script started, and `train NAME LIMIT CMD...`,
# which runs an `alexnet train` command (ONE: one process, TWO: torchrun on two GPUs) into
# /tmp/runs/NAME under a time limit, its output appended to $LOG; `photo_tree DEST`, the sample photos as
# an image-folder tree.
set -uo pipefail
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/src PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 \
       NVSHMEM_DISABLE_NVLS=1 TORCHINDUCTOR_CACHE_DIR=${TORCHINDUCTOR_CACHE_DIR:-/tmp/inductor-cache}
T0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - T0 )) s] $*"; }
train() {  # name, timeout, then the command's arguments
  local name=$1 limit=$2; shift 2
  rm -rf "/tmp/runs/$name"
  timeout --kill-after=15 "$limit" "$@" --out "/tmp/runs/$name" --no-progress >> "$LOG" 2>&1
  stamp "$name: exit $?"
}
ONE=(python -m alexnet train)
TWO=(torchrun --standalone --nproc-per-node 2 -m alexnet train)
photo_tree() {  # DEST: the sample photos (.carry/imagenet-sample) as an image-folder tree DEST/train/<wnid>/
  rm -rf "$1" && mkdir -p "$1/train"
  for f in .carry/imagenet-sample/*.JPEG; do
    b=$(basename "$f"); w=${b%%_*}; mkdir -p "$1/train/$w"; ln -s "$PWD/$f" "$1/train/$w/$b"
  done
}
