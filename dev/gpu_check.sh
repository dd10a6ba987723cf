#!/usr/bin/env bash
# dev/gpu_check.sh — the one prepared check on a lent CUDA machine (H200/H100), run from the repo root.
# Steps, in the order of their value, so a time limit late in the run loses the least (estimates for
# one H200 with 16 cores; each step runs under `timeout`, cut to what is left of BUDGET_S):
#   build    the programs for sm_90 (~1.5 min); meanwhile in the background the kernel labs
#            (make -C dev/cuda GPU_ARCH=90), the CUPTI profiler library and the CIFAR-10 files
#   test     test_ldm, CPU and CUDA suites (~1 min, overlapping the background builds)
#   unet     U-Net fast training at batch 256: ours vs the twin in fp32 eager, bf16 eager and
#            torch.compile bf16, with MFU and the acceptance target (~1.5 min, compiling most of it)
#   labs     each kernel lab once, every version validated on every preset's shapes, timed with
#            --repeats 3 (~1 min)
#   train    VAE fast (30 steps) and U-Net base (50 steps) on CIFAR-10: the GPU path end to end, and the
#            checkpoints the sampling benchmark needs (~1 min)
#   sample   sampling: base, DPM-Solver++(2M) 20 steps, CFG 3, 1000 images, decode included (~1.5 min)
#   vae      VAE fast training at batch 512, as for the U-Net (~1.5 min)
#   profile  per-category GPU time of a U-Net fast --bench run (CUPTI, dev/profile_gpu.py; ~20 s)
# Everything printed goes to $OUT/gpu_check.log; the long logs (build, test_ldm, labs, training) to
# $OUT/details.log; the benchmarks' JSON and two images beside them (8 files at most come back).
#
#   prepare here:  bash dev/gpu_check.sh prepare     (the CIFAR-10 tarball, the stb headers and a
#                                                      fallback profiler library into the ignored gpu/)
#   run there:     bash dev/gpu_check.sh              (device tool: carry ["gpu"], timeout_s 540)
#   a rerun of some steps (build always runs: a lent machine starts bare; sample brings train along):
#                  BUDGET_S=300 bash dev/gpu_check.sh labs sample vae profile
# BUDGET_S (default 480) bounds the whole run: a step whose turn comes with under 20 s left is skipped.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
ALL_STEPS="test unet labs train sample vae profile"

# -------------------------------------------------------------------------------------------------
# prepare (here, without a GPU): what the bare GPU machine lacks, into gpu/ (carried, 64 MiB at most)

if [ "${1:-}" = "prepare" ]; then
    mkdir -p gpu/stb
    cp ../shared/cifar10/cifar10-jpeg.tar.gz gpu/ || { echo "error: ../shared/cifar10/cifar10-jpeg.tar.gz missing"; exit 1; }
    cp /usr/include/stb/stb_image.h /usr/include/stb/stb_image_write.h gpu/stb/ ||
        { echo "error: stb headers missing: apt-get install libstb-dev"; exit 1; }
    nvcc -shared -Xcompiler -fPIC -O2 dev/profile_cupti.c -lcupti -o gpu/libprofile_cupti.so ||
        echo "warning: the fallback profiler library did not build (the GPU run builds its own)"
    rm -rf gpu/out gpu/work
    kib=$(du -sk gpu | cut -f1)
    echo "gpu/ holds $((kib / 1024)) MiB (the device tool carries at most 64 MiB with the working tree):"
    ls -l gpu gpu/stb
    [ "$kib" -lt $((48 * 1024)) ] || { echo "error: gpu/ is over 48 MiB; the carry limit is 64 MiB"; exit 1; }
    exit 0
fi

for s in "$@"; do
    case " $ALL_STEPS " in *" $s "*) ;; *) echo "error: unknown step '$s'; steps: $ALL_STEPS (or prepare)"; exit 1 ;; esac
