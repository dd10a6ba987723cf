// tests/test_unet_layers.h — test_unet_layers(): the U-Net's own layers. First the plain references
// (*_ref) against PyTorch reference tensors (dev/ref/unet_layers.safetensors, written by
// dev/refs_unet_layers.py in float64), then each layer's dispatcher on the current device against
// PyTorch and, where that device's path is not the reference itself, against the reference ("... vs ref"):
//   linear (forward, dx, dweight, dbias), the sinusoidal timestep embedding, the class embedding
//   lookup and its scatter-add backward with repeated ids, the per-channel broadcast add, the
//   channel concat, and the attention core (forward output and probabilities, dqkv) at 4x4 with
//   4 heads and at 40 positions (rows longer than a warp, not a multiple of 32).
// On the CPU, linear and attention have fast paths (packed GEMMs); the other layers run their reference.
// Outputs and input gradients start as NaN, so a value the layer fails to overwrite fails the test;
// parameter gradients start at zero, and a second backward must double them (they accumulate).
// Runs on whatever g_device is; the references run on the host, and are checked against PyTorch in
// the CPU pass.
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

// the int64 reference tensor "<prefix>.<name>" as n host ints (free with free)
static inline int* tul_host_ints(const SafeTensors* st, const char* prefix, const char* name, size_t n) {
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", prefix, name);
    const int64_t* src = safetensors_get_i64(st, full, n);
    int* host = (int*)mallocCheck(n * sizeof(int));
    for (size_t i = 0; i < n; i++) host[i] = (int)src[i];
    return host;
}

// the int64 reference tensor "<prefix>.<name>" as n ints on the current device (free with dev_free)
static inline int* tul_upload_ints(const SafeTensors* st, const char* prefix, const char* name, size_t n) {
    int* host = tul_host_ints(st, prefix, name, n);
    int* dev = (int*)dev_malloc(n * sizeof(int));
    host_to_dev(dev, host, n * sizeof(int));
    free(host);
    return dev;
}

// ----------------------------------------------------------------------------
// one test per layer

static inline void tul_test_linear(const SafeTensors* st) {
    const int N = 3, in = 10, outdim = 6;
    const char* p = "linear";
    const float* hx = ref_f32(st, p, "x", N * in);                 // (N, in)
    const float* hw = ref_f32(st, p, "weight", outdim * in);       // (outdim, in)
    const float* hb = ref_f32(st, p, "bias", outdim);              // (outdim)
    const float* hdout = ref_f32(st, p, "dout", N * outdim);       // (N, outdim)
    const float* t_out = ref_f32(st, p, "out", N * outdim);
    const float* t_dx = ref_f32(st, p, "dx", N * in);
    const float* t_dw = ref_f32(st, p, "dweight", outdim * in);
    const float* t_db = ref_f32(st, p, "dbias", outdim);

    // the reference (host), then the fast path: the CPU's is the packed GEMM, never the reference
    float* r_out = host_filled(N * outdim, NAN);
    float* r_dx = host_filled(N * in, NAN);
    float* r_dw = host_filled(outdim * in, 0.0f);
    float* r_db = host_filled(outdim, 0.0f);
    linear_forward_ref(r_out, hx, hw, hb, N, in, outdim);
    linear_backward_ref(r_dx, r_dw, r_db, hdout, hx, hw, N, in, outdim);
    check_ref("linear forward", r_out, t_out, N * outdim, TUL_RTOL);
    check_ref("linear backward dx", r_dx, t_dx, N * in, TUL_RTOL);
    check_ref("linear backward dweight", r_dw, t_dw, outdim * in, TUL_RTOL);
    check_ref("linear backward dbias", r_db, t_db, outdim, TUL_RTOL);

    float* x = test_upload(hx, N * in);
    float* weight = test_upload(hw, outdim * in);
    float* bias = test_upload(hb, outdim);
    float* dout = test_upload(hdout, N * outdim);
    float* out = test_filled(N * outdim, NAN);                // (N, outdim)
    float* dx = test_filled(N * in, NAN);                     // (N, in)
    float* dweight = test_filled(outdim * in, 0.0f);           // (outdim, in)
    float* dbias = test_filled(outdim, 0.0f);                  // (outdim)

    linear_forward(out, x, weight, bias, N, in, outdim);
    check_device("linear forward", out, t_out, r_out, N * outdim, 0.0f, 1.0f, TUL_RTOL);
    linear_backward(dx, dweight, dbias, dout, x, weight, N, in, outdim);
    check_device("linear backward dx", dx, t_dx, r_dx, N * in, 0.0f, 1.0f, TUL_RTOL);
    check_device("linear backward dweight", dweight, t_dw, r_dw, outdim * in, 0.0f, 1.0f, TUL_RTOL);
    check_device("linear backward dbias", dbias, t_db, r_db, outdim, 0.0f, 1.0f, TUL_RTOL);
    linear_backward(NULL, dweight, dbias, dout, x, weight, N, in, outdim);  // no dx; accumulate again
    check_device("linear dweight accumulates (x2)", dweight, t_dw, r_dw, outdim * in, 0.0f, 2.0f, TUL_RTOL);
    check_device("linear dbias accumulates (x2)", dbias, t_db, r_db, outdim, 0.0f, 2.0f, TUL_RTOL);

    free(r_out); free(r_dx); free(r_dw); free(r_db);
    dev_free(x); dev_free(weight); dev_free(bias); dev_free(dout);
    dev_free(out); dev_free(dx); dev_free(dweight); dev_free(dbias);
}

