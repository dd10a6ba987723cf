/*
Kernel lab: GroupNorm (ldmc/groupnorm.cuh) as the models run it — with the SiLU after it (NormSilu) and,
in the U-Net ResBlocks' second norm, the per-channel time embedding added to its input first:

  h = x + temb[b, c]  (temb layers only)     y = GroupNorm_G(h) * weight[c] + bias[c]     act = silu(y) (NormSilu)
  x, act (B, C, HW); temb (B, C); mean, rstd (B, G) kept for the backward
  backward: dact -> dy = dact * silu'(y) -> dx (= dh), dweight += sum dy * xhat, dbias += sum dy,
            dtemb[b, c] = sum over HW of dx (overwritten)

Versions (version 2 is what the models run today, from ldmc/ included read-only):
  1  naive GroupNorm: one thread per (b, g) walks its group (two passes for the statistics, one to
     normalise; backward the same, then one thread per channel for dweight/dbias); the time-embedding
     add and the SiLU are the shipped elementwise kernels
  2  SHIPPED: broadcast_add_forward_cuda (in place) + groupnorm_forward_cuda + silu_forward_cuda, and
     silu_backward_cuda + groupnorm_backward_cuda + broadcast_add_backward_cuda: one block per (b, g),
     float4, the shifted one-pass statistics, per-(b, c) partial sums reduced in a fixed order
  3  fused GroupNorm + SiLU (+ time embedding), new in this lab: the forward reads x (and temb) once for
     the statistics and once to write act — no h written back, no normalised copy xn stored, no separate
     SiLU pass; the backward recomputes h, xhat, y and silu'(y) from x, temb, mean and rstd instead of
     reading a stored xn, and produces dtemb from the same pass (one warp per channel, so the per-channel
     sums of dx are warp reductions). It reuses the shipped groupnorm_backward_params_kernel for the
     fixed-order dweight/dbias reduction. A model using it would keep x, temb, mean and rstd per NormSilu
     instead of xn and act's input.
Versions 1 and 3 have never run on a GPU (written where none was lent): expect to debug them on the
first run. They do pass make -C dev/cuda emu (the CPU emulator of dev/cuda/emu,
small shapes), which checks indexing, barriers and fragment layouts, not speed, races or alignment.

Validation: every version on every GroupNorm shape of the presets (dev/cuda/shapes.h, batch sizes
64..512) against the plain CPU reference (loops in double, whole tensors). Error = max |got - ref| /
max |ref|; tolerance 1e-5 for the forward (act, mean, rstd), 1e-4 for the backward (long fp32 sums).
Timing: forward and backward per version; GB/s counts the bytes the fused kernels must move (forward:
read x, write act; backward: read dact and x, write dx — temb, mean, rstd and the parameters are
negligible), the same number for every version, so it compares time.

Build and run (a GPU is needed to run; without one the lab says so and exits 0):
  make -C dev/cuda groupnorm
  dev/cuda/groupnorm           # validate all versions, time version 2 (shipped)
  dev/cuda/groupnorm 3         # ... and time version 3 next to it
  dev/cuda/groupnorm all --only unet
*/
#include "common.h"
#include "shapes.h"
#include "ldmc/groupnorm.cuh"
#include "ldmc/elementwise.cuh"
#include "ldmc/embedding.cuh"

// ----------------------------------------------------------------------------
// CPU reference (whole tensors, double)

