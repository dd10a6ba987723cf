/*
Kernel lab: the 2-D convolution of ldmc/conv2d.cuh — forward, dgrad (dx) and wgrad (dweight, dbias).

  out (B, Cout, Ho, Wo) = conv(x (B, Cin, H, W), weight (Cout, Cin, K, K)) + bias    K in {1, 3}, pad K/2, stride 1|2
  dx = the transposed convolution of dout,  dweight += sum over b of dout (*) x,  dbias += sums of dout

Versions (version 2 is ldmc/conv2d.cuh itself, included read-only; the others exist only here):
  1  naive direct convolution, fp32 NCHW: one thread per output (forward), per input pixel (dgrad),
     per weight (wgrad) and per channel (dbias), each summing straight from the definition
  2  SHIPPED: conv2d_forward_cuda / conv2d_backward_cuda — im2col of a chunk of images into a buffer,
     then one cuBLAS SGEMM per chunk (TF32 off)
  3  implicit GEMM, fp32 NCHW: the same GEMMs, 64x64 tiles in shared memory, but each operand tile is
     gathered straight from x / dout / weight, so no im2col matrix is ever written or read. wgrad splits
     its long reduction (B*Ho*Wo) over blocks and sums the partial tiles in a fixed order
     (deterministic); dbias is one extra GEMM column whose operand is all ones
  4  implicit GEMM on bf16 tensor cores (mma.sync m16n8k16, fp32 accumulate), NHWC activations and
     (Cout, K, K, Cin) weights, fp32 outputs: GEMM rows are positions, columns output channels, and the
     reduction runs over (ky, kx, channel), contiguous in NHWC, so tiles load as 16-byte vectors when the
     channel count is a multiple of 8. The lab converts the inputs to bf16 NHWC once, outside the timings;
     a model using it would keep its activations in that layout.
Versions 1, 3 and 4 have never run on a GPU (written where none was lent): expect to debug them on the
first run. They do pass make -C dev/cuda emu (the CPU emulator of dev/cuda/emu,
small shapes), which checks indexing, barriers and fragment layouts, not speed, races or alignment. Version 4 is checked against the reference computed from its own bf16-rounded inputs, so
the check tests its indexing and accumulation; bf16's rounding of the inputs is not an error here.

Validation: every version on every convolution shape of the presets (dev/cuda/shapes.h: VAE
tiny/small/fast, U-Net tiny/small/base/fast at their batch sizes 64..512) against the plain CPU reference
(loops in double). The reference is evaluated on a sample: every element of the first and the last image
of out and dx plus 4096 random elements, all of dbias, and as many dweight entries as 2^27 multiply-adds
allow (all of them for the small layers). Error = max |got - ref| / max |ref|; tolerance 1e-5 for out and
dx, 1e-4 for dweight and dbias (fp32 sums of up to 2^19 terms).
Timing: forward, wgrad alone (dx not asked for) and the whole backward; TFLOP/s count 2*B*Cout*Cin*K*K*Ho*Wo
per pass.

Measured with the earlier lab (H200, version 2, fp32 cuBLAS): 9-23 TFLOP/s on the 64..256-channel layers,
about 1-4 on the small ones.

Build and run (a GPU is needed to run; without one the lab says so and exits 0):
  make -C dev/cuda conv2d
  dev/cuda/conv2d              # validate all versions, time version 2 (shipped)
  dev/cuda/conv2d 4            # ... time version 4 next to the shipped one
  dev/cuda/conv2d all --only vae-fast --repeats 50
The CPU GEMM and CPU convolution experiments that used to live in this file are in dev/cpu/conv2d.cu.
*/
#include <stdint.h>
#include "common.h"
#include "shapes.h"
#include "ldmc/conv2d.cuh"

typedef struct { int B, Cin, H, W, Cout, K, stride, pad, Ho, Wo; } ConvDims;

static ConvDims conv_dims(const ConvShape* s) {
    ConvDims d = {s->B, s->Cin, s->H, s->W, s->Cout, s->K, s->stride, s->K / 2, 0, 0};
    d.Ho = conv2d_out_size(s->H, s->K, s->stride);
    d.Wo = conv2d_out_size(s->W, s->K, s->stride);
    return d;
}

// ----------------------------------------------------------------------------
// CPU reference: one element at a time, straight from the definition, in double

// out[b][co][oy][ox] = bias[co] + sum_{ci,ky,kx} w[co][ci][ky][kx] * x[b][ci][oy*s + ky - pad][ox*s + kx - pad]
static double conv_forward_ref(const ConvDims& d, const float* x, const float* w, const float* bias, size_t idx) {
    int ox = (int)(idx % d.Wo), oy = (int)(idx / d.Wo % d.Ho), co = (int)(idx / ((size_t)d.Wo * d.Ho) % d.Cout);
    size_t b = idx / ((size_t)d.Wo * d.Ho * d.Cout);
    double acc = bias[co];
    for (int ci = 0; ci < d.Cin; ci++) {
        for (int ky = 0; ky < d.K; ky++) {
            int iy = oy * d.stride + ky - d.pad;
            if (iy < 0 || iy >= d.H) continue;
            for (int kx = 0; kx < d.K; kx++) {
                int ix = ox * d.stride + kx - d.pad;
                if (ix < 0 || ix >= d.W) continue;
                acc += (double)w[(((size_t)co * d.Cin + ci) * d.K + ky) * d.K + kx] *
                       x[((b * d.Cin + ci) * d.H + iy) * d.W + ix];
            }
        }
    }
    return acc;
}

// dx[b][ci][iy][ix] = sum of w[co][ci][ky][kx] * dout[b][co][oy][ox] over the (co, ky, kx) and the output
// position (oy, ox) that reads pixel (iy, ix) through tap (ky, kx): oy*s + ky - pad = iy, ox*s + kx - pad = ix
static double conv_dx_ref(const ConvDims& d, const float* dout, const float* w, size_t idx) {
    int ix = (int)(idx % d.W), iy = (int)(idx / d.W % d.H), ci = (int)(idx / ((size_t)d.W * d.H) % d.Cin);
    size_t b = idx / ((size_t)d.W * d.H * d.Cin);
    double acc = 0.0;
    for (int co = 0; co < d.Cout; co++) {
        for (int ky = 0; ky < d.K; ky++) {
            int ty = iy + d.pad - ky;
            if (ty < 0 || ty % d.stride != 0 || ty / d.stride >= d.Ho) continue;
            for (int kx = 0; kx < d.K; kx++) {
                int tx = ix + d.pad - kx;
                if (tx < 0 || tx % d.stride != 0 || tx / d.stride >= d.Wo) continue;
                acc += (double)w[(((size_t)co * d.Cin + ci) * d.K + ky) * d.K + kx] *
                       dout[((b * d.Cout + co) * d.Ho + ty / d.stride) * d.Wo + tx / d.stride];
            }
        }
    }
    return acc;
}

