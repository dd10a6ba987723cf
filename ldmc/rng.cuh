// ldmc/rng.cuh — a counter-based random number generator that gives the same numbers on the CPU
// and on the GPU. Each number is a pure function of (seed, counter): there is no sequential state,
// so a CUDA thread computes element i directly, a resumed run only needs the counter it stopped at,
// and the CPU reference and the kernels draw identical noise.
//   rng_u64(seed, i)      64 random bits     (splitmix64 finaliser of seed and counter)
//   rng_uniform(seed, i)  float in [0, 1)    (top 24 bits)
//   rng_normal(seed, i)   float ~ N(0, 1)    (Box-Muller in double precision, then rounded)
//   rng_fill_normal / rng_fill_uniform: fill a buffer on the current device.
// No fast-math here: the normal transform is done in double so host libm and CUDA's libdevice
// agree after rounding to float.
#pragma once

#include "common.cuh"

// ----------------------------------------------------------------------------
// the generator

__host__ __device__ static inline uint64_t rng_mix64(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// two rounds of mixing so nearby seeds and nearby counters give unrelated streams
__host__ __device__ static inline uint64_t rng_u64(uint64_t seed, uint64_t counter) {
    return rng_mix64(rng_mix64(seed * 0x9E3779B97F4A7C15ULL + 0x632BE59BD9B4E019ULL) ^
                     (counter * 0xD1B54A32D192ED03ULL + 0x9E3779B97F4A7C15ULL));
}

__host__ __device__ static inline float rng_uniform(uint64_t seed, uint64_t counter) {
    return (float)(rng_u64(seed, counter) >> 40) * (1.0f / 16777216.0f);
}

// Box-Muller: element i uses the 64 random bits of counter i split into two 32-bit uniforms
__host__ __device__ static inline float rng_normal(uint64_t seed, uint64_t counter) {
    uint64_t bits = rng_u64(seed ^ 0x5DEECE66DULL, counter);
    double u1 = ((double)(bits >> 32) + 1.0) * (1.0 / 4294967296.0);   // (0, 1]
    double u2 = (double)(bits & 0xFFFFFFFFULL) * (1.0 / 4294967296.0);  // [0, 1)
    return (float)(sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
}

// ----------------------------------------------------------------------------
// filling buffers: out[i] = rng_*(seed, offset + i)

static inline void rng_fill_normal_cpu(float* out, size_t n, uint64_t seed, uint64_t offset) {
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) out[i] = rng_normal(seed, offset + i);
}

static inline void rng_fill_uniform_cpu(float* out, size_t n, uint64_t seed, uint64_t offset) {
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) out[i] = rng_uniform(seed, offset + i);
}

__global__ static void rng_fill_kernel(float* out, size_t n, uint64_t seed, uint64_t offset, int normal) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) out[i] = normal ? rng_normal(seed, offset + i) : rng_uniform(seed, offset + i);
}

static inline void rng_fill_normal(float* out, size_t n, uint64_t seed, uint64_t offset) {
    if (g_device == DEVICE_CUDA) {
        rng_fill_kernel<<<(unsigned)((n + 255) / 256), 256>>>(out, n, seed, offset, 1);
        cudaCheck(cudaGetLastError());
    } else {
        rng_fill_normal_cpu(out, n, seed, offset);
    }
}

static inline void rng_fill_uniform(float* out, size_t n, uint64_t seed, uint64_t offset) {
    if (g_device == DEVICE_CUDA) {
        rng_fill_kernel<<<(unsigned)((n + 255) / 256), 256>>>(out, n, seed, offset, 0);
        cudaCheck(cudaGetLastError());
    } else {
        rng_fill_uniform_cpu(out, n, seed, offset);
    }
}
