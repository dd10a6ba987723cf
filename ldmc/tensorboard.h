// ldmc/tensorboard.h — a TensorBoard event-file writer (scalars and PNG images) with no protobuf
// library: the five messages it needs are encoded by hand.
// An event file (events.out.tfevents.*) is a sequence of TFRecords, each
//   uint64 length (little-endian) | uint32 masked CRC32C of those 8 bytes | data | uint32 masked CRC32C of data
// and each record's data is one serialized tensorboard.Event (tensorboard/compat/proto/event.proto,
// summary.proto; proto3, so zero-valued scalar fields are left out, as protobuf's own writer does):
//   Event      { double wall_time = 1; int64 step = 2;
//                oneof what { string file_version = 3; Summary summary = 5; SessionLog session_log = 7; } }
//   SessionLog { SessionStatus status = 1; }   (enum: START = 1)
//   Summary    { repeated Value value = 1; }
//   Value      { string tag = 1; oneof value { float simple_value = 2; Image image = 4; } }
//   Image      { int32 height = 1; int32 width = 2; int32 colorspace = 3; bytes encoded_image_string = 4; }
// A file starts with file_version "brain.Event:2", then a SessionLog START (see tb_open). Summaries are
// the "legacy" ones torch.utils.tensorboard.SummaryWriter writes; TensorBoard reads them as scalars and images.
// Usage: tb_open(&tb, "runs/name", opt.step); tb_add_scalar(&tb, "train/loss", loss, step); ...; tb_close(&tb);
#pragma once

#include <unistd.h>
#include <sys/stat.h>
#include "common.cuh"
#include "image.h"

// ----------------------------------------------------------------------------
// CRC32C (Castagnoli, reflected polynomial 0x82F63B78), one table lookup per byte

static uint32_t tb_crc_table[256];

static inline void tb_crc_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0x82F63B78u & (0u - (c & 1u)));
        tb_crc_table[i] = c;
    }
}

static inline uint32_t tb_crc32c(const uint8_t* data, size_t n) {
    if (tb_crc_table[1] == 0) tb_crc_init();  // entry 1 is the polynomial once built
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) c = tb_crc_table[(c ^ data[i]) & 0xFFu] ^ (c >> 8);
    return c ^ 0xFFFFFFFFu;
}

// TFRecord stores CRCs "masked" (rotated and offset), so a CRC of data that itself holds CRCs
// does not degenerate
static inline uint32_t tb_masked_crc32c(const uint8_t* data, size_t n) {
    uint32_t c = tb_crc32c(data, n);
    return ((c >> 15) | (c << 17)) + 0xa282ead8u;
}

// ----------------------------------------------------------------------------
// protobuf encoding: varints, fixed-width little-endian numbers, length-delimited fields

typedef ImageBytes TBBuf;  // the growable byte buffer of image.h

static void tb_put(TBBuf* b, const void* data, size_t n) { image_bytes_append(b, (void*)data, (int)n); }

static inline void tb_put_varint(TBBuf* b, uint64_t v) {
    uint8_t bytes[10];
    int n = 0;
    while (v >= 0x80) { bytes[n++] = (uint8_t)(v | 0x80); v >>= 7; }
    bytes[n++] = (uint8_t)v;
    tb_put(b, bytes, n);
}

// wire types: 0 varint, 1 fixed64, 2 length-delimited, 5 fixed32
static void tb_put_key(TBBuf* b, int field, int wire_type) { tb_put_varint(b, ((uint64_t)field << 3) | wire_type); }

static inline void tb_put_le(TBBuf* b, uint64_t v, int nbytes) {
    uint8_t bytes[8];
    for (int i = 0; i < nbytes; i++) bytes[i] = (uint8_t)(v >> (8 * i));
    tb_put(b, bytes, nbytes);
}

static inline void tb_put_double(TBBuf* b, int field, double v) {
    uint64_t bits;
    memcpy(&bits, &v, 8);
    tb_put_key(b, field, 1);
    tb_put_le(b, bits, 8);
}

static inline void tb_put_float(TBBuf* b, int field, float v) {
    uint32_t bits;
    memcpy(&bits, &v, 4);
    tb_put_key(b, field, 5);
    tb_put_le(b, bits, 4);
}

// int32/int64 fields are varints of the two's-complement 64-bit value (a negative one takes 10 bytes)
static inline void tb_put_int(TBBuf* b, int field, int64_t v) {
    tb_put_key(b, field, 0);
    tb_put_varint(b, (uint64_t)v);
}

