// ldmc/gemm.cuh — general matrix multiply on both devices, row-major, BLAS semantics:
//   C (M, N) = alpha * op(A) (M, K) @ op(B) (K, N) + beta * C     (beta == 0: C is not read)
// op(X) is X or X^T (transA, transB); lda/ldb/ldc are the row strides of the matrices as stored.
//   gemm_ref / gemm_batched_ref           the three loops of the definition: the oracle of the tests
//   gemm_cpu / gemm_batched_cpu           the fast CPU path (ldmc/cpu_gemm.h: packed, cache-blocked)
//   gemm_cuda / gemm_batched_cuda         cuBLAS in fp32 (row-major through the usual operand swap)
//   gemm / gemm_batched                   dispatchers following g_device
// The batched versions run `count` independent products at element strides strideA/B/C.
#pragma once
#define LDMC_GEMM_CUH  // cpu_gemm.h checks that it is included from here

#include "common.cuh"

// ----------------------------------------------------------------------------
// argument checks (BLAS's xerbla, with a message that names the problem), shared by every version

static inline void gemm_check_args(const char* fn, int transA, int transB, int M, int N, int K,
                            int lda, int ldb, int ldc) {
    const char* problem = NULL;
    char buf[160];
    if (M < 0 || N < 0 || K < 0) {
        snprintf(buf, sizeof(buf), "negative size M=%d N=%d K=%d", M, N, K); problem = buf;
    } else if (lda < (transA ? M : K) || lda < 1) {
        snprintf(buf, sizeof(buf), "lda=%d is smaller than the row length %d of A", lda, transA ? M : K); problem = buf;
    } else if (ldb < (transB ? K : N) || ldb < 1) {
        snprintf(buf, sizeof(buf), "ldb=%d is smaller than the row length %d of B", ldb, transB ? K : N); problem = buf;
    } else if (ldc < N || ldc < 1) {
        snprintf(buf, sizeof(buf), "ldc=%d is smaller than the row length N=%d of C", ldc, N); problem = buf;
    }
    if (problem) {
        fprintf(stderr, "Error: %s(transA=%d, transB=%d, M=%d, N=%d, K=%d): %s.\n"
                        "HINT: matrices are row-major; ld* is the row stride of the matrix as stored.\n",
                fn, transA, transB, M, N, K, problem);
        exit(EXIT_FAILURE);
    }
}

// ----------------------------------------------------------------------------
// reference: the definition as loops, one (i, j) at a time, the dot product over k in double and
// rounded once to float, so it is at least as accurate as any fast version.

static inline void gemm_ref(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda,
                     const float* B, int ldb, float beta, float* C, int ldc) {
    // op(A) (M, K), op(B) (K, N), C (M, N); op(A)[i][k] is A[i*lda + k], or A[k*lda + i] when transA
    gemm_check_args("gemm_ref", transA, transB, M, N, K, lda, ldb, ldc);
    #pragma omp parallel for
    for (int i = 0; i < M; i++) {
        for (int j = 0; j < N; j++) {
            double acc = 0.0;
            for (int k = 0; k < K; k++) {
                double a = transA ? A[(size_t)k * lda + i] : A[(size_t)i * lda + k];
                double b = transB ? B[(size_t)j * ldb + k] : B[(size_t)k * ldb + j];
                acc += a * b;
            }
            float* c = C + (size_t)i * ldc + j;
            *c = (float)(alpha * acc + (beta != 0.0f ? (double)beta * *c : 0.0));
        }
    }
}

static inline void gemm_batched_ref(int transA, int transB, int M, int N, int K, float alpha,
                             const float* A, int lda, long strideA, const float* B, int ldb, long strideB,
                             float beta, float* C, int ldc, long strideC, int count) {
    // product b reads A + b*strideA, B + b*strideB and writes C + b*strideC
    for (int b = 0; b < count; b++) {
        gemm_ref(transA, transB, M, N, K, alpha, A + b * strideA, lda, B + b * strideB, ldb,
                 beta, C + b * strideC, ldc);
    }
}

// ----------------------------------------------------------------------------
// CPU: the fast path, gemm_cpu and gemm_batched_cpu, in its own module

#include "cpu_gemm.h"

// ----------------------------------------------------------------------------
// CUDA: cuBLAS. cuBLAS is column-major; a row-major matrix is its column-major transpose, so
// row-major C = op(A) op(B) is computed as column-major C^T = op(B)^T op(A)^T: swap the operands
// (and M with N), keep the transpose flags and leading dimensions.

static inline void gemm_cuda(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda,
                      const float* B, int ldb, float beta, float* C, int ldc) {
    gemm_check_args("gemm_cuda", transA, transB, M, N, K, lda, ldb, ldc);
    if (M == 0 || N == 0) return;
    cublasCheck(cublasSgemm(g_cublas, transB ? CUBLAS_OP_T : CUBLAS_OP_N, transA ? CUBLAS_OP_T : CUBLAS_OP_N,
                            N, M, K, &alpha, B, ldb, A, lda, &beta, C, ldc));
}

static inline void gemm_batched_cuda(int transA, int transB, int M, int N, int K, float alpha,
                              const float* A, int lda, long strideA, const float* B, int ldb, long strideB,
                              float beta, float* C, int ldc, long strideC, int count) {
    gemm_check_args("gemm_batched_cuda", transA, transB, M, N, K, lda, ldb, ldc);
    if (M == 0 || N == 0 || count <= 0) return;
    cublasCheck(cublasSgemmStridedBatched(g_cublas, transB ? CUBLAS_OP_T : CUBLAS_OP_N,
                                          transA ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K, &alpha,
                                          B, ldb, strideB, A, lda, strideA, &beta, C, ldc, strideC, count));
}

// ----------------------------------------------------------------------------
// dispatchers: pointers live on the current device

static inline void gemm(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda,
                 const float* B, int ldb, float beta, float* C, int ldc) {
    if (g_device == DEVICE_CUDA) {
        gemm_cuda(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    } else {
        gemm_cpu(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    }
}

static inline void gemm_batched(int transA, int transB, int M, int N, int K, float alpha,
                         const float* A, int lda, long strideA, const float* B, int ldb, long strideB,
                         float beta, float* C, int ldc, long strideC, int count) {
    if (g_device == DEVICE_CUDA) {
        gemm_batched_cuda(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB,
                          beta, C, ldc, strideC, count);
    } else {
        gemm_batched_cpu(transA, transB, M, N, K, alpha, A, lda, strideA, B, ldb, strideB,
                         beta, C, ldc, strideC, count);
    }
}
