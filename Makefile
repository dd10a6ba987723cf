# ldm.c — build knobs
#   make                  every program (train_vae, train_ldm, sample_ldm, eval_ldm, test_ldm)
#   make test             build and run the test suite (CPU always, CUDA too when a GPU is present),
#                         the data converter's checks (tests/bad_data.sh) and the bad-input battery
#                         (tests/bad_inputs.sh); the last line adds them up
#   make data             CIFAR-10 in its official binary layout under data/cifar-10-batches-bin
#   make eval             scores the quick start (after make quickstart): 2,000 samples of the LDM and the
#                         VAE's reconstructions of 2,000 test images, one line each (eval_ldm)
#   make sanitize         every program built with ASan + UBSan into build-sanitize/, then test_ldm and the
#                         tests/*.sh batteries run with those binaries (tests/sanitize.sh); any report fails it
# Knobs:
#   GPU_ARCH=90           build for one architecture (default: the present GPU's, else sm_80 + sm_90 + PTX)
#   NO_OMP=1              no OpenMP on the host (single-threaded CPU path)
#   DEBUG=1               -O0 -g -G, for cuda-gdb / compute-sanitizer
#   NATIVE=0              host code without -march=native (portable binaries)
#   STB_INC=DIR           where stb_image.h and stb_image_write.h are (default /usr/include/stb)
#   NO_MPI=1  NO_NCCL=1   build the trainers without MPI / NCCL even where they are found
#   MPICC=mpicc           the MPI compiler wrapper asked for MPI's flags (else pkg-config ompi / mpich)
#   NCCL_HOME=DIR         where include/nccl.h and lib/libnccl.so are (default: beside the CUDA toolkit)

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

# -fno-trapping-math: the compiler may assume no floating-point operation traps (nothing here turns
# traps on), which lets it vectorise loops with float compares, such as exp_cpu's clamp
# (ldmc/elementwise.cuh); every IEEE result stays the same
HOST_FLAGS := -Wall,-Wno-format-truncation,-fno-trapping-math
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

# Data parallel (ldmc/dist.h, README "Training on several GPUs or nodes"): train_vae and train_ldm
# get MPI when the MPI wrapper or pkg-config knows it, and NCCL when nccl.h and libnccl.so are beside
# the CUDA toolkit; without them they are the single-process programs. nvcc takes -I/-L/-l as they
# are; other wrapper flags go through -Xcompiler / -Xlinker.
comma := ,
MPICC ?= mpicc
ifneq ($(NO_MPI),1)
  MPI_CFLAGS := $(shell $(MPICC) --showme:compile 2>/dev/null || pkg-config --cflags ompi 2>/dev/null || pkg-config --cflags mpich 2>/dev/null)
  MPI_LDFLAGS := $(shell $(MPICC) --showme:link 2>/dev/null || pkg-config --libs ompi 2>/dev/null || pkg-config --libs mpich 2>/dev/null)
endif
ifneq ($(filter -lmpi%,$(MPI_LDFLAGS)),)
  HAVE_MPI := 1
  DIST_CFLAGS := -DLDMC_MPI $(filter -I% -D%,$(MPI_CFLAGS)) $(if $(filter -pthread,$(MPI_CFLAGS)),-Xcompiler -pthread)
  DIST_LIBS := $(filter -L% -l%,$(MPI_LDFLAGS)) $(patsubst -Wl$(comma)%,-Xlinker %,$(filter -Wl$(comma)%,$(MPI_LDFLAGS)))
endif
CUDA_HOME ?= $(patsubst %/bin/nvcc,%,$(realpath $(shell command -v $(NVCC) 2>/dev/null)))
NCCL_HOME ?= $(CUDA_HOME)
ifneq ($(NO_NCCL),1)
  NCCL_LIB := $(firstword $(wildcard $(NCCL_HOME)/lib64/libnccl.so $(NCCL_HOME)/lib/libnccl.so))
