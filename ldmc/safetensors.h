// ldmc/safetensors.h — reading and writing safetensors files, ldm.c's checkpoint and reference format:
//   an 8-byte little-endian header length N, N bytes of JSON header, then the raw little-endian data.
//   The header maps each tensor name to {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}
//   (offsets into the data section) plus an optional "__metadata__" object of strings.
// Defines:
//   SafeTensors, safetensors_load / safetensors_free: a strict reader that keeps the whole file in host
//     memory; any inconsistency ends the program with one message naming the file and the problem.
//   safetensors_find / safetensors_get_f32 / safetensors_get_i64 / safetensors_meta: lookups.
//   SafeTensorsWriter, st_writer_*: collects tensors (host pointers, not copied) and metadata and writes
//     them atomically (files.h) in the same bytes as Python's `safetensors`.
//   json_get_int / json_get_float / json_get_string / json_get_int_array: values of the flat JSON objects
//     the programs store in metadata, e.g. `config` = {"preset":"tiny","ch":16,"mult":[1,2,4]}.
// The JSON read is only what those hold: the header's two fixed levels (no recursion, so no nesting to
// bound) and flat objects of numbers, strings and integer arrays. Strings are UTF-8 with the escapes
// \" \\ \/ \b \f \n \r \t \u0001-\u007f: Python's safetensors (serde_json) and our writer store every
// other character as raw UTF-8, so \u escapes of non-ASCII characters (from ensure_ascii JSON writers)
// are refused with a message saying so. Host only: callers move tensors to and from the device.
#pragma once

#include <stdarg.h>
#include <limits.h>
#include "common.cuh"
#include "files.h"

// ----------------------------------------------------------------------------
// data types

typedef struct {
    const char* name;     // first member, as in SafeTensorsMeta: st_by_name sorts both by it
    const char* dtype;    // "F32", "I64", ...
    int ndim;
    int64_t shape[8];
    size_t numel;
    size_t nbytes;
    const void* data;     // host memory: into SafeTensors.buffer, or the writer's caller's pointer
} SafeTensorInfo;

typedef struct { const char* key; const char* value; } SafeTensorsMeta;

// names, dtypes and metadata strings point into `buffer`, where the header's strings were unescaped
typedef struct {
    char path[1024];
    int num_tensors;
    SafeTensorInfo* tensors;    // (num_tensors,) sorted by name, for safetensors_find
    int num_meta;
    SafeTensorsMeta* meta;      // (num_meta,) sorted by key
    uint8_t* buffer;            // the whole file
} SafeTensors;

typedef struct {
    int num_tensors, tensors_cap, num_meta, meta_cap;
    SafeTensorInfo* tensors;    // (num_tensors,) names copied, .data the caller's host memory
    SafeTensorsMeta* meta;      // (num_meta,) copies of the caller's strings
} SafeTensorsWriter;

// ----------------------------------------------------------------------------
// helpers: dtypes, growing arrays, sorting by name

// bytes per element of the two dtypes ldm.c stores (weights, activations: F32; steps, labels, RNG
// state: I64), 0 for any other
static inline size_t st_dtype_size(const char* dtype) {
    return strcmp(dtype, "F32") == 0 ? 4 : strcmp(dtype, "I64") == 0 ? 8 : 0;
}

// "[4, 3, 3, 3]"
static inline void st_shape_str(const SafeTensorInfo* t, char* out, size_t n) {
    size_t len = (size_t)snprintf(out, n, "[");
    for (int d = 0; d < t->ndim && len < n; d++) {
        len += (size_t)snprintf(out + len, n - len, d ? ", %lld" : "%lld", (long long)t->shape[d]);
    }
    if (len < n) snprintf(out + len, n - len, "]");
}

// room for one more element in a growing array (exits when out of memory)
static inline void st_grow(void** array, int* cap, int count, size_t elem) {
    if (count < *cap) return;
    *cap = *cap ? 2 * *cap : 16;
    *array = realloc(*array, (size_t)*cap * elem);
    if (*array == NULL) { fprintf(stderr, "Error: out of memory in safetensors.h\n"); exit(EXIT_FAILURE); }
}

// qsort/bsearch order of SafeTensorInfo or SafeTensorsMeta (or of a bare name, as a key): by the name
static inline int st_by_name(const void* a, const void* b) {
    return strcmp(*(const char* const*)a, *(const char* const*)b);
}

