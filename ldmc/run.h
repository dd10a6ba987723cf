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

static int path_exists(const char* path) {
    struct stat st;
    return stat(path, &st) == 0;
}

static void make_dir(const char* path) {
    if (mkdir(path, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "Error: cannot create directory '%s': %s\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
}

// runs/<name>: a new run needs a new name; --resume needs an existing run. Only checks: the
// directory is made by run_dir_create once every input has been validated, so a run that fails
// its checks leaves nothing behind.
static void run_dir_check(char* out, size_t n, const char* run_name, int resume, const char* state_file) {
    snprintf(out, n, "runs/%s", run_name);
    char state[1200];
    snprintf(state, sizeof(state), "%s/%s", out, state_file);
    if (resume) {
        if (!path_exists(state)) {
            fprintf(stderr, "Error: --resume but there is no '%s' to resume from.\n"
                            "HINT: check --run-name, or start the run without --resume.\n", state);
            exit(EXIT_FAILURE);
        }
    } else if (path_exists(out)) {
        fprintf(stderr, "Error: run directory '%s' already exists; refusing to overwrite it.\n"
                        "HINT: continue it with --resume, or pick a new --run-name.\n", out);
        exit(EXIT_FAILURE);
    }
}

static void run_dir_create(const char* run_dir) {
    make_dir("runs");
    make_dir(run_dir);
}

// ----------------------------------------------------------------------------
// the run's log: every line printed with run_log also goes to runs/<name>/log.txt. With several
// ranks only rank 0 opens the log, and dist_init sends the stdout of the others to /dev/null, so the
// lines appear once.

static FILE* g_run_log = NULL;

static void run_log_open(const char* run_dir) {
    char path[1200];
    snprintf(path, sizeof(path), "%s/log.txt", run_dir);
    g_run_log = fopenCheck(path, "a");
}

static void run_log(const char* fmt, ...) {
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

static void run_log_close(void) {
    if (g_run_log) fclose(g_run_log);
    g_run_log = NULL;
}

// writes a small text file atomically (temporary name, then rename)
static void write_text_file(const char* path, const char* text) {
    char tmp[1200];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE* f = fopenCheck(tmp, "w");
    fwriteCheck(text, 1, strlen(text), f);
    if (fclose(f) != 0 || rename(tmp, path) != 0) {
        fprintf(stderr, "Error: cannot write '%s': %s\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
}
