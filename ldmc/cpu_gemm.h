// ldmc/cpu_gemm.h — the fast CPU GEMM: gemm_cpu and gemm_batched_cpu, with the semantics of gemm_ref
// in ldmc/gemm.cuh, which is the oracle the tests check this file against (tests/test_conv.h).
// What makes it fast, in the BLIS/GotoBLAS manner: op(A) and op(B) are copied ("packed") block by
// block into contiguous micro-panels sized for the caches, and a register-blocked micro-kernel
// multiplies one MR-row strip of A by one NR-column strip of B. The micro-kernel is plain C on GCC
// vector types; gcc -O3 -march=native turns it into FMAs on registers, with the A values broadcast
// from the packed strip. Threads take slices of C, so no two threads ever add into the same element.
// The packing and micro-kernel pieces are exported because the fast CPU convolution
// (ldmc/cpu_conv2d.h) packs im2col panels directly from the image (no im2col buffer) and reuses them.
// This file is the CPU section of ldmc/gemm.cuh, which includes it after the argument checks and
// the reference: include ldmc/gemm.cuh, not this file.
#pragma once

#ifndef LDMC_GEMM_CUH
#error "ldmc/cpu_gemm.h is a section of ldmc/gemm.cuh: include ldmc/gemm.cuh instead"
#endif

// ----------------------------------------------------------------------------
// CPU: blocking parameters
// MR x NR is the register tile, held as MR x (NR/VL) SIMD vectors of VL floats. It must fit the
// register file with room for the B vectors, so it follows the instruction set the host compiler
// targets (-march=native): AVX-512 has 32 registers of 16 floats, AVX2 16 of 8, SSE 16 of 4.
// KC is the depth of a packed block: an A strip (MR x KC) and a B strip (KC x NR) stay in L1.
// An MC x KC block of A stays in L2, and a KC x NC panel of B in L2/L3. The values were tuned in
// dev/cpu/conv2d.cu on a 2-core AMD EPYC (Zen 4); they are compile-time knobs (-DGEMM_MR=...)
// so the lab can sweep them.

#if defined(__AVX512F__)
#define GEMM_VL 16
#ifndef GEMM_MR
#define GEMM_MR 8
#endif
#ifndef GEMM_NR
#define GEMM_NR 32
#endif
#elif defined(__AVX__)
#define GEMM_VL 8
#ifndef GEMM_MR
#define GEMM_MR 6
#endif
#ifndef GEMM_NR
#define GEMM_NR 16
#endif
#else
#define GEMM_VL 4
#ifndef GEMM_MR
#define GEMM_MR 4
#endif
#ifndef GEMM_NR
#define GEMM_NR 12
#endif
#endif
#define GEMM_NV (GEMM_NR / GEMM_VL)  // vectors per tile row
#ifndef GEMM_KC
#define GEMM_KC 256
#endif
#ifndef GEMM_MC
#define GEMM_MC (128 / GEMM_MR * GEMM_MR)
#endif
#ifndef GEMM_NC
#define GEMM_NC (1024 / GEMM_NR * GEMM_NR)
#endif
// packed blocks hold whole strips: the block sizes must be multiples of the tile sizes
#if GEMM_NR % GEMM_VL != 0 || GEMM_MC % GEMM_MR != 0 || GEMM_NC % GEMM_NR != 0
#error "GEMM_NR must be a multiple of GEMM_VL, GEMM_MC of GEMM_MR and GEMM_NC of GEMM_NR"
#endif

// one SIMD register of floats; wider GCC vector types are split badly (spilled), so the tile
// row is GEMM_NV of these
typedef float gemm_vec __attribute__((vector_size(GEMM_VL * sizeof(float))));
// ----------------------------------------------------------------------------
// CPU: micro-kernel and packing

