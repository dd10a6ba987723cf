// ldmc/safetensors.h — reading and writing safetensors files, ldm.c's checkpoint format:
//   an 8-byte little-endian header length N, N bytes of JSON header, then the raw little-endian data.
//   The header maps each tensor name to {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}
//   (offsets relative to the start of the data section) plus an optional "__metadata__" object
//   whose values are all strings (ldm.c's `config` is itself a JSON string stored there).
// Defines:
//   SafeTensors, safetensors_read / safetensors_load / safetensors_free: a strict reader that keeps the
//     whole file in host memory; any inconsistency is an error naming the file and the problem.
//   safetensors_find / safetensors_get_f32 / safetensors_get_i64 / safetensors_meta: lookups.
//   SafeTensorsWriter, st_writer_*: collects tensors (host pointers, not copied) and metadata, and writes
//     them atomically (temporary file, fsync, rename) in the same bytes Python's `safetensors` writes.
//   json_get_int / json_get_float / json_get_string / json_get_int_array: values of a flat JSON object
//     such as {"preset":"tiny","ch":16,"mult":[1,2,4],"nres":1,"z_channels":4}.
// Host only: tensors are read to and written from host memory; callers move them to the device.
#pragma once

#include <stdarg.h>
#include <limits.h>
#include <sys/stat.h>
#include <unistd.h>
#include "common.cuh"

// ----------------------------------------------------------------------------
// data types

typedef struct {
    char name[256];
    char dtype[8];            // "F32", "I64", ...
    int ndim;
    int64_t shape[8];
    size_t numel;
    size_t nbytes;
    const void* data;         // points into SafeTensors.buffer (host memory)
} SafeTensorInfo;

typedef struct {
    char path[1024];
    int num_tensors;
    SafeTensorInfo* tensors;  // (num_tensors,) in file order
    int num_meta;
    char** meta_keys;         // (num_meta,) in file order
    char** meta_values;       // (num_meta,)
    uint8_t* buffer;          // the whole file
} SafeTensors;

typedef struct {
    int num_tensors, tensors_cap;
    SafeTensorInfo* tensors;  // (num_tensors,) .data points at the caller's host memory
    int num_meta, meta_cap;
    char** meta_keys;         // (num_meta,) copies of the caller's strings
    char** meta_values;       // (num_meta,)
} SafeTensorsWriter;

// ----------------------------------------------------------------------------
// dtypes

typedef struct { const char* name; size_t size; } SafeTensorsDtype;
static const SafeTensorsDtype st_dtypes[] = {
    {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"F8_E5M2", 1}, {"F8_E4M3", 1},
    {"I64", 8}, {"I32", 4}, {"I16", 2}, {"I8", 1},
    {"U64", 8}, {"U32", 4}, {"U16", 2}, {"U8", 1}, {"BOOL", 1},
};

// bytes per element, 0 for a dtype this reader does not know
static size_t st_dtype_size(const char* dtype) {
    for (size_t i = 0; i < sizeof(st_dtypes) / sizeof(st_dtypes[0]); i++) {
        if (strcmp(dtype, st_dtypes[i].name) == 0) return st_dtypes[i].size;
    }
    return 0;
}

// "[4, 3, 3, 3]"
static void st_shape_str(const SafeTensorInfo* t, char* out, size_t n) {
    size_t len = (size_t)snprintf(out, n, "[");
    for (int d = 0; d < t->ndim && len < n; d++) {
        len += (size_t)snprintf(out + len, n - len, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    }
    if (len < n) snprintf(out + len, n - len, "]");
}

// ----------------------------------------------------------------------------
// a small JSON parser over a text that need not be NUL-terminated (the header sits inside the file)

typedef struct {
    const char* start;   // the JSON text
    const char* p;       // next unread character
    const char* end;     // one past the last character
    char error[160];     // the first failure: what was expected and at which byte
} JsonCursor;

static void json_init(JsonCursor* c, const char* text, size_t len) {
    c->start = c->p = text;
    c->end = text + len;
    c->error[0] = '\0';
}

static int json_fail(JsonCursor* c, const char* what) {
    if (c->error[0] == '\0') {
        snprintf(c->error, sizeof(c->error), "%s at byte %ld", what, (long)(c->p - c->start));
    }
    return -1;
}

static void json_skip_ws(JsonCursor* c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
}

// the next non-blank character, or -1 at the end of the text
static int json_peek(JsonCursor* c) {
    json_skip_ws(c);
    return c->p < c->end ? (unsigned char)*c->p : -1;
}

static int json_expect(JsonCursor* c, char ch) {
    int got = json_peek(c);
    if (got == ch) { c->p++; return 0; }
    char what[64];
    if (got < 0) snprintf(what, sizeof(what), "expected '%c' but the text ends", ch);
    else if (got < 0x20 || got >= 0x7f) snprintf(what, sizeof(what), "expected '%c' but found byte 0x%02x", ch, got);
    else snprintf(what, sizeof(what), "expected '%c' but found '%c'", ch, got);
    return json_fail(c, what);
}

// an upper bound (with room for the NUL) of the unescaped size of the string at the cursor, which
// json_peek has left on its opening quote: escapes only ever shrink the text
static size_t json_string_bound(const JsonCursor* c) {
    const char* q = c->p + 1;
    while (q < c->end && *q != '"') q += (*q == '\\') ? 2 : 1;
    return (size_t)(q - c->p);
}

static int json_hex4(JsonCursor* c, uint32_t* out) {
    if (c->end - c->p < 4) return json_fail(c, "\\u escape needs 4 hex digits");
    uint32_t v = 0;
    for (int i = 0; i < 4; i++) {
        char h = c->p[i];
        int d = (h >= '0' && h <= '9') ? h - '0' : (h >= 'a' && h <= 'f') ? h - 'a' + 10 :
                (h >= 'A' && h <= 'F') ? h - 'A' + 10 : -1;
        if (d < 0) return json_fail(c, "\\u escape needs 4 hex digits");
        v = v * 16 + (uint32_t)d;
    }
    c->p += 4;
    *out = v;
    return 0;
}

// code point -> UTF-8 bytes, returns how many
static int utf8_encode(uint32_t cp, char* out) {
    if (cp < 0x80) { out[0] = (char)cp; return 1; }
    if (cp < 0x800) { out[0] = (char)(0xC0 | (cp >> 6)); out[1] = (char)(0x80 | (cp & 0x3F)); return 2; }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12)); out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F)); return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18)); out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F)); out[3] = (char)(0x80 | (cp & 0x3F)); return 4;
}

