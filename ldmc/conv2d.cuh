// ldmc/conv2d.cuh — 2-D convolution with bias, NCHW, the hot path of both models:
//   x (B, Cin, H, W), weight (Cout, Cin, K, K), bias (Cout) -> out (B, Cout, Ho, Wo)
//   K in {1, 3}, pad = K/2, stride in {1, 2}, Ho = (H + 2*pad - K)/stride + 1
//   conv2d_forward_ref / conv2d_backward_ref      the seven loops of the definition: the oracle of the tests
//   conv2d_forward_cpu / conv2d_backward_cpu      the fast CPU path (ldmc/cpu_conv2d.h: GEMM with implicit im2col)
//   conv2d_forward_cuda / conv2d_backward_cuda    im2col + cuBLAS
//   conv2d_forward / conv2d_backward              dispatchers following g_device
// The fast versions see every conv as a GEMM over the im2col matrix col (Cin*K*K, Ho*Wo) of each image:
//   forward   out_b    = weight (Cout, Cin*K*K) @ col_b
//   backward  dweight += sum_b dout_b (Cout, Ho*Wo) @ col_b^T,  dbias += sums of dout,
//             dx_b     = col2im(weight^T @ dout_b)
// CUDA: im2col of a chunk of images into a (Cin*K*K, nb*Ho*Wo) matrix and one cuBLAS SGEMM per
// chunk, with small gather kernels for the layout changes and col2im.
// Workspace (packed panels, padded copies, col buffers) lives in buffers grown on demand and kept,
// one set per device (the CPU's in cpu_conv2d.h). The module is not reentrant: call it from one
// host thread at a time (each call parallelises internally).
#pragma once
#define LDMC_CONV2D_CUH  // cpu_conv2d.h checks that it is included from here

#include "common.cuh"
#include "gemm.cuh"

// ----------------------------------------------------------------------------
// shapes and argument checks

static inline int conv2d_out_size(int n, int K, int stride) { return (n + 2 * (K / 2) - K) / stride + 1; }

static inline void conv2d_check_args(const char* fn, int B, int Cin, int H, int W, int Cout, int K, int stride) {
    if (K != 1 && K != 3) {
        fprintf(stderr, "Error: %s: kernel size K=%d is not supported.\nHINT: ldm.c convolutions are 1x1 or 3x3 (pad K/2).\n", fn, K);
        exit(EXIT_FAILURE);
    }
    if (stride != 1 && stride != 2) {
        fprintf(stderr, "Error: %s: stride %d is not supported.\nHINT: use stride 1, or 2 for downsampling.\n", fn, stride);
        exit(EXIT_FAILURE);
    }
    if (B <= 0 || Cin <= 0 || H <= 0 || W <= 0 || Cout <= 0) {
        fprintf(stderr, "Error: %s: every size must be positive (B=%d Cin=%d H=%d W=%d Cout=%d).\n",
                fn, B, Cin, H, W, Cout);
        exit(EXIT_FAILURE);
    }
}

// ----------------------------------------------------------------------------
// reference: the definition as loops
//   out[b][co][oy][ox] = bias[co] + sum_{ci, ky, kx} weight[co][ci][ky][kx] * x[b][ci][iy][ix]
// where output (oy, ox) reads input pixel iy = oy*stride + ky - pad, ix = ox*stride + kx - pad
// through tap (ky, kx), and x is 0 outside the image (zero padding). The backward is the same
// seven loops with the product sent to each of the other operands:
//   dbias[co]               += sum_{b, oy, ox} dout[b][co][oy][ox]
//   dweight[co][ci][ky][kx] += sum_{b, oy, ox} dout[b][co][oy][ox] * x[b][ci][iy][ix]
//   dx[b][ci][iy][ix]        = sum of dout[b][co][oy][ox] * weight[co][ci][ky][kx] over every
//                              (co, oy, ox, ky, kx) that reads pixel (iy, ix)
// Every sum is taken in double and rounded once. No blocking, no vectorisation: for tests and labs.

