// ldmc/groupnorm.cuh — GroupNorm with affine weight and bias, as PyTorch's nn.GroupNorm (eps 1e-5,
// biased variance). The C channels are split into G groups of C/G consecutive channels; each
// (item b, group g) is normalised over its C/G * HW values, then channel c is scaled by weight[c]
// and shifted by bias[c]. The VAE and U-Net use G = 8; the attention block's GroupNorm(1) is G = 1.
//   groupnorm_forward   out (B, C, HW), and the per-(b, g) mean and rstd = 1/sqrt(var + eps) for backward
//   groupnorm_backward  dx overwritten, dweight and dbias accumulated
//   groupnorm_forward_ref / groupnorm_backward_ref    the loops of the definition (statistics in double):
//                                                      the oracle of the tests
//   groupnorm_forward_cpu / groupnorm_backward_cpu    the CPU path: the same loops with vectorised sums
//   groupnorm_forward_cuda / groupnorm_backward_cuda  CUDA kernels and their launchers
//   groupnorm_forward / groupnorm_backward            dispatchers following g_device
#pragma once

#include "common.cuh"
#include "elementwise.cuh"

static const float GROUPNORM_EPS = 1e-5f;

static inline void groupnorm_check(int C, int G) {
    if (G <= 0 || C % G != 0) {
        fprintf(stderr, "Error: GroupNorm needs the channel count to be a multiple of the group count "
                        "(got %d channels, %d groups).\nHINT: choose channel widths (ch * mult) divisible "
                        "by the number of groups (8).\n", C, G);
        exit(EXIT_FAILURE);
    }
}

// ----------------------------------------------------------------------------
// reference
// The values of group (b, g) are contiguous: channels g*C/G .. (g+1)*C/G - 1 of item b, so the
// group is the flat range [(b*G + g) * N, (b*G + g + 1) * N) with N = C/G * HW.

// one group's output from its statistics: og = (xg - mean) * rstd * weight[c] + bias[c]; the group's
// Cg channels use weight[0 .. Cg), bias[0 .. Cg) (pointers to the group's first channel)
static inline void groupnorm_normalize_group(float* og, const float* xg, float mean, float rstd, const float* weight,
                                             const float* bias, int Cg, int HW) {
    for (int cc = 0; cc < Cg; cc++) {
        for (int i = 0; i < HW; i++) {
            size_t k = (size_t)cc * HW + i;
            og[k] = (xg[k] - mean) * rstd * weight[cc] + bias[cc];
        }
    }
}

// one group's dx from the group means of g and g * xhat (the backward below)
static inline void groupnorm_dx_group(float* dxg, const float* dg, const float* xg, float mean, float rstd,
                                      const float* weight, float mean_g, float mean_gx, int Cg, int HW) {
    for (int cc = 0; cc < Cg; cc++) {
        for (int i = 0; i < HW; i++) {
            size_t k = (size_t)cc * HW + i;
            float xhat = (xg[k] - mean) * rstd;
            dxg[k] = rstd * (dg[k] * weight[cc] - mean_g - xhat * mean_gx);
        }
    }
}

static inline void groupnorm_forward_ref(float* out, float* mean, float* rstd, const float* x, const float* weight,
                                  const float* bias, int B, int C, int HW, int G) {
    // out, x (B, C, HW); mean, rstd (B, G); weight, bias (C)
    int Cg = C / G;
    size_t N = (size_t)Cg * HW;
    #pragma omp parallel for
    for (int bg = 0; bg < B * G; bg++) {
        const float* xg = x + (size_t)bg * N;
        float* og = out + (size_t)bg * N;
        // two passes in double: the mean, then the variance around it (no cancellation)
        double sum = 0.0;
        for (size_t i = 0; i < N; i++) sum += xg[i];
        double m = sum / N;
        double var = 0.0;
        for (size_t i = 0; i < N; i++) { double d = xg[i] - m; var += d * d; }
        var /= N;
        float mf = (float)m, rs = (float)(1.0 / sqrt(var + GROUPNORM_EPS));
        mean[bg] = mf;
        rstd[bg] = rs;
        int c0 = (bg % G) * Cg;
        groupnorm_normalize_group(og, xg, mf, rs, weight + c0, bias + c0, Cg, HW);
    }
}

