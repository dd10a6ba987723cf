// tests/test_vae_layers.h — tests of the VAE's non-convolution layers and the optimizer. First the
// plain references (*_ref) against PyTorch (dev/refs_vae_layers.py writes
// dev/ref/vae_layers.safetensors), then each layer's dispatcher on the current device against
// PyTorch and, where that device's path is not the reference itself, against the reference ("... vs ref"):
//   groupnorm (G = 8, G = 1, and a float4-friendly shape), silu, add, scale, upsample2x,
//   the VAE's reparameterisation / KL / MSE and their gradients, grad_norm + clipping + AdamW + EMA
//   after 1 and 5 steps.
// On the CPU most of these layers run their reference (only the KL, MSE and gradient-norm sums have a
// separate parallel version); on CUDA every layer is compared with the reference.
// test_vae_layers() runs on whatever g_device is; the references run on the host, and are checked
// against PyTorch in the CPU pass. Outputs that the API overwrites start as NaN, so a kernel that
// skips an element or accumulates instead of assigning fails; parameter gradients start at 0.5 and
// the test checks that exactly the reference was added.
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

// a malloc'd host copy of n floats
static inline float* vl_host_copy(const float* src, size_t n) {
    float* h = (float*)mallocCheck(n * sizeof(float));
    memcpy(h, src, n * sizeof(float));
    return h;
}

// `after - before` (the move; host arrays), in place in `after`
static inline void vl_subtract(float* after, const float* before, size_t n) {
    for (size_t i = 0; i < n; i++) after[i] -= before[i];
}

// how far a tensor moved from `before` (host) against how far PyTorch's and the reference's moved
static inline void vl_check_delta(const char* what, const float* dev, const float* before, const float* torch_after,
                           const float* ref_after, size_t n, float rtol) {
    float* got = test_download(dev, n);
    float* torch = vl_host_copy(torch_after, n);
    float* ref = ref_after ? vl_host_copy(ref_after, n) : NULL;
    vl_subtract(got, before, n);
    vl_subtract(torch, before, n);
    if (ref != NULL) vl_subtract(ref, before, n);
    check_result(what, got, torch, ref, n, rtol);
    free(got); free(torch); free(ref);
}

// ----------------------------------------------------------------------------
// GroupNorm (the CPU path is the reference)