// C (MR, NR) = alpha * Ap^T @ B + beta * C for one full register tile.
// Ap (kc, MR): the packed A strip, k-major. Row k of the B strip is NV vectors of VL floats, vector
// v at brow(k, v): in the packed strip, Bp + k * NR + v * VL (gemm_tile); the convolution's direct
// paths read them straight from the image instead (ldmc/cpu_conv2d.h). Either way the same
// products are summed in the same order, so the result is the same bits.
// Each k step is a rank-1 update: MR broadcasts of A times NV vectors of B. With the loops over
// r and v fully unrolled by gcc, acc lives in registers for the whole k loop.
template <class BRow>
static inline void gemm_micro_kernel_rows(int kc, const float* __restrict__ Ap, BRow brow,
                                          float alpha, float beta, float* __restrict__ C, int ldc) {
    gemm_vec acc[GEMM_MR][GEMM_NV];
    for (int r = 0; r < GEMM_MR; r++) {
        for (int v = 0; v < GEMM_NV; v++) acc[r][v] = (gemm_vec){};
    }
    for (int k = 0; k < kc; k++) {
        gemm_vec b[GEMM_NV];
        for (int v = 0; v < GEMM_NV; v++) {
            memcpy(&b[v], brow(k, v), sizeof(gemm_vec));  // unaligned-safe load
        }
        const float* a = Ap + (size_t)k * GEMM_MR;
        for (int r = 0; r < GEMM_MR; r++) {
            for (int v = 0; v < GEMM_NV; v++) acc[r][v] += a[r] * b[v];
        }
    }
    for (int r = 0; r < GEMM_MR; r++) {
        for (int v = 0; v < GEMM_NV; v++) {
            float* c = C + (size_t)r * ldc + v * GEMM_VL;
            gemm_vec out = alpha * acc[r][v];
            if (beta != 0.0f) {
                gemm_vec old;
                memcpy(&old, c, sizeof(old));
                out += beta * old;
            }
            memcpy(c, &out, sizeof(out));
        }
    }
}

// the same for a partial tile (mr <= MR rows, nr <= NR columns) at the matrix edges: the packed
// strips are zero-padded, so the full tile is computed into a scratch tile and only mr x nr is stored
template <class BRow>
static inline void gemm_micro_kernel_edge_rows(int mr, int nr, int kc, const float* Ap, BRow brow,
                                               float alpha, float beta, float* C, int ldc) {
    float tile[GEMM_MR * GEMM_NR];
    gemm_micro_kernel_rows(kc, Ap, brow, 1.0f, 0.0f, tile, GEMM_NR);
    for (int r = 0; r < mr; r++) {
        for (int c = 0; c < nr; c++) {
            float v = alpha * tile[r * GEMM_NR + c];
            C[(size_t)r * ldc + c] = beta != 0.0f ? v + beta * C[(size_t)r * ldc + c] : v;
        }
    }
}

// one tile, B rows from brow: picks the full or the edge micro-kernel
template <class BRow>
static inline void gemm_tile_rows(int mr, int nr, int kc, const float* Ap, BRow brow,
                                  float alpha, float beta, float* C, int ldc) {
    if (mr == GEMM_MR && nr == GEMM_NR) {
        gemm_micro_kernel_rows(kc, Ap, brow, alpha, beta, C, ldc);
    } else {
        gemm_micro_kernel_edge_rows(mr, nr, kc, Ap, brow, alpha, beta, C, ldc);
    }
}

// one tile of the macro-kernel, from a packed B strip Bp (kc, NR)
static inline void gemm_tile(int mr, int nr, int kc, const float* Ap, const float* Bp,
                             float alpha, float beta, float* C, int ldc) {
    gemm_tile_rows(mr, nr, kc, Ap, [Bp](int k, int v) { return Bp + (size_t)k * GEMM_NR + v * GEMM_VL; },
                   alpha, beta, C, ldc);
}

// C (mc, nc) = alpha * A @ B + beta * C from a packed block of A (ceil(mc/MR) strips of kc x MR)
// and a packed panel of B (ceil(nc/NR) strips of kc x NR), single-threaded.
// Loop order: a B strip stays in L1 while the A strips stream past it from L2.
static inline void gemm_macro_kernel(int mc, int nc, int kc, float alpha, const float* Ap, const float* Bp,
                              float beta, float* C, int ldc) {
    for (int j = 0; j < nc; j += GEMM_NR) {
        for (int i = 0; i < mc; i += GEMM_MR) {
            gemm_tile(mc - i < GEMM_MR ? mc - i : GEMM_MR, nc - j < GEMM_NR ? nc - j : GEMM_NR, kc,
                      Ap + (size_t)i * kc, Bp + (size_t)j * kc, alpha, beta, C + (size_t)i * ldc + j, ldc);
        }
    }
}

// Pack op(A)[0:mr, 0:kc] (mr <= MR) into one strip Ap (kc, MR), zero rows mr..MR-1.
// `A` points at element op(A)[0][0] of the strip: A[r*lda + k] (transA = 0) or A[k*lda + r] (transA = 1).
static inline void gemm_pack_a_strip(int transA, int mr, int kc, const float* A, int lda, float* Ap) {
    if (transA) {
        for (int k = 0; k < kc; k++) {
            const float* src = A + (size_t)k * lda;
            float* dst = Ap + (size_t)k * GEMM_MR;
            for (int r = 0; r < mr; r++) dst[r] = src[r];
            for (int r = mr; r < GEMM_MR; r++) dst[r] = 0.0f;
        }
    } else {
        // read each row contiguously; the writes stride by MR but stay within a few cache lines
        for (int r = 0; r < mr; r++) {
            const float* src = A + (size_t)r * lda;
            for (int k = 0; k < kc; k++) Ap[(size_t)k * GEMM_MR + r] = src[k];
        }
        for (int r = mr; r < GEMM_MR; r++) {
            for (int k = 0; k < kc; k++) Ap[(size_t)k * GEMM_MR + r] = 0.0f;
        }
    }
}