// act (B, C, HW), mean/rstd (B, G); temb may be NULL
static void norm_forward_ref(const NormShape& s, const float* x, const float* temb, const float* w, const float* bias,
                             float* act, float* mean, float* rstd) {
    int Cg = s.C / s.G;
    #pragma omp parallel for
    for (int bg = 0; bg < s.B * s.G; bg++) {
        int b = bg / s.G, g = bg % s.G;
        double sum = 0.0, sq = 0.0, n = (double)Cg * s.HW;
        for (int c = g * Cg; c < (g + 1) * Cg; c++) {
            for (int i = 0; i < s.HW; i++) sum += x[((size_t)b * s.C + c) * s.HW + i] + (temb ? temb[b * s.C + c] : 0.0);
        }
        double m = sum / n;
        for (int c = g * Cg; c < (g + 1) * Cg; c++) {
            for (int i = 0; i < s.HW; i++) {
                double dh = x[((size_t)b * s.C + c) * s.HW + i] + (temb ? temb[b * s.C + c] : 0.0) - m;
                sq += dh * dh;
            }
        }
        double rs = 1.0 / sqrt(sq / n + GROUPNORM_EPS);
        mean[bg] = (float)m;
        rstd[bg] = (float)rs;
        for (int c = g * Cg; c < (g + 1) * Cg; c++) {
            for (int i = 0; i < s.HW; i++) {
                size_t k = ((size_t)b * s.C + c) * s.HW + i;
                double y = (x[k] + (temb ? temb[b * s.C + c] : 0.0) - m) * rs * w[c] + bias[c];
                act[k] = (float)(s.silu ? y / (1.0 + exp(-y)) : y);
            }
        }
    }
}

// dx (B, C, HW) and dtemb (B, C) overwritten, dweight/dbias (C) overwritten; mean/rstd from the reference forward
static void norm_backward_ref(const NormShape& s, const float* dact, const float* x, const float* temb, const float* w,
                              const float* bias, const float* mean, const float* rstd, float* dx, float* dweight,
                              float* dbias, float* dtemb) {
    int Cg = s.C / s.G;
    size_t n_all = (size_t)s.B * s.C * s.HW;
    double* dy = (double*)mallocCheck(n_all * sizeof(double));  // gradient at y = GroupNorm output
    double* xh = (double*)mallocCheck(n_all * sizeof(double));  // xhat
    #pragma omp parallel for
    for (int bc = 0; bc < s.B * s.C; bc++) {
        int b = bc / s.C, c = bc % s.C, bg = b * s.G + c / Cg;
        for (int i = 0; i < s.HW; i++) {
            size_t k = (size_t)bc * s.HW + i;
            xh[k] = (x[k] + (temb ? temb[bc] : 0.0) - mean[bg]) * (double)rstd[bg];
            double y = xh[k] * w[c] + bias[c];
            double sg = 1.0 / (1.0 + exp(-y));
            dy[k] = s.silu ? dact[k] * sg * (1.0 + y * (1.0 - sg)) : dact[k];
        }
    }
    // dx = rstd * (g - mean(g) - xhat * mean(g * xhat)) with g = dy * weight, means over the group
    #pragma omp parallel for
    for (int bg = 0; bg < s.B * s.G; bg++) {
        int b = bg / s.G, g = bg % s.G;
        double sg = 0.0, sgx = 0.0, n = (double)Cg * s.HW;
        for (int c = g * Cg; c < (g + 1) * Cg; c++) {
            for (int i = 0; i < s.HW; i++) {
                size_t k = ((size_t)b * s.C + c) * s.HW + i;
                sg += dy[k] * w[c];
                sgx += dy[k] * w[c] * xh[k];
            }
        }
        for (int c = g * Cg; c < (g + 1) * Cg; c++) {
            double st = 0.0;
            for (int i = 0; i < s.HW; i++) {
                size_t k = ((size_t)b * s.C + c) * s.HW + i;
                double d = rstd[bg] * (dy[k] * w[c] - sg / n - xh[k] * sgx / n);
                dx[k] = (float)d;
                st += d;
            }
            if (temb) dtemb[b * s.C + c] = (float)st;
        }
    }
    #pragma omp parallel for
    for (int c = 0; c < s.C; c++) {
        double dw = 0.0, db = 0.0;
        for (int b = 0; b < s.B; b++) {
            for (int i = 0; i < s.HW; i++) {
                size_t k = ((size_t)b * s.C + c) * s.HW + i;
                dw += dy[k] * xh[k];
                db += dy[k];
            }
        }
        dweight[c] = (float)dw;
        dbias[c] = (float)db;
    }
    free(dy);
    free(xh);
}

