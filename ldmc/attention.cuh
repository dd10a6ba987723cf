// ldmc/attention.cuh — the core of the U-Net's multi-head self-attention over the H*W positions
// of a feature map (the GroupNorm, the qkv and proj 1x1 convs and the residual are other layers):
//   qkv (B, 3C, HW): channels [0,C) q, [C,2C) k, [2C,3C) v; NH heads, head h owns channels
//   [hD, (h+1)D) of each, D = C/NH. Per (b, h), with Q, K, V the (D, HW) channel-major blocks:
//     S = Q^T K / sqrt(D)   (HW, HW)      att = softmax(S) over each row
//     out_h = V att^T       (D, HW)       written to channels [hD, (h+1)D) of out (B, C, HW)
//   att (B, NH, HW, HW) keeps the probabilities for the backward.
// Backward, per (b, h): dV = dout_h att, datt = dout_h^T V, dS = att * (datt - rowsum(datt * att)) / sqrt(D)
// (softmax backward with the scale folded in), dQ = K dS^T, dK = Q dS.
//
//   attention_forward_ref / attention_backward_ref    the loops of the definition: the oracle of the tests
//   attention_forward_cpu / attention_backward_cpu    the fast CPU path: batched packed GEMMs + row loops
//   attention_forward_cuda / attention_backward_cuda  cuBLAS batched GEMMs + fused row kernels
//   attention_forward / attention_backward            dispatchers following g_device
//
// The fast versions run the matmuls as strided batched GEMMs (gemm.cuh). A head's Q, K, V, out blocks are contiguous
// (D, HW) slices, but (b, h) pairs are not one stride apart (b steps 3C*HW, h steps D*HW), so the
// batch runs over b (count B) and the code loops over the heads: NH (4) calls per product rather
// than B (up to hundreds) calls if it looped over the images. The softmax and its backward are
// fused row kernels between the GEMMs. The same helpers drive both devices, given the CPU or the
// CUDA batched GEMM, so the pointer and stride bookkeeping is written once.
#pragma once

#include <float.h>
#include "common.cuh"
#include "gemm.cuh"

typedef void (*GemmBatchedFn)(int transA, int transB, int M, int N, int K, float alpha,
                              const float* A, int lda, long strideA, const float* B, int ldb, long strideB,
                              float beta, float* C, int ldc, long strideC, int count);

static inline void check_attention_heads(int C, int NH) {
    if (NH <= 0 || C % NH != 0) {
        fprintf(stderr, "Error: attention over %d channels cannot be split into %d heads.\n"
                        "HINT: the channel count at every attention resolution must be a multiple of the "
                        "head count (heads = 4: use a base width ch divisible by 4).\n", C, NH);
        exit(EXIT_FAILURE);
    }
}

// ----------------------------------------------------------------------------
// reference: one (b, h) pair per thread, every sum in double, the softmax of each row with its
// maximum subtracted. Q, K, V of head h of image b are the (D, HW) blocks q[d][i] = qkv[b][hD + d][i],
// k[d][j] = qkv[b][C + hD + d][j], v[d][j] = qkv[b][2C + hD + d][j].

