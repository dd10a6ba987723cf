// tests/test_samplers.h — test_samplers(): the samplers of ldmc/diffusion.h (sample_latents: DDPM,
// DDIM with eta 0, 0.5 and 1, DPM-Solver++(2M)) driving train_ldm's U-Net through the classifier-free
// guidance callback cfg_eps, against trajectories that independent float64 PyTorch samplers computed
// (dev/ref/samplers.safetensors, written by dev/refs_samplers.py) with the test weights of
// dev/ref/unet_c0.safetensors (unconditional) and dev/ref/unet_c10.safetensors (labels 3, 7, 1 with
// guidance 3). Every case starts from the same z_T and takes its per-step noise from the reference's
// step_noise (step k uses row k mod rows); the latents after step 1, after step 2 and the final sample
// are compared, to 1e-4 of max|ref| (our U-Net runs in float32, the reference in float64). DDPM clamps
// its x0 prediction to +-DDPM_X0_CLIP, the bound the reference used (its metadata ddpm_x0_clip); the
// guided 1,000-step DDPM case starts at t = 999, where the bound matters most. One guided case runs
// again with room for only 2 of the 3 samples per forward, so cfg_eps works in chunks.
// Needs train_ldm.cu (UNet, CFGContext, cfg_eps) included first. Runs on whatever g_device is.
#pragma once

#include "ldmc/testing.h"
#include "ldmc/safetensors.h"
#include "ldmc/diffusion.h"

#define TSAMP_REF_PATH "dev/ref/samplers.safetensors"
#define TSAMP_RTOL 1e-4f

// ----------------------------------------------------------------------------
// helpers

// the number in the reference's metadata "<key>"
static inline double tsamp_meta_number(const SafeTensors* ref, const char* key) {
    const char* v = safetensors_meta(ref, key);
    char* end = NULL;
    double x = v ? strtod(v, &end) : 0.0;
    if (v == NULL || end == v || *end != '\0') {
        fprintf(stderr, "Error: %s: metadata '%s' is %s, expected a number.\n"
                        "HINT: regenerate it with /usr/bin/python3 dev/refs_samplers.py\n",
                TSAMP_REF_PATH, key, v ? v : "missing");
        exit(EXIT_FAILURE);
    }
    return x;
}

// "<prefix>.weights" of the reference: the U-Net file, its config and its param.* weights loaded on
// the current device, activations for max_batch rows. The sum of the weights must be the one the
// reference was computed with, else the two files are out of step.
static inline void tsamp_load_unet(UNet* m, const SafeTensors* ref, const char* prefix, int max_batch) {
    char key[64];
    snprintf(key, sizeof(key), "%s.weights", prefix);
    const char* path = safetensors_meta(ref, key);
    if (path == NULL) {
        fprintf(stderr, "Error: %s lacks the metadata '%s'.\n"
                        "HINT: regenerate it with /usr/bin/python3 dev/refs_samplers.py\n", TSAMP_REF_PATH, key);
        exit(EXIT_FAILURE);
    }
    SafeTensors st;
    safetensors_load(path, &st);
    UNetConfig cfg;
    if (unet_config_from_json(&cfg, safetensors_meta(&st, "config")) != 0) {
        fprintf(stderr, "Error: %s has no usable U-Net config metadata.\n", path);
        exit(EXIT_FAILURE);
    }
    unet_build(m, &cfg);
    params_allocate(&m->ps);
    unet_alloc_activations(m, max_batch);
    float* host = (float*)mallocCheck(m->ps.total * sizeof(float));
    params_upload_named(&m->ps, &st, "param.", host, path, "reference U-Net");
    snprintf(key, sizeof(key), "%s.weights_sum", prefix);
    double sum = 0.0, want = tsamp_meta_number(ref, key);
    for (size_t i = 0; i < m->ps.total; i++) sum += host[i];
    if (!(fabs(sum - want) <= 1e-9 * (fabs(want) + 1.0))) {
        fprintf(stderr, "Error: the weights in %s (sum %.12g) are not the ones %s was computed with (sum %.12g).\n"
                        "HINT: regenerate it with /usr/bin/python3 dev/refs_samplers.py\n", path, sum, TSAMP_REF_PATH, want);
        exit(EXIT_FAILURE);
    }
    free(host);
    safetensors_free(&st);
}