static inline void tul_test_timestep_embedding(const SafeTensors* st) {
    const int B = 7, dim = 32;
    const float* t_out = ref_f32(st, "temb", "out", B * dim);
    int* ht = tul_host_ints(st, "temb", "t", B);  // (B), includes 0 and 999
    float* r_out = host_filled(B * dim, NAN);
    timestep_embedding_forward_ref(r_out, ht, B, dim);
    check_ref("timestep embedding forward", r_out, t_out, B * dim, TUL_RTOL);

    int* t = tul_upload_ints(st, "temb", "t", B);
    float* out = test_filled(B * dim, NAN);           // (B, dim)
    timestep_embedding_forward(out, t, B, dim);
    check_device("timestep embedding forward", out, t_out, vs_ref(r_out, 1), B * dim, 0.0f, 1.0f, TUL_RTOL);
    free(ht); free(r_out);
    dev_free(t); dev_free(out);
}

static inline void tul_test_embedding(const SafeTensors* st) {
    const int rows = 11, B = 5, dim = 8;
    const char* p = "embedding";
    const float* htable = ref_f32(st, p, "table", rows * dim);  // (rows, dim)
    const float* hdout = ref_f32(st, p, "dout", B * dim);       // (B, dim)
    const float* t_out = ref_f32(st, p, "out", B * dim);
    const float* t_dtable = ref_f32(st, p, "dtable", rows * dim);
    int* hids = tul_host_ints(st, p, "ids", B);                 // (B), with repeats
    float* r_out = host_filled(B * dim, NAN);
    float* r_dtable = host_filled(rows * dim, 0.0f);
    embedding_forward_ref(r_out, hids, htable, B, dim);
    embedding_backward_ref(r_dtable, hdout, hids, B, dim);
    check_ref("embedding forward", r_out, t_out, B * dim, TUL_RTOL);
    check_ref("embedding backward dtable", r_dtable, t_dtable, rows * dim, TUL_RTOL);

    float* table = test_upload(htable, rows * dim);
    int* ids = tul_upload_ints(st, p, "ids", B);
    float* dout = test_upload(hdout, B * dim);
    float* out = test_filled(B * dim, NAN);                    // (B, dim)
    float* dtable = test_filled(rows * dim, 0.0f);              // (rows, dim)
    embedding_forward(out, ids, table, B, dim);
    check_device("embedding forward", out, t_out, vs_ref(r_out, 1), B * dim, 0.0f, 1.0f, TUL_RTOL);
    embedding_backward(dtable, dout, ids, B, dim);
    check_device("embedding backward dtable", dtable, t_dtable, vs_ref(r_dtable, 1), rows * dim, 0.0f, 1.0f, TUL_RTOL);
    embedding_backward(dtable, dout, ids, B, dim);
    check_device("embedding dtable accumulates (x2)", dtable, t_dtable, vs_ref(r_dtable, 1), rows * dim, 0.0f, 2.0f, TUL_RTOL);

    free(hids); free(r_out); free(r_dtable);
    dev_free(table); dev_free(ids); dev_free(dout); dev_free(out); dev_free(dtable);
}

