// ldmc/elementwise.cuh — the parameter-free elementwise layers of the VAE and U-Net:
//   silu         out = x * sigmoid(x) (and exp_cpu, a vectorisable exp for the CPU loops)
//   add          out = a + b, and a += b (residual connections and their gradients)
//   scale        a *= s
//   upsample2x   nearest-neighbour x2 (each value copied to a 2x2 block); backward sums the block
// and the CUDA building blocks the other memory-bound modules (groupnorm, vae_loss, adamw) share:
//   load_vec / store_vec      float4 or scalar loads and stores, chosen at compile time
//   map1_cuda / map2_cuda     launch an elementwise functor, vectorised when the pointers allow it
//   reduce_sum_cpu / reduce_sum_cuda    deterministic sums of a per-index term (any thread count, no atomics)
//   lanes_sum_cpu                       a serial sum the compiler vectorises (the fast CPU paths')
//   reduce_warp_sum / reduce_block_sum  the warp and block reductions under them
// Each layer has a plain reference (*_ref: one loop over the elements, the math of the layer), a
// CUDA launcher (*_cuda) and a dispatcher that follows g_device. The reference is also the CPU
// path where the loop is already as fast as the memory allows (one read and one write per
// element); SiLU has its own (silu_*_cpu, exp_cpu), since libm's expf keeps its loop from being
// vectorised. In backward, gradients of inputs are overwritten.
#pragma once

#include "common.cuh"

// ----------------------------------------------------------------------------
// CUDA building blocks

// float4 loads and stores move 16 bytes per instruction instead of 4, so a memory-bound kernel
// issues a quarter of the load/store instructions. They need 16-byte aligned addresses: launchers
// use V = 4 only when every pointer is aligned and the length is a multiple of 4, else V = 1.
template <int V>
__device__ static inline void load_vec(float* r, const float* p) {
    if constexpr (V == 4) {
        float4 t = *reinterpret_cast<const float4*>(p);
        r[0] = t.x; r[1] = t.y; r[2] = t.z; r[3] = t.w;
    } else {
        r[0] = *p;
    }
}

template <int V>
__device__ static inline void store_vec(float* p, const float* r) {
    if constexpr (V == 4) {
        *reinterpret_cast<float4*>(p) = make_float4(r[0], r[1], r[2], r[3]);
    } else {
        *p = r[0];
    }
}

static inline int is_aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// grid for a grid-stride loop over `items` work items: enough blocks to fill any GPU, capped so the
// count stays a valid grid dimension for the largest tensors
static inline unsigned grid_for(size_t items, int block) {
    size_t blocks = (items + block - 1) / block;
    const size_t max_blocks = 1 << 16;
    return (unsigned)(blocks < 1 ? 1 : (blocks > max_blocks ? max_blocks : blocks));
}

// out[i] = op(a[i]); out may alias a
template <int V, class Op>
__global__ static void map1_kernel(float* out, const float* a, size_t n, Op op) {
    size_t stride = (size_t)gridDim.x * blockDim.x * V;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
        float ra[V], ro[V];
        load_vec<V>(ra, a + i);
        for (int k = 0; k < V; k++) ro[k] = op(ra[k]);
        store_vec<V>(out + i, ro);
    }
}

// out[i] = op(a[i], b[i]); out may alias a or b (each element is read before it is written, by the same thread)
template <int V, class Op>
__global__ static void map2_kernel(float* out, const float* a, const float* b, size_t n, Op op) {
    size_t stride = (size_t)gridDim.x * blockDim.x * V;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
        float ra[V], rb[V], ro[V];
        load_vec<V>(ra, a + i);
        load_vec<V>(rb, b + i);
        for (int k = 0; k < V; k++) ro[k] = op(ra[k], rb[k]);
        store_vec<V>(out + i, ro);
    }
}

template <class Op>
static inline void map1_cuda(float* out, const float* a, size_t n, Op op) {
    if (n == 0) return;
    const int block = 256;
    if (n % 4 == 0 && is_aligned16(out) && is_aligned16(a)) {
        map1_kernel<4><<<grid_for(n / 4, block), block>>>(out, a, n, op);
    } else {
        map1_kernel<1><<<grid_for(n, block), block>>>(out, a, n, op);
    }
    cudaCheck(cudaGetLastError());
}

