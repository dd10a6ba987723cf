// tests/test_conv.h — tests of ldmc/conv2d.cuh and ldmc/gemm.cuh against PyTorch
// (dev/refs_conv.py writes dev/ref/conv.safetensors):
//   conv3x3, conv3x3s2, conv1x1, conv3x3big, conv3x3deep: forward, and backward (dx, dweight, dbias);
//   gemm for the four transpose combinations, beta = 0, a blocked multi-threaded size, padded leading
//   dimensions, and gemm_batched.
// test_conv() runs on whatever g_device is. Outputs that the API overwrites (out, dx, C when beta = 0)
// start as NaN, so a kernel that skips an element or reads C fails; dweight and dbias start at 0.5
// and the test checks that exactly the reference was added. One backward runs with dx = NULL.
#pragma once

#include "ldmc/testing.h"
#include "ldmc/safetensors.h"
#include "ldmc/gemm.cuh"
#include "ldmc/conv2d.cuh"

#define CONV_REF_PATH "dev/ref/conv.safetensors"
#define CONV_RTOL 1e-5f

// ----------------------------------------------------------------------------
// helpers

// the reference tensor "<prefix>.<name>" with its shape checked against ndim (exits with a clear error)
static const SafeTensorInfo* conv_ref(const SafeTensors* st, const char* prefix, const char* name, int ndim) {
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", prefix, name);
    const SafeTensorInfo* t = safetensors_find(st, full);
    if (t == NULL || t->ndim != ndim || strcmp(t->dtype, "F32") != 0) {
        fprintf(stderr, "Error: %s: tensor '%s' missing, not F32 or not %d-dimensional.\n"
                        "HINT: regenerate it with `python3 dev/refs_conv.py`.\n", st->path, full, ndim);
        exit(EXIT_FAILURE);
    }
    return t;
}

// downloads n values, subtracts `start` (the value an accumulated gradient started from) and
// compares with ref under the name "<device> <prefix> <what>"
static void conv_check(const char* prefix, const char* what, const float* dev, const float* ref, size_t n, float start) {
    char name[128];
    snprintf(name, sizeof(name), "%s %s %s", device_name(), prefix, what);
    float* got = test_download(dev, n);
    for (size_t i = 0; i < n; i++) got[i] -= start;
    check_close(name, got, ref, n, CONV_RTOL);
    free(got);
}

// ----------------------------------------------------------------------------
// convolution: forward, then backward with gradients starting at 0.5 (accumulate) and dx at NaN
// (overwrite); with_null_dx also runs a backward with dx = NULL (only dweight/dbias)

static void conv_test_case(const SafeTensors* st, const char* prefix, int stride, int with_null_dx) {
    const SafeTensorInfo* xi = conv_ref(st, prefix, "x", 4);
    const SafeTensorInfo* wi = conv_ref(st, prefix, "weight", 4);
    const SafeTensorInfo* oi = conv_ref(st, prefix, "out", 4);
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

    float* x = test_upload(ref_f32(st, prefix, "x", nx), nx);
    float* weight = test_upload(ref_f32(st, prefix, "weight", nw), nw);
    float* bias = test_upload(ref_f32(st, prefix, "bias", Cout), Cout);
    float* dout = test_upload(ref_f32(st, prefix, "dout", no), no);
    float* out = test_filled(no, NAN);
    float* dx = test_filled(nx, NAN);
    float* dweight = test_filled(nw, 0.5f);
    float* dbias = test_filled(Cout, 0.5f);

    conv2d_forward(out, x, weight, bias, B, Cin, H, W, Cout, K, stride);
    conv_check(prefix, "forward", out, ref_f32(st, prefix, "out", no), no, 0.0f);

    conv2d_backward(dx, dweight, dbias, dout, x, weight, B, Cin, H, W, Cout, K, stride);
    conv_check(prefix, "backward dx", dx, ref_f32(st, prefix, "dx", nx), nx, 0.0f);
    conv_check(prefix, "backward dweight (+=)", dweight, ref_f32(st, prefix, "dweight", nw), nw, 0.5f);
    conv_check(prefix, "backward dbias (+=)", dbias, ref_f32(st, prefix, "dbias", Cout), Cout, 0.5f);

    if (with_null_dx) {
        dev_zero(dweight, nw * sizeof(float));
        dev_zero(dbias, Cout * sizeof(float));
        conv2d_backward(NULL, dweight, dbias, dout, x, weight, B, Cin, H, W, Cout, K, stride);
        conv_check(prefix, "backward dx=NULL dweight", dweight, ref_f32(st, prefix, "dweight", nw), nw, 0.0f);
        conv_check(prefix, "backward dx=NULL dbias", dbias, ref_f32(st, prefix, "dbias", Cout), Cout, 0.0f);
    }

    dev_free(x); dev_free(weight); dev_free(bias); dev_free(dout);
    dev_free(out); dev_free(dx); dev_free(dweight); dev_free(dbias);
}

// ----------------------------------------------------------------------------
// GEMM: C = alpha * op(A) @ op(B) + beta * C. `pad` > 0 stores every matrix with `pad` extra floats
// per row (leading dimension = row length + pad), which must be skipped.