static inline void test_groupnorm_case(const SafeTensors* st, const char* prefix) {
    const SafeTensorInfo* xi = ref_info(st, prefix, "x", 4);  // (B, C, H, W)
    int B = (int)xi->shape[0], C = (int)xi->shape[1], HW = (int)(xi->shape[2] * xi->shape[3]);
    int G = (int)ref_f32(st, prefix, "G", 1)[0];
    size_t n = (size_t)B * C * HW, nbg = (size_t)B * G;
    const float rtol = 1e-5f;
    const float* hx = ref_f32(st, prefix, "x", n);
    const float* hw = ref_f32(st, prefix, "weight", C);
    const float* hb = ref_f32(st, prefix, "bias", C);
    const float* hdout = ref_f32(st, prefix, "dout", n);
    const float* t_out = ref_f32(st, prefix, "out", n);
    const float* t_mean = ref_f32(st, prefix, "mean", nbg);
    const float* t_rstd = ref_f32(st, prefix, "rstd", nbg);
    const float* t_dx = ref_f32(st, prefix, "dx", n);
    const float* t_dw = ref_f32(st, prefix, "dweight", C);
    const float* t_db = ref_f32(st, prefix, "dbias", C);
    char fwd[64], mean_s[64], rstd_s[64], dx_s[64], dw_s[64], db_s[64];
    snprintf(fwd, sizeof(fwd), "%s forward (G=%d)", prefix, G);
    snprintf(mean_s, sizeof(mean_s), "%s mean", prefix);
    snprintf(rstd_s, sizeof(rstd_s), "%s rstd", prefix);
    snprintf(dx_s, sizeof(dx_s), "%s backward dx", prefix);
    snprintf(dw_s, sizeof(dw_s), "%s backward dweight (+=)", prefix);
    snprintf(db_s, sizeof(db_s), "%s backward dbias (+=)", prefix);

    // the reference on the host; its parameter gradients start at 0
    float *r_out = host_filled(n, NAN), *r_mean = host_filled(nbg, NAN), *r_rstd = host_filled(nbg, NAN), *r_dx = host_filled(n, NAN);
    float* r_dw = (float*)calloc(C, sizeof(float));
    float* r_db = (float*)calloc(C, sizeof(float));
    groupnorm_forward_ref(r_out, r_mean, r_rstd, hx, hw, hb, B, C, HW, G);
    groupnorm_backward_ref(r_dx, r_dw, r_db, hdout, hx, r_mean, r_rstd, hw, B, C, HW, G);
    check_ref(fwd, r_out, t_out, n, rtol);
    check_ref(mean_s, r_mean, t_mean, nbg, rtol);
    check_ref(rstd_s, r_rstd, t_rstd, nbg, rtol);
    check_ref(dx_s, r_dx, t_dx, n, rtol);
    check_ref(dw_s, r_dw, t_dw, C, rtol);
    check_ref(db_s, r_db, t_db, C, rtol);

    float* x = test_upload(hx, n);
    float* weight = test_upload(hw, C);
    float* bias = test_upload(hb, C);
    float* dout = test_upload(hdout, n);
    float* out = test_filled(n, NAN);
    float* mean = test_filled(nbg, NAN);
    float* rstd = test_filled(nbg, NAN);
    float* dx = test_filled(n, NAN);
    float* dweight = test_filled(C, 0.5f);
    float* dbias = test_filled(C, 0.5f);

    groupnorm_forward(out, mean, rstd, x, weight, bias, B, C, HW, G);
    check_device(fwd, out, t_out, vs_ref(r_out, 1), n, 0.0f, 1.0f, rtol);
    check_device(mean_s, mean, t_mean, vs_ref(r_mean, 1), nbg, 0.0f, 1.0f, rtol);
    check_device(rstd_s, rstd, t_rstd, vs_ref(r_rstd, 1), nbg, 0.0f, 1.0f, rtol);
    groupnorm_backward(dx, dweight, dbias, dout, x, mean, rstd, weight, B, C, HW, G);
    check_device(dx_s, dx, t_dx, vs_ref(r_dx, 1), n, 0.0f, 1.0f, rtol);
    check_device(dw_s, dweight, t_dw, vs_ref(r_dw, 1), C, 0.5f, 1.0f, rtol);
    check_device(db_s, dbias, t_db, vs_ref(r_db, 1), C, 0.5f, 1.0f, rtol);

    free(r_out); free(r_mean); free(r_rstd); free(r_dx); free(r_dw); free(r_db);
    dev_free(x); dev_free(weight); dev_free(bias); dev_free(dout); dev_free(out);
    dev_free(mean); dev_free(rstd); dev_free(dx); dev_free(dweight); dev_free(dbias);
}

// ----------------------------------------------------------------------------
// elementwise: silu, add, scale, upsample2x (the CPU path of add, scale and upsample2x is the
// reference; SiLU's is silu_*_cpu, with exp_cpu)

// exp_cpu against libm's double-precision exp over its whole range; the fast SiLU against the exact
// values (computed in double) far beyond the 96 PyTorch values: x over [-120, 120] in steps of
// ~1e-3, where exp_cpu's clamp acts, and +-1e30, +-inf. Errors are measured against the size of
// the expression's terms, |silu(x)| forward and |dout| s (1 + |x| (1 - s)) backward (the gradient
// itself crosses 0 near x = -1.28, where any float evaluation loses its relative accuracy), and
// the fast path must be as accurate as the reference (which matches PyTorch): its worst error at
// most the reference's plus 2 ulp. Non-finite values must be where the reference has them.
static inline double silu_exact(double x, double dout, int grad, double* magnitude) {
    double s = 1.0 / (1.0 + exp(-x));
    *magnitude = grad ? fabs(dout) * s * (1.0 + fabs(x) * (1.0 - s)) : fabs(x * s);
    return grad ? dout * s * (1.0 + x * (1.0 - s)) : x * s;
}

