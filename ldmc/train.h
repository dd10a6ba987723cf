// ldmc/train.h — the training skeleton both trainers share, so that train_vae.cu and train_ldm.cu keep
// only what is their own (the model, its loss, how a batch is made):
//   RngStream      the one list of random streams (seed ^ stream, indexed by a counter)
//   TrainArgs      the common flags (preset, batch, lr, epochs, steps, run name, data, device, seed,
//                  resume, bench, log/sample/save intervals), their parsing and usage text
//   Setting        a setting a resumed run keeps: stored as JSON in the training state, refused when a
//                  flag contradicts it (the one resume rule of both trainers) or when the stored value
//                  is outside the flag's range
//   train_check_state_tensors / train_check_finite   the tensors of a training state to resume, and
//                  the weights about to be saved, are complete and finite
//   train_state_begin / train_state_finish   writing state.safetensors around the model's own metadata
//   TrainRun       the run directory, the step plan, the shuffled epoch each batch is drawn from (and
//                  this rank's slice of it), the progress line and its TensorBoard scalars, and when
//                  to sample and save
//   train_bench    --bench N: median images/s of N training steps on random data
// Data parallel (ldmc/dist.h): --batch-size is the global batch; rank r takes rows [r*B/N, (r+1)*B/N)
// of every global batch, and every random draw is indexed by the global sample position, so N ranks
// see exactly the samples and noise of one process. Rank 0 alone writes the run's files.
#pragma once

#include "common.cuh"
#include "args.h"
#include "cifar10.h"
#include "tensorboard.h"
#include "run.h"
#include "optimizer.h"
#include "dist.h"
#include "validate.h"

// ----------------------------------------------------------------------------
// random streams: every random number is rng(seed ^ stream, counter), the counter depending only on
// the step and the position in the batch, so a resumed run draws exactly what the uninterrupted run drew

enum RngStream {
    STREAM_INIT = 0x1A17,       // parameter initialisation
    STREAM_SHUFFLE = 0x5AFF,    // the permutation of each epoch
    STREAM_FLIP = 0xF11F,       // horizontal flips of training images
    STREAM_EPS = 0xE95,         // VAE reparameterisation noise / diffusion noise
    STREAM_T = 0x7177,          // diffusion timesteps
    STREAM_DROP = 0xD409,       // classifier-free-guidance label dropout
    STREAM_EVAL = 0xE7A1,       // the noise of eval_batch.safetensors
    STREAM_SAMPLE = 0x5A3D1E,   // the per-step noise of the samplers
    STREAM_BENCH = 0xBE4C,      // --bench's random inputs
};

// ----------------------------------------------------------------------------
// the common flags

#define TRAIN_MAX_STEPS 1000000000L   // --max-steps' bound, and the most steps a run may plan

enum {  // which common flags were given on the command line
    GIVEN_PRESET = 1 << 0, GIVEN_BATCH = 1 << 1, GIVEN_LR = 1 << 2, GIVEN_SEED = 1 << 3,
};

typedef struct {
    const char* preset;      // NULL until given or picked by device
    int batch_size;          // < 0: the preset's
    float lr;                // < 0: the preset's
    int epochs;              // < 0: the preset's
    long max_steps;          // > 0: stop after this many steps (overrides --epochs; extends a resumed run)
    char run_name[128];      // "": <prefix>_<preset>
    const char* data_dir;
    const char* device;
    uint64_t seed;
    int resume;
    int bench_steps;         // > 0: time this many training steps on random data and exit
    int log_every, sample_every, save_every;
    unsigned given;          // GIVEN_* bits
} TrainArgs;

// a preset's training defaults (its model config lives in the trainer's own table)
typedef struct { int batch_size; float lr; int epochs; } TrainDefaults;

static inline void train_args_init(TrainArgs* a, int sample_every) {
    memset(a, 0, sizeof(*a));
    a->batch_size = -1; a->lr = -1.0f; a->epochs = -1;
    a->device = "auto"; a->seed = 1337;
    a->log_every = 10; a->sample_every = sample_every; a->save_every = 500;
}