template <class Op>
static inline void map2_cuda(float* out, const float* a, const float* b, size_t n, Op op) {
    if (n == 0) return;
    const int block = 256;
    if (n % 4 == 0 && is_aligned16(out) && is_aligned16(a) && is_aligned16(b)) {
        map2_kernel<4><<<grid_for(n / 4, block), block>>>(out, a, b, n, op);
    } else {
        map2_kernel<1><<<grid_for(n, block), block>>>(out, a, b, n, op);
    }
    cudaCheck(cudaGetLastError());
}

// sum over the 32 lanes of a warp by butterfly shuffles; every lane gets the total
template <class T>
__device__ static inline T reduce_warp_sum(T v) {
    for (int offset = 16; offset > 0; offset >>= 1) v += __shfl_xor_sync(0xffffffffu, v, offset);
    return v;
}

// sum over the block (blockDim.x a multiple of 32, at most 1024); every thread gets the total.
// Fixed shuffle order, so the result is the same bits on every run.
template <class T>
__device__ static inline T reduce_block_sum(T v) {
    __shared__ T warp_sums[32];
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    v = reduce_warp_sum(v);
    __syncthreads();  // a previous call's readers may still be reading warp_sums
    if (lane == 0) warp_sums[warp] = v;
    __syncthreads();
    v = lane < nwarps ? warp_sums[lane] : (T)0;
    return reduce_warp_sum(v);
}

// Two-stage deterministic sum of term(i) over i in [0, n), returned to the host.
// Stage 1: a fixed grid (a function of n only) of grid-stride threads, each summing its terms in
// float, then a block reduction writes one partial per block. Stage 2: one block sums the partials
// in double. No atomics, so the rounding, and the result, is identical from run to run.
// The partials live in a small buffer allocated on first use and kept for the life of the process.
static const int REDUCE_MAX_BLOCKS = 1024;
static float* g_reduce_scratch = NULL;  // (REDUCE_MAX_BLOCKS partials, 1 result)

template <class Term>
__global__ static void reduce_partial_kernel(float* partial, size_t n, Term term) {
    float acc = 0.0f;
    size_t stride = (size_t)gridDim.x * blockDim.x;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) acc += term(i);
    acc = reduce_block_sum(acc);
    if (threadIdx.x == 0) partial[blockIdx.x] = acc;
}

__global__ static void reduce_final_kernel(float* result, const float* partial, int count) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
    acc = reduce_block_sum(acc);
    if (threadIdx.x == 0) *result = (float)acc;
}

template <class Term>
static inline float reduce_sum_cuda(size_t n, Term term) {
    if (g_reduce_scratch == NULL) {
        cudaCheck(cudaMalloc(&g_reduce_scratch, (REDUCE_MAX_BLOCKS + 1) * sizeof(float)));
    }
    const int block = 256;
    size_t blocks = (n + block - 1) / block;
    int grid = (int)(blocks < 1 ? 1 : (blocks > (size_t)REDUCE_MAX_BLOCKS ? REDUCE_MAX_BLOCKS : blocks));
    reduce_partial_kernel<<<grid, block>>>(g_reduce_scratch, n, term);
    cudaCheck(cudaGetLastError());
    reduce_final_kernel<<<1, 1024>>>(g_reduce_scratch + REDUCE_MAX_BLOCKS, g_reduce_scratch, grid);
    cudaCheck(cudaGetLastError());
    float result;
    cudaCheck(cudaMemcpy(&result, g_reduce_scratch + REDUCE_MAX_BLOCKS, sizeof(float), cudaMemcpyDeviceToHost));
    return result;
}

// The CPU counterpart: term(i) summed in double over a fixed number of chunks (not one per thread),
// the chunk sums then added in order, so the result does not depend on OMP_NUM_THREADS.
template <class Term>
static inline double reduce_sum_cpu(size_t n, Term term) {
    const int chunks = 64;
    double partial[chunks];
    #pragma omp parallel for
    for (int c = 0; c < chunks; c++) {
        double s = 0.0;
        for (size_t i = n * c / chunks; i < n * (c + 1) / chunks; i++) s += term(i);
        partial[c] = s;
    }
    double total = 0.0;
    for (int c = 0; c < chunks; c++) total += partial[c];
    return total;
}

