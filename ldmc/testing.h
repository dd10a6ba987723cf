// ldmc/testing.h — the small harness test_ldm uses: pass/fail counters, a float comparison with a
// tolerance relative to the reference's scale (error and tolerance are printed side by side), the
// layer tests' comparisons (a plain reference against PyTorch; a device's result against PyTorch and
// against the reference), reference-file access, and the closing line "N passed, M failed".
// Tests run once per device: the caller sets g_device, a test uploads its reference inputs with
// test_upload, runs the layer's dispatcher and checks the result with check_device.
#pragma once

#include "common.cuh"
#include "safetensors.h"

static int g_tests_passed = 0;
static int g_tests_failed = 0;

static inline void test_record(const char* name, int ok, const char* detail) {
    if (ok) g_tests_passed++; else g_tests_failed++;
    printf("  %s %-48s %s\n", ok ? "[ok]  " : "[FAIL]", name, detail ? detail : "");
    fflush(stdout);
}

// max |got - ref| must be <= rtol * max(max |ref|, floor): the tolerance scales with the size of
// the reference values, so one number works for tensors of very different magnitudes.
// NaN or Inf in `got` always fails.
static inline int check_close(const char* name, const float* got, const float* ref, size_t n, float rtol) {
    double max_err = 0.0, max_ref = 0.0;
    size_t worst = 0;
    int finite = 1;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) { finite = 0; worst = i; break; }
        double e = fabs((double)got[i] - (double)ref[i]);
        if (e > max_err) { max_err = e; worst = i; }
        if (fabs((double)ref[i]) > max_ref) max_ref = fabs((double)ref[i]);
    }
    double scale = max_ref > 1e-12 ? max_ref : 1e-12;
    double tol = rtol * scale;
    int ok = finite && max_err <= tol;
    char detail[192];
    if (!finite) {
        snprintf(detail, sizeof(detail), "non-finite value at [%zu]", worst);
    } else {
        snprintf(detail, sizeof(detail), "max err %.2e (at [%zu]) tol %.1e = %.0e x max|ref| %.2e",
                 max_err, worst, tol, (double)rtol, max_ref);
    }
    test_record(name, ok, detail);
    return ok;
}

static inline int check_true(const char* name, int cond, const char* detail) {
    test_record(name, cond, detail);
    return cond;
}

static const char* device_name(void) { return g_device == DEVICE_CUDA ? "cuda" : "cpu"; }

// a copy of n host floats on the current device (free with dev_free)
static inline float* test_upload(const float* host, size_t n) {
    float* d = dev_malloc_floats(n);
    host_to_dev(d, host, n * sizeof(float));
    return d;
}

// a malloc'd host copy of n floats from the current device (free with free)
static inline float* test_download(const float* dev, size_t n) {
    float* h = (float*)mallocCheck(n * sizeof(float));
    dev_to_host(h, dev, n * sizeof(float));
    return h;
}

// a malloc'd host buffer of n copies of `value` (NaN: must be overwritten; 0: accumulated into)
static inline float* host_filled(size_t n, float value) {
    float* h = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) h[i] = value;
    return h;
}

// n copies of `value` on the current device (NaN marks "must be overwritten"; free with dev_free)
static inline float* test_filled(size_t n, float value) {
    float* h = host_filled(n, value);
    float* d = test_upload(h, n);
    free(h);
    return d;
}

// ----------------------------------------------------------------------------
// A layer's results against PyTorch's and against its plain reference's
// A layer test checks its plain reference (*_ref, run on the host) against PyTorch once, in the CPU
// pass ("ref <what>"), and the device's result (the fast CPU path, or CUDA) against PyTorch's and
// against the reference's ("<device> <what>", "<device> <what> vs ref"): a fast path that drifts from
// the math written as loops is named as such even where both stay within PyTorch's tolerance.

// the reference a device's result is compared with: NULL (no comparison) on the CPU for the layers
// whose CPU path is their reference, where the comparison could not fail
static inline const float* vs_ref(const float* ref, int cpu_path_is_ref) {
    return g_device == DEVICE_CPU && cpu_path_is_ref ? NULL : ref;
}

// "ref <what>": a reference's host result against PyTorch's, in the CPU pass only (the reference
// runs on the host, so the CUDA pass would only repeat it)
static inline void check_ref(const char* what, const float* got, const float* torch, size_t n, float rtol) {
    if (g_device != DEVICE_CPU) return;
    char name[160];
    snprintf(name, sizeof(name), "ref %s", what);
    check_close(name, got, torch, n, rtol);
}

// host values `got` (a device's result) against PyTorch's (`torch`) and the reference's (`ref`);
// either may be NULL: no such comparison
static inline void check_result(const char* what, const float* got, const float* torch, const float* ref, size_t n,
                                float rtol) {
    char name[160];
    if (torch != NULL) {
        snprintf(name, sizeof(name), "%s %s", device_name(), what);
        check_close(name, got, torch, n, rtol);
    }
    if (ref != NULL) {
        snprintf(name, sizeof(name), "%s %s vs ref", device_name(), what);
        check_close(name, got, ref, n, rtol);
    }
}

// n values on the current device that were accumulated `times` times into a buffer that held
// `start` (a gradient accumulates: start 0, times 1 is a plain result): (value - start) / times is
// compared by check_result. Dividing by 1 or 2 is exact, so no rounding is added.
static inline void check_device(const char* what, const float* dev, const float* torch, const float* ref, size_t n,
                                float start, float times, float rtol) {
    float* got = test_download(dev, n);
    for (size_t i = 0; i < n; i++) got[i] = (got[i] - start) / times;
    check_result(what, got, torch, ref, n, rtol);
    free(got);
}

// the F32 reference tensor "<prefix>.<name>" with ndim dimensions, for its shape (exits with a clear
// error otherwise)
static inline const SafeTensorInfo* ref_info(const SafeTensors* st, const char* prefix, const char* name, int ndim) {
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", prefix, name);
    const SafeTensorInfo* t = safetensors_find(st, full);
    if (t == NULL || t->ndim != ndim || strcmp(t->dtype, "F32") != 0) {
        fprintf(stderr, "Error: %s: tensor '%s' missing, not F32 or not %d-dimensional.\n"
                        "HINT: regenerate the file with the dev/refs_*.py script that writes it (dev/README.md).\n",
                st->path, full, ndim);
        exit(EXIT_FAILURE);
    }
    return t;
}

// the reference tensor "<prefix>.<name>" of n float32 values (exits with a clear error otherwise;
// n 0 = any count)
static inline const float* ref_f32(const SafeTensors* st, const char* prefix, const char* name, size_t n) {
    char full[128];
    snprintf(full, sizeof(full), "%s.%s", prefix, name);
    return safetensors_get_f32(st, full, n);
}

// prints the closing line and returns the process exit code
static inline int tests_summary(void) {
    printf("%d passed, %d failed\n", g_tests_passed, g_tests_failed);
    return g_tests_failed == 0 ? 0 : 1;
}
