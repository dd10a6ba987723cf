// ldmc/validate.h — what the programs read from files is checked before anything uses it, and what
// they write is checked before any work starts:
//   Refusal            a refused value: the field, what it holds, what is allowed
//   refusal_set / check_int_range / check_float_range   fill a Refusal (return -1) or return 0
//   refuse             the one refusal format: "Error: '<file>': <field> is <value>; allowed: <range>."
//                      then a HINT line, exit 1
//   first_nonfinite    the first NaN or infinity of a host array
//   check_batch_fits   a batch whose largest activation would overflow the kernels' int indexing is
//                      refused before anything is allocated
//   path_resolve       an absolute spelling of a path whose file need not exist
//   check_output_path  an output must not be (or, through its temporary name, replace) an input or a
//                      non-regular file, and its directory must exist and be writable
// The config validators themselves live beside each model (vae_config_check, unet_config_check): they
// know which values the model code can build.
#pragma once

#include <stdarg.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common.cuh"
#include "files.h"

// ----------------------------------------------------------------------------
// refusals

typedef struct {
    char field[96];     // "config nres", "train_args lr", "tensor 'step'"
    char value[128];    // what the file holds: "9", "nan", "missing or unreadable"
    char allowed[256];  // "an integer in [1, 4]"
} Refusal;

// fills r; returns -1 so that a validator can `return refusal_set(...)`
__attribute__((format(printf, 4, 5)))
static inline int refusal_set(Refusal* r, const char* field, const char* allowed, const char* value_fmt, ...) {
    snprintf(r->field, sizeof(r->field), "%s", field);
    snprintf(r->allowed, sizeof(r->allowed), "%s", allowed);
    va_list ap;
    va_start(ap, value_fmt);
    vsnprintf(r->value, sizeof(r->value), value_fmt, ap);
    va_end(ap);
    return -1;
}

// 0 when lo <= v <= hi, else -1 with r filled
static inline int check_int_range(Refusal* r, const char* field, long long v, long long lo, long long hi) {
    if (v >= lo && v <= hi) return 0;
    char allowed[96];
    snprintf(allowed, sizeof(allowed), "an integer in [%lld, %lld]", lo, hi);
    return refusal_set(r, field, allowed, "%lld", v);
}

// 0 when v is finite and in [lo, hi] ((lo, hi] when lo_open), else -1 with r filled
static inline int check_float_range(Refusal* r, const char* field, double v, double lo, double hi, int lo_open) {
    if (isfinite(v) && v <= hi && (lo_open ? v > lo : v >= lo)) return 0;
    char allowed[96];
    if (isinf(hi)) snprintf(allowed, sizeof(allowed), "a finite number %s %g", lo_open ? ">" : ">=", lo);
    else snprintf(allowed, sizeof(allowed), "a finite number in %s%g, %g]", lo_open ? "(" : "[", lo, hi);
    return refusal_set(r, field, allowed, "%g", v);
}

// the hint of a refused file: what to use instead
#define FILE_DAMAGED_HINT "the file is damaged, edited, or was not written by this ldm.c: use a file train_vae / " \
                          "train_ldm wrote (a run whose state is refused cannot be resumed: start a new --run-name)."

// prints the refusal of a value read from `path` and exits; `hint` says how to get a good file
__attribute__((noreturn))
static inline void refuse(const char* path, const Refusal* r, const char* hint) {
    fprintf(stderr, "Error: '%s': %s is %s; allowed: %s.\n", path, r->field, r->value, r->allowed);
    if (hint != NULL) fprintf(stderr, "HINT: %s\n", hint);
    fail_exit();
}

// the index of the first NaN or infinity of x (n), or -1
static inline long long first_nonfinite(const float* x, size_t n) {
    for (size_t i = 0; i < n; i++) if (!isfinite(x[i])) return (long long)i;
    return -1;
}

// ----------------------------------------------------------------------------
// outputs

// Some kernels index a batch's activation with int (GEMM offsets, CUDA grid sizes), so batch x the
// largest per-image activation (max_act values: channels x height x width, concatenations and qkv
// included) must stay below 2^31. A batch that does not fit is refused, naming the largest that does.
static inline void check_batch_fits(int batch, size_t max_act, const char* model) {
    if ((size_t)batch * max_act <= (size_t)INT_MAX) return;
    fprintf(stderr, "Error: a batch of %d images of this %s would need activations of %zu values, more than the %d "
                    "its kernels can index (%zu values per image).\n"
                    "HINT: use a batch size of at most %zu (--batch-size).\n",
            batch, model, (size_t)batch * max_act, INT_MAX, max_act, (size_t)INT_MAX / max_act);
    fail_exit();
}

// the directory part of `path` ("." when it has none)
static inline void path_dir(const char* path, char* dir, size_t n) {
    const char* slash = strrchr(path, '/');
    if (slash == NULL) snprintf(dir, n, ".");
    else snprintf(dir, n, "%.*s", slash == path ? 1 : (int)(slash - path), path);
}

// `path` made absolute through its directory's realpath (the file itself need not exist), so that two
// spellings of one new file ("x.png", "./x.png") compare equal; `path` itself when that fails
static inline void path_resolve(const char* path, char* out, size_t n) {
    char dir[4096], real[PATH_MAX];
    path_dir(path, dir, sizeof(dir));
    const char* slash = strrchr(path, '/');
    if (realpath(dir, real) == NULL) snprintf(out, n, "%s", path);
    else snprintf(out, n, "%s/%s", real, slash ? slash + 1 : path);
}

// 1 when both paths exist and name the same file (symlinks followed)
static inline int same_file(const char* a, const char* b) {
    struct stat sa, sb;
    return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

// the output `path` of `flag` (written through "<path>.tmp" and a rename, files.h) is refused, before any
// work, when it or its temporary name is one of the n input files, when it exists but is not a regular
// file (a directory, a FIFO, /dev/null: the rename would replace it), or when its directory is missing
// or not writable
static inline void check_output_path(const char* flag, const char* path, const char* const* inputs, int n) {
    char tmp[4096 + 8], dir[4096];
    if (path[0] == '\0' || snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp)) {
        fprintf(stderr, "Error: %s '%s': the path is empty or too long.\n", flag, path);
        exit(EXIT_FAILURE);
    }
    for (int i = 0; i < n; i++) {
        if (inputs[i] == NULL) continue;
        if (same_file(path, inputs[i]) || same_file(tmp, inputs[i])) {
            fprintf(stderr, "Error: %s '%s' is the input file '%s'; writing it would destroy that input.\n"
                            "HINT: choose another output path.\n", flag, path, inputs[i]);
            exit(EXIT_FAILURE);
        }
    }
    struct stat sb;
    if (stat(path, &sb) == 0 && !S_ISREG(sb.st_mode)) {
        fprintf(stderr, "Error: %s '%s' exists and is %s; it would be replaced.\nHINT: choose the path of a new or "
                        "regular file.\n", flag, path, regular_file_problem(path));
        exit(EXIT_FAILURE);
    }
    path_dir(path, dir, sizeof(dir));
    if (stat(dir, &sb) != 0 || !S_ISDIR(sb.st_mode) || access(dir, W_OK | X_OK) != 0) {
        fprintf(stderr, "Error: %s '%s': its directory '%s' %s.\nHINT: create the directory first, or choose "
                        "another path.\n", flag, path, dir,
                stat(dir, &sb) != 0 ? "does not exist" : !S_ISDIR(sb.st_mode) ? "is not a directory" : "is not writable");
        exit(EXIT_FAILURE);
    }
}
