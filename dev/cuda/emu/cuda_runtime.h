// dev/cuda/emu/cuda_runtime.h — a CPU stand-in for the CUDA runtime, so that the labs' kernels can be
// executed on a machine without a GPU (make -C dev/cuda emu). It replaces <cuda_runtime.h> for a g++
// build of sources that emulate.py has rewritten (kernel launches, dynamic shared memory, mma.sync).
//   threads   every CUDA thread of a block is a fiber (ucontext) of the one host thread; blocks run one
//             after another. __syncthreads() and the warp operations are cooperative barriers: a fiber
//             runs until it reaches one, and a barrier opens when every live thread of its block (warp)
//             waits at it; barriers nobody can open are reported as a deadlock.
//   memory    "device" memory is host memory; cudaMalloc fills it with 0x7f bytes (3.4e38 as a float),
//             so a kernel that reads what nobody wrote produces absurd numbers instead of plausible zeros
//   shuffles  __shfl_xor_sync exchanges through a per-warp slot table between two warp barriers
//   mma.sync  m16n8k16 bf16 -> fp32 is recomputed from the fragment layout tables of the PTX ISA
//             ("Matrix Fragments for mma.m16n8k16"), written here independently of the kernels
// What it cannot see: data races (fibers never overlap), misaligned vector accesses, out-of-bounds
// accesses, and anything about speed. It is a smoke test of indexing, synchronisation and layouts.
#pragma once
#include <stdint.h>
#include <stdlib.h>
#include <stdio.h>
#include <string.h>
#include <math.h>
#include <ucontext.h>
#include <vector>
#include <functional>
#include <chrono>

#define __global__
#define __device__
#define __host__
#define __shared__ static
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) __attribute__((aligned(n)))

struct dim3 {
    unsigned x, y, z;
    dim3(unsigned a = 1, unsigned b = 1, unsigned c = 1) : x(a), y(b), z(c) {}
};
struct alignas(16) float4 { float x, y, z, w; };
struct alignas(8) float2 { float x, y; };
struct alignas(16) uint4 { unsigned x, y, z, w; };
static inline float4 make_float4(float a, float b, float c, float d) { return float4{a, b, c, d}; }
static inline float2 make_float2(float a, float b) { return float2{a, b}; }
static inline uint4 make_uint4(unsigned a, unsigned b, unsigned c, unsigned d) { return uint4{a, b, c, d}; }
static inline int min(int a, int b) { return a < b ? a : b; }
static inline int max(int a, int b) { return a > b ? a : b; }

typedef enum { cudaSuccess = 0, cudaErrorMemoryAllocation = 2 } cudaError_t;
typedef enum { cudaMemcpyHostToDevice, cudaMemcpyDeviceToHost, cudaMemcpyDeviceToDevice } cudaMemcpyKind;
typedef enum { cudaFuncAttributeMaxDynamicSharedMemorySize = 8 } cudaFuncAttribute;
struct cudaDeviceProp {
    char name[256];
    int major, minor, multiProcessorCount, l2CacheSize;
    size_t totalGlobalMem, sharedMemPerBlockOptin;
};
typedef double* cudaEvent_t;

// ----------------------------------------------------------------------------
// fibers: the threads of one block

struct EmuThread {
    ucontext_t ctx;
    dim3 tid;
    int lin;   // linear thread index in the block
    int done;  // returned from the kernel
    int wait;  // 0 running, 1 at __syncthreads, 2 at a warp barrier
};
static EmuThread* emu_cur;  // the fiber running now
static dim3 emu_blockIdx, emu_blockDim, emu_gridDim;
#define threadIdx (emu_cur->tid)
#define blockIdx emu_blockIdx
#define blockDim emu_blockDim
#define gridDim emu_gridDim
static std::vector<EmuThread> emu_threads;
static std::vector<std::vector<char>> emu_stacks;
static ucontext_t emu_main_ctx;
static std::function<void()> emu_body;
static std::vector<char> emu_smem;  // dynamic shared memory of the current launch
static long emu_launches = 0;

static void* emu_dynamic_smem() { return (void*)(((uintptr_t)emu_smem.data() + 15) & ~(uintptr_t)15); }

static void emu_entry() {
    emu_body();
    emu_cur->done = 1;
    swapcontext(&emu_cur->ctx, &emu_main_ctx);
}