// dweight[co][ci][ky][kx] = sum over b, oy, ox of dout[b][co][oy][ox] * x[b][ci][oy*s + ky - pad][ox*s + kx - pad]
static double conv_dweight_ref(const ConvDims& d, const float* dout, const float* x, size_t idx) {
    int kx = (int)(idx % d.K), ky = (int)(idx / d.K % d.K), ci = (int)(idx / ((size_t)d.K * d.K) % d.Cin);
    int co = (int)(idx / ((size_t)d.K * d.K * d.Cin));
    double acc = 0.0;
    for (size_t b = 0; b < (size_t)d.B; b++) {
        for (int oy = 0; oy < d.Ho; oy++) {
            int iy = oy * d.stride + ky - d.pad;
            if (iy < 0 || iy >= d.H) continue;
            for (int ox = 0; ox < d.Wo; ox++) {
                int ix = ox * d.stride + kx - d.pad;
                if (ix < 0 || ix >= d.W) continue;
                acc += (double)dout[((b * d.Cout + co) * d.Ho + oy) * d.Wo + ox] * x[((b * d.Cin + ci) * d.H + iy) * d.W + ix];
            }
        }
    }
    return acc;
}

// dbias[co] = sum over b, oy, ox of dout[b][co][oy][ox]
static double conv_dbias_ref(const ConvDims& d, const float* dout, int co) {
    double acc = 0.0;
    size_t HWo = (size_t)d.Ho * d.Wo;
    for (size_t b = 0; b < (size_t)d.B; b++) {
        for (size_t p = 0; p < HWo; p++) acc += dout[(b * d.Cout + co) * HWo + p];
    }
    return acc;
}

// ----------------------------------------------------------------------------
// version 1: naive direct convolution, one thread per result element

static unsigned blocks_for(size_t n, int block) { return (unsigned)((n + block - 1) / block); }

__global__ static void conv_forward_naive_kernel(float* out, const float* x, const float* w, const float* bias, ConvDims d) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)d.B * d.Cout * d.Ho * d.Wo) return;
    int ox = (int)(idx % d.Wo), oy = (int)(idx / d.Wo % d.Ho), co = (int)(idx / ((size_t)d.Wo * d.Ho) % d.Cout);
    size_t b = idx / ((size_t)d.Wo * d.Ho * d.Cout);
    float acc = bias[co];
    for (int ci = 0; ci < d.Cin; ci++) {
        for (int ky = 0; ky < d.K; ky++) {
            int iy = oy * d.stride + ky - d.pad;
            if (iy < 0 || iy >= d.H) continue;
            for (int kx = 0; kx < d.K; kx++) {
                int ix = ox * d.stride + kx - d.pad;
                if (ix < 0 || ix >= d.W) continue;
                acc += w[(((size_t)co * d.Cin + ci) * d.K + ky) * d.K + kx] * x[((b * d.Cin + ci) * d.H + iy) * d.W + ix];
            }
        }
    }
    out[idx] = acc;
}

__global__ static void conv_dx_naive_kernel(float* dx, const float* dout, const float* w, ConvDims d) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)d.B * d.Cin * d.H * d.W) return;
    int ix = (int)(idx % d.W), iy = (int)(idx / d.W % d.H), ci = (int)(idx / ((size_t)d.W * d.H) % d.Cin);
    size_t b = idx / ((size_t)d.W * d.H * d.Cin);
    float acc = 0.0f;
    for (int co = 0; co < d.Cout; co++) {
        for (int ky = 0; ky < d.K; ky++) {
            int ty = iy + d.pad - ky;  // = oy * stride
            if (ty < 0 || ty % d.stride != 0 || ty / d.stride >= d.Ho) continue;
            for (int kx = 0; kx < d.K; kx++) {
                int tx = ix + d.pad - kx;
                if (tx < 0 || tx % d.stride != 0 || tx / d.stride >= d.Wo) continue;
                acc += w[(((size_t)co * d.Cin + ci) * d.K + ky) * d.K + kx] *
                       dout[((b * d.Cout + co) * d.Ho + ty / d.stride) * d.Wo + tx / d.stride];
            }
        }
    }
    dx[idx] = acc;
}

__global__ static void conv_dweight_naive_kernel(float* dw, const float* dout, const float* x, ConvDims d) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)d.Cout * d.Cin * d.K * d.K) return;
    int kx = (int)(idx % d.K), ky = (int)(idx / d.K % d.K), ci = (int)(idx / ((size_t)d.K * d.K) % d.Cin);
    int co = (int)(idx / ((size_t)d.K * d.K * d.Cin));
    float acc = 0.0f;
    for (size_t b = 0; b < (size_t)d.B; b++) {
        for (int oy = 0; oy < d.Ho; oy++) {
            int iy = oy * d.stride + ky - d.pad;
            if (iy < 0 || iy >= d.H) continue;
            for (int ox = 0; ox < d.Wo; ox++) {
                int ix = ox * d.stride + kx - d.pad;
                if (ix < 0 || ix >= d.W) continue;
                acc += dout[((b * d.Cout + co) * d.Ho + oy) * d.Wo + ox] * x[((b * d.Cin + ci) * d.H + iy) * d.W + ix];
            }
        }
    }
    dw[idx] += acc;
}

__global__ static void conv_dbias_naive_kernel(float* db, const float* dout, ConvDims d) {
    int co = blockIdx.x * blockDim.x + threadIdx.x;
    if (co >= d.Cout) return;
    size_t HWo = (size_t)d.Ho * d.Wo;
    float acc = 0.0f;
    for (size_t b = 0; b < (size_t)d.B; b++) {
        for (size_t p = 0; p < HWo; p++) acc += dout[(b * d.Cout + co) * HWo + p];
    }
    db[co] += acc;
}

// ----------------------------------------------------------------------------
// version 3: implicit GEMM in fp32
// C (M, N) = A (M, K) @ B (K, N) with A and B never stored: a problem type P says how to fetch A(m, k)
// and B(k, n) from the convolution's tensors and where C(m, n) goes.
//   forward  M = Cout, N = B*Ho*Wo, K = Cin*K*K:   A = weight rows, B = x gathered at the taps
//   dgrad    M = Cin,  N = B*H*W,   K = Cout*K*K:  A = weight transposed, B = dout gathered at the
//            output positions that read pixel (iy, ix) through tap (ky, kx)
//   wgrad    M = Cout, N = Cin*K*K + 1, K = B*Ho*Wo: A = dout, B = x at tap n of position k; the last
//            column is all ones, so C's last column is dbias
// Each block computes a 64x64 tile of C over K in steps of 16: 256 threads load a 16x64 slice of A and
// of B into shared memory, then each thread accumulates a 4x4 register tile (rows ty + 16i, columns
// tx + 16j, so a warp's shared-memory reads are conflict-free and its stores to C are coalesced).
// The rows and columns a thread loads are the same at every k step, so their decoding (image, output
// position, pointer) is done once before the loop (P::Row, P::Col); only the k part is decoded per step.
// *_K_FAST picks the load order: threads that are neighbours in the warp take neighbouring k (A = weight
// rows, wgrad's dout and x) or neighbouring m/n (positions of x and dout), whichever is contiguous.

#define IG_BM 64
#define IG_BN 64
#define IG_BK 16
#define IG_THREADS 256

