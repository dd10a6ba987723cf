// tests/test_tensorboard.h — test_tensorboard(): ldmc/tensorboard.h and ldmc/image.h against files
// written by TensorBoard's and PyTorch's own code (dev/refs_tensorboard.py):
//   - the same records written with our writer (same fixed wall_time) equal the reference byte for
//     byte (file_version, the SessionLog START and the scalars); the image record agrees field by
//     field, and its PNG, decoded with stb_image, holds the reference pixels (PNG bytes differ
//     between encoders);
//   - every record's two CRCs in both files verify with a bitwise CRC32C written here (not the
//     writer's table), so a corrupted CRC in the writer fails;
//   - tb_open's file name, directory creation, clock wall_time and START step;
//   - image grids, PNG files and CIFAR-10 records against numpy's results.
// Host-only code: it runs in the CPU pass and returns at once on other devices.
#pragma once

#include <dirent.h>
#include "ldmc/testing.h"
#include "ldmc/safetensors.h"
#include "ldmc/tensorboard.h"

// stb_image decodes the PNGs (static, PNG only); nvcc's front end warns about two variables in
// stb's own code (#550 "set but never used"), which are not ours to fix
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_PNG
#pragma nv_diag_suppress 550
#include "stb_image.h"
#pragma nv_diag_default 550

#define TBT_REF_EVENTS "dev/ref/tensorboard_ref.tfevents"
#define TBT_REF_TENSORS "dev/ref/tensorboard_ref.safetensors"

// the records dev/refs_tensorboard.py writes (keep in step with SCALARS / IMAGE_* / WALL_TIME /
// START_STEP there)
static const double TBT_WALL_TIME = 1712345678.125;
static const long TBT_START_STEP = 127;  // the reference's START record says step 128
typedef struct { const char* tag; double value; int64_t step; } TBTScalar;
static const TBTScalar TBT_SCALARS[] = {
    {"train/loss", 0.0, 0},
    {"train/loss", 0.123456789, 1},
    {"train/lr", 3e-4, 1},
    {"train/loss", -2.5e-3, 300000},
    {"train/grad_norm", NAN, (int64_t)1 << 40},
    {"test/mse", 1234.5678, 2147483653LL},
};
#define TBT_NUM_SCALARS ((int)(sizeof(TBT_SCALARS) / sizeof(TBT_SCALARS[0])))
static const char* TBT_IMAGE_TAG = "samples/grid";
static const int64_t TBT_IMAGE_STEP = 7;
static const int TBT_IMAGE_H = 8, TBT_IMAGE_W = 16;

// ----------------------------------------------------------------------------
// an independent reader: bitwise CRC32C, TFRecord framing, the few protobuf fields

