// ldmc/cifar10.h — CIFAR-10 for the trainers, read from its official binary layout
// (`make data` prepares it; data/cifar10_from_folders.c converts image folders into it):
//   data_batch_1..5.bin (train), test_batch.bin (test): 10,000 records each of
//   <1 byte label 0..9><1024 R><1024 G><1024 B>, row-major 32x32, so exactly 30,730,000 bytes a file;
//   batches.meta.txt: the class names, one a line.
//   cifar10_resolve_dir   --data DIR, else $CIFAR10_DIR, else data/cifar-10-batches-bin
//   cifar10_try_load      load the train or test split into host memory; 0 ok, else an error message
//   cifar10_load          the same, exiting with that message on any problem
//   cifar10_parse_meta / cifar10_parse_batch   what try_load does with a file's bytes (also fuzzed:
//                         dev/fuzz/fuzz_cifar10.cu)
// Every file must be a regular file (or a link to one) of the right size: a directory, FIFO or
// device is refused before a byte is read, so a FIFO cannot hang the loader nor /dev/zero feed it.
//   cifar10_get_batch     images idx[0..B) as floats in [-1, 1] (x/127.5 - 1), optional random h-flips
//   cifar10_shuffle       the epoch's permutation, a pure function of (seed, epoch)
// Host code only: the trainer uploads each batch. Every random decision (flips, permutations) comes
// from the counter-based RNG, so a resumed run draws the same batches as an uninterrupted one.
#pragma once

#include <stdarg.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include "common.cuh"
#include "files.h"
#include "rng.cuh"

// ----------------------------------------------------------------------------
// the layout

#define CIFAR10_IMG 32
#define CIFAR10_IMG_BYTES (3 * CIFAR10_IMG * CIFAR10_IMG)       // 3072
#define CIFAR10_RECORD_BYTES (1 + CIFAR10_IMG_BYTES)            // 3073: the label byte first
#define CIFAR10_RECORDS_PER_FILE 10000
#define CIFAR10_FILE_BYTES ((long long)CIFAR10_RECORDS_PER_FILE * CIFAR10_RECORD_BYTES)  // 30,730,000
#define CIFAR10_MAX_CLASSES 10
#define CIFAR10_MAX_NAME 32                                     // a class name and its NUL
#define CIFAR10_META_MAX_BYTES 4096  // batches.meta.txt: 10 short names (the official file is 61 bytes + blank lines)
#define CIFAR10_DEFAULT_DIR "data/cifar-10-batches-bin"

static const char* CIFAR10_FILES[6] = {
    "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
    "data_batch_5.bin", "test_batch.bin"};
static const char* CIFAR10_CLASS_NAMES[CIFAR10_MAX_CLASSES] = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};

typedef struct {
    int n;                         // number of images
    int num_classes;               // names in batches.meta.txt; 10 (CIFAR-10's) when it is absent
    uint8_t* labels;               // (n)
    uint8_t* pixels;               // (n, 3, 32, 32)
    char class_names[CIFAR10_MAX_CLASSES][CIFAR10_MAX_NAME];
} Cifar10;

#define CIFAR10_FIX "HINT: run `make data` (it writes " CIFAR10_DEFAULT_DIR "), or point --data / $CIFAR10_DIR at a folder holding CIFAR-10's binary files."