// sorts n structs of `size` bytes that begin with their name by name; returns a name that appears twice,
// or NULL. O(n log n): 100,000 names take milliseconds (comparing each with those before took minutes)
static inline const char* st_sort_by_name(void* items, int n, size_t size) {
    if (n < 2) return NULL;   // items may be NULL when n is 0, and qsort's pointer must never be NULL
    qsort(items, (size_t)n, size, st_by_name);
    for (int i = 1; i < n; i++) {
        const char* prev = (const char*)items + (size_t)(i - 1) * size;
        if (st_by_name(prev, prev + size) == 0) return *(const char* const*)prev;
    }
    return NULL;
}

// the header must be UTF-8 (Python refuses the file otherwise); checks lead and continuation bytes
static inline int st_utf8_valid(const char* s, size_t n) {
    const unsigned char* p = (const unsigned char*)s;
    for (size_t i = 0; i < n;) {
        int extra = p[i] < 0x80 ? 0 : (p[i] >> 5) == 0x6 ? 1 : (p[i] >> 4) == 0xE ? 2 : (p[i] >> 3) == 0x1E ? 3 : -1;
        if (extra < 0 || i + (size_t)extra >= n) return 0;
        for (i++; extra > 0; extra--, i++) {
            if ((p[i] & 0xC0) != 0x80) return 0;
        }
    }
    return 1;
}

// ----------------------------------------------------------------------------
// JSON: a cursor over a text that need not be NUL-terminated (the header sits inside the file)

typedef struct {
    const char* start;   // the JSON text
    const char* p;       // next unread character
    const char* end;     // one past the last character
    char error[160];     // the first failure: what was expected and at which byte
} JsonCursor;

static inline void json_init(JsonCursor* c, const char* text, size_t len) {
    c->start = c->p = text;
    c->end = text + len;
    c->error[0] = '\0';
}

static inline int json_fail(JsonCursor* c, const char* what) {
    if (c->error[0] == '\0') snprintf(c->error, sizeof(c->error), "%s at byte %ld", what, (long)(c->p - c->start));
    return -1;
}

// the next non-blank character, or -1 at the end of the text
static inline int json_peek(JsonCursor* c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r')) c->p++;
    return c->p < c->end ? (unsigned char)*c->p : -1;
}

static inline int json_expect(JsonCursor* c, char ch) {
    int got = json_peek(c);
    if (got == ch) { c->p++; return 0; }
    char what[64];
    if (got < 0) snprintf(what, sizeof(what), "expected '%c' but the text ends", ch);
    else if (got < 0x20 || got >= 0x7f) snprintf(what, sizeof(what), "expected '%c' but found byte 0x%02x", ch, got);
    else snprintf(what, sizeof(what), "expected '%c' but found '%c'", ch, got);
    return json_fail(c, what);
}

// opens an object or array: 1 if an element follows, 0 if it closes at once, -1 if `open` is not there
static inline int json_open(JsonCursor* c, char open, char close) {
    if (json_expect(c, open)) return -1;
    if (json_peek(c) != close) return 1;
    c->p++;
    return 0;
}

// after an element: 1 if ',' (another follows), 0 if `close` (consumed), -1 for anything else
static inline int json_more(JsonCursor* c, char close) {
    if (json_peek(c) == ',') { c->p++; return 1; }
    return json_expect(c, close) ? -1 : 0;
}

