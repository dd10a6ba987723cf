// ldmc/adamw.cuh — the optimizer step (SPEC §6), over the flat parameter buffer:
//   grad_norm      global L2 norm of the gradients, returned to the host
//   clip_scale     the gradient scale of torch.nn.utils.clip_grad_norm_ for that norm
//   ema_decay_at   the warmed-up EMA decay for optimizer step n: min(decay, (1 + n) / (10 + n))
//   adamw_update   clipping, AdamW (PyTorch semantics) and the EMA update, fused in one pass
// A training step is: norm = grad_norm(grads); s = clip_scale(norm, 1.0); adamw_update(..., s, t, d).
// grad_norm_ref and adamw_update_ref are the plain loops (the oracle of the tests); adamw_update_ref is
// also the CPU path, grad_norm_cpu sums in parallel; then the CUDA kernel; then the dispatchers.
#pragma once

#include "common.cuh"
#include "elementwise.cuh"

// ----------------------------------------------------------------------------
// host-side helpers

// clip_grad_norm_: grads are multiplied by max_norm / (norm + 1e-6) when that is below 1
static inline float clip_scale(float norm, float max_norm) {
    float s = max_norm / (norm + 1e-6f);
    return s < 1.0f ? s : 1.0f;
}

static inline float ema_decay_at(float decay, long step) {
    float warm = (float)(1.0 + step) / (float)(10.0 + step);
    return warm < decay ? warm : decay;
}

// ----------------------------------------------------------------------------
// the update of one parameter, shared by the CPU loop and the CUDA kernel. It follows the order of
// operations of torch.optim.AdamW (single-tensor path), so float32 results match PyTorch's:
//   g = grad * grad_scale                              (clip_grad_norm_ scales the gradient in place)
//   p = p * (1 - lr * wd)                              (decoupled weight decay)
//   m = beta1 m + (1 - beta1) g,  v = beta2 v + (1 - beta2) g^2
//   p = p - step_size * m / (sqrt(v) / sqrt(1 - beta2^t) + eps),  step_size = lr / (1 - beta1^t)
//   ema = d ema + (1 - d) p                            (after the step, SPEC §6)
// The per-step scalars (1 - beta, decay factor, step size, bias corrections) are computed once on
// the host in double, as PyTorch does in Python.

typedef struct {
    float beta1, beta2, eps;
    float one_minus_beta1, one_minus_beta2;
    float decay_factor;   // 1 - lr * weight_decay
    float step_size;      // lr / (1 - beta1^t)
    float bc2_sqrt;       // sqrt(1 - beta2^t)
    float grad_scale;     // the clip factor
    float ema_decay;      // d for this step
} AdamWStep;

static inline AdamWStep adamw_step_constants(float lr, float beta1, float beta2, float eps, float weight_decay,
                                      float grad_scale, int t, float ema_decay) {
    AdamWStep s;
    s.beta1 = beta1;
    s.beta2 = beta2;
    s.eps = eps;
    s.one_minus_beta1 = (float)(1.0 - (double)beta1);
    s.one_minus_beta2 = (float)(1.0 - (double)beta2);
    s.decay_factor = (float)(1.0 - (double)lr * weight_decay);
    s.step_size = (float)(lr / (1.0 - pow((double)beta1, t)));
    s.bc2_sqrt = (float)sqrt(1.0 - pow((double)beta2, t));
    s.grad_scale = grad_scale;
    s.ema_decay = ema_decay;
    return s;
}

__host__ __device__ static inline void adamw_element(float* p, float* m, float* v, float* ema, float grad,
                                                     const AdamWStep s) {
    float g = grad * s.grad_scale;
    float pi = *p * s.decay_factor;
    float mi = *m * s.beta1 + s.one_minus_beta1 * g;
    float vi = *v * s.beta2 + s.one_minus_beta2 * g * g;
    pi -= s.step_size * (mi / (sqrtf(vi) / s.bc2_sqrt + s.eps));
    *p = pi;
    *m = mi;
    *v = vi;
    if (ema != NULL) *ema = s.ema_decay * *ema + (1.0f - s.ema_decay) * pi;
}