static inline void attention_forward_ref(float* out, float* att, const float* qkv, int B, int C, int HW, int NH) {
    // out (B, C, HW), att (B, NH, HW, HW), qkv (B, 3C, HW)
    check_attention_heads(C, NH);
    int D = C / NH;
    double scale = 1.0 / sqrt((double)D);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float* q = qkv + ((size_t)b * 3 * C + (size_t)h * D) * HW;  // (D, HW)
            const float* k = q + (size_t)C * HW;                               // (D, HW)
            const float* v = k + (size_t)C * HW;                               // (D, HW)
            float* a = att + ((size_t)b * NH + h) * HW * HW;                   // (HW, HW)
            float* o = out + ((size_t)b * C + (size_t)h * D) * HW;             // (D, HW)
            double* s = (double*)mallocCheck((size_t)HW * sizeof(double));    // one row of scores
            // att[i][j] = softmax over j of S[i][j] = sum_d q[d][i] k[d][j] / sqrt(D)
            for (int i = 0; i < HW; i++) {
                double maxval = -INFINITY;
                for (int j = 0; j < HW; j++) {
                    double dot = 0.0;
                    for (int d = 0; d < D; d++) dot += (double)q[(size_t)d * HW + i] * k[(size_t)d * HW + j];
                    s[j] = dot * scale;
                    maxval = fmax(maxval, s[j]);
                }
                double sum = 0.0;
                for (int j = 0; j < HW; j++) { s[j] = exp(s[j] - maxval); sum += s[j]; }
                for (int j = 0; j < HW; j++) a[(size_t)i * HW + j] = (float)(s[j] / sum);
            }
            // out[d][i] = sum_j v[d][j] att[i][j]
            for (int d = 0; d < D; d++) {
                for (int i = 0; i < HW; i++) {
                    double acc = 0.0;
                    for (int j = 0; j < HW; j++) acc += (double)v[(size_t)d * HW + j] * a[(size_t)i * HW + j];
                    o[(size_t)d * HW + i] = (float)acc;
                }
            }
            free(s);
        }
    }
}

static inline void attention_backward_ref(float* dqkv, float* datt, const float* dout, const float* qkv,
                                   const float* att, int B, int C, int HW, int NH) {
    // dqkv (B, 3C, HW) overwritten, datt (B, NH, HW, HW) scratch (holds dS on return), dout (B, C, HW)
    check_attention_heads(C, NH);
    int D = C / NH;
    double scale = 1.0 / sqrt((double)D);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int h = 0; h < NH; h++) {
            const float* q = qkv + ((size_t)b * 3 * C + (size_t)h * D) * HW;  // (D, HW)
            const float* k = q + (size_t)C * HW;
            const float* v = k + (size_t)C * HW;
            const float* a = att + ((size_t)b * NH + h) * HW * HW;             // (HW, HW)
            const float* g = dout + ((size_t)b * C + (size_t)h * D) * HW;      // (D, HW)
            float* dq = dqkv + ((size_t)b * 3 * C + (size_t)h * D) * HW;       // (D, HW)
            float* dk = dq + (size_t)C * HW;
            float* dv = dk + (size_t)C * HW;
            float* ds = datt + ((size_t)b * NH + h) * HW * HW;                 // (HW, HW)
            double* da = (double*)mallocCheck((size_t)HW * sizeof(double));   // one row of datt
            // dv[d][j] = sum_i dout[d][i] att[i][j]
            for (int d = 0; d < D; d++) {
                for (int j = 0; j < HW; j++) {
                    double acc = 0.0;
                    for (int i = 0; i < HW; i++) acc += (double)g[(size_t)d * HW + i] * a[(size_t)i * HW + j];
                    dv[(size_t)d * HW + j] = (float)acc;
                }
            }
            // datt[i][j] = sum_d dout[d][i] v[d][j]; through the softmax and the scale:
            // dS[i][j] = att[i][j] (datt[i][j] - sum_j' datt[i][j'] att[i][j']) / sqrt(D)
            for (int i = 0; i < HW; i++) {
                double dot = 0.0;
                for (int j = 0; j < HW; j++) {
                    double acc = 0.0;
                    for (int d = 0; d < D; d++) acc += (double)g[(size_t)d * HW + i] * v[(size_t)d * HW + j];
                    da[j] = acc;
                    dot += acc * a[(size_t)i * HW + j];
                }
                for (int j = 0; j < HW; j++) {
                    ds[(size_t)i * HW + j] = (float)(a[(size_t)i * HW + j] * (da[j] - dot) * scale);
                }
            }
            // dq[d][i] = sum_j k[d][j] dS[i][j];  dk[d][j] = sum_i q[d][i] dS[i][j]
            for (int d = 0; d < D; d++) {
                for (int i = 0; i < HW; i++) {
                    double acc = 0.0;
                    for (int j = 0; j < HW; j++) acc += (double)k[(size_t)d * HW + j] * ds[(size_t)i * HW + j];
                    dq[(size_t)d * HW + i] = (float)acc;
                }
                for (int j = 0; j < HW; j++) {
                    double acc = 0.0;
                    for (int i = 0; i < HW; i++) acc += (double)q[(size_t)d * HW + i] * ds[(size_t)i * HW + j];
                    dk[(size_t)d * HW + j] = (float)acc;
                }
            }
            free(da);
        }
    }
}