// consumes argv[*i] when it is a common flag; returns 0 when it is not
static inline int train_parse_flag(int argc, char** argv, int* i, TrainArgs* a, const char* const* presets, int npresets) {
    static const char* const devices[] = {"auto", "cpu", "cuda"};
    const char* f = argv[*i];
    if (strcmp(f, "--preset") == 0) { a->preset = arg_choice(argc, argv, i, presets, npresets); a->given |= GIVEN_PRESET; }
    else if (strcmp(f, "--epochs") == 0) a->epochs = (int)arg_long(argc, argv, i, 1, 100000);
    else if (strcmp(f, "--max-steps") == 0) a->max_steps = arg_long(argc, argv, i, 1, TRAIN_MAX_STEPS);
    else if (strcmp(f, "--batch-size") == 0) { a->batch_size = (int)arg_long(argc, argv, i, 1, 65536); a->given |= GIVEN_BATCH; }
    else if (strcmp(f, "--lr") == 0) { a->lr = arg_float(argc, argv, i, 0.0, 10.0, 1); a->given |= GIVEN_LR; }
    else if (strcmp(f, "--run-name") == 0) snprintf(a->run_name, sizeof(a->run_name), "%s", arg_run_name(argc, argv, i));
    else if (strcmp(f, "--data") == 0) a->data_dir = arg_value(argc, argv, i);
    else if (strcmp(f, "--device") == 0) a->device = arg_choice(argc, argv, i, devices, 3);
    else if (strcmp(f, "--seed") == 0) { a->seed = (uint64_t)arg_long(argc, argv, i, 0, 2147483647L); a->given |= GIVEN_SEED; }
    else if (strcmp(f, "--resume") == 0) a->resume = 1;
    else if (strcmp(f, "--bench") == 0) a->bench_steps = (int)arg_long(argc, argv, i, 1, 100000);
    else if (strcmp(f, "--log-every") == 0) a->log_every = (int)arg_long(argc, argv, i, 1, 1000000);
    else if (strcmp(f, "--sample-every") == 0) a->sample_every = (int)arg_long(argc, argv, i, 1, 100000000);
    else if (strcmp(f, "--save-every") == 0) a->save_every = (int)arg_long(argc, argv, i, 1, 100000000);
    else return 0;
    return 1;
}

static inline void train_usage_common(const char* prefix, int sample_every, const char* sample_what) {
    printf("  --epochs N  --batch-size N  --lr X   (preset defaults)\n"
           "  --max-steps N              stop after N optimizer steps (overrides --epochs; extends a resumed run)\n"
           "  --run-name NAME            run directory runs/NAME (default %s_<preset>)\n"
           "  --resume                   continue the run in runs/NAME from its training state; a run directory\n"
           "                             with no state and no checkpoint (stopped before its first save) is\n"
           "                             started again from step 0 by the same command without --resume\n"
           "                             (its log.txt is kept and appended to)\n"
           "  --data DIR                 CIFAR-10 binary directory (default $CIFAR10_DIR, then data/cifar-10-batches-bin)\n"
           "  --device auto|cpu|cuda     (default auto)\n"
           "  --seed N                   (default 1337)\n"
           "  --log-every N              progress line every N steps (default 10)\n"
           "  --sample-every N           %s every N steps (default %d; and at the end)\n"
           "  --save-every N             training state every N steps (default 500; and every epoch end)\n"
           "  --bench N                  time N training steps on random data, print img/s, write nothing\n"
           "  --help\n", prefix, sample_what, sample_every);
}

// the preset (given, or tiny on a CPU and `gpu_preset` on a GPU) and what the flags left open
static inline void train_pick_preset(TrainArgs* a, const char* gpu_preset, const char* run_prefix) {
    if (a->preset == NULL) {
        a->preset = g_device == DEVICE_CUDA ? gpu_preset : "tiny";
        if (!a->resume) printf("preset: %s (no --preset given; %s on a %s)\n", a->preset, a->preset,
                               g_device == DEVICE_CUDA ? "GPU" : "CPU");
    }
    if (a->run_name[0] == '\0') snprintf(a->run_name, sizeof(a->run_name), "%s_%s", run_prefix, a->preset);
}

