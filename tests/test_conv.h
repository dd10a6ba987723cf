// tests/test_conv.h — tests of ldmc/conv2d.cuh and ldmc/gemm.cuh. First the plain references
// (conv2d_*_ref, gemm_ref, gemm_batched_ref) against PyTorch (dev/refs_conv.py writes
// dev/ref/conv.safetensors), then the fast path of the current device against both PyTorch and the
// reference ("... vs ref"):
//   conv3x3, conv3x3s2, conv1x1, conv3x3big, conv3x3deep: forward, and backward (dx, dweight, dbias);
//   gemm for the four transpose combinations, beta = 0, a blocked multi-threaded size, padded leading
//   dimensions, and gemm_batched;
//   and shapes of the models' kind, larger than the PyTorch cases, against the reference only.
// test_conv_determinism() checks that the fast CPU conv gives the same bits with 1, 2 and 3 threads.
// test_conv() runs on whatever g_device is; the references run on the host, and are checked against
// PyTorch in the CPU pass. Outputs that the API overwrites (out, dx, C when beta = 0) start as NaN,
// so a kernel that skips an element or reads C fails; dweight and dbias start at 0.5 and the test
// checks that exactly the reference was added. One backward runs with dx = NULL.
#pragma once

#include "ldmc/testing.h"
#include "ldmc/safetensors.h"
#include "ldmc/gemm.cuh"
#include "ldmc/conv2d.cuh"
#include "ldmc/rng.cuh"

#define CONV_REF_PATH "dev/ref/conv.safetensors"
#define CONV_RTOL 1e-5f

// ----------------------------------------------------------------------------
// helpers

// "<prefix> <what>", the name of one check (a static buffer: the checks copy it at once)
static inline const char* conv_what(const char* prefix, const char* what) {
    static char name[128];
    snprintf(name, sizeof(name), "%s %s", prefix, what);
    return name;
}

// the reference's results for one convolution, on the host: out, dx, and dweight, dbias (from zero)
typedef struct { float *out, *dx, *dweight, *dbias; } ConvRefResults;

static inline ConvRefResults conv_run_ref(const float* x, const float* weight, const float* bias, const float* dout,
                                   int B, int Cin, int H, int W, int Cout, int K, int stride) {
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride);
    size_t nx = (size_t)B * Cin * H * W, nw = (size_t)Cout * Cin * K * K, no = (size_t)B * Cout * Ho * Wo;
    ConvRefResults r;
    r.out = (float*)mallocCheck(no * sizeof(float));
    r.dx = (float*)mallocCheck(nx * sizeof(float));
    r.dweight = (float*)calloc(nw, sizeof(float));
    r.dbias = (float*)calloc(Cout, sizeof(float));
    conv2d_forward_ref(r.out, x, weight, bias, B, Cin, H, W, Cout, K, stride);
    conv2d_backward_ref(r.dx, r.dweight, r.dbias, dout, x, weight, B, Cin, H, W, Cout, K, stride);
    return r;
}

static void conv_free_ref(ConvRefResults* r) { free(r->out); free(r->dx); free(r->dweight); free(r->dbias); }

// ----------------------------------------------------------------------------
// convolution: the reference against PyTorch, then the fast path (this device's dispatcher) against
// both: forward, then backward with gradients starting at 0.5 (accumulate) and dx at NaN
// (overwrite); with_null_dx also runs a backward with dx = NULL (only dweight/dbias).
// torch = NULL: a shape without PyTorch tensors (inputs from a fixed seed), checked against the
// reference only.

