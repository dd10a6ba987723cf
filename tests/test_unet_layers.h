// tests/test_unet_layers.h — test_unet_layers(): the U-Net's own layers against PyTorch reference
// tensors (dev/ref/unet_layers.safetensors, written by dev/refs_unet_layers.py in float64):
//   linear (forward, dx, dweight, dbias), the sinusoidal timestep embedding, the class embedding
//   lookup and its scatter-add backward with repeated ids, the per-channel broadcast add, the
//   channel concat, and the attention core (forward output and probabilities, dqkv) at 4x4 with
//   4 heads and at 40 positions (rows longer than a warp, not a multiple of 32).
// Outputs and input gradients start as NaN, so a value the layer fails to overwrite fails the test;
// parameter gradients start at zero, and a second backward must double them (they accumulate).
// Runs on whatever g_device is.
#pragma once

#include "ldmc/testing.h"
#include "ldmc/safetensors.h"
#include "ldmc/linear.cuh"
#include "ldmc/embedding.cuh"
#include "ldmc/attention.cuh"

#define TUL_REF_PATH "dev/ref/unet_layers.safetensors"
#define TUL_RTOL 1e-5f

// ----------------------------------------------------------------------------
// helpers

// the reference tensor "<prefix>.<name>" (n floats) copied to the current device (free with dev_free)
static float* tul_upload(const SafeTensors* st, const char* prefix, const char* name, size_t n) {
    return test_upload(ref_f32(st, prefix, name, n), n);
}

// the int64 reference tensor "<prefix>.<name>" as n ints on the current device (free with dev_free)
static int* tul_upload_ints(const SafeTensors* st, const char* prefix, const char* name, size_t n) {
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", prefix, name);
    const int64_t* src = safetensors_get_i64(st, full, n);
    int* host = (int*)mallocCheck(n * sizeof(int));
    for (size_t i = 0; i < n; i++) host[i] = (int)src[i];
    int* dev = (int*)dev_malloc(n * sizeof(int));
    host_to_dev(dev, host, n * sizeof(int));
    free(host);
    return dev;
}

// compares n values on the device with ref * factor, under the name "<device> <what>"
static void tul_check(const char* what, const float* dev, const float* ref, size_t n, float factor) {
    char name[128];
    snprintf(name, sizeof(name), "%s %s", device_name(), what);
    float* got = test_download(dev, n);
    float* want = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) want[i] = ref[i] * factor;
    check_close(name, got, want, n, TUL_RTOL);
    free(want);
    free(got);
}

// ----------------------------------------------------------------------------
// one test per layer

static void tul_test_linear(const SafeTensors* st) {
    const int N = 3, in = 10, outdim = 6;
    const char* p = "linear";
    float* x = tul_upload(st, p, "x", N * in);             // (N, in)
    float* weight = tul_upload(st, p, "weight", outdim * in);  // (outdim, in)
    float* bias = tul_upload(st, p, "bias", outdim);       // (outdim)
    float* dout = tul_upload(st, p, "dout", N * outdim);   // (N, outdim)
    float* out = test_filled(N * outdim, NAN);                // (N, outdim)
    float* dx = test_filled(N * in, NAN);                     // (N, in)
    float* dweight = test_filled(outdim * in, 0.0f);           // (outdim, in)
    float* dbias = test_filled(outdim, 0.0f);                  // (outdim)

    linear_forward(out, x, weight, bias, N, in, outdim);
    tul_check("linear forward", out, ref_f32(st, p, "out", N * outdim), N * outdim, 1.0f);
    linear_backward(dx, dweight, dbias, dout, x, weight, N, in, outdim);
    tul_check("linear backward dx", dx, ref_f32(st, p, "dx", N * in), N * in, 1.0f);
    tul_check("linear backward dweight", dweight, ref_f32(st, p, "dweight", outdim * in), outdim * in, 1.0f);
    tul_check("linear backward dbias", dbias, ref_f32(st, p, "dbias", outdim), outdim, 1.0f);
    linear_backward(NULL, dweight, dbias, dout, x, weight, N, in, outdim);  // no dx; accumulate again
    tul_check("linear dweight accumulates (x2)", dweight, ref_f32(st, p, "dweight", outdim * in), outdim * in, 2.0f);
    tul_check("linear dbias accumulates (x2)", dbias, ref_f32(st, p, "dbias", outdim), outdim, 2.0f);

    dev_free(x); dev_free(weight); dev_free(bias); dev_free(dout);
    dev_free(out); dev_free(dx); dev_free(dweight); dev_free(dbias);
}

static void tul_test_timestep_embedding(const SafeTensors* st) {
    const int B = 7, dim = 32;
    int* t = tul_upload_ints(st, "temb", "t", B);  // (B), includes 0 and 999
    float* out = test_filled(B * dim, NAN);           // (B, dim)
    timestep_embedding_forward(out, t, B, dim);
    tul_check("timestep embedding forward", out, ref_f32(st, "temb", "out", B * dim), B * dim, 1.0f);
    dev_free(t); dev_free(out);
}