// a string, unescaped into out (cap bytes with the NUL), or only stepped over when out is NULL.
// out may be the string's own opening quote: unescaping only shrinks the text, so every byte is
// written after it was read (the header's strings are unescaped in place this way).
static inline int json_string(JsonCursor* c, char* out, size_t cap) {
    if (json_expect(c, '"')) return -1;
    for (size_t n = 0;; n++) {
        if (c->p >= c->end) return json_fail(c, "unterminated string");
        char ch = *c->p++;
        if (ch == '"') {
            if (out != NULL) out[n] = '\0';
            return 0;
        }
        if ((unsigned char)ch < 0x20) return json_fail(c, "unescaped control character in a string");
        if (ch == '\\') {
            const char* letters = "\"\\/bfnrt";
            const char* k = c->p < c->end && *c->p != '\0' ? strchr(letters, *c->p) : NULL;
            if (k != NULL) {
                ch = "\"\\/\b\f\n\r\t"[k - letters];
                c->p++;
            } else if (c->p < c->end && *c->p == 'u') {
                char hex[5] = {0};
                if (c->end - c->p >= 5) memcpy(hex, c->p + 1, 4);
                if (strspn(hex, "0123456789abcdefABCDEF") != 4) return json_fail(c, "\\u escape needs 4 hex digits");
                long v = strtol(hex, NULL, 16);
                if (v == 0) return json_fail(c, "\\u0000 (a NUL character) in a string is not supported");
                if (v > 0x7f) return json_fail(c, "\\u escape of a non-ASCII character (write it as UTF-8, as safetensors does)");
                ch = (char)v;
                c->p += 5;
            } else {
                return json_fail(c, "unknown escape sequence in a string");
            }
        }
        if (out != NULL) {
            if (n + 1 >= cap) return json_fail(c, "string too long");
            out[n] = ch;
        }
    }
}

// the text of a number token into tok[32]; strtoll / strtod then check its syntax
static inline int json_number(JsonCursor* c, char* tok) {
    json_peek(c);
    size_t n = 0;
    while (c->p < c->end && *c->p != '\0' && strchr("+-.eE0123456789", *c->p) != NULL) {
        if (n == 31) return json_fail(c, "number too long");
        tok[n++] = *c->p++;
    }
    tok[n] = '\0';
    return n > 0 ? 0 : json_fail(c, "expected a number");
}

// an integer as JSON writes it (no '+', fraction, exponent or leading zero) that fits in int64
static inline int json_int(JsonCursor* c, int64_t* out) {
    char tok[32], *end;
    if (json_number(c, tok)) return -1;
    const char* digits = tok + (tok[0] == '-');
    errno = 0;
    long long v = strtoll(tok, &end, 10);
    if (*end != '\0' || digits[0] < '0' || digits[0] > '9' || (digits[0] == '0' && digits[1] != '\0')) {
        return json_fail(c, "expected an integer");
    }
    if (errno == ERANGE) return json_fail(c, "integer too large");
    *out = v;
    return 0;
}

// [i0, i1, ...]: stores the first `max` values, counts all of them
static inline int json_int_array(JsonCursor* c, int64_t* out, int max, int* count) {
    *count = 0;
    int more = json_open(c, '[', ']');
    while (more > 0) {
        int64_t v;
        if (json_int(c, &v)) return -1;
        if (*count < max) out[*count] = v;
        (*count)++;
        more = json_more(c, ']');
    }
    return more;
}

// ----------------------------------------------------------------------------
// reader: any problem is one message naming the file and what is wrong, then exit

static inline void st_fail(const char* path, const char* fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "Error: %s: ", path);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nHINT: the file must be a safetensors file written by ldm.c or Python's safetensors (save_file); "
                    "check the path, and if a run was killed mid-write, the last complete checkpoint is still under "
                    "its final name.\n");
    fail_exit();
}

// a step of the header's JSON that failed (rc != 0) ends the program, saying where
static inline void st_json(int rc, const JsonCursor* c, const char* path) {
    if (rc != 0) st_fail(path, "the header is not valid safetensors JSON: %s of the header", c->error);
}

// a string of the header, unescaped in place and NUL-terminated there
static inline const char* st_string(JsonCursor* c, const char* path) {
    json_peek(c);
    char* s = (char*)c->p;
    st_json(json_string(c, s, (size_t)(c->end - c->p)), c, path);
    return s;
}

// {"key": "value", ...}
static inline void st_parse_metadata(JsonCursor* c, SafeTensors* st) {
    int cap = 0;
    if (json_peek(c) != '{') st_fail(st->path, "\"__metadata__\" is not a JSON object of strings");
    int more = json_open(c, '{', '}');
    while (more > 0) {
        st_grow((void**)&st->meta, &cap, st->num_meta, sizeof(SafeTensorsMeta));
        SafeTensorsMeta* m = &st->meta[st->num_meta++];
        m->key = st_string(c, st->path);
        st_json(json_expect(c, ':'), c, st->path);
        if (json_peek(c) != '"') st_fail(st->path, "metadata '%s' is not a string (safetensors metadata values must "
                                         "be strings)", m->key);
        m->value = st_string(c, st->path);
        more = json_more(c, '}');
    }
    st_json(more, c, st->path);
}