static inline void conv_check_case(const char* prefix, const float* hx, const float* hw, const float* hb, const float* hdout,
                            const float* t_out, const float* t_dx, const float* t_dw, const float* t_db,
                            int B, int Cin, int H, int W, int Cout, int K, int stride, int with_null_dx) {
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride);
    size_t nx = (size_t)B * Cin * H * W, nw = (size_t)Cout * Cin * K * K, no = (size_t)B * Cout * Ho * Wo;

    ConvRefResults r = conv_run_ref(hx, hw, hb, hdout, B, Cin, H, W, Cout, K, stride);
    if (t_out != NULL) {
        check_ref(conv_what(prefix, "forward"), r.out, t_out, no, CONV_RTOL);
        check_ref(conv_what(prefix, "backward dx"), r.dx, t_dx, nx, CONV_RTOL);
        check_ref(conv_what(prefix, "backward dweight"), r.dweight, t_dw, nw, CONV_RTOL);
        check_ref(conv_what(prefix, "backward dbias"), r.dbias, t_db, Cout, CONV_RTOL);
    }

    float* x = test_upload(hx, nx);
    float* weight = test_upload(hw, nw);
    float* bias = test_upload(hb, Cout);
    float* dout = test_upload(hdout, no);
    float* out = test_filled(no, NAN);
    float* dx = test_filled(nx, NAN);
    float* dweight = test_filled(nw, 0.5f);
    float* dbias = test_filled(Cout, 0.5f);

    conv2d_forward(out, x, weight, bias, B, Cin, H, W, Cout, K, stride);
    check_device(conv_what(prefix, "forward"), out, t_out, r.out, no, 0.0f, 1.0f, CONV_RTOL);

    conv2d_backward(dx, dweight, dbias, dout, x, weight, B, Cin, H, W, Cout, K, stride);
    check_device(conv_what(prefix, "backward dx"), dx, t_dx, r.dx, nx, 0.0f, 1.0f, CONV_RTOL);
    check_device(conv_what(prefix, "backward dweight (+=)"), dweight, t_dw, r.dweight, nw, 0.5f, 1.0f, CONV_RTOL);
    check_device(conv_what(prefix, "backward dbias (+=)"), dbias, t_db, r.dbias, Cout, 0.5f, 1.0f, CONV_RTOL);

    if (with_null_dx) {
        dev_zero(dweight, nw * sizeof(float));
        dev_zero(dbias, Cout * sizeof(float));
        conv2d_backward(NULL, dweight, dbias, dout, x, weight, B, Cin, H, W, Cout, K, stride);
        check_device(conv_what(prefix, "backward dx=NULL dweight"), dweight, t_dw, r.dweight, nw, 0.0f, 1.0f, CONV_RTOL);
        check_device(conv_what(prefix, "backward dx=NULL dbias"), dbias, t_db, r.dbias, Cout, 0.0f, 1.0f, CONV_RTOL);
    }

    conv_free_ref(&r);
    dev_free(x); dev_free(weight); dev_free(bias); dev_free(dout);
    dev_free(out); dev_free(dx); dev_free(dweight); dev_free(dbias);
}

// one case of dev/ref/conv.safetensors
static inline void conv_test_case(const SafeTensors* st, const char* prefix, int stride, int with_null_dx) {
    const SafeTensorInfo* xi = ref_info(st, prefix, "x", 4);
    const SafeTensorInfo* wi = ref_info(st, prefix, "weight", 4);
    const SafeTensorInfo* oi = ref_info(st, prefix, "out", 4);
    int B = (int)xi->shape[0], Cin = (int)xi->shape[1], H = (int)xi->shape[2], W = (int)xi->shape[3];
    int Cout = (int)wi->shape[0], K = (int)wi->shape[2];
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride);
    if ((int)oi->shape[2] != Ho || (int)oi->shape[3] != Wo || (int)oi->shape[1] != Cout) {
        fprintf(stderr, "Error: %s: %s.out has shape (%d, %d, %d, %d), expected (%d, %d, %d, %d) for stride %d.\n"
                        "HINT: regenerate it with `python3 dev/refs_conv.py`.\n", st->path, prefix,
                (int)oi->shape[0], (int)oi->shape[1], (int)oi->shape[2], (int)oi->shape[3], B, Cout, Ho, Wo, stride);
        exit(EXIT_FAILURE);
    }
    size_t nx = (size_t)B * Cin * H * W, nw = (size_t)Cout * Cin * K * K, no = (size_t)B * Cout * Ho * Wo;
    conv_check_case(prefix, ref_f32(st, prefix, "x", nx), ref_f32(st, prefix, "weight", nw),
                    ref_f32(st, prefix, "bias", Cout), ref_f32(st, prefix, "dout", no),
                    ref_f32(st, prefix, "out", no), ref_f32(st, prefix, "dx", nx),
                    ref_f32(st, prefix, "dweight", nw), ref_f32(st, prefix, "dbias", Cout),
                    B, Cin, H, W, Cout, K, stride, with_null_dx);
}

// n normal values from a fixed seed, on the host (free with free)
static inline float* conv_random(size_t n, uint64_t seed) {
    float* h = (float*)mallocCheck(n * sizeof(float));
    rng_fill_normal_cpu(h, n, seed, 0);
    return h;
}