// ----------------------------------------------------------------------------
// the matmuls of the fast versions, shared by both devices (gb = gemm_batched_cpu or gemm_batched_cuda)

// att_h (HW, HW) = Q_h^T (HW, D) @ K_h (D, HW), unscaled: the softmax applies 1/sqrt(D)
static inline void attention_scores(GemmBatchedFn gb, float* att, const float* qkv, int B, int C, int HW, int NH) {
    int D = C / NH;
    long s_qkv = 3L * C * HW, s_att = (long)NH * HW * HW;
    for (int h = 0; h < NH; h++) {
        const float* q = qkv + (size_t)h * D * HW;
        const float* k = qkv + (size_t)(C + h * D) * HW;
        gb(1, 0, HW, HW, D, 1.0f, q, HW, s_qkv, k, HW, s_qkv, 0.0f, att + (size_t)h * HW * HW, HW, s_att, B);
    }
}

// out_h (D, HW) = V_h (D, HW) @ att_h^T (HW, HW)
static inline void attention_values(GemmBatchedFn gb, float* out, const float* att, const float* qkv,
                             int B, int C, int HW, int NH) {
    int D = C / NH;
    long s_qkv = 3L * C * HW, s_att = (long)NH * HW * HW, s_out = (long)C * HW;
    for (int h = 0; h < NH; h++) {
        const float* v = qkv + (size_t)(2 * C + h * D) * HW;
        gb(0, 1, D, HW, HW, 1.0f, v, HW, s_qkv, att + (size_t)h * HW * HW, HW, s_att,
           0.0f, out + (size_t)h * D * HW, HW, s_out, B);
    }
}

// dV_h (D, HW) = dout_h (D, HW) @ att_h (HW, HW);  datt_h (HW, HW) = dout_h^T (HW, D) @ V_h (D, HW)
static inline void attention_values_backward(GemmBatchedFn gb, float* dqkv, float* datt, const float* dout,
                                      const float* qkv, const float* att, int B, int C, int HW, int NH) {
    int D = C / NH;
    long s_qkv = 3L * C * HW, s_att = (long)NH * HW * HW, s_out = (long)C * HW;
    for (int h = 0; h < NH; h++) {
        size_t v_off = (size_t)(2 * C + h * D) * HW;
        const float* dout_h = dout + (size_t)h * D * HW;
        gb(0, 0, D, HW, HW, 1.0f, dout_h, HW, s_out, att + (size_t)h * HW * HW, HW, s_att,
           0.0f, dqkv + v_off, HW, s_qkv, B);
        gb(1, 0, HW, HW, D, 1.0f, dout_h, HW, s_out, qkv + v_off, HW, s_qkv,
           0.0f, datt + (size_t)h * HW * HW, HW, s_att, B);
    }
}

