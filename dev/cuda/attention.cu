/*
Kernel lab: the U-Net's multi-head self-attention core (ldmc/attention.cuh) at its 4x4 and 2x2
resolutions, HW <= 64 tokens per (image, head):

  qkv (B, 3C, HW): q = channels [0, C), k = [C, 2C), v = [2C, 3C); NH heads of D = C/NH channels
  per (b, h): S = Q^T K / sqrt(D) (HW, HW), P = softmax(S) row-wise, out_h = V P^T (D, HW); att = P kept
  backward: dV = dO P, dP = dO^T V, dS = P * (dP - rowsum(dP * P)) / sqrt(D), dQ = K dS^T, dK = Q dS

Versions (version 2 is ldmc/attention.cuh itself, included read-only):
  1  naive: one thread per (b, h, query row) for scores, softmax and output; backward one thread per
     row for dS, then one thread per (b, h, channel, token) for dQ, dK, dV
  2  SHIPPED: strided batched cuBLAS SGEMMs (one call per head and product) around the fused
     attention_softmax_forward_kernel / attention_softmax_backward_kernel (one warp per row, online
     softmax); the two softmax kernels are also validated and timed alone (columns "softmax")
  3  fused, new in this lab: one block per (b, h) loads that head's Q, K, V (and for the backward dO and
     P) into shared memory once and does every product there — no S/P round trip through global memory
     between launches, one launch instead of 2*NH + 1 (forward) or 4*NH + 1 (backward). Shared memory
     per block: forward (3*D*HW + HW*(HW+1)) floats, backward (4*D*HW + 2*HW*(HW+1)) floats — 98 KB at
     D = HW = 64, within the opt-in limit of sm_80/sm_90
Versions 1 and 3 have never run on a GPU (written where none was lent): expect to debug them on the
first run. They do pass make -C dev/cuda emu (the CPU emulator of dev/cuda/emu,
small shapes), which checks indexing, barriers and fragment layouts, not speed, races or alignment.

Validation: every version on every attention shape of the U-Net presets (dev/cuda/shapes.h: head dims
C/4 = 16, 32, 64 at 16 and 4 tokens, batch 128 and 256) against the plain CPU reference (loops in
double, whole tensors): out and att with tolerance 1e-5, dqkv with 1e-4, error = max |got - ref| / max |ref|.
Timing: forward and backward per version; GB/s counts the bytes the fused kernels must move (forward:
read qkv, write out and att; backward: read qkv, att and dout, write dqkv), the same for every version.

Build and run (a GPU is needed to run; without one the lab says so and exits 0):
  make -C dev/cuda attention
  dev/cuda/attention           # validate all versions, time version 2 (shipped)
  dev/cuda/attention 3         # ... and time version 3 next to it
*/
#include "common.h"
#include "shapes.h"
#include "ldmc/attention.cuh"

// ----------------------------------------------------------------------------
// CPU reference (whole tensors, double)

// out (B, C, HW), att (B, NH, HW, HW)
static void attention_forward_ref(const AttnShape& s, const float* qkv, float* out, float* att) {
    int D = s.C / s.NH, HW = s.HW;
    double scale = 1.0 / sqrt((double)D);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < s.B; b++) {
        for (int h = 0; h < s.NH; h++) {
            const float* q = qkv + ((size_t)b * 3 * s.C + h * D) * HW;
            const float* k = q + (size_t)s.C * HW;
            const float* v = k + (size_t)s.C * HW;
            float* p = att + ((size_t)b * s.NH + h) * HW * HW;
            std::vector<double> row(HW);
            for (int i = 0; i < HW; i++) {
                double mx = -1e300, sum = 0.0;
                for (int j = 0; j < HW; j++) {
                    double sc = 0.0;
                    for (int d = 0; d < D; d++) sc += (double)q[d * HW + i] * k[d * HW + j];
                    row[j] = sc * scale;
                    mx = fmax(mx, row[j]);
                }
                for (int j = 0; j < HW; j++) { row[j] = exp(row[j] - mx); sum += row[j]; }
                for (int j = 0; j < HW; j++) { row[j] /= sum; p[i * HW + j] = (float)row[j]; }
                for (int d = 0; d < D; d++) {
                    double o = 0.0;
                    for (int j = 0; j < HW; j++) o += row[j] * v[d * HW + j];
                    out[((size_t)b * s.C + h * D + d) * HW + i] = (float)o;
                }
            }
        }
    }
}