// {"dtype": .., "shape": [..], "data_offsets": [begin, end]}, each once, checked against the data section
static inline void st_parse_tensor(JsonCursor* c, SafeTensorInfo* t, const uint8_t* data, size_t data_size, const char* path) {
    int64_t shape[8], offsets[2];
    int ndim = -1, noffsets = -1;
    if (json_peek(c) != '{') st_fail(path, "tensor '%s' is not a JSON object {\"dtype\", \"shape\", \"data_offsets\"}", t->name);
    int more = json_open(c, '{', '}');
    while (more > 0) {
        const char* key = st_string(c, path);
        st_json(json_expect(c, ':'), c, path);
        if (strcmp(key, "dtype") == 0 && t->dtype == NULL) t->dtype = st_string(c, path);
        else if (strcmp(key, "shape") == 0 && ndim < 0) st_json(json_int_array(c, shape, 8, &ndim), c, path);
        else if (strcmp(key, "data_offsets") == 0 && noffsets < 0) st_json(json_int_array(c, offsets, 2, &noffsets), c, path);
        else st_fail(path, "tensor '%s' has an unexpected or repeated field \"%s\" (expected \"dtype\", \"shape\" and "
                     "\"data_offsets\", once each)", t->name, key);
        more = json_more(c, '}');
    }
    st_json(more, c, path);
    if (t->dtype == NULL || ndim < 0 || noffsets < 0) {
        st_fail(path, "tensor '%s' has no \"%s\"", t->name, t->dtype == NULL ? "dtype" : ndim < 0 ? "shape" : "data_offsets");
    }
    size_t esize = st_dtype_size(t->dtype);
    if (esize == 0) st_fail(path, "tensor '%s' has dtype '%s'; ldm.c reads only F32 and I64 tensors", t->name, t->dtype);
    if (ndim > 8) st_fail(path, "tensor '%s' has %d dimensions, at most 8 are supported", t->name, ndim);
    if (noffsets != 2) st_fail(path, "tensor '%s' data_offsets has %d numbers, expected [begin, end]", t->name, noffsets);
    // element count and byte size, refusing negative dimensions and sizes that overflow
    t->ndim = ndim;
    t->numel = 1;
    for (int d = 0; d < ndim; d++) {
        if (shape[d] < 0) st_fail(path, "tensor '%s' has a negative dimension %lld", t->name, (long long)shape[d]);
        if (shape[d] != 0 && t->numel > SIZE_MAX / esize / (uint64_t)shape[d]) {
            st_fail(path, "tensor '%s' has a shape too large for memory", t->name);
        }
        t->shape[d] = shape[d];
        t->numel *= (size_t)shape[d];
    }
    t->nbytes = t->numel * esize;
    long long begin = offsets[0], end = offsets[1];
    if (begin < 0 || begin > end) {
        st_fail(path, "tensor '%s' data_offsets [%lld, %lld) end before they begin: the file is corrupt", t->name, begin, end);
    }
    if ((uint64_t)end > data_size) {
        st_fail(path, "tensor '%s' data_offsets [%lld, %lld) exceed the data section (%zu bytes): the file is truncated "
                "or corrupt", t->name, begin, end, data_size);
    }
    if ((uint64_t)(end - begin) != t->nbytes) {
        char s[160];
        st_shape_str(t, s, sizeof(s));
        st_fail(path, "tensor '%s' is %s of shape %s = %zu bytes but its data_offsets [%lld, %lld) span %lld bytes",
                t->name, t->dtype, s, t->nbytes, begin, end, end - begin);
    }
    t->data = data + begin;
}

// qsort order of SafeTensorInfo: by where their data begins, empty tensors first
static inline int st_by_offset(const void* a, const void* b) {
    const SafeTensorInfo* x = (const SafeTensorInfo*)a;
    const SafeTensorInfo* y = (const SafeTensorInfo*)b;
    if (x->data != y->data) return (const uint8_t*)x->data < (const uint8_t*)y->data ? -1 : 1;
    return x->nbytes < y->nbytes ? -1 : x->nbytes > y->nbytes;
}