done
STEPS=" ${*:-$ALL_STEPS} "
case "$STEPS" in *" sample "*) case "$STEPS" in *" train "*) ;; *) STEPS="$STEPS train " ;; esac ;; esac  # its checkpoint
if [ ! -f gpu/cifar10-jpeg.tar.gz ] || [ ! -f gpu/stb/stb_image.h ]; then
    echo "error: gpu/ lacks the CIFAR-10 tarball or the stb headers: run \`bash dev/gpu_check.sh prepare\` here first and carry gpu"
    exit 1
fi

OUT="${OUT:-gpu/out}"
WORK=gpu/work                      # what does not come back: logs of background jobs, data, runs
DETAILS="$OUT/details.log"
mkdir -p "$OUT" "$WORK"
exec > >(tee -a "$OUT/gpu_check.log") 2>&1
TEE_PID=$!
BUDGET_S="${BUDGET_S:-480}"
START=$(date +%s)
SUMMARY=()
FAILED=0
export ROOT OUT WORK DETAILS PYTHONUNBUFFERED=1 STB_INC="$ROOT/gpu/stb" CPATH="$ROOT/gpu/stb"

section() { echo; echo "=== $* (+$(( $(date +%s) - START ))s, $(date +%T))"; }

# run_step NAME LIMIT_S: runs step_NAME under timeout (its limit cut to what is left of the budget),
# notes ok / FAILED / TIMED OUT and its seconds for the summary
run_step() {
    local name=$1 limit=$2 left t0 rc status
    case "$STEPS" in *" $name "*) ;; *) [ "$name" = build ] || return 0 ;; esac
    left=$(( BUDGET_S - ($(date +%s) - START) ))
    if [ "$left" -lt 20 ]; then
        section "$name: SKIPPED, ${left}s of the ${BUDGET_S}s budget left"
        SUMMARY+=("$(printf '%-8s skipped (budget spent)' "$name")")
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    section "$name (limit ${limit}s)"
    t0=$(date +%s)
    timeout -k 10 "$limit" bash -c "step_$name"
    rc=$?
    case $rc in 0) status=ok ;; 124|137) status="TIMED OUT after ${limit}s" ;; *) status="FAILED (exit $rc)" ;; esac
    SUMMARY+=("$(printf '%-8s %-28s %4ds' "$name" "$status" $(( $(date +%s) - t0 )))")
    [ "$rc" -eq 0 ] || FAILED=$((FAILED + 1))
    return "$rc"
}

# appends a log to details.log under a title
keep_log() { { echo; echo "##### $1"; cat "$2"; } >> "$DETAILS" 2>/dev/null; }

# -------------------------------------------------------------------------------------------------
# the steps (each runs in its own bash under timeout, so they are exported)

step_device() {
    nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap,clocks.max.sm --format=csv
    nvcc --version | tail -1
    python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'sees', torch.cuda.get_device_name())"
    echo "cores: $(nproc); ncu: $(command -v ncu || echo none); nsys: $(command -v nsys || echo none)"
}

# background jobs of the build step: the labs, the profiler library, the data (CPU only: they end before
# the benchmarks, which must not share the CPU with them)
start_background() {
    ( timeout 420 make -C dev/cuda -j4 GPU_ARCH=90 STB_INC="$STB_INC" > "$WORK/labs_build.log" 2>&1
      echo "make -C dev/cuda exit $?" >> "$WORK/labs_build.log" ) &
    BG_PIDS="$!"
    ( cuda_home=$(dirname "$(dirname "$(command -v nvcc)")")
      cupti_lib=$(dirname "$(find "$cuda_home/" -name 'libcupti.so*' 2>/dev/null | head -1)" 2>/dev/null)
      timeout 120 nvcc -shared -Xcompiler -fPIC -O2 -I"$cuda_home/extras/CUPTI/include" -L"$cupti_lib" \
          -Xlinker -rpath,"$cupti_lib" dev/profile_cupti.c -lcupti -o "$WORK/libprofile_cupti.so" \
          > "$WORK/cupti_build.log" 2>&1
      echo "profiler library build exit $? (libcupti in ${cupti_lib:-?})" >> "$WORK/cupti_build.log" ) &
    BG_PIDS="$BG_PIDS $!"
    ( CIFAR10_TARBALL=gpu/cifar10-jpeg.tar.gz timeout 300 bash data/get_cifar10.sh "$ROOT/$WORK/cifar-10-batches-bin" \
          > "$WORK/data.log" 2>&1
      echo "get_cifar10.sh exit $?" >> "$WORK/data.log" ) &
    BG_PIDS="$BG_PIDS $!"
}