// where the chosen preset stands in the --preset choices (and so in the trainer's preset table)
static inline int train_preset_index(const TrainArgs* a, const char* const* names, int n) {
    for (int i = 0; i < n; i++) if (strcmp(names[i], a->preset) == 0) return i;
    fprintf(stderr, "Error: unknown preset '%s'.\n", a->preset);
    exit(EXIT_FAILURE);
}

static inline void train_apply_defaults(TrainArgs* a, const TrainDefaults* d) {
    if (a->batch_size < 0) a->batch_size = d->batch_size;
    if (a->lr < 0) a->lr = d->lr;
    if (a->epochs < 0) a->epochs = d->epochs;
}

// ----------------------------------------------------------------------------
// settings a resumed run keeps: written as the train_args JSON of the training state, read back on
// --resume; a flag given on the command line that contradicts the stored value is refused (the run
// would otherwise silently train with something else than what was asked for)

typedef enum { SETTING_INT, SETTING_LONG, SETTING_FLOAT, SETTING_U64 } SettingType;

typedef struct {
    const char* key;    // JSON key; the flag is "--" + key with '_' -> '-'
    SettingType type;
    void* value;        // int*, long*, float* or uint64_t*
    int given;          // the flag was on the command line
    double lo, hi;      // the range a stored value must be in (the flag's own)
} Setting;

// {"batch_size":64,"lr":0.001,...} in table order
static inline void settings_to_json(const Setting* s, int n, char* out, size_t len) {
    size_t k = (size_t)snprintf(out, len, "{");
    for (int i = 0; i < n && k < len; i++) {
        k += snprintf(out + k, len - k, "%s\"%s\":", i ? "," : "", s[i].key);
        if (k >= len) break;
        switch (s[i].type) {
            case SETTING_INT: k += snprintf(out + k, len - k, "%d", *(int*)s[i].value); break;
            case SETTING_LONG: k += snprintf(out + k, len - k, "%ld", *(long*)s[i].value); break;
            case SETTING_FLOAT: k += snprintf(out + k, len - k, "%.9g", *(float*)s[i].value); break;
            case SETTING_U64: k += snprintf(out + k, len - k, "%llu", (unsigned long long)*(uint64_t*)s[i].value); break;
        }
    }
    if (k < len) snprintf(out + k, len - k, "}");
}

static inline void setting_format(const Setting* s, double v, char* out, size_t n) {
    if (s->type == SETTING_FLOAT) snprintf(out, n, "%g", v);
    else snprintf(out, n, "%.0f", v);
}

static inline double setting_get(const Setting* s) {
    switch (s->type) {
        case SETTING_INT: return *(int*)s->value;
        case SETTING_LONG: return (double)*(long*)s->value;
        case SETTING_FLOAT: return *(float*)s->value;
        default: return (double)*(uint64_t*)s->value;
    }
}

static inline void setting_set(const Setting* s, double v) {
    switch (s->type) {
        case SETTING_INT: *(int*)s->value = (int)v; break;
        case SETTING_LONG: *(long*)s->value = (long)v; break;
        case SETTING_FLOAT: *(float*)s->value = (float)v; break;
        default: *(uint64_t*)s->value = (uint64_t)v; break;
    }
}

// 0 when the stored value of setting s is readable and within its range, else -1 with r filled
static inline int setting_read(const Setting* s, const char* targs, double* stored, Refusal* r) {
    char field[64];
    snprintf(field, sizeof(field), "train_args %s", s->key);
    float f;
    int v;
    if (s->type == SETTING_FLOAT) {
        if (json_get_float(targs, s->key, &f) != 0) return refusal_set(r, field, "a number", "missing or unreadable");
        *stored = f;
        return check_float_range(r, field, f, s->lo, s->hi, 0);
    }
    if (json_get_int(targs, s->key, &v) != 0) return refusal_set(r, field, "an integer", "missing or unreadable");
    *stored = v;
    return check_int_range(r, field, v, (long long)s->lo, (long long)s->hi);
}

