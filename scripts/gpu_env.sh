# Sourced by the device scripts: the output folder, the environment every GPU run needs (NVLink
# multicast off, as the device machines require; one inductor cache for all the runs of a call),
# `stamp`, which prefixes a line with the seconds since the script started, and `train NAME LIMIT CMD...`,
# which runs an `alexnet train` command (ONE: one process, TWO: torchrun on two GPUs) into
# /tmp/runs/NAME under a time limit, its output appended to $LOG; `photo_tree DEST`, the sample photos as
# an image-folder tree; `raw_store`, `jpeg_store`: the stores the runs read (`nv_wheels`: the GPU decoders); `run_all`, `with_mps`,
# `mps_start`, `mps_stop`: runs, with or without NVIDIA's MPS daemon; `watch`: where a run's cores (and the GPU, its JPEG engines) go;
# `each_run`: runs given as specs; `profile_one`: `alexnet profile` of a run (`profile_in_turn`: of several, old and new code; `kernel_table`: their kernel times); `resident_step`: the step on GPU-resident batches; `sitecustomize`: a module constant patched in the processes of a run.
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
raw_store() {  # COUNT: the sample photos prepared raw at 256 (/tmp/D0) and repeated to a store /tmp/D of COUNT images
  photo_tree /tmp/photos
  timeout 60 python -m alexnet prepare /tmp/photos /tmp/D0 --encoding raw >> "$LOG" 2>&1
  timeout 120 python -c "from alexnet.tools.bench_data import replicate_prepared as r; print(r('/tmp/D0', '/tmp/D', $1))" >> "$LOG" 2>&1
  stamp "raw store: $(du -sh /tmp/D | cut -f1)"
}
nv_wheels() {  # the GPU decoders (.whl/: nvImageCodec, nvJPEG) installed into /tmp/nvpkgs and put on PYTHONPATH
  python -m pip install -q --no-deps --no-index --target /tmp/nvpkgs .whl/*.whl > /dev/null 2>&1
  export PYTHONPATH=/tmp/nvpkgs:$PYTHONPATH
}
jpeg_store() {  # COUNT [SECONDS]: nv_wheels and a JPEG-90 replica store /tmp/rep of COUNT train images,
  # written within SECONDS (150; ImageNet's 1,281,167 need about 160 on 32 cores)
  nv_wheels
  timeout "${2:-150}" python -c "from alexnet.data.replica import make_replica_store as m; m('.carry/imagenet-sample', '/tmp/rep', count=$1, progress=False)" > /dev/null 2>&1
  stamp "store: $? $(du -sh /tmp/rep | cut -f1) ($(du -sb /tmp/rep | cut -f1) bytes)"
}
run_all() {  # RUNS (lines "name|gpus|data|options"), each `alexnet train` on REP's data (gpus 2: torchrun on two
  # GPUs, TWO; else one process, ONE), while at least RUN_MIN (40) s of LIMIT (seconds from the script's start)
  # are left, each for at most RUN_LIMIT seconds
  while IFS='|' read -r name gpus data args; do
    [ -z "$name" ] && continue
    local left=$(( ${LIMIT:-520} - ($(date +%s) - T0) ))
    if [ $left -lt ${RUN_MIN:-40} ]; then stamp "$name: skipped, ${left} s left"; continue; fi
    local launch=("${ONE[@]}"); [ "$gpus" = 2 ] && launch=("${TWO[@]}")
    train "$name" $(( left < ${RUN_LIMIT:-90} ? left : ${RUN_LIMIT:-90} )) "${launch[@]}" "${REP[@]}" $args
  done <<< "$1"
}
each_run() {  # SPEC...: "NAME|KNOB|OPTIONS|LABEL" each; RUNS gets the line "NAME|1|LABEL" (runs_table.py's), then
  # the caller's `run_one NAME KNOB OPTIONS` runs it (KNOB: what the caller varies from run to run)
  RUNS=""
  local spec name knob opts label
  for spec in "$@"; do
    IFS='|' read -r name knob opts label <<< "$spec"
    RUNS+="$name|1|$label"$'\n'
    run_one "$name" "$knob" "$opts"
  done
}
mps_start() {  # NVIDIA's MPS daemon (GPU worker processes' kernels beside training's); fails if it does not start
  export CUDA_MPS_PIPE_DIRECTORY=/tmp/mps-pipe CUDA_MPS_LOG_DIRECTORY=/tmp/mps-log
  mkdir -p $CUDA_MPS_PIPE_DIRECTORY $CUDA_MPS_LOG_DIRECTORY
  if nvidia-cuda-mps-control -d; then stamp "MPS daemon started"; return 0; fi
  stamp "MPS daemon did not start: $(command -v nvidia-cuda-mps-control || echo not found)"
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
  return 1
}
mps_stop() {
  echo quit | nvidia-cuda-mps-control; sleep 1
  stamp "MPS daemon stopped"
  unset CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_LOG_DIRECTORY
}
watch() {  # NAME: scripts/cpu_monitor.py beside the run NAME (started just before it), over its epoch 2
  python scripts/cpu_monitor.py "/tmp/runs/$1" "$1" --gpu >> "$OUT/cpu.txt" 2>&1 &
}
profile_one() {  # NAME OPTIONS...: `alexnet profile` of steps 500-899 of the run REP + OPTIONS (150 s at most),
  # its table in $OUT/e2e_NAME.txt (from the line "window:" on) and its result in $OUT/e2e_NAME.json
  local name=$1; shift
  timeout 150 python -m alexnet profile --at-step 500 --steps 400 --json-out "$OUT/e2e_$name.json" \
    "${REP[@]}" --out "/tmp/runs/$name" "$@" > "$OUT/e2e_$name.txt" 2>&1
  stamp "$name: exit $?"
}
profile_in_turn() {  # NAME...: profile_one each, in turn, unless STOP_AFTER seconds (270) have passed since the
  # script started; a NAME starting "old" runs the code in .carry/old/src (e.g. `git archive REV src | tar -x -C .carry/old`)
  local name
  for name in "$@"; do
    [ $(( $(date +%s) - T0 )) -gt ${STOP_AFTER:-270} ] && { stamp "$name: skipped"; continue; }
    if [[ $name == old* ]]; then PYTHONPATH=/tmp/nvpkgs:$PWD/.carry/old/src profile_one "$name"; else profile_one "$name"; fi
  done
}
kernel_table() {  # profile_one's runs in $OUT, in the order they ran: images/s, GPU busy and idle, the kernels'
  # time outside the copies and by kind (ms a step)
  python - "$OUT" <<'PY'
import glob, json, os, sys
cats = ["convolutions", "fused elementwise (inductor Triton)", "other", "matmul (fc layers)", "elementwise (ATen)", "layout copies", "response norm (Triton)", "max-pool"]
print(f"{'run':16} {'img/s':>7} {'busy':>6} {'idle':>6} {'kernels':>8} " + " ".join(c.split()[0][:9] for c in cats))
for f in sorted(glob.glob(f"{sys.argv[1]}/e2e_*.json"), key=os.path.getmtime):
    r = json.load(open(f)); k = r["kernel_ms"]
    print(f"{os.path.basename(f)[4:-5]:16} {r['images_per_s']:7.0f} {r['busy_ms']:6.3f} {r['idle_ms']:6.3f} "
          f"{sum(v for c, v in k.items() if c != 'memcpy/memset'):8.3f} " + " ".join(f"{k.get(c, 0):9.4f}" for c in cats))
PY
}
resident_step() {  # BATCH...: the paper's net's step on GPU-resident batches (`alexnet bench --rows step`,
  # graphed), its table on stdout (the line "alexnet2012 graphed RATE..."), 120 s at most
  timeout 120 python -m alexnet bench --batch "$@" --rows step --steps 40 --repeats 5 --warmup 6 \
    --only alexnet2012:graphed
}
sitecustomize() {  # DIR CODE: DIR/sitecustomize.py runs CODE in every process started with DIR on PYTHONPATH
  mkdir -p "$1" && echo "$2" > "$1/sitecustomize.py"
}
with_mps() {  # RUNS: run_all with NVIDIA's MPS daemon running
  if mps_start; then run_all "$1"; mps_stop; fi
}
