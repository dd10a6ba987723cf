// tests/test_vae_layers.h — tests of the VAE's non-convolution layers and the optimizer against
// PyTorch (dev/refs_vae_layers.py writes dev/ref/vae_layers.safetensors):
//   groupnorm (G = 8, G = 1, and a float4-friendly shape), silu, add, scale, upsample2x,
//   the VAE's reparameterisation / KL / MSE and their gradients, grad_norm + clipping + AdamW + EMA
//   after 1 and 5 steps.
// test_vae_layers() runs on whatever g_device is. Outputs that the API overwrites start as NaN, so a
// kernel that skips an element or accumulates instead of assigning fails; parameter gradients start
// at 0.5 and the test checks that exactly the reference was added.
#pragma once

#include "ldmc/testing.h"
#include "ldmc/safetensors.h"
#include "ldmc/groupnorm.cuh"
#include "ldmc/elementwise.cuh"
#include "ldmc/vae_loss.cuh"
#include "ldmc/adamw.cuh"

#define VAE_LAYERS_REF_PATH "dev/ref/vae_layers.safetensors"

// ----------------------------------------------------------------------------
// helpers

static const SafeTensorInfo* vl_info(const SafeTensors* st, const char* prefix, const char* name, int ndim) {
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", prefix, name);
    const SafeTensorInfo* t = safetensors_find(st, full);
    if (t == NULL || t->ndim != ndim) {
        fprintf(stderr, "Error: %s: tensor '%s' missing or not %d-dimensional.\n"
                        "HINT: regenerate it with `python3 dev/refs_vae_layers.py`.\n", st->path, full, ndim);
        exit(EXIT_FAILURE);
    }
    return t;
}

// downloads n values and compares them with ref
static void vl_check(const char* what, const float* dev, const float* ref, size_t n, float rtol) {
    char name[96];
    snprintf(name, sizeof(name), "%s %s", device_name(), what);
    float* got = test_download(dev, n);
    check_close(name, got, ref, n, rtol);
    free(got);
}

// compares an accumulated gradient that started at `start` with the reference increment
static void vl_check_accumulated(const char* what, const float* dev, const float* ref, size_t n, float start, float rtol) {
    char name[96];
    snprintf(name, sizeof(name), "%s %s", device_name(), what);
    float* got = test_download(dev, n);
    for (size_t i = 0; i < n; i++) got[i] -= start;
    check_close(name, got, ref, n, rtol);
    free(got);
}

// compares how far a tensor moved from `before` (host) with how far the reference moved
static void vl_check_delta(const char* what, const float* dev, const float* before, const float* ref_after, size_t n,
                           float rtol) {
    char name[96];
    snprintf(name, sizeof(name), "%s %s", device_name(), what);
    float* got = test_download(dev, n);
    float* ref = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) { got[i] -= before[i]; ref[i] = ref_after[i] - before[i]; }
    check_close(name, got, ref, n, rtol);
    free(got);
    free(ref);
}

static void vl_check_scalar(const char* what, float got, const float* ref, float rtol) {
    char name[96];
    snprintf(name, sizeof(name), "%s %s", device_name(), what);
    check_close(name, &got, ref, 1, rtol);
}

// ----------------------------------------------------------------------------
// GroupNorm