// reads every setting from the state's train_args, each within its range; a given flag must equal the
// stored value
static inline void settings_resume(const Setting* s, int n, const char* targs, const char* state_path) {
    for (int i = 0; i < n; i++) {
        double stored = 0.0;
        Refusal r;
        if (setting_read(&s[i], targs, &stored, &r) != 0) refuse(state_path, &r, FILE_DAMAGED_HINT);
        if (s[i].given && setting_get(&s[i]) != stored) {
            char flag[64], want[32], have[32];
            snprintf(flag, sizeof(flag), "--%s", s[i].key);
            for (char* c = flag; *c; c++) if (*c == '_') *c = '-';
            setting_format(&s[i], setting_get(&s[i]), want, sizeof(want));
            setting_format(&s[i], stored, have, sizeof(have));
            fprintf(stderr, "Error: %s %s, but the run to resume ('%s') was trained with %s %s; a resumed run keeps "
                            "its settings.\nHINT: drop %s when resuming, or start a new run with another --run-name.\n",
                    flag, want, state_path, flag, have, flag);
            exit(EXIT_FAILURE);
        }
        setting_set(&s[i], stored);
    }
}

// ----------------------------------------------------------------------------
// the run: directory, step plan, batches, progress, TensorBoard

typedef struct {
    char dir[256];           // runs/<run-name>
    char state_path[512];    // runs/<run-name>/state.safetensors
    SafeTensors state;       // the training state read for --resume (until train_run_start restores it)
    long resumed_total;      // the total steps the resumed run had planned
    int batch_size;          // the global batch
    int local_batch;         // this rank's slice of it: batch_size / world
    int local_start;         // the slice's first row in the global batch
    long steps_per_epoch;
    long total_steps;
    int* perm;               // (n_train) the current epoch's permutation
    long perm_epoch;
    int n_train;
    uint64_t seed;
    TBWriter tb;
    double t_start, t_log;   // wall clock at the start and at the last progress line
    long step_log;           // the step of the last progress line
} TrainRun;

// runs/<name> must hold no saved state for a new run and a training state for --resume (run.h). Nothing
// is created yet: the directory appears only once every input has been checked (train_run_start).
static inline void train_run_check(TrainRun* r, const TrainArgs* a) {
    memset(r, 0, sizeof(*r));
    run_dir_check(r->dir, sizeof(r->dir), a->run_name, a->resume);
    snprintf(r->state_path, sizeof(r->state_path), "%s/state.safetensors", r->dir);
}

// the training and test splits from --data, $CIFAR10_DIR or data/cifar-10-batches-bin
static inline void train_load_data(const TrainArgs* a, Cifar10* train, Cifar10* test) {
    char data_dir[1024];
    cifar10_resolve_dir(a->data_dir, data_dir, sizeof(data_dir));
    cifar10_load(train, data_dir, 1);
    cifar10_load(test, data_dir, 0);
}

// --resume: reads runs/<name>/state.safetensors, which must be a training state of `model`; returns
// its train_args (the settings the run keeps)
static inline const char* train_read_state(TrainRun* r, const char* model, const char* what) {
    safetensors_load(r->state_path, &r->state);
    file_expect_model(&r->state, r->state_path, model, what, "resume a run of this program, or start a new run.");
    const char* targs = safetensors_meta(&r->state, "train_args");
    if (targs == NULL) {
        fprintf(stderr, "Error: '%s' has no train_args metadata.\nHINT: start a new run with another --run-name.\n",
                r->state_path);
        exit(EXIT_FAILURE);
    }
    return targs;
}

// this rank's share of a global batch of B: every rank takes the same number of rows, so that the
// mean of the ranks' mean gradients is the gradient of the global batch
static inline int train_local_batch(int B) {
    int N = dist_world();
    if (B % N != 0) {
        fprintf(stderr, "Error: the batch size %d does not split evenly over %d ranks.\nHINT: --batch-size is the "
                        "global batch: pick a multiple of %d (e.g. %d), or run on a number of ranks that divides %d.\n",
                B, N, N, (B / N + 1) * N, B);
        exit(EXIT_FAILURE);
    }
    return B / N;
}