// dqkv (B, 3C, HW) from dout (B, C, HW), qkv and the reference att
static void attention_backward_ref(const AttnShape& s, const float* dout, const float* qkv, const float* att, float* dqkv) {
    int D = s.C / s.NH, HW = s.HW;
    double scale = 1.0 / sqrt((double)D);
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < s.B; b++) {
        for (int h = 0; h < s.NH; h++) {
            const float* q = qkv + ((size_t)b * 3 * s.C + h * D) * HW;
            const float* k = q + (size_t)s.C * HW;
            const float* v = k + (size_t)s.C * HW;
            const float* p = att + ((size_t)b * s.NH + h) * HW * HW;
            const float* dO = dout + ((size_t)b * s.C + h * D) * HW;
            float* dq = dqkv + ((size_t)b * 3 * s.C + h * D) * HW;
            float* dk = dq + (size_t)s.C * HW;
            float* dv = dk + (size_t)s.C * HW;
            std::vector<double> dS((size_t)HW * HW);
            for (int i = 0; i < HW; i++) {
                double dot = 0.0;
                for (int j = 0; j < HW; j++) {
                    double dp = 0.0;
                    for (int d = 0; d < D; d++) dp += (double)dO[d * HW + i] * v[d * HW + j];
                    dS[i * HW + j] = dp;
                    dot += dp * p[i * HW + j];
                }
                for (int j = 0; j < HW; j++) dS[i * HW + j] = p[i * HW + j] * (dS[i * HW + j] - dot) * scale;
            }
            for (int d = 0; d < D; d++) {
                for (int t = 0; t < HW; t++) {
                    double gq = 0.0, gk = 0.0, gv = 0.0;
                    for (int j = 0; j < HW; j++) gq += dS[t * HW + j] * k[d * HW + j];
                    for (int i = 0; i < HW; i++) {
                        gk += dS[i * HW + t] * q[d * HW + i];
                        gv += (double)p[i * HW + t] * dO[d * HW + i];
                    }
                    dq[d * HW + t] = (float)gq;
                    dk[d * HW + t] = (float)gk;
                    dv[d * HW + t] = (float)gv;
                }
            }
        }
    }
}

// the row softmax and its backward alone, as the shipped kernels compute them (scale folded in)
static void softmax_forward_ref(const float* s, float* p, size_t rows, int HW, double scale) {
    #pragma omp parallel for
    for (size_t r = 0; r < rows; r++) {
        double mx = -1e300, sum = 0.0;
        for (int j = 0; j < HW; j++) mx = fmax(mx, (double)s[r * HW + j]);
        for (int j = 0; j < HW; j++) sum += exp((s[r * HW + j] - mx) * scale);
        for (int j = 0; j < HW; j++) p[r * HW + j] = (float)(exp((s[r * HW + j] - mx) * scale) / sum);
    }
}

static void softmax_backward_ref(const float* datt, const float* p, float* ds, size_t rows, int HW, double scale) {
    #pragma omp parallel for
    for (size_t r = 0; r < rows; r++) {
        double dot = 0.0;
        for (int j = 0; j < HW; j++) dot += (double)datt[r * HW + j] * p[r * HW + j];
        for (int j = 0; j < HW; j++) ds[r * HW + j] = (float)(p[r * HW + j] * (datt[r * HW + j] - dot) * scale);
    }
}

// ----------------------------------------------------------------------------
// version 1: naive

// one thread per (b, h, i): max of the scores, their exp-sum, the probabilities, then the output column i
__global__ static void attention_forward_naive_kernel(float* out, float* att, const float* qkv, int B, int C, int HW, int NH) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * NH * HW) return;
    int i = idx % HW, h = idx / HW % NH, b = idx / (HW * NH), D = C / NH;
    float scale = 1.0f / sqrtf((float)D);
    const float* q = qkv + ((size_t)b * 3 * C + h * D) * HW;
    const float* k = q + (size_t)C * HW;
    const float* v = k + (size_t)C * HW;
    float* p = att + ((size_t)b * NH + h) * HW * HW + (size_t)i * HW;
    float mx = -FLT_MAX;
    for (int j = 0; j < HW; j++) {
        float sc = 0.0f;
        for (int d = 0; d < D; d++) sc += q[d * HW + i] * k[d * HW + j];
        p[j] = sc * scale;
        mx = fmaxf(mx, p[j]);
    }
    float sum = 0.0f;
    for (int j = 0; j < HW; j++) { p[j] = expf(p[j] - mx); sum += p[j]; }
    for (int j = 0; j < HW; j++) p[j] /= sum;
    for (int d = 0; d < D; d++) {
        float o = 0.0f;
        for (int j = 0; j < HW; j++) o += p[j] * v[d * HW + j];
        out[((size_t)b * C + h * D + d) * HW + i] = o;
    }
}