static void test_groupnorm_case(const SafeTensors* st, const char* prefix) {
    const SafeTensorInfo* xi = vl_info(st, prefix, "x", 4);  // (B, C, H, W)
    int B = (int)xi->shape[0], C = (int)xi->shape[1], HW = (int)(xi->shape[2] * xi->shape[3]);
    int G = (int)ref_f32(st, prefix, "G", 1)[0];
    size_t n = (size_t)B * C * HW;
    const float rtol = 1e-5f;
    char what[64];

    float* x = test_upload(ref_f32(st, prefix, "x", n), n);
    float* weight = test_upload(ref_f32(st, prefix, "weight", C), C);
    float* bias = test_upload(ref_f32(st, prefix, "bias", C), C);
    float* dout = test_upload(ref_f32(st, prefix, "dout", n), n);
    float* out = test_filled(n, NAN);
    float* mean = test_filled((size_t)B * G, NAN);
    float* rstd = test_filled((size_t)B * G, NAN);
    float* dx = test_filled(n, NAN);
    float* dweight = test_filled(C, 0.5f);
    float* dbias = test_filled(C, 0.5f);

    groupnorm_forward(out, mean, rstd, x, weight, bias, B, C, HW, G);
    snprintf(what, sizeof(what), "%s forward (G=%d)", prefix, G);
    vl_check(what, out, ref_f32(st, prefix, "out", n), n, rtol);
    snprintf(what, sizeof(what), "%s mean", prefix);
    vl_check(what, mean, ref_f32(st, prefix, "mean", (size_t)B * G), (size_t)B * G, rtol);
    snprintf(what, sizeof(what), "%s rstd", prefix);
    vl_check(what, rstd, ref_f32(st, prefix, "rstd", (size_t)B * G), (size_t)B * G, rtol);

    groupnorm_backward(dx, dweight, dbias, dout, x, mean, rstd, weight, B, C, HW, G);
    snprintf(what, sizeof(what), "%s backward dx", prefix);
    vl_check(what, dx, ref_f32(st, prefix, "dx", n), n, rtol);
    snprintf(what, sizeof(what), "%s backward dweight (+=)", prefix);
    vl_check_accumulated(what, dweight, ref_f32(st, prefix, "dweight", C), C, 0.5f, rtol);
    snprintf(what, sizeof(what), "%s backward dbias (+=)", prefix);
    vl_check_accumulated(what, dbias, ref_f32(st, prefix, "dbias", C), C, 0.5f, rtol);

    dev_free(x); dev_free(weight); dev_free(bias); dev_free(dout); dev_free(out);
    dev_free(mean); dev_free(rstd); dev_free(dx); dev_free(dweight); dev_free(dbias);
}

// ----------------------------------------------------------------------------
// elementwise: silu, add, scale, upsample2x

static void test_elementwise(const SafeTensors* st) {
    const float rtol = 1e-5f;

    // silu: 96 values (the CUDA float4 path), then the same data shifted by one float (misaligned,
    // 95 values: the scalar path), then the backward in place (dx == dout), as NormSilu calls it
    size_t n = vl_info(st, "silu", "x", 4)->numel;
    const float* ref_x = ref_f32(st, "silu", "x", n);
    const float* ref_out = ref_f32(st, "silu", "out", n);
    const float* ref_dout = ref_f32(st, "silu", "dout", n);
    const float* ref_dx = ref_f32(st, "silu", "dx", n);
    float* x = test_upload(ref_x, n);
    float* dout = test_upload(ref_dout, n);
    float* out = test_filled(n, NAN);
    float* dx = test_filled(n, NAN);
    silu_forward(out, x, n);
    vl_check("silu forward", out, ref_out, n, rtol);
    silu_backward(dx, dout, x, n);
    vl_check("silu backward", dx, ref_dx, n, rtol);
    dev_free(out); dev_free(dx);
    out = test_filled(n, NAN);
    silu_forward(out + 1, x + 1, n - 1);
    vl_check("silu forward (misaligned, n-1)", out + 1, ref_out + 1, n - 1, rtol);
    silu_backward(dout, dout, x, n);
    vl_check("silu backward in place (dx == dout)", dout, ref_dx, n, rtol);
    dev_free(x); dev_free(dout); dev_free(out);

    // add and scale: 150 values (not a multiple of 4: the CUDA scalar path)
    n = vl_info(st, "add", "a", 4)->numel;
    float* a = test_upload(ref_f32(st, "add", "a", n), n);
    float* b = test_upload(ref_f32(st, "add", "b", n), n);
    out = test_filled(n, NAN);
    add_forward(out, a, b, n);
    vl_check("add forward", out, ref_f32(st, "add", "out", n), n, rtol);
    add_inplace(b, a, n);
    vl_check("add_inplace", b, ref_f32(st, "add", "out", n), n, rtol);
    scale_inplace(a, ref_f32(st, "scale", "s", 1)[0], n);
    vl_check("scale_inplace", a, ref_f32(st, "scale", "out", n), n, rtol);
    dev_free(a); dev_free(b); dev_free(out);

    // nearest x2 upsampling
    const SafeTensorInfo* xi = vl_info(st, "upsample", "x", 4);  // (B, C, H, W)
    int B = (int)xi->shape[0], C = (int)xi->shape[1], H = (int)xi->shape[2], W = (int)xi->shape[3];
    n = xi->numel;
    x = test_upload(ref_f32(st, "upsample", "x", n), n);
    dout = test_upload(ref_f32(st, "upsample", "dout", 4 * n), 4 * n);
    out = test_filled(4 * n, NAN);
    dx = test_filled(n, NAN);
    upsample2x_forward(out, x, B, C, H, W);
    vl_check("upsample2x forward", out, ref_f32(st, "upsample", "out", 4 * n), 4 * n, rtol);
    upsample2x_backward(dx, dout, B, C, H, W);
    vl_check("upsample2x backward", dx, ref_f32(st, "upsample", "dx", n), n, rtol);
    dev_free(dout); dev_free(out); dev_free(dx);
    // again with the large tensor one float off alignment (the CUDA kernels' scalar fallback)
    float* dout_buf = test_filled(4 * n + 1, NAN);
    float* out_buf = test_filled(4 * n + 1, NAN);
    dx = test_filled(n, NAN);
    host_to_dev(dout_buf + 1, ref_f32(st, "upsample", "dout", 4 * n), 4 * n * sizeof(float));
    upsample2x_forward(out_buf + 1, x, B, C, H, W);
    vl_check("upsample2x forward (misaligned)", out_buf + 1, ref_f32(st, "upsample", "out", 4 * n), 4 * n, rtol);
    upsample2x_backward(dx, dout_buf + 1, B, C, H, W);
    vl_check("upsample2x backward (misaligned)", dx, ref_f32(st, "upsample", "dx", n), n, rtol);
    dev_free(x); dev_free(dout_buf); dev_free(out_buf); dev_free(dx);
}