static inline void conv2d_forward_ref(float* out, const float* x, const float* weight, const float* bias,
                               int B, int Cin, int H, int W, int Cout, int K, int stride) {
    // out (B, Cout, Ho, Wo), x (B, Cin, H, W), weight (Cout, Cin, K, K), bias (Cout) or NULL (no bias)
    conv2d_check_args("conv2d_forward_ref", B, Cin, H, W, Cout, K, stride);
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride), pad = K / 2;
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int co = 0; co < Cout; co++) {
            for (int oy = 0; oy < Ho; oy++) {
                for (int ox = 0; ox < Wo; ox++) {
                    double acc = bias ? bias[co] : 0.0;
                    for (int ci = 0; ci < Cin; ci++) {
                        for (int ky = 0; ky < K; ky++) {
                            for (int kx = 0; kx < K; kx++) {
                                int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;  // zero padding
                                acc += (double)weight[(((size_t)co * Cin + ci) * K + ky) * K + kx] *
                                       x[(((size_t)b * Cin + ci) * H + iy) * W + ix];
                            }
                        }
                    }
                    out[(((size_t)b * Cout + co) * Ho + oy) * Wo + ox] = (float)acc;
                }
            }
        }
    }
}

static inline void conv2d_backward_ref(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                const float* weight, int B, int Cin, int H, int W, int Cout, int K, int stride) {
    // dout (B, Cout, Ho, Wo), x (B, Cin, H, W), weight (Cout, Cin, K, K);
    // dx (B, Cin, H, W) OVERWRITTEN (NULL: skipped), dweight (Cout, Cin, K, K) and dbias (Cout) ACCUMULATED
    conv2d_check_args("conv2d_backward_ref", B, Cin, H, W, Cout, K, stride);
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride), pad = K / 2;
    // parameter gradients: one output channel per thread, so each thread owns its dweight and dbias
    #pragma omp parallel for
    for (int co = 0; co < Cout; co++) {
        double db = 0.0;
        for (int b = 0; b < B; b++) {
            for (int oy = 0; oy < Ho; oy++) {
                for (int ox = 0; ox < Wo; ox++) db += dout[(((size_t)b * Cout + co) * Ho + oy) * Wo + ox];
            }
        }
        dbias[co] += (float)db;
        for (int ci = 0; ci < Cin; ci++) {
            for (int ky = 0; ky < K; ky++) {
                for (int kx = 0; kx < K; kx++) {
                    double dw = 0.0;
                    for (int b = 0; b < B; b++) {
                        for (int oy = 0; oy < Ho; oy++) {
                            for (int ox = 0; ox < Wo; ox++) {
                                int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                dw += (double)dout[(((size_t)b * Cout + co) * Ho + oy) * Wo + ox] *
                                      x[(((size_t)b * Cin + ci) * H + iy) * W + ix];
                            }
                        }
                    }
                    dweight[(((size_t)co * Cin + ci) * K + ky) * K + kx] += (float)dw;
                }
            }
        }
    }
    if (dx == NULL) return;
    // input gradient: one image per thread; each output position adds its gradient, through every
    // tap, into the input pixels it read (sums in a double copy of the image's dx)
    #pragma omp parallel for
    for (int b = 0; b < B; b++) {
        double* acc = (double*)mallocCheck((size_t)Cin * H * W * sizeof(double));  // (Cin, H, W)
        for (size_t i = 0; i < (size_t)Cin * H * W; i++) acc[i] = 0.0;
        for (int co = 0; co < Cout; co++) {
            for (int oy = 0; oy < Ho; oy++) {
                for (int ox = 0; ox < Wo; ox++) {
                    double g = dout[(((size_t)b * Cout + co) * Ho + oy) * Wo + ox];
                    for (int ci = 0; ci < Cin; ci++) {
                        for (int ky = 0; ky < K; ky++) {
                            for (int kx = 0; kx < K; kx++) {
                                int iy = oy * stride + ky - pad, ix = ox * stride + kx - pad;
                                if (iy < 0 || iy >= H || ix < 0 || ix >= W) continue;
                                acc[((size_t)ci * H + iy) * W + ix] +=
                                    g * weight[(((size_t)co * Cin + ci) * K + ky) * K + kx];
                            }
                        }
                    }
                }
            }
        }
        for (size_t i = 0; i < (size_t)Cin * H * W; i++) dx[(size_t)b * Cin * H * W + i] = (float)acc[i];
        free(acc);
    }
}