// a JSON string, unescaped into out (cap bytes with the NUL); out == NULL only skips it.
// \uXXXX escapes become UTF-8 (surrogate pairs combined); \u0000 is refused because C strings end there.
static int json_parse_string(JsonCursor* c, char* out, size_t cap) {
    if (json_expect(c, '"')) return -1;
    size_t n = 0;
    for (;;) {
        if (c->p >= c->end) return json_fail(c, "unterminated string");
        unsigned char ch = (unsigned char)*c->p++;
        if (ch == '"') break;
        if (ch < 0x20) { c->p--; return json_fail(c, "unescaped control character in a string"); }
        char buf[4];
        int k = 1;
        buf[0] = (char)ch;
        if (ch == '\\') {
            if (c->p >= c->end) return json_fail(c, "unterminated string");
            char e = *c->p++;
            switch (e) {
                case '"': case '\\': case '/': buf[0] = e; break;
                case 'b': buf[0] = '\b'; break;
                case 'f': buf[0] = '\f'; break;
                case 'n': buf[0] = '\n'; break;
                case 'r': buf[0] = '\r'; break;
                case 't': buf[0] = '\t'; break;
                case 'u': {
                    uint32_t cp, lo;
                    if (json_hex4(c, &cp)) return -1;
                    if (cp >= 0xD800 && cp <= 0xDBFF) {   // high surrogate: its low half must follow
                        if (c->end - c->p < 2 || c->p[0] != '\\' || c->p[1] != 'u') {
                            return json_fail(c, "unpaired UTF-16 surrogate in a \\u escape");
                        }
                        c->p += 2;
                        if (json_hex4(c, &lo)) return -1;
                        if (lo < 0xDC00 || lo > 0xDFFF) return json_fail(c, "unpaired UTF-16 surrogate in a \\u escape");
                        cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    } else if (cp >= 0xDC00 && cp <= 0xDFFF) {
                        return json_fail(c, "unpaired UTF-16 surrogate in a \\u escape");
                    }
                    if (cp == 0) return json_fail(c, "\\u0000 (a NUL character) in a string is not supported");
                    k = utf8_encode(cp, buf);
                    break;
                }
                default:
                    c->p--;
                    return json_fail(c, "unknown escape sequence in a string");
            }
        }
        if (out != NULL) {
            if (n + (size_t)k >= cap) {
                char what[64];
                snprintf(what, sizeof(what), "string longer than %zu bytes", cap - 1);
                return json_fail(c, what);
            }
            memcpy(out + n, buf, (size_t)k);
        }
        n += (size_t)k;
    }
    if (out != NULL) out[n] = '\0';
    return 0;
}

// a non-negative integer without sign, fraction or exponent (shapes and offsets)
static int json_parse_u64(JsonCursor* c, uint64_t* out) {
    int ch = json_peek(c);
    if (ch < '0' || ch > '9') return json_fail(c, "expected a non-negative integer");
    if (ch == '0' && c->p + 1 < c->end && c->p[1] >= '0' && c->p[1] <= '9') {
        return json_fail(c, "integer with a leading zero");
    }
    uint64_t v = 0;
    while (c->p < c->end && *c->p >= '0' && *c->p <= '9') {
        uint64_t d = (uint64_t)(*c->p - '0');
        if (v > (UINT64_MAX - d) / 10) return json_fail(c, "integer too large");
        v = v * 10 + d;
        c->p++;
    }
    if (c->p < c->end && (*c->p == '.' || *c->p == 'e' || *c->p == 'E')) {
        return json_fail(c, "expected an integer, found a fraction or exponent");
    }
    *out = v;
    return 0;
}

// [n0, n1, ...] of non-negative integers; stores the first `max`, counts all of them
static int json_parse_u64_array(JsonCursor* c, uint64_t* out, int max, int* count) {
    *count = 0;
    if (json_expect(c, '[')) return -1;
    if (json_peek(c) == ']') { c->p++; return 0; }
    for (;;) {
        uint64_t v;
        if (json_parse_u64(c, &v)) return -1;
        if (*count < max) out[*count] = v;
        (*count)++;
        if (json_peek(c) == ',') { c->p++; continue; }
        return json_expect(c, ']');
    }
}

// the text of a number token (validated by the caller's strtoll / strtod)
static int json_scan_number(JsonCursor* c, char* tok, size_t cap) {
    json_skip_ws(c);
    size_t n = 0;
    while (c->p < c->end && strchr("+-.eE0123456789", *c->p) != NULL && *c->p != '\0') {
        if (n + 1 >= cap) return json_fail(c, "number too long");
        tok[n++] = *c->p++;
    }
    tok[n] = '\0';
    return n > 0 ? 0 : json_fail(c, "expected a number");
}