static void emu_wait(int kind) {
    emu_cur->wait = kind;
    swapcontext(&emu_cur->ctx, &emu_main_ctx);
}

static void __syncthreads() { emu_wait(1); }

// opens the barriers every live waiter has reached; returns 0 when none can open
static int emu_release(int n) {
    int released = 0, alive = 0, at_block = 0;
    for (int w = 0; w * 32 < n; w++) {
        int live = 0, waiting = 0;
        for (int t = w * 32; t < n && t < w * 32 + 32; t++) {
            if (!emu_threads[t].done) { live++; waiting += emu_threads[t].wait == 2; }
        }
        if (live > 0 && waiting == live) {
            for (int t = w * 32; t < n && t < w * 32 + 32; t++) emu_threads[t].wait = 0;
            released = 1;
        }
    }
    for (auto& th : emu_threads) {
        if (!th.done) { alive++; at_block += th.wait == 1; }
    }
    if (!released && alive > 0 && at_block == alive) {
        for (auto& th : emu_threads) th.wait = 0;
        released = 1;
    }
    return released;
}

// kernel<<<grid, block, smem>>>(args) becomes emu_launch(grid, block, smem, [&]() { kernel(args); })
template <class F>
static void emu_launch(dim3 grid, dim3 block, size_t smem, F body) {
    emu_launches++;
    emu_gridDim = grid;
    emu_blockDim = block;
    int n = (int)(block.x * block.y * block.z);
    if (n < 1 || n > 1024) { fprintf(stderr, "emu: launch %ld: block of %d threads\n", emu_launches, n); abort(); }
    emu_threads.resize(n);
    if ((int)emu_stacks.size() < n) emu_stacks.resize(n);
    for (auto& s : emu_stacks) {
        if (s.empty()) s.resize(256 * 1024);
    }
    emu_body = body;
    emu_smem.assign(smem + 16, 0x7f);
    for (unsigned bz = 0; bz < grid.z; bz++) {
        for (unsigned by = 0; by < grid.y; by++) {
            for (unsigned bx = 0; bx < grid.x; bx++) {
                emu_blockIdx = dim3(bx, by, bz);
                for (int t = 0; t < n; t++) {
                    EmuThread& th = emu_threads[t];
                    th.tid = dim3(t % block.x, t / block.x % block.y, t / (block.x * block.y));
                    th.lin = t;
                    th.done = 0;
                    th.wait = 0;
                    getcontext(&th.ctx);
                    th.ctx.uc_stack.ss_sp = emu_stacks[t].data();
                    th.ctx.uc_stack.ss_size = emu_stacks[t].size();
                    th.ctx.uc_link = NULL;
                    makecontext(&th.ctx, emu_entry, 0);
                }
                for (;;) {
                    for (auto& th : emu_threads) {
                        if (!th.done && th.wait == 0) { emu_cur = &th; swapcontext(&emu_main_ctx, &th.ctx); }
                    }
                    int alive = 0;
                    for (auto& th : emu_threads) alive += !th.done;
                    if (alive == 0) break;
                    if (!emu_release(n)) {
                        fprintf(stderr, "emu: launch %ld, block (%u,%u,%u): threads wait at different barriers\n",
                                emu_launches, bx, by, bz);
                        abort();
                    }
                }
            }
        }
    }
}

// ----------------------------------------------------------------------------
// warp operations

static unsigned long long emu_slot[32][32];  // [warp][lane]

template <class T>
static T __shfl_xor_sync(unsigned, T v, int lane_mask) {
    int w = emu_cur->lin / 32, l = emu_cur->lin % 32;
    memcpy(&emu_slot[w][l], &v, sizeof(T));
    emu_wait(2);
    T r;
    memcpy(&r, &emu_slot[w][l ^ lane_mask], sizeof(T));
    emu_wait(2);
    return r;
}

static uint32_t emu_frag_a[32][32][4], emu_frag_b[32][32][2];