// ----------------------------------------------------------------------------
// CPU: the fast path, conv2d_forward_cpu and conv2d_backward_cpu, in its own module

#include "cpu_conv2d.h"

// ----------------------------------------------------------------------------
// CUDA workspace: the col matrices of one chunk of images, in one GPU buffer grown on demand

static float* g_conv2d_cuda_ws = NULL;
static size_t g_conv2d_cuda_ws_floats = 0;

// a GPU buffer of at least `floats` floats; its contents do not survive the next call
static inline float* conv2d_cuda_workspace(size_t floats) {
    if (floats > g_conv2d_cuda_ws_floats) {
        if (g_conv2d_cuda_ws) cudaCheck(cudaFree(g_conv2d_cuda_ws));
        cudaCheck(cudaMalloc((void**)&g_conv2d_cuda_ws, floats * sizeof(float)));
        g_conv2d_cuda_ws_floats = floats;
    }
    return g_conv2d_cuda_ws;
}

// ----------------------------------------------------------------------------
// CUDA kernels
// The GPU path works on chunks of nb images in a "channels-major" layout: a matrix whose rows are
// channels (or taps) and whose nb*Ho*Wo columns are the positions of every image in the chunk,
// so a whole chunk is one cuBLAS SGEMM (the batch sum of dweight is the GEMM's inner dimension).

// col[(c*K + ky)*K + kx][n] with n = (b*Ho + oy)*Wo + ox: the im2col matrix of nb images.
// With K = 1, stride 1 it is the layout change NCHW -> (C, nb*H*W).
__global__ void conv2d_im2col_kernel(float* col, const float* x, int nb, int Cin, int H, int W,
                                     int K, int stride, int Ho, int Wo) {
    long ncols = (long)nb * Ho * Wo;
    long total = (long)Cin * K * K * ncols;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        long n = i % ncols;
        int tap = (int)(i / ncols);
        int c = tap / (K * K), ky = (tap / K) % K, kx = tap % K;
        int ox = (int)(n % Wo), oy = (int)((n / Wo) % Ho), b = (int)(n / ((long)Wo * Ho));
        int iy = oy * stride + ky - K / 2, ix = ox * stride + kx - K / 2;
        col[i] = (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[(((long)b * Cin + c) * H + iy) * W + ix] : 0.0f;
    }
}

// out[b][co][p] = y[co][b*HWo + p] + bias[co] (bias may be NULL): channels-major GEMM result -> NCHW
__global__ void conv2d_to_nchw_bias_kernel(float* out, const float* y, const float* bias, int nb, int Cout, long HWo) {
    long total = (long)nb * Cout * HWo;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        long p = i % HWo;
        int co = (int)((i / HWo) % Cout);
        long b = i / (HWo * Cout);
        out[i] = y[co * (long)nb * HWo + b * HWo + p] + (bias ? bias[co] : 0.0f);
    }
}

