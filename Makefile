# ldm.c — build knobs
#   make                  every program (train_vae, train_ldm, sample_ldm, test_ldm)
#   make test             build and run the test suite (CPU always, CUDA too when a GPU is present),
#                         the data converter's checks (tests/bad_data.sh) and the bad-input battery
#                         (tests/bad_inputs.sh); the last line adds them up
#   make data             CIFAR-10 in its official binary layout under data/cifar-10-batches-bin
# Knobs:
#   GPU_ARCH=90           build for one architecture (default: the present GPU's, else sm_80 + sm_90 + PTX)
#   NO_OMP=1              no OpenMP on the host (single-threaded CPU path)
#   DEBUG=1               -O0 -g -G, for cuda-gdb / compute-sanitizer
#   NATIVE=0              host code without -march=native (portable binaries)
#   STB_INC=DIR           where stb_image.h and stb_image_write.h are (default /usr/include/stb)

NVCC ?= nvcc
CC ?= cc

# GPU architecture: ask nvidia-smi for the present GPU, else build for Ampere and Hopper plus PTX
ifeq ($(GPU_ARCH),)
  GPU_ARCH := $(shell nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d '.')
endif
ifeq ($(GPU_ARCH),)
  ARCH_FLAGS := -gencode arch=compute_80,code=sm_80 -gencode arch=compute_90,code=sm_90 \
                -gencode arch=compute_90,code=compute_90
else
  ARCH_FLAGS := -gencode arch=compute_$(GPU_ARCH),code=sm_$(GPU_ARCH)
endif

HOST_FLAGS := -Wall,-Wno-unused-function,-Wno-format-truncation
ifneq ($(NATIVE),0)
  HOST_FLAGS := $(HOST_FLAGS),-march=native
endif
ifneq ($(NO_OMP),1)
  HOST_FLAGS := $(HOST_FLAGS),-fopenmp
  OMP_LIB := -lgomp
else
  HOST_FLAGS := $(HOST_FLAGS),-Wno-unknown-pragmas
endif

ifeq ($(DEBUG),1)
  OPT := -O0 -g -G
else
  OPT := -O3
endif

STB_INC ?= /usr/include/stb
NVCC_FLAGS := $(OPT) -std=c++17 -diag-suppress 177 $(ARCH_FLAGS) -Xcompiler $(HOST_FLAGS) -I. -I$(STB_INC)
NVCC_LIBS := -lcublas $(OMP_LIB) -lm

PROGRAMS := train_vae train_ldm sample_ldm test_ldm
HEADERS := $(wildcard ldmc/*.cuh ldmc/*.h tests/*.h)

.PHONY: all test data clean quickstart

all: $(PROGRAMS)

train_vae: train_vae.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $< $(NVCC_LIBS) -o $@

train_ldm: train_ldm.cu train_vae.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $< $(NVCC_LIBS) -o $@

sample_ldm: sample_ldm.cu train_ldm.cu train_vae.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $< $(NVCC_LIBS) -o $@

test_ldm: test_ldm.cu train_ldm.cu train_vae.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $< $(NVCC_LIBS) -o $@

# test_ldm, the converter's checks and the battery on the real programs (about two minutes); the last
# line, "all: N passed, M failed", adds up the three suites' lines (tests/run_suites.sh)
test: test_ldm train_vae train_ldm sample_ldm
	@bash tests/run_suites.sh ./test_ldm "bash tests/bad_data.sh" "bash tests/bad_inputs.sh"

# the main job from a fresh clone: data, the tiny VAE, the tiny class-conditional LDM, a sample grid
# (about 15 minutes on 2 CPU cores; each stage is skipped when its output already exists)
quickstart: runs/quickstart_samples.png

runs/vae_tiny/checkpoint_final.safetensors: | data train_vae
	./train_vae --preset tiny --run-name vae_tiny

runs/ldm_tiny_c10/checkpoint_final.safetensors: runs/vae_tiny/checkpoint_final.safetensors | train_ldm
	./train_ldm --preset tiny --num-classes 10 --run-name ldm_tiny_c10 \
	    --vae-checkpoint runs/vae_tiny/checkpoint_final.safetensors

runs/quickstart_samples.png: runs/ldm_tiny_c10/checkpoint_final.safetensors | sample_ldm
	./sample_ldm --checkpoint $< --sampler dpm++2m --steps 20 --guidance-scale 3 --out $@

# CIFAR-10 in the official binary layout, from ../shared/cifar10 (or an official tarball at hand)
data:
	bash data/get_cifar10.sh

clean:
	rm -f $(PROGRAMS) data/cifar10_from_folders