// the tensors' byte ranges, in order of where they begin, must tile the data section exactly
static inline void st_check_layout(SafeTensors* st, const uint8_t* data, size_t data_size) {
    if (st->num_tensors > 1) qsort(st->tensors, (size_t)st->num_tensors, sizeof(SafeTensorInfo), st_by_offset);   // NULL when empty
    size_t expected = 0;   // where the next tensor must begin
    for (int i = 0; i < st->num_tensors; i++) {
        const SafeTensorInfo* t = &st->tensors[i];
        size_t begin = (size_t)((const uint8_t*)t->data - data);
        if (begin < expected) {
            st_fail(st->path, "tensor '%s' (bytes [%zu, %zu)) overlaps tensor '%s' (which ends at %zu): the file is "
                    "corrupt", t->name, begin, begin + t->nbytes, st->tensors[i - 1].name, expected);
        }
        if (begin > expected) {
            st_fail(st->path, "gap of %zu unused bytes before tensor '%s' (bytes [%zu, %zu) are not part of any tensor): "
                    "the file is corrupt", begin - expected, t->name, expected, begin);
        }
        expected = begin + t->nbytes;
    }
    if (expected != data_size) {
        st_fail(st->path, "%zu trailing bytes after the last tensor's data (the tensors end at byte %zu of a %zu-byte data "
                "section): the file is corrupt", data_size - expected, expected, data_size);
    }
}

static inline void st_parse_header(SafeTensors* st, const char* header, size_t header_len, const uint8_t* data, size_t data_size) {
    const char* path = st->path;
    if (!st_utf8_valid(header, header_len)) st_fail(path, "the header is not valid UTF-8");
    JsonCursor c;
    json_init(&c, header, header_len);
    int cap = 0, seen_meta = 0;
    int more = json_open(&c, '{', '}');
    while (more > 0) {
        const char* name = st_string(&c, path);
        st_json(json_expect(&c, ':'), &c, path);
        if (strcmp(name, "__metadata__") == 0) {
            if (seen_meta++) st_fail(path, "\"__metadata__\" appears twice in the header");
            st_parse_metadata(&c, st);
        } else {
            st_grow((void**)&st->tensors, &cap, st->num_tensors, sizeof(SafeTensorInfo));
            SafeTensorInfo* t = &st->tensors[st->num_tensors++];
            memset(t, 0, sizeof(*t));
            t->name = name;
            st_parse_tensor(&c, t, data, data_size, path);
        }
        more = json_more(&c, '}');
    }
    st_json(more, &c, path);
    // only blanks may follow the object: Python's writer pads the header with spaces
    if (json_peek(&c) >= 0) st_json(json_fail(&c, "unexpected text after the closing '}'"), &c, path);
    st_check_layout(st, data, data_size);
    // sorted by name for the lookups, which also puts any name that appears twice next to itself
    const char* dup = st_sort_by_name(st->tensors, st->num_tensors, sizeof(SafeTensorInfo));
    if (dup != NULL) st_fail(path, "tensor '%s' appears twice in the header", dup);
    dup = st_sort_by_name(st->meta, st->num_meta, sizeof(SafeTensorsMeta));
    if (dup != NULL) st_fail(path, "metadata key '%s' appears twice in the header", dup);
}

// reads the whole file `path` into st (free with safetensors_free); a file that is not a regular file
// or not a valid safetensors file ends the program with one message naming the problem
static inline void safetensors_load(const char* path, SafeTensors* st) {
    memset(st, 0, sizeof(*st));
    snprintf(st->path, sizeof(st->path), "%s", path);
    const char* problem = regular_file_problem(path);
    if (problem != NULL) st_fail(path, "%s", problem);
    FILE* fp = fopen(path, "rb");
    struct stat sb;
    if (fp == NULL || fstat(fileno(fp), &sb) != 0) st_fail(path, "cannot open: %s", strerror(errno));
    size_t size = (size_t)sb.st_size;
    st->buffer = (uint8_t*)malloc(size + 1);
    if (st->buffer == NULL) st_fail(path, "out of memory reading its %zu bytes", size);
    size_t got = fread(st->buffer, 1, size, fp);
    fclose(fp);
    if (got != size) st_fail(path, "read only %zu of its %zu bytes", got, size);
    if (size < 8) st_fail(path, "the file is %zu bytes, too short for a safetensors file (which starts with an 8-byte "
                          "header length)", size);
    uint64_t header_len = 0;   // little-endian, whatever the host's byte order
    for (int i = 7; i >= 0; i--) header_len = (header_len << 8) | st->buffer[i];
    if (header_len > size - 8) {
        st_fail(path, "header length %llu exceeds the %zu bytes after the 8-byte length field: the file is truncated "
                "or not a safetensors file", (unsigned long long)header_len, size - 8);
    }
    st_parse_header(st, (const char*)st->buffer + 8, (size_t)header_len, st->buffer + 8 + header_len,
                    size - 8 - (size_t)header_len);
}