// ----------------------------------------------------------------------------
// version 1: naive GroupNorm, one thread per (b, g)

__global__ static void groupnorm_forward_naive_kernel(float* out, float* mean, float* rstd, const float* x,
                                                      const float* w, const float* bias, int B, int C, int HW, int G) {
    int bg = blockIdx.x * blockDim.x + threadIdx.x;
    if (bg >= B * G) return;
    int Cg = C / G, N = Cg * HW;
    const float* xg = x + (size_t)bg * N;
    float sum = 0.0f;
    for (int i = 0; i < N; i++) sum += xg[i];
    float m = sum / N, sq = 0.0f;
    for (int i = 0; i < N; i++) sq += (xg[i] - m) * (xg[i] - m);
    float rs = 1.0f / sqrtf(sq / N + GROUPNORM_EPS);
    mean[bg] = m;
    rstd[bg] = rs;
    for (int i = 0; i < N; i++) {
        int c = (bg % G) * Cg + i / HW;
        out[(size_t)bg * N + i] = (xg[i] - m) * rs * w[c] + bias[c];
    }
}

__global__ static void groupnorm_backward_naive_dx_kernel(float* dx, const float* dout, const float* x, const float* mean,
                                                          const float* rstd, const float* w, int B, int C, int HW, int G) {
    int bg = blockIdx.x * blockDim.x + threadIdx.x;
    if (bg >= B * G) return;
    int Cg = C / G, N = Cg * HW;
    const float* xg = x + (size_t)bg * N;
    const float* dg = dout + (size_t)bg * N;
    float m = mean[bg], rs = rstd[bg], sg = 0.0f, sgx = 0.0f;
    for (int i = 0; i < N; i++) {
        float gi = dg[i] * w[(bg % G) * Cg + i / HW];
        sg += gi;
        sgx += gi * (xg[i] - m) * rs;
    }
    for (int i = 0; i < N; i++) {
        float gi = dg[i] * w[(bg % G) * Cg + i / HW];
        dx[(size_t)bg * N + i] = rs * (gi - sg / N - (xg[i] - m) * rs * sgx / N);
    }
}

__global__ static void groupnorm_backward_naive_params_kernel(float* dweight, float* dbias, const float* dout,
                                                              const float* x, const float* mean, const float* rstd,
                                                              int B, int C, int HW, int G) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= C) return;
    float dw = 0.0f, db = 0.0f;
    for (int b = 0; b < B; b++) {
        int bg = b * G + c / (C / G);
        for (int i = 0; i < HW; i++) {
            size_t k = ((size_t)b * C + c) * HW + i;
            dw += dout[k] * (x[k] - mean[bg]) * rstd[bg];
            db += dout[k];
        }
    }
    dweight[c] += dw;
    dbias[c] += db;
}

// ----------------------------------------------------------------------------
// version 3: fused GroupNorm + SiLU (+ time embedding), one block per (b, g)

static const int GN_FUSED_BLOCK = 256;

// y = GroupNorm output of one element; h = x + t
__device__ static inline float gn_affine(float h, float m, float rs, float w, float bias) { return (h - m) * rs * w + bias; }