// skips one value of any kind (the config helpers step over the keys they were not asked for)
static int json_skip_value(JsonCursor* c, int depth) {
    if (depth > 64) return json_fail(c, "nesting too deep");
    int ch = json_peek(c);
    if (ch == '"') return json_parse_string(c, NULL, 0);
    if (ch == '{' || ch == '[') {
        char close = ch == '{' ? '}' : ']';
        c->p++;
        if (json_peek(c) == close) { c->p++; return 0; }
        for (;;) {
            if (ch == '{' && (json_parse_string(c, NULL, 0) || json_expect(c, ':'))) return -1;
            if (json_skip_value(c, depth + 1)) return -1;
            if (json_peek(c) == ',') { c->p++; continue; }
            return json_expect(c, close);
        }
    }
    const char* words[3] = {"true", "false", "null"};
    for (int i = 0; i < 3; i++) {
        size_t len = strlen(words[i]);
        if ((size_t)(c->end - c->p) >= len && memcmp(c->p, words[i], len) == 0) { c->p += len; return 0; }
    }
    char tok[64];
    return json_scan_number(c, tok, sizeof(tok));
}

// ----------------------------------------------------------------------------
// reader

static int st_error(char* err, size_t errlen, const char* path, const char* fmt, ...) {
    if (err != NULL && errlen > 0) {
        int n = snprintf(err, errlen, "%s: ", path);
        if (n >= 0 && (size_t)n < errlen) {
            va_list ap;
            va_start(ap, fmt);
            vsnprintf(err + n, errlen - (size_t)n, fmt, ap);
            va_end(ap);
        }
    }
    return -1;
}

static int st_bad_json(char* err, size_t errlen, const char* path, const JsonCursor* c) {
    return st_error(err, errlen, path, "the header is not valid safetensors JSON: %s of the header", c->error);
}

// makes room for one more element in a growing array; -1 when out of memory
static int st_grow(void** array, int* cap, int count, size_t elem) {
    if (count < *cap) return 0;
    int new_cap = *cap ? 2 * *cap : 16;
    void* p = realloc(*array, (size_t)new_cap * elem);
    if (p == NULL) return -1;
    *array = p;
    *cap = new_cap;
    return 0;
}

// room for one more entry in the parallel metadata key and value arrays; -1 when out of memory
static int st_grow_meta(char*** keys, char*** values, int* cap, int count) {
    if (count < *cap) return 0;
    int new_cap = *cap ? 2 * *cap : 16;
    char** k = (char**)realloc(*keys, (size_t)new_cap * sizeof(char*));
    if (k == NULL) return -1;
    *keys = k;
    char** v = (char**)realloc(*values, (size_t)new_cap * sizeof(char*));
    if (v == NULL) return -1;
    *values = v;
    *cap = new_cap;
    return 0;
}

// {"k": "v", ...}: every value must be a string
static int st_parse_metadata(JsonCursor* c, SafeTensors* st, int* cap, const char* path, char* err, size_t errlen) {
    if (json_peek(c) != '{') return st_error(err, errlen, path, "\"__metadata__\" is not a JSON object of strings");
    c->p++;
    if (json_peek(c) == '}') { c->p++; return 0; }
    for (;;) {
        if (json_peek(c) != '"') { json_expect(c, '"'); return st_bad_json(err, errlen, path, c); }
        if (st_grow_meta(&st->meta_keys, &st->meta_values, cap, st->num_meta)) {
            return st_error(err, errlen, path, "out of memory reading the metadata");
        }
        int i = st->num_meta++;
        st->meta_values[i] = NULL;
        size_t bound = json_string_bound(c);
        st->meta_keys[i] = (char*)malloc(bound);
        if (st->meta_keys[i] == NULL) return st_error(err, errlen, path, "out of memory reading the metadata");
        if (json_parse_string(c, st->meta_keys[i], bound) || json_expect(c, ':')) return st_bad_json(err, errlen, path, c);
        for (int j = 0; j < i; j++) {
            if (strcmp(st->meta_keys[j], st->meta_keys[i]) == 0) {
                return st_error(err, errlen, path, "metadata key '%s' appears twice", st->meta_keys[i]);
            }
        }
        if (json_peek(c) != '"') {
            return st_error(err, errlen, path, "metadata '%s' is not a string (safetensors metadata values "
                            "must be strings)", st->meta_keys[i]);
        }
        bound = json_string_bound(c);
        st->meta_values[i] = (char*)malloc(bound);
        if (st->meta_values[i] == NULL) return st_error(err, errlen, path, "out of memory reading the metadata");
        if (json_parse_string(c, st->meta_values[i], bound)) return st_bad_json(err, errlen, path, c);
        if (json_peek(c) == ',') { c->p++; continue; }
        if (json_expect(c, '}')) return st_bad_json(err, errlen, path, c);
        return 0;
    }
}