// a shape of the models' kind, too large for a committed PyTorch file but small enough for the
// reference's seven loops: the fast path against the reference only
static inline void conv_test_shape(int B, int Cin, int H, int W, int Cout, int K, int stride) {
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride);
    size_t nx = (size_t)B * Cin * H * W, nw = (size_t)Cout * Cin * K * K, no = (size_t)B * Cout * Ho * Wo;
    char prefix[96];
    snprintf(prefix, sizeof(prefix), "conv %dx%d s%d %dx%d %d->%d B=%d", K, K, stride, H, W, Cin, Cout, B);
    float* x = conv_random(nx, 1);
    float* weight = conv_random(nw, 2);
    float* bias = conv_random(Cout, 3);
    float* dout = conv_random(no, 4);
    conv_check_case(prefix, x, weight, bias, dout, NULL, NULL, NULL, NULL, B, Cin, H, W, Cout, K, stride, 0);
    free(x); free(weight); free(bias); free(dout);
}

// ----------------------------------------------------------------------------
// GEMM: C = alpha * op(A) @ op(B) + beta * C. `pad` > 0 stores every matrix with `pad` extra floats
// per row (leading dimension = row length + pad), which must be skipped.

// a host copy of the (rows, cols) matrix X with row stride cols + pad; the padding, and the whole
// matrix when X is NULL, holds NaN, which must never be read (free with free)
static inline float* gemm_padded(const float* X, int rows, int cols, int pad) {
    size_t ld = (size_t)cols + pad;
    float* h = (float*)mallocCheck((size_t)rows * ld * sizeof(float));
    for (size_t i = 0; i < (size_t)rows * ld; i++) h[i] = NAN;
    if (X != NULL) {
        for (int r = 0; r < rows; r++) memcpy(h + r * ld, X + (size_t)r * cols, cols * sizeof(float));
    }
    return h;
}

// the (rows, cols) matrix stored with row stride ld, as a dense host copy (free with free)
static inline float* gemm_unpadded(const float* X, int rows, int cols, int ld) {
    float* h = (float*)mallocCheck((size_t)rows * cols * sizeof(float));
    for (int r = 0; r < rows; r++) memcpy(h + (size_t)r * cols, X + (size_t)r * ld, cols * sizeof(float));
    return h;
}

// A_in, B_in, C_in dense as stored (op applied by the flags); torch_out = NULL: no PyTorch tensor,
// the fast path is checked against the reference only
static inline void gemm_check_case(const char* label, int transA, int transB, int M, int N, int K, float alpha, float beta,
                            int pad, const float* A_in, const float* B_in, const float* C_in, const float* torch_out) {
    int a_rows = transA ? K : M, a_cols = transA ? M : K;
    int b_rows = transB ? N : K, b_cols = transB ? K : N;
    int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
    float* hA = gemm_padded(A_in, a_rows, a_cols, pad);
    float* hB = gemm_padded(B_in, b_rows, b_cols, pad);
    float* hC = gemm_padded(beta != 0.0f ? C_in : NULL, M, N, pad);  // with beta = 0, C stays NaN: it must not be read
    size_t nc = (size_t)M * ldc;

    // the reference on host copies of the same padded matrices
    float* refC = (float*)mallocCheck(nc * sizeof(float));
    memcpy(refC, hC, nc * sizeof(float));
    gemm_ref(transA, transB, M, N, K, alpha, hA, lda, hB, ldb, beta, refC, ldc);
    float* ref = gemm_unpadded(refC, M, N, ldc);
    if (torch_out != NULL) check_ref(label, ref, torch_out, (size_t)M * N, CONV_RTOL);

    // the fast path: this device's dispatcher
    float* A = test_upload(hA, (size_t)a_rows * lda);
    float* B = test_upload(hB, (size_t)b_rows * ldb);
    float* C = test_upload(hC, nc);
    gemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    float* got_padded = test_download(C, nc);
    float* got = gemm_unpadded(got_padded, M, N, ldc);
    check_result(label, got, torch_out, ref, (size_t)M * N, CONV_RTOL);

    free(got); free(got_padded); free(ref); free(refC); free(hA); free(hB); free(hC);
    dev_free(A); dev_free(B); dev_free(C);
}

// one case of dev/ref/conv.safetensors
static inline void gemm_test_case(const SafeTensors* st, const char* prefix, int transA, int transB,
                           float alpha, float beta, int pad) {
    const SafeTensorInfo* ai = ref_info(st, prefix, "A", 2);
    const SafeTensorInfo* bi = ref_info(st, prefix, "B", 2);
    int M = (int)(transA ? ai->shape[1] : ai->shape[0]), K = (int)(transA ? ai->shape[0] : ai->shape[1]);
    int N = (int)(transB ? bi->shape[0] : bi->shape[1]);
    char label[96];
    snprintf(label, sizeof(label), "%s (%dx%dx%d%s)", prefix, M, N, K, pad ? ", padded ld" : "");
    gemm_check_case(label, transA, transB, M, N, K, alpha, beta, pad,
                    ref_f32(st, prefix, "A", ai->numel), ref_f32(st, prefix, "B", bi->numel),
                    ref_f32(st, prefix, "C", (size_t)M * N), ref_f32(st, prefix, "out", (size_t)M * N));
}