// Forward: the statistics of h = x + temb with the shifted one-pass sums of the shipped kernel (shift
// K = the group's first h), then one more read of x to write act = silu(y). Threads stride over the
// group's contiguous N values V at a time; V = 4 keeps the 4 values inside one channel (HW % 4 == 0).
template <int V, bool SILU, bool TEMB>
__global__ static void gn_silu_forward_kernel(float* act, float* mean, float* rstd, const float* x, const float* temb,
                                              const float* w, const float* bias, int C, int HW, int G) {
    int bg = blockIdx.x, b = bg / G, g = bg % G, Cg = C / G, N = Cg * HW;
    const float* xg = x + (size_t)bg * N;
    const float* tg = TEMB ? temb + (size_t)b * C + g * Cg : NULL;  // the group's Cg time-embedding values
    float K = xg[0] + (TEMB ? tg[0] : 0.0f);
    float s1 = 0.0f, s2 = 0.0f;
    for (int i = threadIdx.x * V; i < N; i += blockDim.x * V) {
        float r[V];
        load_vec<V>(r, xg + i);
        float t = TEMB ? tg[i / HW] : 0.0f;
        for (int k = 0; k < V; k++) { float d = r[k] + t - K; s1 += d; s2 += d * d; }
    }
    s1 = reduce_block_sum(s1);
    s2 = reduce_block_sum(s2);
    float shift_mean = s1 / N;
    float m = K + shift_mean;
    float rs = 1.0f / sqrtf(fmaxf(s2 / N - shift_mean * shift_mean, 0.0f) + GROUPNORM_EPS);
    if (threadIdx.x == 0) { mean[bg] = m; rstd[bg] = rs; }
    float* ag = act + (size_t)bg * N;
    for (int i = threadIdx.x * V; i < N; i += blockDim.x * V) {
        int cc = i / HW, c = g * Cg + cc;
        float t = TEMB ? tg[cc] : 0.0f, wc = w[c], bc = bias[c];
        float r[V];
        load_vec<V>(r, xg + i);
        for (int k = 0; k < V; k++) {
            float y = gn_affine(r[k] + t, m, rs, wc, bc);
            r[k] = SILU ? silu_value(y) : y;
        }
        store_vec<V>(ag + i, r);
    }
}

// Backward: one warp per channel of the group, twice. Pass 1 recomputes y and dy = dact * silu'(y)
// and sums dy * xhat and dy over the channel: these per-(b, c) sums go to `partial` for dweight/dbias
// (reduced over b by the shipped params kernel) and, weighted by weight[c], make the group sums behind
// dx. Pass 2 recomputes dy again and writes dx; its per-channel sum is dtemb[b, c].
template <int V, bool SILU, bool TEMB>
__global__ static void gn_silu_backward_kernel(float* dx, float* partial, float* dtemb, const float* dact, const float* x,
                                               const float* temb, const float* mean, const float* rstd, const float* w,
                                               const float* bias, int C, int HW, int G) {
    int bg = blockIdx.x, b = bg / G, g = bg % G, Cg = C / G, N = Cg * HW;
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32, nwarps = blockDim.x / 32;
    float m = mean[bg], rs = rstd[bg];
    const float* xg = x + (size_t)bg * N;
    const float* dg = dact + (size_t)bg * N;
    float sum_g = 0.0f, sum_gx = 0.0f;  // this warp's share of sum(dy * w) and sum(dy * w * xhat)
    for (int cc = warp; cc < Cg; cc += nwarps) {
        int c = g * Cg + cc;
        float t = TEMB ? temb[(size_t)b * C + c] : 0.0f, wc = w[c], bc = bias[c];
        float sdx = 0.0f, sd = 0.0f;
        for (int i = lane * V; i < HW; i += 32 * V) {
            float rx[V], rd[V];
            load_vec<V>(rx, xg + (size_t)cc * HW + i);
            load_vec<V>(rd, dg + (size_t)cc * HW + i);
            for (int k = 0; k < V; k++) {
                float xhat = (rx[k] + t - m) * rs;
                float dy = SILU ? silu_grad_value(rd[k], xhat * wc + bc) : rd[k];
                sdx += dy * xhat;
                sd += dy;
            }
        }
        sdx = reduce_warp_sum(sdx);
        sd = reduce_warp_sum(sd);
        if (lane == 0) {
            partial[((size_t)b * C + c) * 2 + 0] = sdx;
            partial[((size_t)b * C + c) * 2 + 1] = sd;
        }
        sum_gx += wc * sdx;
        sum_g += wc * sd;
    }
    sum_g = reduce_block_sum(lane == 0 ? sum_g : 0.0f);  // every lane holds its warp's sum: count it once
    sum_gx = reduce_block_sum(lane == 0 ? sum_gx : 0.0f);
    float mean_g = sum_g / N, mean_gx = sum_gx / N;
    float* dxg = dx + (size_t)bg * N;
    for (int cc = warp; cc < Cg; cc += nwarps) {
        int c = g * Cg + cc;
        float t = TEMB ? temb[(size_t)b * C + c] : 0.0f, wc = w[c], bc = bias[c];
        float st = 0.0f;
        for (int i = lane * V; i < HW; i += 32 * V) {
            float rx[V], rd[V], r[V];
            load_vec<V>(rx, xg + (size_t)cc * HW + i);
            load_vec<V>(rd, dg + (size_t)cc * HW + i);
            for (int k = 0; k < V; k++) {
                float xhat = (rx[k] + t - m) * rs;
                float dy = SILU ? silu_grad_value(rd[k], xhat * wc + bc) : rd[k];
                r[k] = rs * (dy * wc - mean_g - xhat * mean_gx);
                st += r[k];
            }
            store_vec<V>(dxg + (size_t)cc * HW + i, r);
        }
        if (TEMB) {
            st = reduce_warp_sum(st);
            if (lane == 0) dtemb[(size_t)b * C + c] = st;
        }
    }
}