// A serial sum of term(i), i < n, for the fast CPU paths: CPU_LANES float accumulators, lane l
// taking the i = l mod CPU_LANES, then added up in double. A single accumulator (and any double
// one) is a chain of dependent adds the compiler may not reorder; the lane loop becomes one vector
// add per CPU_LANES terms. The order is fixed, so the result is the same on every run.
#define CPU_LANES 16
template <class Term>
static inline double lanes_sum_cpu(size_t n, Term term) {
    float lane[CPU_LANES] = {0.0f};
    size_t i = 0;
    for (; i + CPU_LANES <= n; i += CPU_LANES) {
        for (int l = 0; l < CPU_LANES; l++) lane[l] += term(i + l);
    }
    double total = 0.0;
    for (; i < n; i++) total += term(i);
    for (int l = 0; l < CPU_LANES; l++) total += lane[l];
    return total;
}

// ----------------------------------------------------------------------------
// SiLU: out = x * sigmoid(x) = x / (1 + exp(-x)), the form PyTorch uses (no overflow: for x -> -inf
// exp(-x) = inf and the quotient is -0). Backward: with s = sigmoid(x),
// d/dx [x s] = s + x s (1 - s) = s (1 + x (1 - s)).
// out must not be x: the backward needs the layer's input.

__host__ __device__ static inline float silu_value(float x) { return x / (1.0f + expf(-x)); }

__host__ __device__ static inline float silu_grad_value(float dout, float x) {
    float s = 1.0f / (1.0f + expf(-x));
    return dout * s * (1.0f + x * (1.0f - s));
}

static inline void silu_forward_ref(float* out, const float* x, size_t n) {
    // out, x (n)
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) out[i] = silu_value(x[i]);
}

static inline void silu_backward_ref(float* dx, const float* dout, const float* x, size_t n) {
    // dx, dout, x (n); dx may be dout
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) dx[i] = silu_grad_value(dout[i], x[i]);
}

// ----------------------------------------------------------------------------
// fast CPU path of SiLU
// The reference calls libm's expf once per element: a function call the compiler cannot vectorise,
// so SiLU cost more than the whole GroupNorm. exp_cpu is the same function written as arithmetic
// the loops below vectorise (8 or 16 lanes), within 1.3 ulp of the exact exp:
//   exp(x) = 2^n * exp(r),  n = round(x / ln2),  r = x - n ln2 in [-ln2/2, ln2/2]
//   - n: adding 1.5 * 2^23 to x / ln2 rounds it to an integer (the float has no fraction bits left
//     at that size), which then also sits in the low bits of the sum's bit pattern;
//   - r: n ln2 is subtracted in two parts (ln2 split into a head with few significant bits, so
//     n * head is exact, and the small rest), keeping r accurate to float precision;
//   - exp(r): its Taylor series to r^7, Horner form; the first omitted term, r^8/8!, is below
//     5e-9 on this range, a tenth of a float ulp;
//   - 2^n: n + 127 shifted into the float's exponent field.
// The formula runs on x clamped to [-87, 88], where 2^n stays a normal float; outside it the result
// is 0 (below e^-87 = 1.6e-38 floats turn denormal) or inf (e^88.7 overflows), and NaN stays NaN,
// so x / (1 + exp(-x)) keeps the reference's limits: -0 for x -> -inf, x for x -> inf. (The compares
// vectorise, as blends, because the Makefile passes -fno-trapping-math.)

static inline float exp_cpu(float x) {
    float xc = x < -87.0f ? -87.0f : x;
    xc = xc > 88.0f ? 88.0f : xc;
    const float round_shift = 12582912.0f;  // 1.5 * 2^23
    union { float f; int32_t i; } t = {xc * 1.44269504088896341f + round_shift};
    float n = t.f - round_shift;
    int32_t n_int = t.i - 0x4B400000;  // the bit pattern of round_shift
    float r = fmaf(n, -0.693145751953125f, xc);  // ln2's head: 16 significant bits, n * head exact
    r = fmaf(n, -1.428606765330187e-6f, r);      // ln2 - head
    float p = 1.0f / 5040.0f;
    p = fmaf(p, r, 1.0f / 720.0f);
    p = fmaf(p, r, 1.0f / 120.0f);
    p = fmaf(p, r, 1.0f / 24.0f);
    p = fmaf(p, r, 1.0f / 6.0f);
    p = fmaf(p, r, 0.5f);
    p = fmaf(p, r, 1.0f);
    p = fmaf(p, r, 1.0f);
    union { int32_t i; float f; } scale = {(n_int + 127) << 23};
    float e = p * scale.f;
    e = x < -87.0f ? 0.0f : e;
    return x > 88.0f ? INFINITY : e;
}

static inline void silu_forward_cpu(float* out, const float* x, size_t n) {
    // out, x (n)
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; i++) out[i] = x[i] / (1.0f + exp_cpu(-x[i]));
}