static inline void tb_put_bytes(TBBuf* b, int field, const void* data, size_t n) {
    tb_put_key(b, field, 2);
    tb_put_varint(b, n);
    tb_put(b, data, n);
}

// ----------------------------------------------------------------------------
// the writer

typedef struct {
    FILE* fp;
    char path[1024];
    double fixed_wall_time;  // >= 0: every record gets this wall_time (tests); < 0: the clock
    double last_flush;       // wall_seconds() at the last fflush
} TBWriter;

// tb_add_* flush when this long has passed since the last flush, so a live TensorBoard is at most
// this far behind while records keep coming; tb_flush after a logging round publishes at once
#define TB_FLUSH_SECONDS 2.0

static inline double tb_wall_time(const TBWriter* tb) {
    if (tb->fixed_wall_time >= 0) return tb->fixed_wall_time;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline void tb_flush(TBWriter* tb) {
    if (fflush(tb->fp) != 0) {
        fprintf(stderr, "Error: writing TensorBoard events to '%s' failed: %s\nHINT: is the disk full?\n",
                tb->path, strerror(errno));
        exit(EXIT_FAILURE);
    }
    tb->last_flush = wall_seconds();
}

static inline void tb_write_record(TBWriter* tb, const TBBuf* data) {
    uint8_t header[12];
    uint64_t len = data->size;
    for (int i = 0; i < 8; i++) header[i] = (uint8_t)(len >> (8 * i));
    uint32_t len_crc = tb_masked_crc32c(header, 8);
    for (int i = 0; i < 4; i++) header[8 + i] = (uint8_t)(len_crc >> (8 * i));
    uint32_t data_crc = tb_masked_crc32c(data->data, data->size);
    uint8_t footer[4];
    for (int i = 0; i < 4; i++) footer[i] = (uint8_t)(data_crc >> (8 * i));
    fwriteCheck(header, 1, 12, tb->fp);
    fwriteCheck(data->data, 1, data->size, tb->fp);
    fwriteCheck(footer, 1, 4, tb->fp);
}

// the `what` oneof of an Event: each record carries exactly one of these
enum { TB_FILE_VERSION = 3, TB_SUMMARY = 5, TB_SESSION_LOG = 7 };

// one Event: wall_time, step, then field `what` holding `n` already-encoded bytes
static inline void tb_write_event(TBWriter* tb, int64_t step, int what, const void* bytes, size_t n) {
    TBBuf event = {0};
    double wall_time = tb_wall_time(tb);
    if (wall_time != 0.0) tb_put_double(&event, 1, wall_time);  // proto3: zero fields are not written
    if (step != 0) tb_put_int(&event, 2, step);
    tb_put_bytes(&event, what, bytes, n);
    tb_write_record(tb, &event);
    image_bytes_free(&event);
    if (wall_seconds() - tb->last_flush >= TB_FLUSH_SECONDS) tb_flush(tb);
}

// a Summary holding one Value (already encoded)
static inline void tb_write_summary(TBWriter* tb, int64_t step, const TBBuf* value) {
    TBBuf summary = {0};
    tb_put_bytes(&summary, 1, value->data, value->size);
    tb_write_event(tb, step, TB_SUMMARY, summary.data, summary.size);
    image_bytes_free(&summary);
}

// SessionLog START at `step`. TensorBoard's Python loader (EventAccumulator, what
// `tensorboard --load_fast=false` uses) then drops every record of the run it has read so far
// whose step is >= `step`: the steps that a run killed after its last checkpoint wrote and that its
// resumed run writes again. Without it, file_version 2 files are never purged and a resumed
// curve doubles back.
static inline void tb_write_session_start(TBWriter* tb, int64_t step) {
    TBBuf log = {0};
    tb_put_int(&log, 1, 1);  // status = START
    tb_write_event(tb, step, TB_SESSION_LOG, log.data, log.size);
    image_bytes_free(&log);
}

// For tests: events at exactly `path`, every record stamped `wall_time` (< 0: use the clock);
// `start_step` as for tb_open. Refuses to overwrite an existing file.
static inline void tb_open_file(TBWriter* tb, const char* path, double wall_time, long start_step) {
    if (snprintf(tb->path, sizeof(tb->path), "%s", path) >= (int)sizeof(tb->path)) {
        fprintf(stderr, "Error: TensorBoard event file path too long: %s\n", path);
        exit(EXIT_FAILURE);
    }
    tb->fp = fopen(path, "wbx");  // "x": fail if it exists rather than clobber another run's events
    if (tb->fp == NULL) {
        int err = errno;
        fprintf(stderr, "Error: cannot create TensorBoard event file '%s': %s\n", path, strerror(err));
        if (err == ENOENT) fprintf(stderr, "HINT: create its directory first.\n");
        if (err == EEXIST) fprintf(stderr, "HINT: it is another writer's file; pick a new name.\n");
        exit(EXIT_FAILURE);
    }
    tb->fixed_wall_time = wall_time;
    tb->last_flush = wall_seconds();
    static const char version[] = "brain.Event:2";
    tb_write_event(tb, 0, TB_FILE_VERSION, version, strlen(version));
    // records are stamped with the number of steps done, so a run that starts after `start_step`
    // steps logs from start_step + 1 on; the records earlier files hold at start_step (written
    // before that checkpoint was saved) stay
    tb_write_session_start(tb, (int64_t)start_step + 1);
    tb_flush(tb);
}

// Events in run_dir (created if missing, parents too), file events.out.tfevents.<unix time>.<host>.<pid>
// like TensorBoard's own writers (the pid keeps two runs started in the same second apart);
// `tensorboard --logdir` on run_dir or its parent shows them. `start_step`: the optimizer step the
// run starts from (0, or the step a --resume restored): TensorBoard forgets what earlier files of
// run_dir logged after it (see tb_write_session_start).
static inline void tb_open(TBWriter* tb, const char* run_dir, long start_step) {
    char dir[1024];
    if (snprintf(dir, sizeof(dir), "%s", run_dir) >= (int)sizeof(dir)) {
        fprintf(stderr, "Error: run directory path too long: %s\n", run_dir);
        exit(EXIT_FAILURE);
    }
    for (char* p = dir + 1; ; p++) {  // mkdir -p
        if (*p == '/' || *p == '\0') {
            char c = *p;
            *p = '\0';
            if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
                fprintf(stderr, "Error: cannot create directory '%s': %s\n", dir, strerror(errno));
                exit(EXIT_FAILURE);
            }
            *p = c;
            if (c == '\0') break;
        }
    }
    char host[256];
    if (gethostname(host, sizeof(host)) != 0) snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    char path[1024];
    if (snprintf(path, sizeof(path), "%s/events.out.tfevents.%010lld.%s.%d", run_dir,
                 (long long)time(NULL), host, (int)getpid()) >= (int)sizeof(path)) {
        fprintf(stderr, "Error: run directory path too long: %s\n", run_dir);
        exit(EXIT_FAILURE);
    }
    tb_open_file(tb, path, -1.0, start_step);
}