// ----------------------------------------------------------------------------
// the lab: buffers of one shape, the versions

typedef struct {
    NormShape s;
    size_t n;                          // B * C * HW
    const float *x, *temb, *w, *bias;  // inputs (temb NULL unless s.temb)
    const float* dact;                 // the gradient reaching act
    float* h;                          // versions 1-2: x + temb, added in place as the model does
    float *xn, *dy;                    // versions 1-2: the GroupNorm output, the gradient at it
    float *act, *mean, *rstd;          // forward results
    float *dx, *dweight, *dbias, *dtemb;  // backward results
    float* partial;                    // version 3: (B, C, 2) per-channel sums
} NormLab;

static void norm_v1_forward(NormLab* L) {
    const NormShape& s = L->s;
    if (s.temb) broadcast_add_forward_cuda(L->h, L->temb, s.B, s.C, s.HW);
    float* y = s.silu ? L->xn : L->act;
    groupnorm_forward_naive_kernel<<<ceil_div(s.B * s.G, 64), 64>>>(y, L->mean, L->rstd, L->h, L->w, L->bias, s.B, s.C,
                                                                    s.HW, s.G);
    launch_check();
    if (s.silu) silu_forward_cuda(L->act, L->xn, L->n);
}

static void norm_v1_backward(NormLab* L) {
    const NormShape& s = L->s;
    const float* dy = L->dact;
    if (s.silu) { silu_backward_cuda(L->dy, L->dact, L->xn, L->n); dy = L->dy; }
    groupnorm_backward_naive_dx_kernel<<<ceil_div(s.B * s.G, 64), 64>>>(L->dx, dy, L->h, L->mean, L->rstd, L->w, s.B,
                                                                        s.C, s.HW, s.G);
    launch_check();
    groupnorm_backward_naive_params_kernel<<<ceil_div(s.C, 64), 64>>>(L->dweight, L->dbias, dy, L->h, L->mean, L->rstd,
                                                                      s.B, s.C, s.HW, s.G);
    launch_check();
    if (s.temb) broadcast_add_backward_cuda(L->dtemb, L->dx, s.B, s.C, s.HW);
}

static void norm_v2_forward(NormLab* L) {
    const NormShape& s = L->s;
    if (s.temb) broadcast_add_forward_cuda(L->h, L->temb, s.B, s.C, s.HW);
    float* y = s.silu ? L->xn : L->act;
    groupnorm_forward_cuda(y, L->mean, L->rstd, L->h, L->w, L->bias, s.B, s.C, s.HW, s.G);
    if (s.silu) silu_forward_cuda(L->act, L->xn, L->n);
}