// ----------------------------------------------------------------------------
// VAE loss: reparameterisation, KL, their backward, MSE

static void test_vae_loss_case(const SafeTensors* st, const char* prefix) {
    const SafeTensorInfo* mi = vl_info(st, prefix, "moments", 4);  // (B, 2Z, h, w)
    int B = (int)mi->shape[0], Z = (int)mi->shape[1] / 2, HW = (int)(mi->shape[2] * mi->shape[3]);
    size_t nm = mi->numel, nz = (size_t)B * Z * HW;
    const float rtol = 1e-5f;
    char what[64];

    float* moments = test_upload(ref_f32(st, prefix, "moments", nm), nm);
    float* eps = test_upload(ref_f32(st, prefix, "eps", nz), nz);
    float* dz = test_upload(ref_f32(st, prefix, "dz", nz), nz);
    float* z = test_filled(nz, NAN);
    float* dmoments = test_filled(nm, NAN);
    float kl_weight = ref_f32(st, prefix, "kl_weight", 1)[0];

    vae_reparam_forward(z, moments, eps, B, Z, HW);
    snprintf(what, sizeof(what), "%s reparam z", prefix);
    vl_check(what, z, ref_f32(st, prefix, "z", nz), nz, rtol);
    snprintf(what, sizeof(what), "%s kl", prefix);
    vl_check_scalar(what, vae_kl_forward(moments, B, Z, HW), ref_f32(st, prefix, "kl", 1), rtol);
    vae_reparam_kl_backward(dmoments, dz, moments, eps, kl_weight, B, Z, HW);
    snprintf(what, sizeof(what), "%s reparam+kl backward", prefix);
    vl_check(what, dmoments, ref_f32(st, prefix, "dmoments", nm), nm, rtol);

    size_t n = vl_info(st, prefix, "x_rec", 4)->numel;
    float* x_rec = test_upload(ref_f32(st, prefix, "x_rec", n), n);
    float* target = test_upload(ref_f32(st, prefix, "target", n), n);
    float* dx_rec = test_filled(n, NAN);
    snprintf(what, sizeof(what), "%s mse", prefix);
    vl_check_scalar(what, mse_forward(x_rec, target, n), ref_f32(st, prefix, "mse", 1), rtol);
    mse_backward(dx_rec, x_rec, target, n);
    snprintf(what, sizeof(what), "%s mse backward", prefix);
    vl_check(what, dx_rec, ref_f32(st, prefix, "dx_rec", n), n, rtol);

    dev_free(moments); dev_free(eps); dev_free(dz); dev_free(z); dev_free(dmoments);
    dev_free(x_rec); dev_free(target); dev_free(dx_rec);
}