template <class P>
__global__ static void __launch_bounds__(IG_THREADS) igemm_f32_kernel(const P p, int k_per_split) {
    __shared__ float As[IG_BK][IG_BM + 1];  // +1: the k-fast stores of a warp hit different banks
    __shared__ float Bs[IG_BK][IG_BN + 1];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int m0 = blockIdx.y * IG_BM, n0 = blockIdx.x * IG_BN;
    const int kbeg = blockIdx.z * k_per_split;
    const int kend = min(p.K, kbeg + k_per_split);
    int a_mm[4], a_kk[4], b_nn[4], b_kk[4];
    typename P::Row arow[4];
    typename P::Col bcol[4];
    for (int i = 0; i < 4; i++) {
        if (P::A_K_FAST) { a_kk[i] = tid % IG_BK; a_mm[i] = tid / IG_BK + 16 * i; }
        else             { a_mm[i] = tid % IG_BM; a_kk[i] = tid / IG_BM + 4 * i; }
        if (P::B_K_FAST) { b_kk[i] = tid % IG_BK; b_nn[i] = tid / IG_BK + 16 * i; }
        else             { b_nn[i] = tid % IG_BN; b_kk[i] = tid / IG_BN + 4 * i; }
        arow[i] = p.row(m0 + a_mm[i]);
        bcol[i] = p.col(n0 + b_nn[i]);
    }
    float acc[4][4] = {};
    for (int k0 = kbeg; k0 < kend; k0 += IG_BK) {
        for (int i = 0; i < 4; i++) {
            int ka = k0 + a_kk[i], kb = k0 + b_kk[i];
            As[a_kk[i]][a_mm[i]] = ka < kend ? p.a(arow[i], ka) : 0.0f;
            Bs[b_kk[i]][b_nn[i]] = kb < kend ? p.b(bcol[i], kb) : 0.0f;
        }
        __syncthreads();
        #pragma unroll
        for (int kk = 0; kk < IG_BK; kk++) {
            float ra[4], rb[4];
            for (int i = 0; i < 4; i++) ra[i] = As[kk][ty + 16 * i];
            for (int j = 0; j < 4; j++) rb[j] = Bs[kk][tx + 16 * j];
            for (int i = 0; i < 4; i++) {
                for (int j = 0; j < 4; j++) acc[i][j] = fmaf(ra[i], rb[j], acc[i][j]);
            }
        }
        __syncthreads();
    }
    for (int i = 0; i < 4; i++) {
        for (int j = 0; j < 4; j++) {
            int m = m0 + ty + 16 * i, n = n0 + tx + 16 * j;
            if (m < p.M && n < p.N) p.store(m, n, acc[i][j], blockIdx.z);
        }
    }
}

// KS = K (1 or 3) at compile time: the tap decoding divides by constants
template <int KS>
struct ConvForwardF32 {
    static constexpr bool A_K_FAST = true, B_K_FAST = false;
    int M, N, K;
    ConvDims d;
    const float *x, *w, *bias;
    float* out;
    struct Row { const float* w; bool ok; };
    struct Col { const float* x; int iy0, ix0; bool ok; };
    __device__ Row row(int m) const { return Row{w + (size_t)(m < M ? m : 0) * K, m < M}; }
    __device__ float a(const Row& r, int k) const { return r.ok ? r.w[k] : 0.0f; }
    __device__ Col col(int n) const {
        int HWo = d.Ho * d.Wo, nn = n < N ? n : 0;
        int b = nn / HWo, p = nn % HWo;
        return Col{x + (size_t)b * d.Cin * d.H * d.W, (p / d.Wo) * d.stride - d.pad, (p % d.Wo) * d.stride - d.pad, n < N};
    }
    __device__ float b(const Col& c, int k) const {
        int ci = k / (KS * KS), r = k % (KS * KS);
        int iy = c.iy0 + r / KS, ix = c.ix0 + r % KS;
        if (!c.ok || iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) return 0.0f;
        return c.x[((size_t)ci * d.H + iy) * d.W + ix];
    }
    __device__ void store(int m, int n, float v, int) const {
        int HWo = d.Ho * d.Wo, b = n / HWo, p = n % HWo;
        out[((size_t)b * d.Cout + m) * HWo + p] = v + bias[m];
    }
};

template <int KS>
struct ConvDgradF32 {
    static constexpr bool A_K_FAST = true, B_K_FAST = false;
    int M, N, K;
    ConvDims d;
    const float *dout, *w;
    float* dx;
    struct Row { int ci; bool ok; };
    struct Col { const float* dout; int iy, ix; bool ok; };
    __device__ Row row(int m) const { return Row{m, m < M}; }
    __device__ float a(const Row& r, int k) const {  // weight[co][ci][ky][kx] with k = (co, ky, kx)
        return r.ok ? w[((size_t)(k / (KS * KS)) * d.Cin + r.ci) * (KS * KS) + k % (KS * KS)] : 0.0f;
    }
    __device__ Col col(int n) const {
        int HW = d.H * d.W, nn = n < N ? n : 0;
        int b = nn / HW, p = nn % HW;
        return Col{dout + (size_t)b * d.Cout * d.Ho * d.Wo, p / d.W, p % d.W, n < N};
    }
    __device__ float b(const Col& c, int k) const {  // dout at the output position that reads (iy, ix) via tap (ky, kx)
        int co = k / (KS * KS), r = k % (KS * KS);
        int ty = c.iy + d.pad - r / KS, tx = c.ix + d.pad - r % KS;
        if (!c.ok || ty < 0 || tx < 0 || ty % d.stride != 0 || tx % d.stride != 0) return 0.0f;
        int oy = ty / d.stride, ox = tx / d.stride;
        if (oy >= d.Ho || ox >= d.Wo) return 0.0f;
        return c.dout[((size_t)co * d.Ho + oy) * d.Wo + ox];
    }
    __device__ void store(int m, int n, float v, int) const {
        int HW = d.H * d.W, b = n / HW, p = n % HW;
        dx[((size_t)b * d.Cin + m) * HW + p] = v;
    }
};

template <int KS>
struct ConvWgradF32 {
    static constexpr bool A_K_FAST = true, B_K_FAST = true;
    int M, N, K;
    ConvDims d;
    const float *dout, *x;
    float* partial;  // (splits, M, N)
    struct Row { int co; bool ok; };
    struct Col { int ci, ky, kx; bool ok, ones; };
    __device__ Row row(int m) const { return Row{m, m < M}; }
    __device__ float a(const Row& r, int k) const {
        int HWo = d.Ho * d.Wo;
        return r.ok ? dout[((size_t)(k / HWo) * d.Cout + r.co) * HWo + k % HWo] : 0.0f;
    }
    __device__ Col col(int n) const {
        int taps = d.Cin * KS * KS;
        int nn = n < taps ? n : 0;
        return Col{nn / (KS * KS), nn % (KS * KS) / KS, nn % KS, n < N, n == taps};
    }
    __device__ float b(const Col& c, int k) const {
        if (!c.ok) return 0.0f;
        if (c.ones) return 1.0f;
        int HWo = d.Ho * d.Wo, b = k / HWo, p = k % HWo;
        int iy = (p / d.Wo) * d.stride + c.ky - d.pad, ix = (p % d.Wo) * d.stride + c.kx - d.pad;
        if (iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) return 0.0f;
        return x[(((size_t)b * d.Cin + c.ci) * d.H + iy) * d.W + ix];
    }
    __device__ void store(int m, int n, float v, int split) const { partial[((size_t)split * M + m) * N + n] = v; }
};

