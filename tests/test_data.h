// tests/test_data.h — test_data(): ldmc/cifar10.h on small fake datasets built in a temp directory.
//   - a valid layout loads: labels, pixels and class names land where the file bytes say, file k's
//     record r becoming image (k-1)*10,000 + r;
//   - the pixel mapping x/127.5 - 1 and the horizontal flip against values computed here from the
//     known record bytes (in double, mirrored by hand);
//   - damaged data is an error naming the file and the fix: a truncated data_batch_3.bin, files of
//     the wrong size, labels of 10 and 11, a missing file, a batches.meta.txt naming fewer classes
//     than a label needs, or too many, too long, none, a NUL byte, too many bytes;
//   - a data file or batches.meta.txt that is a FIFO, a directory or /dev/zero is refused before
//     anything is read (a FIFO would hang a read, /dev/zero never ends); a link to a regular file loads;
//   - cifar10_shuffle gives a permutation that depends on (seed, epoch) only; cifar10_resolve_dir
//     takes --data first, then $CIFAR10_DIR.
// The six 30,730,000-byte files are sparse (ftruncate): all-zero records (label 0, black) cost no
// disk, and the few records a test needs are written over them.
// Host-only code: it runs in the CPU pass and returns at once on other devices.
#pragma once

#include <unistd.h>
#include <sys/stat.h>
#include "ldmc/testing.h"
#include "ldmc/cifar10.h"

// ----------------------------------------------------------------------------
// building fake datasets

static inline void tdt_path(char* out, size_t n, const char* dir, const char* name) {
    snprintf(out, n, "%s/%s", dir, name);
}