// With xhat = (x - mean) * rstd and g = dout * weight[c] (the gradient reaching xhat), the gradient
// through the group's mean and variance is
//   dx = rstd * (g - mean(g) - xhat * mean(g * xhat))      (means over the group's N values)
// and the affine parameters get dweight[c] += sum over (b, hw) of dout * xhat, dbias[c] += sum of dout.
static inline void groupnorm_backward_ref(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                   const float* mean, const float* rstd, const float* weight,
                                   int B, int C, int HW, int G) {
    // dx, dout, x (B, C, HW); mean, rstd (B, G); weight, dweight, dbias (C)
    int Cg = C / G;
    size_t N = (size_t)Cg * HW;
    #pragma omp parallel for
    for (int bg = 0; bg < B * G; bg++) {
        const float* xg = x + (size_t)bg * N;
        const float* dg = dout + (size_t)bg * N;
        float* dxg = dx + (size_t)bg * N;
        float m = mean[bg], rs = rstd[bg];
        double sum_g = 0.0, sum_gx = 0.0;
        for (int cc = 0; cc < Cg; cc++) {
            float w = weight[(bg % G) * Cg + cc];
            for (int i = 0; i < HW; i++) {
                size_t k = (size_t)cc * HW + i;
                double gk = (double)dg[k] * w;
                sum_g += gk;
                sum_gx += gk * ((xg[k] - m) * rs);
            }
        }
        float mean_g = (float)(sum_g / N), mean_gx = (float)(sum_gx / N);
        groupnorm_dx_group(dxg, dg, xg, m, rs, weight + (bg % G) * Cg, mean_g, mean_gx, Cg, HW);
    }
    // parameter gradients: parallel over channels, so each thread owns its dweight[c] and dbias[c]
    #pragma omp parallel for
    for (int c = 0; c < C; c++) {
        double dw = 0.0, db = 0.0;
        for (int b = 0; b < B; b++) {
            int bg = b * G + c / Cg;
            const float* xc = x + ((size_t)b * C + c) * HW;
            const float* dc = dout + ((size_t)b * C + c) * HW;
            for (int i = 0; i < HW; i++) {
                dw += (double)dc[i] * ((xc[i] - mean[bg]) * rstd[bg]);
                db += dc[i];
            }
        }
        dweight[c] += (float)dw;
        dbias[c] += (float)db;
    }
}

// ----------------------------------------------------------------------------
// fast CPU path
// The reference's sums run in double, one value after another: a chain of dependent adds that the
// compiler may not reorder or vectorise, and it took half of GroupNorm's time. Here every sum is a
// lanes_sum_cpu (16 float partial sums in vector registers, added in double at the end); the
// normalising loops are the reference's. Same work split as the reference (one (b, g) group, or
// one channel, per iteration), so the result does not depend on the thread count.

static inline void groupnorm_forward_cpu(float* out, float* mean, float* rstd, const float* x, const float* weight,
                                  const float* bias, int B, int C, int HW, int G) {
    // out, x (B, C, HW); mean, rstd (B, G); weight, bias (C)
    int Cg = C / G;
    size_t N = (size_t)Cg * HW;
    #pragma omp parallel for
    for (int bg = 0; bg < B * G; bg++) {
        const float* xg = x + (size_t)bg * N;
        float* og = out + (size_t)bg * N;
        float mf = (float)(lanes_sum_cpu(N, [&](size_t i) { return xg[i]; }) / N);
        double var = lanes_sum_cpu(N, [&](size_t i) { float d = xg[i] - mf; return d * d; }) / N;
        float rs = (float)(1.0 / sqrt(var + GROUPNORM_EPS));
        mean[bg] = mf;
        rstd[bg] = rs;
        int c0 = (bg % G) * Cg;
        groupnorm_normalize_group(og, xg, mf, rs, weight + c0, bias + c0, Cg, HW);
    }
}

static inline void groupnorm_backward_cpu(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                   const float* mean, const float* rstd, const float* weight,
                                   int B, int C, int HW, int G) {
    // dx, dout, x (B, C, HW); mean, rstd (B, G); weight, dweight, dbias (C)
    int Cg = C / G;
    size_t N = (size_t)Cg * HW;
    #pragma omp parallel for
    for (int bg = 0; bg < B * G; bg++) {
        const float* xg = x + (size_t)bg * N;
        const float* dg = dout + (size_t)bg * N;
        float* dxg = dx + (size_t)bg * N;
        float m = mean[bg], rs = rstd[bg];
        double sum_g = 0.0, sum_gx = 0.0;
        for (int cc = 0; cc < Cg; cc++) {
            float w = weight[(bg % G) * Cg + cc];
            const float* xc = xg + (size_t)cc * HW;
            const float* dc = dg + (size_t)cc * HW;
            sum_g += w * lanes_sum_cpu(HW, [&](size_t i) { return dc[i]; });
            sum_gx += w * lanes_sum_cpu(HW, [&](size_t i) { return dc[i] * ((xc[i] - m) * rs); });
        }
        float mean_g = (float)(sum_g / N), mean_gx = (float)(sum_gx / N);
        groupnorm_dx_group(dxg, dg, xg, m, rs, weight + (bg % G) * Cg, mean_g, mean_gx, Cg, HW);
    }
    #pragma omp parallel for
    for (int c = 0; c < C; c++) {
        double dw = 0.0, db = 0.0;
        for (int b = 0; b < B; b++) {
            int bg = b * G + c / Cg;
            float m = mean[bg], rs = rstd[bg];
            const float* xc = x + ((size_t)b * C + c) * HW;
            const float* dc = dout + ((size_t)b * C + c) * HW;
            dw += lanes_sum_cpu(HW, [&](size_t i) { return dc[i] * ((xc[i] - m) * rs); });
            db += lanes_sum_cpu(HW, [&](size_t i) { return dc[i]; });
        }
        dweight[c] += (float)dw;
        dbias[c] += (float)db;
    }
}