static inline uint32_t tbt_crc32c_bitwise(const uint8_t* p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c & 1u) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    }
    return ~c;
}
static inline uint32_t tbt_masked(const uint8_t* p, size_t n) {
    uint32_t c = tbt_crc32c_bitwise(p, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}
static inline uint64_t tbt_le(const uint8_t* p, int nbytes) {
    uint64_t v = 0;
    for (int i = nbytes - 1; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

typedef struct { uint8_t* file; size_t size; int n; const uint8_t* data[16]; size_t len[16]; } TBTRecords;

// splits a file into records; returns the number of framing or CRC problems (described in msg)
static inline int tbt_read_records(const char* path, TBTRecords* r, char* msg, size_t msglen) {
    memset(r, 0, sizeof(*r));
    msg[0] = '\0';
    FILE* fp = fopenCheck(path, "rb");
    fseek(fp, 0, SEEK_END);
    r->size = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    r->file = (uint8_t*)mallocCheck(r->size);
    freadCheck(r->file, 1, r->size, fp);
    fclose(fp);
    int bad = 0;
    size_t pos = 0;
    while (pos < r->size) {
        if (r->size - pos < 16 || r->n == 16) {
            snprintf(msg, msglen, "truncated or too many records at byte %zu", pos); return bad + 1;
        }
        const uint8_t* h = r->file + pos;
        uint64_t len = tbt_le(h, 8);
        if (len > r->size - pos - 16) { snprintf(msg, msglen, "record at byte %zu overruns the file", pos); return bad + 1; }
        if (tbt_le(h + 8, 4) != tbt_masked(h, 8)) {
            if (!bad++) snprintf(msg, msglen, "record %d: length CRC wrong", r->n);
        }
        if (tbt_le(h + 12 + len, 4) != tbt_masked(h + 12, len)) {
            if (!bad++) snprintf(msg, msglen, "record %d: data CRC wrong", r->n);
        }
        r->data[r->n] = h + 12;
        r->len[r->n] = len;
        r->n++;
        pos += 16 + len;
    }
    return bad;
}

// one protobuf field: key, then a varint / fixed value or a length-delimited slice; 0 at the end or on bad input
typedef struct { int field, wire; uint64_t v; const uint8_t* bytes; size_t len; } TBTField;
static inline int tbt_varint(const uint8_t** p, const uint8_t* end, uint64_t* v) {
    *v = 0;
    for (int shift = 0; *p < end && shift < 64; shift += 7) {
        uint8_t b = *(*p)++;
        *v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) return 1;
    }
    return 0;
}
static inline int tbt_next(const uint8_t** p, const uint8_t* end, TBTField* f) {
    uint64_t key;
    if (*p >= end || !tbt_varint(p, end, &key)) return 0;
    f->field = (int)(key >> 3);
    f->wire = (int)(key & 7);
    f->bytes = NULL;
    f->len = 0;
    if (f->wire == 0) return tbt_varint(p, end, &f->v);
    int n = f->wire == 1 ? 8 : f->wire == 5 ? 4 : 0;
    if (f->wire == 2) { if (!tbt_varint(p, end, &f->v) || f->v > (uint64_t)(end - *p)) return 0; n = (int)f->v; f->bytes = *p; f->len = n; }
    if (n == 0 && f->wire != 2) return 0;
    if ((size_t)(end - *p) < (size_t)n) return 0;
    if (f->wire != 2) f->v = tbt_le(*p, n);
    *p += n;
    return 1;
}

typedef struct {
    double wall_time; int64_t step; int session_status; char tag[64]; int has_scalar; float scalar;
    int height, width, colorspace; const uint8_t* png; size_t png_len; int ok;
} TBTEvent;

static inline TBTEvent tbt_parse_event(const uint8_t* data, size_t len) {
    TBTEvent e;
    memset(&e, 0, sizeof(e));
    e.ok = 1;
    TBTField f, g, h, k;
    const uint8_t *p = data, *end = data + len;
    while (tbt_next(&p, end, &f)) {
        if (f.field == 1) { memcpy(&e.wall_time, &f.v, 8); }
        else if (f.field == 2) { e.step = (int64_t)f.v; }
        else if (f.field == 7) {  // SessionLog { SessionStatus status = 1 }
            const uint8_t *q = f.bytes, *qe = f.bytes + f.len;
            while (tbt_next(&q, qe, &g)) if (g.field == 1) e.session_status = (int)g.v;
        }
        else if (f.field == 5) {  // Summary { Value value = 1 }
            const uint8_t *q = f.bytes, *qe = f.bytes + f.len;
            while (tbt_next(&q, qe, &g)) {
                if (g.field != 1) continue;
                const uint8_t *r = g.bytes, *re = g.bytes + g.len;
                while (tbt_next(&r, re, &h)) {  // Value
                    if (h.field == 1) snprintf(e.tag, sizeof(e.tag), "%.*s", (int)h.len, (const char*)h.bytes);
                    if (h.field == 2) { uint32_t b = (uint32_t)h.v; memcpy(&e.scalar, &b, 4); e.has_scalar = 1; }
                    if (h.field == 4) {
                        const uint8_t *s = h.bytes, *se = h.bytes + h.len;
                        while (tbt_next(&s, se, &k)) {  // Image
                            if (k.field == 1) e.height = (int)k.v;
                            if (k.field == 2) e.width = (int)k.v;
                            if (k.field == 3) e.colorspace = (int)k.v;
                            if (k.field == 4) { e.png = k.bytes; e.png_len = k.len; }
                        }
                    }
                }
            }
        }
    }
    if (p != end) e.ok = 0;
    return e;
}

// a PNG decoded to RGB and widened to floats (for check_close); NULL if stb_image cannot decode it
static inline float* tbt_decode_png(const uint8_t* png, size_t len, int* h, int* w) {
    int comp;
    uint8_t* px = stbi_load_from_memory(png, (int)len, w, h, &comp, 3);
    if (px == NULL) return NULL;
    size_t n = (size_t)(*h) * (*w) * 3;
    float* out = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) out[i] = px[i];
    stbi_image_free(px);
    return out;
}

static inline float* tbt_bytes_to_floats(const uint8_t* b, size_t n) {
    float* out = (float*)mallocCheck(n * sizeof(float));
    for (size_t i = 0; i < n; i++) out[i] = b[i];
    return out;
}

static inline void tbt_temp_dir(char* out, size_t n) {
    const char* tmp = getenv("TMPDIR");
    snprintf(out, n, "%s/ldmc_test_tb_XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    if (mkdtemp(out) == NULL) {
        fprintf(stderr, "Error: cannot create a temporary directory %s: %s\n", out, strerror(errno));
        exit(EXIT_FAILURE);
    }
}

// ----------------------------------------------------------------------------
// the tests

static inline void test_tensorboard_events(const SafeTensors* st, const char* dir) {
    char path[1200], msg[160], detail[256];
    snprintf(path, sizeof(path), "%s/ours.tfevents", dir);
    const float* ref_rgb_f = safetensors_get_f32(st, "image_rgb", (size_t)TBT_IMAGE_H * TBT_IMAGE_W * 3);
    uint8_t rgb[TBT_IMAGE_H * TBT_IMAGE_W * 3];
    for (int i = 0; i < TBT_IMAGE_H * TBT_IMAGE_W * 3; i++) rgb[i] = (uint8_t)ref_rgb_f[i];

    TBWriter tb;
    tb_open_file(&tb, path, TBT_WALL_TIME, TBT_START_STEP);
    for (int i = 0; i < TBT_NUM_SCALARS; i++) {
        tb_add_scalar(&tb, TBT_SCALARS[i].tag, (float)TBT_SCALARS[i].value, TBT_SCALARS[i].step);
    }
    tb_add_image(&tb, TBT_IMAGE_TAG, rgb, TBT_IMAGE_H, TBT_IMAGE_W, TBT_IMAGE_STEP);
    tb_close(&tb);

    int expected = 3 + TBT_NUM_SCALARS;  // file_version, START, scalars, image
    TBTRecords ref, ours;
    int bad = tbt_read_records(TBT_REF_EVENTS, &ref, msg, sizeof(msg));
    snprintf(detail, sizeof(detail), "%d records, %d expected, %d bad CRCs%s%s", ref.n, expected, bad,
             bad ? ", first: " : "", msg);
    check_true("host tensorboard reference file CRCs", bad == 0 && ref.n == expected, detail);
    bad = tbt_read_records(path, &ours, msg, sizeof(msg));
    snprintf(detail, sizeof(detail), "%d records, %d expected, %d bad CRCs%s%s", ours.n, expected, bad,
             bad ? ", first: " : "", msg);
    int ours_ok = check_true("host tensorboard ldm.c file CRCs", bad == 0 && ours.n == expected, detail);
    remove(path);
    if (!ours_ok || ref.n != expected || ours.n != expected) { free(ref.file); free(ours.file); return; }

    // file_version, START and scalar records: identical bytes
    int same = 0, nsame = 2 + TBT_NUM_SCALARS;
    detail[0] = '\0';
    for (int i = 0; i < nsame; i++) {
        if (ours.len[i] == ref.len[i] && memcmp(ours.data[i], ref.data[i], ref.len[i]) == 0) same++;
        else if (!detail[0]) snprintf(detail, sizeof(detail), "record %d differs (%zu vs %zu bytes)", i, ours.len[i], ref.len[i]);
    }
    if (!detail[0]) snprintf(detail, sizeof(detail), "%d of %d records byte-identical", same, nsame);
    check_true("host tensorboard file_version, START, scalar records", same == nsame, detail);
    TBTEvent start = tbt_parse_event(ref.data[1], ref.len[1]);
    snprintf(detail, sizeof(detail), "reference record 1: SessionLog status %d at step %lld (START = 1 at %ld + 1)",
             start.session_status, (long long)start.step, TBT_START_STEP);
    check_true("host tensorboard reference START record", start.ok && start.session_status == 1
               && start.step == TBT_START_STEP + 1, detail);

    // the image record, field by field
    TBTEvent a = tbt_parse_event(ours.data[expected - 1], ours.len[expected - 1]);
    TBTEvent b = tbt_parse_event(ref.data[expected - 1], ref.len[expected - 1]);
    int fields_ok = a.ok && b.ok && a.wall_time == b.wall_time && a.wall_time == TBT_WALL_TIME
                    && a.step == b.step && a.step == TBT_IMAGE_STEP && strcmp(a.tag, b.tag) == 0
                    && strcmp(a.tag, TBT_IMAGE_TAG) == 0 && a.height == b.height && a.height == TBT_IMAGE_H
                    && a.width == b.width && a.width == TBT_IMAGE_W && a.colorspace == b.colorspace
                    && a.colorspace == 3 && !a.has_scalar && a.png != NULL;
    snprintf(detail, sizeof(detail), "ours: %s step %lld %dx%d cs %d wall %.3f png %zu B; ref: %s step %lld %dx%d cs %d png %zu B",
             a.tag, (long long)a.step, a.height, a.width, a.colorspace, a.wall_time, a.png_len,
             b.tag, (long long)b.step, b.height, b.width, b.colorspace, b.png_len);
    check_true("host tensorboard image record fields", fields_ok, detail);

    size_t npx = (size_t)TBT_IMAGE_H * TBT_IMAGE_W * 3;
    int h = 0, w = 0;
    float* px = a.png ? tbt_decode_png(a.png, a.png_len, &h, &w) : NULL;
    if (px && h == TBT_IMAGE_H && w == TBT_IMAGE_W) check_close("host tensorboard image pixels (ours)", px, ref_rgb_f, npx, 0.0f);
    else check_true("host tensorboard image pixels (ours)", 0, "PNG did not decode to 8x16 RGB");
    free(px);
    px = b.png ? tbt_decode_png(b.png, b.png_len, &h, &w) : NULL;
    if (px && h == TBT_IMAGE_H && w == TBT_IMAGE_W) check_close("host tensorboard image pixels (reference)", px, ref_rgb_f, npx, 0.0f);
    else check_true("host tensorboard image pixels (reference)", 0, "PNG did not decode to 8x16 RGB");
    free(px);
    free(ref.file);
    free(ours.file);
}

// tb_open: creates the run directory, names the file events.out.tfevents.<time>.<host>.<pid>,
// stamps records with the clock, starts the session after the given step
static inline void test_tensorboard_open(const char* dir) {
    char run[1200], detail[400], msg[160];
    snprintf(run, sizeof(run), "%s/runs/demo", dir);
    double now = (double)time(NULL);
    TBWriter tb;
    tb_open(&tb, run, 4000);
    tb_add_scalar(&tb, "train/loss", 1.0f, 4001);
    tb_close(&tb);
    DIR* d = opendir(run);
    char name[512] = "";
    int files = 0;
    struct dirent* ent;
    while (d && (ent = readdir(d)) != NULL) {
        if (ent->d_name[0] == '.') continue;
        files++;
        snprintf(name, sizeof(name), "%s", ent->d_name);
    }
    if (d) closedir(d);
    char path[1800];
    snprintf(path, sizeof(path), "%s/%s", run, name);
    TBTRecords r;
    memset(&r, 0, sizeof(r));
    int bad = files == 1 ? tbt_read_records(path, &r, msg, sizeof(msg)) : 0;
    int ok = files == 1 && strncmp(name, "events.out.tfevents.", 20) == 0 && bad == 0 && r.n == 3;
    TBTEvent start, scalar;
    memset(&start, 0, sizeof(start));
    memset(&scalar, 0, sizeof(scalar));
    if (ok) { start = tbt_parse_event(r.data[1], r.len[1]); scalar = tbt_parse_event(r.data[2], r.len[2]); }
    double wall = scalar.wall_time;
    ok = ok && fabs(wall - now) < 60.0 && start.session_status == 1 && start.step == 4001;
    if (bad) snprintf(detail, sizeof(detail), "%s: %d bad CRCs, first: %s", name, bad, msg);
    else snprintf(detail, sizeof(detail), "%d file(s): %s, %d records, START at step %lld, wall_time %.1f s from the clock",
                  files, name, r.n, (long long)start.step, wall - now);
    check_true("host tensorboard tb_open run dir + clock", ok, detail);
    free(r.file);
    if (files == 1) remove(path);
    rmdir(run);
    snprintf(run, sizeof(run), "%s/runs", dir);
    rmdir(run);
}

static inline void test_image_outputs(const SafeTensors* st, const char* dir) {
    char detail[256];
    // grid: 5 images of 4x3 (H != W catches a swap), 2 per row -> 3 rows, the last cell black
    const SafeTensorInfo* gi = safetensors_find(st, "grid_images");
    const char* cols_s = safetensors_meta(st, "grid_cols");
    if (gi == NULL || gi->ndim != 4 || cols_s == NULL) {
        check_true("host image grid layout", 0, "grid_images / grid_cols missing in " TBT_REF_TENSORS);
        return;
    }
    int n = (int)gi->shape[0], ih = (int)gi->shape[2], iw = (int)gi->shape[3], cols = atoi(cols_s);
    const float* images = safetensors_get_f32(st, "grid_images", 0);
    int gh, gw;
    uint8_t* grid = image_grid_rgb(images, n, ih, iw, cols, &gh, &gw);
    int rows = (n + cols - 1) / cols;
    const float* ref_grid = safetensors_get_f32(st, "grid_rgb", (size_t)rows * ih * cols * iw * 3);
    float* got = tbt_bytes_to_floats(grid, (size_t)gh * gw * 3);
    if (gh == rows * ih && gw == cols * iw) check_close("host image grid layout", got, ref_grid, (size_t)gh * gw * 3, 0.0f);
    else check_true("host image grid layout", 0, "wrong grid size");
    free(got);

    // PNG file: written atomically (no temporary left behind), decodes to the same pixels
    char path[1200];
    snprintf(path, sizeof(path), "%s/grid.png", dir);
    image_write_png(path, grid, gh, gw);
    FILE* fp = fopenCheck(path, "rb");
    fseek(fp, 0, SEEK_END);
    size_t len = (size_t)ftell(fp);
    fseek(fp, 0, SEEK_SET);
    uint8_t* png = (uint8_t*)mallocCheck(len);
    freadCheck(png, 1, len, fp);
    fclose(fp);
    int h = 0, w = 0, leftovers = 0;
    float* px = tbt_decode_png(png, len, &h, &w);
    DIR* d = opendir(dir);
    struct dirent* ent;
    while (d && (ent = readdir(d)) != NULL) leftovers += strstr(ent->d_name, ".tmp") != NULL;
    if (d) closedir(d);
    snprintf(detail, sizeof(detail), "%zu-byte PNG decodes to %dx%d, %d temporary files left", len, h, w, leftovers);
    check_true("host image PNG file", px != NULL && h == gh && w == gw && leftovers == 0, detail);
    if (px && h == gh && w == gw) check_close("host image PNG file pixels", px, ref_grid, (size_t)gh * gw * 3, 0.0f);
    free(px);
    free(png);
    free(grid);
    remove(path);

    // CIFAR-10 records, labelled and unconditional (label byte 255)
    const float* raw = safetensors_get_f32(st, "raw_images", 2 * CIFAR_IMAGE_BYTES);
    const float* ref_rec = safetensors_get_f32(st, "raw_records", 2 * CIFAR_RECORD_BYTES);
    int labels[2] = {3, 9};
    uint8_t rec[2 * CIFAR_RECORD_BYTES];
    image_to_cifar_records(rec, raw, labels, 2);
    got = tbt_bytes_to_floats(rec, sizeof(rec));
    check_close("host image CIFAR-10 records", got, ref_rec, sizeof(rec), 0.0f);
    free(got);
    uint8_t rec_u[2 * CIFAR_RECORD_BYTES];
    image_to_cifar_records(rec_u, raw, NULL, 2);
    int uncond_ok = rec_u[0] == 255 && rec_u[CIFAR_RECORD_BYTES] == 255
                    && memcmp(rec_u + 1, rec + 1, CIFAR_IMAGE_BYTES) == 0
                    && memcmp(rec_u + CIFAR_RECORD_BYTES + 1, rec + CIFAR_RECORD_BYTES + 1, CIFAR_IMAGE_BYTES) == 0;
    check_true("host image CIFAR-10 records, no labels", uncond_ok, "label bytes 255, same pixels");
}

static inline void test_tensorboard(void) {
    if (g_device != DEVICE_CPU) return;  // host code only: the CPU pass covers it
    SafeTensors st;
    safetensors_load(TBT_REF_TENSORS, &st);
    char dir[1024];
    tbt_temp_dir(dir, sizeof(dir));
    test_tensorboard_events(&st, dir);
    test_tensorboard_open(dir);
    test_image_outputs(&st, dir);
    rmdir(dir);
    safetensors_free(&st);
}