// dx[b][c][iy][ix] = sum of dcol over the taps (ky, kx) and output positions that read this pixel:
// a gather (one thread per dx element, no atomics, deterministic); overwrites dx
__global__ void conv2d_col2im_kernel(float* dx, const float* dcol, int nb, int Cin, int H, int W,
                                     int K, int stride, int Ho, int Wo) {
    long ncols = (long)nb * Ho * Wo;
    long total = (long)nb * Cin * H * W;
    int pad = K / 2;
    for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < total; i += (long)gridDim.x * blockDim.x) {
        int ix = (int)(i % W), iy = (int)((i / W) % H), c = (int)((i / ((long)W * H)) % Cin);
        long b = i / ((long)W * H * Cin);
        float sum = 0.0f;
        for (int ky = 0; ky < K; ky++) {
            int ty = iy + pad - ky;  // = oy * stride
            if (ty < 0 || ty % stride != 0 || ty / stride >= Ho) continue;
            for (int kx = 0; kx < K; kx++) {
                int tx = ix + pad - kx;
                if (tx < 0 || tx % stride != 0 || tx / stride >= Wo) continue;
                sum += dcol[(long)((c * K + ky) * K + kx) * ncols + (b * Ho + ty / stride) * Wo + tx / stride];
            }
        }
        dx[i] = sum;
    }
}

// dbias[co] += sum over b, p of dout[b][co][p]: one block per channel, tree reduction in shared memory
__global__ void conv2d_dbias_kernel(float* dbias, const float* dout, int B, int Cout, long HWo) {
    __shared__ float partial[256];
    int co = blockIdx.x;
    float s = 0.0f;
    for (long i = threadIdx.x; i < (long)B * HWo; i += blockDim.x) {
        long b = i / HWo;
        s += dout[(b * Cout + co) * HWo + (i - b * HWo)];
    }
    partial[threadIdx.x] = s;
    __syncthreads();
    for (int stride = blockDim.x / 2; stride > 0; stride >>= 1) {
        if (threadIdx.x < stride) partial[threadIdx.x] += partial[threadIdx.x + stride];
        __syncthreads();
    }
    if (threadIdx.x == 0) dbias[co] += partial[0];
}

// ----------------------------------------------------------------------------
// CUDA launchers

// grid for a grid-stride loop over `total` elements
static inline int conv2d_grid(long total, int block) {
    long g = (total + block - 1) / block;
    return (int)(g < 65536 ? (g > 0 ? g : 1) : 65536);
}

// images per chunk: the col matrix (Kd rows) plus a Cout-row matrix of nb*HWo columns each stay
// under 2^26 floats (256 MiB) of workspace
static inline int conv2d_chunk_images(int B, int Kd, int Cout, long HWo) {
    long per_image = (long)(Kd + Cout) * HWo;
    long nb = (1L << 26) / per_image;
    if (nb < 1) nb = 1;
    return (int)(nb < B ? nb : B);
}

static inline void conv2d_forward_cuda(float* out, const float* x, const float* weight, const float* bias,
                                int B, int Cin, int H, int W, int Cout, int K, int stride) {
    conv2d_check_args("conv2d_forward_cuda", B, Cin, H, W, Cout, K, stride);
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride);
    int Kd = Cin * K * K;
    long HWo = (long)Ho * Wo;
    int chunk = conv2d_chunk_images(B, Kd, Cout, HWo);
    float* col = conv2d_cuda_workspace((size_t)(Kd + Cout) * chunk * HWo);
    float* y = col + (size_t)Kd * chunk * HWo;  // (Cout, nb*HWo)
    const int block = 256;
    for (int b0 = 0; b0 < B; b0 += chunk) {
        int nb = B - b0 < chunk ? B - b0 : chunk;
        int ncols = (int)(nb * HWo);
        conv2d_im2col_kernel<<<conv2d_grid((long)Kd * ncols, block), block>>>(
            col, x + (size_t)b0 * Cin * H * W, nb, Cin, H, W, K, stride, Ho, Wo);
        cudaCheck(cudaGetLastError());
        gemm_cuda(0, 0, Cout, ncols, Kd, 1.0f, weight, Kd, col, ncols, 0.0f, y, ncols);
        conv2d_to_nchw_bias_kernel<<<conv2d_grid((long)nb * Cout * HWo, block), block>>>(
            out + (size_t)b0 * Cout * HWo, y, bias, nb, Cout, HWo);
        cudaCheck(cudaGetLastError());
    }
}