// ----------------------------------------------------------------------------
// CUDA kernels
// One block per (b, g) walks the group's contiguous N values; with HW % 4 == 0 (every layer of the
// models: HW = 1024, 256, 64, 16) and aligned pointers it moves them as float4, the 4 values of a
// float4 then belonging to the same channel.

static const int GROUPNORM_BLOCK = 256;

// Forward. The statistics take one read of the group with the shifted-data algorithm: with K the
// group's first value, S1 = sum(x - K) and S2 = sum((x - K)^2) give mean = K + S1/N and
// var = S2/N - (S1/N)^2. The plain sum-of-squares formula cancels catastrophically when
// |mean| >> std; shifting by a value of the group keeps both terms of the difference of the order
// of the variance. A second read (mostly from L2) normalises.
template <int V>
__global__ static void groupnorm_forward_kernel(float* out, float* mean, float* rstd, const float* x,
                                                const float* weight, const float* bias, int C, int HW, int G) {
    int bg = blockIdx.x, g = bg % G, Cg = C / G;
    int N = Cg * HW;
    const float* xg = x + (size_t)bg * N;
    float* og = out + (size_t)bg * N;
    float K = xg[0];  // the same address in every thread: one broadcast load
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = threadIdx.x * V; i < N; i += blockDim.x * V) {
        float r[V];
        load_vec<V>(r, xg + i);
        for (int k = 0; k < V; k++) { float d = r[k] - K; s1 += d; s2 += d * d; }
    }
    s1 = reduce_block_sum(s1);
    s2 = reduce_block_sum(s2);
    float shift_mean = s1 / N;
    float var = fmaxf(s2 / N - shift_mean * shift_mean, 0.0f);
    float m = K + shift_mean;
    float rs = 1.0f / sqrtf(var + GROUPNORM_EPS);
    if (threadIdx.x == 0) { mean[bg] = m; rstd[bg] = rs; }
    for (int i = threadIdx.x * V; i < N; i += blockDim.x * V) {
        int c = g * Cg + i / HW;
        float scale = rs * weight[c], shift = bias[c];
        float r[V];
        load_vec<V>(r, xg + i);
        for (int k = 0; k < V; k++) r[k] = (r[k] - m) * scale + shift;
        store_vec<V>(og + i, r);
    }
}

// Backward, kernel 1: one block per (b, g). Each warp takes whole channels of the group and sums
// dout*xhat and dout over the channel's HW values with a warp reduction (no block barrier per
// channel). Those per-(b, c) sums are everything needed:
//   - the group sums of g = dout*weight are sum_c weight[c] * (per-channel sums), giving dx here;
//   - the parameter gradients are sums over b of them, written to `partial` (B, C, 2) and reduced
//     by kernel 2 in a fixed order: deterministic, no atomics on dweight/dbias (B blocks would
//     otherwise contend for the same C addresses).
template <int V>
__global__ static void groupnorm_backward_dx_kernel(float* dx, float* partial, const float* dout, const float* x,
                                                    const float* mean, const float* rstd, const float* weight,
                                                    int C, int HW, int G) {
    int bg = blockIdx.x, b = bg / G, g = bg % G, Cg = C / G;
    int N = Cg * HW;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    float m = mean[bg], rs = rstd[bg];
    const float* xg = x + (size_t)bg * N;
    const float* dg = dout + (size_t)bg * N;
    float sum_g = 0.0f, sum_gx = 0.0f;  // this warp's channels' share of sum(g) and sum(g * xhat)
    for (int cc = warp; cc < Cg; cc += nwarps) {
        int c = g * Cg + cc;
        float sdx = 0.0f, sd = 0.0f;
        for (int i = lane * V; i < HW; i += 32 * V) {
            float rx[V], rd[V];
            load_vec<V>(rx, xg + (size_t)cc * HW + i);
            load_vec<V>(rd, dg + (size_t)cc * HW + i);
            for (int k = 0; k < V; k++) { sdx += rd[k] * ((rx[k] - m) * rs); sd += rd[k]; }
        }
        sdx = reduce_warp_sum(sdx);
        sd = reduce_warp_sum(sd);
        if (lane == 0) {
            partial[((size_t)b * C + c) * 2 + 0] = sdx;
            partial[((size_t)b * C + c) * 2 + 1] = sd;
        }
        sum_gx += weight[c] * sdx;
        sum_g += weight[c] * sd;
    }
    // after the warp reductions every lane holds its warp's value: count each warp once
    sum_g = reduce_block_sum(lane == 0 ? sum_g : 0.0f);
    sum_gx = reduce_block_sum(lane == 0 ? sum_gx : 0.0f);
    float mean_g = sum_g / N, mean_gx = sum_gx / N;
    float* dxg = dx + (size_t)bg * N;
    for (int i = threadIdx.x * V; i < N; i += blockDim.x * V) {
        float w = weight[g * Cg + i / HW];
        float rx[V], rd[V], r[V];
        load_vec<V>(rx, xg + i);
        load_vec<V>(rd, dg + i);
        for (int k = 0; k < V; k++) r[k] = rs * (rd[k] * w - mean_g - ((rx[k] - m) * rs) * mean_gx);
        store_vec<V>(dxg + i, r);
    }
}