static inline void tb_check_tag(const TBWriter* tb, const char* tag) {
    if (tag == NULL || tag[0] == '\0') {
        fprintf(stderr, "Error: TensorBoard record for '%s' needs a non-empty tag\n", tb->path);
        exit(EXIT_FAILURE);
    }
}

// a scalar: Value { tag, simple_value } (simple_value is in a oneof, so a 0 is still written)
static inline void tb_add_scalar(TBWriter* tb, const char* tag, float value, int64_t step) {
    tb_check_tag(tb, tag);
    TBBuf v = {0};
    tb_put_bytes(&v, 1, tag, strlen(tag));
    tb_put_float(&v, 2, value);
    tb_write_summary(tb, step, &v);
    image_bytes_free(&v);
}

// an RGB image (height, width, 3) uint8, PNG-encoded: Value { tag, Image { h, w, colorspace 3 = RGB, png } }
static inline void tb_add_image(TBWriter* tb, const char* tag, const uint8_t* rgb, int height, int width, int64_t step) {
    tb_check_tag(tb, tag);
    ImageBytes png = {0};
    image_encode_png(&png, rgb, height, width);
    TBBuf img = {0};
    tb_put_int(&img, 1, height);
    tb_put_int(&img, 2, width);
    tb_put_int(&img, 3, 3);
    tb_put_bytes(&img, 4, png.data, png.size);
    TBBuf v = {0};
    tb_put_bytes(&v, 1, tag, strlen(tag));
    tb_put_bytes(&v, 4, img.data, img.size);
    tb_write_summary(tb, step, &v);
    image_bytes_free(&v);
    image_bytes_free(&img);
    image_bytes_free(&png);
}

static inline void tb_close(TBWriter* tb) {
    if (tb->fp == NULL) return;
    tb_flush(tb);
    if (fclose(tb->fp) != 0) {
        fprintf(stderr, "Error: closing TensorBoard event file '%s' failed: %s\n", tb->path, strerror(errno));
        exit(EXIT_FAILURE);
    }
    tb->fp = NULL;
}
