/*
test_ldm.cu — checks ldm.c against PyTorch. Every layer (forward and backward) and the whole
models are compared with reference tensors that the PyTorch twin in dev/ wrote (the safetensors files in dev/ref,
committed, so the tests need no PyTorch). Each check prints its max error beside its tolerance; the
layer and model tests run on the CPU always and again on the CUDA device when there is one.
The last line is "N passed, M failed"; the exit code is non-zero on any failure.

    make test          # or: make test_ldm && ./test_ldm
*/
#define TESTING
#include "train_ldm.cu"
#include "ldmc/testing.h"

#include "tests/test_conv.h"
#include "tests/test_vae_layers.h"
#include "tests/test_unet_layers.h"
#include "tests/test_samplers.h"
#include "tests/test_safetensors.h"
#include "tests/test_data.h"
#include "tests/test_tensorboard.h"
#include "tests/test_eval.h"

// ----------------------------------------------------------------------------
// comparing a whole model's parameters (or gradients) with a reference file, tensor by tensor

// every tensor "<prefix><name>" of the reference against the same parameter of `got_flat` (a host copy
// of a flat buffer in the store's layout); one line reports the worst tensor
static int check_params(const char* label, const ParamStore* ps, const float* got_flat, const SafeTensors* ref,
                        const char* prefix, float rtol) {
    double worst_ratio = 0.0, worst_err = 0.0, worst_scale = 0.0;
    const char* worst = "";
    int ok = 1;
    for (int i = 0; i < ps->count; i++) {
        const ParamInfo* p = &ps->info[i];
        char name[160];
        snprintf(name, sizeof(name), "%s%s", prefix, p->name);
        const float* r = safetensors_get_f32(ref, name, p->numel);
        const float* g = got_flat + p->offset;
        double err = 0.0, scale = 1e-12;
        for (size_t j = 0; j < p->numel; j++) {
            double e = fabs((double)g[j] - r[j]);
            if (!(e <= err)) err = e;  // NaN propagates
            if (fabs(r[j]) > scale) scale = fabs(r[j]);
        }
        double ratio = err / scale;
        if (!(ratio <= rtol)) ok = 0;
        if (!(ratio <= worst_ratio)) { worst_ratio = ratio; worst = p->name; worst_err = err; worst_scale = scale; }
    }
    char detail[320];
    snprintf(detail, sizeof(detail), "%d tensors; worst %s: max err %.2e = %.1e x max|ref| %.2e (tol %.0e x max|ref|)",
             ps->count, worst, worst_err, worst_ratio, worst_scale, (double)rtol);
    return check_true(label, ok, detail);
}

// Parameters after AdamW steps, compared as updates (p_after - p_before). Adam's first steps move a
// weight by about lr * sign(g), so where the reference gradient is within the gradient tolerance of
// zero our gradient's sign may legitimately differ: those weights may move by up to 2 * lr * steps
// (counted and printed); every other update must match to `rtol` x (lr * steps).
static int check_updates(const char* label, const ParamStore* ps, const float* got_flat, const float* before_flat,
                         const SafeTensors* ref, const char* prefix, float lr, int steps, float grad_rtol, float rtol) {
    double max_err = 0.0;
    long free_signs = 0, total = 0;
    const char* worst = "";
    int ok = 1;
    double unit = (double)lr * steps;
    for (int i = 0; i < ps->count; i++) {
        const ParamInfo* p = &ps->info[i];
        char name[160], gname[160];
        snprintf(name, sizeof(name), "%s%s", prefix, p->name);
        snprintf(gname, sizeof(gname), "grad.%s", p->name);
        const float* after = safetensors_get_f32(ref, name, p->numel);
        const float* g_ref = safetensors_get_f32(ref, gname, p->numel);
        double gscale = 1e-30;
        for (size_t j = 0; j < p->numel; j++) if (fabs(g_ref[j]) > gscale) gscale = fabs(g_ref[j]);
        for (size_t j = 0; j < p->numel; j++) {
            size_t k = p->offset + j;
            double upd = (double)got_flat[k] - before_flat[k];
            double upd_ref = (double)after[j] - before_flat[k];
            double err = fabs(upd - upd_ref);
            total++;
            if (fabs(g_ref[j]) <= grad_rtol * gscale) {  // sign of the reference gradient is not resolvable
                free_signs++;
                if (!(err <= 2.0 * unit * (1.0 + rtol))) ok = 0;
                continue;
            }
            if (!(err <= max_err)) { max_err = err; worst = p->name; }
        }
    }
    if (!(max_err <= rtol * unit)) ok = 0;
    char detail[320];
    snprintf(detail, sizeof(detail), "max update err %.2e (%s) tol %.1e = %.0e x lr*steps; %ld of %ld weights with "
             "|g_ref| <= %.0e x max|g_ref| checked to 2 lr*steps", max_err, worst, rtol * unit, (double)rtol,
             free_signs, total, (double)grad_rtol);
    return check_true(label, ok, detail);
}