// dweight (M, N-1) += and dbias (M) += the sum of the split partials (splits, M, N), in split order
__global__ static void wgrad_reduce_kernel(float* dweight, float* dbias, const float* partial, int splits, int M, int N) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    size_t MN = (size_t)M * N;
    if (idx >= MN) return;
    float s = 0.0f;
    for (int z = 0; z < splits; z++) s += partial[z * MN + idx];
    int m = (int)(idx / N), n = (int)(idx % N);
    if (n < N - 1) dweight[(size_t)m * (N - 1) + n] += s;
    else dbias[m] += s;
}

// a device buffer for the wgrad partials, grown on demand
static float* wgrad_workspace(size_t floats) {
    static float* buf = NULL;
    static size_t have = 0;
    if (floats > have) {
        if (buf) cudaCheck(cudaFree(buf));
        buf = device_floats(floats);
        have = floats;
    }
    return buf;
}

// Splits of wgrad's reduction: enough blocks to cover the GPU about four times, each split at least
// 8 k-steps long and a whole number of them. Returns the split count; *k_per_split its length.
static int wgrad_splits(int M, int N, int K, int bm, int bn, int bk, int* k_per_split) {
    int tiles = ceil_div(M, bm) * ceil_div(N, bn);
    int want = ceil_div(4 * g_lab_prop.multiProcessorCount, tiles);
    int most = ceil_div(K, 8 * bk);
    int splits = want < most ? want : most;
    if (splits > 256) splits = 256;
    if (splits < 1) splits = 1;
    *k_per_split = ceil_div(ceil_div(K, splits), bk) * bk;
    return ceil_div(K, *k_per_split);
}

template <class P>
static void igemm_f32_launch(const P& p, int splits, int k_per_split) {
    dim3 grid(ceil_div(p.N, IG_BN), ceil_div(p.M, IG_BM), splits);
    igemm_f32_kernel<P><<<grid, IG_THREADS>>>(p, k_per_split);
    launch_check();
}

// ----------------------------------------------------------------------------
// version 4: implicit GEMM on bf16 tensor cores, NHWC
// mma.sync.m16n8k16 multiplies a 16x16 bf16 tile of A by a 16x8 tile of B into a 16x8 fp32 tile, each
// of the warp's 32 threads holding a fixed part of every operand (PTX ISA, "Matrix Fragments for
// mma.m16n8k16"): with g = lane / 4 and t = lane % 4,
//   A: 4 registers of 2 bf16: (row g, k 2t..2t+1), (row g+8, k 2t..), (row g, k 2t+8..), (row g+8, k 2t+8..)
//   B: 2 registers: (k 2t..2t+1, column g), (k 2t+8..2t+9, column g)
//   C: 4 floats: (row g, columns 2t, 2t+1), (row g+8, columns 2t, 2t+1)
// Both tiles sit in shared memory k-contiguous ([row][k] for A, [column][k] for B), so every fragment
// register is one aligned 32-bit load. A block of 4 warps computes a 64x64 tile of C, each warp a 32x32
// quarter (2 x 4 mma tiles, 32 accumulators per thread), over k steps of 32. Rows are padded from 32 to
// 40 bf16 (80 bytes): the 8 rows a fragment load touches then start in 8 different bank groups, so the
// 32 threads hit 32 different banks, and 16-byte stores stay aligned.
// Loading: each thread fills two 8-element chunks of each tile per k step. P::*_K_CHUNKS says whether a
// chunk is 8 consecutive k of one row (one 16-byte load where the 8 k are contiguous in memory: NHWC
// channels, weights) or 8 consecutive rows at one k (wgrad, whose operands are contiguous along rows).

typedef uint16_t bf16_t;  // bfloat16 bits: the top half of a float32

#define TC_BM 64
#define TC_BN 64
#define TC_BK 32
#define TC_LDS 40
#define TC_THREADS 128

union Bf16x8 {
    uint4 u;
    bf16_t h[8];
};

static constexpr bf16_t BF16_ONE = 0x3F80;  // 1.0

