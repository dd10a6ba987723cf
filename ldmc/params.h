// ldmc/params.h — the parameter store both models use: every parameter tensor is registered once
// with its checkpoint name (tensor-names.txt), shape and PyTorch default initialisation, and
// lives at an offset of ONE flat buffer (and its gradient at the same offset of a second one).
// The flat layout is what lets AdamW, gradient clipping and the EMA run as single fused kernels
// over all parameters, while the names let checkpoints round-trip with the PyTorch twin.
//   param_register   add a tensor, get its offset (before params_allocate)
//   params_allocate  device memory for weights and gradients
//   params_init      PyTorch defaults: conv/linear U(+-1/sqrt(fan_in)), GroupNorm 1/0, embedding N(0,1)
//   params_add_to_writer / params_load_named  checkpoint I/O by name, strict about names, shapes, unused
//                    tensors and non-finite values
#pragma once

#include "common.cuh"
#include "rng.cuh"
#include "safetensors.h"

// ----------------------------------------------------------------------------
// registry

typedef enum { INIT_FAN_IN, INIT_ONES, INIT_ZEROS, INIT_NORMAL } ParamInit;

typedef struct {
    char name[128];
    int ndim;
    int64_t shape[4];
    size_t offset;   // in floats, into ParamStore.params / .grads
    size_t numel;
    ParamInit init;
    int fan_in;      // for INIT_FAN_IN: bound = 1/sqrt(fan_in)
} ParamInfo;

typedef struct {
    ParamInfo* info;
    int count, capacity;
    size_t total;    // number of floats in all parameters
    float* params;   // (total) on the current device
    float* grads;    // (total) on the current device
} ParamStore;

static inline size_t param_register(ParamStore* ps, const char* name, ParamInit init, int fan_in,
                             int ndim, int d0, int d1, int d2, int d3) {
    if (ps->count == ps->capacity) {
        ps->capacity = ps->capacity ? 2 * ps->capacity : 64;
        ps->info = (ParamInfo*)realloc(ps->info, ps->capacity * sizeof(ParamInfo));
        if (ps->info == NULL) { fprintf(stderr, "Error: out of memory registering parameters\n"); exit(EXIT_FAILURE); }
    }
    ParamInfo* p = &ps->info[ps->count++];
    memset(p, 0, sizeof(*p));
    snprintf(p->name, sizeof(p->name), "%s", name);
    int dims[4] = {d0, d1, d2, d3};
    p->ndim = ndim;
    p->numel = 1;
    for (int i = 0; i < ndim; i++) { p->shape[i] = dims[i]; p->numel *= (size_t)dims[i]; }
    p->offset = ps->total;
    p->init = init;
    p->fan_in = fan_in;
    ps->total += p->numel;
    return p->offset;
}

static inline void params_allocate(ParamStore* ps) {
    ps->params = dev_malloc_floats(ps->total);
    ps->grads = dev_malloc_floats(ps->total);
    dev_zero(ps->grads, ps->total * sizeof(float));
}

static inline void params_free(ParamStore* ps) {
    dev_free(ps->params);
    dev_free(ps->grads);
    free(ps->info);
    memset(ps, 0, sizeof(*ps));
}

// PyTorch's default initialisation; the numbers come from the counter-based RNG at counter
// (parameter offset), so the same seed gives the same model on every device.
static inline void params_init(ParamStore* ps, uint64_t seed) {
    float* host = (float*)mallocCheck(ps->total * sizeof(float));
    for (int i = 0; i < ps->count; i++) {
        const ParamInfo* p = &ps->info[i];
        float* w = host + p->offset;
        for (size_t j = 0; j < p->numel; j++) {
            uint64_t ctr = p->offset + j;
            switch (p->init) {
                case INIT_FAN_IN: w[j] = (2.0f * rng_uniform(seed, ctr) - 1.0f) / sqrtf((float)p->fan_in); break;
                case INIT_ONES:   w[j] = 1.0f; break;
                case INIT_ZEROS:  w[j] = 0.0f; break;
                case INIT_NORMAL: w[j] = rng_normal(seed, ctr); break;
            }
        }
    }
    host_to_dev(ps->params, host, ps->total * sizeof(float));
    free(host);
}