static inline void tul_test_broadcast_add(const SafeTensors* st) {
    const int B = 2, C = 5, HW = 9;
    const char* p = "bcast";
    const float* hh = ref_f32(st, p, "h", B * C * HW);        // (B, C, HW), becomes the output
    const float* hv = ref_f32(st, p, "v", B * C);             // (B, C)
    const float* hdout = ref_f32(st, p, "dout", B * C * HW);  // (B, C, HW)
    const float* t_out = ref_f32(st, p, "out", B * C * HW);
    const float* t_dv = ref_f32(st, p, "dv", B * C);
    float* r_out = (float*)mallocCheck(B * C * HW * sizeof(float));  // h, added to in place
    memcpy(r_out, hh, B * C * HW * sizeof(float));
    float* r_dv = host_filled(B * C, NAN);
    broadcast_add_forward_ref(r_out, hv, B, C, HW);
    broadcast_add_backward_ref(r_dv, hdout, B, C, HW);
    check_ref("broadcast add forward", r_out, t_out, B * C * HW, TUL_RTOL);
    check_ref("broadcast add backward dv", r_dv, t_dv, B * C, TUL_RTOL);

    float* h = test_upload(hh, B * C * HW);
    float* v = test_upload(hv, B * C);
    float* dout = test_upload(hdout, B * C * HW);
    float* dv = test_filled(B * C, NAN);                     // (B, C)
    broadcast_add_forward(h, v, B, C, HW);
    check_device("broadcast add forward", h, t_out, vs_ref(r_out, 1), B * C * HW, 0.0f, 1.0f, TUL_RTOL);
    broadcast_add_backward(dv, dout, B, C, HW);
    check_device("broadcast add backward dv", dv, t_dv, vs_ref(r_dv, 1), B * C, 0.0f, 1.0f, TUL_RTOL);

    free(r_out); free(r_dv);
    dev_free(h); dev_free(v); dev_free(dout); dev_free(dv);
}

static inline void tul_test_concat(const SafeTensors* st) {
    const int B = 2, Ca = 3, Cb = 5, HW = 4;
    const char* p = "concat";
    size_t na = (size_t)B * Ca * HW, nb = (size_t)B * Cb * HW, nout = na + nb;
    const float* ha = ref_f32(st, p, "a", na);           // (B, Ca, HW)
    const float* hb = ref_f32(st, p, "b", nb);           // (B, Cb, HW)
    const float* hdout = ref_f32(st, p, "dout", nout);   // (B, Ca+Cb, HW)
    const float* t_out = ref_f32(st, p, "out", nout);
    const float* t_da = ref_f32(st, p, "da", na);
    const float* t_db = ref_f32(st, p, "db", nb);
    float* r_out = host_filled(nout, NAN);
    float* r_da = host_filled(na, NAN);
    float* r_db = host_filled(nb, NAN);
    concat_channels_forward_ref(r_out, ha, hb, B, Ca, Cb, HW);
    concat_channels_backward_ref(r_da, r_db, hdout, B, Ca, Cb, HW);
    check_ref("concat channels forward", r_out, t_out, nout, TUL_RTOL);
    check_ref("concat channels backward da", r_da, t_da, na, TUL_RTOL);
    check_ref("concat channels backward db", r_db, t_db, nb, TUL_RTOL);

    float* a = test_upload(ha, na);
    float* b = test_upload(hb, nb);
    float* dout = test_upload(hdout, nout);
    float* out = test_filled(nout, NAN);                // (B, Ca+Cb, HW)
    float* da = test_filled(na, NAN);                   // (B, Ca, HW)
    float* db = test_filled(nb, NAN);                   // (B, Cb, HW)
    concat_channels_forward(out, a, b, B, Ca, Cb, HW);
    check_device("concat channels forward", out, t_out, vs_ref(r_out, 1), nout, 0.0f, 1.0f, TUL_RTOL);
    concat_channels_backward(da, db, dout, B, Ca, Cb, HW);
    check_device("concat channels backward da", da, t_da, vs_ref(r_da, 1), na, 0.0f, 1.0f, TUL_RTOL);
    check_device("concat channels backward db", db, t_db, vs_ref(r_db, 1), nb, 0.0f, 1.0f, TUL_RTOL);

    free(r_out); free(r_da); free(r_db);
    dev_free(a); dev_free(b); dev_free(dout); dev_free(out); dev_free(da); dev_free(db);
}