__device__ static inline uint32_t lds32(const bf16_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

__device__ static inline void mma_bf16_16816(float* c, const uint32_t* a, const uint32_t* b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                 "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

// one 64 x 32 operand tile: 256 chunks of 8 bf16, two per thread
template <bool K_CHUNKS, class Load>
__device__ static inline void tc_load_tile(bf16_t* tile, int row0, int k0, Load load) {
    for (int i = 0; i < 2; i++) {
        int c = threadIdx.x + TC_THREADS * i;
        if (K_CHUNKS) {
            int r = c / 4, kc = (c % 4) * 8;
            *reinterpret_cast<uint4*>(&tile[r * TC_LDS + kc]) = load(row0 + r, k0 + kc);
        } else {
            int kk = c / 8, rc = (c % 8) * 8;  // neighbouring threads take neighbouring rows: coalesced
            Bf16x8 v;
            v.u = load(row0 + rc, k0 + kk);
            for (int q = 0; q < 8; q++) tile[(rc + q) * TC_LDS + kk] = v.h[q];
        }
    }
}

template <class P>
__global__ static void __launch_bounds__(TC_THREADS) igemm_bf16_kernel(const P p, int k_per_split) {
    __shared__ __align__(16) bf16_t As[TC_BM * TC_LDS];
    __shared__ __align__(16) bf16_t Bs[TC_BN * TC_LDS];
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    const int g = lane / 4, t = lane % 4, wm = warp / 2, wn = warp % 2;
    const int m0 = blockIdx.y * TC_BM, n0 = blockIdx.x * TC_BN;
    const int kbeg = blockIdx.z * k_per_split;
    const int kend = min(p.K, kbeg + k_per_split);
    float acc[2][4][4] = {};
    for (int k0 = kbeg; k0 < kend; k0 += TC_BK) {
        tc_load_tile<P::A_K_CHUNKS>(As, m0, k0, [&](int r, int k) { return p.load_a(r, k, kend); });
        tc_load_tile<P::B_K_CHUNKS>(Bs, n0, k0, [&](int r, int k) { return p.load_b(r, k, kend); });
        __syncthreads();
        #pragma unroll
        for (int ks = 0; ks < TC_BK; ks += 16) {
            uint32_t af[2][4], bfr[4][2];
            for (int mt = 0; mt < 2; mt++) {
                const bf16_t* a = &As[(wm * 32 + mt * 16 + g) * TC_LDS + ks + 2 * t];
                af[mt][0] = lds32(a);
                af[mt][1] = lds32(a + 8 * TC_LDS);
                af[mt][2] = lds32(a + 8);
                af[mt][3] = lds32(a + 8 * TC_LDS + 8);
            }
            for (int nt = 0; nt < 4; nt++) {
                const bf16_t* b = &Bs[(wn * 32 + nt * 8 + g) * TC_LDS + ks + 2 * t];
                bfr[nt][0] = lds32(b);
                bfr[nt][1] = lds32(b + 8);
            }
            for (int mt = 0; mt < 2; mt++) {
                for (int nt = 0; nt < 4; nt++) mma_bf16_16816(acc[mt][nt], af[mt], bfr[nt]);
            }
        }
        __syncthreads();
    }
    for (int mt = 0; mt < 2; mt++) {
        for (int nt = 0; nt < 4; nt++) {
            for (int e = 0; e < 4; e++) {
                int m = m0 + wm * 32 + mt * 16 + g + (e / 2) * 8;
                int n = n0 + wn * 32 + nt * 8 + 2 * t + e % 2;
                if (m < p.M && n < p.N) p.store(m, n, acc[mt][nt][e], blockIdx.z);
            }
        }
    }
}

// forward: M = B*Ho*Wo positions, N = Cout, K = K*K*Cin with k = (ky, kx, ci)
struct ConvForwardBf16 {
    static constexpr bool A_K_CHUNKS = true, B_K_CHUNKS = true;
    int M, N, K;
    ConvDims d;
    const bf16_t *x, *w;  // x (B, H, W, Cin), w (Cout, K, K, Cin)
    const float* bias;
    float* out;           // (B, Ho, Wo, Cout)
    // x at tap k of position m, or 0 in the padding
    __device__ bf16_t x_at(int b, int oy, int ox, int k) const {
        int tap = k / d.Cin, ci = k % d.Cin;
        int iy = oy * d.stride + tap / d.K - d.pad, ix = ox * d.stride + tap % d.K - d.pad;
        if (iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) return 0;
        return x[(((size_t)b * d.H + iy) * d.W + ix) * d.Cin + ci];
    }
    __device__ uint4 load_a(int m, int k0, int kend) const {
        Bf16x8 v;
        v.u = make_uint4(0, 0, 0, 0);
        if (m >= M) return v.u;
        int HWo = d.Ho * d.Wo, b = m / HWo, oy = m % HWo / d.Wo, ox = m % d.Wo;
        if (d.Cin % 8 == 0) {  // the 8 k share one tap: 8 consecutive channels of one pixel
            if (k0 >= kend) return v.u;
            int tap = k0 / d.Cin;
            int iy = oy * d.stride + tap / d.K - d.pad, ix = ox * d.stride + tap % d.K - d.pad;
            if (iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) return v.u;
            return *reinterpret_cast<const uint4*>(&x[(((size_t)b * d.H + iy) * d.W + ix) * d.Cin + k0 % d.Cin]);
        }
        for (int e = 0; e < 8 && k0 + e < kend; e++) v.h[e] = x_at(b, oy, ox, k0 + e);
        return v.u;
    }
    __device__ uint4 load_b(int n, int k0, int kend) const {
        Bf16x8 v;
        v.u = make_uint4(0, 0, 0, 0);
        if (n >= N || k0 >= kend) return v.u;
        const bf16_t* row = w + (size_t)n * K;
        if (K % 8 == 0) return *reinterpret_cast<const uint4*>(row + k0);
        for (int e = 0; e < 8 && k0 + e < kend; e++) v.h[e] = row[k0 + e];
        return v.u;
    }
    __device__ void store(int m, int n, float v, int) const { out[(size_t)m * N + n] = v + bias[n]; }
};

// dgrad: M = B*H*W positions of dx, N = Cin, K = K*K*Cout with k = (ky, kx, co); B = weights transposed
// to (Cin, K, K, Cout) so that its rows are k-contiguous too
struct ConvDgradBf16 {
    static constexpr bool A_K_CHUNKS = true, B_K_CHUNKS = true;
    int M, N, K;
    ConvDims d;
    const bf16_t *dout, *wt;  // dout (B, Ho, Wo, Cout), wt (Cin, K, K, Cout)
    float* dx;                // (B, H, W, Cin)
    // the output position reading (iy, ix) through tap `tap`, or -1
    __device__ int out_pos(int b, int iy, int ix, int tap) const {
        int ty = iy + d.pad - tap / d.K, tx = ix + d.pad - tap % d.K;
        if (ty < 0 || tx < 0 || ty % d.stride != 0 || tx % d.stride != 0) return -1;
        int oy = ty / d.stride, ox = tx / d.stride;
        if (oy >= d.Ho || ox >= d.Wo) return -1;
        return (b * d.Ho + oy) * d.Wo + ox;
    }
    __device__ uint4 load_a(int m, int k0, int kend) const {
        Bf16x8 v;
        v.u = make_uint4(0, 0, 0, 0);
        if (m >= M) return v.u;
        int HW = d.H * d.W, b = m / HW, iy = m % HW / d.W, ix = m % d.W;
        if (d.Cout % 8 == 0) {
            if (k0 >= kend) return v.u;
            int pos = out_pos(b, iy, ix, k0 / d.Cout);
            if (pos < 0) return v.u;
            return *reinterpret_cast<const uint4*>(&dout[(size_t)pos * d.Cout + k0 % d.Cout]);
        }
        for (int e = 0; e < 8 && k0 + e < kend; e++) {
            int k = k0 + e, pos = out_pos(b, iy, ix, k / d.Cout);
            if (pos >= 0) v.h[e] = dout[(size_t)pos * d.Cout + k % d.Cout];
        }
        return v.u;
    }
    __device__ uint4 load_b(int n, int k0, int kend) const {
        Bf16x8 v;
        v.u = make_uint4(0, 0, 0, 0);
        if (n >= N || k0 >= kend) return v.u;
        const bf16_t* row = wt + (size_t)n * K;
        if (K % 8 == 0) return *reinterpret_cast<const uint4*>(row + k0);
        for (int e = 0; e < 8 && k0 + e < kend; e++) v.h[e] = row[k0 + e];
        return v.u;
    }
    __device__ void store(int m, int n, float v, int) const { dx[(size_t)m * N + n] = v; }
};

// wgrad: M = Cout, N = K*K*Cin + 1 (the last column all ones: dbias), K = B*Ho*Wo positions. Both
// operands are contiguous along their rows (channels of one position), so chunks are 8 rows at one k.
struct ConvWgradBf16 {
    static constexpr bool A_K_CHUNKS = false, B_K_CHUNKS = false;
    int M, N, K;
    ConvDims d;
    const bf16_t *dout, *x;  // dout (B, Ho, Wo, Cout), x (B, H, W, Cin)
    float* partial;          // (splits, M, N)
    __device__ uint4 load_a(int m0, int k, int kend) const {  // dout[k][m0 .. m0+7]
        Bf16x8 v;
        v.u = make_uint4(0, 0, 0, 0);
        if (k >= kend || m0 >= M) return v.u;
        const bf16_t* row = dout + (size_t)k * d.Cout;
        if (d.Cout % 8 == 0) return *reinterpret_cast<const uint4*>(row + m0);
        for (int e = 0; e < 8 && m0 + e < M; e++) v.h[e] = row[m0 + e];
        return v.u;
    }
    __device__ uint4 load_b(int n0, int k, int kend) const {  // x at taps n0 .. n0+7 of position k
        Bf16x8 v;
        v.u = make_uint4(0, 0, 0, 0);
        if (k >= kend || n0 >= N) return v.u;
        int taps = N - 1, HWo = d.Ho * d.Wo, b = k / HWo, oy = k % HWo / d.Wo, ox = k % d.Wo;
        if (d.Cin % 8 == 0 && n0 + 8 <= taps) {  // 8 consecutive channels of one pixel
            int tap = n0 / d.Cin;
            int iy = oy * d.stride + tap / d.K - d.pad, ix = ox * d.stride + tap % d.K - d.pad;
            if (iy < 0 || iy >= d.H || ix < 0 || ix >= d.W) return v.u;
            return *reinterpret_cast<const uint4*>(&x[(((size_t)b * d.H + iy) * d.W + ix) * d.Cin + n0 % d.Cin]);
        }
        for (int e = 0; e < 8 && n0 + e < N; e++) {
            int n = n0 + e;
            if (n == taps) { v.h[e] = BF16_ONE; continue; }
            int tap = n / d.Cin;
            int iy = oy * d.stride + tap / d.K - d.pad, ix = ox * d.stride + tap % d.K - d.pad;
            if (iy >= 0 && iy < d.H && ix >= 0 && ix < d.W) v.h[e] = x[(((size_t)b * d.H + iy) * d.W + ix) * d.Cin + n % d.Cin];
        }
        return v.u;
    }
    __device__ void store(int m, int n, float v, int split) const { partial[((size_t)split * M + m) * N + n] = v; }
};

// wt[ci][tap][co] = w[co][tap][ci]
__global__ static void weight_transpose_kernel(bf16_t* wt, const bf16_t* w, int Cout, int taps, int Cin) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)Cout * taps * Cin) return;
    int ci = (int)(idx % Cin), tap = (int)(idx / Cin % taps), co = (int)(idx / ((size_t)Cin * taps));
    wt[((size_t)ci * taps + tap) * Cout + co] = w[idx];
}