static inline void check_silu_cpu(const char* name, const float* x, const float* dout, const float* got,
                                  const float* ref, size_t n, int grad) {
    const double ulp = 5.96e-8;
    double err_got = 0.0, err_ref = 0.0;
    size_t bad = n, worst = 0;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(x[i]) || !isfinite(ref[i])) {
            int same = (isnan(ref[i]) && isnan(got[i])) || got[i] == ref[i];
            if (!same && bad == n) bad = i;
            continue;
        }
        double magnitude, exact = silu_exact(x[i], dout[i], grad, &magnitude);
        // exp_cpu flushes e^x below e^-87 to 0: silu(x) is then -0 where the exact value is at most
        // 88 e^-88 = 5e-37 in size; errors on values this small count against 1e-28
        if (magnitude < 1e-28) magnitude = 1e-28;
        double eg = fabs(got[i] - exact) / magnitude, er = fabs(ref[i] - exact) / magnitude;
        if (!(eg <= err_got)) { err_got = eg; worst = i; }  // NaN too
        if (er > err_ref) err_ref = er;
    }
    char detail[192];
    int ok = bad == n && err_got <= err_ref + 2.0 * ulp;
    if (bad < n) snprintf(detail, sizeof(detail), "at x = %g: %g, ref %g", x[bad], got[bad], ref[bad]);
    else snprintf(detail, sizeof(detail), "max err %.1f ulp (x = %g), ref's %.1f ulp (tol: ref's + 2), n = %zu",
                  err_got / ulp, x[worst], err_ref / ulp, n);
    check_true(name, ok, detail);
}

static inline void test_exp_cpu(void) {
    double worst_rel = 0.0;
    float worst_x = 0.0f;
    for (float x = -87.0f; x <= 88.0f; x += 0.00137f) {
        double e = exp((double)x);
        double rel = fabs((double)exp_cpu(x) - e) / e;
        if (rel > worst_rel) { worst_rel = rel; worst_x = x; }
    }
    const double ulp = 5.96e-8;  // 2^-24: half the spacing of floats in [1, 2), relative
    char detail[128];
    snprintf(detail, sizeof(detail), "max rel err %.2e (%.2f ulp, at x = %.4f) tol 2 ulp", worst_rel, worst_rel / ulp, worst_x);
    check_true("cpu exp_cpu vs libm exp, [-87, 88]", worst_rel <= 2.0 * ulp, detail);

    size_t n = 200004;
    float* x = host_filled(n, 0.0f);
    for (size_t i = 0; i < n; i++) x[i] = -120.0f + 240.0f * (float)i / (float)(n - 1);
    x[0] = -INFINITY; x[1] = -1e30f; x[n - 2] = 1e30f; x[n - 1] = INFINITY;
    float* dout = host_filled(n, 0.75f);
    float *r_out = host_filled(n, NAN), *out = host_filled(n, NAN);
    float *r_dx = host_filled(n, NAN), *dx = host_filled(n, NAN);
    silu_forward_ref(r_out, x, n);
    silu_forward_cpu(out, x, n);
    check_silu_cpu("cpu silu_forward_cpu, [-120, 120], +-1e30, +-inf", x, dout, out, r_out, n, 0);
    silu_backward_ref(r_dx, dout, x, n);
    silu_backward_cpu(dx, dout, x, n);
    check_silu_cpu("cpu silu_backward_cpu, [-120, 120], +-1e30, +-inf", x, dout, dx, r_dx, n, 1);
    free(x); free(dout); free(r_out); free(out); free(r_dx); free(dx);
}