// {"dtype": .., "shape": [..], "data_offsets": [begin, end]}, checked against the data section
static int st_parse_tensor(JsonCursor* c, SafeTensorInfo* t, const uint8_t* data, size_t data_size,
                           const char* path, char* err, size_t errlen) {
    int have_dtype = 0, have_shape = 0, have_offsets = 0, count;
    uint64_t shape[8], offsets[2];
    if (json_peek(c) != '{') return st_error(err, errlen, path, "tensor '%s' is not a JSON object {\"dtype\", \"shape\", "
                                             "\"data_offsets\"}", t->name);
    c->p++;
    if (json_peek(c) == '}') {
        c->p++;
    } else {
        for (;;) {
            char key[256];
            if (json_parse_string(c, key, sizeof(key)) || json_expect(c, ':')) return st_bad_json(err, errlen, path, c);
            if (strcmp(key, "dtype") == 0 && !have_dtype) {
                char dtype[64];
                if (json_parse_string(c, dtype, sizeof(dtype))) return st_bad_json(err, errlen, path, c);
                if (st_dtype_size(dtype) == 0) {
                    return st_error(err, errlen, path, "tensor '%s' has unknown dtype '%s' (known: F64 F32 F16 BF16 "
                                    "F8_E5M2 F8_E4M3 I64 I32 I16 I8 U64 U32 U16 U8 BOOL)", t->name, dtype);
                }
                strcpy(t->dtype, dtype);
                have_dtype = 1;
            } else if (strcmp(key, "shape") == 0 && !have_shape) {
                if (json_parse_u64_array(c, shape, 8, &count)) return st_bad_json(err, errlen, path, c);
                if (count > 8) return st_error(err, errlen, path, "tensor '%s' has %d dimensions, at most 8 are supported", t->name, count);
                t->ndim = count;
                have_shape = 1;
            } else if (strcmp(key, "data_offsets") == 0 && !have_offsets) {
                if (json_parse_u64_array(c, offsets, 2, &count)) return st_bad_json(err, errlen, path, c);
                if (count != 2) return st_error(err, errlen, path, "tensor '%s' data_offsets has %d numbers, expected [begin, end]", t->name, count);
                have_offsets = 1;
            } else {
                return st_error(err, errlen, path, "tensor '%s' has an unexpected or repeated field \"%s\" (expected "
                                "\"dtype\", \"shape\" and \"data_offsets\", once each)", t->name, key);
            }
            if (json_peek(c) == ',') { c->p++; continue; }
            if (json_expect(c, '}')) return st_bad_json(err, errlen, path, c);
            break;
        }
    }
    if (!have_dtype || !have_shape || !have_offsets) {
        return st_error(err, errlen, path, "tensor '%s' has no \"%s\"", t->name,
                        !have_dtype ? "dtype" : !have_shape ? "shape" : "data_offsets");
    }
    // element count and byte size, refusing shapes whose size overflows
    size_t esize = st_dtype_size(t->dtype);
    t->numel = 1;
    for (int d = 0; d < t->ndim; d++) {
        if (shape[d] > (uint64_t)INT64_MAX || (shape[d] != 0 && t->numel > SIZE_MAX / esize / shape[d])) {
            return st_error(err, errlen, path, "tensor '%s' has a shape too large for memory", t->name);
        }
        t->shape[d] = (int64_t)shape[d];
        t->numel *= (size_t)shape[d];
    }
    t->nbytes = t->numel * esize;
    uint64_t begin = offsets[0], end = offsets[1];
    if (begin > end) {
        return st_error(err, errlen, path, "tensor '%s' data_offsets [%llu, %llu) end before they begin: the file is corrupt",
                        t->name, (unsigned long long)begin, (unsigned long long)end);
    }
    if (end > data_size) {
        return st_error(err, errlen, path, "tensor '%s' data_offsets [%llu, %llu) exceed the data section (%zu bytes): "
                        "the file is truncated or corrupt", t->name, (unsigned long long)begin, (unsigned long long)end, data_size);
    }
    if (end - begin != t->nbytes) {
        char s[160];
        st_shape_str(t, s, sizeof(s));
        return st_error(err, errlen, path, "tensor '%s' is %s of shape %s = %zu bytes but its data_offsets [%llu, %llu) "
                        "span %llu bytes", t->name, t->dtype, s, t->nbytes, (unsigned long long)begin,
                        (unsigned long long)end, (unsigned long long)(end - begin));
    }
    t->data = data + begin;
    return 0;
}

typedef struct { const uint8_t* begin; size_t nbytes; int index; } StSpan;

static int st_span_cmp(const void* a, const void* b) {
    const StSpan* x = (const StSpan*)a;
    const StSpan* y = (const StSpan*)b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    if (x->nbytes != y->nbytes) return x->nbytes < y->nbytes ? -1 : 1;
    return 0;
}

// the tensors' byte ranges, sorted by where they begin, must tile the data section exactly
static int st_check_layout(const SafeTensors* st, const uint8_t* data, size_t data_size, char* err, size_t errlen) {
    StSpan* spans = (StSpan*)malloc((size_t)(st->num_tensors > 0 ? st->num_tensors : 1) * sizeof(StSpan));
    if (spans == NULL) return st_error(err, errlen, st->path, "out of memory checking the layout");
    for (int i = 0; i < st->num_tensors; i++) {
        spans[i].begin = (const uint8_t*)st->tensors[i].data;
        spans[i].nbytes = st->tensors[i].nbytes;
        spans[i].index = i;
    }
    qsort(spans, (size_t)st->num_tensors, sizeof(StSpan), st_span_cmp);
    int rc = 0;
    size_t expected = 0;   // where the next tensor must begin
    const char* prev = NULL;
    for (int i = 0; i < st->num_tensors && rc == 0; i++) {
        size_t begin = (size_t)(spans[i].begin - data);
        const char* name = st->tensors[spans[i].index].name;
        if (begin < expected) {
            rc = st_error(err, errlen, st->path, "tensor '%s' (bytes [%zu, %zu)) overlaps tensor '%s' (which ends at %zu): "
                          "the file is corrupt", name, begin, begin + spans[i].nbytes, prev, expected);
        } else if (begin > expected) {
            rc = st_error(err, errlen, st->path, "gap of %zu unused bytes before tensor '%s' (bytes [%zu, %zu) are not "
                          "part of any tensor): the file is corrupt", begin - expected, name, expected, begin);
        }
        expected = begin + spans[i].nbytes;
        prev = name;
    }
    if (rc == 0 && expected != data_size) {
        rc = st_error(err, errlen, st->path, "%zu trailing bytes after the last tensor's data (the tensors end at byte %zu "
                      "of a %zu-byte data section): the file is corrupt", data_size - expected, expected, data_size);
    }
    free(spans);
    return rc;
}