// ----------------------------------------------------------------------------
// reference: one loop over the parameters each; grad_norm's sum in double, in index order.
// adamw_update_ref is also the CPU path (pure memory traffic: nothing for a faster version to gain).

// sqrt(sum over the n gradients of grad^2)
static inline float grad_norm_ref(const float* grads, size_t n) {
    double sum = 0.0;
    for (size_t i = 0; i < n; i++) sum += (double)grads[i] * grads[i];
    return (float)sqrt(sum);
}

static inline void adamw_update_ref(float* params, const float* grads, float* m, float* v, float* ema, size_t n,
                             const AdamWStep s) {
    // params, grads, m, v, ema (n); ema may be NULL (no EMA)
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) adamw_element(params + i, m + i, v + i, ema ? ema + i : NULL, grads[i], s);
}

// ----------------------------------------------------------------------------
// CPU: grad_norm's sum in parallel, through reduce_sum_cpu (64 fixed chunks: the same bits for any
// thread count)

struct SquareTerm {
    const float* a;
    __host__ __device__ float operator()(size_t i) const { return a[i] * a[i]; }
};

static inline float grad_norm_cpu(const float* grads, size_t n) {
    return (float)sqrt(reduce_sum_cpu(n, SquareTerm{grads}));
}

// ----------------------------------------------------------------------------
// CUDA: one fused pass reads grads, params, m, v (and ema) once and writes each state once — the
// optimizer step is pure memory traffic, so fusing clipping, AdamW and the EMA into a single kernel
// is what makes it fast. float4 accesses when every buffer is 16-byte aligned and n % 4 == 0.
// `ema` is NULL or not for the whole launch, so the branch on it never diverges.

template <int V>
__global__ static void adamw_kernel(float* params, const float* grads, float* m, float* v, float* ema, size_t n,
                                    const AdamWStep s) {
    size_t stride = (size_t)gridDim.x * blockDim.x * V;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
        float rp[V], rg[V], rm[V], rv[V], re[V];
        load_vec<V>(rp, params + i);
        load_vec<V>(rg, grads + i);
        load_vec<V>(rm, m + i);
        load_vec<V>(rv, v + i);
        if (ema != NULL) load_vec<V>(re, ema + i);
        for (int k = 0; k < V; k++) adamw_element(rp + k, rm + k, rv + k, ema != NULL ? re + k : NULL, rg[k], s);
        store_vec<V>(params + i, rp);
        store_vec<V>(m + i, rm);
        store_vec<V>(v + i, rv);
        if (ema != NULL) store_vec<V>(ema + i, re);
    }
}

static inline void adamw_update_cuda(float* params, const float* grads, float* m, float* v, float* ema, size_t n,
                              const AdamWStep s) {
    if (n == 0) return;
    const int block = 256;
    int aligned = is_aligned16(params) && is_aligned16(grads) && is_aligned16(m) && is_aligned16(v) &&
                  (ema == NULL || is_aligned16(ema));
    if (n % 4 == 0 && aligned) {
        adamw_kernel<4><<<grid_for(n / 4, block), block>>>(params, grads, m, v, ema, n, s);
    } else {
        adamw_kernel<1><<<grid_for(n, block), block>>>(params, grads, m, v, ema, n, s);
    }
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// dispatchers

static inline float grad_norm(const float* grads, size_t n) {
    if (g_device == DEVICE_CUDA) return sqrtf(reduce_sum_cuda(n, SquareTerm{grads}));
    return grad_norm_cpu(grads, n);
}

static inline void adamw_update(float* params, const float* grads, float* m, float* v, float* ema, size_t n, float lr,
                         float beta1, float beta2, float eps, float weight_decay, float grad_scale, int t,
                         float ema_decay) {
    if (t < 1) {
        fprintf(stderr, "Error: adamw_update needs the 1-based step count t >= 1 for bias correction (got %d).\n", t);
        exit(EXIT_FAILURE);
    }
    AdamWStep s = adamw_step_constants(lr, beta1, beta2, eps, weight_decay, grad_scale, t, ema_decay);
    if (g_device == DEVICE_CUDA) {
        adamw_update_cuda(params, grads, m, v, ema, n, s);
    } else {
        adamw_update_ref(params, grads, m, v, ema, n, s);
    }
}