static inline void test_elementwise(const SafeTensors* st) {
    const float rtol = 1e-5f;
    if (g_device != DEVICE_CUDA) test_exp_cpu();

    // silu: 96 values (the CUDA float4 path), then the same data shifted by one float (misaligned,
    // 95 values: the scalar path), then the backward in place (dx == dout), as NormSilu calls it
    size_t n = ref_info(st, "silu", "x", 4)->numel;
    const float* ref_x = ref_f32(st, "silu", "x", n);
    const float* ref_out = ref_f32(st, "silu", "out", n);
    const float* ref_dout = ref_f32(st, "silu", "dout", n);
    const float* ref_dx = ref_f32(st, "silu", "dx", n);
    float* r_out = host_filled(n, NAN);
    float* r_dx = host_filled(n, NAN);
    silu_forward_ref(r_out, ref_x, n);
    silu_backward_ref(r_dx, ref_dout, ref_x, n);
    check_ref("silu forward", r_out, ref_out, n, rtol);
    check_ref("silu backward", r_dx, ref_dx, n, rtol);
    float* x = test_upload(ref_x, n);
    float* dout = test_upload(ref_dout, n);
    float* out = test_filled(n, NAN);
    float* dx = test_filled(n, NAN);
    silu_forward(out, x, n);
    check_device("silu forward", out, ref_out, vs_ref(r_out, 1), n, 0.0f, 1.0f, rtol);
    silu_backward(dx, dout, x, n);
    check_device("silu backward", dx, ref_dx, vs_ref(r_dx, 1), n, 0.0f, 1.0f, rtol);
    dev_free(out); dev_free(dx);
    out = test_filled(n, NAN);
    silu_forward(out + 1, x + 1, n - 1);
    check_device("silu forward (misaligned, n-1)", out + 1, ref_out + 1, vs_ref(r_out + 1, 1), n - 1, 0.0f, 1.0f, rtol);
    silu_backward(dout, dout, x, n);
    check_device("silu backward in place (dx == dout)", dout, ref_dx, vs_ref(r_dx, 1), n, 0.0f, 1.0f, rtol);
    dev_free(x); dev_free(dout); dev_free(out);
    free(r_out); free(r_dx);

    // add and scale: 150 values (not a multiple of 4: the CUDA scalar path)
    n = ref_info(st, "add", "a", 4)->numel;
    const float* ha = ref_f32(st, "add", "a", n);
    const float* hb = ref_f32(st, "add", "b", n);
    const float* t_add = ref_f32(st, "add", "out", n);
    const float* t_scale = ref_f32(st, "scale", "out", n);
    float s = ref_f32(st, "scale", "s", 1)[0];
    float* r_add = host_filled(n, NAN);
    float* r_scale = vl_host_copy(ha, n);
    add_forward_ref(r_add, ha, hb, n);
    scale_inplace_ref(r_scale, s, n);
    check_ref("add forward", r_add, t_add, n, rtol);
    check_ref("scale_inplace", r_scale, t_scale, n, rtol);
    float* a = test_upload(ha, n);
    float* b = test_upload(hb, n);
    out = test_filled(n, NAN);
    add_forward(out, a, b, n);
    check_device("add forward", out, t_add, vs_ref(r_add, 1), n, 0.0f, 1.0f, rtol);
    add_inplace(b, a, n);
    check_device("add_inplace", b, t_add, vs_ref(r_add, 1), n, 0.0f, 1.0f, rtol);
    scale_inplace(a, s, n);
    check_device("scale_inplace", a, t_scale, vs_ref(r_scale, 1), n, 0.0f, 1.0f, rtol);
    dev_free(a); dev_free(b); dev_free(out);
    free(r_add); free(r_scale);

    // nearest x2 upsampling
    const SafeTensorInfo* xi = ref_info(st, "upsample", "x", 4);  // (B, C, H, W)
    int B = (int)xi->shape[0], C = (int)xi->shape[1], H = (int)xi->shape[2], W = (int)xi->shape[3];
    n = xi->numel;
    const float* hx = ref_f32(st, "upsample", "x", n);
    const float* hdout = ref_f32(st, "upsample", "dout", 4 * n);
    const float* t_up = ref_f32(st, "upsample", "out", 4 * n);
    const float* t_updx = ref_f32(st, "upsample", "dx", n);
    float* r_up = host_filled(4 * n, NAN);
    float* r_updx = host_filled(n, NAN);
    upsample2x_forward_ref(r_up, hx, B, C, H, W);
    upsample2x_backward_ref(r_updx, hdout, B, C, H, W);
    check_ref("upsample2x forward", r_up, t_up, 4 * n, rtol);
    check_ref("upsample2x backward", r_updx, t_updx, n, rtol);
    x = test_upload(hx, n);
    dout = test_upload(hdout, 4 * n);
    out = test_filled(4 * n, NAN);
    dx = test_filled(n, NAN);
    upsample2x_forward(out, x, B, C, H, W);
    check_device("upsample2x forward", out, t_up, vs_ref(r_up, 1), 4 * n, 0.0f, 1.0f, rtol);
    upsample2x_backward(dx, dout, B, C, H, W);
    check_device("upsample2x backward", dx, t_updx, vs_ref(r_updx, 1), n, 0.0f, 1.0f, rtol);
    dev_free(dout); dev_free(out); dev_free(dx);
    // again with the large tensor one float off alignment (the CUDA kernels' scalar fallback)
    float* dout_buf = test_filled(4 * n + 1, NAN);
    float* out_buf = test_filled(4 * n + 1, NAN);
    dx = test_filled(n, NAN);
    host_to_dev(dout_buf + 1, hdout, 4 * n * sizeof(float));
    upsample2x_forward(out_buf + 1, x, B, C, H, W);
    check_device("upsample2x forward (misaligned)", out_buf + 1, t_up, vs_ref(r_up, 1), 4 * n, 0.0f, 1.0f, rtol);
    upsample2x_backward(dx, dout_buf + 1, B, C, H, W);
    check_device("upsample2x backward (misaligned)", dx, t_updx, vs_ref(r_updx, 1), n, 0.0f, 1.0f, rtol);
    dev_free(x); dev_free(dout_buf); dev_free(out_buf); dev_free(dx);
    free(r_up); free(r_updx);
}