static int st_parse_header(SafeTensors* st, const char* header, size_t header_len, const uint8_t* data,
                           size_t data_size, char* err, size_t errlen) {
    const char* path = st->path;
    JsonCursor c;
    json_init(&c, header, header_len);
    int tensors_cap = 0, meta_cap = 0, seen_meta = 0;
    if (json_expect(&c, '{')) return st_bad_json(err, errlen, path, &c);
    if (json_peek(&c) == '}') {
        c.p++;
    } else {
        for (;;) {
            char name[256];
            if (json_parse_string(&c, name, sizeof(name)) || json_expect(&c, ':')) return st_bad_json(err, errlen, path, &c);
            if (strcmp(name, "__metadata__") == 0) {
                if (seen_meta) return st_error(err, errlen, path, "\"__metadata__\" appears twice in the header");
                seen_meta = 1;
                if (st_parse_metadata(&c, st, &meta_cap, path, err, errlen)) return -1;
            } else {
                for (int i = 0; i < st->num_tensors; i++) {
                    if (strcmp(st->tensors[i].name, name) == 0) {
                        return st_error(err, errlen, path, "tensor '%s' appears twice in the header", name);
                    }
                }
                if (st_grow((void**)&st->tensors, &tensors_cap, st->num_tensors, sizeof(SafeTensorInfo))) {
                    return st_error(err, errlen, path, "out of memory reading the header");
                }
                SafeTensorInfo* t = &st->tensors[st->num_tensors++];
                memset(t, 0, sizeof(*t));
                strcpy(t->name, name);
                if (st_parse_tensor(&c, t, data, data_size, path, err, errlen)) return -1;
            }
            if (json_peek(&c) == ',') { c.p++; continue; }
            if (json_expect(&c, '}')) return st_bad_json(err, errlen, path, &c);
            break;
        }
    }
    // only blanks may follow the object: Python's writer pads the header with spaces
    if (json_peek(&c) >= 0) {
        json_fail(&c, "unexpected text after the closing '}'");
        return st_bad_json(err, errlen, path, &c);
    }
    return st_check_layout(st, data, data_size, err, errlen);
}

static void safetensors_free(SafeTensors* st) {
    for (int i = 0; i < st->num_meta; i++) {
        free(st->meta_keys[i]);
        free(st->meta_values[i]);
    }
    free(st->meta_keys);
    free(st->meta_values);
    free(st->tensors);
    free(st->buffer);
    memset(st, 0, sizeof(*st));
}

static int st_read(const char* path, SafeTensors* st, char* err, size_t errlen) {
    if (strlen(path) >= sizeof(st->path)) return st_error(err, errlen, path, "path longer than %zu characters", sizeof(st->path) - 1);
    strcpy(st->path, path);
    FILE* fp = fopen(path, "rb");
    if (fp == NULL) return st_error(err, errlen, path, "cannot open: %s", strerror(errno));
    struct stat sb;
    if (fstat(fileno(fp), &sb) != 0 || !S_ISREG(sb.st_mode)) {
        fclose(fp);
        return st_error(err, errlen, path, "not a regular file");
    }
    size_t size = (size_t)sb.st_size;
    st->buffer = (uint8_t*)malloc(size > 0 ? size : 1);
    if (st->buffer == NULL) { fclose(fp); return st_error(err, errlen, path, "out of memory reading %zu bytes", size); }
    size_t got = fread(st->buffer, 1, size, fp);
    fclose(fp);
    if (got != size) return st_error(err, errlen, path, "read only %zu of its %zu bytes", got, size);
    if (size < 8) {
        return st_error(err, errlen, path, "the file is %zu bytes, too short for a safetensors file (which starts with "
                        "an 8-byte header length)", size);
    }
    uint64_t header_len = 0;   // little-endian, whatever the host's byte order
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | st->buffer[i];
    if (header_len > size - 8) {
        return st_error(err, errlen, path, "header length %llu exceeds the %zu bytes after the 8-byte length field: the "
                        "file is truncated or not a safetensors file", (unsigned long long)header_len, size - 8);
    }
    return st_parse_header(st, (const char*)st->buffer + 8, (size_t)header_len, st->buffer + 8 + header_len,
                           size - 8 - (size_t)header_len, err, errlen);
}

// 0 on success; otherwise err holds "<path>: <what is wrong>" and st is empty (nothing to free)
static int safetensors_read(const char* path, SafeTensors* st, char* err, size_t errlen) {
    memset(st, 0, sizeof(*st));
    if (err != NULL && errlen > 0) err[0] = '\0';
    int rc = st_read(path, st, err, errlen);
    if (rc != 0) safetensors_free(st);
    return rc;
}