// a product larger than the PyTorch cases (several k-blocks and row blocks, slices for threads),
// with inputs from a fixed seed, against the reference only
static inline void gemm_test_shape(int transA, int transB, int M, int N, int K, float alpha, float beta) {
    float* A = conv_random((size_t)M * K, 5);
    float* B = conv_random((size_t)K * N, 6);
    float* C = conv_random((size_t)M * N, 7);
    char label[96];
    snprintf(label, sizeof(label), "gemm %s%s %dx%dx%d", transA ? "t" : "n", transB ? "t" : "n", M, N, K);
    gemm_check_case(label, transA, transB, M, N, K, alpha, beta, 0, A, B, C, NULL);
    free(A); free(B); free(C);
}

// gemm_batched: count products of (M, K) @ (N, K)^T, as attention's q k^T
static inline void gemm_batched_test(const SafeTensors* st) {
    const SafeTensorInfo* ai = ref_info(st, "gemm_batched", "A", 3);
    const SafeTensorInfo* bi = ref_info(st, "gemm_batched", "B", 3);
    int count = (int)ai->shape[0], M = (int)ai->shape[1], K = (int)ai->shape[2], N = (int)bi->shape[1];
    size_t na = (size_t)count * M * K, nb = (size_t)count * N * K, nc = (size_t)count * M * N;
    const float* hA = ref_f32(st, "gemm_batched", "A", na);
    const float* hB = ref_f32(st, "gemm_batched", "B", nb);
    const float* hC = ref_f32(st, "gemm_batched", "C", nc);
    const float* torch_out = ref_f32(st, "gemm_batched", "out", nc);
    char label[96];
    snprintf(label, sizeof(label), "gemm_batched (%d x %dx%dx%d)", count, M, N, K);

    float* ref = (float*)mallocCheck(nc * sizeof(float));
    memcpy(ref, hC, nc * sizeof(float));
    gemm_batched_ref(0, 1, M, N, K, 1.25f, hA, K, (long)M * K, hB, K, (long)N * K, 0.5f, ref, N, (long)M * N, count);
    check_ref(label, ref, torch_out, nc, CONV_RTOL);

    float* A = test_upload(hA, na);
    float* B = test_upload(hB, nb);
    float* C = test_upload(hC, nc);
    gemm_batched(0, 1, M, N, K, 1.25f, A, K, (long)M * K, B, K, (long)N * K, 0.5f, C, N, (long)M * N, count);
    float* got = test_download(C, nc);
    check_result(label, got, torch_out, ref, nc, CONV_RTOL);
    free(got); free(ref);
    dev_free(A); dev_free(B); dev_free(C);
}

// ----------------------------------------------------------------------------
// determinism of the fast CPU path: the same inputs must give the same bits with 1, 2 and 3
// threads (and so from run to run: no sum may depend on which thread took which piece of work).
// Runs the _cpu functions on host memory whatever g_device is.

#ifdef _OPENMP
// number of values that differ in their bits
static inline size_t conv_bits_differ(const float* a, const float* b, size_t n) {
    size_t count = 0;
    for (size_t i = 0; i < n; i++) count += memcmp(a + i, b + i, sizeof(float)) != 0;
    return count;
}