// with dS in datt (already scaled): dQ_h (D, HW) = K_h (D, HW) @ dS^T;  dK_h (D, HW) = Q_h (D, HW) @ dS
static inline void attention_scores_backward(GemmBatchedFn gb, float* dqkv, const float* dS, const float* qkv,
                                      int B, int C, int HW, int NH) {
    int D = C / NH;
    long s_qkv = 3L * C * HW, s_att = (long)NH * HW * HW;
    for (int h = 0; h < NH; h++) {
        size_t q_off = (size_t)h * D * HW, k_off = (size_t)(C + h * D) * HW;
        const float* dS_h = dS + (size_t)h * HW * HW;
        gb(0, 1, D, HW, HW, 1.0f, qkv + k_off, HW, s_qkv, dS_h, HW, s_att, 0.0f, dqkv + q_off, HW, s_qkv, B);
        gb(0, 0, D, HW, HW, 1.0f, qkv + q_off, HW, s_qkv, dS_h, HW, s_att, 0.0f, dqkv + k_off, HW, s_qkv, B);
    }
}

// ----------------------------------------------------------------------------
// CPU: the fast path, batched packed GEMMs (gemm_batched_cpu) around the row softmax and its backward

// in place on each of the rows (length HW) of att: p = softmax(scale * s), max subtracted for range
static inline void attention_softmax_forward_cpu(float* att, int rows, int HW, float scale) {
    #pragma omp parallel for
    for (int r = 0; r < rows; r++) {
        float* row = att + (size_t)r * HW;
        float maxval = -FLT_MAX;
        for (int j = 0; j < HW; j++) maxval = fmaxf(maxval, row[j]);
        float sum = 0.0f;
        for (int j = 0; j < HW; j++) {
            row[j] = expf((row[j] - maxval) * scale);
            sum += row[j];
        }
        float inv = 1.0f / sum;
        for (int j = 0; j < HW; j++) row[j] *= inv;
    }
}

// in place on datt: dS = att * (datt - sum_j datt * att) * scale
static inline void attention_softmax_backward_cpu(float* datt, const float* att, int rows, int HW, float scale) {
    #pragma omp parallel for
    for (int r = 0; r < rows; r++) {
        float* d = datt + (size_t)r * HW;
        const float* p = att + (size_t)r * HW;
        float dot = 0.0f;
        for (int j = 0; j < HW; j++) dot += d[j] * p[j];
        for (int j = 0; j < HW; j++) d[j] = p[j] * (d[j] - dot) * scale;
    }
}

static inline void attention_forward_cpu(float* out, float* att, const float* qkv, int B, int C, int HW, int NH) {
    // out (B, C, HW), att (B, NH, HW, HW), qkv (B, 3C, HW)
    attention_scores(gemm_batched_cpu, att, qkv, B, C, HW, NH);
    attention_softmax_forward_cpu(att, B * NH * HW, HW, 1.0f / sqrtf((float)(C / NH)));
    attention_values(gemm_batched_cpu, out, att, qkv, B, C, HW, NH);
}

static inline void attention_backward_cpu(float* dqkv, float* datt, const float* dout, const float* qkv,
                                   const float* att, int B, int C, int HW, int NH) {
    // dqkv (B, 3C, HW) overwritten, datt (B, NH, HW, HW) scratch, dout (B, C, HW)
    attention_values_backward(gemm_batched_cpu, dqkv, datt, dout, qkv, att, B, C, HW, NH);
    attention_softmax_backward_cpu(datt, att, B * NH * HW, HW, 1.0f / sqrtf((float)(C / NH)));
    attention_scores_backward(gemm_batched_cpu, dqkv, datt, qkv, B, C, HW, NH);
}

// ----------------------------------------------------------------------------
// CUDA: fused row kernels, one warp per row of HW scores