// the error messages of cifar10_try_load; truncating a very long path in one is fine (and through a
// va_list the compiler does not warn that it might happen)
__attribute__((format(printf, 3, 4)))
static inline void cifar10_errorf(char* err, size_t errlen, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

// ----------------------------------------------------------------------------
// finding the data

// how many of the six files `dir` lacks (a name that exists but is no regular file is not missing:
// cifar10_try_load says what it is); their names go to `missing` (space-separated)
static inline int cifar10_missing_files(const char* dir, char* missing, size_t n) {
    int count = 0;
    missing[0] = '\0';
    char path[4096];
    for (int f = 0; f < 6; f++) {
        snprintf(path, sizeof(path), "%s/%s", dir, CIFAR10_FILES[f]);
        struct stat st;
        if (stat(path, &st) != 0) {
            size_t len = strlen(missing);
            snprintf(missing + len, n - len, "%s%s", count ? " " : "", CIFAR10_FILES[f]);
            count++;
        }
    }
    return count;
}

// resolve the data dir: --data DIR if given (non-NULL), else $CIFAR10_DIR, else
// data/cifar-10-batches-bin. An explicit choice that lacks the files is an error, not a reason to
// fall back to the next place: training silently on other data than asked for is worse.
static inline void cifar10_resolve_dir(const char* flag_dir, char* out, size_t n) {
    const char* env = getenv("CIFAR10_DIR");
    const char* dir;
    const char* source;
    if (flag_dir != NULL) {
        dir = flag_dir;
        source = "--data";
    } else if (env != NULL && env[0] != '\0') {
        dir = env;
        source = "$CIFAR10_DIR";
    } else {
        dir = CIFAR10_DEFAULT_DIR;
        source = "the default";
    }
    char missing[256];
    int nmissing = cifar10_missing_files(dir, missing, sizeof(missing));
    if (nmissing > 0) {
        if (nmissing == 6) {
            fprintf(stderr, "Error: no CIFAR-10 in '%s' (%s): none of data_batch_1..5.bin, test_batch.bin is there.\n", dir, source);
        } else {
            fprintf(stderr, "Error: incomplete CIFAR-10 in '%s' (%s): %s %s.\n", dir, source, missing,
                    nmissing == 1 ? "is missing" : "are missing");
        }
        if (flag_dir != NULL) {
            fprintf(stderr, "  (--data was given, so $CIFAR10_DIR and " CIFAR10_DEFAULT_DIR " were not tried)\n");
        } else if (env != NULL && env[0] != '\0') {
            fprintf(stderr, "  ($CIFAR10_DIR is set, so " CIFAR10_DEFAULT_DIR " was not tried)\n");
        } else {
            fprintf(stderr, "  (the default is relative to the current directory: run from the repository root)\n");
        }
        fprintf(stderr, CIFAR10_FIX "\n");
        exit(EXIT_FAILURE);
    }
    if (strlen(dir) + 1 > n) {
        fprintf(stderr, "Error: the data path '%s' is longer than %zu characters.\n", dir, n - 1);
        exit(EXIT_FAILURE);
    }
    snprintf(out, n, "%s", dir);
}

// ----------------------------------------------------------------------------
// opening files: regular files only, refused before any byte is read

// Opens `path` for reading if it is a regular file and puts its size in *size; else NULL with the
// reason in `err` (errno as open left it, so a caller can tell a missing file apart). Opened
// non-blocking, so a FIFO without a writer does not hang the open, then checked with fstat on the
// open descriptor (no window between the check and the open).
static inline FILE* cifar10_open_regular(const char* path, long long* size, char* err, size_t errlen) {
    int fd = open(path, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        int e = errno;
        cifar10_errorf(err, errlen, "cannot open '%s': %s.\n" CIFAR10_FIX, path, strerror(e));
        errno = e;
        return NULL;
    }
    struct stat st;
    if (fstat(fd, &st) != 0) {
        cifar10_errorf(err, errlen, "cannot stat '%s': %s.", path, strerror(errno));
        close(fd);
        errno = 0;
        return NULL;
    }
    if (!S_ISREG(st.st_mode)) {
        cifar10_errorf(err, errlen, "'%s' is %s, not a regular file.\n" CIFAR10_FIX, path, file_kind(st.st_mode));
        close(fd);
        errno = 0;
        return NULL;
    }
    FILE* fp = fdopen(fd, "rb");
    if (fp == NULL) {
        cifar10_errorf(err, errlen, "cannot open '%s': %s.", path, strerror(errno));
        close(fd);
        return NULL;
    }
    *size = (long long)st.st_size;
    return fp;
}

// ----------------------------------------------------------------------------
// parsing a file's bytes

static inline void cifar10_free(Cifar10* d) {
    free(d->labels);
    free(d->pixels);
    memset(d, 0, sizeof(*d));
}

static inline void cifar10_default_names(Cifar10* d) {
    d->num_classes = CIFAR10_MAX_CLASSES;
    for (int k = 0; k < CIFAR10_MAX_CLASSES; k++) snprintf(d->class_names[k], CIFAR10_MAX_NAME, "%s", CIFAR10_CLASS_NAMES[k]);
}

// batches.meta.txt's bytes (`path` for messages): one class name a line, trailing blanks and CRs
// dropped, blank lines ignored (the official file ends with some); 1..10 names of < 32 bytes, no NUL
static inline int cifar10_parse_meta(Cifar10* d, const char* text, size_t len, const char* path, char* err, size_t errlen) {
    if (memchr(text, '\0', len) != NULL) {
        cifar10_errorf(err, errlen, "'%s' holds a NUL byte: it is not a text file of class names.\n"
                                    "HINT: fix or delete batches.meta.txt.", path);
        return 1;
    }
    int k = 0, lineno = 0;
    for (size_t pos = 0; pos < len;) {
        const char* line = text + pos;
        const char* nl = (const char*)memchr(line, '\n', len - pos);
        size_t n = nl ? (size_t)(nl - line) : len - pos;
        pos += n + (nl != NULL);
        lineno++;
        while (n > 0 && (line[n - 1] == '\r' || line[n - 1] == ' ' || line[n - 1] == '\t')) n--;
        if (n == 0) continue;
        if (k == CIFAR10_MAX_CLASSES) {
            cifar10_errorf(err, errlen, "'%s' names more than %d classes (line %d: '%.*s'); the binary layout holds labels 0..9.\n"
                                        "HINT: fix or delete batches.meta.txt.", path, CIFAR10_MAX_CLASSES, lineno,
                           (int)(n < 64 ? n : 64), line);
            return 1;
        }
        if (n >= CIFAR10_MAX_NAME) {
            cifar10_errorf(err, errlen, "'%s' line %d: class name '%.*s...' is longer than %d characters.\n"
                                        "HINT: shorten it.", path, lineno, 32, line, CIFAR10_MAX_NAME - 1);
            return 1;
        }
        memcpy(d->class_names[k], line, n);
        d->class_names[k++][n] = '\0';
    }
    if (k == 0) {
        cifar10_errorf(err, errlen, "'%s' names no classes.\nHINT: fix or delete batches.meta.txt.", path);
        return 1;
    }
    for (int j = k; j < CIFAR10_MAX_CLASSES; j++) d->class_names[j][0] = '\0';
    d->num_classes = k;
    return 0;
}

// One batch file's bytes (`path`, in `dir`, for messages): exactly `nrecords` records (the loader
// passes 10,000), every label below d->num_classes; they become images first .. first+nrecords-1
// of `d`, which must have room for them.
static inline int cifar10_parse_batch(Cifar10* d, int first, const uint8_t* buf, size_t size, int nrecords,
                               const char* path, const char* dir, char* err, size_t errlen) {
    if (nrecords < 0 || first < 0 || first > d->n - nrecords) {
        cifar10_errorf(err, errlen, "internal: records %d..%d of '%s' do not fit %d images.", first, first + nrecords, path, d->n);
        return 1;
    }
    if (size != (size_t)nrecords * CIFAR10_RECORD_BYTES) {
        cifar10_errorf(err, errlen, "'%s' holds %zu bytes, expected %zu (%d records of %d bytes).\n"
                                    "HINT: delete '%s' and run `make data` again.",
                       path, size, (size_t)nrecords * CIFAR10_RECORD_BYTES, nrecords, CIFAR10_RECORD_BYTES, dir);
        return 1;
    }
    for (int r = 0; r < nrecords; r++) {
        const uint8_t* rec = buf + (size_t)r * CIFAR10_RECORD_BYTES;
        if (rec[0] >= d->num_classes) {
            cifar10_errorf(err, errlen, "'%s' record %d has label %d, expected 0..%d%s.\n"
                                        "HINT: the file is damaged or not CIFAR-10's binary layout; delete '%s' and run `make data` again.",
                           path, r, rec[0], d->num_classes - 1,
                           d->num_classes < CIFAR10_MAX_CLASSES ? " (batches.meta.txt names that many classes)" : "", dir);
            return 1;
        }
        size_t i = (size_t)first + r;
        d->labels[i] = rec[0];
        memcpy(d->pixels + i * CIFAR10_IMG_BYTES, rec + 1, CIFAR10_IMG_BYTES);
    }
    return 0;
}

// ----------------------------------------------------------------------------
// loading

// batches.meta.txt: optional (absent: CIFAR-10's names), else a regular file of at most 4 KiB
static inline int cifar10_read_meta(Cifar10* d, const char* dir, char* err, size_t errlen) {
    char path[4096], text[CIFAR10_META_MAX_BYTES];
    snprintf(path, sizeof(path), "%s/batches.meta.txt", dir);
    cifar10_default_names(d);
    long long size = 0;
    FILE* fp = cifar10_open_regular(path, &size, err, errlen);
    if (fp == NULL) {
        if (errno == ENOENT) { err[0] = '\0'; return 0; }
        return 1;
    }
    if (size > CIFAR10_META_MAX_BYTES) {
        cifar10_errorf(err, errlen, "'%s' is %lld bytes; a list of at most %d class names fits in %d.\n"
                                    "HINT: fix or delete batches.meta.txt.", path, size, CIFAR10_MAX_CLASSES, CIFAR10_META_MAX_BYTES);
        fclose(fp);
        return 1;
    }
    size_t got = fread(text, 1, (size_t)size, fp);
    fclose(fp);
    if (got != (size_t)size) {
        cifar10_errorf(err, errlen, "cannot read '%s' (%zu of %lld bytes).", path, got, size);
        return 1;
    }
    return cifar10_parse_meta(d, text, got, path, err, errlen);
}

// train: data_batch_1..5.bin, else test_batch.bin. Returns 0 and fills `d`, or returns 1, leaves `d`
// empty and writes what is wrong (and the fix) to `err`. Every file is opened, and its type and size
// checked, before any is read, so a damaged download is reported at once; every label is checked
// against the classes.
static inline int cifar10_try_load(Cifar10* d, const char* dir, int train, char* err, size_t errlen) {
    memset(d, 0, sizeof(*d));
    int first = train ? 0 : 5;
    int nfiles = train ? 5 : 1;
    char path[4096];
    FILE* fps[5] = {NULL, NULL, NULL, NULL, NULL};
    int rc = 0;
    for (int f = 0; f < nfiles && rc == 0; f++) {
        snprintf(path, sizeof(path), "%s/%s", dir, CIFAR10_FILES[first + f]);
        long long size = 0;
        fps[f] = cifar10_open_regular(path, &size, err, errlen);
        if (fps[f] == NULL) {
            rc = 1;
        } else if (size != CIFAR10_FILE_BYTES) {
            cifar10_errorf(err, errlen, "'%s' is %lld bytes, expected %lld (%d records of %d bytes): %s.\n"
                                        "HINT: delete '%s' and run `make data` again.",
                           path, size, CIFAR10_FILE_BYTES, CIFAR10_RECORDS_PER_FILE, CIFAR10_RECORD_BYTES,
                           size < CIFAR10_FILE_BYTES ? "the file is truncated (an interrupted download or conversion?)"
                                                     : "the file is too large, not CIFAR-10's binary layout",
                           dir);
            rc = 1;
        }
    }
    if (rc == 0) rc = cifar10_read_meta(d, dir, err, errlen);
    if (rc == 0) {
        d->n = nfiles * CIFAR10_RECORDS_PER_FILE;
        d->labels = (uint8_t*)mallocCheck((size_t)d->n);
        d->pixels = (uint8_t*)mallocCheck((size_t)d->n * CIFAR10_IMG_BYTES);
        uint8_t* buf = (uint8_t*)mallocCheck((size_t)CIFAR10_FILE_BYTES);
        for (int f = 0; f < nfiles && rc == 0; f++) {
            snprintf(path, sizeof(path), "%s/%s", dir, CIFAR10_FILES[first + f]);
            size_t got = fread(buf, 1, (size_t)CIFAR10_FILE_BYTES, fps[f]);
            if (got != (size_t)CIFAR10_FILE_BYTES) {
                cifar10_errorf(err, errlen, "cannot read '%s' (%zu of %lld bytes): %s.\nHINT: delete '%s' and run `make data` again.",
                               path, got, CIFAR10_FILE_BYTES,
                               ferror(fps[f]) ? strerror(errno) : "the file ended early (changed while reading?)", dir);
                rc = 1;
            } else {
                rc = cifar10_parse_batch(d, f * CIFAR10_RECORDS_PER_FILE, buf, got, CIFAR10_RECORDS_PER_FILE,
                                         path, dir, err, errlen);
            }
        }
        free(buf);
    }
    for (int f = 0; f < nfiles; f++) if (fps[f] != NULL) fclose(fps[f]);
    if (rc != 0) cifar10_free(d);
    return rc;
}

static inline void cifar10_load(Cifar10* d, const char* dir, int train) {
    char err[1024];
    if (cifar10_try_load(d, dir, train, err, sizeof(err)) != 0) {
        fprintf(stderr, "Error: %s\n", err);
        exit(EXIT_FAILURE);
    }
}

// ----------------------------------------------------------------------------
// batches

// x[b] = pixels[idx[b]] / 127.5 - 1, so 0 -> -1 and 255 -> 1 exactly. When flip_seed != 0, image b
// is mirrored left-right iff rng_uniform(flip_seed, flip_counter + b) < 0.5: the caller advances
// flip_counter by B per batch, so every (epoch, position) gets its own reproducible coin.
static inline void cifar10_get_batch(const Cifar10* d, const int* idx, int B, float* x, int* labels,
                              uint64_t flip_seed, uint64_t flip_counter) {
    for (int b = 0; b < B; b++) {
        if (idx[b] < 0 || idx[b] >= d->n) {
            fprintf(stderr, "Error: cifar10_get_batch: image index %d out of range [0, %d).\n", idx[b], d->n);
            exit(EXIT_FAILURE);
        }
    }
    #pragma omp parallel for
    for (int b = 0; b < B; b++) {
        const uint8_t* src = d->pixels + (size_t)idx[b] * CIFAR10_IMG_BYTES;  // (3, 32, 32)
        float* dst = x + (size_t)b * CIFAR10_IMG_BYTES;                        // (3, 32, 32)
        int flip = flip_seed != 0 && rng_uniform(flip_seed, flip_counter + (uint64_t)b) < 0.5f;
        for (int row = 0; row < 3 * CIFAR10_IMG; row++) {  // (channel, h) rows of 32 pixels
            const uint8_t* s = src + row * CIFAR10_IMG;
            float* o = dst + row * CIFAR10_IMG;
            for (int w = 0; w < CIFAR10_IMG; w++) {
                o[w] = (float)s[flip ? CIFAR10_IMG - 1 - w : w] / 127.5f - 1.0f;
            }
        }
        if (labels != NULL) labels[b] = d->labels[idx[b]];
    }
}

// Fisher-Yates over 0..n-1 with the stream rng_u64(rng_u64(seed, epoch), i): a pure function of
// (seed, epoch), so a resumed run recomputes its epoch's order. The modulo bias (2^64 mod (i+1))
// is below 1e-14 for any dataset size here.
static inline void cifar10_shuffle(int* perm, int n, uint64_t seed, uint64_t epoch) {
    uint64_t stream = rng_u64(seed, epoch);
    for (int i = 0; i < n; i++) perm[i] = i;
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(rng_u64(stream, (uint64_t)i) % (uint64_t)(i + 1));
        int t = perm[i]; perm[i] = perm[j]; perm[j] = t;
    }
}
