// ldmc/linear.cuh — the fully connected layer (the U-Net's time-embedding MLP and each ResBlock's
// time projection): out (N, outdim) = x (N, in) @ weight^T + bias, weight (outdim, in) as PyTorch.
// Both matmuls go through gemm.cuh (blocked GEMM on the CPU, cuBLAS fp32 on CUDA); the bias is
// written into out first and the GEMM accumulates onto it (beta = 1), so no extra pass is needed.
// Backward: dx overwritten (NULL when the input needs no gradient), dweight and dbias accumulated.
#pragma once

#include "common.cuh"
#include "gemm.cuh"

// ----------------------------------------------------------------------------
// CPU

static void linear_forward_cpu(float* out, const float* x, const float* weight, const float* bias,
                               int N, int in, int outdim) {
    // out (N, outdim), x (N, in), weight (outdim, in), bias (outdim)
    #pragma omp parallel for
    for (int n = 0; n < N; n++) {
        memcpy(out + (size_t)n * outdim, bias, outdim * sizeof(float));
    }
    gemm_cpu(0, 1, N, outdim, in, 1.0f, x, in, weight, in, 1.0f, out, outdim);
}

static void linear_backward_cpu(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
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

static void linear_forward_cuda(float* out, const float* x, const float* weight, const float* bias,
                                int N, int in, int outdim) {
    int block = 256;
    size_t n = (size_t)N * outdim;
    linear_bias_fill_kernel<<<(unsigned)((n + block - 1) / block), block>>>(out, bias, N, outdim);
    cudaCheck(cudaGetLastError());
    gemm_cuda(0, 1, N, outdim, in, 1.0f, x, in, weight, in, 1.0f, out, outdim);
}

static void linear_backward_cuda(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
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

static void linear_forward(float* out, const float* x, const float* weight, const float* bias,
                           int N, int in, int outdim) {
    if (g_device == DEVICE_CUDA) {
        linear_forward_cuda(out, x, weight, bias, N, in, outdim);
    } else {
        linear_forward_cpu(out, x, weight, bias, N, in, outdim);
    }
}

static void linear_backward(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                            const float* weight, int N, int in, int outdim) {
    if (g_device == DEVICE_CUDA) {
        linear_backward_cuda(dx, dweight, dbias, dout, x, weight, N, in, outdim);
    } else {
        linear_backward_cpu(dx, dweight, dbias, dout, x, weight, N, in, outdim);
    }
}