static inline const ParamInfo* params_find(const ParamStore* ps, const char* name) {
    for (int i = 0; i < ps->count; i++) {
        if (strcmp(ps->info[i].name, name) == 0) return &ps->info[i];
    }
    return NULL;
}

// ----------------------------------------------------------------------------
// checkpoint I/O by name

// adds every parameter of `host_flat` (a host copy of a flat buffer with the store's layout)
// to a safetensors writer as "<prefix><name>", shaped as in PyTorch
static inline void params_add_to_writer(const ParamStore* ps, SafeTensorsWriter* w, const float* host_flat,
                                 const char* prefix) {
    for (int i = 0; i < ps->count; i++) {
        const ParamInfo* p = &ps->info[i];
        char name[160];
        snprintf(name, sizeof(name), "%s%s", prefix, p->name);
        st_writer_add(w, name, "F32", host_flat + p->offset, p->ndim, p->shape);
    }
}

// the first tensor "<prefix>..." of st that is no parameter of the store, or NULL. A tensor the model does
// not use means the file describes another model than its config says (or was edited): loading the rest
// would silently drop it.
static inline const char* params_first_unused(const ParamStore* ps, const SafeTensors* st, const char* prefix) {
    size_t np = strlen(prefix);
    for (int i = 0; i < st->num_tensors; i++) {
        const char* name = st->tensors[i].name;
        if (strncmp(name, prefix, np) == 0 && params_find(ps, name + np) == NULL) return name;
    }
    return NULL;
}

// fills `host_flat` from the tensors "<prefix><name>" of a checkpoint; every parameter must be
// there with exactly its shape (a checkpoint of another preset fails here, naming the tensor), every
// value finite, and every tensor under the prefix a parameter of the model.
// Returns 0, or -1 with `err` filled.
static inline int params_load_named(const ParamStore* ps, const SafeTensors* st, const char* prefix,
                             float* host_flat, char* err, size_t errlen) {
    const char* unused = params_first_unused(ps, st, prefix);
    if (unused != NULL) {
        snprintf(err, errlen, "tensor '%s' is not a parameter of this model (unused)", unused);
        return -1;
    }
    for (int i = 0; i < ps->count; i++) {
        const ParamInfo* p = &ps->info[i];
        char name[160];
        snprintf(name, sizeof(name), "%s%s", prefix, p->name);
        const SafeTensorInfo* t = safetensors_find(st, name);
        if (t == NULL) {
            snprintf(err, errlen, "tensor '%s' is missing", name);
            return -1;
        }
        int same = strcmp(t->dtype, "F32") == 0 && t->ndim == p->ndim;
        for (int d = 0; same && d < p->ndim; d++) same = t->shape[d] == p->shape[d];
        if (!same) {
            char want[64] = "", got[64] = "";
            for (int d = 0; d < p->ndim; d++) snprintf(want + strlen(want), sizeof(want) - strlen(want), "%s%lld", d ? "x" : "", (long long)p->shape[d]);
            for (int d = 0; d < t->ndim; d++) snprintf(got + strlen(got), sizeof(got) - strlen(got), "%s%lld", d ? "x" : "", (long long)t->shape[d]);
            snprintf(err, errlen, "tensor '%s' is %s %s, the model expects F32 %s", name, t->dtype, got, want);
            return -1;
        }
        memcpy(host_flat + p->offset, t->data, p->numel * sizeof(float));
        for (size_t j = 0; j < p->numel; j++) {
            if (!isfinite(host_flat[p->offset + j])) {
                snprintf(err, errlen, "tensor '%s' holds %g at element %zu (weights must be finite)", name,
                         host_flat[p->offset + j], j);
                return -1;
            }
        }
    }
    return 0;
}