static void norm_v2_backward(NormLab* L) {
    const NormShape& s = L->s;
    const float* dy = L->dact;
    if (s.silu) { silu_backward_cuda(L->dy, L->dact, L->xn, L->n); dy = L->dy; }
    groupnorm_backward_cuda(L->dx, L->dweight, L->dbias, dy, L->h, L->mean, L->rstd, L->w, s.B, s.C, s.HW, s.G);
    if (s.temb) broadcast_add_backward_cuda(L->dtemb, L->dx, s.B, s.C, s.HW);
}

template <int V, bool SILU, bool TEMB>
static void norm_v3_run(NormLab* L, int backward) {
    const NormShape& s = L->s;
    if (!backward) {
        gn_silu_forward_kernel<V, SILU, TEMB><<<s.B * s.G, GN_FUSED_BLOCK>>>(L->act, L->mean, L->rstd, L->x, L->temb,
                                                                           L->w, L->bias, s.C, s.HW, s.G);
        launch_check();
        return;
    }
    gn_silu_backward_kernel<V, SILU, TEMB><<<s.B * s.G, GN_FUSED_BLOCK>>>(L->dx, L->partial, L->dtemb, L->dact, L->x,
                                                                        L->temb, L->mean, L->rstd, L->w, L->bias, s.C,
                                                                        s.HW, s.G);
    launch_check();
    groupnorm_backward_params_kernel<<<ceil_div(s.C, 128), 128>>>(L->dweight, L->dbias, L->partial, s.B, s.C);
    launch_check();
}

// the template instance for this shape: float4 when HW % 4 == 0 (cudaMalloc'd buffers are aligned)
template <int V>
static void norm_v3_pick(NormLab* L, int backward) {
    const NormShape& s = L->s;
    if (s.silu && s.temb) norm_v3_run<V, true, true>(L, backward);
    else if (s.silu) norm_v3_run<V, true, false>(L, backward);
    else if (s.temb) norm_v3_run<V, false, true>(L, backward);
    else norm_v3_run<V, false, false>(L, backward);
}

static void norm_v3_forward(NormLab* L) {
    if (L->s.HW % 4 == 0) norm_v3_pick<4>(L, 0); else norm_v3_pick<1>(L, 0);
}

static void norm_v3_backward(NormLab* L) {
    if (L->s.HW % 4 == 0) norm_v3_pick<4>(L, 1); else norm_v3_pick<1>(L, 1);
}

typedef struct {
    const char* name;
    void (*forward)(NormLab*);
    void (*backward)(NormLab*);  // dx, dtemb overwritten; dweight, dbias accumulated
} NormVersion;

static const NormVersion VERSIONS[] = {
    {"naive GroupNorm + shipped SiLU/add", norm_v1_forward, norm_v1_backward},
    {"shipped GroupNorm + SiLU + add", norm_v2_forward, norm_v2_backward},
    {"fused GroupNorm+SiLU(+temb), SiLU recomputed", norm_v3_forward, norm_v3_backward},
};
#define NVERSIONS ((int)(sizeof(VERSIONS) / sizeof(VERSIONS[0])))
#define SHIPPED 2

static const double TOL_FWD = 1e-5, TOL_BWD = 1e-4;

typedef struct {
    float *x, *temb, *w, *bias, *dact;                          // host inputs
    float *act, *mean, *rstd, *dx, *dweight, *dbias, *dtemb;   // host reference
} NormHost;