// the tensors of the training state to resume (after settings_resume, which read its total steps): exactly
// params, adam_m, adam_v (and ema when the model keeps one), F32 of the model's parameter count, finite,
// adam_v >= 0, and the step (I64) within the run's steps. Anything else is refused, naming it.
static inline void train_check_state_tensors(const TrainRun* r, size_t n_params, int with_ema) {
    static const char* const names[] = {"params", "adam_m", "adam_v", "ema", "step"};
    const SafeTensors* st = &r->state;
    const char* path = r->state_path;
    Refusal f;
    char field[64], allowed[96];
    for (int i = 0; i < st->num_tensors; i++) {
        const char* name = st->tensors[i].name;
        int known = 0;
        for (int k = 0; k < 5; k++) known |= strcmp(name, names[k]) == 0 && (k != 3 || with_ema);
        if (!known) {
            snprintf(field, sizeof(field), "tensor '%s'", name);
            refusal_set(&f, field, with_ema ? "only params, adam_m, adam_v, ema and step" :
                                              "only params, adam_m, adam_v and step (this model keeps no EMA)",
                        "present (not part of a training state)");
            refuse(path, &f, FILE_DAMAGED_HINT);
        }
    }
    for (int k = 0; k < (with_ema ? 4 : 3); k++) {
        const SafeTensorInfo* t = safetensors_find(st, names[k]);
        snprintf(field, sizeof(field), "tensor '%s'", names[k]);
        snprintf(allowed, sizeof(allowed), "F32 [%zu] (the model's parameter count)", n_params);
        if (t == NULL) refusal_set(&f, field, allowed, "missing");
        else if (strcmp(t->dtype, "F32") != 0 || t->ndim != 1 || t->numel != n_params) {
            refusal_set(&f, field, allowed, "%s of %zu elements in %d dimensions", t->dtype, t->numel, t->ndim);
        } else {
            const float* x = safetensors_get_f32(st, names[k], n_params);   // also checks alignment
            long long bad = first_nonfinite(x, n_params);
            if (bad < 0 && k == 2) for (size_t j = 0; j < n_params && bad < 0; j++) if (x[j] < 0) bad = (long long)j;
            if (bad < 0) continue;
            snprintf(field, sizeof(field), "tensor '%s' element %lld", names[k], bad);
            refusal_set(&f, field, k == 2 ? "a finite number >= 0 (a second moment)" : "a finite number", "%g", x[bad]);
        }
        refuse(path, &f, FILE_DAMAGED_HINT);
    }
    const SafeTensorInfo* t = safetensors_find(st, "step");
    if (t == NULL || strcmp(t->dtype, "I64") != 0 || t->numel != 1) {
        refusal_set(&f, "tensor 'step'", "I64 [1]", t == NULL ? "missing" : "%s of %zu elements", t ? t->dtype : "",
                    t ? t->numel : 0);
        refuse(path, &f, FILE_DAMAGED_HINT);
    }
    if (check_int_range(&f, "tensor 'step'", safetensors_get_i64(st, "step", 1)[0], 0, r->resumed_total) != 0) {
        snprintf(f.allowed + strlen(f.allowed), sizeof(f.allowed) - strlen(f.allowed), " (train_args total_steps)");
        refuse(path, &f, FILE_DAMAGED_HINT);
    }
}

// the name of the parameter holding flat element k (for messages)
static inline const char* params_name_at(const ParamStore* ps, size_t k) {
    for (int i = 0; i < ps->count; i++) {
        if (k >= ps->info[i].offset && k < ps->info[i].offset + ps->info[i].numel) return ps->info[i].name;
    }
    return "?";
}

// before a state or checkpoint is saved: the weights (and the EMA) must be finite. A NaN that got past the
// loss check (it is computed before the update) would otherwise replace the last good state and be
// published as checkpoint_final; instead the run stops and the state on disk stays as it was.
static inline void train_check_finite(const ParamStore* ps, const OptState* opt, const char* state_path) {
    const float* bufs[2] = {ps->params, opt->ema};
    const char* what[2] = {"weights", "EMA weights"};
    float* host = (float*)mallocCheck(ps->total * sizeof(float));
    for (int b = 0; b < 2 && bufs[b] != NULL; b++) {
        dev_to_host(host, bufs[b], ps->total * sizeof(float));
        long long bad = first_nonfinite(host, ps->total);
        if (bad < 0) continue;
        run_log("Error: the %s after step %ld are not finite (%g in '%s'); nothing was saved: '%s' keeps the last "
                "good state and no checkpoint_final was written.\nHINT: lower --lr (or add --warmup-steps) and "
                "resume from that state with --resume, or start a new run.\n", what[b], opt->step, host[bad],
                params_name_at(ps, (size_t)bad), state_path);
        exit(EXIT_FAILURE);
    }
    free(host);
}