// Scale, max, exp, sum and normalise in one kernel. The trick is the online softmax (Milakov &
// Gimelshein 2018): each lane walks its elements j = lane, lane+32, ... keeping a running max m and
// a running sum l of exp(scale*(s - m)), rescaling l by exp(scale*(m_old - m_new)) when the max
// grows; the 32 (m, l) pairs are then merged with the same rule by butterfly shuffles. So the row is
// read once for its statistics and once more to write the probabilities, with no shared memory and
// no block barrier. -FLT_MAX (not -inf) starts the max so that an idle lane (HW < 32) merges as
// exp(0) * 0 rather than producing inf - inf = NaN.
__global__ static void attention_softmax_forward_kernel(float* att, int rows, int HW, float scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;  // whole warps leave together: rows are warp-aligned
    float* x = att + (size_t)row * HW;
    float m = -FLT_MAX, l = 0.0f;
    for (int j = lane; j < HW; j += 32) {
        float s = x[j];
        if (s > m) { l = l * expf((m - s) * scale) + 1.0f; m = s; }
        else { l += expf((s - m) * scale); }
    }
    for (int offset = 16; offset > 0; offset /= 2) {
        float m2 = __shfl_xor_sync(0xffffffff, m, offset);
        float l2 = __shfl_xor_sync(0xffffffff, l, offset);
        float mnew = fmaxf(m, m2);
        l = l * expf((m - mnew) * scale) + l2 * expf((m2 - mnew) * scale);
        m = mnew;
    }
    float inv = 1.0f / l;
    for (int j = lane; j < HW; j += 32) x[j] = expf((x[j] - m) * scale) * inv;
}

// dS = att * (datt - dot) * scale with dot = sum_j datt * att: a warp reduction, then one pass in place
__global__ static void attention_softmax_backward_kernel(float* datt, const float* att, int rows, int HW, float scale) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= rows) return;
    float* d = datt + (size_t)row * HW;
    const float* p = att + (size_t)row * HW;
    float dot = 0.0f;
    for (int j = lane; j < HW; j += 32) dot += d[j] * p[j];
    for (int offset = 16; offset > 0; offset /= 2) dot += __shfl_xor_sync(0xffffffff, dot, offset);
    for (int j = lane; j < HW; j += 32) d[j] = p[j] * (d[j] - dot) * scale;
}

static inline void attention_forward_cuda(float* out, float* att, const float* qkv, int B, int C, int HW, int NH) {
    int rows = B * NH * HW, block = 256;  // 8 rows per block
    attention_scores(gemm_batched_cuda, att, qkv, B, C, HW, NH);
    attention_softmax_forward_kernel<<<ceil_div(rows, block / 32), block>>>(att, rows, HW, 1.0f / sqrtf((float)(C / NH)));
    cudaCheck(cudaGetLastError());
    attention_values(gemm_batched_cuda, out, att, qkv, B, C, HW, NH);
}

static inline void attention_backward_cuda(float* dqkv, float* datt, const float* dout, const float* qkv,
                                    const float* att, int B, int C, int HW, int NH) {
    int rows = B * NH * HW, block = 256;
    attention_values_backward(gemm_batched_cuda, dqkv, datt, dout, qkv, att, B, C, HW, NH);
    attention_softmax_backward_kernel<<<ceil_div(rows, block / 32), block>>>(datt, att, rows, HW, 1.0f / sqrtf((float)(C / NH)));
    cudaCheck(cudaGetLastError());
    attention_scores_backward(gemm_batched_cuda, dqkv, datt, qkv, B, C, HW, NH);
}

// ----------------------------------------------------------------------------
// dispatchers

static inline void attention_forward(float* out, float* att, const float* qkv, int B, int C, int HW, int NH) {
    check_attention_heads(C, NH);
    if (g_device == DEVICE_CUDA) {
        attention_forward_cuda(out, att, qkv, B, C, HW, NH);
    } else {
        attention_forward_cpu(out, att, qkv, B, C, HW, NH);
    }
}

static inline void attention_backward(float* dqkv, float* datt, const float* dout, const float* qkv,
                               const float* att, int B, int C, int HW, int NH) {
    check_attention_heads(C, NH);
    if (g_device == DEVICE_CUDA) {
        attention_backward_cuda(dqkv, datt, dout, qkv, att, B, C, HW, NH);
    } else {
        attention_backward_cpu(dqkv, datt, dout, qkv, att, B, C, HW, NH);
    }
}