// a sparse all-zero file of `bytes` bytes
static inline void tdt_make_file(const char* dir, const char* name, long long bytes) {
    char path[1200];
    tdt_path(path, sizeof(path), dir, name);
    FILE* fp = fopenCheck(path, "wb");
    if (ftruncate(fileno(fp), (off_t)bytes) != 0) {
        fprintf(stderr, "Error: ftruncate '%s': %s\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
    fclose(fp);
}

static inline void tdt_make_valid(const char* dir) {
    for (int f = 0; f < 6; f++) tdt_make_file(dir, CIFAR10_FILES[f], CIFAR10_FILE_BYTES);
}

static inline void tdt_write_record(const char* dir, const char* name, int r, const uint8_t* rec) {
    char path[1200];
    tdt_path(path, sizeof(path), dir, name);
    FILE* fp = fopenCheck(path, "r+b");
    fseek(fp, (long)r * CIFAR10_RECORD_BYTES, SEEK_SET);
    fwriteCheck(rec, 1, CIFAR10_RECORD_BYTES, fp);
    fclose(fp);
}

static inline void tdt_write_text(const char* dir, const char* name, const char* text) {
    char path[1200];
    tdt_path(path, sizeof(path), dir, name);
    FILE* fp = fopenCheck(path, "wb");
    fwriteCheck(text, 1, strlen(text), fp);
    fclose(fp);
}

// a record with label `label` and pixels that differ across channel, row and column (so a swap
// of any two axes or a wrong flip shows), including the extremes 0 and 255
static inline void tdt_fill_record(uint8_t* rec, int label, int variant) {
    rec[0] = (uint8_t)label;
    for (int c = 0; c < 3; c++) for (int h = 0; h < 32; h++) for (int w = 0; w < 32; w++) {
        int v = (c * 97 + h * 31 + w * 7 + 5) % 256;
        rec[1 + (c * 32 + h) * 32 + w] = (uint8_t)(variant ? 255 - v : v);
    }
    rec[1] = 0;                          // R, row 0, column 0
    rec[CIFAR10_RECORD_BYTES - 1] = 255;  // B, row 31, column 31
}

// the expected floats of a record, mirrored left-right when `flip`, in double precision
static inline void tdt_expected(float* out, const uint8_t* rec, int flip) {
    for (int c = 0; c < 3; c++) for (int h = 0; h < 32; h++) for (int w = 0; w < 32; w++) {
        int src_w = flip ? 31 - w : w;
        out[(c * 32 + h) * 32 + w] = (float)((double)rec[1 + (c * 32 + h) * 32 + src_w] / 127.5 - 1.0);
    }
}

// try_load must fail, leave the struct empty and say all of `want` (NULL-terminated)
static inline void tdt_expect_error(const char* name, const char* dir, int train, const char* const* want) {
    Cifar10 d;
    char err[1024] = "";
    int rc = cifar10_try_load(&d, dir, train, err, sizeof(err));
    int ok = rc != 0 && d.pixels == NULL && d.labels == NULL && d.n == 0;
    for (int i = 0; want[i] != NULL; i++) ok = ok && strstr(err, want[i]) != NULL;
    // the first line of the message is the interesting part
    char detail[320];
    const char* nl = strchr(err, '\n');
    snprintf(detail, sizeof(detail), "\"%.*s\"", nl ? (int)(nl - err) : (int)strlen(err), err);
    check_true(name, ok, rc != 0 ? detail : "loaded without an error");
    if (rc == 0) cifar10_free(&d);
}

// ----------------------------------------------------------------------------
// the tests

static inline void test_data_load_and_batch(const char* dir) {
    char detail[256];
    uint8_t rec_a[CIFAR10_RECORD_BYTES], rec_b[CIFAR10_RECORD_BYTES];
    tdt_fill_record(rec_a, 3, 0);
    tdt_fill_record(rec_b, 9, 1);
    tdt_make_valid(dir);
    tdt_write_record(dir, "test_batch.bin", 0, rec_a);
    tdt_write_record(dir, "test_batch.bin", 9999, rec_b);
    tdt_write_record(dir, "data_batch_2.bin", 1234, rec_b);
    // the official file's shape: names, then blank lines; CRLF line ends are tolerated
    tdt_write_text(dir, "batches.meta.txt", "airplane\nautomobile\nbird\ncat\r\ndeer\ndog\nfrog\nhorse\nship\ntruck\n\n\n");

    // test split: labels and class names
    Cifar10 d;
    char err[1024] = "";
    int rc = cifar10_try_load(&d, dir, 0, err, sizeof(err));
    int ok = rc == 0 && d.n == 10000 && d.num_classes == 10 && d.labels[0] == 3 && d.labels[9999] == 9
             && d.labels[5000] == 0 && strcmp(d.class_names[3], "cat") == 0 && strcmp(d.class_names[9], "truck") == 0;
    snprintf(detail, sizeof(detail), "n %d, labels[0] %d, labels[9999] %d, class 3 '%s' %s", rc == 0 ? d.n : -1,
             rc == 0 ? d.labels[0] : -1, rc == 0 ? d.labels[9999] : -1, rc == 0 ? d.class_names[3] : "", rc ? err : "");
    check_true("host data load test split", ok, detail);
    if (rc != 0) return;

    // pixel mapping, no flips (flip_seed 0), labels out
    int idx[3] = {0, 9999, 0};
    float x[3 * CIFAR10_IMG_BYTES], ref[3 * CIFAR10_IMG_BYTES];
    int labels[3] = {-1, -1, -1};
    cifar10_get_batch(&d, idx, 3, x, labels, 0, 0);
    tdt_expected(ref, rec_a, 0);
    tdt_expected(ref + CIFAR10_IMG_BYTES, rec_b, 0);
    tdt_expected(ref + 2 * CIFAR10_IMG_BYTES, rec_a, 0);
    check_close("host data pixels x/127.5-1", x, ref, 3 * CIFAR10_IMG_BYTES, 1e-6f);
    snprintf(detail, sizeof(detail), "0 -> %g, 255 -> %g, labels %d %d %d", x[0], x[CIFAR10_IMG_BYTES - 1],
             labels[0], labels[1], labels[2]);
    check_true("host data endpoints and labels", x[0] == -1.0f && x[CIFAR10_IMG_BYTES - 1] == 1.0f
               && labels[0] == 3 && labels[1] == 9 && labels[2] == 3, detail);

    // flips: image b is mirrored iff rng_uniform(seed, counter + b) < 0.5
    enum { FB = 16 };
    int fidx[FB];
    float* fx = (float*)mallocCheck((size_t)FB * CIFAR10_IMG_BYTES * sizeof(float));
    float* fref = (float*)mallocCheck((size_t)FB * CIFAR10_IMG_BYTES * sizeof(float));
    const uint64_t seed = 1234, counter = 77;
    int nflip = 0;
    for (int b = 0; b < FB; b++) {
        fidx[b] = 0;
        int flip = rng_uniform(seed, counter + b) < 0.5f;
        nflip += flip;
        tdt_expected(fref + (size_t)b * CIFAR10_IMG_BYTES, rec_a, flip);
    }
    cifar10_get_batch(&d, fidx, FB, fx, NULL, seed, counter);
    check_close("host data horizontal flips", fx, fref, (size_t)FB * CIFAR10_IMG_BYTES, 1e-6f);
    snprintf(detail, sizeof(detail), "%d of %d images flipped", nflip, FB);
    check_true("host data flips exercise both cases", nflip > 0 && nflip < FB, detail);
    free(fx);
    free(fref);
    cifar10_free(&d);

    // train split: five files in order, file 2's record 1234 is image 11234
    rc = cifar10_try_load(&d, dir, 1, err, sizeof(err));
    ok = rc == 0 && d.n == 50000 && d.labels[11234] == 9 && d.labels[11233] == 0
         && memcmp(d.pixels + (size_t)11234 * CIFAR10_IMG_BYTES, rec_b + 1, CIFAR10_IMG_BYTES) == 0;
    snprintf(detail, sizeof(detail), "n %d, image 11234 = data_batch_2.bin record 1234 %s", rc == 0 ? d.n : -1, rc ? err : "");
    check_true("host data load train split", ok, detail);
    if (rc == 0) cifar10_free(&d);

    // no batches.meta.txt: CIFAR-10's names
    char path[1200];
    tdt_path(path, sizeof(path), dir, "batches.meta.txt");
    remove(path);
    rc = cifar10_try_load(&d, dir, 0, err, sizeof(err));
    ok = rc == 0 && d.num_classes == 10 && strcmp(d.class_names[0], "airplane") == 0 && strcmp(d.class_names[9], "truck") == 0;
    check_true("host data no batches.meta.txt: CIFAR-10 names", ok, rc ? err : "airplane .. truck");
    if (rc == 0) cifar10_free(&d);
}

static inline void test_data_errors(const char* dir) {
    tdt_make_valid(dir);
    char path[1200];
    tdt_path(path, sizeof(path), dir, "batches.meta.txt");
    remove(path);

    // a truncated data_batch_3.bin (one record short)
    tdt_make_file(dir, "data_batch_3.bin", CIFAR10_FILE_BYTES - CIFAR10_RECORD_BYTES);
    const char* w1[] = {"data_batch_3.bin", "30726927 bytes", "truncated", "make data", NULL};
    tdt_expect_error("host data truncated data_batch_3.bin", dir, 1, w1);
    tdt_make_file(dir, "data_batch_3.bin", CIFAR10_FILE_BYTES);

    // one byte too many
    tdt_make_file(dir, "data_batch_5.bin", CIFAR10_FILE_BYTES + 1);
    const char* w2[] = {"data_batch_5.bin", "30730001 bytes", "too large", "make data", NULL};
    tdt_expect_error("host data oversized data_batch_5.bin", dir, 1, w2);
    tdt_make_file(dir, "data_batch_5.bin", CIFAR10_FILE_BYTES);

    // an empty test file
    tdt_make_file(dir, "test_batch.bin", 0);
    const char* w3[] = {"test_batch.bin", " 0 bytes", "make data", NULL};
    tdt_expect_error("host data empty test_batch.bin", dir, 0, w3);
    tdt_make_file(dir, "test_batch.bin", CIFAR10_FILE_BYTES);

    // a label of 11 in record 4321 of data_batch_2.bin
    uint8_t rec[CIFAR10_RECORD_BYTES];
    tdt_fill_record(rec, 11, 0);
    tdt_write_record(dir, "data_batch_2.bin", 4321, rec);
    const char* w4[] = {"data_batch_2.bin", "record 4321", "label 11", "0..9", NULL};
    tdt_expect_error("host data label 11", dir, 1, w4);
    tdt_make_file(dir, "data_batch_2.bin", CIFAR10_FILE_BYTES);  // all zeros again

    // a missing file
    tdt_path(path, sizeof(path), dir, "data_batch_4.bin");
    remove(path);
    const char* w5[] = {"data_batch_4.bin", "make data", NULL};
    tdt_expect_error("host data missing data_batch_4.bin", dir, 1, w5);
    tdt_make_file(dir, "data_batch_4.bin", CIFAR10_FILE_BYTES);

    // labels must name a class of batches.meta.txt: 3 classes, a label 3
    tdt_write_text(dir, "batches.meta.txt", "apple\nmango\nzebra\n");
    tdt_fill_record(rec, 3, 0);
    tdt_write_record(dir, "test_batch.bin", 17, rec);
    const char* w6[] = {"test_batch.bin", "record 17", "label 3", "0..2", "batches.meta.txt", NULL};
    tdt_expect_error("host data label beyond batches.meta.txt", dir, 0, w6);
    tdt_make_file(dir, "test_batch.bin", CIFAR10_FILE_BYTES);  // all zeros again

    // and with those 3 classes, labels 0..2 load
    Cifar10 d;
    char err[1024] = "";
    int rc = cifar10_try_load(&d, dir, 0, err, sizeof(err));
    int ok = rc == 0 && d.num_classes == 3 && strcmp(d.class_names[2], "zebra") == 0 && d.class_names[3][0] == '\0';
    check_true("host data own 3-class batches.meta.txt", ok, rc ? err : "3 classes: apple mango zebra");
    if (rc == 0) cifar10_free(&d);
}

// label 10 with CIFAR-10's ten classes (the first label past the end)
static inline void test_data_label_10(const char* dir) {
    tdt_make_valid(dir);
    char path[1200];
    tdt_path(path, sizeof(path), dir, "batches.meta.txt");
    remove(path);
    uint8_t rec[CIFAR10_RECORD_BYTES];
    tdt_fill_record(rec, 10, 0);
    tdt_write_record(dir, "test_batch.bin", 9999, rec);
    const char* w[] = {"test_batch.bin", "record 9999", "label 10", "0..9", NULL};
    tdt_expect_error("host data label 10", dir, 0, w);
    tdt_make_file(dir, "test_batch.bin", CIFAR10_FILE_BYTES);
}

// batches.meta.txt that cannot be a list of class names
static inline void test_data_meta_errors(const char* dir) {
    tdt_make_valid(dir);
    static const struct { const char* name; const char* text; size_t len; const char* want; } cases[] = {
        {"host data meta: 11 names", "a\nb\nc\nd\ne\nf\ng\nh\ni\nj\nk\n", 22, "more than 10 classes"},
        {"host data meta: a 32-character name", "airplane\n0123456789abcdef0123456789abcdef\n", 42, "longer than 31"},
        {"host data meta: blank lines only", "\n \r\n\t\n", 6, "names no classes"},
        {"host data meta: a NUL byte", "cat\0dog\n", 8, "NUL byte"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char path[1200];
        tdt_path(path, sizeof(path), dir, "batches.meta.txt");
        FILE* fp = fopenCheck(path, "wb");
        fwriteCheck(cases[i].text, 1, cases[i].len, fp);
        fclose(fp);
        const char* w[] = {"batches.meta.txt", cases[i].want, NULL};
        tdt_expect_error(cases[i].name, dir, 0, w);
    }
    tdt_make_file(dir, "batches.meta.txt", CIFAR10_META_MAX_BYTES + 1);
    const char* w[] = {"batches.meta.txt", "4097 bytes", NULL};
    tdt_expect_error("host data meta: over 4 KiB", dir, 0, w);
    char path[1200];
    tdt_path(path, sizeof(path), dir, "batches.meta.txt");
    remove(path);
}

// `name` replaced by a FIFO, a directory, a link to /dev/zero: refused before reading, saying what
// it is; then by a link to a valid file, which loads
static inline void test_data_not_regular(const char* dir, const char* name, int train) {
    char path[1200], target[1200], label[160];
    tdt_path(path, sizeof(path), dir, name);
    static const char* kinds[] = {"FIFO", "directory", "character device"};
    for (int k = 0; k < 3; k++) {
        remove(path);
        int made = k == 0 ? mkfifo(path, 0600) : k == 1 ? mkdir(path, 0700) : symlink("/dev/zero", path);
        snprintf(label, sizeof(label), "host data %s is a %s", name, kinds[k]);
        if (made != 0) { check_true(label, 0, strerror(errno)); continue; }
        const char* w[] = {name, kinds[k], "not a regular file", NULL};
        tdt_expect_error(label, dir, train, w);
        if (k == 1) rmdir(path); else remove(path);
    }
    // a link to a regular file of the right kind is fine
    int meta = strcmp(name, "batches.meta.txt") == 0;
    if (meta) tdt_write_text(dir, "elsewhere", "airplane\nautomobile\nbird\n");
    else tdt_make_file(dir, "elsewhere", CIFAR10_FILE_BYTES);
    tdt_path(target, sizeof(target), dir, "elsewhere");
    int linked = symlink(target, path) == 0;
    Cifar10 d;
    char err[1024] = "";
    int rc = linked ? cifar10_try_load(&d, dir, train, err, sizeof(err)) : 1;
    snprintf(label, sizeof(label), "host data %s as a link to a file", name);
    int ok = rc == 0 && d.num_classes == (meta ? 3 : 10);
    check_true(label, ok, rc ? (linked ? err : strerror(errno)) : meta ? "loads, 3 classes" : "loads");
    if (rc == 0) cifar10_free(&d);
    remove(path);
    remove(target);
    if (!meta) tdt_make_file(dir, name, CIFAR10_FILE_BYTES);
}

static inline void test_data_shuffle_and_dir(const char* dir) {
    enum { N = 1000 };
    int a[N], b[N], c[N], e[N], seen[N];
    cifar10_shuffle(a, N, 42, 3);
    cifar10_shuffle(b, N, 42, 3);
    cifar10_shuffle(c, N, 42, 4);
    cifar10_shuffle(e, N, 43, 3);
    memset(seen, 0, sizeof(seen));
    int perm = 1, fixed_points = 0;
    for (int i = 0; i < N; i++) {
        if (a[i] < 0 || a[i] >= N || seen[a[i]]++) perm = 0;
        fixed_points += a[i] == i;
    }
    int same = memcmp(a, b, sizeof(a)) == 0;
    int diff_epoch = memcmp(a, c, sizeof(a)) != 0, diff_seed = memcmp(a, e, sizeof(a)) != 0;
    char detail[256];
    snprintf(detail, sizeof(detail), "permutation %d, repeatable %d, differs by epoch %d / seed %d, %d fixed points",
             perm, same, diff_epoch, diff_seed, fixed_points);
    // a uniform permutation has ~1 fixed point; 10+ would mean it barely shuffles
    check_true("host data shuffle", perm && same && diff_epoch && diff_seed && fixed_points < 10, detail);

    // --data wins over $CIFAR10_DIR, which is used when --data is absent
    tdt_make_valid(dir);
    const char* old_env = getenv("CIFAR10_DIR");
    char saved[1024] = "";
    if (old_env) snprintf(saved, sizeof(saved), "%s", old_env);
    setenv("CIFAR10_DIR", dir, 1);
    char out1[1024] = "", out2[1024] = "";
    cifar10_resolve_dir(NULL, out1, sizeof(out1));
    cifar10_resolve_dir(dir, out2, sizeof(out2));
    if (old_env) setenv("CIFAR10_DIR", saved, 1); else unsetenv("CIFAR10_DIR");
    char missing[256];
    int nmissing = cifar10_missing_files("/nonexistent-ldmc-dir", missing, sizeof(missing));
    snprintf(detail, sizeof(detail), "env -> '%s', flag -> '%s', empty dir lacks %d files", out1, out2, nmissing);
    check_true("host data resolve dir", strcmp(out1, dir) == 0 && strcmp(out2, dir) == 0 && nmissing == 6, detail);
}

static inline void test_data(void) {
    if (g_device != DEVICE_CPU) return;  // host code only: the CPU pass covers it
    const char* tmp = getenv("TMPDIR");
    char dir[1024];
    snprintf(dir, sizeof(dir), "%s/ldmc_test_data_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(dir) == NULL) {
        fprintf(stderr, "Error: cannot create a temporary directory %s: %s\n", dir, strerror(errno));
        exit(EXIT_FAILURE);
    }
    test_data_load_and_batch(dir);
    test_data_errors(dir);
    test_data_label_10(dir);
    test_data_meta_errors(dir);
    tdt_make_valid(dir);
    test_data_not_regular(dir, "data_batch_2.bin", 1);
    test_data_not_regular(dir, "test_batch.bin", 0);
    test_data_not_regular(dir, "batches.meta.txt", 0);
    test_data_shuffle_and_dir(dir);
    char path[1200];
    for (int f = 0; f < 6; f++) {
        tdt_path(path, sizeof(path), dir, CIFAR10_FILES[f]);
        remove(path);
    }
    tdt_path(path, sizeof(path), dir, "batches.meta.txt");
    remove(path);
    rmdir(dir);
}