static void norm_lab_alloc(NormLab* L, NormHost* H, const NormShape* s) {
    NormLab z = {};
    *L = z;
    L->s = *s;
    L->n = (size_t)s->B * s->C * s->HW;
    size_t bc = (size_t)s->B * s->C, bg = (size_t)s->B * s->G;
    H->x = make_random_normal(L->n, 1, 2.0f);
    for (size_t i = 0; i < L->n; i++) H->x[i] += 0.5f;  // a mean away from 0 exercises the shifted statistics
    H->temb = s->temb ? make_random_normal(bc, 2, 1.0f) : NULL;
    H->w = make_random_normal(s->C, 3, 0.1f);
    for (int c = 0; c < s->C; c++) H->w[c] += 1.0f;
    H->bias = make_random_normal(s->C, 4, 0.1f);
    H->dact = make_random_normal(L->n, 5, 1.0f);
    H->act = (float*)mallocCheck(L->n * sizeof(float));
    H->mean = (float*)mallocCheck(bg * sizeof(float));
    H->rstd = (float*)mallocCheck(bg * sizeof(float));
    H->dx = (float*)mallocCheck(L->n * sizeof(float));
    H->dweight = (float*)mallocCheck(s->C * sizeof(float));
    H->dbias = (float*)mallocCheck(s->C * sizeof(float));
    H->dtemb = (float*)mallocCheck(bc * sizeof(float));
    norm_forward_ref(*s, H->x, H->temb, H->w, H->bias, H->act, H->mean, H->rstd);
    norm_backward_ref(*s, H->dact, H->x, H->temb, H->w, H->bias, H->mean, H->rstd, H->dx, H->dweight, H->dbias, H->dtemb);

    L->x = to_device(H->x, L->n);
    L->temb = H->temb ? to_device(H->temb, bc) : NULL;
    L->w = to_device(H->w, s->C);
    L->bias = to_device(H->bias, s->C);
    L->dact = to_device(H->dact, L->n);
    L->h = device_floats(L->n);
    L->xn = device_floats(L->n);
    L->dy = device_floats(L->n);
    L->act = device_floats(L->n);
    L->mean = device_floats(bg);
    L->rstd = device_floats(bg);
    L->dx = device_floats(L->n);
    L->dweight = device_floats(s->C);
    L->dbias = device_floats(s->C);
    L->dtemb = device_floats(bc);
    L->partial = device_floats(bc * 2);
}

static void norm_lab_free(NormLab* L, NormHost* H) {
    const float* d[] = {L->x, L->temb, L->w, L->bias, L->dact, L->h, L->xn, L->dy, L->act, L->mean, L->rstd,
                        L->dx, L->dweight, L->dbias, L->dtemb, L->partial};
    for (const float* p : d) cudaCheck(cudaFree((void*)p));
    float* h[] = {H->x, H->temb, H->w, H->bias, H->dact, H->act, H->mean, H->rstd, H->dx, H->dweight, H->dbias, H->dtemb};
    for (float* p : h) free(p);
}

// a fresh forward and backward of version v, compared with the reference; returns the worst error
static double validate_version(NormLab* L, const NormHost* H, int v) {
    const NormShape& s = L->s;
    size_t bc = (size_t)s.B * s.C, bg = (size_t)s.B * s.G;
    cudaCheck(cudaMemcpy(L->h, L->x, L->n * sizeof(float), cudaMemcpyDeviceToDevice));
    device_zero(L->dweight, s.C * sizeof(float));
    device_zero(L->dbias, s.C * sizeof(float));
    VERSIONS[v - 1].forward(L);
    VERSIONS[v - 1].backward(L);
    cudaCheck(cudaDeviceSynchronize());
    char what[64];
    double worst = 0.0;
    struct { const char* name; const float* got; const float* ref; size_t n; double tol; } checks[] = {
        {"act", L->act, H->act, L->n, TOL_FWD},         {"mean", L->mean, H->mean, bg, TOL_FWD},
        {"rstd", L->rstd, H->rstd, bg, TOL_FWD},        {"dx", L->dx, H->dx, L->n, TOL_BWD},
        {"dweight", L->dweight, H->dweight, (size_t)s.C, TOL_BWD}, {"dbias", L->dbias, H->dbias, (size_t)s.C, TOL_BWD},
        {"dtemb", L->dtemb, H->dtemb, s.temb ? bc : 0, TOL_BWD},
    };
    for (const auto& c : checks) {
        if (c.n == 0) continue;
        snprintf(what, sizeof(what), "v%d %s", v, c.name);
        worst = fmax(worst, validate_result(what, c.got, c.ref, c.n, c.tol));
    }
    return worst;
}