static float ref_scalar(const SafeTensors* st, const char* name) {
    return safetensors_get_f32(st, name, 1)[0];
}

// one scalar against its reference, relative tolerance
static int check_scalar(const char* dev, const char* what, float got, float ref, float rtol) {
    char name[128];
    snprintf(name, sizeof(name), "%s %s", dev, what);
    return check_close(name, &got, &ref, 1, rtol);
}

static float meta_float(const SafeTensors* st, const char* key) {
    const char* v = safetensors_meta(st, key);
    if (v == NULL) {
        fprintf(stderr, "Error: reference file lacks metadata '%s'; regenerate it with dev/.\n", key);
        exit(EXIT_FAILURE);
    }
    return strtof(v, NULL);
}

// ----------------------------------------------------------------------------
// the whole VAE: loss, activations, every gradient, parameters after 1 and 5 AdamW steps

static void test_vae_model(void) {
    const char* path = "dev/ref/vae.safetensors";
    SafeTensors ref;
    safetensors_load(path, &ref);
    VAEConfig cfg;
    if (vae_config_from_json(&cfg, safetensors_meta(&ref, "config")) != 0) {
        fprintf(stderr, "Error: %s has no usable config metadata\n", path);
        exit(EXIT_FAILURE);
    }
    const SafeTensorInfo* xi = safetensors_find(&ref, "x");
    int B = (int)xi->shape[0];
    float kl_weight = meta_float(&ref, "kl_weight"), lr = meta_float(&ref, "lr");
    float wd = meta_float(&ref, "weight_decay"), max_norm = meta_float(&ref, "max_grad_norm");
    float beta1 = meta_float(&ref, "beta1"), beta2 = meta_float(&ref, "beta2"), adam_eps = meta_float(&ref, "adam_eps");

    VAE m;
    vae_build(&m, &cfg);
    params_allocate(&m.ps);
    vae_alloc_activations(&m, B);
    size_t n = m.ps.total;
    float* init = (float*)mallocCheck(n * sizeof(float));  // the initial weights, kept for the update checks
    params_upload_named(&m.ps, &ref, "param.", init, path, "reference model");
    int Z = cfg.z_channels, LR = vae_latent_res(&cfg);
    size_t nx = (size_t)B * IMG_C * IMG_RES * IMG_RES, nz = (size_t)B * Z * LR * LR;
    float* x = test_upload(safetensors_get_f32(&ref, "x", nx), nx);
    float* eps = test_upload(safetensors_get_f32(&ref, "eps", nz), nz);
    const char* dev = device_name();
    char name[96];

    // forward
    dev_zero(m.ps.grads, n * sizeof(float));
    VAELoss l = vae_forward(&m, x, eps, B, kl_weight);
    struct { const char* ref; const float* got; size_t n; } acts[] = {
        {"act.enc_conv_in", m.enc.h_in, (size_t)B * cfg.ch * IMG_RES * IMG_RES},
        {"act.moments", m.enc.moments, 2 * nz},
        {"act.z", m.z, nz},
        {"act.dec_mid", m.dec.mid[1].out, (size_t)B * m.dec.conv_in.cout * LR * LR},
        {"act.x_rec", m.dec.out, nx},
    };
    for (size_t i = 0; i < sizeof(acts) / sizeof(acts[0]); i++) {
        float* got = test_download(acts[i].got, acts[i].n);
        snprintf(name, sizeof(name), "%s vae forward %s", dev, acts[i].ref + 4);
        check_close(name, got, safetensors_get_f32(&ref, acts[i].ref, acts[i].n), acts[i].n, 1e-4f);
        free(got);
    }
    check_scalar(dev, "vae loss", l.loss, ref_scalar(&ref, "loss"), 1e-5f);
    check_scalar(dev, "vae mse", l.mse, ref_scalar(&ref, "mse"), 1e-5f);
    check_scalar(dev, "vae kl", l.kl, ref_scalar(&ref, "kl"), 1e-5f);

    // backward
    vae_backward(&m, x, eps, B, kl_weight);
    float* grads = test_download(m.ps.grads, n);
    snprintf(name, sizeof(name), "%s vae gradients (all parameters)", dev);
    check_params(name, &m.ps, grads, &ref, "grad.", 1e-4f);
    check_scalar(dev, "vae grad norm", grad_norm(m.ps.grads, n), ref_scalar(&ref, "grad_norm"), 1e-5f);
    free(grads);

    // 1 and 5 AdamW steps with clipping, the same batch each step
    float* m1 = dev_malloc_floats(n);
    float* v1 = dev_malloc_floats(n);
    dev_zero(m1, n * sizeof(float));
    dev_zero(v1, n * sizeof(float));
    for (int step = 1; step <= 5; step++) {
        if (step > 1) {
            dev_zero(m.ps.grads, n * sizeof(float));
            vae_forward(&m, x, eps, B, kl_weight);
            vae_backward(&m, x, eps, B, kl_weight);
        }
        float gn = grad_norm(m.ps.grads, n);
        adamw_update(m.ps.params, m.ps.grads, m1, v1, NULL, n, lr, beta1, beta2, adam_eps, wd,
                     clip_scale(gn, max_norm), step, 0.0f);
        if (step == 1 || step == 5) {
            float* after = test_download(m.ps.params, n);
            snprintf(name, sizeof(name), "%s vae params after %d AdamW step%s", dev, step, step > 1 ? "s" : "");
            check_updates(name, &m.ps, after, init, &ref, step == 1 ? "step1." : "step5.", lr, step, 1e-4f, 2e-3f);
            free(after);
        }
    }
    dev_free(m1); dev_free(v1); dev_free(x); dev_free(eps);
    free(init);
    vae_free(&m);
    safetensors_free(&ref);
}