// Backward, kernel 2: one thread per channel sums the per-item partials in increasing b
__global__ static void groupnorm_backward_params_kernel(float* dweight, float* dbias, const float* partial, int B, int C) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float dw = 0.0f, db = 0.0f;
    for (int b = 0; b < B; b++) {
        dw += partial[((size_t)b * C + c) * 2 + 0];
        db += partial[((size_t)b * C + c) * 2 + 1];
    }
    dweight[c] += dw;
    dbias[c] += db;
}

// the (B, C, 2) partial sums of the backward, grown on demand and kept for the life of the process
static float* g_groupnorm_partial = NULL;
static size_t g_groupnorm_partial_floats = 0;

static inline void groupnorm_forward_cuda(float* out, float* mean, float* rstd, const float* x, const float* weight,
                                   const float* bias, int B, int C, int HW, int G) {
    if (HW % 4 == 0 && is_aligned16(out) && is_aligned16(x)) {
        groupnorm_forward_kernel<4><<<B * G, GROUPNORM_BLOCK>>>(out, mean, rstd, x, weight, bias, C, HW, G);
    } else {
        groupnorm_forward_kernel<1><<<B * G, GROUPNORM_BLOCK>>>(out, mean, rstd, x, weight, bias, C, HW, G);
    }
    cudaCheck(cudaGetLastError());
}

static inline void groupnorm_backward_cuda(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                    const float* mean, const float* rstd, const float* weight,
                                    int B, int C, int HW, int G) {
    size_t need = (size_t)B * C * 2;
    if (need > g_groupnorm_partial_floats) {
        cudaCheck(cudaFree(g_groupnorm_partial));
        cudaCheck(cudaMalloc(&g_groupnorm_partial, need * sizeof(float)));
        g_groupnorm_partial_floats = need;
    }
    if (HW % 4 == 0 && is_aligned16(dx) && is_aligned16(dout) && is_aligned16(x)) {
        groupnorm_backward_dx_kernel<4><<<B * G, GROUPNORM_BLOCK>>>(dx, g_groupnorm_partial, dout, x, mean, rstd,
                                                                    weight, C, HW, G);
    } else {
        groupnorm_backward_dx_kernel<1><<<B * G, GROUPNORM_BLOCK>>>(dx, g_groupnorm_partial, dout, x, mean, rstd,
                                                                    weight, C, HW, G);
    }
    cudaCheck(cudaGetLastError());
    groupnorm_backward_params_kernel<<<ceil_div(C, 128), 128>>>(dweight, dbias, g_groupnorm_partial, B, C);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// dispatchers

static inline void groupnorm_forward(float* out, float* mean, float* rstd, const float* x, const float* weight,
                              const float* bias, int B, int C, int HW, int G) {
    groupnorm_check(C, G);
    if (g_device == DEVICE_CUDA) {
        groupnorm_forward_cuda(out, mean, rstd, x, weight, bias, B, C, HW, G);
    } else {
        groupnorm_forward_cpu(out, mean, rstd, x, weight, bias, B, C, HW, G);
    }
}

static inline void groupnorm_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                               const float* mean, const float* rstd, const float* weight,
                               int B, int C, int HW, int G) {
    groupnorm_check(C, G);
    if (g_device == DEVICE_CUDA) {
        groupnorm_backward_cuda(dx, dweight, dbias, dout, x, mean, rstd, weight, B, C, HW, G);
    } else {
        groupnorm_backward_cpu(dx, dweight, dbias, dout, x, mean, rstd, weight, B, C, HW, G);
    }
}
