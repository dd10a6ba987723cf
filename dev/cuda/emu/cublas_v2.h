// dev/cuda/emu/cublas_v2.h — the cuBLAS calls of ldmc/gemm.cuh, as plain loops on the CPU (see
// cuda_runtime.h in this folder): column-major C = alpha op(A) op(B) + beta C, batched by strides
#pragma once
#include "cuda_runtime.h"

typedef struct EmuCublas* cublasHandle_t;
typedef enum { CUBLAS_STATUS_SUCCESS = 0 } cublasStatus_t;
typedef enum { CUBLAS_OP_N = 0, CUBLAS_OP_T = 1 } cublasOperation_t;
typedef enum { CUBLAS_DEFAULT_MATH = 0 } cublasMath_t;

static cublasStatus_t cublasCreate(cublasHandle_t* h) { *h = NULL; return CUBLAS_STATUS_SUCCESS; }
static cublasStatus_t cublasSetMathMode(cublasHandle_t, cublasMath_t) { return CUBLAS_STATUS_SUCCESS; }

static cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t, cublasOperation_t ta, cublasOperation_t tb, int m, int n,
                                                int k, const float* alpha, const float* A, int lda, long long strideA,
                                                const float* B, int ldb, long long strideB, const float* beta, float* C,
                                                int ldc, long long strideC, int count) {
    for (int c = 0; c < count; c++) {
        const float* a = A + c * strideA;
        const float* b = B + c * strideB;
        float* cc = C + c * strideC;
        #pragma omp parallel for
        for (int j = 0; j < n; j++) {
            for (int i = 0; i < m; i++) {
                float s = 0.0f;
                for (int l = 0; l < k; l++) {
                    s += (ta ? a[l + (size_t)i * lda] : a[i + (size_t)l * lda]) * (tb ? b[j + (size_t)l * ldb] : b[l + (size_t)j * ldb]);
                }
                float* o = &cc[i + (size_t)j * ldc];
                *o = *beta == 0.0f ? *alpha * s : *alpha * s + *beta * *o;  // beta 0: C is not read
            }
        }
    }
    return CUBLAS_STATUS_SUCCESS;
}

static cublasStatus_t cublasSgemm(cublasHandle_t h, cublasOperation_t ta, cublasOperation_t tb, int m, int n, int k,
                                  const float* alpha, const float* A, int lda, const float* B, int ldb, const float* beta,
                                  float* C, int ldc) {
    return cublasSgemmStridedBatched(h, ta, tb, m, n, k, alpha, A, lda, 0, B, ldb, 0, beta, C, ldc, 0, 1);
}
