// ldmc/args.h — command-line flag parsing shared by the programs: every flag takes one value
// (booleans excepted), unknown flags and bad values are errors that name the flag and the valid
// range, and all of it happens before any work starts.
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <errno.h>
#include <math.h>

static inline void args_fail(const char* prog, const char* msg) {
    fprintf(stderr, "Error: %s\nRun `%s --help` for the list of flags.\n", msg, prog);
    exit(EXIT_FAILURE);
}

// the value after flag argv[*i]; advances *i
static inline const char* arg_value(int argc, char** argv, int* i) {
    if (*i + 1 >= argc) {
        char msg[160];
        snprintf(msg, sizeof(msg), "flag %s needs a value", argv[*i]);
        args_fail(argv[0], msg);
    }
    *i += 1;
    return argv[*i];
}

static inline long arg_long(int argc, char** argv, int* i, long lo, long hi) {
    const char* flag = argv[*i];
    const char* s = arg_value(argc, argv, i);
    char* end = NULL;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s must be an integer in [%ld, %ld] (got '%s')", flag, lo, hi, s);
        args_fail(argv[0], msg);
    }
    return v;
}

static inline float arg_float(int argc, char** argv, int* i, double lo, double hi, int lo_exclusive) {
    const char* flag = argv[*i];
    const char* s = arg_value(argc, argv, i);
    char* end = NULL;
    errno = 0;
    double v = strtod(s, &end);
    int bad = errno != 0 || end == s || *end != '\0' || !isfinite(v) || v > hi || v < lo || (lo_exclusive && v == lo);
    if (bad) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s must be a number in %s%g, %g] (got '%s')", flag,
                 lo_exclusive ? "(" : "[", lo, hi, s);
        args_fail(argv[0], msg);
    }
    return (float)v;
}

static inline const char* arg_choice(int argc, char** argv, int* i, const char* const* choices, int n) {
    const char* flag = argv[*i];
    const char* s = arg_value(argc, argv, i);
    for (int k = 0; k < n; k++) {
        if (strcmp(s, choices[k]) == 0) return choices[k];
    }
    char msg[256];
    int len = snprintf(msg, sizeof(msg), "%s must be one of", flag);
    for (int k = 0; k < n && len < (int)sizeof(msg); k++) len += snprintf(msg + len, sizeof(msg) - len, " %s", choices[k]);
    if (len < (int)sizeof(msg)) snprintf(msg + len, sizeof(msg) - len, " (got '%s')", s);
    args_fail(argv[0], msg);
    return NULL;
}

// a path flag's value copied into dst (cap bytes): a path that does not fit is refused, never cut
// short (a cut path would name another file, or none)
static inline void arg_path(int argc, char** argv, int* i, char* dst, size_t cap) {
    const char* flag = argv[*i];
    const char* s = arg_value(argc, argv, i);
    size_t len = strlen(s);
    if (len == 0 || len >= cap) {
        char msg[200];
        snprintf(msg, sizeof(msg), "%s must be a path of 1 to %zu bytes (got %zu bytes)%s", flag, cap - 1, len,
                 len == 0 ? "" : "; a symbolic link with a shorter path to the file works");
        args_fail(argv[0], msg);
    }
    memcpy(dst, s, len + 1);
}

// a run name becomes a directory under runs/: keep it to one plain path component
static inline const char* arg_run_name(int argc, char** argv, int* i) {
    const char* s = arg_value(argc, argv, i);
    int ok = s[0] != '\0' && s[0] != '.' && strlen(s) < 128;
    for (const char* c = s; ok && *c; c++) ok = (*c >= 'a' && *c <= 'z') || (*c >= 'A' && *c <= 'Z') ||
                                               (*c >= '0' && *c <= '9') || *c == '_' || *c == '-' || *c == '.';
    if (!ok) args_fail(argv[0], "--run-name must be 1-127 characters of [A-Za-z0-9_.-], not starting with '.'");
    return s;
}

static inline void arg_unknown(char** argv, int i) {
    char msg[256];
    snprintf(msg, sizeof(msg), "unknown flag '%s'", argv[i]);
    args_fail(argv[0], msg);
}
