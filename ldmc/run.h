// ldmc/run.h — a training run's directory, runs/<run-name>/: creating it without ever clobbering
// an earlier run, a plain-text log that mirrors the progress lines, small file helpers
// (existence, size) and SHA-256 of a file (the U-Net checkpoint records which VAE it was trained with).
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
// the run's log: every line printed with run_log also goes to runs/<name>/log.txt

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

// ----------------------------------------------------------------------------
// SHA-256 (FIPS 180-4), for recording which VAE checkpoint a U-Net was trained on

typedef struct { uint32_t h[8]; uint8_t buf[64]; uint64_t len; size_t fill; } Sha256;

static const uint32_t SHA256_K[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};

static inline uint32_t sha256_rotr(uint32_t x, int n) { return (x >> n) | (x << (32 - n)); }

static void sha256_block(Sha256* s, const uint8_t* p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++) w[i] = (uint32_t)p[4*i] << 24 | (uint32_t)p[4*i+1] << 16 | (uint32_t)p[4*i+2] << 8 | p[4*i+3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = sha256_rotr(w[i-15], 7) ^ sha256_rotr(w[i-15], 18) ^ (w[i-15] >> 3);
        uint32_t s1 = sha256_rotr(w[i-2], 17) ^ sha256_rotr(w[i-2], 19) ^ (w[i-2] >> 10);
        w[i] = w[i-16] + s0 + w[i-7] + s1;
    }
    uint32_t a = s->h[0], b = s->h[1], c = s->h[2], d = s->h[3], e = s->h[4], f = s->h[5], g = s->h[6], h = s->h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = h + (sha256_rotr(e, 6) ^ sha256_rotr(e, 11) ^ sha256_rotr(e, 25)) + ((e & f) ^ (~e & g)) + SHA256_K[i] + w[i];
        uint32_t t2 = (sha256_rotr(a, 2) ^ sha256_rotr(a, 13) ^ sha256_rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        h = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    s->h[0] += a; s->h[1] += b; s->h[2] += c; s->h[3] += d; s->h[4] += e; s->h[5] += f; s->h[6] += g; s->h[7] += h;
}

// hex digest of a whole file into out (65 bytes)
static void sha256_file(const char* path, char* out) {
    Sha256 s = {{0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19}, {0}, 0, 0};
    FILE* f = fopenCheck(path, "rb");
    uint8_t chunk[65536];
    size_t got;
    while ((got = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        for (size_t i = 0; i < got; i++) {
            s.buf[s.fill++] = chunk[i];
            if (s.fill == 64) { sha256_block(&s, s.buf); s.fill = 0; }
        }
        s.len += got;
    }
    fclose(f);
    uint64_t bits = s.len * 8;
    s.buf[s.fill++] = 0x80;
    if (s.fill > 56) { while (s.fill < 64) s.buf[s.fill++] = 0; sha256_block(&s, s.buf); s.fill = 0; }
    while (s.fill < 56) s.buf[s.fill++] = 0;
    for (int i = 7; i >= 0; i--) s.buf[s.fill++] = (uint8_t)(bits >> (8 * i));
    sha256_block(&s, s.buf);
    for (int i = 0; i < 8; i++) snprintf(out + 8 * i, 9, "%08x", s.h[i]);
}