static float emu_bf16(uint32_t reg, int high) {
    uint32_t u = (high ? reg >> 16 : reg & 0xffffu) << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// d += A (16x16) B (16x8): each lane publishes its fragments, then rebuilds the warp's A and B from
// the PTX tables (element i of a fragment is half i % 2 of register i / 2, low half first):
//   A: row = g for a0, a1, a4, a5 and g + 8 otherwise; col = 2t + (i & 1), + 8 for i >= 4
//   B: row = 2t + (i & 1), + 8 for i >= 2; col = g
//   C: row = g for c0, c1 and g + 8 for c2, c3; col = 2t + (i & 1)
// with g = lane / 4, t = lane % 4
static void emu_mma_bf16_16816(float* c, const uint32_t* a, const uint32_t* b) {
    int w = emu_cur->lin / 32, l = emu_cur->lin % 32;
    memcpy(emu_frag_a[w][l], a, sizeof(emu_frag_a[w][l]));
    memcpy(emu_frag_b[w][l], b, sizeof(emu_frag_b[w][l]));
    emu_wait(2);
    float A[16][16], B[16][8];
    for (int L = 0; L < 32; L++) {
        int g = L / 4, t = L % 4;
        for (int i = 0; i < 8; i++) {
            int row = (i < 2 || (i >= 4 && i < 6)) ? g : g + 8;
            A[row][2 * t + (i & 1) + (i >= 4 ? 8 : 0)] = emu_bf16(emu_frag_a[w][L][i / 2], i % 2);
        }
        for (int i = 0; i < 4; i++) B[2 * t + (i & 1) + (i >= 2 ? 8 : 0)][g] = emu_bf16(emu_frag_b[w][L][i / 2], i % 2);
    }
    int g = l / 4, t = l % 4;
    for (int i = 0; i < 4; i++) {
        int row = g + (i >= 2 ? 8 : 0), col = 2 * t + (i & 1);
        float s = 0.0f;
        for (int k = 0; k < 16; k++) s += A[row][k] * B[k][col];
        c[i] += s;
    }
    emu_wait(2);
}

// fibers never overlap, so an atomic is a plain read-modify-write
static double atomicAdd(double* p, double v) { double o = *p; *p += v; return o; }
static float atomicAdd(float* p, float v) { float o = *p; *p += v; return o; }

// ----------------------------------------------------------------------------
// the runtime API the labs and ldmc/ call

static const char* cudaGetErrorString(cudaError_t) { return "emulated error"; }
static cudaError_t cudaGetLastError() { return cudaSuccess; }
static cudaError_t cudaGetDeviceCount(int* count) { *count = 1; return cudaSuccess; }
static cudaError_t cudaSetDevice(int) { return cudaSuccess; }
static cudaError_t cudaGetDeviceProperties(cudaDeviceProp* p, int) {
    memset(p, 0, sizeof(*p));
    strcpy(p->name, "the CPU emulator (dev/cuda/emu)");
    p->major = 9;
    p->multiProcessorCount = 2;
    p->l2CacheSize = 1 << 16;
    p->totalGlobalMem = 1ull << 34;
    p->sharedMemPerBlockOptin = 227 * 1024;
    return cudaSuccess;
}
static cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }
template <class T>
static cudaError_t cudaMalloc(T** p, size_t bytes) {
    size_t padded = (bytes + 255) / 256 * 256;
    *p = (T*)aligned_alloc(256, padded + 256);
    if (*p == NULL) return cudaErrorMemoryAllocation;
    memset((void*)*p, 0x7f, padded);
    return cudaSuccess;
}
static cudaError_t cudaFree(void* p) { free(p); return cudaSuccess; }
static cudaError_t cudaMemcpy(void* dst, const void* src, size_t n, cudaMemcpyKind) { memmove(dst, src, n); return cudaSuccess; }
static cudaError_t cudaMemset(void* dst, int v, size_t n) { memset(dst, v, n); return cudaSuccess; }
static cudaError_t cudaMemsetAsync(void* dst, int v, size_t n) { memset(dst, v, n); return cudaSuccess; }
static cudaError_t cudaFuncSetAttribute(const void*, cudaFuncAttribute, int) { return cudaSuccess; }
static double emu_now() { return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count(); }
static cudaError_t cudaEventCreate(cudaEvent_t* e) { *e = new double(0.0); return cudaSuccess; }
static cudaError_t cudaEventDestroy(cudaEvent_t e) { delete e; return cudaSuccess; }
static cudaError_t cudaEventRecord(cudaEvent_t e, int = 0) { *e = emu_now(); return cudaSuccess; }
static cudaError_t cudaEventSynchronize(cudaEvent_t) { return cudaSuccess; }
static cudaError_t cudaEventElapsedTime(float* ms, cudaEvent_t a, cudaEvent_t b) { *ms = (float)((*b - *a) * 1e3); return cudaSuccess; }
