// ldmc/run.h — a training run's directory, runs/<run-name>/: creating it without ever clobbering
// an earlier run, a plain-text log that mirrors the progress lines, small file helpers
// (existence, size). SHA-256 of a file is in sha256.h.
#pragma once

#include <stdarg.h>
#include <sys/stat.h>
#include <sys/types.h>
#include "common.cuh"

// ----------------------------------------------------------------------------
// files and directories

static inline int path_exists(const char* path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static inline void make_dir(const char* path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "Error: cannot create directory '%s': %s\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
}

static inline int is_directory(const char* path) {
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

// runs/<name>. --resume needs a training state there. A new run needs a directory that holds neither a
// training state nor a final checkpoint: a directory without them is a run stopped before its first save
// (nothing trained is in it), so rather than being a dead end it is reused from step 0, its log.txt kept
// and appended to. Only checks: the directory is made by run_dir_create once every input has been
// validated, so a run that fails its checks leaves nothing behind.
static inline void run_dir_check(char* out, size_t n, const char* run_name, int resume) {
    snprintf(out, n, "runs/%s", run_name);
    char state[1200], final_ckpt[1200];
    snprintf(state, sizeof(state), "%s/state.safetensors", out);
    snprintf(final_ckpt, sizeof(final_ckpt), "%s/checkpoint_final.safetensors", out);
    int exists = path_exists(out), has_state = path_exists(state), has_final = path_exists(final_ckpt);
    if (exists && !is_directory(out)) {
        fprintf(stderr, "Error: '%s' exists and is not a directory.\nHINT: pick another --run-name, or move it away.\n", out);
        exit(EXIT_FAILURE);
    }
    if (resume) {
        if (has_state) return;
        if (!exists) {
            fprintf(stderr, "Error: --resume, but there is no run directory '%s'.\n"
                            "HINT: check --run-name, or start the run without --resume.\n", out);
        } else if (has_final) {
            fprintf(stderr, "Error: --resume, but '%s' holds a checkpoint_final.safetensors and no training state "
                            "(state.safetensors): the run cannot be continued.\nHINT: start a new run with another "
                            "--run-name.\n", out);
        } else {
            fprintf(stderr, "Error: --resume, but '%s' holds no training state (state.safetensors): the run stopped "
                            "before its first save, so there is nothing to resume.\nHINT: run the same command without "
                            "--resume: it starts the run again from step 0 in that directory (its log.txt is kept and "
                            "appended to).\n", out);
        }
        exit(EXIT_FAILURE);
    }
    if (!exists) return;
    if (has_state || has_final) {
        fprintf(stderr, "Error: run directory '%s' already holds a %s; refusing to overwrite it.\n"
                        "HINT: continue it with --resume, or pick a new --run-name.\n", out,
                has_state ? "training state (state.safetensors)" : "final checkpoint (checkpoint_final.safetensors)");
        exit(EXIT_FAILURE);
    }
    printf("note: '%s' exists but holds no training state and no checkpoint (a run stopped before its first save): "
           "starting it again from step 0 there; its log.txt is kept and appended to.\n", out);
}

static inline void run_dir_create(const char* run_dir) {
    make_dir("runs");
    make_dir(run_dir);
}

// ----------------------------------------------------------------------------
// the run's log: every line printed with run_log also goes to runs/<name>/log.txt. With several
// ranks only rank 0 opens the log, and dist_init sends the stdout of the others to /dev/null, so the
// lines appear once.

static FILE* g_run_log = NULL;

static inline void run_log_open(const char* run_dir) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/log.txt", run_dir);
    g_run_log = fopenCheck(path, "a");
}

static inline void run_log(const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    fflush(stdout);
    if (g_run_log) {
        va_start(ap, fmt);
        vfprintf(g_run_log, fmt, ap);
        va_end(ap);
        fflush(g_run_log);
    }
}

static inline void run_log_close(void) {
    if (g_run_log) fclose(g_run_log);
    g_run_log = NULL;
}

// writes a small text file atomically (temporary name, then rename)
static inline void write_text_file(const char* path, const char* text) {
    char tmp[1200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE* f = fopenCheck(tmp, "w");
    fwriteCheck(text, 1, strlen(text), f);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "Error: cannot write '%s': %s\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
}
