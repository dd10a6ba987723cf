#!/usr/bin/env bash
# dev/gpu_check.sh — the one prepared check on a lent CUDA machine (H100/H200), run from the repo root:
# build for sm_90, run test_ldm on the GPU, train a few hundred steps of the VAE and the base U-Net
# on CIFAR-10, and time training and sampling against the PyTorch twin on the same GPU.
# Everything it prints also goes to $OUT (default gpu/out) so the figures come back.
#
# Needs (carried into the ignored folder gpu/, see `prepare` below): the CIFAR-10 tarball and the
# stb headers, since the GPU machine has neither.
#   prepare here:  bash dev/gpu_check.sh prepare
#   run there:     bash dev/gpu_check.sh            (device tool: carry gpu, timeout ~420 s)
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = "prepare" ]; then
    mkdir -p gpu/stb
    cp ../shared/cifar10/cifar10-jpeg.tar.gz gpu/
    cp /usr/include/stb/stb_image.h /usr/include/stb/stb_image_write.h gpu/stb/
    du -sh gpu
    exit 0
fi

OUT="${OUT:-gpu/out}"
mkdir -p "$OUT"
LOG="$OUT/gpu_check.log"
exec > >(tee "$LOG") 2>&1
section() { echo; echo "=== $* ($(date +%T))"; }

section "device"
nvidia-smi --query-gpu=name,memory.total,driver_version,compute_cap --format=csv
nvcc --version | tail -1

section "build (sm_90)"
export CPATH="$PWD/gpu/stb"
time make -j4 GPU_ARCH=90 STB_INC="$PWD/gpu/stb" train_vae train_ldm sample_ldm test_ldm > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }

section "test_ldm (CPU and CUDA)"
OMP_NUM_THREADS=8 ./test_ldm > "$OUT/test_ldm.log" 2>&1
echo "test_ldm exit code $?"
grep -E "FAIL|^==|passed" "$OUT/test_ldm.log"
grep -E "cuda (vae|unet c10) (gradients|params after 5)|cuda sampler c10.dpmpp2m .*final" "$OUT/test_ldm.log"

section "data"
CIFAR10_TARBALL=gpu/cifar10-jpeg.tar.gz bash data/get_cifar10.sh > "$OUT/data.log" 2>&1 || { tail "$OUT/data.log"; exit 1; }
tail -2 "$OUT/data.log"

section "train_vae --preset fast, 300 steps on the GPU"
rm -rf runs/gpu_vae runs/gpu_ldm
./train_vae --preset fast --max-steps 300 --log-every 50 --run-name gpu_vae --device cuda
cp runs/gpu_vae/recon_final.png "$OUT/gpu_vae_recon.png"

section "train_ldm --preset base, 10 classes, 300 steps on the GPU"
./train_ldm --preset base --num-classes 10 --vae-checkpoint runs/gpu_vae/checkpoint_final.safetensors \
    --max-steps 300 --log-every 50 --run-name gpu_ldm --device cuda
cp runs/gpu_ldm/samples_final.png "$OUT/gpu_ldm_samples.png"

section "benchmark: DPM-Solver++(2M) 20 steps with CFG, base preset"
PYTHONUNBUFFERED=1 python3 dev/bench_sample.py --checkpoint runs/gpu_ldm/checkpoint_final.safetensors \
    --n 1000 --batch 500 --steps 20 --guidance 3 --device cuda --binary ./sample_ldm

section "benchmarks: training img/s, ours vs the PyTorch twin"
PYTHONUNBUFFERED=1 python3 dev/bench_gpu.py --device cuda --steps 20 --json "$OUT/bench_gpu.json" ${BENCH_MODES:+--modes $BENCH_MODES}

section "done"