// the Sampler whose sampler_name() the reference's "<case>.sampler" metadata holds
static inline Sampler tsamp_sampler(const SafeTensors* ref, const char* cs) {
    char key[64];
    snprintf(key, sizeof(key), "%s.sampler", cs);
    const char* name = safetensors_meta(ref, key);
    const Sampler all[] = {SAMPLER_DDPM, SAMPLER_DDIM, SAMPLER_DPMPP_2M};
    for (int i = 0; name != NULL && i < 3; i++) {
        if (strcmp(name, sampler_name(all[i])) == 0) return all[i];
    }
    fprintf(stderr, "Error: %s: metadata '%s' is %s, expected ddpm, ddim or dpm++2m.\n"
                    "HINT: regenerate it with /usr/bin/python3 dev/refs_samplers.py\n",
            TSAMP_REF_PATH, key, name ? name : "missing");
    exit(EXIT_FAILURE);
}

// one reference case "<prefix>.<name>" for n samples: sampler, steps and eta from the file, z_T and
// step_noise shared; the latents after steps 1 and 2 (from the trace) and the final sample are
// checked. `note` is appended to the test names.
static inline void tsamp_run_case(const SafeTensors* ref, const double* abar, CFGContext* ctx, int n, const char* prefix,
                           const char* name, const char* note) {
    UNet* m = ctx->m;
    size_t dim = (size_t)m->cfg.z_channels * m->cfg.in_res * m->cfg.in_res;
    size_t N = (size_t)n * dim;
    char cs[64], key[96];
    snprintf(cs, sizeof(cs), "%s.%s", prefix, name);
    Sampler sampler = tsamp_sampler(ref, cs);
    snprintf(key, sizeof(key), "%s.steps", cs);
    int steps = (int)tsamp_meta_number(ref, key);
    snprintf(key, sizeof(key), "%s.eta", cs);
    float eta = (float)tsamp_meta_number(ref, key);
    const SafeTensorInfo* noise = safetensors_find(ref, "step_noise");
    if (steps < 2 || steps > DIFFUSION_T) {
        fprintf(stderr, "Error: %s: case %s has %d steps, expected 2..%d.\n"
                        "HINT: regenerate it with /usr/bin/python3 dev/refs_samplers.py\n", TSAMP_REF_PATH, cs, steps, DIFFUSION_T);
        exit(EXIT_FAILURE);
    }
    if (noise == NULL || noise->ndim < 1 || noise->shape[0] < 1 || noise->numel != (size_t)noise->shape[0] * N) {
        fprintf(stderr, "Error: %s: step_noise must be (rows, %d, %zu) float32 for case %s.\n"
                        "HINT: regenerate it with /usr/bin/python3 dev/refs_samplers.py\n", TSAMP_REF_PATH, n, dim, cs);
        exit(EXIT_FAILURE);
    }
    const float* noise_rows = safetensors_get_f32(ref, "step_noise", 0);
    float* step_noise = (float*)mallocCheck((size_t)steps * N * sizeof(float));  // (steps, n, dim): row k mod rows
    for (int k = 0; k < steps; k++) {
        memcpy(step_noise + (size_t)k * N, noise_rows + (size_t)(k % noise->shape[0]) * N, N * sizeof(float));
    }

    float* z = (float*)mallocCheck(N * sizeof(float));                        // (n, dim)
    float* trace = (float*)mallocCheck((size_t)steps * N * sizeof(float));   // (steps, n, dim)
    memcpy(z, safetensors_get_f32(ref, "z_T", N), N * sizeof(float));
    sample_latents(sampler, steps, eta, abar, cfg_eps, ctx, z, n, dim, 0, step_noise, trace);

    struct { const char* ref; const char* label; const float* got; } checks[] = {
        {"z1", "step 1", trace}, {"z2", "step 2", trace + N}, {"final", "final", z},
    };
    for (int i = 0; i < 3; i++) {
        char tname[128];
        snprintf(key, sizeof(key), "%s.%s", cs, checks[i].ref);
        snprintf(tname, sizeof(tname), "%s sampler %s (%s, S=%d, eta %.1f)%s %s", device_name(), cs,
                 sampler_name(sampler), steps, eta, note, checks[i].label);
        check_close(tname, checks[i].got, safetensors_get_f32(ref, key, N), N, TSAMP_RTOL);
    }
    free(z); free(trace); free(step_noise);
}