// ----------------------------------------------------------------------------
// VAE loss: reparameterisation, KL, their backward, MSE (on the CPU only the KL and MSE sums are not
// the reference)

static inline void test_vae_loss_case(const SafeTensors* st, const char* prefix) {
    const SafeTensorInfo* mi = ref_info(st, prefix, "moments", 4);  // (B, 2Z, h, w)
    int B = (int)mi->shape[0], Z = (int)mi->shape[1] / 2, HW = (int)(mi->shape[2] * mi->shape[3]);
    size_t nm = mi->numel, nz = (size_t)B * Z * HW;
    size_t n = ref_info(st, prefix, "x_rec", 4)->numel;
    const float rtol = 1e-5f;
    const float* hm = ref_f32(st, prefix, "moments", nm);
    const float* heps = ref_f32(st, prefix, "eps", nz);
    const float* hdz = ref_f32(st, prefix, "dz", nz);
    const float* hrec = ref_f32(st, prefix, "x_rec", n);
    const float* htarget = ref_f32(st, prefix, "target", n);
    const float* t_z = ref_f32(st, prefix, "z", nz);
    const float* t_kl = ref_f32(st, prefix, "kl", 1);
    const float* t_dm = ref_f32(st, prefix, "dmoments", nm);
    const float* t_mse = ref_f32(st, prefix, "mse", 1);
    const float* t_drec = ref_f32(st, prefix, "dx_rec", n);
    float kl_weight = ref_f32(st, prefix, "kl_weight", 1)[0];
    char z_s[64], kl_s[64], dm_s[64], mse_s[64], drec_s[64];
    snprintf(z_s, sizeof(z_s), "%s reparam z", prefix);
    snprintf(kl_s, sizeof(kl_s), "%s kl", prefix);
    snprintf(dm_s, sizeof(dm_s), "%s reparam+kl backward", prefix);
    snprintf(mse_s, sizeof(mse_s), "%s mse", prefix);
    snprintf(drec_s, sizeof(drec_s), "%s mse backward", prefix);

    float* r_z = host_filled(nz, NAN);
    float* r_dm = host_filled(nm, NAN);
    float* r_drec = host_filled(n, NAN);
    vae_reparam_forward_ref(r_z, hm, heps, B, Z, HW);
    float r_kl = vae_kl_forward_ref(hm, B, Z, HW);
    vae_reparam_kl_backward_ref(r_dm, hdz, hm, heps, kl_weight, B, Z, HW);
    float r_mse = mse_forward_ref(hrec, htarget, n);
    mse_backward_ref(r_drec, hrec, htarget, n);
    check_ref(z_s, r_z, t_z, nz, rtol);
    check_ref(kl_s, &r_kl, t_kl, 1, rtol);
    check_ref(dm_s, r_dm, t_dm, nm, rtol);
    check_ref(mse_s, &r_mse, t_mse, 1, rtol);
    check_ref(drec_s, r_drec, t_drec, n, rtol);

    float* moments = test_upload(hm, nm);
    float* eps = test_upload(heps, nz);
    float* dz = test_upload(hdz, nz);
    float* z = test_filled(nz, NAN);
    float* dmoments = test_filled(nm, NAN);
    vae_reparam_forward(z, moments, eps, B, Z, HW);
    check_device(z_s, z, t_z, vs_ref(r_z, 1), nz, 0.0f, 1.0f, rtol);
    float kl = vae_kl_forward(moments, B, Z, HW);
    check_result(kl_s, &kl, t_kl, &r_kl, 1, rtol);
    vae_reparam_kl_backward(dmoments, dz, moments, eps, kl_weight, B, Z, HW);
    check_device(dm_s, dmoments, t_dm, vs_ref(r_dm, 1), nm, 0.0f, 1.0f, rtol);

    float* x_rec = test_upload(hrec, n);
    float* target = test_upload(htarget, n);
    float* dx_rec = test_filled(n, NAN);
    float mse = mse_forward(x_rec, target, n);
    check_result(mse_s, &mse, t_mse, &r_mse, 1, rtol);
    mse_backward(dx_rec, x_rec, target, n);
    check_device(drec_s, dx_rec, t_drec, vs_ref(r_drec, 1), n, 0.0f, 1.0f, rtol);

    free(r_z); free(r_dm); free(r_drec);
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
// The plain references (grad_norm_ref, adamw_update_ref) run the same 5 steps on the host; on the CPU
// adamw_update is the reference, grad_norm is not (a parallel sum).

// the host state of the references' 5 steps
typedef struct { float *params, *m, *v, *ema; } VlAdamState;

static inline void test_adamw_case(const SafeTensors* st, const char* prefix) {
    size_t n = ref_info(st, prefix, "params", 1)->numel;
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
    VlAdamState r = {vl_host_copy(p0, n), (float*)calloc(n, sizeof(float)), (float*)calloc(n, sizeof(float)),
                     with_ema ? vl_host_copy(p0, n) : NULL};

    for (int t = 1; t <= 5; t++) {
        float r_norm = grad_norm_ref(g0, n);
        float r_scale = clip_scale(r_norm, max_norm);
        float ema_decay = with_ema ? ema_decay_at(decay, t - 1) : 0.0f;
        adamw_update_ref(r.params, g0, r.m, r.v, r.ema, n,
                         adamw_step_constants(lr, beta1, beta2, eps, wd, r_scale, t, ema_decay));
        float norm = grad_norm(grads, n);
        float scale = clip_scale(norm, max_norm);
        if (t == 1) {
            snprintf(what, sizeof(what), "%s grad_norm", prefix);
            check_ref(what, &r_norm, ref_f32(st, prefix, "grad_norm", 1), 1, rtol_norm);
            check_result(what, &norm, ref_f32(st, prefix, "grad_norm", 1), &r_norm, 1, rtol_norm);
            // the gradient clip_grad_norm_ leaves behind, g * clip_scale, computed on the host
            float* clipped = (float*)mallocCheck(n * sizeof(float));
            for (size_t i = 0; i < n; i++) clipped[i] = g0[i] * scale;
            snprintf(what, sizeof(what), "%s %s clip_scale (g * scale)", device_name(), prefix);
            check_close(what, clipped, ref_f32(st, prefix, "grads_clipped", n), n, rtol_norm);
            free(clipped);
        }
        adamw_update(params, grads, m, v, ema, n, lr, beta1, beta2, eps, wd, scale, t, ema_decay);
        if (t != 1 && t != 5) continue;
        const char* s = t > 1 ? "s" : "";
        const float* t_params = ref_f32(st, prefix, t == 1 ? "params1" : "params5", n);
        snprintf(what, sizeof(what), "%s params after %d step%s (p - p0)", prefix, t, s);
        float* r_move = vl_host_copy(r.params, n);
        float* t_move = vl_host_copy(t_params, n);
        vl_subtract(r_move, p0, n);
        vl_subtract(t_move, p0, n);
        check_ref(what, r_move, t_move, n, rtol_update);
        vl_check_delta(what, params, p0, t_params, vs_ref(r.params, 1), n, rtol_update);
        free(r_move); free(t_move);
        if (with_ema) {
            const float* t_ema = ref_f32(st, prefix, t == 1 ? "ema1" : "ema5", n);
            snprintf(what, sizeof(what), "%s ema after %d step%s (ema - p0)", prefix, t, s);
            r_move = vl_host_copy(r.ema, n);
            t_move = vl_host_copy(t_ema, n);
            vl_subtract(r_move, p0, n);
            vl_subtract(t_move, p0, n);
            check_ref(what, r_move, t_move, n, rtol_update);
            vl_check_delta(what, ema, p0, t_ema, vs_ref(r.ema, 1), n, rtol_update);
            free(r_move); free(t_move);
        }
    }
    free(r.params); free(r.m); free(r.v); free(r.ema);
    dev_free(params); dev_free(grads); dev_free(m); dev_free(v); dev_free(ema);
}

// ----------------------------------------------------------------------------

static inline void test_vae_layers(void) {
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