static inline void safetensors_free(SafeTensors* st) {
    free(st->tensors);
    free(st->meta);
    free(st->buffer);
    memset(st, 0, sizeof(*st));
}

// ----------------------------------------------------------------------------
// lookups

// (a file without tensors or metadata has a NULL array there, and bsearch's pointer must never be NULL)
static inline const SafeTensorInfo* safetensors_find(const SafeTensors* st, const char* name) {
    if (st->num_tensors == 0) return NULL;
    return (const SafeTensorInfo*)bsearch(&name, st->tensors, (size_t)st->num_tensors, sizeof(SafeTensorInfo), st_by_name);
}

static inline const char* safetensors_meta(const SafeTensors* st, const char* key) {
    if (st->num_meta == 0) return NULL;
    const SafeTensorsMeta* m = (const SafeTensorsMeta*)bsearch(&key, st->meta, (size_t)st->num_meta,
                                                               sizeof(SafeTensorsMeta), st_by_name);
    return m != NULL ? m->value : NULL;
}

// the tensor `name` of dtype `dtype` and (unless expected_numel == 0) that many elements, or exit
static inline const SafeTensorInfo* st_get_checked(const SafeTensors* st, const char* name, const char* dtype,
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

static inline const float* safetensors_get_f32(const SafeTensors* st, const char* name, size_t expected_numel) {
    return (const float*)st_get_checked(st, name, "F32", expected_numel)->data;
}

static inline const int64_t* safetensors_get_i64(const SafeTensors* st, const char* name, size_t expected_numel) {
    return (const int64_t*)st_get_checked(st, name, "I64", expected_numel)->data;
}

// ----------------------------------------------------------------------------
// values of a flat JSON object (the `config` metadata): 0 on success, -1 if absent or malformed

// steps over a value json_get_* was not asked for: a string, a number or an array of numbers
static inline int json_skip_value(JsonCursor* c) {
    char tok[32];
    if (json_peek(c) == '"') return json_string(c, NULL, 0);
    if (json_peek(c) != '[') return json_number(c, tok);
    int more = json_open(c, '[', ']');
    while (more > 0) more = json_number(c, tok) ? -1 : json_more(c, ']');
    return more;
}

// leaves the cursor on the value of `key` at the top level of the flat object `json` (NULL: absent)
static inline int json_find_key(JsonCursor* c, const char* json, const char* key) {
    if (json == NULL) return -1;
    json_init(c, json, strlen(json));
    int more = json_open(c, '{', '}');
    while (more > 0) {
        char k[256];
        if (json_string(c, k, sizeof(k)) || json_expect(c, ':')) return -1;
        if (strcmp(k, key) == 0) return 0;
        more = json_skip_value(c) ? -1 : json_more(c, '}');
    }
    return -1;
}

// a value must be followed by ',' or '}' (so "16x" is not read as 16)
static inline int json_value_ends(JsonCursor* c) {
    int ch = json_peek(c);
    return (ch == ',' || ch == '}') ? 0 : -1;
}

static inline int json_get_int(const char* json, const char* key, int* out) {
    JsonCursor c;
    int64_t v;
    if (json_find_key(&c, json, key) || json_int(&c, &v) || json_value_ends(&c) || v < INT_MIN || v > INT_MAX) return -1;
    *out = (int)v;
    return 0;
}

static inline int json_get_float(const char* json, const char* key, float* out) {
    JsonCursor c;
    char tok[32], *end;
    if (json_find_key(&c, json, key) || json_number(&c, tok) || json_value_ends(&c)) return -1;
    double v = strtod(tok, &end);
    if (*end != '\0') return -1;
    *out = (float)v;
    return 0;
}

static inline int json_get_string(const char* json, const char* key, char* out, size_t n) {
    JsonCursor c;
    if (json_find_key(&c, json, key) || json_peek(&c) != '"' || json_string(&c, out, n) || json_value_ends(&c)) return -1;
    return 0;
}

// a flat array of at most `max` (<= 64) integers, e.g. "mult":[1,2,4]
static inline int json_get_int_array(const char* json, const char* key, int* out, int max, int* count) {
    JsonCursor c;
    int64_t v[64];
    int n;
    if (json_find_key(&c, json, key) || json_int_array(&c, v, 64, &n) || json_value_ends(&c) || n > max || n > 64) return -1;
    for (int i = 0; i < n; i++) {
        if (v[i] < INT_MIN || v[i] > INT_MAX) return -1;
        out[i] = (int)v[i];
    }
    *count = n;
    return 0;
}

// ----------------------------------------------------------------------------
// writer: the same bytes as Python's safetensors.torch.save_file for the same tensors and a single
// metadata entry (Python orders several metadata entries arbitrarily; ours are sorted by key).
// Layout as Python's: "__metadata__" first, then tensors by dtype alignment (I64 before F32) and then by
// name, so every tensor is aligned to its element size; the header is padded with spaces to a multiple
// of 8 bytes; strings are escaped as serde_json does (\" \\ \b \f \n \r \t, other control bytes \u00XX).

static inline void st_writer_init(SafeTensorsWriter* w) {
    memset(w, 0, sizeof(*w));
}

static inline void st_writer_free(SafeTensorsWriter* w) {
    for (int i = 0; i < w->num_tensors; i++) free((void*)w->tensors[i].name);
    for (int i = 0; i < w->num_meta; i++) {
        free((void*)w->meta[i].key);
        free((void*)w->meta[i].value);
    }
    free(w->tensors);
    free(w->meta);
    memset(w, 0, sizeof(*w));
}

static inline char* st_strdup(const char* s) {
    size_t n = strlen(s) + 1;
    return (char*)memcpy(mallocCheck(n), s, n);
}

static inline void st_writer_add(SafeTensorsWriter* w, const char* name, const char* dtype, const void* host_data,
                          int ndim, const int64_t* shape) {
    const char* problem = NULL;
    if (name[0] == '\0') problem = "the name is empty";
    else if (strcmp(name, "__metadata__") == 0) problem = "that name is reserved for the metadata";
    else if (!st_utf8_valid(name, strlen(name))) problem = "the name is not valid UTF-8";
    else if (st_dtype_size(dtype) == 0) problem = "dtype must be F32 or I64";
    else if (ndim < 0 || ndim > 8) problem = "ndim must be 0 to 8";
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
    st_grow((void**)&w->tensors, &w->tensors_cap, w->num_tensors, sizeof(SafeTensorInfo));
    SafeTensorInfo* t = &w->tensors[w->num_tensors++];
    memset(t, 0, sizeof(*t));
    t->name = st_strdup(name);
    t->dtype = strcmp(dtype, "F32") == 0 ? "F32" : "I64";   // a static string, not the caller's
    t->ndim = ndim;
    for (int d = 0; d < ndim; d++) t->shape[d] = shape[d];
    t->numel = numel;
    t->nbytes = numel * st_dtype_size(dtype);
    t->data = host_data;
}

static inline void st_writer_add_meta(SafeTensorsWriter* w, const char* key, const char* value) {
    if (!st_utf8_valid(key, strlen(key)) || !st_utf8_valid(value, strlen(value))) {
        fprintf(stderr, "Error: st_writer_add_meta('%s'): key and value must be valid UTF-8\n", key);
        exit(EXIT_FAILURE);
    }
    st_grow((void**)&w->meta, &w->meta_cap, w->num_meta, sizeof(SafeTensorsMeta));
    w->meta[w->num_meta].key = st_strdup(key);
    w->meta[w->num_meta].value = st_strdup(value);
    w->num_meta++;
}

static inline void st_put_json_string(FILE* f, const char* s) {
    const char* specials = "\"\\\b\f\n\r\t";
    fputc('"', f);
    for (const unsigned char* p = (const unsigned char*)s; *p; p++) {
        const char* k = strchr(specials, *p);
        if (k != NULL) fprintf(f, "\\%c", "\"\\bfnrt"[k - specials]);
        else if (*p < 0x20) fprintf(f, "\\u%04x", *p);
        else fputc(*p, f);
    }
    fputc('"', f);
}

// Python's order: larger elements first (I64 before F32), then names byte by byte
static inline int st_writer_order(const void* a, const void* b) {
    const SafeTensorInfo* x = (const SafeTensorInfo*)a;
    const SafeTensorInfo* y = (const SafeTensorInfo*)b;
    size_t sx = st_dtype_size(x->dtype), sy = st_dtype_size(y->dtype);
    if (sx != sy) return sx > sy ? -1 : 1;
    return strcmp(x->name, y->name);
}

static inline void st_writer_write(SafeTensorsWriter* w, const char* path) {
    // a name added twice is a bug in the caller, found by sorting as in the reader; metadata keeps the
    // order it was added in (a sorted copy finds the duplicates), so a file's bytes depend only on its writer
    const char* dup = st_sort_by_name(w->tensors, w->num_tensors, sizeof(SafeTensorInfo));
    SafeTensorsMeta* keys = (SafeTensorsMeta*)mallocCheck((size_t)(w->num_meta + 1) * sizeof(SafeTensorsMeta));
    if (w->num_meta > 0) memcpy(keys, w->meta, (size_t)w->num_meta * sizeof(SafeTensorsMeta));   // meta is NULL when empty
    const char* dup_key = st_sort_by_name(keys, w->num_meta, sizeof(SafeTensorsMeta));
    free(keys);
    if (dup != NULL || dup_key != NULL) {
        fprintf(stderr, "Error: st_writer_write('%s'): %s '%s' was added twice\n", path, dup ? "tensor" : "metadata key",
                dup ? dup : dup_key);
        exit(EXIT_FAILURE);
    }
    if (w->num_tensors > 1) qsort(w->tensors, (size_t)w->num_tensors, sizeof(SafeTensorInfo), st_writer_order);   // NULL when empty
    char* header = NULL;   // the 8-byte length, then the JSON
    size_t size = 0;
    FILE* h = open_memstream(&header, &size);   // a FILE* that grows a malloc'd buffer
    if (h == NULL) { fprintf(stderr, "Error: out of memory building a safetensors header\n"); exit(EXIT_FAILURE); }
    fwrite("\0\0\0\0\0\0\0", 1, 8, h);   // the length, filled in below
    fputc('{', h);
    if (w->num_meta > 0) {
        fputs("\"__metadata__\":{", h);
        for (int i = 0; i < w->num_meta; i++) {
            if (i > 0) fputc(',', h);
            st_put_json_string(h, w->meta[i].key);
            fputc(':', h);
            st_put_json_string(h, w->meta[i].value);
        }
        fputc('}', h);
    }
    size_t offset = 0;
    for (int i = 0; i < w->num_tensors; i++) {
        const SafeTensorInfo* t = &w->tensors[i];
        if (i > 0 || w->num_meta > 0) fputc(',', h);
        st_put_json_string(h, t->name);
        fprintf(h, ":{\"dtype\":\"%s\",\"shape\":[", t->dtype);
        for (int d = 0; d < t->ndim; d++) fprintf(h, d ? ",%lld" : "%lld", (long long)t->shape[d]);
        fprintf(h, "],\"data_offsets\":[%zu,%zu]}", offset, offset + t->nbytes);
        offset += t->nbytes;
    }
    fputc('}', h);
    fflush(h);
    fprintf(h, "%*s", (int)((8 - size % 8) % 8), "");   // so the data section starts 8-byte aligned
    if (fclose(h) != 0) { fprintf(stderr, "Error: out of memory building a safetensors header\n"); exit(EXIT_FAILURE); }
    for (int i = 0; i < 8; i++) header[i] = (char)((uint64_t)(size - 8) >> (8 * i));   // little-endian

    FileChunk* chunks = (FileChunk*)mallocCheck((size_t)(w->num_tensors + 1) * sizeof(FileChunk));
    chunks[0].data = header;
    chunks[0].size = size;
    for (int i = 0; i < w->num_tensors; i++) {
        chunks[1 + i].data = w->tensors[i].data;
        chunks[1 + i].size = w->tensors[i].nbytes;
    }
    file_write_atomic(path, chunks, w->num_tensors + 1);
    free(chunks);
    free(header);
}