static void safetensors_load(const char* path, SafeTensors* st) {
    char err[1024 + 512];
    if (safetensors_read(path, st, err, sizeof(err)) != 0) {
        fprintf(stderr, "Error: %s\nHINT: the file must be a safetensors file written by ldm.c or Python's "
                        "safetensors (save_file); check the path, and if a run was killed mid-write, the last "
                        "complete checkpoint is still under its final name.\n", err);
        exit(EXIT_FAILURE);
    }
}

// ----------------------------------------------------------------------------
// lookups

static const SafeTensorInfo* safetensors_find(const SafeTensors* st, const char* name) {
    for (int i = 0; i < st->num_tensors; i++) {
        if (strcmp(st->tensors[i].name, name) == 0) return &st->tensors[i];
    }
    return NULL;
}

static const char* safetensors_meta(const SafeTensors* st, const char* key) {
    for (int i = 0; i < st->num_meta; i++) {
        if (strcmp(st->meta_keys[i], key) == 0) return st->meta_values[i];
    }
    return NULL;
}

// the tensor `name` of dtype `dtype` and (unless expected_numel == 0) that many elements, or exit
static const SafeTensorInfo* st_get_checked(const SafeTensors* st, const char* name, const char* dtype,
                                            size_t expected_numel) {
    const SafeTensorInfo* t = safetensors_find(st, name);
    char s[160];
    if (t == NULL) {
        fprintf(stderr, "Error: %s: no tensor named '%s' (the file has %d tensors", st->path, name, st->num_tensors);
        for (int i = 0; i < st->num_tensors && i < 3; i++) fprintf(stderr, "%s'%s'", i ? ", " : ": ", st->tensors[i].name);
        fprintf(stderr, "%s)\nHINT: is this the right file for this model (VAE vs U-Net checkpoint, same --preset)?\n",
                st->num_tensors > 3 ? ", ..." : "");
        exit(EXIT_FAILURE);
    }
    st_shape_str(t, s, sizeof(s));
    if (strcmp(t->dtype, dtype) != 0) {
        fprintf(stderr, "Error: %s: tensor '%s' is %s %s, expected %s\n", st->path, name, t->dtype, s, dtype);
        exit(EXIT_FAILURE);
    }
    if (expected_numel != 0 && t->numel != expected_numel) {
        fprintf(stderr, "Error: %s: tensor '%s' has shape %s = %zu values, expected %zu\n"
                        "HINT: the file was written for a different model configuration (--preset, --num-classes).\n",
                st->path, name, s, t->numel, expected_numel);
        exit(EXIT_FAILURE);
    }
    // our writer and Python's pad the header so every tensor is aligned; a foreign writer may not
    if ((uintptr_t)t->data % st_dtype_size(dtype) != 0) {
        fprintf(stderr, "Error: %s: tensor '%s' is not aligned to its %zu-byte elements (the header is not padded to "
                        "a multiple of 8 bytes)\nHINT: re-save it with Python's safetensors (save_file) or ldm.c.\n",
                st->path, name, st_dtype_size(dtype));
        exit(EXIT_FAILURE);
    }
    return t;
}

static const float* safetensors_get_f32(const SafeTensors* st, const char* name, size_t expected_numel) {
    return (const float*)st_get_checked(st, name, "F32", expected_numel)->data;
}

static const int64_t* safetensors_get_i64(const SafeTensors* st, const char* name, size_t expected_numel) {
    return (const int64_t*)st_get_checked(st, name, "I64", expected_numel)->data;
}

// ----------------------------------------------------------------------------
// values of a flat JSON object (the `config` metadata): 0 on success, -1 if absent or malformed

// leaves the cursor on the value of `key` at the top level of the object `json`
static int json_find_key(JsonCursor* c, const char* json, const char* key) {
    json_init(c, json, strlen(json));
    if (json_expect(c, '{') || json_peek(c) == '}') return -1;
    for (;;) {
        char k[256];
        if (json_parse_string(c, k, sizeof(k)) || json_expect(c, ':')) return -1;
        if (strcmp(k, key) == 0) return 0;
        if (json_skip_value(c, 0)) return -1;
        if (json_peek(c) != ',') return -1;
        c->p++;
    }
}

// a value must be followed by ',' or '}' (so "16x" is not read as 16)
static int json_value_ends(JsonCursor* c) {
    int ch = json_peek(c);
    return (ch == ',' || ch == '}') ? 0 : -1;
}

static int json_token_int(const char* tok, int* out) {
    if (strpbrk(tok, ".eE") != NULL) return -1;
    char* endp;
    errno = 0;
    long long v = strtoll(tok, &endp, 10);
    if (*endp != '\0' || errno != 0 || v < INT_MIN || v > INT_MAX) return -1;
    *out = (int)v;
    return 0;
}

static int json_get_int(const char* json, const char* key, int* out) {
    JsonCursor c;
    char tok[64];
    int v;
    if (json_find_key(&c, json, key) || json_scan_number(&c, tok, sizeof(tok)) || json_token_int(tok, &v) ||
        json_value_ends(&c)) return -1;
    *out = v;
    return 0;
}

static int json_get_float(const char* json, const char* key, float* out) {
    JsonCursor c;
    char tok[64];
    if (json_find_key(&c, json, key) || json_scan_number(&c, tok, sizeof(tok)) || json_value_ends(&c)) return -1;
    char* endp;
    double v = strtod(tok, &endp);
    if (*endp != '\0') return -1;
    *out = (float)v;
    return 0;
}