// state.safetensors, everything --resume needs, is written in three steps: train_state_begin checks
// the weights (and EMA) are finite (else nothing is written: the last good state stays) and starts the
// writer; the trainer adds its model's metadata; train_state_finish adds the settings a resumed run
// keeps (args_json), the weights and the optimizer state, and writes the file atomically.
static inline void train_state_begin(SafeTensorsWriter* w, const ParamStore* ps, const OptState* opt,
                                     const char* path) {
    train_check_finite(ps, opt, path);
    st_writer_init(w);
}

static inline void train_state_finish(SafeTensorsWriter* w, const ParamStore* ps, const OptState* opt,
                                      const char* args_json, const char* path) {
    st_writer_add_meta(w, "train_args", args_json);
    train_state_write(ps, opt, w, path);
    st_writer_free(w);
}

// steps per epoch and the total: --max-steps, else epochs x steps per epoch (a resumed run keeps its
// total unless --max-steps extends it)
static inline void train_run_plan(TrainRun* r, const TrainArgs* a, int n_train) {
    int B = a->batch_size;
    if (B > n_train) {
        fprintf(stderr, "Error: --batch-size %d is larger than the training set (%d images).\n", B, n_train);
        exit(EXIT_FAILURE);
    }
    r->batch_size = B;
    r->local_batch = train_local_batch(B);
    r->local_start = dist_rank() * r->local_batch;
    r->n_train = n_train;
    r->seed = a->seed;
    r->steps_per_epoch = n_train / B;
    if (a->max_steps > 0) r->total_steps = a->max_steps;
    else if (a->resume) r->total_steps = r->resumed_total;
    else r->total_steps = (long)a->epochs * r->steps_per_epoch;
    if (r->total_steps > TRAIN_MAX_STEPS) {   // the state stores it as a JSON int
        fprintf(stderr, "Error: %ld steps planned (%d epochs of %ld steps); at most %ld.\nHINT: fewer --epochs, a "
                        "larger --batch-size, or --max-steps.\n", r->total_steps, a->epochs, r->steps_per_epoch,
                TRAIN_MAX_STEPS);
        exit(EXIT_FAILURE);
    }
}

// creates the directory, writes config.json for a new run, opens log.txt and the TensorBoard file
// (rank 0, once every rank has passed its checks); a resumed run gets its weights, moments, EMA and
// step back from the state, and every rank starts from rank 0's
static inline void train_run_start(TrainRun* r, const TrainArgs* a, const char* config_text, ParamStore* ps, OptState* opt) {
    dist_barrier();
    if (a->resume) {
        train_state_restore(ps, opt, &r->state);
        safetensors_free(&r->state);
    }
    train_state_broadcast(ps, opt);
    if (dist_is_main()) {
        run_dir_create(r->dir);
        if (!a->resume) {
            char path[600];
            snprintf(path, sizeof(path), "%s/config.json", r->dir);
            write_text_file(path, config_text);
        }
        run_log_open(r->dir);
        tb_open(&r->tb, r->dir, opt->step);
    }
    r->perm = (int*)mallocCheck((size_t)r->n_train * sizeof(int));
    r->perm_epoch = -1;
}

// the dataset indices of this rank's rows of the batch at `step` (local_batch of them): a slice of
// that epoch's permutation
static inline const int* train_run_batch(TrainRun* r, long step) {
    long epoch = step / r->steps_per_epoch;
    if (epoch != r->perm_epoch) {
        cifar10_shuffle(r->perm, r->n_train, r->seed ^ STREAM_SHUFFLE, epoch);
        r->perm_epoch = epoch;
    }
    return r->perm + (step % r->steps_per_epoch) * r->batch_size + r->local_start;
}