int main(int argc, char** argv) {
    LabArgs args = lab_parse_args(argc, argv, NVERSIONS, SHIPPED);
    lab_init("groupnorm lab");
    PresetShapes* shapes = preset_shapes();
    printf("versions:");
    for (int v = 1; v <= NVERSIONS; v++) printf("  %d %s", v, VERSIONS[v - 1].name);
    printf("\nvalidation: worst error over act/mean/rstd (tol %.0e) and dx/dweight/dbias/dtemb (tol %.0e) per version\n",
           TOL_FWD, TOL_BWD);
    std::vector<int> picked;
    for (int i = 0; i < shapes->nnorm; i++) {
        if (lab_selected(&args, shapes->norm[i].where)) picked.push_back(i);
    }
    std::vector<double> t_fwd(picked.size() * NVERSIONS), t_bwd(picked.size() * NVERSIONS);
    for (size_t si = 0; si < picked.size(); si++) {
        const NormShape* s = &shapes->norm[picked[si]];
        NormLab L;
        NormHost H;
        norm_lab_alloc(&L, &H, s);
        printf("[%2zu/%zu] %-40s B%-3d C%-3d HW%-4d G%d%s%s x%-2d |", si + 1, picked.size(), s->where, s->B, s->C, s->HW,
               s->G, s->silu ? " silu" : "", s->temb ? " temb" : "", s->uses);
        for (int v = 1; v <= NVERSIONS; v++) printf(" v%d %.1e", v, validate_version(&L, &H, v));
        printf("\n");
        lab_print_failures();
        for (int v = 1; v <= NVERSIONS; v++) {
            if (!lab_timed(&args, v, SHIPPED)) continue;
            t_fwd[si * NVERSIONS + v - 1] = benchmark_kernel(args.repeats, [&] { VERSIONS[v - 1].forward(&L); });
            t_bwd[si * NVERSIONS + v - 1] = benchmark_kernel(args.repeats, [&] { VERSIONS[v - 1].backward(&L); });
        }
        norm_lab_free(&L, &H);
    }

    printf("\ntimings: median of %d calls, L2 flushed; us and effective GB/s (fwd 8 bytes, bwd 12 bytes per element)\n",
           args.repeats);
    printf("%-40s %-32s | %-14s | %-14s | fwd+bwd vs v%d\n", "shape", "", "fwd", "bwd", SHIPPED);
    std::vector<double> total(NVERSIONS, 0.0);
    for (size_t si = 0; si < picked.size(); si++) {
        const NormShape* s = &shapes->norm[picked[si]];
        double n = (double)s->B * s->C * s->HW;
        size_t base = si * NVERSIONS + SHIPPED - 1;
        for (int v = 1; v <= NVERSIONS; v++) {
            if (!lab_timed(&args, v, SHIPPED)) continue;
            size_t k = si * NVERSIONS + v - 1;
            total[v - 1] += s->uses * (t_fwd[k] + t_bwd[k]);
            printf("%-40s B%-3d C%-3d HW%-4d G%d %-9s v%d | %7.1f %6.0f | %7.1f %6.0f | %.2f\n", s->where, s->B, s->C, s->HW,
                   s->G, s->temb ? "silu+temb" : s->silu ? "silu" : "", v, t_fwd[k], gbps(8 * n, t_fwd[k]), t_bwd[k],
                   gbps(12 * n, t_bwd[k]), (t_fwd[base] + t_bwd[base]) / (t_fwd[k] + t_bwd[k]));
        }
    }
    printf("sum over the shapes above times their layer counts (fwd + bwd), ms:");
    for (int v = 1; v <= NVERSIONS; v++) {
        if (lab_timed(&args, v, SHIPPED)) printf("  v%d %.2f", v, total[v - 1] / 1e3);
    }
    printf("\n");
    free(shapes);
    return lab_finish();
}