static void gemm_test_case(const SafeTensors* st, const char* prefix, int transA, int transB,
                           float alpha, float beta, int pad) {
    const SafeTensorInfo* ai = conv_ref(st, prefix, "A", 2);
    const SafeTensorInfo* bi = conv_ref(st, prefix, "B", 2);
    int M = (int)(transA ? ai->shape[1] : ai->shape[0]), K = (int)(transA ? ai->shape[0] : ai->shape[1]);
    int N = (int)(transB ? bi->shape[0] : bi->shape[1]);
    int a_rows = (int)ai->shape[0], a_cols = (int)ai->shape[1];
    int b_rows = (int)bi->shape[0], b_cols = (int)bi->shape[1];
    int lda = a_cols + pad, ldb = b_cols + pad, ldc = N + pad;
    const float* A_ref = ref_f32(st, prefix, "A", (size_t)a_rows * a_cols);
    const float* B_ref = ref_f32(st, prefix, "B", (size_t)b_rows * b_cols);
    const float* C_ref = ref_f32(st, prefix, "C", (size_t)M * N);
    const float* out_ref = ref_f32(st, prefix, "out", (size_t)M * N);

    // host copies with the padded row strides; padding holds NaN, which must never be read
    float* hA = (float*)mallocCheck((size_t)a_rows * lda * sizeof(float));
    float* hB = (float*)mallocCheck((size_t)b_rows * ldb * sizeof(float));
    float* hC = (float*)mallocCheck((size_t)M * ldc * sizeof(float));
    for (size_t i = 0; i < (size_t)a_rows * lda; i++) hA[i] = NAN;
    for (size_t i = 0; i < (size_t)b_rows * ldb; i++) hB[i] = NAN;
    for (size_t i = 0; i < (size_t)M * ldc; i++) hC[i] = NAN;
    for (int r = 0; r < a_rows; r++) memcpy(hA + (size_t)r * lda, A_ref + (size_t)r * a_cols, a_cols * sizeof(float));
    for (int r = 0; r < b_rows; r++) memcpy(hB + (size_t)r * ldb, B_ref + (size_t)r * b_cols, b_cols * sizeof(float));
    if (beta != 0.0f) {  // with beta = 0, C stays NaN: it must not be read
        for (int r = 0; r < M; r++) memcpy(hC + (size_t)r * ldc, C_ref + (size_t)r * N, N * sizeof(float));
    }
    float* A = test_upload(hA, (size_t)a_rows * lda);
    float* B = test_upload(hB, (size_t)b_rows * ldb);
    float* C = test_upload(hC, (size_t)M * ldc);

    gemm(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);

    float* got_padded = test_download(C, (size_t)M * ldc);
    float* got = (float*)mallocCheck((size_t)M * N * sizeof(float));
    for (int r = 0; r < M; r++) memcpy(got + (size_t)r * N, got_padded + (size_t)r * ldc, N * sizeof(float));
    char name[128];
    snprintf(name, sizeof(name), "%s %s (%dx%dx%d%s)", device_name(), prefix, M, N, K, pad ? ", padded ld" : "");
    check_close(name, got, out_ref, (size_t)M * N, CONV_RTOL);
    free(got); free(got_padded); free(hA); free(hB); free(hC);
    dev_free(A); dev_free(B); dev_free(C);
}

// gemm_batched: count products of (M, K) @ (N, K)^T, as attention's q k^T
static void gemm_batched_test(const SafeTensors* st) {
    const SafeTensorInfo* ai = conv_ref(st, "gemm_batched", "A", 3);
    const SafeTensorInfo* bi = conv_ref(st, "gemm_batched", "B", 3);
    int count = (int)ai->shape[0], M = (int)ai->shape[1], K = (int)ai->shape[2], N = (int)bi->shape[1];
    size_t na = (size_t)count * M * K, nb = (size_t)count * N * K, nc = (size_t)count * M * N;
    float* A = test_upload(ref_f32(st, "gemm_batched", "A", na), na);
    float* B = test_upload(ref_f32(st, "gemm_batched", "B", nb), nb);
    float* C = test_upload(ref_f32(st, "gemm_batched", "C", nc), nc);
    gemm_batched(0, 1, M, N, K, 1.25f, A, K, (long)M * K, B, K, (long)N * K, 0.5f, C, N, (long)M * N, count);
    char name[128];
    snprintf(name, sizeof(name), "%s gemm_batched (%d x %dx%dx%d)", device_name(), count, M, N, K);
    float* got = test_download(C, nc);
    check_close(name, got, ref_f32(st, "gemm_batched", "out", nc), nc, CONV_RTOL);
    free(got);
    dev_free(A); dev_free(B); dev_free(C);
}

// ----------------------------------------------------------------------------

static void test_conv(void) {
    printf("conv2d and gemm (%s, reference %s):\n", device_name(), CONV_REF_PATH);
    SafeTensors st;
    safetensors_load(CONV_REF_PATH, &st);

    conv_test_case(&st, "conv3x3", 1, 0);
    conv_test_case(&st, "conv3x3s2", 2, 1);
    conv_test_case(&st, "conv1x1", 1, 0);
    conv_test_case(&st, "conv3x3big", 1, 1);
    conv_test_case(&st, "conv3x3deep", 1, 0);

    gemm_test_case(&st, "gemm_nn", 0, 0, 0.7f, 0.3f, 0);
    gemm_test_case(&st, "gemm_tn", 1, 0, 0.7f, 0.3f, 0);
    gemm_test_case(&st, "gemm_nt", 0, 1, 0.7f, 0.3f, 0);
    gemm_test_case(&st, "gemm_tt", 1, 1, 0.7f, 0.3f, 3);
    gemm_test_case(&st, "gemm_beta0", 0, 0, 0.7f, 0.0f, 0);
    gemm_test_case(&st, "gemm_big", 0, 1, 1.0f, 0.5f, 0);
    gemm_batched_test(&st);

    safetensors_free(&st);
}