endif
ifneq ($(and $(wildcard $(NCCL_HOME)/include/nccl.h),$(NCCL_LIB)),)
  HAVE_NCCL := 1
  DIST_CFLAGS += -DLDMC_NCCL -I$(NCCL_HOME)/include
  DIST_LIBS += -L$(dir $(NCCL_LIB)) -Xlinker -rpath=$(dir $(NCCL_LIB)) -lnccl
endif
ifeq ($(HAVE_MPI)$(HAVE_NCCL),11)
  DIST_NOTE := MPI and NCCL: train_vae and train_ldm run as N ranks (mpirun -np N), GPUs all-reduce with NCCL
else ifeq ($(HAVE_MPI),1)
  DIST_NOTE := MPI without NCCL (none in $(NCCL_HOME)): N ranks under mpirun; GPU ranks average through host memory
else ifeq ($(HAVE_NCCL),1)
  DIST_NOTE := NCCL without MPI (none from $(MPICC) or pkg-config): N GPU ranks via $$LDMC_DIST_DIR only
else
  DIST_NOTE := no MPI (none from $(MPICC) or pkg-config), no NCCL: train_vae and train_ldm are single-process
endif
ifeq ($(filter clean,$(MAKECMDGOALS)),)
  $(info data parallel: $(DIST_NOTE))
endif

