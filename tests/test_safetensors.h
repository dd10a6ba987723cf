// tests/test_safetensors.h — tests of the file plumbing: ldmc/safetensors.h against files written by
// Python's `safetensors` (dev/refs_safetensors.py): every value and metadata string of a Python-written
// file, JSON escapes, our writer's bytes equal to Python's for the same tensors, a round trip, the strict
// reader refusing corrupt files (made here from the good reference bytes) and a 100,000-tensor header in
// well under a second, the config JSON helpers; ldmc/files.h: inputs that are not regular files refused
// without blocking, atomic writes that clean up on every failure (a full disk through /dev/full);
// ldmc/sha256.h against the NIST vectors and sha256sum. Paths that exit run in a forked child, for real.
// Host-only code: test_safetensors runs once, on the CPU pass.
#pragma once

#include <float.h>
#include <signal.h>
#include <sys/wait.h>
#include "ldmc/testing.h"
#include "ldmc/safetensors.h"
#include "ldmc/sha256.h"

// ----------------------------------------------------------------------------
// the writer set of dev/refs_safetensors.py (writer_set), whose Python bytes are dev/ref/safetensors_writer.safetensors

#define ST_TEST_NOTE "quote \" backslash \\ slash / newline \n tab \t cr \r bs \b ff \f ctl \x01\x1f del \x7f é☃𝄞"

// adds the tensors out of order on purpose: the writer must lay them out as Python does
static inline void st_test_write_writer_set(const char* path) {
    static const float b_weight[6] = {-1.0f, -0.75f, -0.5f, -0.25f, 0.0f, 0.25f};   // (3, 2)
    static const float a_bias[3] = {0.5f, -1.5f, 2.25f};                            // (3,)
    static const float A[2] = {3.0f, -0.125f};                                      // (1, 1, 1, 2)
    static const float scalar = 7.5f;                                               // ()
    static const int64_t step = 42;                                                 // ()
    static const int64_t rng[2] = {-5, (1LL << 40) + 3};                            // (2,)
    const int64_t s_b[2] = {3, 2}, s_a[1] = {3}, s_A[4] = {1, 1, 1, 2}, s_empty[1] = {0}, s_rng[1] = {2};
    SafeTensorsWriter w;
    st_writer_init(&w);
    st_writer_add(&w, "step", "I64", &step, 0, NULL);
    st_writer_add(&w, "scalar", "F32", &scalar, 0, NULL);
    st_writer_add(&w, "b.weight", "F32", b_weight, 2, s_b);
    st_writer_add(&w, "rng", "I64", rng, 1, s_rng);
    st_writer_add(&w, "empty", "F32", NULL, 1, s_empty);
    st_writer_add(&w, "a.bias", "F32", a_bias, 1, s_a);
    st_writer_add(&w, "A", "F32", A, 4, s_A);
    st_writer_add_meta(&w, "note", ST_TEST_NOTE);
    st_writer_write(&w, path);
    st_writer_free(&w);
}

// ----------------------------------------------------------------------------
// helpers

static inline uint8_t* st_test_slurp(const char* path, size_t* n) {
    FILE* fp = fopenCheck(path, "rb");
    fseek(fp, 0, SEEK_END);
    *n = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t* bytes = (uint8_t*)mallocCheck(*n + 1);
    freadCheck(bytes, 1, *n, fp);
    fclose(fp);
    return bytes;
}

static inline void st_test_dump(const char* path, const void* bytes, size_t n) {
    FILE* fp = fopenCheck(path, "wb");
    fwriteCheck(bytes, 1, n, fp);
    fclose(fp);
}

// lstat: a symlink counts, even one to a device
static inline int st_test_exists(const char* path) {
    struct stat sb;
    return lstat(path, &sb) == 0;
}

static inline double st_test_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static inline int st_test_shape_is(const SafeTensorInfo* t, const char* dtype, int ndim, const int64_t* shape) {
    if (t == NULL || strcmp(t->dtype, dtype) != 0 || t->ndim != ndim) return 0;
    for (int d = 0; d < ndim; d++) {
        if (t->shape[d] != shape[d]) return 0;
    }
    return 1;
}