// ----------------------------------------------------------------------------
// the whole U-Net and the diffusion loss: schedule, z_t, embeddings, activations, loss, every
// gradient, parameters and EMA after 1 and 5 steps; unconditional and class-conditional with CFG dropout

static int* ref_ints(const SafeTensors* st, const char* name, int n) {
    const int64_t* v = safetensors_get_i64(st, name, n);
    int* out = (int*)mallocCheck(n * sizeof(int));
    for (int i = 0; i < n; i++) out[i] = (int)v[i];
    return out;
}

static void test_unet_model(const char* path) {
    SafeTensors ref;
    safetensors_load(path, &ref);
    UNetConfig cfg;
    if (unet_config_from_json(&cfg, safetensors_meta(&ref, "config")) != 0) {
        fprintf(stderr, "Error: %s has no usable config metadata\n", path);
        exit(EXIT_FAILURE);
    }
    int B = (int)safetensors_find(&ref, "z0")->shape[0], nc = cfg.num_classes, T = cfg.tdim;
    size_t dim = (size_t)cfg.z_channels * cfg.in_res * cfg.in_res;
    float lr = meta_float(&ref, "lr"), wd = meta_float(&ref, "weight_decay"), max_norm = meta_float(&ref, "max_grad_norm");
    float beta1 = meta_float(&ref, "adam_beta1"), beta2 = meta_float(&ref, "adam_beta2"), adam_eps = meta_float(&ref, "adam_eps");
    float ema_decay = meta_float(&ref, "ema_decay");
    const char* dev = device_name();
    char name[128], tag[32];
    snprintf(tag, sizeof(tag), "unet c%d", nc);

    // the schedule and the noised input, on the host
    double abar[DIFFUSION_T];
    diffusion_schedule(SCHEDULE_COSINE, abar);
    float abar_f[DIFFUSION_T];
    for (int i = 0; i < DIFFUSION_T; i++) abar_f[i] = (float)abar[i];
    snprintf(name, sizeof(name), "%s %s cosine schedule abar", dev, tag);
    check_close(name, abar_f, safetensors_get_f32(&ref, "abar", DIFFUSION_T), DIFFUSION_T, 1e-6f);
    int* t = ref_ints(&ref, "t", B);
    int* labels = (int*)mallocCheck(B * sizeof(int));
    for (int b = 0; b < B; b++) labels[b] = 0;
    if (nc > 0) {
        int* given = ref_ints(&ref, "labels", B);
        int* drop = ref_ints(&ref, "drop_mask", B);
        for (int b = 0; b < B; b++) labels[b] = drop[b] ? nc : given[b];  // CFG dropout: the "no class" row
        free(given); free(drop);
    }
    const float* z0 = safetensors_get_f32(&ref, "z0", B * dim);
    const float* eps_h = safetensors_get_f32(&ref, "eps", B * dim);
    float* zt_h = (float*)mallocCheck(B * dim * sizeof(float));
    diffusion_q_sample(zt_h, z0, eps_h, t, abar, B, dim);
    snprintf(name, sizeof(name), "%s %s z_t = q_sample(z0, t, eps)", dev, tag);
    check_close(name, zt_h, safetensors_get_f32(&ref, "act.zt", B * dim), B * dim, 1e-6f);

    UNet m;
    unet_build(&m, &cfg);
    params_allocate(&m.ps);
    unet_alloc_activations(&m, B);
    size_t n = m.ps.total;
    float* init = (float*)mallocCheck(n * sizeof(float));  // the initial weights, kept for the update checks
    params_upload_named(&m.ps, &ref, "param.", init, path, "reference model");
    host_to_dev(m.zt, zt_h, B * dim * sizeof(float));
    host_to_dev(m.t, t, B * sizeof(int));
    host_to_dev(m.labels, labels, B * sizeof(int));
    float* eps = test_upload(eps_h, B * dim);

    // forward
    dev_zero(m.ps.grads, n * sizeof(float));
    float loss = unet_loss_forward(&m, m.zt, eps, B);
    struct { const char* ref; const float* got; size_t n; } acts[] = {
        {"act.temb_sin", m.temb_sin, (size_t)B * T},
        {"act.temb", m.emb, (size_t)B * T},
        {"act.res", m.down_res[0][0].rb.out, (size_t)B * m.down_res[0][0].rb.cout * cfg.in_res * cfg.in_res},
        {"act.attn", m.down_attn[1][0].out, (size_t)B * m.down_attn[1][0].C * m.down_attn[1][0].HW},
        {"act.mid", m.mid_res2.rb.out, (size_t)B * m.mid_res2.rb.cout * m.mid_attn.HW},
        {"act.out", m.out, B * dim},
    };
    for (size_t i = 0; i < sizeof(acts) / sizeof(acts[0]); i++) {
        float* got = test_download(acts[i].got, acts[i].n);
        snprintf(name, sizeof(name), "%s %s forward %s", dev, tag, acts[i].ref + 4);
        check_close(name, got, safetensors_get_f32(&ref, acts[i].ref, acts[i].n), acts[i].n, 1e-4f);
        free(got);
    }
    snprintf(name, sizeof(name), "%s diffusion loss", tag);
    check_scalar(dev, name, loss, ref_scalar(&ref, "loss"), 1e-5f);

    // backward
    unet_loss_backward(&m, m.zt, eps, B);
    float* grads = test_download(m.ps.grads, n);
    snprintf(name, sizeof(name), "%s %s gradients (all parameters)", dev, tag);
    check_params(name, &m.ps, grads, &ref, "grad.", 1e-4f);
    free(grads);
    snprintf(name, sizeof(name), "%s grad norm", tag);
    check_scalar(dev, name, grad_norm(m.ps.grads, n), ref_scalar(&ref, "grad_norm"), 1e-5f);

    // 1 and 5 steps of clipped AdamW with the EMA in the same fused update
    float* am = dev_malloc_floats(n);
    float* av = dev_malloc_floats(n);
    float* ema = dev_malloc_floats(n);
    dev_zero(am, n * sizeof(float));
    dev_zero(av, n * sizeof(float));
    dev_copy(ema, m.ps.params, n * sizeof(float));
    for (int step = 1; step <= 5; step++) {
        if (step > 1) {
            dev_zero(m.ps.grads, n * sizeof(float));
            unet_loss_forward(&m, m.zt, eps, B);
            unet_loss_backward(&m, m.zt, eps, B);
        }
        float gn = grad_norm(m.ps.grads, n);
        adamw_update(m.ps.params, m.ps.grads, am, av, ema, n, lr, beta1, beta2, adam_eps, wd, clip_scale(gn, max_norm),
                     step, ema_decay_at(ema_decay, step - 1));
        if (step == 1 || step == 5) {
            char prefix[16];
            float* after = test_download(m.ps.params, n);
            snprintf(name, sizeof(name), "%s %s params after %d step%s", dev, tag, step, step > 1 ? "s" : "");
            snprintf(prefix, sizeof(prefix), "step%d.", step);
            check_updates(name, &m.ps, after, init, &ref, prefix, lr, step, 1e-4f, 2e-3f);
            free(after);
            float* e = test_download(ema, n);
            snprintf(name, sizeof(name), "%s %s EMA after %d step%s", dev, tag, step, step > 1 ? "s" : "");
            snprintf(prefix, sizeof(prefix), "ema%d.", step);
            check_updates(name, &m.ps, e, init, &ref, prefix, lr, step, 1e-4f, 2e-3f);
            free(e);
        }
    }
    dev_free(am); dev_free(av); dev_free(ema); dev_free(eps);
    free(init); free(zt_h); free(t); free(labels);
    unet_free(&m);
    safetensors_free(&ref);
}