template <class P>
static void igemm_bf16_launch(const P& p, int splits, int k_per_split) {
    dim3 grid(ceil_div(p.N, TC_BN), ceil_div(p.M, TC_BM), splits);
    igemm_bf16_kernel<P><<<grid, TC_THREADS>>>(p, k_per_split);
    launch_check();
}

// ----------------------------------------------------------------------------
// the lab: buffers of one shape, the versions, reference, validation, timing

typedef struct {
    ConvDims d;
    size_t nx, nw, nout;
    float *x, *w, *bias, *dout;         // device, fp32: NCHW, (Cout, Cin, K, K)
    bf16_t *x16, *w16, *dout16, *wt16;  // device, bf16: NHWC, (Cout, K, K, Cin); wt16 version 4's scratch
    float *out, *dx, *dw, *db;          // device results, in the layout of the version that wrote them
} ConvLab;

static void conv_v1_forward(ConvLab* L) {
    const ConvDims& d = L->d;
    conv_forward_naive_kernel<<<blocks_for(L->nout, 256), 256>>>(L->out, L->x, L->w, L->bias, d);
    launch_check();
}

static void conv_v1_backward(ConvLab* L, int with_dx) {
    const ConvDims& d = L->d;
    conv_dbias_naive_kernel<<<blocks_for(d.Cout, 128), 128>>>(L->db, L->dout, d);
    launch_check();
    conv_dweight_naive_kernel<<<blocks_for(L->nw, 256), 256>>>(L->dw, L->dout, L->x, d);
    launch_check();
    if (with_dx) {
        conv_dx_naive_kernel<<<blocks_for(L->nx, 256), 256>>>(L->dx, L->dout, L->w, d);
        launch_check();
    }
}

static void conv_v2_forward(ConvLab* L) {
    const ConvDims& d = L->d;
    conv2d_forward_cuda(L->out, L->x, L->w, L->bias, d.B, d.Cin, d.H, d.W, d.Cout, d.K, d.stride);
}

static void conv_v2_backward(ConvLab* L, int with_dx) {
    const ConvDims& d = L->d;
    conv2d_backward_cuda(with_dx ? L->dx : NULL, L->dw, L->db, L->dout, L->x, L->w, d.B, d.Cin, d.H, d.W, d.Cout,
                         d.K, d.stride);
}

template <int KS>
static void conv_v3_forward_k(ConvLab* L) {
    const ConvDims& d = L->d;
    ConvForwardF32<KS> p = {d.Cout, d.B * d.Ho * d.Wo, d.Cin * KS * KS, d, L->x, L->w, L->bias, L->out};
    igemm_f32_launch(p, 1, p.K);
}

template <int KS>
static void conv_v3_backward_k(ConvLab* L, int with_dx) {
    const ConvDims& d = L->d;
    ConvWgradF32<KS> pw = {d.Cout, d.Cin * KS * KS + 1, d.B * d.Ho * d.Wo, d, L->dout, L->x, NULL};
    int kps, splits = wgrad_splits(pw.M, pw.N, pw.K, IG_BM, IG_BN, IG_BK, &kps);
    pw.partial = wgrad_workspace((size_t)splits * pw.M * pw.N);
    igemm_f32_launch(pw, splits, kps);
    wgrad_reduce_kernel<<<blocks_for((size_t)pw.M * pw.N, 256), 256>>>(L->dw, L->db, pw.partial, splits, pw.M, pw.N);
    launch_check();
    if (with_dx) {
        ConvDgradF32<KS> pd = {d.Cin, d.B * d.H * d.W, d.Cout * KS * KS, d, L->dout, L->w, L->dx};
        igemm_f32_launch(pd, 1, pd.K);
    }
}

static void conv_v3_forward(ConvLab* L) {
    if (L->d.K == 3) conv_v3_forward_k<3>(L); else conv_v3_forward_k<1>(L);
}

static void conv_v3_backward(ConvLab* L, int with_dx) {
    if (L->d.K == 3) conv_v3_backward_k<3>(L, with_dx); else conv_v3_backward_k<1>(L, with_dx);
}

static void conv_v4_forward(ConvLab* L) {
    const ConvDims& d = L->d;
    ConvForwardBf16 p = {d.B * d.Ho * d.Wo, d.Cout, d.K * d.K * d.Cin, d, L->x16, L->w16, L->bias, L->out};
    igemm_bf16_launch(p, 1, ceil_div(p.K, TC_BK) * TC_BK);
}

static void conv_v4_backward(ConvLab* L, int with_dx) {
    const ConvDims& d = L->d;
    int taps = d.K * d.K;
    ConvWgradBf16 pw = {d.Cout, taps * d.Cin + 1, d.B * d.Ho * d.Wo, d, L->dout16, L->x16, NULL};
    int kps, splits = wgrad_splits(pw.M, pw.N, pw.K, TC_BM, TC_BN, TC_BK, &kps);
    pw.partial = wgrad_workspace((size_t)splits * pw.M * pw.N);
    igemm_bf16_launch(pw, splits, kps);
    wgrad_reduce_kernel<<<blocks_for((size_t)pw.M * pw.N, 256), 256>>>(L->dw, L->db, pw.partial, splits, pw.M, pw.N);
    launch_check();
    if (with_dx) {
        weight_transpose_kernel<<<blocks_for(L->nw, 256), 256>>>(L->wt16, L->w16, d.Cout, taps, d.Cin);
        launch_check();
        ConvDgradBf16 pd = {d.B * d.H * d.W, d.Cin, taps * d.Cout, d, L->dout16, L->wt16, L->dx};
        igemm_bf16_launch(pd, 1, ceil_div(pd.K, TC_BK) * TC_BK);
    }
}

typedef struct {
    const char* name;
    int bf16_nhwc;  // inputs bf16 NHWC, weights (Cout, K, K, Cin), results fp32 in the same layouts
    void (*forward)(ConvLab*);
    void (*backward)(ConvLab*, int with_dx);  // dx overwritten (when with_dx), dweight and dbias accumulated
} ConvVersion;