// Pack op(B)[0:kc, 0:nr] (nr <= NR) into one strip Bp (kc, NR), zero columns nr..NR-1.
// `B` points at element op(B)[0][0] of the strip: B[k*ldb + c] (transB = 0) or B[c*ldb + k] (transB = 1).
static inline void gemm_pack_b_strip(int transB, int kc, int nr, const float* B, int ldb, float* Bp) {
    if (transB) {
        for (int c = 0; c < nr; c++) {
            const float* src = B + (size_t)c * ldb;
            for (int k = 0; k < kc; k++) Bp[(size_t)k * GEMM_NR + c] = src[k];
        }
        for (int c = nr; c < GEMM_NR; c++) {
            for (int k = 0; k < kc; k++) Bp[(size_t)k * GEMM_NR + c] = 0.0f;
        }
    } else {
        for (int k = 0; k < kc; k++) {
            const float* src = B + (size_t)k * ldb;
            float* dst = Bp + (size_t)k * GEMM_NR;
            for (int c = 0; c < nr; c++) dst[c] = src[c];
            for (int c = nr; c < GEMM_NR; c++) dst[c] = 0.0f;
        }
    }
}

// element op(X)[row][col] of a row-major matrix X with leading dimension ld
static inline const float* gemm_at(const float* X, int trans, int ld, int row, int col) {
    return trans ? X + (size_t)col * ld + row : X + (size_t)row * ld + col;
}

// C = beta * C, the whole product when K == 0 or alpha == 0 (beta == 0 writes zeros, C not read)
static inline void gemm_scale_c(int M, int N, float beta, float* C, int ldc) {
    for (int i = 0; i < M; i++) {
        float* c = C + (size_t)i * ldc;
        for (int j = 0; j < N; j++) c[j] = beta != 0.0f ? beta * c[j] : 0.0f;
    }
}

// ----------------------------------------------------------------------------
// CPU: the blocked GEMM

// Packing buffer of the calling thread (thread_local: every thread that runs a GEMM, alone or as
// part of a team, packs into its own), grown on demand.
static thread_local float* t_gemm_pack = NULL;
static thread_local size_t t_gemm_pack_floats = 0;

static inline float* gemm_pack_buffer(size_t floats) {
    if (floats > t_gemm_pack_floats) {
        free(t_gemm_pack);
        t_gemm_pack = (float*)aligned_alloc(64, ((floats * sizeof(float) + 63) / 64) * 64);
        if (t_gemm_pack == NULL) {
            fprintf(stderr, "Error: gemm packing buffer of %zu floats: out of memory\n", floats);
            exit(EXIT_FAILURE);
        }
        t_gemm_pack_floats = floats;
    }
    return t_gemm_pack;
}

// One thread, BLIS loop nest: jc over NC-column panels of B, pc over KC-deep blocks (packing a
// KC x NC panel of B), ic over MC-row blocks (packing an MC x KC block of A), then the
// macro-kernel's tiles. Arguments are checked by the caller.
static inline void gemm_cpu_serial(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda,
                            const float* B, int ldb, float beta, float* C, int ldc) {
    int kc_max = K < GEMM_KC ? K : GEMM_KC;
    int mc_max = M < GEMM_MC ? ceil_div(M, GEMM_MR) * GEMM_MR : GEMM_MC;
    int nc_max = N < GEMM_NC ? ceil_div(N, GEMM_NR) * GEMM_NR : GEMM_NC;
    float* Ap = gemm_pack_buffer((size_t)kc_max * (mc_max + nc_max));  // A block (mc, kc), then B panel (kc, nc)
    float* Bp = Ap + (size_t)kc_max * mc_max;
    for (int jc = 0; jc < N; jc += GEMM_NC) {
        int nc = N - jc < GEMM_NC ? N - jc : GEMM_NC;
        for (int pc = 0; pc < K; pc += GEMM_KC) {
            int kc = K - pc < GEMM_KC ? K - pc : GEMM_KC;
            for (int j = 0; j < nc; j += GEMM_NR) {
                gemm_pack_b_strip(transB, kc, nc - j < GEMM_NR ? nc - j : GEMM_NR,
                                  gemm_at(B, transB, ldb, pc, jc + j), ldb, Bp + (size_t)j * kc);
            }
            for (int ic = 0; ic < M; ic += GEMM_MC) {
                int mc = M - ic < GEMM_MC ? M - ic : GEMM_MC;
                for (int i = 0; i < mc; i += GEMM_MR) {
                    gemm_pack_a_strip(transA, mc - i < GEMM_MR ? mc - i : GEMM_MR, kc,
                                      gemm_at(A, transA, lda, ic + i, pc), lda, Ap + (size_t)i * kc);
                }
                // later k-blocks accumulate onto the first
                gemm_macro_kernel(mc, nc, kc, alpha, Ap, Bp, pc == 0 ? beta : 1.0f,
                                  C + (size_t)ic * ldc + jc, ldc);
            }
        }
    }
}