// ----------------------------------------------------------------------------
// both noise schedules (host code): every abar_t to 1e-6 of its own value, since the tail of the
// cosine schedule (abar ~ 1e-9) matters as much to the samplers as its head

static void test_schedules(void) {
    const char* path = "dev/ref/schedules.safetensors";
    SafeTensors ref;
    safetensors_load(path, &ref);
    const Schedule kinds[2] = {SCHEDULE_COSINE, SCHEDULE_LINEAR};
    for (int k = 0; k < 2; k++) {
        char name[64], detail[160];
        snprintf(name, sizeof(name), "abar_%s", schedule_name(kinds[k]));
        const float* want = safetensors_get_f32(&ref, name, DIFFUSION_T);
        double abar[DIFFUSION_T], worst = 0.0;
        int at = 0;
        diffusion_schedule(kinds[k], abar);
        for (int t = 0; t < DIFFUSION_T; t++) {
            double rel = fabs((double)(float)abar[t] - want[t]) / fabs((double)want[t]);
            if (!(rel <= worst)) { worst = rel; at = t; }
        }
        snprintf(detail, sizeof(detail), "max relative err %.2e (at t=%d) tol 1e-06 of each abar_t", worst, at);
        snprintf(name, sizeof(name), "host %s schedule abar_t", schedule_name(kinds[k]));
        check_true(name, worst <= 1e-6, detail);
    }
    safetensors_free(&ref);
}

// ----------------------------------------------------------------------------

static void run_device_tests(Device d) {
    device_select(d);
    printf("== %s ==\n", device_name());
    test_conv();
    test_vae_layers();
    test_unet_layers();
    test_vae_model();
    test_unet_model("dev/ref/unet_c0.safetensors");
    test_unet_model("dev/ref/unet_c10.safetensors");
    test_samplers();
    test_classifier();
}

int main(int argc, char** argv) {
    const char* want = argc > 1 ? argv[1] : "";
    if (argc > 2 || (argc == 2 && strcmp(want, "--cpu-only") != 0)) {
        fprintf(stderr, "Usage: ./test_ldm [--cpu-only]\n");
        return 2;
    }
    printf("== host ==\n");
    test_safetensors();
    test_data();
    test_tensorboard();
    test_schedules();
    test_conv_determinism();
    test_frechet();
    run_device_tests(DEVICE_CPU);
    int count = 0;
    if (strcmp(want, "--cpu-only") != 0 && cudaGetDeviceCount(&count) == cudaSuccess && count > 0) {
        run_device_tests(DEVICE_CUDA);
    } else {
        printf("(no CUDA device: the CUDA kernels were compiled but not run)\n");
    }
    return tests_summary();
}
