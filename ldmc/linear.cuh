// ldmc/linear.cuh — the fully connected layer (the U-Net's time-embedding MLP and each ResBlock's
// time projection): out (N, outdim) = x (N, in) @ weight^T + bias, weight (outdim, in) as PyTorch.
// Backward: dx overwritten (NULL when the input needs no gradient), dweight and dbias accumulated.
//   linear_forward_ref / linear_backward_ref     the loops of the definition: the oracle of the tests
//   linear_forward_cpu / linear_backward_cpu     the fast CPU path: the packed GEMM of ldmc/cpu_gemm.h
//   linear_forward_cuda / linear_backward_cuda   cuBLAS fp32 through gemm.cuh
//   linear_forward / linear_backward             dispatchers following g_device
// The fast versions write the bias into out first and let the GEMM accumulate onto it (beta = 1),
// so no extra pass is needed.
#pragma once

#include "common.cuh"
#include "gemm.cuh"

// ----------------------------------------------------------------------------
// reference: the sums in double, one output element at a time
//   out[n][o]      = bias[o] + sum_i x[n][i] * weight[o][i]
//   dx[n][i]       = sum_o dout[n][o] * weight[o][i]
//   dweight[o][i] += sum_n dout[n][o] * x[n][i]
//   dbias[o]      += sum_n dout[n][o]

static inline void linear_forward_ref(float* out, const float* x, const float* weight, const float* bias,
                               int N, int in, int outdim) {
    // out (N, outdim), x (N, in), weight (outdim, in), bias (outdim)
    #pragma omp parallel for collapse(2)
    for (int n = 0; n < N; n++) {
        for (int o = 0; o < outdim; o++) {
            double acc = bias[o];
            for (int i = 0; i < in; i++) acc += (double)x[(size_t)n * in + i] * weight[(size_t)o * in + i];
            out[(size_t)n * outdim + o] = (float)acc;
        }
    }
}

static inline void linear_backward_ref(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                const float* weight, int N, int in, int outdim) {
    // dx (N, in) overwritten or NULL, dweight (outdim, in) and dbias (outdim) accumulated, dout (N, outdim)
    if (dx != NULL) {
        #pragma omp parallel for collapse(2)
        for (int n = 0; n < N; n++) {
            for (int i = 0; i < in; i++) {
                double acc = 0.0;
                for (int o = 0; o < outdim; o++) {
                    acc += (double)dout[(size_t)n * outdim + o] * weight[(size_t)o * in + i];
                }
                dx[(size_t)n * in + i] = (float)acc;
            }
        }
    }
    // one output unit per thread: each owns its row of dweight and its dbias
    #pragma omp parallel for
    for (int o = 0; o < outdim; o++) {
        double db = 0.0;
        for (int n = 0; n < N; n++) db += dout[(size_t)n * outdim + o];
        dbias[o] += (float)db;
        for (int i = 0; i < in; i++) {
            double dw = 0.0;
            for (int n = 0; n < N; n++) dw += (double)dout[(size_t)n * outdim + o] * x[(size_t)n * in + i];
            dweight[(size_t)o * in + i] += (float)dw;
        }
    }
}

// ----------------------------------------------------------------------------
// CPU: the fast path, two packed GEMMs (gemm_cpu) and a plain loop for dbias

static inline void linear_forward_cpu(float* out, const float* x, const float* weight, const float* bias,
                               int N, int in, int outdim) {
    // out (N, outdim), x (N, in), weight (outdim, in), bias (outdim)
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        memcpy(out + (size_t)n * outdim, bias, outdim * sizeof(float));
    }
    gemm_cpu(0, 1, N, outdim, in, 1.0f, x, in, weight, in, 1.0f, out, outdim);
}

static inline void linear_backward_cpu(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                const float* weight, int N, int in, int outdim) {
    // dx (N, in) overwritten or NULL, dweight (outdim, in) and dbias (outdim) accumulated, dout (N, outdim)
    if (dx != NULL) {
        gemm_cpu(0, 0, N, in, outdim, 1.0f, dout, outdim, weight, in, 0.0f, dx, in);  // dx = dout @ W
    }
    gemm_cpu(1, 0, outdim, in, N, 1.0f, dout, outdim, x, in, 1.0f, dweight, in);     // dW += dout^T @ x
    #pragma omp parallel for
    for (int o = 0; o < outdim; o++) {
        float sum = 0.0f;
        for (int n = 0; n < N; n++) sum += dout[(size_t)n * outdim + o];
        dbias[o] += sum;
    }
}

// ----------------------------------------------------------------------------
// CUDA

// out[n, o] = bias[o], the starting value the GEMM accumulates onto
__global__ static void linear_bias_fill_kernel(float* out, const float* bias, int N, int outdim) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)N * outdim) return;
    out[idx] = bias[idx % outdim];
}

// dbias[o] += sum over n of dout[n, o]: one thread per column, consecutive threads read consecutive
// columns (coalesced); the sum runs in n order, so the result is the same every run (no atomics)
__global__ static void linear_dbias_kernel(float* dbias, const float* dout, int N, int outdim) {
    int o = blockIdx.x * blockDim.x + threadIdx.x;
    if (o >= outdim) return;
    float sum = 0.0f;
    for (int n = 0; n < N; n++) sum += dout[(size_t)n * outdim + o];
    dbias[o] += sum;
}

static inline void linear_forward_cuda(float* out, const float* x, const float* weight, const float* bias,
                                int N, int in, int outdim) {
    int block = 256;
    size_t n = (size_t)N * outdim;
    linear_bias_fill_kernel<<<(unsigned)((n + block - 1) / block), block>>>(out, bias, N, outdim);
    cudaCheck(cudaGetLastError());
    gemm_cuda(0, 1, N, outdim, in, 1.0f, x, in, weight, in, 1.0f, out, outdim);
}

static inline void linear_backward_cuda(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                 const float* weight, int N, int in, int outdim) {
    if (dx != NULL) {
        gemm_cuda(0, 0, N, in, outdim, 1.0f, dout, outdim, weight, in, 0.0f, dx, in);
    }
    gemm_cuda(1, 0, outdim, in, N, 1.0f, dout, outdim, x, in, 1.0f, dweight, in);
    int block = 256;
    linear_dbias_kernel<<<ceil_div(outdim, block), block>>>(dbias, dout, N, outdim);
    cudaCheck(cudaGetLastError());
}

// ----------------------------------------------------------------------------
// dispatchers

static inline void linear_forward(float* out, const float* x, const float* weight, const float* bias,
                           int N, int in, int outdim) {
    if (g_device == DEVICE_CUDA) {
        linear_forward_cuda(out, x, weight, bias, N, in, outdim);
    } else {
        linear_forward_cpu(out, x, weight, bias, N, in, outdim);
    }
}

static inline void linear_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                            const float* weight, int N, int in, int outdim) {
    if (g_device == DEVICE_CUDA) {
        linear_backward_cuda(dx, dweight, dbias, dout, x, weight, N, in, outdim);
    } else {
        linear_backward_cpu(dx, dweight, dbias, dout, x, weight, N, in, outdim);
    }
}