static inline void conv2d_backward_cuda(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                 const float* weight, int B, int Cin, int H, int W, int Cout, int K, int stride) {
    conv2d_check_args("conv2d_backward_cuda", B, Cin, H, W, Cout, K, stride);
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride);
    int Kd = Cin * K * K;
    long HWo = (long)Ho * Wo;
    const int block = 256;
    conv2d_dbias_kernel<<<Cout, block>>>(dbias, dout, B, Cout, HWo);
    cudaCheck(cudaGetLastError());
    int chunk = conv2d_chunk_images(B, Kd, Cout, HWo);
    float* col = conv2d_cuda_workspace((size_t)(Kd + Cout) * chunk * HWo);  // (Kd, nb*HWo), later dcol
    float* dy = col + (size_t)Kd * chunk * HWo;                            // (Cout, nb*HWo)
    for (int b0 = 0; b0 < B; b0 += chunk) {
        int nb = B - b0 < chunk ? B - b0 : chunk;
        int ncols = (int)(nb * HWo);
        conv2d_im2col_kernel<<<conv2d_grid((long)Kd * ncols, block), block>>>(
            col, x + (size_t)b0 * Cin * H * W, nb, Cin, H, W, K, stride, Ho, Wo);
        cudaCheck(cudaGetLastError());
        // dout chunk NCHW -> (Cout, nb*HWo): the im2col of a 1x1 stride-1 conv
        conv2d_im2col_kernel<<<conv2d_grid((long)Cout * ncols, block), block>>>(
            dy, dout + (size_t)b0 * Cout * HWo, nb, Cout, Ho, Wo, 1, 1, Ho, Wo);
        cudaCheck(cudaGetLastError());
        // dweight (Cout, Kd) += dy (Cout, ncols) @ col^T (ncols, Kd)
        gemm_cuda(0, 1, Cout, Kd, ncols, 1.0f, dy, ncols, col, ncols, 1.0f, dweight, Kd);
        if (dx != NULL) {
            // dcol (Kd, ncols) = weight^T (Kd, Cout) @ dy (Cout, ncols), over col (no longer needed)
            gemm_cuda(1, 0, Kd, ncols, Cout, 1.0f, weight, Kd, dy, ncols, 0.0f, col, ncols);
            conv2d_col2im_kernel<<<conv2d_grid((long)nb * Cin * H * W, block), block>>>(
                dx + (size_t)b0 * Cin * H * W, col, nb, Cin, H, W, K, stride, Ho, Wo);
            cudaCheck(cudaGetLastError());
        }
    }
}

// ----------------------------------------------------------------------------
// dispatchers: pointers live on the current device

// x (B, Cin, H, W), weight (Cout, Cin, K, K), bias (Cout) -> out (B, Cout, Ho, Wo)
static inline void conv2d_forward(float* out, const float* x, const float* weight, const float* bias,
                           int B, int Cin, int H, int W, int Cout, int K, int stride) {
    if (g_device == DEVICE_CUDA) {
        conv2d_forward_cuda(out, x, weight, bias, B, Cin, H, W, Cout, K, stride);
    } else {
        conv2d_forward_cpu(out, x, weight, bias, B, Cin, H, W, Cout, K, stride);
    }
}

// dout (B, Cout, Ho, Wo) -> dx (B, Cin, H, W) OVERWRITTEN (NULL: skipped),
// dweight (Cout, Cin, K, K) and dbias (Cout) ACCUMULATED
static inline void conv2d_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                            const float* weight, int B, int Cin, int H, int W, int Cout, int K, int stride) {
    if (g_device == DEVICE_CUDA) {
        conv2d_backward_cuda(dx, dweight, dbias, dout, x, weight, B, Cin, H, W, Cout, K, stride);
    } else {
        conv2d_backward_cpu(dx, dweight, dbias, dout, x, weight, B, Cin, H, W, Cout, K, stride);
    }
}