// a CFGContext for a U-Net: labels (n) or NULL (unconditional), host staging for max_batch rows
static inline CFGContext tsamp_context(UNet* m, const int* labels, float guidance) {
    size_t dim = (size_t)m->cfg.z_channels * m->cfg.in_res * m->cfg.in_res;
    CFGContext c = {m, labels, guidance,
                    (float*)mallocCheck(m->max_batch * dim * sizeof(float)),
                    (float*)mallocCheck(m->max_batch * dim * sizeof(float)),
                    (int*)mallocCheck(m->max_batch * sizeof(int)), (int*)mallocCheck(m->max_batch * sizeof(int))};
    return c;
}

static inline void tsamp_context_free(CFGContext* c) {
    free(c->zbuf); free(c->ebuf); free(c->tbuf); free(c->lbuf);
}

// ----------------------------------------------------------------------------
// the test

static inline void test_samplers(void) {
    SafeTensors ref;
    safetensors_load(TSAMP_REF_PATH, &ref);
    const char* sched = safetensors_meta(&ref, "schedule");
    if (sched == NULL || (strcmp(sched, "cosine") != 0 && strcmp(sched, "linear") != 0)) {
        fprintf(stderr, "Error: %s: metadata 'schedule' must be cosine or linear.\n"
                        "HINT: regenerate it with /usr/bin/python3 dev/refs_samplers.py\n", TSAMP_REF_PATH);
        exit(EXIT_FAILURE);
    }
    double abar[DIFFUSION_T];
    diffusion_schedule(strcmp(sched, "cosine") == 0 ? SCHEDULE_COSINE : SCHEDULE_LINEAR, abar);
    const SafeTensorInfo* zT = safetensors_find(&ref, "z_T");
    if (zT == NULL || zT->ndim != 4 || zT->shape[0] < 1) {
        fprintf(stderr, "Error: %s: z_T must be a (n, 4, 8, 8) tensor.\n"
                        "HINT: regenerate it with /usr/bin/python3 dev/refs_samplers.py\n", TSAMP_REF_PATH);
        exit(EXIT_FAILURE);
    }
    int n = (int)zT->shape[0];
    double clip = tsamp_meta_number(&ref, "ddpm_x0_clip");
    char detail[128];
    snprintf(detail, sizeof(detail), "reference %g, diffusion.h %g", clip, DDPM_X0_CLIP);
    check_true("samplers: DDPM's x0 bound is the reference's", clip == DDPM_X0_CLIP, detail);
    const char* cases[] = {"ddpm", "ddim_eta0", "ddim_eta05", "ddim_eta1", "dpmpp2m"};
    const int ncases = (int)(sizeof(cases) / sizeof(cases[0]));

    // unconditional: cfg_eps runs the n latents as they are
    UNet m;
    tsamp_load_unet(&m, &ref, "c0", 2 * n);
    CFGContext c = tsamp_context(&m, NULL, 0.0f);
    for (int i = 0; i < ncases; i++) tsamp_run_case(&ref, abar, &c, n, "c0", cases[i], "");
    tsamp_context_free(&c);
    unet_free(&m);

    // class-conditional with guidance: one forward of 2n rows (conditional, then "no class")
    int* labels = (int*)mallocCheck(n * sizeof(int));
    const int64_t* labels_ref = safetensors_get_i64(&ref, "c10.labels", n);
    for (int i = 0; i < n; i++) labels[i] = (int)labels_ref[i];
    float guidance = (float)tsamp_meta_number(&ref, "c10.guidance");
    tsamp_load_unet(&m, &ref, "c10", 2 * n);
    c = tsamp_context(&m, labels, guidance);
    for (int i = 0; i < ncases; i++) tsamp_run_case(&ref, abar, &c, n, "c10", cases[i], "");
    tsamp_run_case(&ref, abar, &c, n, "c10", "ddpm10", "");
    tsamp_run_case(&ref, abar, &c, n, "c10", "ddpm1000", "");
    tsamp_context_free(&c);
    unet_free(&m);

    // the same guided sampler with room for 2 samples (4 rows) per forward: cfg_eps goes in chunks
    tsamp_load_unet(&m, &ref, "c10", 4);
    c = tsamp_context(&m, labels, guidance);
    tsamp_run_case(&ref, abar, &c, n, "c10", "ddim_eta05", " in chunks of 2");
    tsamp_context_free(&c);
    unet_free(&m);

    free(labels);
    safetensors_free(&ref);
}
