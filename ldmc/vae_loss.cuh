// ldmc/vae_loss.cuh — the VAE's reparameterisation and loss terms:
//   vae_reparam_forward      z = mu + exp(logvar / 2) * eps, from the encoder's moments (mu, logvar)
//   vae_kl_forward           KL(N(mu, exp(logvar)) || N(0, 1)), summed over the latent, averaged over the batch
//   vae_reparam_kl_backward  d/dmoments of [sum(z * dz) + kl_weight * KL]
//   mse_forward / mse_backward   mean squared error (the reconstruction term)
// moments (B, 2Z, HW) is the encoder's conv_out: channels [0, Z) are mu, [Z, 2Z) logvar. logvar is
// clamped to [-30, 20] before any use, with torch.clamp's gradient: passed through where
// -30 <= logvar <= 20, zero outside.
// Each has a plain reference (*_ref, loops in index order), a CUDA version (*_cuda) and a dispatcher;
// the CPU path is the reference, except for the two sums, which run in parallel (*_cpu).
// Losses come back to the host as a float, from deterministic reductions (double on the CPU,
// two-stage block reductions on CUDA).
#pragma once

#include "common.cuh"
#include "elementwise.cuh"

#define VAE_LOGVAR_MIN (-30.0f)
#define VAE_LOGVAR_MAX 20.0f

// ----------------------------------------------------------------------------
// per-element math, shared by the CPU loops and the CUDA kernels
// Latent element i of z (B, Z, HW) has mu at moments[b, zc, hw] and logvar at moments[b, Z + zc, hw].

__host__ __device__ static inline size_t vae_mu_index(size_t i, int Z, int HW) {
    size_t b = i / ((size_t)Z * HW), rest = i % ((size_t)Z * HW);
    return b * 2 * Z * HW + rest;
}

__host__ __device__ static inline float vae_clamp_logvar(float lv) {
    return fminf(fmaxf(lv, VAE_LOGVAR_MIN), VAE_LOGVAR_MAX);
}

__host__ __device__ static inline float vae_reparam_value(const float* moments, const float* eps, size_t i, int Z, int HW) {
    size_t mi = vae_mu_index(i, Z, HW);
    float mu = moments[mi], lv = vae_clamp_logvar(moments[mi + (size_t)Z * HW]);
    return mu + expf(0.5f * lv) * eps[i];
}

// mu^2 + exp(logvar) - 1 - logvar: twice the KL of latent element i
__host__ __device__ static inline float vae_kl_term(const float* moments, size_t i, int Z, int HW) {
    size_t mi = vae_mu_index(i, Z, HW);
    float mu = moments[mi], lv = vae_clamp_logvar(moments[mi + (size_t)Z * HW]);
    return mu * mu + expf(lv) - 1.0f - lv;
}

// gradients of latent element i: with KL = 0.5 * sum(...) / B,
//   dmu     = dz + kl_weight * mu / B
//   dlogvar = dz * eps * exp(logvar / 2) / 2 + kl_weight * (exp(logvar) - 1) / (2B), zero where clamped
__host__ __device__ static inline void vae_reparam_kl_grad(float* dmoments, const float* dz, const float* moments,
                                                           const float* eps, float kl_weight, int B, size_t i,
                                                           int Z, int HW) {
    size_t mi = vae_mu_index(i, Z, HW), li = mi + (size_t)Z * HW;
    float mu = moments[mi], lv = moments[li];
    dmoments[mi] = dz[i] + kl_weight * mu / B;
    int in_range = lv >= VAE_LOGVAR_MIN && lv <= VAE_LOGVAR_MAX;
    dmoments[li] = in_range ? dz[i] * eps[i] * 0.5f * expf(0.5f * lv) + kl_weight * 0.5f * (expf(lv) - 1.0f) / B
                            : 0.0f;
}

// ----------------------------------------------------------------------------
// reference: one loop over the elements each, the sums in double and in index order. The
// elementwise ones (reparam, the backward passes) are also the CPU path: one read and one write
// per element, nothing for a faster version to gain.

static inline void vae_reparam_forward_ref(float* z, const float* moments, const float* eps, int B, int Z, int HW) {
    // z, eps (B, Z, HW); moments (B, 2Z, HW)
    size_t n = (size_t)B * Z * HW;
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) z[i] = vae_reparam_value(moments, eps, i, Z, HW);
}

// KL = 0.5 / B * sum over the B*Z*HW latent elements of (mu^2 + exp(logvar) - 1 - logvar)
static inline float vae_kl_forward_ref(const float* moments, int B, int Z, int HW) {
    // moments (B, 2Z, HW)
    double sum = 0.0;
    for (size_t i = 0; i < (size_t)B * Z * HW; i++) sum += vae_kl_term(moments, i, Z, HW);
    return (float)(0.5 * sum / B);
}

static inline void vae_reparam_kl_backward_ref(float* dmoments, const float* dz, const float* moments, const float* eps,
                                        float kl_weight, int B, int Z, int HW) {
    // dmoments, moments (B, 2Z, HW); dz, eps (B, Z, HW)
    size_t n = (size_t)B * Z * HW;
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) vae_reparam_kl_grad(dmoments, dz, moments, eps, kl_weight, B, i, Z, HW);
}