static inline void silu_backward_cpu(float* dx, const float* dout, const float* x, size_t n) {
    // dx, dout, x (n); dx may be dout
    #pragma omp parallel for simd
    for (size_t i = 0; i < n; i++) {
        float s = 1.0f / (1.0f + exp_cpu(-x[i]));
        dx[i] = dout[i] * s * (1.0f + x[i] * (1.0f - s));
    }
}

// ----------------------------------------------------------------------------
// CUDA: the same per-element math as functors for map1_cuda / map2_cuda
struct SiluOp {
    __device__ float operator()(float x) const { return silu_value(x); }
};
struct SiluBackwardOp {
    __device__ float operator()(float dout, float x) const { return silu_grad_value(dout, x); }
};

static void silu_forward_cuda(float* out, const float* x, size_t n) { map1_cuda(out, x, n, SiluOp()); }

static inline void silu_backward_cuda(float* dx, const float* dout, const float* x, size_t n) {
    map2_cuda(dx, dout, x, n, SiluBackwardOp());
}

static inline void silu_forward(float* out, const float* x, size_t n) {
    if (g_device == DEVICE_CUDA) { silu_forward_cuda(out, x, n); } else { silu_forward_cpu(out, x, n); }
}

static inline void silu_backward(float* dx, const float* dout, const float* x, size_t n) {
    if (g_device == DEVICE_CUDA) { silu_backward_cuda(dx, dout, x, n); } else { silu_backward_cpu(dx, dout, x, n); }
}

// ----------------------------------------------------------------------------
// add and scale: out = a + b (out may alias a or b), a += b, a *= s

static inline void add_forward_ref(float* out, const float* a, const float* b, size_t n) {
    // out, a, b (n)
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) out[i] = a[i] + b[i];
}

static inline void scale_inplace_ref(float* a, float s, size_t n) {
    // a (n)
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) a[i] *= s;
}

// CUDA: functors for map1_cuda / map2_cuda
struct AddOp {
    __device__ float operator()(float a, float b) const { return a + b; }
};
struct ScaleOp {
    float s;
    __device__ float operator()(float a) const { return a * s; }
};

static inline void add_forward(float* out, const float* a, const float* b, size_t n) {
    if (g_device == DEVICE_CUDA) { map2_cuda(out, a, b, n, AddOp()); } else { add_forward_ref(out, a, b, n); }
}

static void add_inplace(float* a, const float* b, size_t n) { add_forward(a, a, b, n); }

static inline void scale_inplace(float* a, float s, size_t n) {
    if (g_device == DEVICE_CUDA) { map1_cuda(a, a, n, ScaleOp{s}); } else { scale_inplace_ref(a, s, n); }
}

// ----------------------------------------------------------------------------
// nearest-neighbour upsampling x2: out[b, c, oh, ow] = x[b, c, oh / 2, ow / 2]
// backward: dx[b, c, h, w] = sum of dout over the 2x2 block (2h..2h+1, 2w..2w+1), in the same
// order on both devices: (top-left + top-right) + (bottom-left + bottom-right)

// dplane: one (b, c) plane of dout, (2H, 2W)
__host__ __device__ static inline float upsample2x_grad_value(const float* dplane, int h, int w, int W) {
    const float* top = dplane + (size_t)(2 * h) * (2 * W) + 2 * w;
    const float* bottom = top + 2 * W;
    return (top[0] + top[1]) + (bottom[0] + bottom[1]);
}

static inline void upsample2x_forward_ref(float* out, const float* x, int B, int C, int H, int W) {
    // out (B, C, 2H, 2W), x (B, C, H, W)
    #pragma omp parallel for
    for (int bc = 0; bc < B * C; bc++) {
        const float* xp = x + (size_t)bc * H * W;
        float* op = out + (size_t)bc * 4 * H * W;
        for (int oh = 0; oh < 2 * H; oh++) {
            for (int ow = 0; ow < 2 * W; ow++) op[oh * 2 * W + ow] = xp[(oh / 2) * W + ow / 2];
        }
    }
}

static inline void upsample2x_backward_ref(float* dx, const float* dout, int B, int C, int H, int W) {
    // dx (B, C, H, W) overwritten, dout (B, C, 2H, 2W)
    #pragma omp parallel for
    for (int bc = 0; bc < B * C; bc++) {
        const float* dplane = dout + (size_t)bc * 4 * H * W;
        for (int h = 0; h < H; h++) {
            for (int w = 0; w < W; w++) dx[((size_t)bc * H + h) * W + w] = upsample2x_grad_value(dplane, h, w, W);
        }
    }
}

