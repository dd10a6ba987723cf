// data/cifar10_from_folders.c — turns an image-folder tree into CIFAR-10's official binary layout,
// and checks such a layout.
//   cifar10_from_folders <image-folder-root> <out-dir>
//       reads <root>/train/<class>/* and <root>/test/<class>/* (32x32 JPEG or PNG images, decoded by
//       data/image_decode.h), writes <out-dir>/data_batch_1..5.bin, test_batch.bin and
//       batches.meta.txt. A record is <1 label byte><1024 R><1024 G><1024 B>, row-major 32x32, and
//       every file holds 10,000 records (30,730,000 bytes), exactly as the official files.
//   cifar10_from_folders --check <dir>          sizes, labels 0..9 and per-class counts of the six files
//   cifar10_from_folders --check-cifar10 <dir>  the same, and the counts must be CIFAR-10's
//                                               (5,000 per class in train, 1,000 in test)
// Every entry of a class folder must be such an image (hidden files aside): a subfolder, FIFO or
// device there is an error, and a file's size and type are checked before it is read.
// Class order is CIFAR-10's (airplane ... truck) when the folder names are exactly CIFAR-10's ten,
// else alphabetical (byte order); it is written to batches.meta.txt, one name a line.
// Records are shuffled with a fixed seed (splitmix64 + Fisher-Yates, no libc rand) so every file
// mixes all classes and the output is byte-identical across machines; directory listings are sorted
// for the same reason. A split whose image count differs from the layout's (50,000 train, 10,000
// test) is filled by repeating images (each one equally often, +-1) or cut to a random subset,
// and the summary says so.
// Outputs are written under temporary names and renamed only once all of them are complete, so a
// killed conversion never leaves a half-written file under a final name.
// Plain C: cc -O2 -o data/cifar10_from_folders data/cifar10_from_folders.c -ljpeg -lm
//   (needs stb_image.h and libjpeg's headers: Debian's libstb-dev and libjpeg62-turbo-dev)
#define _POSIX_C_SOURCE 200809L  // clock_gettime, fsync, fileno, opendir under a strict -std=c99 too
#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <errno.h>
#include <time.h>
#include <dirent.h>
#include <fcntl.h>
#include <unistd.h>
#include <sys/stat.h>
#include "image_decode.h"  // JPEG (libjpeg-turbo) and PNG (stb_image) -> one record's pixels

// ----------------------------------------------------------------------------
// the layout

#define IMG_SIZE 32
#define IMG_BYTES (3 * IMG_SIZE * IMG_SIZE)           // 3072: 1024 R, 1024 G, 1024 B
#define RECORD_BYTES (1 + IMG_BYTES)                   // 3073: the label byte first
#define RECORDS_PER_FILE 10000
#define FILE_BYTES ((long long)RECORDS_PER_FILE * RECORD_BYTES)  // 30,730,000
#define NUM_TRAIN_FILES 5
#define MAX_CLASSES 10                                 // labels are 0..9
#define MAX_NAME 32                                    // the loader keeps names in char[32]
#define SHUFFLE_SEED 0x6C646D2E63ULL                   // "ldm.c": fixed, so outputs are reproducible

static const char* CIFAR10_CLASSES[MAX_CLASSES] = {
    "airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"};
static const char* FILE_NAMES[NUM_TRAIN_FILES + 1] = {
    "data_batch_1.bin", "data_batch_2.bin", "data_batch_3.bin", "data_batch_4.bin",
    "data_batch_5.bin", "test_batch.bin"};

static void* xmalloc(size_t n) {
    void* p = malloc(n);
    if (p == NULL && n > 0) {
        fprintf(stderr, "Error: out of memory (malloc of %zu bytes)\n", n);
        exit(EXIT_FAILURE);
    }
    return p;
}

static double now_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

// ----------------------------------------------------------------------------
// a small deterministic PRNG (splitmix64) and Fisher-Yates on it