PROGRAMS := train_vae train_ldm sample_ldm eval_ldm test_ldm
HEADERS := $(wildcard ldmc/*.cuh ldmc/*.h tests/*.h)

.PHONY: all test data clean quickstart sanitize eval

all: $(PROGRAMS)

train_vae: train_vae.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $(DIST_CFLAGS) $< $(NVCC_LIBS) $(DIST_LIBS) -o $@

train_ldm: train_ldm.cu train_vae.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $(DIST_CFLAGS) $< $(NVCC_LIBS) $(DIST_LIBS) -o $@

sample_ldm: sample_ldm.cu train_ldm.cu train_vae.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $< $(NVCC_LIBS) -o $@

eval_ldm: eval_ldm.cu train_vae.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $< $(NVCC_LIBS) -o $@

test_ldm: test_ldm.cu train_ldm.cu train_vae.cu $(HEADERS)
	$(NVCC) $(NVCC_FLAGS) $< $(NVCC_LIBS) -o $@

# test_ldm, the converter's checks and the battery on the real programs (about two minutes); the last
# line, "N passed, M failed", adds up the three suites' lines (tests/suites.sh)
test: test_ldm train_vae train_ldm sample_ldm eval_ldm
	@bash -c 'source tests/suites.sh; run_suite test_ldm ./test_ldm; run_suite bad_data bash tests/bad_data.sh; \
	    run_suite bad_inputs bash tests/bad_inputs.sh; suites_summary'

# the main job from a fresh clone: data, the tiny VAE, the tiny class-conditional LDM, a sample grid
# (about 13 minutes on 2 CPU cores; each stage is skipped when its output already exists). The three
# programs build in parallel with the data. How long each model trains and the sampler settings were
# chosen by measurement to fit in 15 minutes (README, "Quick start").
QS_VAE := --preset tiny --max-steps 500
QS_LDM := --preset tiny --num-classes 10 --epochs 3 --lr 1e-3
QS_SAMPLER := --sampler dpm++2m --steps 20 --guidance-scale 7

quickstart:
	$(MAKE) -j2 data train_vae train_ldm sample_ldm
	$(MAKE) runs/quickstart_samples.png

runs/vae_tiny/checkpoint_final.safetensors: | data train_vae
	./train_vae $(QS_VAE) --run-name vae_tiny

runs/ldm_tiny_c10/checkpoint_final.safetensors: runs/vae_tiny/checkpoint_final.safetensors | train_ldm
	./train_ldm $(QS_LDM) --run-name ldm_tiny_c10 --vae-checkpoint runs/vae_tiny/checkpoint_final.safetensors

runs/quickstart_samples.png: runs/ldm_tiny_c10/checkpoint_final.safetensors | sample_ldm
	./sample_ldm --checkpoint $< $(QS_SAMPLER) --out $@

# the quick start's scores: 2,000 samples with the quick start's sampler settings, as CIFAR-10 records (a
# rule of its own), and the VAE's reconstructions of the first 2,000 test images, each scored by eval_ldm
# against the first 2,000 test images (FD in the committed classifier's features, class agreement; MSE
# and PSNR for the VAE); eval_ldm itself takes about 2 minutes on 2 loaded CPU cores. dev/README.md,
# "Evaluating samples", says how to read the numbers.
EVAL_N := 2000

eval: runs/quickstart_samples.bin | eval_ldm
	./eval_ldm --vae-checkpoint runs/vae_tiny/checkpoint_final.safetensors --vae-n $(EVAL_N) $<

runs/quickstart_samples.bin: runs/ldm_tiny_c10/checkpoint_final.safetensors | sample_ldm
	./sample_ldm --checkpoint $< $(QS_SAMPLER) --n $(EVAL_N) \
	    --out runs/quickstart_samples_eval.png --out-raw $@

# CIFAR-10 in the official binary layout, from ../shared/cifar10 (or an official tarball at hand)
data:
	bash data/get_cifar10.sh

# ----------------------------------------------------------------------------
# make sanitize: AddressSanitizer + UndefinedBehaviorSanitizer on the host code (the CPU path, the
# file readers and writers, argument parsing). nvcc compiles the host code with the sanitizers; the
# link is g++'s, since nvcc's own link does not pass -fsanitize on, so the CUDA libraries are named
# here (shared cudart instead of nvcc's default static one). The sanitizer runtimes are linked
# statically: with gcc's two shared runtimes (libasan, libubsan) UBSan ignores its log_path and
# writes to stderr, where a test that expects a program to fail would hide it (tests/sanitize.sh
# collects the report files). Separate binaries in build-sanitize/, so the normal ones stay as they
# are. -O1 -g: readable stack traces at a bearable speed.

SAN_DIR := build-sanitize
SAN_FLAGS := -fsanitize=address,undefined -fno-omit-frame-pointer
SAN_LINK := -fsanitize=address,undefined -static-libasan -static-libubsan
CUDA_LIB := $(CUDA_HOME)/lib64
# without a GPU the device code is compiled but never run: PTX for one architecture is enough (a
# quarter less build time). -Xcompiler splits its argument at commas, hence one -fsanitize per sanitizer.
SAN_ARCH_FLAGS := $(if $(GPU_ARCH),$(ARCH_FLAGS),-gencode arch=compute_80,code=compute_80)
SAN_NVCC_FLAGS := -O1 -g -std=c++17 -diag-suppress 177 $(SAN_ARCH_FLAGS) -Xcompiler $(HOST_FLAGS) \
                  -Xcompiler -fsanitize=address,-fsanitize=undefined,-fno-omit-frame-pointer -I. -I$(STB_INC)
SAN_PROGRAMS := $(addprefix $(SAN_DIR)/,$(PROGRAMS) cifar10_from_folders)
.PRECIOUS: $(SAN_DIR)/%.o

sanitize: $(SAN_PROGRAMS)
	bash tests/sanitize.sh $(SAN_DIR)

# every program includes train_vae.cu (train_ldm.cu, sample_ldm.cu include more): each object depends
# on every .cu file
$(SAN_DIR)/%.o: %.cu $(wildcard *.cu) $(HEADERS)
	@mkdir -p $(SAN_DIR)
	$(NVCC) $(SAN_NVCC_FLAGS) -c $< -o $@

$(SAN_DIR)/%: $(SAN_DIR)/%.o
	g++ $(SAN_LINK) $< -L$(CUDA_LIB) -Wl,-rpath,$(CUDA_LIB) -lcudart -lcublas $(OMP_LIB) -lm -o $@

$(SAN_DIR)/cifar10_from_folders: data/cifar10_from_folders.c
	@mkdir -p $(SAN_DIR)
	$(CC) -O1 -g $(SAN_FLAGS) $(SAN_LINK) -I$(STB_INC) $< -ljpeg -lm -o $@

clean:
	rm -f $(PROGRAMS) data/cifar10_from_folders
	rm -rf $(SAN_DIR)