// one thread per (b, h, i): the row i of dS into ds (B, NH, HW, HW)
__global__ static void attention_dscores_naive_kernel(float* ds, const float* dout, const float* qkv, const float* att,
                                                      int B, int C, int HW, int NH) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * NH * HW) return;
    int i = idx % HW, h = idx / HW % NH, b = idx / (HW * NH), D = C / NH;
    float scale = 1.0f / sqrtf((float)D);
    const float* v = qkv + ((size_t)b * 3 * C + 2 * C + h * D) * HW;
    const float* dO = dout + ((size_t)b * C + h * D) * HW;
    const float* p = att + ((size_t)b * NH + h) * HW * HW + (size_t)i * HW;
    float* r = ds + ((size_t)b * NH + h) * HW * HW + (size_t)i * HW;
    float dot = 0.0f;
    for (int j = 0; j < HW; j++) {
        float dp = 0.0f;
        for (int d = 0; d < D; d++) dp += dO[d * HW + i] * v[d * HW + j];
        r[j] = dp;
        dot += dp * p[j];
    }
    for (int j = 0; j < HW; j++) r[j] = p[j] * (r[j] - dot) * scale;
}

// one thread per (b, h, d, t): dQ[d][t], dK[d][t], dV[d][t]
__global__ static void attention_dqkv_naive_kernel(float* dqkv, const float* ds, const float* dout, const float* qkv,
                                                   const float* att, int B, int C, int HW, int NH) {
    int D = C / NH;
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * NH * D * HW) return;
    int t = idx % HW, d = idx / HW % D, h = idx / (HW * D) % NH, b = idx / (HW * D * NH);
    const float* q = qkv + ((size_t)b * 3 * C + h * D) * HW;
    const float* k = q + (size_t)C * HW;
    const float* S = ds + ((size_t)b * NH + h) * HW * HW;
    const float* P = att + ((size_t)b * NH + h) * HW * HW;
    const float* dO = dout + ((size_t)b * C + h * D) * HW;
    float gq = 0.0f, gk = 0.0f, gv = 0.0f;
    for (int j = 0; j < HW; j++) gq += S[t * HW + j] * k[d * HW + j];
    for (int i = 0; i < HW; i++) {
        gk += S[i * HW + t] * q[d * HW + i];
        gv += P[i * HW + t] * dO[d * HW + i];
    }
    float* dq = dqkv + ((size_t)b * 3 * C + h * D + d) * HW + t;
    dq[0] = gq;
    dq[(size_t)C * HW] = gk;
    dq[(size_t)2 * C * HW] = gv;
}

// ----------------------------------------------------------------------------
// version 3: fused, one block per (b, h), everything in shared memory
// Layouts in shared memory: Q, K, V, dO as (D, HW) like their global blocks (loaded with coalesced,
// contiguous copies); S, P, dS as (HW, HW + 1): threads of a warp that walk down a column i of the
// padded rows touch 32 different banks.

static const int ATT_FUSED_BLOCK = 128;

// copy n contiguous floats global -> shared, the whole block
__device__ static inline void block_copy(float* dst, const float* src, int n) {
    for (int i = threadIdx.x; i < n; i += blockDim.x) dst[i] = src[i];
}