// CUDA: one thread per input value (b, c, h, w) in both directions. Forward writes its value to the
// 2x2 block as two float2 stores (rows 2h and 2h+1, columns 2w..2w+1), backward reads the block as two
// float2 loads: a warp's accesses are two contiguous 256-byte runs. Index arithmetic is 32-bit (a
// 64-bit division costs tens of instructions); the launchers check that the tensor fits.
// PAIRS = false is the fallback for a dout/out that is not 8-byte aligned.
template <bool PAIRS>
__global__ static void upsample2x_forward_kernel(float* out, const float* x, unsigned total, int H, int W) {
    unsigned stride = gridDim.x * blockDim.x;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        unsigned w = idx % W, rest = idx / W, h = rest % H, bc = rest / H;
        float v = x[idx];
        float* top = out + ((size_t)bc * 2 * H + 2 * h) * (2 * W) + 2 * w;
        float* bottom = top + 2 * W;
        if constexpr (PAIRS) {
            *reinterpret_cast<float2*>(top) = make_float2(v, v);
            *reinterpret_cast<float2*>(bottom) = make_float2(v, v);
        } else {
            top[0] = v; top[1] = v; bottom[0] = v; bottom[1] = v;
        }
    }
}

template <bool PAIRS>
__global__ static void upsample2x_backward_kernel(float* dx, const float* dout, unsigned total, int H, int W) {
    unsigned stride = gridDim.x * blockDim.x;
    for (unsigned idx = blockIdx.x * blockDim.x + threadIdx.x; idx < total; idx += stride) {
        unsigned w = idx % W, rest = idx / W, h = rest % H, bc = rest / H;
        const float* dplane = dout + (size_t)bc * 4 * H * W;
        if constexpr (PAIRS) {
            float2 t = *reinterpret_cast<const float2*>(dplane + (size_t)(2 * h) * (2 * W) + 2 * w);
            float2 b = *reinterpret_cast<const float2*>(dplane + (size_t)(2 * h + 1) * (2 * W) + 2 * w);
            dx[idx] = (t.x + t.y) + (b.x + b.y);  // the order of upsample2x_grad_value
        } else {
            dx[idx] = upsample2x_grad_value(dplane, h, w, W);
        }
    }
}

static inline unsigned upsample2x_count(int B, int C, int H, int W) {
    size_t total = (size_t)B * C * H * W;
    if (total > 0xFFFFFFFFull / 4) {
        fprintf(stderr, "Error: upsample2x input of %zu values is too large for 32-bit indexing.\n"
                        "HINT: lower --batch-size.\n", total);
        exit(EXIT_FAILURE);
    }
    return (unsigned)total;
}

static inline void upsample2x_forward_cuda(float* out, const float* x, int B, int C, int H, int W) {
    const int block = 256;
    unsigned total = upsample2x_count(B, C, H, W);
    if (((uintptr_t)out & 7) == 0) {
        upsample2x_forward_kernel<true><<<grid_for(total, block), block>>>(out, x, total, H, W);
    } else {
        upsample2x_forward_kernel<false><<<grid_for(total, block), block>>>(out, x, total, H, W);
    }
    cudaCheck(cudaGetLastError());
}

static inline void upsample2x_backward_cuda(float* dx, const float* dout, int B, int C, int H, int W) {
    const int block = 256;
    unsigned total = upsample2x_count(B, C, H, W);
    if (((uintptr_t)dout & 7) == 0) {
        upsample2x_backward_kernel<true><<<grid_for(total, block), block>>>(dx, dout, total, H, W);
    } else {
        upsample2x_backward_kernel<false><<<grid_for(total, block), block>>>(dx, dout, total, H, W);
    }
    cudaCheck(cudaGetLastError());
}

static inline void upsample2x_forward(float* out, const float* x, int B, int C, int H, int W) {
    if (g_device == DEVICE_CUDA) {
        upsample2x_forward_cuda(out, x, B, C, H, W);
    } else {
        upsample2x_forward_ref(out, x, B, C, H, W);
    }
}

static inline void upsample2x_backward(float* dx, const float* dout, int B, int C, int H, int W) {
    if (g_device == DEVICE_CUDA) {
        upsample2x_backward_cuda(dx, dout, B, C, H, W);
    } else {
        upsample2x_backward_ref(dx, dout, B, C, H, W);
    }
}