static inline void conv_determinism_case(int B, int Cin, int H, int W, int Cout, int K, int stride) {
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride);
    size_t nx = (size_t)B * Cin * H * W, nw = (size_t)Cout * Cin * K * K, no = (size_t)B * Cout * Ho * Wo;
    size_t n[4] = {no, nx, nw, (size_t)Cout};  // out, dx, dweight, dbias
    float* x = conv_random(nx, 11);
    float* weight = conv_random(nw, 12);
    float* bias = conv_random(Cout, 13);
    float* dout = conv_random(no, 14);
    float* got[3][4];  // per thread count 1, 2, 3: out, dx, dweight, dbias
    size_t differ[4] = {0, 0, 0, 0};  // values that differ from the 1-thread run, over the 2- and 3-thread runs
    for (int t = 0; t < 3; t++) {
        omp_set_num_threads(t + 1);
        for (int k = 0; k < 4; k++) got[t][k] = (float*)calloc(n[k], sizeof(float));
        conv2d_forward_cpu(got[t][0], x, weight, bias, B, Cin, H, W, Cout, K, stride);
        conv2d_backward_cpu(got[t][1], got[t][2], got[t][3], dout, x, weight, B, Cin, H, W, Cout, K, stride);
        for (int k = 0; t > 0 && k < 4; k++) differ[k] += conv_bits_differ(got[0][k], got[t][k], n[k]);
    }
    char name[96], detail[160];
    snprintf(name, sizeof(name), "cpu conv %dx%d s%d %dx%d %d->%d B=%d 1/2/3 threads", K, K, stride, H, W, Cin, Cout, B);
    snprintf(detail, sizeof(detail), "values differing in bits: out %zu, dx %zu, dweight %zu, dbias %zu (must be 0)",
             differ[0], differ[1], differ[2], differ[3]);
    check_true(name, differ[0] + differ[1] + differ[2] + differ[3] == 0, detail);
    for (int t = 0; t < 3; t++) {
        for (int k = 0; k < 4; k++) free(got[t][k]);
    }
    free(x); free(weight); free(bias); free(dout);
}
#endif

static inline void test_conv_determinism(void) {
    printf("fast CPU conv2d, the same bits with 1, 2 and 3 threads:\n");
#ifdef _OPENMP
    int saved = omp_get_max_threads();
    // the tiny models' kinds of layer (32x32 with 3 channels, 16x16, a downsampling conv, a 1x1, 8x8), with
    // positions enough for many parts of the dweight sum, and work enough that every thread gets a share
    conv_determinism_case(16, 3, 32, 32, 16, 3, 1);
    conv_determinism_case(64, 32, 16, 16, 32, 3, 1);
    conv_determinism_case(64, 32, 16, 16, 64, 3, 2);
    conv_determinism_case(64, 64, 8, 8, 32, 1, 1);
    conv_determinism_case(64, 32, 8, 8, 32, 3, 1);
    omp_set_num_threads(saved);
#else
    printf("  (built without OpenMP: one thread only, nothing to compare)\n");
#endif
}

// ----------------------------------------------------------------------------

static inline void test_conv(void) {
    printf("conv2d and gemm (%s, reference %s):\n", device_name(), CONV_REF_PATH);
    SafeTensors st;
    safetensors_load(CONV_REF_PATH, &st);

    conv_test_case(&st, "conv3x3", 1, 0);
    conv_test_case(&st, "conv3x3s2", 2, 1);
    conv_test_case(&st, "conv1x1", 1, 0);
    conv_test_case(&st, "conv3x3big", 1, 1);
    conv_test_case(&st, "conv3x3deep", 1, 0);
    // the models' kinds of layer, against the reference only: more than one k-block (Cin*9 > 256),
    // more positions than one column block or dweight chunk, a first layer (Cin 3) at 32x32,
    // a 1x1 whose runs span whole images, a downsampling conv, channel counts off the register tile,
    // and the U-Net's 8x8 and 4x4 layers (the direct path with strips spanning rows, and no direct path)
    conv_test_shape(3, 32, 16, 16, 40, 3, 1);
    conv_test_shape(2, 3, 32, 32, 16, 3, 1);
    conv_test_shape(4, 64, 8, 8, 48, 1, 1);
    conv_test_shape(3, 16, 16, 16, 32, 3, 2);
    conv_test_shape(5, 32, 8, 8, 24, 3, 1);
    conv_test_shape(6, 64, 4, 4, 64, 3, 1);

    gemm_test_case(&st, "gemm_nn", 0, 0, 0.7f, 0.3f, 0);
    gemm_test_case(&st, "gemm_tn", 1, 0, 0.7f, 0.3f, 0);
    gemm_test_case(&st, "gemm_nt", 0, 1, 0.7f, 0.3f, 0);
    gemm_test_case(&st, "gemm_tt", 1, 1, 0.7f, 0.3f, 3);
    gemm_test_case(&st, "gemm_beta0", 0, 0, 0.7f, 0.0f, 0);
    gemm_test_case(&st, "gemm_big", 0, 1, 1.0f, 0.5f, 0);
    gemm_batched_test(&st);
    gemm_test_shape(1, 0, 200, 300, 520, 0.7f, 0.5f);
    gemm_test_shape(0, 1, 136, 1100, 40, 1.0f, 0.0f);

    safetensors_free(&st);
}