static const ConvVersion VERSIONS[] = {
    {"naive direct", 0, conv_v1_forward, conv_v1_backward},
    {"im2col + cuBLAS (shipped)", 0, conv_v2_forward, conv_v2_backward},
    {"implicit GEMM fp32", 0, conv_v3_forward, conv_v3_backward},
    {"implicit GEMM bf16 mma, NHWC", 1, conv_v4_forward, conv_v4_backward},
};
#define NVERSIONS ((int)(sizeof(VERSIONS) / sizeof(VERSIONS[0])))
#define SHIPPED 2

static const double TOL_OUT = 1e-5, TOL_DW = 1e-4;
static const size_t REF_RANDOM = 4096;        // sampled out / dx elements beyond the first and last image
static const double REF_DW_BUDGET = 134217728.0;  // multiply-adds the sampled dweight reference may cost

// ---- layout conversions (host)

static bf16_t bf16_bits(float f) {  // round to nearest even
    uint32_t u;
    memcpy(&u, &f, 4);
    u += 0x7FFFu + ((u >> 16) & 1u);
    return (bf16_t)(u >> 16);
}

static float bf16_value(bf16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// (N, C, S) -> (N, S, C): NCHW -> NHWC with S = H*W, and (Cout, Cin, K, K) -> (Cout, K, K, Cin) with S = K*K
static bf16_t* to_channels_last_bf16(const float* src, int N, int C, int S) {
    bf16_t* dst = (bf16_t*)mallocCheck((size_t)N * C * S * sizeof(bf16_t));
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        for (int c = 0; c < C; c++) {
            for (int s = 0; s < S; s++) dst[((size_t)n * S + s) * C + c] = bf16_bits(src[((size_t)n * C + c) * S + s]);
        }
    }
    return dst;
}

// (N, S, C) -> (N, C, S), in place through a copy
static void to_channels_first(float* a, int N, int C, int S) {
    size_t n_all = (size_t)N * C * S;
    float* tmp = (float*)mallocCheck(n_all * sizeof(float));
    memcpy(tmp, a, n_all * sizeof(float));
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        for (int s = 0; s < S; s++) {
            for (int c = 0; c < C; c++) a[((size_t)n * C + c) * S + s] = tmp[((size_t)n * S + s) * C + c];
        }
    }
    free(tmp);
}

static float* rounded_to_bf16(const float* src, size_t n) {
    float* dst = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) dst[i] = bf16_value(bf16_bits(src[i]));
    return dst;
}

// ---- the sampled reference

typedef struct {
    std::vector<size_t> i_out, i_dx, i_dw;  // flat NCHW / (Cout, Cin, K, K) indices checked
    std::vector<float> out, dx, dw, db;     // the reference there; db for every channel
} ConvRef;

// every element of the first and the last image, plus `extra` random ones from the images between
static std::vector<size_t> sample_images(size_t per_image, int B, size_t extra, uint64_t seed) {
    std::vector<size_t> idx;
    for (size_t i = 0; i < per_image; i++) idx.push_back(i);
    if (B > 1) {
        for (size_t i = 0; i < per_image; i++) idx.push_back((size_t)(B - 1) * per_image + i);
    }
    if (B > 2) {
        for (size_t i = 0; i < extra; i++) idx.push_back(per_image + rng_u64(seed, i) % ((size_t)(B - 2) * per_image));
    }
    return idx;
}

static std::vector<size_t> sample_weights(const ConvDims& d, uint64_t seed) {
    size_t total = (size_t)d.Cout * d.Cin * d.K * d.K;
    size_t per_entry = (size_t)d.B * d.Ho * d.Wo;
    size_t count = (size_t)(REF_DW_BUDGET / per_entry);
    if (count < 256) count = 256;
    std::vector<size_t> idx;
    if (count >= total) {
        for (size_t i = 0; i < total; i++) idx.push_back(i);
    } else {
        idx.push_back(0);
        idx.push_back(total - 1);
        for (size_t i = 2; i < count; i++) idx.push_back(rng_u64(seed, i) % total);
    }
    return idx;
}

static ConvRef conv_reference(const ConvDims& d, const float* x, const float* w, const float* bias, const float* dout) {
    ConvRef r;
    r.i_out = sample_images((size_t)d.Cout * d.Ho * d.Wo, d.B, REF_RANDOM, 11);
    r.i_dx = sample_images((size_t)d.Cin * d.H * d.W, d.B, REF_RANDOM, 12);
    r.i_dw = sample_weights(d, 13);
    r.out.resize(r.i_out.size());
    r.dx.resize(r.i_dx.size());
    r.dw.resize(r.i_dw.size());
    r.db.resize(d.Cout);
    #pragma omp parallel for schedule(dynamic, 64)
    for (size_t i = 0; i < r.i_out.size(); i++) r.out[i] = (float)conv_forward_ref(d, x, w, bias, r.i_out[i]);
    #pragma omp parallel for schedule(dynamic, 64)
    for (size_t i = 0; i < r.i_dx.size(); i++) r.dx[i] = (float)conv_dx_ref(d, dout, w, r.i_dx[i]);
    #pragma omp parallel for schedule(dynamic, 1)
    for (size_t i = 0; i < r.i_dw.size(); i++) r.dw[i] = (float)conv_dweight_ref(d, dout, x, r.i_dw[i]);
    #pragma omp parallel for schedule(dynamic, 1)
    for (int co = 0; co < d.Cout; co++) r.db[co] = (float)conv_dbias_ref(d, dout, co);
    return r;
}

static std::vector<float> gather(const float* full, const std::vector<size_t>& idx) {
    std::vector<float> v(idx.size());
    for (size_t i = 0; i < idx.size(); i++) v[i] = full[idx[i]];
    return v;
}

// ---- one shape

typedef struct { double fwd, wgrad, bwd; } ConvTimes;

static void lab_alloc(ConvLab* L, const ConvShape* s, float** hx, float** hw, float** hb, float** hd) {
    ConvLab z = {};
    *L = z;
    ConvDims d = conv_dims(s);
    L->d = d;
    L->nx = (size_t)d.B * d.Cin * d.H * d.W;
    L->nw = (size_t)d.Cout * d.Cin * d.K * d.K;
    L->nout = (size_t)d.B * d.Cout * d.Ho * d.Wo;
    *hx = make_random_normal(L->nx, 1, 1.0f);
    *hw = make_random_normal(L->nw, 2, 1.0f / sqrtf((float)d.Cin * d.K * d.K));
    *hb = make_random_normal(d.Cout, 3, 0.1f);
    *hd = make_random_normal(L->nout, 4, 1.0f);
    L->x = to_device(*hx, L->nx);
    L->w = to_device(*hw, L->nw);
    L->bias = to_device(*hb, d.Cout);
    L->dout = to_device(*hd, L->nout);
    bf16_t* x16 = to_channels_last_bf16(*hx, d.B, d.Cin, d.H * d.W);
    bf16_t* w16 = to_channels_last_bf16(*hw, d.Cout, d.Cin, d.K * d.K);
    bf16_t* dout16 = to_channels_last_bf16(*hd, d.B, d.Cout, d.Ho * d.Wo);
    L->x16 = to_device(x16, L->nx);
    L->w16 = to_device(w16, L->nw);
    L->dout16 = to_device(dout16, L->nout);
    L->wt16 = device_alloc<bf16_t>(L->nw);
    free(x16); free(w16); free(dout16);
    L->out = device_floats(L->nout);
    L->dx = device_floats(L->nx);
    L->dw = device_floats(L->nw);
    L->db = device_floats(d.Cout);
}