__global__ static void attention_forward_fused_kernel(float* out, float* att, const float* qkv, int C, int HW, int NH) {
    extern __shared__ float sm[];
    int b = blockIdx.x / NH, h = blockIdx.x % NH, D = C / NH, L = HW + 1;
    float* Q = sm;
    float* K = Q + D * HW;
    float* V = K + D * HW;
    float* P = V + D * HW;  // (HW, HW + 1): scores, then probabilities
    const float* q = qkv + ((size_t)b * 3 * C + h * D) * HW;
    block_copy(Q, q, D * HW);
    block_copy(K, q + (size_t)C * HW, D * HW);
    block_copy(V, q + (size_t)2 * C * HW, D * HW);
    __syncthreads();
    float scale = 1.0f / sqrtf((float)D);
    for (int e = threadIdx.x; e < HW * HW; e += blockDim.x) {
        int i = e / HW, j = e % HW;
        float sc = 0.0f;
        for (int d = 0; d < D; d++) sc += Q[d * HW + i] * K[d * HW + j];
        P[i * L + j] = sc * scale;
    }
    __syncthreads();
    // softmax: one warp per row, each lane a strided part of it
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    float* att_bh = att + (size_t)blockIdx.x * HW * HW;
    for (int i = warp; i < HW; i += nwarps) {
        float mx = -FLT_MAX;
        for (int j = lane; j < HW; j += 32) mx = fmaxf(mx, P[i * L + j]);
        for (int o = 16; o > 0; o /= 2) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
        float sum = 0.0f;
        for (int j = lane; j < HW; j += 32) { float e = expf(P[i * L + j] - mx); P[i * L + j] = e; sum += e; }
        sum = reduce_warp_sum(sum);
        float inv = 1.0f / sum;
        for (int j = lane; j < HW; j += 32) {
            float p = P[i * L + j] * inv;
            P[i * L + j] = p;
            att_bh[i * HW + j] = p;
        }
    }
    __syncthreads();
    float* o = out + ((size_t)b * C + h * D) * HW;
    for (int e = threadIdx.x; e < D * HW; e += blockDim.x) {
        int d = e / HW, i = e % HW;
        float acc = 0.0f;
        for (int j = 0; j < HW; j++) acc += P[i * L + j] * V[d * HW + j];
        o[e] = acc;
    }
}

__global__ static void attention_backward_fused_kernel(float* dqkv, const float* dout, const float* qkv, const float* att,
                                                       int C, int HW, int NH) {
    extern __shared__ float sm[];
    int b = blockIdx.x / NH, h = blockIdx.x % NH, D = C / NH, L = HW + 1;
    float* Q = sm;
    float* K = Q + D * HW;
    float* V = K + D * HW;
    float* dO = V + D * HW;
    float* P = dO + D * HW;  // (HW, HW + 1)
    float* dS = P + HW * L;  // (HW, HW + 1)
    const float* q = qkv + ((size_t)b * 3 * C + h * D) * HW;
    block_copy(Q, q, D * HW);
    block_copy(K, q + (size_t)C * HW, D * HW);
    block_copy(V, q + (size_t)2 * C * HW, D * HW);
    block_copy(dO, dout + ((size_t)b * C + h * D) * HW, D * HW);
    const float* att_bh = att + (size_t)blockIdx.x * HW * HW;
    for (int e = threadIdx.x; e < HW * HW; e += blockDim.x) P[(e / HW) * L + e % HW] = att_bh[e];
    __syncthreads();
    // dS row i: dP_ij = sum_d dO[d][i] V[d][j], then P_ij (dP_ij - sum_j dP_ij P_ij) / sqrt(D); each lane
    // rewrites only the entries it wrote, so the row needs no barrier
    float scale = 1.0f / sqrtf((float)D);
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    for (int i = warp; i < HW; i += nwarps) {
        float dot = 0.0f;
        for (int j = lane; j < HW; j += 32) {
            float dp = 0.0f;
            for (int d = 0; d < D; d++) dp += dO[d * HW + i] * V[d * HW + j];
            dS[i * L + j] = dp;
            dot += dp * P[i * L + j];
        }
        dot = reduce_warp_sum(dot);
        for (int j = lane; j < HW; j += 32) dS[i * L + j] = P[i * L + j] * (dS[i * L + j] - dot) * scale;
    }
    __syncthreads();
    float* dq = dqkv + ((size_t)b * 3 * C + h * D) * HW;
    float* dk = dq + (size_t)C * HW;
    float* dv = dk + (size_t)C * HW;
    for (int e = threadIdx.x; e < D * HW; e += blockDim.x) {
        int d = e / HW, t = e % HW;
        float gq = 0.0f, gk = 0.0f, gv = 0.0f;
        for (int j = 0; j < HW; j++) gq += dS[t * L + j] * K[d * HW + j];
        for (int i = 0; i < HW; i++) {
            gk += dS[i * L + t] * Q[d * HW + i];
            gv += P[i * L + t] * dO[d * HW + i];
        }
        dq[e] = gq;
        dk[e] = gk;
        dv[e] = gv;
    }
}