step_build() {
    make -j4 GPU_ARCH=90 STB_INC="$STB_INC" train_vae train_ldm sample_ldm test_ldm > "$WORK/build.log" 2>&1
    local rc=$?
    keep_log "build (exit $rc)" "$WORK/build.log"
    [ $rc -eq 0 ] || { tail -30 "$WORK/build.log"; return 1; }
    grep -ciE "warning" "$WORK/build.log" | sed 's/^/compiler warnings: /'
}

step_test() {
    OMP_NUM_THREADS=8 ./test_ldm > "$WORK/test_ldm.log" 2>&1
    local rc=$?
    keep_log "test_ldm (exit $rc)" "$WORK/test_ldm.log"
    # the sections, every failure, the CUDA checks counted, the closing line
    grep -E "^==|\[FAIL\]|passed|no CUDA device" "$WORK/test_ldm.log"
    echo "CUDA checks: $(grep -c '^  \[ok\] *cuda' "$WORK/test_ldm.log") ok, $(grep -c '^  \[FAIL\] cuda' "$WORK/test_ldm.log") failed"
    echo "test_ldm exit code $rc"
    return $rc
}

wait_background() {
    section "waiting for the background builds and data"
    for pid in $BG_PIDS; do wait "$pid"; done
    tail -1 "$WORK/labs_build.log"; tail -1 "$WORK/cupti_build.log"; tail -3 "$WORK/data.log"
    keep_log "labs build" "$WORK/labs_build.log"
    keep_log "profiler library build" "$WORK/cupti_build.log"
    keep_log "data" "$WORK/data.log"
}

step_unet() {
    python3 dev/bench_gpu.py --device cuda --models unet --unet-preset fast --unet-batch 256 --steps 10 \
        --json "$OUT/bench_unet.json"
}

# a lab's log in short: the GPU line, the versions, the verdicts, the first FAIL lines, 40 lines of timings
# and the timing sums (the whole log goes to details.log)
lab_digest() {
    awk '/^versions:|^validation|rror/ {print; next}
         /FAIL/ {if (++f <= 20) print; next}
         / on .*sm_[0-9]/ {print; next}
         /^timings:/ {t = 1; n = 0}
         /^sum over/ {print; next}
         t && n < 40 {print; n++}' "$1"
}

step_labs() {
    local lab which limit r rc=0
    for lab in conv2d groupnorm attention adamw; do
        [ -x "dev/cuda/$lab" ] || { echo "$lab: not built (see the labs build in details.log)"; rc=1; continue; }
        # every version is validated; timed: all of them, but for conv2d the shipped v2 and the
        # bf16 tensor-core v4 only (the naive v1 on the VAE's 32x32 shapes at batch 512 costs most)
        which=all; limit=40
        [ $lab = conv2d ] && which=4 && limit=75
        echo "--- dev/cuda/$lab $which --repeats 3 (limit ${limit}s)"
        timeout -k 5 $limit "dev/cuda/$lab" $which --repeats 3 > "$WORK/lab_$lab.log" 2>&1
        r=$?
        keep_log "dev/cuda/$lab $which --repeats 3 (exit $r)" "$WORK/lab_$lab.log"
        lab_digest "$WORK/lab_$lab.log"
        echo "$lab exit code $r$([ $r -eq 124 ] && echo ': TIMED OUT')"
        [ $r -eq 0 ] || rc=1
    done
    return $rc
}