static void lab_free(ConvLab* L) {
    float* f[] = {L->x, L->w, L->bias, L->dout, L->out, L->dx, L->dw, L->db};
    for (float* p : f) cudaCheck(cudaFree(p));
    bf16_t* h[] = {L->x16, L->w16, L->dout16, L->wt16};
    for (bf16_t* p : h) cudaCheck(cudaFree(p));
}

// runs version v once from zeroed gradients and compares with the reference; returns the worst error
static double validate_version(ConvLab* L, int v, const ConvRef& ref) {
    const ConvVersion* ver = &VERSIONS[v - 1];
    const ConvDims& d = L->d;
    device_zero(L->dw, L->nw * sizeof(float));
    device_zero(L->db, d.Cout * sizeof(float));
    ver->forward(L);
    ver->backward(L, 1);
    cudaCheck(cudaDeviceSynchronize());
    float* out = from_device(L->out, L->nout);
    float* dx = from_device(L->dx, L->nx);
    float* dw = from_device(L->dw, L->nw);
    float* db = from_device(L->db, d.Cout);
    if (ver->bf16_nhwc) {
        to_channels_first(out, d.B, d.Cout, d.Ho * d.Wo);
        to_channels_first(dx, d.B, d.Cin, d.H * d.W);
        to_channels_first(dw, d.Cout, d.Cin, d.K * d.K);
    }
    char what[64];
    double worst = 0.0;
    snprintf(what, sizeof(what), "v%d out", v);
    worst = fmax(worst, validate_host(what, gather(out, ref.i_out).data(), ref.out.data(), ref.out.size(), TOL_OUT));
    snprintf(what, sizeof(what), "v%d dx", v);
    worst = fmax(worst, validate_host(what, gather(dx, ref.i_dx).data(), ref.dx.data(), ref.dx.size(), TOL_OUT));
    snprintf(what, sizeof(what), "v%d dweight", v);
    worst = fmax(worst, validate_host(what, gather(dw, ref.i_dw).data(), ref.dw.data(), ref.dw.size(), TOL_DW));
    snprintf(what, sizeof(what), "v%d dbias", v);
    worst = fmax(worst, validate_host(what, db, ref.db.data(), d.Cout, TOL_DW));
    free(out); free(dx); free(dw); free(db);
    return worst;
}

static ConvTimes time_version(ConvLab* L, int v, int repeats) {
    const ConvVersion* ver = &VERSIONS[v - 1];
    ConvTimes t;
    t.fwd = benchmark_kernel(repeats, [&] { ver->forward(L); });
    t.wgrad = benchmark_kernel(repeats, [&] { ver->backward(L, 0); });
    t.bwd = benchmark_kernel(repeats, [&] { ver->backward(L, 1); });
    return t;
}

int main(int argc, char** argv) {
    LabArgs args = lab_parse_args(argc, argv, NVERSIONS, SHIPPED);
    lab_init("conv2d lab");
    PresetShapes* shapes = preset_shapes();
    printf("versions:");
    for (int v = 1; v <= NVERSIONS; v++) printf("  %d %s%s", v, VERSIONS[v - 1].name, v == SHIPPED ? "" : " (lab only)");
    printf("\nvalidation: worst error of out/dx/dweight/dbias per version (tol %.0e out, dx; %.0e dweight, dbias)\n",
           TOL_OUT, TOL_DW);
    std::vector<int> picked;
    for (int i = 0; i < shapes->nconv; i++) {
        if (lab_selected(&args, shapes->conv[i].where)) picked.push_back(i);
    }
    std::vector<ConvTimes> times(picked.size() * NVERSIONS);
    for (size_t si = 0; si < picked.size(); si++) {
        const ConvShape* s = &shapes->conv[picked[si]];
        ConvLab L;
        float *hx, *hw, *hb, *hd;
        lab_alloc(&L, s, &hx, &hw, &hb, &hd);
        const ConvDims& d = L.d;
        ConvRef ref = conv_reference(d, hx, hw, hb, hd);
        // version 4 sees its inputs rounded to bf16: its reference is computed from those
        float* rx = rounded_to_bf16(hx, L.nx);
        float* rw = rounded_to_bf16(hw, L.nw);
        float* rd = rounded_to_bf16(hd, L.nout);
        ConvRef ref16 = conv_reference(d, rx, rw, hb, rd);
        free(rx); free(rw); free(rd);
        printf("[%3zu/%zu] %-44s B%-3d %3d->%-3d %2dx%-2d K%d s%d x%-2d |", si + 1, picked.size(), s->where, d.B, d.Cin,
               d.Cout, d.H, d.W, d.K, d.stride, s->uses);
        for (int v = 1; v <= NVERSIONS; v++) {
            printf(" v%d %.1e", v, validate_version(&L, v, VERSIONS[v - 1].bf16_nhwc ? ref16 : ref));
        }
        printf("\n");
        lab_print_failures();
        for (int v = 1; v <= NVERSIONS; v++) {
            if (lab_timed(&args, v, SHIPPED)) times[si * NVERSIONS + v - 1] = time_version(&L, v, args.repeats);
        }
        lab_free(&L);
        free(hx); free(hw); free(hb); free(hd);
    }

    printf("\ntimings: median of %d calls, L2 flushed; us and TFLOP/s; bwd = dgrad + wgrad; x = bwd speed-up over v%d\n",
           args.repeats, SHIPPED);
    printf("%-44s %-4s %-23s | %-15s | %-15s | %-15s | %s\n", "shape", "B", "Cin->Cout HxW K s", "fwd", "wgrad", "bwd", "x");
    std::vector<double> total(NVERSIONS, 0.0);
    for (size_t si = 0; si < picked.size(); si++) {
        const ConvShape* s = &shapes->conv[picked[si]];
        ConvDims d = conv_dims(s);
        double flops = 2.0 * d.B * d.Cout * d.Cin * d.K * d.K * d.Ho * d.Wo;
        const ConvTimes& base = times[si * NVERSIONS + SHIPPED - 1];
        for (int v = 1; v <= NVERSIONS; v++) {
            if (!lab_timed(&args, v, SHIPPED)) continue;
            const ConvTimes& t = times[si * NVERSIONS + v - 1];
            total[v - 1] += s->uses * (t.fwd + t.bwd);
            printf("%-44s %-4d %3d->%-3d %2dx%-2d K%d s%d v%d | %8.1f %6.2f | %8.1f %6.2f | %8.1f %6.2f | %.2f\n",
                   s->where, d.B, d.Cin, d.Cout, d.H, d.W, d.K, d.stride, v, t.fwd, tflops(flops, t.fwd), t.wgrad,
                   tflops(flops, t.wgrad), t.bwd, tflops(2 * flops, t.bwd), base.bwd / t.bwd);
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