// ----------------------------------------------------------------------------
// grad_norm + clip_scale + AdamW (+ EMA): 5 steps with the same gradients, as the reference did.
// Compared: the update p_after - p_before and the EMA's move ema - p_before (SPEC §9), relative to
// their scale. The reference gradients are all at least 0.5 in magnitude, so no weight's first
// update (~lr * sign(g)) can flip sign through rounding: no element needs special handling.
// Cases: "adamw" (SPEC §6's betas and eps, with the EMA) and "adamw_eps" (eps of the order of the
// clipped gradients, so the update depends on the clip factor; no EMA: the ema == NULL path).

static void test_adamw_case(const SafeTensors* st, const char* prefix) {
    size_t n = vl_info(st, prefix, "params", 1)->numel;
    const float* p0 = ref_f32(st, prefix, "params", n);
    const float* g0 = ref_f32(st, prefix, "grads", n);
    float lr = ref_f32(st, prefix, "lr", 1)[0];
    float beta1 = ref_f32(st, prefix, "beta1", 1)[0], beta2 = ref_f32(st, prefix, "beta2", 1)[0];
    float eps = ref_f32(st, prefix, "eps", 1)[0];
    float wd = ref_f32(st, prefix, "weight_decay", 1)[0];
    float max_norm = ref_f32(st, prefix, "max_norm", 1)[0];
    const float rtol_norm = 1e-5f, rtol_update = 1e-4f;
    char what[96];
    snprintf(what, sizeof(what), "%s.ema_decay", prefix);
    int with_ema = safetensors_find(st, what) != NULL;  // the case's reference has an EMA
    float decay = with_ema ? ref_f32(st, prefix, "ema_decay", 1)[0] : 0.0f;

    float* params = test_upload(p0, n);
    float* grads = test_upload(g0, n);
    float* m = test_filled(n, 0.0f);
    float* v = test_filled(n, 0.0f);
    float* ema = with_ema ? test_upload(p0, n) : NULL;

    for (int t = 1; t <= 5; t++) {
        float norm = grad_norm(grads, n);
        float scale = clip_scale(norm, max_norm);
        if (t == 1) {
            snprintf(what, sizeof(what), "%s grad_norm", prefix);
            vl_check_scalar(what, norm, ref_f32(st, prefix, "grad_norm", 1), rtol_norm);
            // the gradient clip_grad_norm_ leaves behind, g * clip_scale, computed on the host
            float* clipped = (float*)mallocCheck(n * sizeof(float));
            for (size_t i = 0; i < n; i++) clipped[i] = g0[i] * scale;
            snprintf(what, sizeof(what), "%s %s clip_scale (g * scale)", device_name(), prefix);
            check_close(what, clipped, ref_f32(st, prefix, "grads_clipped", n), n, rtol_norm);
            free(clipped);
        }
        adamw_update(params, grads, m, v, ema, n, lr, beta1, beta2, eps, wd, scale, t,
                     with_ema ? ema_decay_at(decay, t - 1) : 0.0f);
        if (t != 1 && t != 5) continue;
        snprintf(what, sizeof(what), "%s params after %d step%s (p - p0)", prefix, t, t > 1 ? "s" : "");
        vl_check_delta(what, params, p0, ref_f32(st, prefix, t == 1 ? "params1" : "params5", n), n, rtol_update);
        if (with_ema) {
            snprintf(what, sizeof(what), "%s ema after %d step%s (ema - p0)", prefix, t, t > 1 ? "s" : "");
            vl_check_delta(what, ema, p0, ref_f32(st, prefix, t == 1 ? "ema1" : "ema5", n), n, rtol_update);
        }
    }
    dev_free(params); dev_free(grads); dev_free(m); dev_free(v); dev_free(ema);
}

// ----------------------------------------------------------------------------

static void test_vae_layers(void) {
    printf("VAE layers, loss and AdamW vs PyTorch (%s) on %s\n", VAE_LAYERS_REF_PATH, device_name());
    SafeTensors st;
    safetensors_load(VAE_LAYERS_REF_PATH, &st);
    test_groupnorm_case(&st, "groupnorm");
    test_groupnorm_case(&st, "groupnorm1");
    test_groupnorm_case(&st, "groupnorm4");
    test_elementwise(&st);
    test_vae_loss_case(&st, "vae_loss");
    test_vae_loss_case(&st, "vae_loss_low");
    test_adamw_case(&st, "adamw");
    test_adamw_case(&st, "adamw_eps");
    safetensors_free(&st);
}