step_train() {
    local data="$ROOT/$WORK/cifar-10-batches-bin"
    rm -rf runs/gpu_vae runs/gpu_ldm
    ./train_vae --preset fast --max-steps 30 --log-every 10 --run-name gpu_vae --device cuda --data "$data" \
        > "$WORK/train_vae.log" 2>&1
    local rc=$?
    keep_log "train_vae (exit $rc)" "$WORK/train_vae.log"
    grep -E "^step|mse|Error|error" "$WORK/train_vae.log" | tail -12
    [ $rc -eq 0 ] || return $rc
    cp runs/gpu_vae/recon_final.png "$OUT/gpu_vae_recon.png"
    ./train_ldm --preset base --num-classes 10 --vae-checkpoint runs/gpu_vae/checkpoint_final.safetensors \
        --max-steps 50 --log-every 10 --run-name gpu_ldm --device cuda --data "$data" > "$WORK/train_ldm.log" 2>&1
    rc=$?
    keep_log "train_ldm (exit $rc)" "$WORK/train_ldm.log"
    grep -E "^step|latent_scale|Error|error" "$WORK/train_ldm.log" | tail -12
    [ $rc -eq 0 ] || return $rc
    cp runs/gpu_ldm/samples_final.png "$OUT/gpu_ldm_samples.png"
}

step_sample() {
    [ -f runs/gpu_ldm/checkpoint_final.safetensors ] || { echo "no checkpoint: the train step did not finish"; return 1; }
    python3 dev/bench_sample.py --checkpoint runs/gpu_ldm/checkpoint_final.safetensors --n 1000 --batch 500 \
        --steps 20 --guidance 3 --repeats 2 --device cuda --binary ./sample_ldm --json "$OUT/bench_sample.json"
}

step_vae() {
    python3 dev/bench_gpu.py --device cuda --models vae --vae-preset fast --vae-batch 512 --steps 10 \
        --json "$OUT/bench_vae.json"
}

step_profile() {
    local lib="$WORK/libprofile_cupti.so"
    [ -f "$lib" ] || lib=gpu/libprofile_cupti.so
    python3 dev/profile_gpu.py --tool cupti --lib "$lib" --per 12 -- \
        ./train_ldm --preset fast --num-classes 10 --bench 10 --device cuda && return 0
    echo "the CUPTI profile failed; Nsight Compute instead, on a 3-step run"
    python3 dev/profile_gpu.py --tool ncu --per 3 -- ./train_ldm --preset fast --num-classes 10 --bench 1 --device cuda
}

export -f step_device step_build step_test step_unet step_labs step_train step_sample step_vae step_profile keep_log \
    lab_digest

# -------------------------------------------------------------------------------------------------
# the run

section "gpu_check: steps build${STEPS% }, budget ${BUDGET_S}s"
step_device
BG_PIDS=""
case "$STEPS" in *" labs "*|*" profile "*|*" train "*|*" sample "*) start_background ;; esac
run_step build 300 || { section "the build failed: nothing else can run"; exit 1; }
run_step test 120
[ -n "$BG_PIDS" ] && wait_background
run_step unet 180
run_step labs 200
run_step train 150
run_step sample 170
run_step vae 160
run_step profile 90

section "summary"
printf '%s\n' "${SUMMARY[@]}"
echo "acceptance (ours/twin; from the tables above):"
grep -E "(met|NOT MET|unmeasured)$|(met|NOT MET|unmeasured) " "$OUT/gpu_check.log" | grep -v "^ " | awk '!seen[substr($0, 1, 60)]++'
echo "files in $OUT:"; ls -l "$OUT"
echo "gpu_check: $FAILED step(s) failed or timed out, $(( $(date +%s) - START ))s in all"
# close the pipe to tee (its copy to the terminal goes on) and let it write the last lines
exec > /dev/null 2>&1
wait "$TEE_PID" 2>/dev/null || sleep 1
[ "$FAILED" -eq 0 ]