// number of threads for a product of this many multiply-adds: one when already inside a parallel
// region or when the product is too small to pay for waking a team
static inline int gemm_cpu_threads(double madds) {
#ifdef _OPENMP
    if (omp_in_parallel() || madds < 262144.0) return 1;
    return omp_get_max_threads();
#else
    (void)madds;
    return 1;
#endif
}

// C = alpha * op(A) @ op(B) + beta * C. Each thread takes one slice of C (of columns when N is
// the larger side, else of rows) and runs the serial GEMM on it with its own packing, so there is
// no barrier until the end (barriers are what suffer when another process takes a core for a
// while). Each slice re-packs the whole shared operand (A for column slices): packing a float
// costs about as much as 16 multiply-adds, so a slice of w columns pays ~16/w extra, and one
// slice per thread keeps w as large as possible.
static inline void gemm_cpu(int transA, int transB, int M, int N, int K, float alpha, const float* A, int lda,
                     const float* B, int ldb, float beta, float* C, int ldc) {
    gemm_check_args("gemm_cpu", transA, transB, M, N, K, lda, ldb, ldc);
    if (M == 0 || N == 0) return;
    if (K == 0 || alpha == 0.0f) { gemm_scale_c(M, N, beta, C, ldc); return; }
    int nthreads = gemm_cpu_threads((double)M * N * K);
    if (nthreads == 1) {
        gemm_cpu_serial(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
        return;
    }
    int by_columns = N >= M;
    int extent = by_columns ? N : M, unit = by_columns ? GEMM_NR : GEMM_MR;
    // slices of whole register tiles, at least 64 wide so re-packing stays cheap
    int slices = nthreads < ceil_div(extent, 64) ? nthreads : ceil_div(extent, 64);
    int per_slice = ceil_div(ceil_div(extent, unit), slices) * unit;
    slices = ceil_div(extent, per_slice);
    #pragma omp parallel for schedule(static) num_threads(nthreads)
    for (int s = 0; s < slices; s++) {
        int lo = s * per_slice, len = extent - lo < per_slice ? extent - lo : per_slice;
        if (by_columns) {
            gemm_cpu_serial(transA, transB, M, len, K, alpha, A, lda, gemm_at(B, transB, ldb, 0, lo), ldb,
                            beta, C + lo, ldc);
        } else {
            gemm_cpu_serial(transA, transB, len, N, K, alpha, gemm_at(A, transA, lda, lo, 0), lda, B, ldb,
                            beta, C + (size_t)lo * ldc, ldc);
        }
    }
}

// `count` independent products at element strides strideA/B/C. Many small products (attention:
// one per image and head) run one per thread; a few large ones run one after another, each with
// the whole team.
static inline void gemm_batched_cpu(int transA, int transB, int M, int N, int K, float alpha,
                             const float* A, int lda, long strideA, const float* B, int ldb, long strideB,
                             float beta, float* C, int ldc, long strideC, int count) {
    gemm_check_args("gemm_batched_cpu", transA, transB, M, N, K, lda, ldb, ldc);
    if (count < 0) {
        fprintf(stderr, "Error: gemm_batched_cpu: negative count %d.\n", count);
        exit(EXIT_FAILURE);
    }
    int across = count >= cpu_thread_count() && gemm_cpu_threads((double)M * N * K * count) > 1;
    #pragma omp parallel for schedule(dynamic) if (across)
    for (int b = 0; b < count; b++) {
        gemm_cpu(transA, transB, M, N, K, alpha, A + b * strideA, lda, B + b * strideB, ldb,
                 beta, C + b * strideC, ldc);
    }
}