static void tul_test_embedding(const SafeTensors* st) {
    const int rows = 11, B = 5, dim = 8;
    const char* p = "embedding";
    float* table = tul_upload(st, p, "table", rows * dim);  // (rows, dim)
    int* ids = tul_upload_ints(st, p, "ids", B);            // (B), with repeats
    float* dout = tul_upload(st, p, "dout", B * dim);       // (B, dim)
    float* out = test_filled(B * dim, NAN);                    // (B, dim)
    float* dtable = test_filled(rows * dim, 0.0f);              // (rows, dim)

    embedding_forward(out, ids, table, B, dim);
    tul_check("embedding forward", out, ref_f32(st, p, "out", B * dim), B * dim, 1.0f);
    embedding_backward(dtable, dout, ids, B, dim);
    tul_check("embedding backward dtable", dtable, ref_f32(st, p, "dtable", rows * dim), rows * dim, 1.0f);
    embedding_backward(dtable, dout, ids, B, dim);
    tul_check("embedding dtable accumulates (x2)", dtable, ref_f32(st, p, "dtable", rows * dim), rows * dim, 2.0f);

    dev_free(table); dev_free(ids); dev_free(dout); dev_free(out); dev_free(dtable);
}

static void tul_test_broadcast_add(const SafeTensors* st) {
    const int B = 2, C = 5, HW = 9;
    const char* p = "bcast";
    float* h = tul_upload(st, p, "h", B * C * HW);        // (B, C, HW), becomes the output
    float* v = tul_upload(st, p, "v", B * C);             // (B, C)
    float* dout = tul_upload(st, p, "dout", B * C * HW);  // (B, C, HW)
    float* dv = test_filled(B * C, NAN);                     // (B, C)

    broadcast_add_forward(h, v, B, C, HW);
    tul_check("broadcast add forward", h, ref_f32(st, p, "out", B * C * HW), B * C * HW, 1.0f);
    broadcast_add_backward(dv, dout, B, C, HW);
    tul_check("broadcast add backward dv", dv, ref_f32(st, p, "dv", B * C), B * C, 1.0f);

    dev_free(h); dev_free(v); dev_free(dout); dev_free(dv);
}

static void tul_test_concat(const SafeTensors* st) {
    const int B = 2, Ca = 3, Cb = 5, HW = 4;
    const char* p = "concat";
    size_t na = (size_t)B * Ca * HW, nb = (size_t)B * Cb * HW, nout = na + nb;
    float* a = tul_upload(st, p, "a", na);           // (B, Ca, HW)
    float* b = tul_upload(st, p, "b", nb);           // (B, Cb, HW)
    float* dout = tul_upload(st, p, "dout", nout);   // (B, Ca+Cb, HW)
    float* out = test_filled(nout, NAN);                // (B, Ca+Cb, HW)
    float* da = test_filled(na, NAN);                   // (B, Ca, HW)
    float* db = test_filled(nb, NAN);                   // (B, Cb, HW)

    concat_channels_forward(out, a, b, B, Ca, Cb, HW);
    tul_check("concat channels forward", out, ref_f32(st, p, "out", nout), nout, 1.0f);
    concat_channels_backward(da, db, dout, B, Ca, Cb, HW);
    tul_check("concat channels backward da", da, ref_f32(st, p, "da", na), na, 1.0f);
    tul_check("concat channels backward db", db, ref_f32(st, p, "db", nb), nb, 1.0f);

    dev_free(a); dev_free(b); dev_free(dout); dev_free(out); dev_free(da); dev_free(db);
}

static void tul_test_attention(const SafeTensors* st, const char* p, int B, int C, int HW, int NH) {
    size_t nqkv = (size_t)B * 3 * C * HW, nout = (size_t)B * C * HW, natt = (size_t)B * NH * HW * HW;
    float* qkv = tul_upload(st, p, "qkv", nqkv);    // (B, 3C, HW)
    float* dout = tul_upload(st, p, "dout", nout);  // (B, C, HW)
    float* out = test_filled(nout, NAN);               // (B, C, HW)
    float* att = test_filled(natt, NAN);               // (B, NH, HW, HW)
    float* dqkv = test_filled(nqkv, NAN);              // (B, 3C, HW)
    float* datt = test_filled(natt, NAN);              // (B, NH, HW, HW) scratch
    char what[96];

    attention_forward(out, att, qkv, B, C, HW, NH);
    snprintf(what, sizeof(what), "%s forward out", p);
    tul_check(what, out, ref_f32(st, p, "out", nout), nout, 1.0f);
    snprintf(what, sizeof(what), "%s forward att", p);
    tul_check(what, att, ref_f32(st, p, "att", natt), natt, 1.0f);
    attention_backward(dqkv, datt, dout, qkv, att, B, C, HW, NH);
    snprintf(what, sizeof(what), "%s backward dqkv", p);
    tul_check(what, dqkv, ref_f32(st, p, "dqkv", nqkv), nqkv, 1.0f);

    dev_free(qkv); dev_free(dout); dev_free(out); dev_free(att); dev_free(dqkv); dev_free(datt);
}

// ----------------------------------------------------------------------------

static void test_unet_layers(void) {
    printf("U-Net layers (%s, reference %s, rtol %.0e):\n", device_name(), TUL_REF_PATH, (double)TUL_RTOL);
    SafeTensors st;
    safetensors_load(TUL_REF_PATH, &st);
    tul_test_linear(&st);
    tul_test_timestep_embedding(&st);
    tul_test_embedding(&st);
    tul_test_broadcast_add(&st);
    tul_test_concat(&st);
    tul_test_attention(&st, "attention", 2, 16, 16, 4);
    tul_test_attention(&st, "attention_hw40", 1, 8, 40, 2);
    safetensors_free(&st);
}