static size_t fused_forward_smem(int D, int HW) { return (3 * (size_t)D * HW + (size_t)HW * (HW + 1)) * sizeof(float); }
static size_t fused_backward_smem(int D, int HW) { return (4 * (size_t)D * HW + 2 * (size_t)HW * (HW + 1)) * sizeof(float); }

// allow the dynamic shared memory a shape needs (above 48 KB is an opt-in per kernel)
static void fused_smem_check(const void* kernel, size_t bytes, const AttnShape& s) {
    if (bytes > g_lab_prop.sharedMemPerBlockOptin) {
        fprintf(stderr, "Error: the fused attention of %d tokens, head dim %d needs %zu bytes of shared memory; "
                        "this GPU allows %zu.\nHINT: the fused kernels are for the U-Net's small attention "
                        "resolutions (HW <= 64, D <= 64).\n", s.HW, s.C / s.NH, bytes, g_lab_prop.sharedMemPerBlockOptin);
        exit(EXIT_FAILURE);
    }
    cudaCheck(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)bytes));
}

// ----------------------------------------------------------------------------
// the lab

typedef struct {
    AttnShape s;
    size_t n_qkv, n_out, n_att;
    const float *qkv, *dout;
    float *out, *att, *dqkv, *datt;  // datt: the backward's (B, NH, HW, HW) scratch
} AttnLab;

static void attn_v1_forward(AttnLab* L) {
    const AttnShape& s = L->s;
    attention_forward_naive_kernel<<<ceil_div(s.B * s.NH * s.HW, 128), 128>>>(L->out, L->att, L->qkv, s.B, s.C, s.HW, s.NH);
    launch_check();
}

static void attn_v1_backward(AttnLab* L) {
    const AttnShape& s = L->s;
    attention_dscores_naive_kernel<<<ceil_div(s.B * s.NH * s.HW, 128), 128>>>(L->datt, L->dout, L->qkv, L->att, s.B, s.C,
                                                                              s.HW, s.NH);
    launch_check();
    attention_dqkv_naive_kernel<<<ceil_div(s.B * s.C * s.HW, 128), 128>>>(L->dqkv, L->datt, L->dout, L->qkv, L->att, s.B,
                                                                          s.C, s.HW, s.NH);
    launch_check();
}

static void attn_v2_forward(AttnLab* L) {
    const AttnShape& s = L->s;
    attention_forward_cuda(L->out, L->att, L->qkv, s.B, s.C, s.HW, s.NH);
}

static void attn_v2_backward(AttnLab* L) {
    const AttnShape& s = L->s;
    attention_backward_cuda(L->dqkv, L->datt, L->dout, L->qkv, L->att, s.B, s.C, s.HW, s.NH);
}

static void attn_v3_forward(AttnLab* L) {
    const AttnShape& s = L->s;
    size_t smem = fused_forward_smem(s.C / s.NH, s.HW);
    fused_smem_check((const void*)attention_forward_fused_kernel, smem, s);
    attention_forward_fused_kernel<<<s.B * s.NH, ATT_FUSED_BLOCK, smem>>>(L->out, L->att, L->qkv, s.C, s.HW, s.NH);
    launch_check();
}

static void attn_v3_backward(AttnLab* L) {
    const AttnShape& s = L->s;
    size_t smem = fused_backward_smem(s.C / s.NH, s.HW);
    fused_smem_check((const void*)attention_backward_fused_kernel, smem, s);
    attention_backward_fused_kernel<<<s.B * s.NH, ATT_FUSED_BLOCK, smem>>>(L->dqkv, L->dout, L->qkv, L->att, s.C, s.HW, s.NH);
    launch_check();
}

typedef struct {
    const char* name;
    void (*forward)(AttnLab*);
    void (*backward)(AttnLab*);  // reads the att of the forward before it; dqkv overwritten
} AttnVersion;

static const AttnVersion VERSIONS[] = {
    {"naive, thread per row", attn_v1_forward, attn_v1_backward},
    {"batched cuBLAS + softmax kernels (shipped)", attn_v2_forward, attn_v2_backward},
    {"fused, block per (image, head)", attn_v3_forward, attn_v3_backward},
};
#define NVERSIONS ((int)(sizeof(VERSIONS) / sizeof(VERSIONS[0])))
#define SHIPPED 2

static const double TOL_FWD = 1e-5, TOL_BWD = 1e-4;