// the global sample position of this rank's first row at `step`: the counter of its random draws
// (row b draws with counter train_run_sample(r, step) + b, as row local_start + b would in one process)
static inline uint64_t train_run_sample(const TrainRun* r, long step) {
    return (uint64_t)step * r->batch_size + r->local_start;
}

static inline void train_run_clock_start(TrainRun* r, long step) {
    r->t_start = r->t_log = wall_seconds();
    r->step_log = step;
}

// the step count `done` is a multiple of `every` and not the last step (the end has its own output);
// on rank 0 only, which alone writes files
static inline int train_due_before_end(const TrainRun* r, long done, int every) {
    return dist_is_main() && done % every == 0 && done < r->total_steps;
}

// a state save is due every --save-every steps and at every epoch end (rank 0 only)
static inline int train_save_due(const TrainRun* r, const TrainArgs* a, long done) {
    return dist_is_main() && (done % a->save_every == 0 || done % r->steps_per_epoch == 0) && done < r->total_steps;
}

typedef struct { const char* tag; float value; } Scalar;

// every --log-every steps and at the end: the progress line (step, loss, `extra`, images/s of the
// global batch, ETA) in the terminal and log.txt, and train/loss, the given scalars and
// train/images_per_sec in TensorBoard (rank 0; the loss is already the mean over the ranks)
static inline void train_run_log(TrainRun* r, const TrainArgs* a, long done, float loss, const char* extra,
                          const Scalar* scalars, int n) {
    if (!dist_is_main() || (done % a->log_every != 0 && done != r->total_steps)) return;
    dev_synchronize();
    double now = wall_seconds();
    double ips = (done - r->step_log) * r->batch_size / (now - r->t_log);
    char line[320];
    format_progress(line, sizeof(line), done, r->total_steps, loss, extra, ips, (now - r->t_log) / (done - r->step_log));
    run_log("%s\n", line);
    tb_add_scalar(&r->tb, "train/loss", loss, done);
    for (int i = 0; i < n; i++) tb_add_scalar(&r->tb, scalars[i].tag, scalars[i].value, done);
    tb_add_scalar(&r->tb, "train/images_per_sec", (float)ips, done);
    tb_flush(&r->tb);
    r->t_log = now;
    r->step_log = done;
}

// a non-finite loss stops the run; the last saved state stays as it was. The loss is the mean over
// the ranks, so every rank stops here; rank 0 says why.
static inline void train_check_loss(float loss, long step, const char* detail, const char* hint) {
    if (isfinite(loss)) return;
    if (!dist_is_main()) dist_wait_for_abort();
    run_log("Error: the loss is %f at step %ld%s; stopping without saving.\nHINT: %s; resume from the last saved "
            "state with --resume.\n", loss, step, detail, hint);
    exit(EXIT_FAILURE);
}

static inline void train_run_finish(TrainRun* r) {
    run_log("done in %.1f s\n", wall_seconds() - r->t_start);
    tb_close(&r->tb);
    run_log_close();
    free(r->perm);
}

// ----------------------------------------------------------------------------
// --bench N: `prepare` makes step s's random inputs (not timed), `step` runs one training step; two
// warm-up steps, then the median images/s of N. B is this rank's batch (train_local_batch); with
// several ranks the gradient all-reduce is timed too and the images/s are those of all ranks.

typedef void (*BenchFn)(void* ctx, int s);

static inline void train_bench(int steps, int B, BenchFn prepare, BenchFn step, void* ctx, const char* what) {
    double* times = (double*)mallocCheck(steps * sizeof(double));
    for (int s = -2; s < steps; s++) {
        prepare(ctx, s + 2);
        dev_synchronize();
        double t0 = wall_seconds();
        step(ctx, s + 2);
        dev_synchronize();
        if (s >= 0) times[s] = wall_seconds() - t0;
    }
    int N = dist_world();
    printf("bench: %.1f img/s (median of %d steps, batch %d, %s)\n", (double)B * N / median_of(times, steps), steps,
           B * N, what);
    free(times);
}
