// ldmc/optimizer.h — what both trainers share around the fused AdamW kernel (adamw.cuh):
//   OptState             AdamW moments, the optional EMA of the weights, the step count
//   optimizer_step       the gradient averaged over the ranks (dist.h; nothing for one process), then
//                        global grad-norm clipping at 1, AdamW and the EMA in one pass
//   train_state_write / train_state_restore   the training state file that --resume reads
//                        (weights, moments, EMA, step) — the caller adds its own metadata
//   train_state_broadcast  rank 0's weights, moments and EMA to every rank
//   params_upload_named / params_upload_checkpoint  named weights onto the device, strict about shapes
//   file_expect_model    a checkpoint or state must be an ldm.c file of the expected model
#pragma once

#include "common.cuh"
#include "params.h"
#include "adamw.cuh"
#include "safetensors.h"
#include "dist.h"

typedef struct {
    float* m;     // (total) AdamW first moment
    float* v;     // (total) AdamW second moment
    float* ema;   // (total) EMA of the weights, or NULL
    long step;    // optimizer steps taken
} OptState;

// zero moments; the EMA (when asked for) starts as a copy of the current weights (SPEC §6)
static inline void optstate_init(OptState* o, const ParamStore* ps, int with_ema) {
    size_t bytes = ps->total * sizeof(float);
    o->m = dev_malloc_floats(ps->total);
    o->v = dev_malloc_floats(ps->total);
    dev_zero(o->m, bytes);
    dev_zero(o->v, bytes);
    o->ema = NULL;
    if (with_ema) {
        o->ema = dev_malloc_floats(ps->total);
        dev_copy(o->ema, ps->params, bytes);
    }
    o->step = 0;
}

static inline void optstate_free(OptState* o) {
    dev_free(o->m); dev_free(o->v); dev_free(o->ema);
    memset(o, 0, sizeof(*o));
}

// average the gradient over the ranks, clip its global norm at 1, then AdamW (betas 0.9/0.999, eps
// 1e-8, no weight decay) and, when there is one, the EMA with decay min(ema_decay, (1+n)/(10+n));
// returns the pre-clip norm. Every rank then holds the same gradient and takes the same step, so the
// replicas stay equal.
static inline float optimizer_step(ParamStore* ps, OptState* o, float lr, float ema_decay) {
    dist_allreduce_mean(ps->grads, ps->total);
    float norm = grad_norm(ps->grads, ps->total);
    adamw_update(ps->params, ps->grads, o->m, o->v, o->ema, ps->total, lr, 0.9f, 0.999f, 1e-8f, 0.0f,
                 clip_scale(norm, 1.0f), (int)(o->step + 1), o->ema ? ema_decay_at(ema_decay, o->step) : 0.0f);
    o->step++;
    return norm;
}

// adds the weights, moments, EMA and step to a writer that already holds the caller's metadata, and
// writes it atomically
static inline void train_state_write(const ParamStore* ps, const OptState* o, SafeTensorsWriter* w, const char* path) {
    size_t n = ps->total;
    int parts = o->ema ? 4 : 3;
    float* host = (float*)mallocCheck(parts * n * sizeof(float));
    dev_to_host(host, ps->params, n * sizeof(float));
    dev_to_host(host + n, o->m, n * sizeof(float));
    dev_to_host(host + 2 * n, o->v, n * sizeof(float));
    if (o->ema) dev_to_host(host + 3 * n, o->ema, n * sizeof(float));
    int64_t step = o->step, shape_n = (int64_t)n, shape_1 = 1;
    st_writer_add(w, "params", "F32", host, 1, &shape_n);
    st_writer_add(w, "adam_m", "F32", host + n, 1, &shape_n);
    st_writer_add(w, "adam_v", "F32", host + 2 * n, 1, &shape_n);
    if (o->ema) st_writer_add(w, "ema", "F32", host + 3 * n, 1, &shape_n);
    st_writer_add(w, "step", "I64", &step, 1, &shape_1);
    st_writer_write(w, path);
    free(host);
}

// the inverse of train_state_write, onto an allocated store and state of the same model
static inline void train_state_restore(ParamStore* ps, OptState* o, const SafeTensors* st) {
    size_t n = ps->total, bytes = n * sizeof(float);
    host_to_dev(ps->params, safetensors_get_f32(st, "params", n), bytes);
    host_to_dev(o->m, safetensors_get_f32(st, "adam_m", n), bytes);
    host_to_dev(o->v, safetensors_get_f32(st, "adam_v", n), bytes);
    if (o->ema) host_to_dev(o->ema, safetensors_get_f32(st, "ema", n), bytes);
    o->step = (long)safetensors_get_i64(st, "step", 1)[0];
}

// rank 0's weights, moments and EMA to every rank (the step count is the same everywhere), so the
// replicas start bit-equal whatever each rank initialised or read
static inline void train_state_broadcast(ParamStore* ps, OptState* o) {
    dist_broadcast(ps->params, ps->total);
    dist_broadcast(o->m, ps->total);
    dist_broadcast(o->v, ps->total);
    if (o->ema) dist_broadcast(o->ema, ps->total);
}

// the weights "<prefix><name>" of a safetensors file onto the device, via `host` (total floats, which
// keeps a copy); a tensor missing or of another shape (a checkpoint of another preset) is an error
// naming it
static inline void params_upload_named(ParamStore* ps, const SafeTensors* st, const char* prefix, float* host,
                                const char* path, const char* what) {
    char err[512];
    if (params_load_named(ps, st, prefix, host, err, sizeof(err)) != 0) {
        fprintf(stderr, "Error: '%s' does not match the %s its config describes: %s\nHINT: the file is damaged, "
                        "edited, or not from this ldm.c; use a file train_vae / train_ldm wrote.\n", path, what, err);
        exit(EXIT_FAILURE);
    }
    host_to_dev(ps->params, host, ps->total * sizeof(float));
}

// a checkpoint's weights (named as in tensor-names.txt) onto the device
static inline void params_upload_checkpoint(ParamStore* ps, const SafeTensors* st, const char* path, const char* what) {
    float* host = (float*)mallocCheck(ps->total * sizeof(float));
    params_upload_named(ps, st, "", host, path, what);
    free(host);
}

// the file must be one of ours (metadata format "ldm.c") and hold `model` ("vae", "unet",
// "vae-train-state", ...); `what` and `hint` make the refusal say what was expected and how to fix it
static inline void file_expect_model(const SafeTensors* st, const char* path, const char* model, const char* what,
                              const char* hint) {
    const char* format = safetensors_meta(st, "format");
    const char* got = safetensors_meta(st, "model");
    if (format == NULL || strcmp(format, "ldm.c") != 0 || got == NULL) {
        fprintf(stderr, "Error: '%s' is not an ldm.c file (no format/model metadata).\nHINT: %s\n", path, hint);
        exit(EXIT_FAILURE);
    }
    if (strcmp(got, model) != 0) {
        fprintf(stderr, "Error: '%s' is a %s file, not %s.\nHINT: %s\n", path, got, what, hint);
        exit(EXIT_FAILURE);
    }
}