// the shipped softmax kernels alone on random score rows: validated here, timed by main
typedef struct { float *s, *p, *datt, *ds; size_t rows; int HW; float scale; } SoftmaxLab;

static void softmax_forward_shipped(SoftmaxLab* S) {
    int block = 256;  // 8 rows per block, as attention_forward_cuda launches it
    cudaCheck(cudaMemcpy(S->p, S->s, S->rows * S->HW * sizeof(float), cudaMemcpyDeviceToDevice));
    attention_softmax_forward_kernel<<<ceil_div((int)S->rows, block / 32), block>>>(S->p, (int)S->rows, S->HW, S->scale);
    launch_check();
}

static void softmax_backward_shipped(SoftmaxLab* S) {
    int block = 256;
    cudaCheck(cudaMemcpy(S->ds, S->datt, S->rows * S->HW * sizeof(float), cudaMemcpyDeviceToDevice));
    attention_softmax_backward_kernel<<<ceil_div((int)S->rows, block / 32), block>>>(S->ds, S->p, (int)S->rows, S->HW,
                                                                                    S->scale);
    launch_check();
}

static double validate_softmax(SoftmaxLab* S, const AttnShape& s) {
    size_t n = S->rows * S->HW;
    float* hs = make_random_normal(n, 21, 3.0f);
    float* hd = make_random_normal(n, 22, 1.0f);
    float* hp = (float*)mallocCheck(n * sizeof(float));
    float* hds = (float*)mallocCheck(n * sizeof(float));
    softmax_forward_ref(hs, hp, S->rows, s.HW, S->scale);
    cudaCheck(cudaMemcpy(S->s, hs, n * sizeof(float), cudaMemcpyHostToDevice));
    cudaCheck(cudaMemcpy(S->datt, hd, n * sizeof(float), cudaMemcpyHostToDevice));
    softmax_forward_shipped(S);
    double e = validate_result("softmax forward", S->p, hp, n, TOL_FWD);
    // the backward from the device probabilities, so that it is checked on its own
    float* dp = from_device(S->p, n);
    softmax_backward_ref(hd, dp, hds, S->rows, s.HW, S->scale);
    softmax_backward_shipped(S);
    e = fmax(e, validate_result("softmax backward", S->ds, hds, n, TOL_BWD));
    free(hs); free(hd); free(hp); free(hds); free(dp);
    return e;
}