static inline void tul_test_attention(const SafeTensors* st, const char* p, int B, int C, int HW, int NH) {
    size_t nqkv = (size_t)B * 3 * C * HW, nout = (size_t)B * C * HW, natt = (size_t)B * NH * HW * HW;
    const float* hqkv = ref_f32(st, p, "qkv", nqkv);    // (B, 3C, HW)
    const float* hdout = ref_f32(st, p, "dout", nout);  // (B, C, HW)
    const float* t_out = ref_f32(st, p, "out", nout);
    const float* t_att = ref_f32(st, p, "att", natt);
    const float* t_dqkv = ref_f32(st, p, "dqkv", nqkv);
    char out_s[96], att_s[96], dqkv_s[96];
    snprintf(out_s, sizeof(out_s), "%s forward out", p);
    snprintf(att_s, sizeof(att_s), "%s forward att", p);
    snprintf(dqkv_s, sizeof(dqkv_s), "%s backward dqkv", p);

    // the reference (host), then the fast path: the CPU's is the packed batched GEMM, never the reference
    float* r_out = host_filled(nout, NAN);
    float* r_att = host_filled(natt, NAN);
    float* r_dqkv = host_filled(nqkv, NAN);
    float* r_datt = host_filled(natt, NAN);
    attention_forward_ref(r_out, r_att, hqkv, B, C, HW, NH);
    attention_backward_ref(r_dqkv, r_datt, hdout, hqkv, r_att, B, C, HW, NH);
    check_ref(out_s, r_out, t_out, nout, TUL_RTOL);
    check_ref(att_s, r_att, t_att, natt, TUL_RTOL);
    check_ref(dqkv_s, r_dqkv, t_dqkv, nqkv, TUL_RTOL);

    float* qkv = test_upload(hqkv, nqkv);
    float* dout = test_upload(hdout, nout);
    float* out = test_filled(nout, NAN);               // (B, C, HW)
    float* att = test_filled(natt, NAN);               // (B, NH, HW, HW)
    float* dqkv = test_filled(nqkv, NAN);              // (B, 3C, HW)
    float* datt = test_filled(natt, NAN);              // (B, NH, HW, HW) scratch
    attention_forward(out, att, qkv, B, C, HW, NH);
    check_device(out_s, out, t_out, r_out, nout, 0.0f, 1.0f, TUL_RTOL);
    check_device(att_s, att, t_att, r_att, natt, 0.0f, 1.0f, TUL_RTOL);
    attention_backward(dqkv, datt, dout, qkv, att, B, C, HW, NH);
    check_device(dqkv_s, dqkv, t_dqkv, r_dqkv, nqkv, 0.0f, 1.0f, TUL_RTOL);

    free(r_out); free(r_att); free(r_dqkv); free(r_datt);
    dev_free(qkv); dev_free(dout); dev_free(out); dev_free(att); dev_free(dqkv); dev_free(datt);
}

// ----------------------------------------------------------------------------

static inline void test_unet_layers(void) {
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