// runs fn(arg) in a child process with stderr sent to dir/child_stderr.txt; returns the child's exit status
// (-1 if it did not exit normally) and what it printed, so the paths that exit can be tested for real
static inline int st_test_in_child(const char* dir, void (*fn)(const void*), const void* arg, char* out, size_t n) {
    char path[512];
    snprintf(path, sizeof(path), "%s/child_stderr.txt", dir);
    fflush(stdout);
    fflush(stderr);
    pid_t pid = fork();
    if (pid < 0) { fprintf(stderr, "Error: fork failed: %s\n", strerror(errno)); exit(EXIT_FAILURE); }
    if (pid == 0) {
        if (freopen(path, "w", stderr) == NULL) _exit(99);
        alarm(20);   // a call that blocks (a FIFO opened for reading) ends the child instead of the suite
        fn(arg);
        fflush(stderr);
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    size_t len = 0;
    uint8_t* text = st_test_slurp(path, &len);
    snprintf(out, n, "%.*s", (int)len, (const char*)text);
    free(text);
    remove(path);
    for (char* c = out; *c; c++) if (*c == '\n') *c = ' ';   // one line in the test report
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

typedef struct { const SafeTensors* st; const char* name; size_t numel; int i64; } StTestGet;
static inline void st_test_child_get(const void* arg) {
    const StTestGet* g = (const StTestGet*)arg;
    if (g->i64) safetensors_get_i64(g->st, g->name, g->numel);
    else safetensors_get_f32(g->st, g->name, g->numel);
}
static inline void st_test_child_load(const void* arg) {
    SafeTensors st;
    safetensors_load((const char*)arg, &st);
}
static inline void st_test_child_write(const void* arg) {
    st_test_write_writer_set((const char*)arg);
}
static inline void st_test_child_write_twice(const void* arg) {
    static const int64_t x = 1;
    SafeTensorsWriter w;
    st_writer_init(&w);
    st_writer_add(&w, "x", "F32", &x, 0, NULL);
    st_writer_add(&w, "y", "F32", &x, 0, NULL);
    st_writer_add(&w, "x", "I64", &x, 0, NULL);
    st_writer_write(&w, (const char*)arg);
}
// loads the file and looks up a metadata key and a tensor it does not have: exit 3 if either is found
static inline void st_test_child_lookups(const void* arg) {
    SafeTensors st;
    safetensors_load((const char*)arg, &st);
    int found = safetensors_meta(&st, "format") != NULL || safetensors_find(&st, "nope") != NULL;
    safetensors_free(&st);
    if (found) _exit(3);
}
static inline void st_test_child_sha256(const void* arg) {
    char hex[65];
    sha256_file((const char*)arg, hex);
}

// writes `bytes` as dir/<label>.safetensors and checks that safetensors_load, in a child, refuses it with a
// message naming the file and containing `phrase` (phrase NULL: the file must be accepted)
static inline void st_test_expect(const char* dir, const char* label, const uint8_t* bytes, size_t n, const char* phrase) {
    char path[512], name[96], out[2048];
    snprintf(path, sizeof(path), "%s/%s.safetensors", dir, label);
    snprintf(name, sizeof(name), "%s safetensors %s %s", device_name(), phrase ? "refuses" : "accepts", label);
    st_test_dump(path, bytes, n);
    int rc = st_test_in_child(dir, st_test_child_load, path, out, sizeof(out));
    char* hint = strstr(out, " HINT:");
    if (hint != NULL) *hint = '\0';
    // the message from the file's name on: the temporary directory changes every run
    const char* shown = strstr(out, label) ? strstr(out, label) : out;
    if (phrase == NULL) check_true(name, rc == 0, rc == 0 ? "read fine" : shown);
    else check_true(name, rc == EXIT_FAILURE && strstr(out, path) && strstr(out, phrase), rc == 0 ? "it was accepted" : shown);
    remove(path);
}

// the bytes of a file of an 8-byte length, `header` padded with spaces to a multiple of 8, and `ndata`
// bytes of data (malloc'd; *n their count)
static inline uint8_t* st_test_file_bytes(const char* header, const uint8_t* data, size_t ndata, size_t* n) {
    size_t hlen = strlen(header), padded = (hlen + 7) / 8 * 8;
    uint8_t* bytes = (uint8_t*)mallocCheck(8 + padded + ndata);
    for (int i = 0; i < 8; i++) bytes[i] = (uint8_t)((uint64_t)padded >> (8 * i));
    memcpy(bytes + 8, header, hlen);
    memset(bytes + 8 + hlen, ' ', padded - hlen);
    if (ndata > 0) memcpy(bytes + 8 + padded, data, ndata);
    *n = 8 + padded + ndata;
    return bytes;
}

// st_test_expect on a file made of `header` and `ndata` bytes of data (st_test_file_bytes)
static inline void st_test_expect_header(const char* dir, const char* label, const char* header, const uint8_t* data,
                                  size_t ndata, const char* phrase) {
    size_t n;
    uint8_t* bytes = st_test_file_bytes(header, data, ndata, &n);
    st_test_expect(dir, label, bytes, n, phrase);
    free(bytes);
}

// ----------------------------------------------------------------------------
// the tests

// dev/ref/safetensors_python.safetensors: every tensor value and metadata string (python_set() in the script)
static inline void test_safetensors_python_file(void) {
    char name[96], detail[256];
    const char* dev = device_name();
    SafeTensors st;
    safetensors_load("dev/ref/safetensors_python.safetensors", &st);

    // Python's layout of the data: I64 tensors first, then F32, each by name
    const char* order[8] = {"labels", "rng_state", "step", "conv.weight", "emb", "empty", "scale", "special"};
    int in_order = st.num_tensors == 8;
    for (int i = 1; i < 8 && in_order; i++) {
        const SafeTensorInfo* a = safetensors_find(&st, order[i - 1]), *b = safetensors_find(&st, order[i]);
        in_order = a != NULL && b != NULL && (const uint8_t*)a->data + a->nbytes == (const uint8_t*)b->data;
    }
    const int64_t s_conv[4] = {4, 3, 3, 3}, s_emb[3] = {2, 3, 4}, s_special[1] = {6}, s_empty[2] = {0, 5},
                  s_rng[2] = {2, 2}, s_labels[1] = {10};
    int shapes = st_test_shape_is(safetensors_find(&st, "conv.weight"), "F32", 4, s_conv) &&
                 st_test_shape_is(safetensors_find(&st, "emb"), "F32", 3, s_emb) &&
                 st_test_shape_is(safetensors_find(&st, "special"), "F32", 1, s_special) &&
                 st_test_shape_is(safetensors_find(&st, "scale"), "F32", 0, NULL) &&
                 st_test_shape_is(safetensors_find(&st, "empty"), "F32", 2, s_empty) &&
                 safetensors_find(&st, "empty")->numel == 0 && safetensors_find(&st, "empty")->nbytes == 0 &&
                 st_test_shape_is(safetensors_find(&st, "step"), "I64", 0, NULL) &&
                 st_test_shape_is(safetensors_find(&st, "rng_state"), "I64", 2, s_rng) &&
                 st_test_shape_is(safetensors_find(&st, "labels"), "I64", 1, s_labels) &&
                 safetensors_find(&st, "missing") == NULL;
    snprintf(name, sizeof(name), "%s safetensors python file: names/dtypes/shapes", dev);
    snprintf(detail, sizeof(detail), "%d tensors, file order %s, dtypes and shapes %s", st.num_tensors,
             in_order ? "as Python's (I64, then F32, by name)" : "WRONG", shapes ? "match" : "WRONG");
    check_true(name, in_order && shapes, detail);

    float conv[108], emb[24];
    for (int i = 0; i < 108; i++) conv[i] = (float)((i - 50) / 8.0);
    for (int i = 0; i < 24; i++) emb[i] = (float)((i % 7 - 3) / 3.0);
    snprintf(name, sizeof(name), "%s safetensors python file: conv.weight F32", dev);
    check_close(name, safetensors_get_f32(&st, "conv.weight", 108), conv, 108, 0.0f);
    snprintf(name, sizeof(name), "%s safetensors python file: emb F32", dev);
    check_close(name, safetensors_get_f32(&st, "emb", 24), emb, 24, 0.0f);

    // inf, -inf, nan, -0, the smallest denormal, FLT_MAX: compared bit for bit (nan by isnan)
    const float* special = safetensors_get_f32(&st, "special", 6);
    const uint32_t bits[6] = {0x7f800000u, 0xff800000u, 0u, 0x80000000u, 0x00000001u, 0x7f7fffffu};
    int special_ok = isnan(special[2]) && *safetensors_get_f32(&st, "scale", 1) == 0.1f;
    for (int i = 0; i < 6; i++) {
        uint32_t b;
        memcpy(&b, &special[i], 4);
        if (i != 2 && b != bits[i]) special_ok = 0;
    }
    snprintf(name, sizeof(name), "%s safetensors python file: special floats", dev);
    check_true(name, special_ok, "inf -inf nan -0 2^-149 FLT_MAX bit-exact, scalar 0.1f");

    const int64_t* step = safetensors_get_i64(&st, "step", 1);
    const int64_t* rng = safetensors_get_i64(&st, "rng_state", 4);
    const int64_t* labels = safetensors_get_i64(&st, "labels", 10);
    int ints_ok = step[0] == 123456789012LL && rng[0] == INT64_MIN && rng[1] == INT64_MAX && rng[2] == -1 &&
                  rng[3] == (1LL << 53) + 1;
    for (int i = 0; i < 10; i++) ints_ok = ints_ok && labels[i] == (int64_t)i * (i - 5);
    snprintf(name, sizeof(name), "%s safetensors python file: I64 values", dev);
    check_true(name, ints_ok, "step 123456789012, INT64_MIN/MAX, 2^53+1, labels i*(i-5)");

    const char* config = "{\"preset\":\"tiny\",\"ch\":16,\"mult\":[1,2,4],\"nres\":1,\"z_channels\":4,\"kl_weight\":0.001,"
                         "\"note\":\"say \\\"hi\\\" \\\\ C:\\\\path\\\\n tab\\t end\",\"lr\":3e-05}";
    const char* keys[6] = {"format", "model", "config", "unicode", "controls", "empty"};
    const char* values[6] = {"ldm.c", "vae", config, "café ☃ 𝄞 naïve",
                             "line1\nline2\r\n\t\b\f\x01\x1f\x7f /slash\\ \"q\"", ""};
    int meta_ok = st.num_meta == 6;
    const char* bad = "";
    for (int i = 0; i < 6; i++) {
        const char* v = safetensors_meta(&st, keys[i]);
        if (v == NULL || strcmp(v, values[i]) != 0) { meta_ok = 0; bad = keys[i]; }
    }
    meta_ok = meta_ok && safetensors_meta(&st, "absent") == NULL;
    snprintf(name, sizeof(name), "%s safetensors python file: metadata", dev);
    snprintf(detail, sizeof(detail), "%d strings (JSON config, UTF-8, control chars, empty) %s%s", st.num_meta,
             meta_ok ? "exact" : "WRONG: ", bad);
    check_true(name, meta_ok, detail);

    // the config helpers on the config read back, then on flat objects made here (nested ones are refused)
    const char* cfg = safetensors_meta(&st, "config");
    int ch = 0, nres = 0, zc = 0, mult[4] = {0}, nmult = 0, x;
    float klw = 0.0f, lr = 0.0f;
    char preset[16], note[64], small[4];
    int cfg_ok = json_get_string(cfg, "preset", preset, sizeof(preset)) == 0 && strcmp(preset, "tiny") == 0 &&
                 json_get_int(cfg, "ch", &ch) == 0 && ch == 16 && json_get_int(cfg, "nres", &nres) == 0 && nres == 1 &&
                 json_get_int(cfg, "z_channels", &zc) == 0 && zc == 4 &&
                 json_get_int_array(cfg, "mult", mult, 4, &nmult) == 0 && nmult == 3 && mult[0] == 1 &&
                 mult[1] == 2 && mult[2] == 4 && json_get_float(cfg, "kl_weight", &klw) == 0 && klw == 0.001f &&
                 json_get_float(cfg, "lr", &lr) == 0 && lr == 3e-5f &&
                 json_get_string(cfg, "note", note, sizeof(note)) == 0 &&
                 strcmp(note, "say \"hi\" \\ C:\\path\\n tab\t end") == 0;
    int cfg_refuses = json_get_int(cfg, "absent", &x) == -1 && json_get_int(NULL, "ch", &x) == -1 &&
                      json_get_int(cfg, "preset", &x) == -1 && json_get_int(cfg, "kl_weight", &x) == -1 &&
                      json_get_int(cfg, "mult", &x) == -1 && json_get_int_array(cfg, "mult", mult, 2, &nmult) == -1 &&
                      json_get_string(cfg, "ch", small, sizeof(small)) == -1 &&
                      json_get_string(cfg, "preset", small, 4) == -1 &&
                      json_get_int("{\"ch\":16x}", "ch", &x) == -1 && json_get_int("{\"ch\" 16}", "ch", &x) == -1 &&
                      json_get_int("{\"ch\":99999999999}", "ch", &x) == -1 && json_get_int("", "ch", &x) == -1 &&
                      json_get_int("{\"a\":[1,-2.5e3],\"s\":\"},\\\"ch\\\":7\",\"ch\":-3}", "ch", &x) == 0 && x == -3 &&
                      json_get_int("{\"n\":{\"ch\":1},\"ch\":2}", "ch", &x) == -1 && json_get_int("{\"ch\":012}", "ch", &x) == -1 &&
                      json_get_int("{\"ch\":+1}", "ch", &x) == -1 && json_get_float("{\"f\":1e}", "f", &klw) == -1;
    snprintf(name, sizeof(name), "%s safetensors config JSON helpers", dev);
    check_true(name, cfg_ok && cfg_refuses, cfg_ok ? (cfg_refuses ? "preset ch mult nres z_channels kl_weight lr note "
               "read; absent/nested/mistyped/malformed keys give -1" : "a bad or absent key was accepted")
               : "a config value was read wrong");
    safetensors_free(&st);
}

// dev/ref/safetensors_escapes.safetensors: the escapes Python's writer never emits but JSON allows and
// we read (\/, \u00XX in both cases, \u007f), raw UTF-8 in a name, an indented header
static inline void test_safetensors_escapes_file(void) {
    char name[96];
    SafeTensors st;
    safetensors_load("dev/ref/safetensors_escapes.safetensors", &st);
    const SafeTensorInfo* t = safetensors_find(&st, "wéight \"q\"");
    const char* slash = safetensors_meta(&st, "slash");
    const char* ctl = safetensors_meta(&st, "ctl");
    int ok = t != NULL && t->numel == 2 && ((const float*)t->data)[0] == 1.5f && ((const float*)t->data)[1] == -2.0f &&
             st.num_meta == 2 && slash != NULL && strcmp(slash, "a/b") == 0 && ctl != NULL &&
             strcmp(ctl, "\x01\x1f\x7f\n") == 0;
    snprintf(name, sizeof(name), "%s safetensors JSON escapes", device_name());
    check_true(name, ok, "\\/ \\u0001 \\u001F \\u007f \\n \\\", UTF-8 name, indented header");
    safetensors_free(&st);
}

// our writer against Python's bytes, a round trip with several metadata entries, and overwriting
static inline void test_safetensors_writer(const char* dir) {
    char name[96], path[512], tmp[520], detail[256];
    const char* dev = device_name();
    snprintf(path, sizeof(path), "%s/ours.safetensors", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);

    st_test_write_writer_set(path);
    size_t n_ours, n_ref;
    uint8_t* ours = st_test_slurp(path, &n_ours);
    uint8_t* ref = st_test_slurp("dev/ref/safetensors_writer.safetensors", &n_ref);
    size_t first_diff = 0;
    while (first_diff < n_ours && first_diff < n_ref && ours[first_diff] == ref[first_diff]) first_diff++;
    snprintf(name, sizeof(name), "%s safetensors writer bytes == Python's", dev);
    if (n_ours == n_ref && first_diff == n_ref) {
        snprintf(detail, sizeof(detail), "%zu bytes identical (sorted, padded, escaped as Python)", n_ours);
    } else {
        snprintf(detail, sizeof(detail), "%zu vs %zu bytes, first difference at byte %zu", n_ours, n_ref, first_diff);
    }
    check_true(name, n_ours == n_ref && first_diff == n_ref, detail);
    snprintf(name, sizeof(name), "%s safetensors writer leaves no .tmp", dev);
    check_true(name, !st_test_exists(tmp), "only the final file exists after st_writer_write");
    free(ours);
    free(ref);

    // round trip: a larger F32 tensor, I64 values, metadata in the order added
    const int N = 1000;
    float* big = (float*)mallocCheck(N * sizeof(float));       // (10, 100)
    for (int i = 0; i < N; i++) big[i] = sinf(0.37f * i) * 1e3f;
    const int64_t state[3] = {INT64_MIN, 7, INT64_MAX};        // (3,)
    const float bias[5] = {-0.0f, 1e-40f, 1.0f, -2.5f, FLT_MIN}; // (5,)
    const int64_t s_big[2] = {10, 100}, s_state[1] = {3}, s_bias[1] = {5};
    const char* mk[4] = {"format", "model", "config", "vae_checkpoint"};
    const char* mv[4] = {"ldm.c", "unet", "{\"preset\":\"tiny\",\"name\":\"a \\\"q\\\" \\\\ b\",\"mult\":[1,2]}",
                         "runs/vae naïve/checkpoint_final.safetensors"};
    SafeTensorsWriter w;
    st_writer_init(&w);
    st_writer_add(&w, "unet.big", "F32", big, 2, s_big);
    st_writer_add(&w, "state", "I64", state, 1, s_state);
    st_writer_add(&w, "unet.bias", "F32", bias, 1, s_bias);
    for (int i = 0; i < 4; i++) st_writer_add_meta(&w, mk[i], mv[i]);
    st_writer_write(&w, path);
    st_writer_free(&w);
    SafeTensors st;
    safetensors_load(path, &st);
    int ok = st.num_tensors == 3 &&
             st_test_shape_is(safetensors_find(&st, "unet.big"), "F32", 2, s_big) &&
             memcmp(safetensors_get_f32(&st, "unet.big", N), big, N * sizeof(float)) == 0 &&
             st_test_shape_is(safetensors_find(&st, "state"), "I64", 1, s_state) &&
             memcmp(safetensors_get_i64(&st, "state", 3), state, sizeof(state)) == 0 &&
             memcmp(safetensors_get_f32(&st, "unet.bias", 5), bias, sizeof(bias)) == 0 && st.num_meta == 4;
    for (int i = 0; i < 4 && ok; i++) ok = safetensors_meta(&st, mk[i]) && strcmp(safetensors_meta(&st, mk[i]), mv[i]) == 0;
    snprintf(name, sizeof(name), "%s safetensors writer round trip", dev);
    check_true(name, ok, "3 tensors byte-identical, 4 metadata strings");
    safetensors_free(&st);
    free(big);

    // writing again replaces the file whole
    st_test_write_writer_set(path);
    safetensors_load(path, &st);
    snprintf(name, sizeof(name), "%s safetensors writer overwrites", dev);
    check_true(name, st.num_tensors == 7 && safetensors_find(&st, "unet.big") == NULL && !st_test_exists(tmp),
               "the second write replaced the first, no .tmp left");
    safetensors_free(&st);
    remove(path);
}

// corrupt files, made from the good reference bytes, each refused with a message that names the problem
static inline void test_safetensors_strict(const char* dir) {
    size_t n;
    uint8_t* good = st_test_slurp("dev/ref/safetensors_writer.safetensors", &n);
    uint8_t* bad = (uint8_t*)mallocCheck(n + 8);
    memcpy(bad, good, n);
    st_test_expect(dir, "truncated", bad, n - 4, "exceed the data section");
    st_test_expect(dir, "tiny_file", bad, 5, "too short");
    memset(bad + n, 0, 4);
    st_test_expect(dir, "trailing_bytes", bad, n + 4, "trailing bytes");
    uint64_t too_long = n - 7;   // one byte more than follows the length field
    for (int i = 0; i < 8; i++) bad[i] = (uint8_t)(too_long >> (8 * i));
    st_test_expect(dir, "header_length", bad, n, "exceeds the");
    free(bad);

    // hand-made headers over 32 bytes of the reference's data
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = (hlen << 8) | good[i];
    const uint8_t* data = good + 8 + hlen;
    const char* a = "\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}";
    char h[512];
    snprintf(h, sizeof(h), "{%s,\"b\":{\"dtype\":\"F32\",\"shape\":[2,2],\"data_offsets\":[16,32]}}", a);
    st_test_expect_header(dir, "good_control", h, data, 32, NULL);
    snprintf(h, sizeof(h), "{%s,\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[8,24]}}", a);
    st_test_expect_header(dir, "overlap", h, data, 24, "overlaps");
    snprintf(h, sizeof(h), "{%s,\"b\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[20,36]}}", a);
    st_test_expect_header(dir, "gap", h, data, 36, "gap of 4 unused bytes");
    snprintf(h, sizeof(h), "{%s,\"b\":{\"dtype\":\"F32\",\"shape\":[2,3],\"data_offsets\":[16,32]}}", a);
    st_test_expect_header(dir, "shape_mismatch", h, data, 32, "= 24 bytes but its data_offsets [16, 32) span 16");
    snprintf(h, sizeof(h), "{%s,\"b\":{\"dtype\":\"F32\",\"shape\":[6],\"data_offsets\":[16,40]}}", a);
    st_test_expect_header(dir, "offsets_past_end", h, data, 32, "exceed the data section (32 bytes)");
    snprintf(h, sizeof(h), "{%s,\"b\":{\"dtype\":\"F32\",\"shape\":[0],\"data_offsets\":[16,0]}}", a);
    st_test_expect_header(dir, "reversed_offsets", h, data, 16, "end before they begin");
    snprintf(h, sizeof(h), "{%s,\"b\":{\"dtype\":\"Q32\",\"shape\":[4],\"data_offsets\":[16,32]}}", a);
    st_test_expect_header(dir, "unknown_dtype", h, data, 32, "tensor 'b' has dtype 'Q32'");
    snprintf(h, sizeof(h), "{%s,\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,32]}}", a);
    st_test_expect_header(dir, "duplicate_name", h, data, 32, "tensor 'a' appears twice");
    snprintf(h, sizeof(h), "{\"__metadata__\":{\"step\":12},%s}", a);
    st_test_expect_header(dir, "metadata_number", h, data, 16, "metadata 'step' is not a string");
    snprintf(h, sizeof(h), "{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16],\"extra\":1}}");
    st_test_expect_header(dir, "unknown_field", h, data, 16, "unexpected or repeated field \"extra\"");
    snprintf(h, sizeof(h), "{\"a\":{\"dtype\":\"F32\",\"data_offsets\":[0,16]}}");
    st_test_expect_header(dir, "missing_shape", h, data, 16, "tensor 'a' has no \"shape\"");
    snprintf(h, sizeof(h), "{\"a\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}");
    st_test_expect_header(dir, "negative_dim", h, data, 16, "tensor 'a' has a negative dimension -4");
    snprintf(h, sizeof(h), "{\"a\" {\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}");
    st_test_expect_header(dir, "bad_json_colon", h, data, 16, "not valid safetensors JSON: expected ':' but found '{'");
    snprintf(h, sizeof(h), "{%s,}", a);
    st_test_expect_header(dir, "bad_json_comma", h, data, 16, "not valid safetensors JSON: expected '\"' but found '}'");
    snprintf(h, sizeof(h), "{%s}x", a);
    st_test_expect_header(dir, "bad_json_after", h, data, 16, "unexpected text after the closing '}'");
    snprintf(h, sizeof(h), "{\"__metadata__\":[\"x\"],%s}", a);
    st_test_expect_header(dir, "metadata_array", h, data, 16, "\"__metadata__\" is not a JSON object of strings");
    snprintf(h, sizeof(h), "{\"a\":[4,0,16]}");
    st_test_expect_header(dir, "tensor_not_object", h, data, 16, "tensor 'a' is not a JSON object");
    snprintf(h, sizeof(h), "{%s", a);
    st_test_expect_header(dir, "bad_json_unclosed", h, data, 16, "but the text ends");
    snprintf(h, sizeof(h), "{\"__metadata__\":{\"k\":\"1\",\"k\":\"2\"},%s}", a);
    st_test_expect_header(dir, "duplicate_meta", h, data, 16, "metadata key 'k' appears twice");
    snprintf(h, sizeof(h), "{\"__metadata__\":{\"k\":\"caf\\u00e9\"},%s}", a);
    st_test_expect_header(dir, "non_ascii_escape", h, data, 16, "\\u escape of a non-ASCII character");
    snprintf(h, sizeof(h), "{\"a\xff\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}");
    st_test_expect_header(dir, "not_utf8", h, data, 16, "the header is not valid UTF-8");
    // deep nesting: the header's grammar has two fixed levels, so 100,000 '[' are refused at the first
    // extra one, without recursion
    char* deep = (char*)mallocCheck(100100);
    int len = snprintf(deep, 100100, "{\"a\":{\"dtype\":\"F32\",\"shape\":");
    memset(deep + len, '[', 100000);
    deep[len + 100000] = '\0';
    st_test_expect_header(dir, "deep_nesting", deep, data, 16, "not valid safetensors JSON: expected a number at byte 29");
    free(deep);
    free(good);
}

// a header of n tensors "t0000000".. of one F32 each, then (dup) one more named "t0000000": the worst
// case for a check that compares each name with the ones before it (n^2/2 comparisons)
static inline void st_test_many(const char* dir, const char* label, int n, int dup, const char* phrase) {
    size_t cap = (size_t)(n + 1) * 80 + 16, len = 1;
    char* header = (char*)mallocCheck(cap);
    header[0] = '{';
    for (int i = 0; i < n + dup; i++) {
        len += (size_t)snprintf(header + len, cap - len, "%s\"t%07d\":{\"dtype\":\"F32\",\"shape\":[1],"
                                "\"data_offsets\":[%d,%d]}", i ? "," : "", i < n ? i : 0, 4 * i, 4 * i + 4);
    }
    snprintf(header + len, cap - len, "}");
    uint8_t* data = (uint8_t*)mallocCheck((size_t)(n + 1) * 4);
    memset(data, 0, (size_t)(n + 1) * 4);
    double t0 = st_test_seconds();
    st_test_expect_header(dir, label, header, data, (size_t)(n + dup) * 4, phrase);
    double seconds = st_test_seconds() - t0;
    char name[96], detail[128];
    snprintf(name, sizeof(name), "%s safetensors %s: time", device_name(), label);
    snprintf(detail, sizeof(detail), "%.3f s for %d entries (limit 5 s; a pairwise check took 200 s)", seconds, n + dup);
    check_true(name, seconds < 5.0, detail);
    free(data);
    free(header);
}

// 100,000 tensors: refused quickly with one name repeated, read and looked up quickly without
static inline void test_safetensors_many(const char* dir) {
    st_test_many(dir, "dup_100k", 100000, 1, "tensor 't0000000' appears twice");
    st_test_many(dir, "ok_100k", 100000, 0, NULL);
}

// a file without metadata and one without tensors: lookups in the empty section find nothing (its
// array is NULL there; fuzz_safetensors found the NULL pointer that bsearch was given). Under
// make sanitize a UBSan report in the child fails the run.
static inline void test_safetensors_empty_sections(const char* dir) {
    static const uint8_t four[4] = {0, 0, 128, 63};   // 1.0f
    const char* labels[2] = {"no_metadata", "no_tensors"};
    const char* headers[2] = {"{\"x\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[0,4]}}",
                              "{\"__metadata__\":{\"model\":\"vae\"}}"};
    for (int k = 0; k < 2; k++) {
        char path[512], name[96], out[1024];
        snprintf(path, sizeof(path), "%s/%s.safetensors", dir, labels[k]);
        size_t n;
        uint8_t* bytes = st_test_file_bytes(headers[k], four, k == 0 ? 4 : 0, &n);
        st_test_dump(path, bytes, n);
        free(bytes);
        int rc = st_test_in_child(dir, st_test_child_lookups, path, out, sizeof(out));
        snprintf(name, sizeof(name), "%s safetensors lookups in a file with %s", device_name(), labels[k]);
        check_true(name, rc == 0, rc == 0 ? "find and meta return NULL" : rc == 3 ? "a missing name was found" : out);
        remove(path);
    }
}

// inputs that are not regular files: refused by name, before anything opens them (a FIFO would block)
static inline void test_safetensors_inputs(const char* dir) {
    char fifo[512], name[96], out[1024], detail[1200];
    snprintf(fifo, sizeof(fifo), "%s/fifo", dir);
    if (mkfifo(fifo, 0600) != 0) { fprintf(stderr, "Error: mkfifo %s: %s\n", fifo, strerror(errno)); exit(EXIT_FAILURE); }
    const char* paths[5] = {fifo, dir, "/dev/zero", "dev/ref/no_such_file.safetensors", fifo};
    const char* labels[5] = {"a FIFO", "a directory", "/dev/zero", "a missing file", "a FIFO to hash"};
    const char* phrases[5] = {"a FIFO (named pipe), not a regular file", "a directory, not a regular file",
                              "a character device, not a regular file", "no_such_file.safetensors: No such file or directory",
                              "file to hash '"};
    for (int i = 0; i < 5; i++) {
        int rc = st_test_in_child(dir, i < 4 ? st_test_child_load : st_test_child_sha256, paths[i], out, sizeof(out));
        int ok = rc == EXIT_FAILURE && strstr(out, phrases[i]) != NULL && (i < 4 || strstr(out, phrases[0]) != NULL);
        snprintf(name, sizeof(name), "%s %s refuses %s", device_name(), i < 4 ? "safetensors_load" : "sha256_file", labels[i]);
        char* hint = strstr(out, " HINT:");
        if (hint != NULL) *hint = '\0';
        snprintf(detail, sizeof(detail), "exit %d: %s", rc, strstr(out, phrases[0]) ? strstr(out, phrases[0]) :
                 strstr(out, phrases[i]) ? strstr(out, phrases[i]) : out);
        check_true(name, ok, detail);
    }
    remove(fifo);
}

// the paths that exit, each run in a child process: lookups, safetensors_load, and a write that fails
static inline void test_safetensors_exits(const char* dir) {
    char name[96], out[1024], detail[1200], path[512], tmp[520];
    const char* dev = device_name();
    SafeTensors st;
    safetensors_load("dev/ref/safetensors_writer.safetensors", &st);
    const StTestGet gets[4] = {{&st, "nope", 0, 0}, {&st, "rng", 2, 0}, {&st, "b.weight", 5, 0}, {&st, "a.bias", 0, 1}};
    const char* labels[4] = {"missing tensor", "wrong dtype", "wrong numel", "wrong dtype (i64)"};
    const char* phrases[4] = {"no tensor named 'nope' (the file has 7 tensors: 'A', 'a.bias', 'b.weight', ...)",
                              "tensor 'rng' is I64 [2], expected F32", "has shape [3, 2] = 6 values, expected 5",
                              "tensor 'a.bias' is F32 [3], expected I64"};
    for (int i = 0; i < 4; i++) {
        int rc = st_test_in_child(dir, st_test_child_get, &gets[i], out, sizeof(out));
        snprintf(name, sizeof(name), "%s safetensors get exits: %s", dev, labels[i]);
        snprintf(detail, sizeof(detail), "exit %d: %s", rc, out);
        check_true(name, rc == EXIT_FAILURE && strstr(out, phrases[i]) != NULL, detail);
    }
    safetensors_free(&st);

    snprintf(path, sizeof(path), "%s/corrupt.safetensors", dir);
    st_test_dump(path, "not a safetensors file", 22);
    int rc = st_test_in_child(dir, st_test_child_load, path, out, sizeof(out));
    snprintf(name, sizeof(name), "%s safetensors_load exits on a bad file", dev);
    check_true(name, rc == EXIT_FAILURE && strstr(out, "Error: ") && strstr(out, "corrupt.safetensors: header length") &&
               strstr(out, "HINT:"), strstr(out, "corrupt.safetensors") ? strstr(out, "corrupt.safetensors") : out);
    remove(path);

    // the final name is an existing directory, so the rename fails: the error names the file and
    // the temporary file is removed; what was under the final name is untouched
    snprintf(path, sizeof(path), "%s/target", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (mkdir(path, 0700) != 0) { fprintf(stderr, "Error: mkdir %s: %s\n", path, strerror(errno)); exit(EXIT_FAILURE); }
    rc = st_test_in_child(dir, st_test_child_write, path, out, sizeof(out));
    snprintf(name, sizeof(name), "%s safetensors failed write cleans up", dev);
    snprintf(detail, sizeof(detail), "exit %d, .tmp %s: %s", rc, st_test_exists(tmp) ? "LEFT BEHIND" : "removed",
             strstr(out, "rename") ? strstr(out, "rename") : out);
    check_true(name, rc == EXIT_FAILURE && !st_test_exists(tmp) && strstr(out, "target' failed at rename") != NULL &&
               rmdir(path) == 0, detail);

    // a full disk: the temporary name is a symlink to /dev/full, so write() fails with ENOSPC; the
    // temporary file (here the symlink) must be gone and no final file made
    snprintf(path, sizeof(path), "%s/full.safetensors", dir);
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    if (symlink("/dev/full", tmp) != 0) { fprintf(stderr, "Error: symlink %s: %s\n", tmp, strerror(errno)); exit(EXIT_FAILURE); }
    rc = st_test_in_child(dir, st_test_child_write, path, out, sizeof(out));
    snprintf(name, sizeof(name), "%s safetensors write on a full disk cleans up", dev);
    snprintf(detail, sizeof(detail), "exit %d, .tmp %s, final file %s: %s", rc, st_test_exists(tmp) ? "LEFT BEHIND" : "removed",
             st_test_exists(path) ? "MADE" : "not made", strstr(out, "failed") ? strstr(out, "failed") : out);
    check_true(name, rc == EXIT_FAILURE && !st_test_exists(tmp) && !st_test_exists(path) &&
               strstr(out, "full.safetensors' failed at write: No space left on device") != NULL, detail);

    snprintf(path, sizeof(path), "%s/twice.safetensors", dir);
    rc = st_test_in_child(dir, st_test_child_write_twice, path, out, sizeof(out));
    snprintf(name, sizeof(name), "%s safetensors writer refuses a name added twice", dev);
    snprintf(detail, sizeof(detail), "exit %d: %s", rc, strstr(out, "tensor '") ? strstr(out, "tensor '") : out);
    check_true(name, rc == EXIT_FAILURE && strstr(out, "tensor 'x' was added twice") != NULL && !st_test_exists(path), detail);
}

// ----------------------------------------------------------------------------
// SHA-256: the FIPS 180-2 examples (checked with sha256sum and Python's hashlib) and a committed file

static inline void st_test_sha256_text(const char* label, const char* text, size_t repeat, const char* want) {
    Sha256 s;
    char hex[65], name[96], detail[160];
    sha256_init(&s);
    for (size_t i = 0; i < repeat; i++) sha256_update(&s, text, strlen(text));
    sha256_final(&s, hex);
    snprintf(name, sizeof(name), "%s sha256 %s", device_name(), label);
    snprintf(detail, sizeof(detail), "%.16s... %s", hex, strcmp(hex, want) == 0 ? "as NIST/sha256sum" : want);
    check_true(name, strcmp(hex, want) == 0, detail);
}

static inline void test_sha256(const char* dir) {
    st_test_sha256_text("\"\"", "", 1, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
    st_test_sha256_text("\"abc\"", "abc", 1, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    // 56 bytes: the length no longer fits the first block, the padding takes a second one
    st_test_sha256_text("448-bit message", "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq", 1,
                        "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
    // a million 'a' in 7-byte pieces (every offset within a block), then the same as a file (16 reads of 64 KiB)
    char* a = (char*)mallocCheck(1000001);
    memset(a, 'a', 1000000);
    a[1000000] = '\0';
    a[7] = '\0';
    Sha256 s;
    char hex[65], name[96], path[512];
    const char* million = "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0";
    sha256_init(&s);
    for (int i = 0; i < 142857; i++) sha256_update(&s, a, 7);
    sha256_update(&s, a, 1);
    sha256_final(&s, hex);
    snprintf(name, sizeof(name), "%s sha256 a million 'a', 7 bytes at a time", device_name());
    check_true(name, strcmp(hex, million) == 0, strcmp(hex, million) == 0 ? "as NIST/hashlib" : hex);
    a[7] = 'a';
    snprintf(path, sizeof(path), "%s/million_a.txt", dir);
    st_test_dump(path, a, 1000000);
    sha256_file(path, hex);
    snprintf(name, sizeof(name), "%s sha256_file of a million 'a'", device_name());
    check_true(name, strcmp(hex, million) == 0, strcmp(hex, million) == 0 ? "as NIST/hashlib" : hex);
    remove(path);
    free(a);
    // `sha256sum dev/ref/safetensors_writer.safetensors`
    sha256_file("dev/ref/safetensors_writer.safetensors", hex);
    const char* want = "126e735e19ad490cf6d29e170b15b5722ba0992242655fa1841b038593dfd82e";
    snprintf(name, sizeof(name), "%s sha256_file of a committed file", device_name());
    check_true(name, strcmp(hex, want) == 0, strcmp(hex, want) == 0 ? "safetensors_writer.safetensors as sha256sum" : hex);
}

static inline void test_safetensors(void) {
    if (g_device != DEVICE_CPU) return;   // host-only code: once is enough
    char dir[] = "/tmp/ldmc_test_safetensors_XXXXXX";
    if (mkdtemp(dir) == NULL) { fprintf(stderr, "Error: mkdtemp %s: %s\n", dir, strerror(errno)); exit(EXIT_FAILURE); }
    test_safetensors_python_file();
    test_safetensors_escapes_file();
    test_safetensors_writer(dir);
    test_safetensors_strict(dir);
    test_safetensors_many(dir);
    test_safetensors_empty_sections(dir);
    test_safetensors_inputs(dir);
    test_safetensors_exits(dir);
    test_sha256(dir);
    char name[96];
    snprintf(name, sizeof(name), "%s safetensors leaves no stray files", device_name());
    check_true(name, rmdir(dir) == 0, "the temporary directory was empty at the end");
}