int main(int argc, char** argv) {
    LabArgs args = lab_parse_args(argc, argv, NVERSIONS, SHIPPED);
    lab_init("attention lab");
    PresetShapes* shapes = preset_shapes();
    printf("versions:");
    for (int v = 1; v <= NVERSIONS; v++) printf("  %d %s", v, VERSIONS[v - 1].name);
    printf("\nvalidation: worst error over out/att (tol %.0e) and dqkv (tol %.0e) per version; sm = the shipped "
           "softmax kernels alone\n", TOL_FWD, TOL_BWD);
    std::vector<int> picked;
    for (int i = 0; i < shapes->nattn; i++) {
        if (lab_selected(&args, shapes->attn[i].where)) picked.push_back(i);
    }
    size_t nt = picked.size() * NVERSIONS;
    std::vector<double> t_fwd(nt), t_bwd(nt), t_smf(picked.size()), t_smb(picked.size());
    for (size_t si = 0; si < picked.size(); si++) {
        const AttnShape& s = shapes->attn[picked[si]];
        AttnLab L = {};
        L.s = s;
        L.n_qkv = (size_t)s.B * 3 * s.C * s.HW;
        L.n_out = (size_t)s.B * s.C * s.HW;
        L.n_att = (size_t)s.B * s.NH * s.HW * s.HW;
        float* hqkv = make_random_normal(L.n_qkv, 1, 1.0f);
        float* hdout = make_random_normal(L.n_out, 2, 1.0f);
        float* rout = (float*)mallocCheck(L.n_out * sizeof(float));
        float* ratt = (float*)mallocCheck(L.n_att * sizeof(float));
        float* rdqkv = (float*)mallocCheck(L.n_qkv * sizeof(float));
        attention_forward_ref(s, hqkv, rout, ratt);
        attention_backward_ref(s, hdout, hqkv, ratt, rdqkv);
        L.qkv = to_device(hqkv, L.n_qkv);
        L.dout = to_device(hdout, L.n_out);
        L.out = device_floats(L.n_out);
        L.att = device_floats(L.n_att);
        L.dqkv = device_floats(L.n_qkv);
        L.datt = device_floats(L.n_att);
        printf("[%zu/%zu] %-28s B%-3d C%-3d HW%-2d heads %d (D %d) x%-2d |", si + 1, picked.size(), s.where, s.B, s.C, s.HW,
               s.NH, s.C / s.NH, s.uses);
        char what[64];
        for (int v = 1; v <= NVERSIONS; v++) {
            VERSIONS[v - 1].forward(&L);
            VERSIONS[v - 1].backward(&L);
            cudaCheck(cudaDeviceSynchronize());
            double e = 0.0;
            snprintf(what, sizeof(what), "v%d out", v);
            e = fmax(e, validate_result(what, L.out, rout, L.n_out, TOL_FWD));
            snprintf(what, sizeof(what), "v%d att", v);
            e = fmax(e, validate_result(what, L.att, ratt, L.n_att, TOL_FWD));
            snprintf(what, sizeof(what), "v%d dqkv", v);
            e = fmax(e, validate_result(what, L.dqkv, rdqkv, L.n_qkv, TOL_BWD));
            printf(" v%d %.1e", v, e);
        }
        SoftmaxLab S = {device_floats(L.n_att), device_floats(L.n_att), device_floats(L.n_att), device_floats(L.n_att),
                        (size_t)s.B * s.NH * s.HW, s.HW, 1.0f / sqrtf((float)(s.C / s.NH))};
        printf(" sm %.1e\n", validate_softmax(&S, s));
        lab_print_failures();
        for (int v = 1; v <= NVERSIONS; v++) {
            if (!lab_timed(&args, v, SHIPPED)) continue;
            t_fwd[si * NVERSIONS + v - 1] = benchmark_kernel(args.repeats, [&] { VERSIONS[v - 1].forward(&L); });
            t_bwd[si * NVERSIONS + v - 1] = benchmark_kernel(args.repeats, [&] { VERSIONS[v - 1].backward(&L); });
        }
        // the device-to-device copy that keeps the input intact is part of these times (rows * HW floats each)
        t_smf[si] = benchmark_kernel(args.repeats, [&] { softmax_forward_shipped(&S); });
        t_smb[si] = benchmark_kernel(args.repeats, [&] { softmax_backward_shipped(&S); });
        const float* d[] = {L.qkv, L.dout, L.out, L.att, L.dqkv, L.datt, S.s, S.p, S.datt, S.ds};
        for (const float* p : d) cudaCheck(cudaFree((void*)p));
        free(hqkv); free(hdout); free(rout); free(ratt); free(rdqkv);
    }

    printf("\ntimings: median of %d calls, L2 flushed; us and effective GB/s; softmax = the shipped row kernels alone "
           "(with a copy restoring their in-place input)\n", args.repeats);
    printf("%-28s %-27s | %-13s | %-13s | fwd+bwd vs v%d | softmax fwd, bwd\n", "shape", "", "fwd", "bwd", SHIPPED);
    for (size_t si = 0; si < picked.size(); si++) {
        const AttnShape& s = shapes->attn[picked[si]];
        double n_qkv = (double)s.B * 3 * s.C * s.HW, n_out = (double)s.B * s.C * s.HW, n_att = (double)s.B * s.NH * s.HW * s.HW;
        double fwd_bytes = 4 * (n_qkv + n_out + n_att), bwd_bytes = 4 * (2 * n_qkv + n_att + n_out);
        size_t base = si * NVERSIONS + SHIPPED - 1;
        for (int v = 1; v <= NVERSIONS; v++) {
            if (!lab_timed(&args, v, SHIPPED)) continue;
            size_t k = si * NVERSIONS + v - 1;
            printf("%-28s B%-3d C%-3d HW%-2d D%-2d v%d      | %6.1f %6.0f | %6.1f %6.0f | %14.2f | %5.1f %5.1f\n", s.where, s.B,
                   s.C, s.HW, s.C / s.NH, v, t_fwd[k], gbps(fwd_bytes, t_fwd[k]), t_bwd[k], gbps(bwd_bytes, t_bwd[k]),
                   (t_fwd[base] + t_bwd[base]) / (t_fwd[k] + t_bwd[k]), t_smf[si], t_smb[si]);
        }
    }
    free(shapes);
    return lab_finish();
}