static int json_get_string(const char* json, const char* key, char* out, size_t n) {
    JsonCursor c;
    if (json_find_key(&c, json, key) || json_peek(&c) != '"' || json_parse_string(&c, out, n) ||
        json_value_ends(&c)) return -1;
    return 0;
}

// a flat array of at most `max` integers, e.g. "mult":[1,2,4]
static int json_get_int_array(const char* json, const char* key, int* out, int max, int* count) {
    JsonCursor c;
    if (json_find_key(&c, json, key) || json_expect(&c, '[')) return -1;
    int n = 0;
    if (json_peek(&c) == ']') {
        c.p++;
    } else {
        for (;;) {
            char tok[64];
            if (n >= max || json_scan_number(&c, tok, sizeof(tok)) || json_token_int(tok, &out[n])) return -1;
            n++;
            if (json_peek(&c) == ',') { c.p++; continue; }
            if (json_expect(&c, ']')) return -1;
            break;
        }
    }
    if (json_value_ends(&c)) return -1;
    *count = n;
    return 0;
}

// ----------------------------------------------------------------------------
// writer: the same bytes as Python's safetensors.torch.save_file for the same tensors and a single
// metadata entry (Python orders several metadata entries arbitrarily; ours keep the order they were added).
// Layout as Python's: "__metadata__" first, then tensors by dtype alignment (I64 before F32) and then by
// name, so every tensor is aligned to its element size; the header is padded with spaces to a multiple
// of 8 bytes; strings are escaped as serde_json does (\" \\ \b \f \n \r \t, other control bytes as \u00XX).

static void st_writer_init(SafeTensorsWriter* w) {
    memset(w, 0, sizeof(*w));
}

static void st_writer_free(SafeTensorsWriter* w) {
    for (int i = 0; i < w->num_meta; i++) {
        free(w->meta_keys[i]);
        free(w->meta_values[i]);
    }
    free(w->meta_keys);
    free(w->meta_values);
    free(w->tensors);
    memset(w, 0, sizeof(*w));
}

// the header is JSON, so its strings must be UTF-8 (Python refuses to load the file otherwise)
static int st_utf8_valid(const char* s) {
    const unsigned char* p = (const unsigned char*)s;
    while (*p) {
        int extra = *p < 0x80 ? 0 : (*p >> 5) == 0x6 ? 1 : (*p >> 4) == 0xE ? 2 : (*p >> 3) == 0x1E ? 3 : -1;
        if (extra < 0) return 0;
        p++;
        for (int i = 0; i < extra; i++, p++) {
            if ((*p & 0xC0) != 0x80) return 0;
        }
    }
    return 1;
}

static void st_writer_add(SafeTensorsWriter* w, const char* name, const char* dtype, const void* host_data,
                          int ndim, const int64_t* shape) {
    const char* problem = NULL;
    if (name[0] == '\0' || strlen(name) >= sizeof(w->tensors[0].name)) problem = "names must be 1 to 255 bytes";
    else if (strcmp(name, "__metadata__") == 0) problem = "that name is reserved for the metadata";
    else if (!st_utf8_valid(name)) problem = "the name is not valid UTF-8";
    else if (strcmp(dtype, "F32") != 0 && strcmp(dtype, "I64") != 0) problem = "dtype must be F32 or I64";
    else if (ndim < 0 || ndim > 8) problem = "ndim must be 0 to 8";
    for (int i = 0; i < w->num_tensors && problem == NULL; i++) {
        if (strcmp(w->tensors[i].name, name) == 0) problem = "a tensor of that name was already added";
    }
    size_t numel = 1;
    for (int d = 0; d < ndim && problem == NULL; d++) {
        if (shape[d] < 0) problem = "shape entries must be >= 0";
        else numel *= (size_t)shape[d];
    }
    if (problem == NULL && host_data == NULL && numel > 0) problem = "host_data is NULL";
    if (problem != NULL) {
        fprintf(stderr, "Error: st_writer_add('%s', %s): %s\n", name, dtype, problem);
        exit(EXIT_FAILURE);
    }
    if (st_grow((void**)&w->tensors, &w->tensors_cap, w->num_tensors, sizeof(SafeTensorInfo))) {
        fprintf(stderr, "Error: out of memory in st_writer_add\n");
        exit(EXIT_FAILURE);
    }
    SafeTensorInfo* t = &w->tensors[w->num_tensors++];
    memset(t, 0, sizeof(*t));
    strcpy(t->name, name);
    strcpy(t->dtype, dtype);
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->numel = numel;
    t->nbytes = numel * st_dtype_size(dtype);
    t->data = host_data;
}

static void st_writer_add_meta(SafeTensorsWriter* w, const char* key, const char* value) {
    const char* problem = NULL;
    if (!st_utf8_valid(key) || !st_utf8_valid(value)) problem = "key and value must be valid UTF-8";
    for (int i = 0; i < w->num_meta && problem == NULL; i++) {
        if (strcmp(w->meta_keys[i], key) == 0) problem = "that key was already added";
    }
    if (problem != NULL) {
        fprintf(stderr, "Error: st_writer_add_meta('%s'): %s\n", key, problem);
        exit(EXIT_FAILURE);
    }
    if (st_grow_meta(&w->meta_keys, &w->meta_values, &w->meta_cap, w->num_meta)) {
        fprintf(stderr, "Error: out of memory in st_writer_add_meta\n");
        exit(EXIT_FAILURE);
    }
    w->meta_keys[w->num_meta] = strdup(key);
    w->meta_values[w->num_meta] = strdup(value);
    if (w->meta_keys[w->num_meta] == NULL || w->meta_values[w->num_meta] == NULL) {
        fprintf(stderr, "Error: out of memory in st_writer_add_meta\n");
        exit(EXIT_FAILURE);
    }
    w->num_meta++;
}