// mse = mean over the n elements of (pred - target)^2
static inline float mse_forward_ref(const float* pred, const float* target, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) { double d = (double)pred[i] - target[i]; sum += d * d; }
    return (float)(sum / n);
}

// dpred = 2 (pred - target) / n
static inline void mse_backward_ref(float* dpred, const float* pred, const float* target, size_t n) {
    float scale = 2.0f / n;
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) dpred[i] = scale * (pred[i] - target[i]);
}

// ----------------------------------------------------------------------------
// CPU: the two sums in parallel, through reduce_sum_cpu (64 fixed chunks: the same bits for any
// thread count)

// the sums' terms, one per index, summed by reduce_sum_cpu / reduce_sum_cuda
struct VaeKlTerm {
    const float* moments;
    int Z, HW;
    __host__ __device__ float operator()(size_t i) const { return vae_kl_term(moments, i, Z, HW); }
};
struct SquaredDiffTerm {
    const float* a;
    const float* b;
    __host__ __device__ float operator()(size_t i) const { float d = a[i] - b[i]; return d * d; }
};

static inline float vae_kl_forward_cpu(const float* moments, int B, int Z, int HW) {
    return (float)(0.5 * reduce_sum_cpu((size_t)B * Z * HW, VaeKlTerm{moments, Z, HW}) / B);
}

static inline float mse_forward_cpu(const float* pred, const float* target, size_t n) {
    return (float)(reduce_sum_cpu(n, SquaredDiffTerm{pred, target}) / n);
}

// ----------------------------------------------------------------------------
// CUDA: one thread per latent element (grid-stride); the sums go through reduce_sum_cuda

__global__ static void vae_reparam_forward_kernel(float* z, const float* moments, const float* eps, size_t n, int Z, int HW) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        z[i] = vae_reparam_value(moments, eps, i, Z, HW);
    }
}

__global__ static void vae_reparam_kl_backward_kernel(float* dmoments, const float* dz, const float* moments,
                                                      const float* eps, float kl_weight, int B, size_t n, int Z, int HW) {
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        vae_reparam_kl_grad(dmoments, dz, moments, eps, kl_weight, B, i, Z, HW);
    }
}

struct ScaledDiffOp {
    float scale;
    __device__ float operator()(float a, float b) const { return scale * (a - b); }
};

static inline void vae_reparam_forward_cuda(float* z, const float* moments, const float* eps, int B, int Z, int HW) {
    const int block = 256;
    size_t n = (size_t)B * Z * HW;
    vae_reparam_forward_kernel<<<grid_for(n, block), block>>>(z, moments, eps, n, Z, HW);
    cudaCheck(cudaGetLastError());
}

static inline float vae_kl_forward_cuda(const float* moments, int B, int Z, int HW) {
    return 0.5f * reduce_sum_cuda((size_t)B * Z * HW, VaeKlTerm{moments, Z, HW}) / B;
}

static inline void vae_reparam_kl_backward_cuda(float* dmoments, const float* dz, const float* moments, const float* eps,
                                         float kl_weight, int B, int Z, int HW) {
    const int block = 256;
    size_t n = (size_t)B * Z * HW;
    vae_reparam_kl_backward_kernel<<<grid_for(n, block), block>>>(dmoments, dz, moments, eps, kl_weight, B, n, Z, HW);
    cudaCheck(cudaGetLastError());
}

static inline float mse_forward_cuda(const float* pred, const float* target, size_t n) {
    return reduce_sum_cuda(n, SquaredDiffTerm{pred, target}) / n;
}

static inline void mse_backward_cuda(float* dpred, const float* pred, const float* target, size_t n) {
    map2_cuda(dpred, pred, target, n, ScaledDiffOp{2.0f / n});
}

// ----------------------------------------------------------------------------
// dispatchers

static inline void vae_reparam_forward(float* z, const float* moments, const float* eps, int B, int Z, int HW) {
    if (g_device == DEVICE_CUDA) {
        vae_reparam_forward_cuda(z, moments, eps, B, Z, HW);
    } else {
        vae_reparam_forward_ref(z, moments, eps, B, Z, HW);
    }
}

static inline float vae_kl_forward(const float* moments, int B, int Z, int HW) {
    return g_device == DEVICE_CUDA ? vae_kl_forward_cuda(moments, B, Z, HW) : vae_kl_forward_cpu(moments, B, Z, HW);
}

static inline void vae_reparam_kl_backward(float* dmoments, const float* dz, const float* moments, const float* eps,
                                    float kl_weight, int B, int Z, int HW) {
    if (g_device == DEVICE_CUDA) {
        vae_reparam_kl_backward_cuda(dmoments, dz, moments, eps, kl_weight, B, Z, HW);
    } else {
        vae_reparam_kl_backward_ref(dmoments, dz, moments, eps, kl_weight, B, Z, HW);
    }
}

static inline float mse_forward(const float* pred, const float* target, size_t n) {
    return g_device == DEVICE_CUDA ? mse_forward_cuda(pred, target, n) : mse_forward_cpu(pred, target, n);
}

static inline void mse_backward(float* dpred, const float* pred, const float* target, size_t n) {
    if (g_device == DEVICE_CUDA) {
        mse_backward_cuda(dpred, pred, target, n);
    } else {
        mse_backward_ref(dpred, pred, target, n);
    }
}