static uint64_t splitmix64(uint64_t* state) {
    uint64_t z = (*state += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

// the modulo bias of 2^64 % (i+1) is below 1e-14 for our sizes: irrelevant for a data shuffle
static void shuffle_ints(int* a, int n, uint64_t* state) {
    for (int i = n - 1; i > 0; i--) {
        int j = (int)(splitmix64(state) % (uint64_t)(i + 1));
        int t = a[i]; a[i] = a[j]; a[j] = t;
    }
}

// ----------------------------------------------------------------------------
// directory listings (sorted, hidden entries skipped)

typedef struct { char** names; int n; int cap; } NameList;

static void names_push(NameList* l, const char* s) {
    if (l->n == l->cap) {
        l->cap = l->cap ? 2 * l->cap : 64;
        l->names = (char**)realloc(l->names, (size_t)l->cap * sizeof(char*));
        if (l->names == NULL) { fprintf(stderr, "Error: out of memory listing a directory\n"); exit(EXIT_FAILURE); }
    }
    size_t len = strlen(s) + 1;
    l->names[l->n] = (char*)xmalloc(len);
    memcpy(l->names[l->n], s, len);
    l->n++;
}

static void names_free(NameList* l) {
    for (int i = 0; i < l->n; i++) free(l->names[i]);
    free(l->names);
    l->names = NULL; l->n = l->cap = 0;
}

static int cmp_str(const void* a, const void* b) { return strcmp(*(char* const*)a, *(char* const*)b); }

static const char* file_kind(mode_t mode) {
    if (S_ISDIR(mode)) return "a directory";
    if (S_ISFIFO(mode)) return "a FIFO (named pipe)";
    if (S_ISCHR(mode)) return "a character device";
    if (S_ISBLK(mode)) return "a block device";
    if (S_ISSOCK(mode)) return "a socket";
    return "not a regular file";
}

// errors while decoding first end the "decoding train: N images ..." line on stdout
static int g_progress_line_open = 0;
static void end_progress_line(void) {
    if (!g_progress_line_open) return;
    printf("\n");
    fflush(stdout);
    g_progress_line_open = 0;
}

static void not_an_image_file(const char* path, const char* what) {
    end_progress_line();
    fprintf(stderr, "Error: '%s' is %s, not an image file.\n"
                    "HINT: a class folder holds only its 32x32 JPEG or PNG images; move the rest out.\n", path, what);
    exit(EXIT_FAILURE);
}

// want_dirs: the subdirectories of `dir` (other entries are skipped); else its entries, which must
// all be regular files (or links to them); sorted by name, hidden entries skipped
static NameList list_dir(const char* dir, int want_dirs) {
    NameList l = {NULL, 0, 0};
    DIR* d = opendir(dir);
    if (d == NULL) {
        fprintf(stderr, "Error: cannot open directory '%s': %s\n", dir, strerror(errno));
        fprintf(stderr, "HINT: the image-folder root must hold train/<class>/ and test/<class>/ folders of 32x32 images.\n");
        exit(EXIT_FAILURE);
    }
    struct dirent* e;
    char path[4096];
    while ((e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;  // ".", "..", and hidden files such as .DS_Store
        snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
        struct stat st;
        if (stat(path, &st) != 0) {
            if (want_dirs) continue;
            not_an_image_file(path, "a dangling link or unreadable");
        }
        if (want_dirs) {
            if (S_ISDIR(st.st_mode)) names_push(&l, e->d_name);
        } else {
            if (!S_ISREG(st.st_mode)) not_an_image_file(path, file_kind(st.st_mode));
            names_push(&l, e->d_name);
        }
    }
    closedir(d);
    qsort(l.names, (size_t)l.n, sizeof(char*), cmp_str);
    return l;
}

// ----------------------------------------------------------------------------
// classes: the folder names of train/, ordered as CIFAR-10 when they are CIFAR-10's, else sorted

typedef struct { int n; char names[MAX_CLASSES][MAX_NAME]; int is_cifar10; } Classes;

static Classes find_classes(const char* root) {
    char path[4096];
    snprintf(path, sizeof(path), "%s/train", root);
    NameList train = list_dir(path, 1);
    snprintf(path, sizeof(path), "%s/test", root);
    NameList test = list_dir(path, 1);
    Classes c;
    memset(&c, 0, sizeof(c));
    if (train.n == 0) {
        fprintf(stderr, "Error: '%s/train' has no class folders.\n"
                        "HINT: put the images in %s/train/<class>/ (one folder per class).\n", root, root);
        exit(EXIT_FAILURE);
    }
    if (train.n > MAX_CLASSES) {
        fprintf(stderr, "Error: '%s/train' has %d class folders; CIFAR-10's binary layout holds labels 0..9, so at most %d.\n"
                        "HINT: merge or remove class folders.\n", root, train.n, MAX_CLASSES);
        exit(EXIT_FAILURE);
    }
    // train/ and test/ must name the same classes, else labels would mean different things
    int same = (train.n == test.n);
    for (int i = 0; same && i < train.n; i++) same = strcmp(train.names[i], test.names[i]) == 0;
    if (!same) {
        fprintf(stderr, "Error: the class folders of '%s/train' and '%s/test' differ.\n  train:", root, root);
        for (int i = 0; i < train.n; i++) fprintf(stderr, " %s", train.names[i]);
        fprintf(stderr, "\n  test: ");
        for (int i = 0; i < test.n; i++) fprintf(stderr, " %s", test.names[i]);
        fprintf(stderr, "\nHINT: give test/ the same class folders as train/.\n");
        exit(EXIT_FAILURE);
    }
    for (int i = 0; i < train.n; i++) {
        if (strlen(train.names[i]) >= MAX_NAME) {
            fprintf(stderr, "Error: class folder name '%s' is longer than %d characters.\n"
                            "HINT: rename the folder in train/ and test/.\n", train.names[i], MAX_NAME - 1);
            exit(EXIT_FAILURE);
        }
        if (strpbrk(train.names[i], "\r\n") != NULL) {
            fprintf(stderr, "Error: a class folder name contains a line break; batches.meta.txt holds one name a line.\n"
                            "HINT: rename the folder in train/ and test/.\n");
            exit(EXIT_FAILURE);
        }
    }
    // CIFAR-10's own names: its label order, so labels agree with the official files (that order
    // happens to be alphabetical too; the table states the contract rather than relying on it)
    c.is_cifar10 = (train.n == MAX_CLASSES);
    for (int i = 0; c.is_cifar10 && i < MAX_CLASSES; i++) {
        int found = 0;
        for (int j = 0; j < train.n; j++) found |= strcmp(train.names[j], CIFAR10_CLASSES[i]) == 0;
        c.is_cifar10 = found;
    }
    c.n = train.n;
    for (int i = 0; i < c.n; i++) {
        snprintf(c.names[i], MAX_NAME, "%s", c.is_cifar10 ? CIFAR10_CLASSES[i] : train.names[i]);
    }
    names_free(&train);
    names_free(&test);
    return c;
}

// ----------------------------------------------------------------------------
// decoding one split into records

typedef struct {
    int n;                // images found
    uint8_t* records;     // (n, RECORD_BYTES)
    int count[MAX_CLASSES];
} Split;

// the bytes of image file `path` (*n of them), or exit with a message naming it. The type and size
// are checked on the open descriptor before reading: opened non-blocking, so a FIFO put in place
// of a file after the listing cannot hang the read.
static uint8_t* read_image_file(const char* path, size_t* n) {
    int fd = open(path, O_RDONLY | O_NONBLOCK);
    struct stat st;
    if (fd < 0 || fstat(fd, &st) != 0) {
        end_progress_line();
        fprintf(stderr, "Error: cannot open '%s': %s\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
    if (!S_ISREG(st.st_mode)) not_an_image_file(path, file_kind(st.st_mode));
    if (st.st_size > DECODE_MAX_FILE_BYTES) {
        end_progress_line();
        fprintf(stderr, "Error: '%s' is %lld bytes, more than the %d a 32x32 image could need.\n"
                        "HINT: a class folder holds only its 32x32 JPEG or PNG images; move the rest out.\n",
                path, (long long)st.st_size, DECODE_MAX_FILE_BYTES);
        exit(EXIT_FAILURE);
    }
    size_t size = (size_t)st.st_size, got = 0;
    uint8_t* bytes = (uint8_t*)xmalloc(size + 1);
    while (got < size) {
        ssize_t r = read(fd, bytes + got, size - got);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            end_progress_line();
            fprintf(stderr, "Error: cannot read '%s': %s\n", path, r < 0 ? strerror(errno) : "it shrank while being read");
            exit(EXIT_FAILURE);
        }
        got += (size_t)r;
    }
    close(fd);
    *n = size;
    return bytes;
}

// decode <root>/<split>/<class>/* into CIFAR records; every image must be 32x32
static Split read_split(const char* root, const char* split, const Classes* c) {
    Split s;
    memset(&s, 0, sizeof(s));
    NameList files[MAX_CLASSES];
    char dir[4096], path[8192];
    for (int k = 0; k < c->n; k++) {
        snprintf(dir, sizeof(dir), "%s/%s/%s", root, split, c->names[k]);
        files[k] = list_dir(dir, 0);
        s.count[k] = files[k].n;
        s.n += files[k].n;
    }
    if (s.n == 0) {
        fprintf(stderr, "Error: no images under '%s/%s/<class>/'.\nHINT: put 32x32 images in the class folders.\n", root, split);
        exit(EXIT_FAILURE);
    }
    s.records = (uint8_t*)xmalloc((size_t)s.n * RECORD_BYTES);
    printf("decoding %s: %d images ...", split, s.n);
    fflush(stdout);
    g_progress_line_open = 1;
    double t0 = now_seconds();
    int r = 0;
    for (int k = 0; k < c->n; k++) {
        for (int i = 0; i < files[k].n; i++, r++) {
            snprintf(path, sizeof(path), "%s/%s/%s/%s", root, split, c->names[k], files[k].names[i]);
            size_t n;
            uint8_t* bytes = read_image_file(path, &n);
            uint8_t* rec = s.records + (size_t)r * RECORD_BYTES;
            rec[0] = (uint8_t)k;
            char why[JMSG_LENGTH_MAX + 128];
            DecodeResult res = decode_image_32(bytes, n, rec + 1, why, sizeof(why));
            free(bytes);
            if (res != DECODE_OK) {
                end_progress_line();
                fprintf(stderr, "Error: '%s' %s.\n", path, why);
                if (res == DECODE_BAD_SIZE) {
                    fprintf(stderr, "HINT: resize the images to 32x32 RGB first (e.g. ImageMagick: mogrify -resize 32x32! <files>).\n");
                } else {
                    fprintf(stderr, "HINT: every file in a class folder must be a 32x32 JPEG or PNG image; remove the others.\n");
                }
                exit(EXIT_FAILURE);
            }
        }
        names_free(&files[k]);
    }
    printf(" done in %.1fs\n", now_seconds() - t0);
    g_progress_line_open = 0;
    return s;
}

// the record order of `want` output records: every image an equal number of times (+-1) when the
// split is smaller than the layout, a random subset when it is larger, always shuffled so each file
// mixes all classes
static int* record_order(int n_images, int want, uint64_t* rng) {
    int* order = (int*)xmalloc((size_t)want * sizeof(int));
    int* perm = (int*)xmalloc((size_t)n_images * sizeof(int));
    for (int filled = 0; filled < want;) {
        for (int i = 0; i < n_images; i++) perm[i] = i;
        shuffle_ints(perm, n_images, rng);
        for (int i = 0; i < n_images && filled < want; i++) order[filled++] = perm[i];
    }
    shuffle_ints(order, want, rng);  // the last, partial round must not cluster at the end
    free(perm);
    return order;
}

// ----------------------------------------------------------------------------
// writing (temporary names, renamed at the end)

static void write_or_die(const void* p, size_t n, FILE* f, const char* path) {
    if (fwrite(p, 1, n, f) != n) {
        fprintf(stderr, "Error: cannot write '%s': %s\nHINT: is the disk full?\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
}

static void close_synced(FILE* f, const char* path) {
    if (fflush(f) != 0 || fsync(fileno(f)) != 0 || fclose(f) != 0) {
        fprintf(stderr, "Error: cannot write '%s': %s\nHINT: is the disk full?\n", path, strerror(errno));
        exit(EXIT_FAILURE);
    }
}

// writes `nfiles` files of RECORDS_PER_FILE records, record r being images[order[r]]
static void write_records(const char* out_dir, int first_file, int nfiles, const Split* s,
                          const int* order, int count_out[MAX_CLASSES]) {
    char tmp[4096];
    for (int f = 0; f < nfiles; f++) {
        snprintf(tmp, sizeof(tmp), "%s/%s.tmp", out_dir, FILE_NAMES[first_file + f]);
        FILE* fp = fopen(tmp, "wb");
        if (fp == NULL) {
            fprintf(stderr, "Error: cannot create '%s': %s\n", tmp, strerror(errno));
            exit(EXIT_FAILURE);
        }
        for (int i = 0; i < RECORDS_PER_FILE; i++) {
            const uint8_t* rec = s->records + (size_t)order[f * RECORDS_PER_FILE + i] * RECORD_BYTES;
            count_out[rec[0]]++;
            write_or_die(rec, RECORD_BYTES, fp, tmp);
        }
        close_synced(fp, tmp);
    }
}

static void make_dirs(const char* path) {
    if (path[0] == '\0') {
        fprintf(stderr, "Error: the output directory is an empty string.\n");
        exit(EXIT_FAILURE);
    }
    char buf[4096];
    snprintf(buf, sizeof(buf), "%s", path);
    for (char* p = buf + 1; ; p++) {
        if (*p == '/' || *p == '\0') {
            char saved = *p;
            *p = '\0';
            if (mkdir(buf, 0755) != 0 && errno != EEXIST) {
                fprintf(stderr, "Error: cannot create directory '%s': %s\n", buf, strerror(errno));
                exit(EXIT_FAILURE);
            }
            *p = saved;
            if (saved == '\0') break;
        }
    }
}

static void rename_into_place(const char* out_dir, const char* name) {
    char tmp[4096], dst[4096];
    snprintf(tmp, sizeof(tmp), "%s/%s.tmp", out_dir, name);
    snprintf(dst, sizeof(dst), "%s/%s", out_dir, name);
    if (rename(tmp, dst) != 0) {
        fprintf(stderr, "Error: cannot rename '%s' to '%s': %s\n", tmp, dst, strerror(errno));
        exit(EXIT_FAILURE);
    }
}

static void describe_fill(const char* split, int n_images, int want) {
    if (n_images == want) return;
    if (n_images < want) {
        printf("note: %s has %d images but the binary layout holds %d records: each image is written "
               "%d or %d times.\n", split, n_images, want, want / n_images, (want + n_images - 1) / n_images);
    } else {
        printf("WARNING: %s has %d images but the binary layout holds %d records: %d images (a random subset, "
               "fixed seed) are left out.\n", split, n_images, want, n_images - want);
    }
}

static int convert(const char* root, const char* out_dir) {
    double t0 = now_seconds();
    Classes c = find_classes(root);
    printf("classes (%s order): ", c.is_cifar10 ? "CIFAR-10" : "alphabetical");
    for (int k = 0; k < c.n; k++) printf("%d=%s%s", k, c.names[k], k + 1 < c.n ? " " : "\n");

    Split train = read_split(root, "train", &c);
    Split test = read_split(root, "test", &c);
    uint64_t rng = SHUFFLE_SEED;
    const int n_train_out = NUM_TRAIN_FILES * RECORDS_PER_FILE;
    int* train_order = record_order(train.n, n_train_out, &rng);
    int* test_order = record_order(test.n, RECORDS_PER_FILE, &rng);

    make_dirs(out_dir);
    int train_out[MAX_CLASSES] = {0}, test_out[MAX_CLASSES] = {0};
    write_records(out_dir, 0, NUM_TRAIN_FILES, &train, train_order, train_out);
    write_records(out_dir, NUM_TRAIN_FILES, 1, &test, test_order, test_out);
    char tmp[4096];
    snprintf(tmp, sizeof(tmp), "%s/batches.meta.txt.tmp", out_dir);
    FILE* fp = fopen(tmp, "w");
    if (fp == NULL) {
        fprintf(stderr, "Error: cannot create '%s': %s\n", tmp, strerror(errno));
        exit(EXIT_FAILURE);
    }
    for (int k = 0; k < c.n; k++) fprintf(fp, "%s\n", c.names[k]);
    close_synced(fp, tmp);
    // every output is complete: only now do they take their final names
    for (int f = 0; f < NUM_TRAIN_FILES + 1; f++) rename_into_place(out_dir, FILE_NAMES[f]);
    rename_into_place(out_dir, "batches.meta.txt");

    printf("%-3s %-31s %8s %8s %9s %8s\n", "", "class", "train", "test", "train rec", "test rec");
    for (int k = 0; k < c.n; k++) {
        printf("%-3d %-31s %8d %8d %9d %8d\n", k, c.names[k], train.count[k], test.count[k], train_out[k], test_out[k]);
    }
    printf("%-3s %-31s %8d %8d %9d %8d\n", "", "total", train.n, test.n, n_train_out, RECORDS_PER_FILE);
    describe_fill("train", train.n, n_train_out);
    describe_fill("test", test.n, RECORDS_PER_FILE);
    printf("wrote %s/{data_batch_1..5.bin, test_batch.bin} (%d records of %d bytes each) and batches.meta.txt in %.1fs\n",
           out_dir, RECORDS_PER_FILE, RECORD_BYTES, now_seconds() - t0);
    free(train_order); free(test_order);
    free(train.records); free(test.records);
    return 0;
}

// ----------------------------------------------------------------------------
// --check: the six files as the trainers' loader will see them

// one binary file `path` (in `dir`, for the hint) read into buf (FILE_BYTES): its size and labels below
// max_label are checked, its labels counted into counts; returns 1 after printing the problem
static int check_file(const char* path, const char* dir, uint8_t* buf, int max_label, int num_names, int* counts) {
    struct stat st;
    if (stat(path, &st) != 0) {
        fprintf(stderr, "Error: '%s' is missing (%s).\nHINT: run `make data`.\n", path, strerror(errno));
        return 1;
    }
    if ((long long)st.st_size != FILE_BYTES) {
        fprintf(stderr, "Error: '%s' is %lld bytes, expected %lld (%d records of %d bytes): the file is %s.\n"
                        "HINT: delete '%s' and run `make data` again.\n",
                path, (long long)st.st_size, FILE_BYTES, RECORDS_PER_FILE, RECORD_BYTES,
                (long long)st.st_size < FILE_BYTES ? "truncated" : "too large, not CIFAR-10's binary layout", dir);
        return 1;
    }
    FILE* fp = fopen(path, "rb");
    size_t got = fp ? fread(buf, 1, (size_t)FILE_BYTES, fp) : 0;
    if (fp) fclose(fp);
    if (got != (size_t)FILE_BYTES) {
        fprintf(stderr, "Error: cannot read '%s' (%zu of %lld bytes): %s\n", path, got, FILE_BYTES,
                fp ? "the file changed while reading" : strerror(errno));
        return 1;
    }
    for (int r = 0; r < RECORDS_PER_FILE; r++) {
        int label = buf[(size_t)r * RECORD_BYTES];
        if (label >= max_label) {
            fprintf(stderr, "Error: '%s' record %d has label %d, expected 0..%d%s.\n"
                            "HINT: the file is damaged or not CIFAR-10's binary layout; delete '%s' and run `make data` again.\n",
                    path, r, label, max_label - 1, num_names > 0 ? " (batches.meta.txt names that many classes)" : "", dir);
            return 1;
        }
        counts[label]++;
    }
    return 0;
}

static int check(const char* dir, int strict_cifar10) {
    int num_names = 0;
    char line[256];
    char meta[4096];
    snprintf(meta, sizeof(meta), "%s/batches.meta.txt", dir);
    FILE* mf = fopen(meta, "r");
    if (mf != NULL) {
        while (fgets(line, sizeof(line), mf) != NULL) {
            if (strspn(line, " \t\r\n") < strlen(line)) num_names++;
        }
        fclose(mf);
        if (num_names > MAX_CLASSES) {
            fprintf(stderr, "Error: '%s' names %d classes; the binary layout holds labels 0..9.\n"
                            "HINT: fix or delete batches.meta.txt.\n", meta, num_names);
            return 1;
        }
    }
    int max_label = num_names > 0 ? num_names : MAX_CLASSES;  // labels are 0..max_label-1
    int counts[NUM_TRAIN_FILES + 1][MAX_CLASSES];
    memset(counts, 0, sizeof(counts));
    uint8_t* buf = (uint8_t*)xmalloc((size_t)FILE_BYTES);   // one file at a time
    char path[4096];
    for (int f = 0; f < NUM_TRAIN_FILES + 1; f++) {
        snprintf(path, sizeof(path), "%s/%s", dir, FILE_NAMES[f]);
        if (check_file(path, dir, buf, max_label, num_names, counts[f]) != 0) {
            free(buf);
            return 1;
        }
    }
    free(buf);
    int ok = 1;
    printf("%-6s", "label");
    for (int f = 0; f < NUM_TRAIN_FILES; f++) printf("  batch_%d", f + 1);
    printf(" %8s %8s\n", "test", "train");
    for (int k = 0; k < max_label; k++) {
        int train_total = 0;
        for (int f = 0; f < NUM_TRAIN_FILES; f++) train_total += counts[f][k];
        printf("%-6d", k);
        for (int f = 0; f < NUM_TRAIN_FILES + 1; f++) printf(" %8d", counts[f][k]);
        printf(" %8d\n", train_total);
        if (strict_cifar10 && (train_total != 5000 || counts[NUM_TRAIN_FILES][k] != 1000)) {
            fprintf(stderr, "Error: class %d has %d train and %d test records; CIFAR-10 has 5000 and 1000.\n",
                    k, train_total, counts[NUM_TRAIN_FILES][k]);
            ok = 0;
        }
    }
    if (strict_cifar10 && num_names != MAX_CLASSES) {
        fprintf(stderr, "Error: '%s' names %d classes; CIFAR-10 has 10.\n", meta, num_names);
        ok = 0;
    }
    if (!ok) {
        fprintf(stderr, "HINT: the data is not CIFAR-10 as expected; delete '%s' and run `make data` again.\n", dir);
        return 1;
    }
    printf("%s: 6 files of %lld bytes, labels valid%s\n", dir, FILE_BYTES,
           strict_cifar10 ? ", CIFAR-10's class counts (5000 train, 1000 test per class)" : "");
    return 0;
}

// ----------------------------------------------------------------------------

static void usage(FILE* f) {
    fprintf(f, "usage: cifar10_from_folders <image-folder-root> <out-dir>\n"
               "         converts <root>/train/<class>/* and <root>/test/<class>/* (32x32 images) into\n"
               "         CIFAR-10's binary layout: <out-dir>/data_batch_1..5.bin, test_batch.bin, batches.meta.txt\n"
               "       cifar10_from_folders --check <dir>          validate the six files (sizes, labels)\n"
               "       cifar10_from_folders --check-cifar10 <dir>  ... and require CIFAR-10's class counts\n");
}

int main(int argc, char** argv) {
    if (argc == 2 && (strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0)) {
        usage(stdout);
        return 0;
    }
    if (argc != 3) {
        fprintf(stderr, "Error: expected 2 arguments, got %d.\n", argc - 1);
        usage(stderr);
        return 1;
    }
    if (strcmp(argv[1], "--check") == 0) return check(argv[2], 0);
    if (strcmp(argv[1], "--check-cifar10") == 0) return check(argv[2], 1);
    if (argv[1][0] == '-') {
        fprintf(stderr, "Error: unknown flag '%s'.\n", argv[1]);
        usage(stderr);
        return 1;
    }
    return convert(argv[1], argv[2]);
}