// a growing text buffer for the header
typedef struct { char* s; size_t len, cap; } StText;

static void st_text_put(StText* b, const char* s, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (b->len + n + 1 > cap) cap *= 2;
        b->s = (char*)realloc(b->s, cap);
        if (b->s == NULL) { fprintf(stderr, "Error: out of memory building a safetensors header\n"); exit(EXIT_FAILURE); }
        b->cap = cap;
    }
    memcpy(b->s + b->len, s, n);
    b->len += n;
    b->s[b->len] = '\0';
}

static void st_text_printf(StText* b, const char* fmt, ...) {
    char tmp[128];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(tmp, sizeof(tmp), fmt, ap);
    va_end(ap);
    st_text_put(b, tmp, (size_t)n);
}

static void st_text_json_string(StText* b, const char* s) {
    st_text_put(b, "\"", 1);
    for (const unsigned char* p = (const unsigned char*)s; *p; p++) {
        switch (*p) {
            case '"':  st_text_put(b, "\\\"", 2); break;
            case '\\': st_text_put(b, "\\\\", 2); break;
            case '\b': st_text_put(b, "\\b", 2); break;
            case '\f': st_text_put(b, "\\f", 2); break;
            case '\n': st_text_put(b, "\\n", 2); break;
            case '\r': st_text_put(b, "\\r", 2); break;
            case '\t': st_text_put(b, "\\t", 2); break;
            default:
                if (*p < 0x20) st_text_printf(b, "\\u%04x", *p);
                else st_text_put(b, (const char*)p, 1);
        }
    }
    st_text_put(b, "\"", 1);
}

// Python's order: larger elements first (I64 before F32), then names byte by byte
static int st_writer_order(const void* a, const void* b) {
    const SafeTensorInfo* x = (const SafeTensorInfo*)a;
    const SafeTensorInfo* y = (const SafeTensorInfo*)b;
    size_t sx = st_dtype_size(x->dtype), sy = st_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

// a failed write: remove the temporary file, so nothing half-written is left anywhere, and exit
static void st_writer_abort(FILE* fp, const char* tmp, const char* path, const char* what) {
    int saved = errno;
    if (fp != NULL) fclose(fp);
    remove(tmp);
    fprintf(stderr, "Error: writing '%s' failed: %s: %s\nHINT: is the disk full, or the directory missing or not "
                    "writable? '%s' was left as it was.\n", path, what, strerror(saved), path);
    exit(EXIT_FAILURE);
}

static void st_writer_write(SafeTensorsWriter* w, const char* path) {
    qsort(w->tensors, (size_t)w->num_tensors, sizeof(SafeTensorInfo), st_writer_order);
    // the header
    StText h = {NULL, 0, 0};
    st_text_put(&h, "{", 1);
    if (w->num_meta > 0) {
        st_text_put(&h, "\"__metadata__\":{", 16);
        for (int i = 0; i < w->num_meta; i++) {
            if (i > 0) st_text_put(&h, ",", 1);
            st_text_json_string(&h, w->meta_keys[i]);
            st_text_put(&h, ":", 1);
            st_text_json_string(&h, w->meta_values[i]);
        }
        st_text_put(&h, "}", 1);
    }
    size_t offset = 0;
    for (int i = 0; i < w->num_tensors; i++) {
        const SafeTensorInfo* t = &w->tensors[i];
        if (i > 0 || w->num_meta > 0) st_text_put(&h, ",", 1);
        st_text_json_string(&h, t->name);
        st_text_printf(&h, ":{\"dtype\":\"%s\",\"shape\":[", t->dtype);
        for (int d = 0; d < t->ndim; d++) st_text_printf(&h, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        st_text_printf(&h, "],\"data_offsets\":[%zu,%zu]}", offset, offset + t->nbytes);
        offset += t->nbytes;
    }
    st_text_put(&h, "}", 1);
    while (h.len % 8 != 0) st_text_put(&h, " ", 1);   // so the data section starts 8-byte aligned
    uint8_t len_bytes[8];
    for (int i = 0; i < 8; i++) len_bytes[i] = (uint8_t)((uint64_t)h.len >> (8 * i));

    // write "<path>.tmp" completely and durably, then rename it over the final name in one step
    size_t tmp_len = strlen(path) + 5;
    char* tmp = (char*)mallocCheck(tmp_len);
    snprintf(tmp, tmp_len, "%s.tmp", path);
    FILE* fp = fopen(tmp, "wb");
    if (fp == NULL) st_writer_abort(NULL, tmp, path, "cannot create the temporary file");
    if (fwrite(len_bytes, 1, 8, fp) != 8 || fwrite(h.s, 1, h.len, fp) != h.len) st_writer_abort(fp, tmp, path, "header");
    for (int i = 0; i < w->num_tensors; i++) {
        const SafeTensorInfo* t = &w->tensors[i];
        if (t->nbytes > 0 && fwrite(t->data, 1, t->nbytes, fp) != t->nbytes) st_writer_abort(fp, tmp, path, t->name);
    }
    if (fflush(fp) != 0 || fsync(fileno(fp)) != 0) st_writer_abort(fp, tmp, path, "flush to disk");
    if (fclose(fp) != 0) st_writer_abort(NULL, tmp, path, "close");
    if (rename(tmp, path) != 0) st_writer_abort(NULL, tmp, path, "rename of the temporary file");
    free(tmp);
    free(h.s);
}
