// data/image_decode.h — one image file's bytes -> the pixels of one CIFAR-10 record, for
// data/cifar10_from_folders.c (dev/fuzz/fuzz_decode.c fuzzes exactly this code).
//   decode_image_32(bytes, n, out, err, errlen)   out: (3, 32, 32) uint8, planar R, G, B
// Two formats, told apart by their first bytes (not the file name):
//   JPEG  through libjpeg-turbo (link -ljpeg; Debian: libjpeg62-turbo-dev)
//   PNG   through stb_image, compiled here with its PNG decoder only
// The header is read first (libjpeg's jpeg_read_header; PNG's chunk list, then stbi_info): anything but
// 32x32 with 1 to 4 channels is refused before a pixel is decoded, so a crafted header cannot make
// a decoder allocate or loop over a huge image.
// Why not stb_image for JPEG: Debian's stb_image (2.27) writes out of bounds on a crafted JPEG. A DHT
// segment gives 16 code counts whose sum stbi__build_huffman trusts, writing one byte per code into
// 257-byte tables, so counts adding up to more than 256 overrun them (UBSan: "index 257 out of bounds
// for type 'stbi_uc[257]'"); the sum is read before any image size is known, so no check of ours
// could come first. libjpeg-turbo refuses such a table ("Bogus Huffman table definition"), is fuzzed
// continuously upstream, and is what Debian's own image tools use. data/testdata/ keeps such a file
// (stb_dht_overflow.jpg); tests/bad_data.sh checks that the converter refuses it, and
// `make -C dev/fuzz repro-stb` shows stb_image 2.27 writing out of bounds on it.
// Single translation unit: include once per program (stb_image's implementation is compiled here).
#pragma once

#include <setjmp.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <jpeglib.h>

// stb_image: PNG only, from memory only (the caller reads the file), no float/HDR paths
#define STB_IMAGE_IMPLEMENTATION
#define STBI_ONLY_PNG
#define STBI_NO_STDIO
#define STBI_NO_LINEAR
#define STBI_NO_HDR
#define STBI_FAILURE_USERMSG
#if defined(__has_include)
#if __has_include(<stb_image.h>)
#include <stb_image.h>
#else
#include <stb/stb_image.h>
#endif
#else
#include <stb/stb_image.h>
#endif

#define DECODE_SIZE 32
#define DECODE_PIXELS (DECODE_SIZE * DECODE_SIZE)
#define DECODE_MAX_FILE_BYTES (1 << 20)  // a 32x32 image is a few KB; anything near this is not one

typedef enum {
    DECODE_OK = 0,
    DECODE_BAD_SIZE,  // a readable header, but not 32x32 with 1-4 channels: err says what it is
    DECODE_BAD_DATA,  // not a JPEG or PNG, or a damaged one: err says why
} DecodeResult;

// ----------------------------------------------------------------------------
// JPEG (libjpeg-turbo)

// libjpeg reports errors by calling error_exit, which must not return: it jumps back to the
// decode call. Warnings (corrupt data that libjpeg would patch over, e.g. a truncated file decoded
// as grey) jump back too, so a damaged file is an error rather than a silently wrong image.
typedef struct {
    struct jpeg_error_mgr mgr;
    jmp_buf jump;
    char message[JMSG_LENGTH_MAX];
} DecodeJpegError;

static void decode_jpeg_error_exit(j_common_ptr cinfo) {
    DecodeJpegError* e = (DecodeJpegError*)cinfo->err;
    (*cinfo->err->format_message)(cinfo, e->message);
    longjmp(e->jump, 1);
}

static void decode_jpeg_emit_message(j_common_ptr cinfo, int level) {
    if (level < 0) decode_jpeg_error_exit(cinfo);  // level -1: a warning; >= 0: trace output, ignored
}

static DecodeResult decode_jpeg(const uint8_t* bytes, size_t n, uint8_t* out, char* err, size_t errlen) {
    struct jpeg_decompress_struct cinfo;
    DecodeJpegError jerr;
    memset(&cinfo, 0, sizeof(cinfo));
    cinfo.err = jpeg_std_error(&jerr.mgr);
    jerr.mgr.error_exit = decode_jpeg_error_exit;
    jerr.mgr.emit_message = decode_jpeg_emit_message;
    jerr.message[0] = '\0';
    // the state that must survive a longjmp lives in jerr and cinfo (not in registers)
    if (setjmp(jerr.jump)) {
        snprintf(err, errlen, "is not a valid JPEG (%s)", jerr.message);
        jpeg_destroy_decompress(&cinfo);
        return DECODE_BAD_DATA;
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, bytes, (unsigned long)n);
    jpeg_read_header(&cinfo, TRUE);
    int w = (int)cinfo.image_width, h = (int)cinfo.image_height, c = cinfo.num_components;
    if (w != DECODE_SIZE || h != DECODE_SIZE || (c != 1 && c != 3)) {
        snprintf(err, errlen, "is a %dx%d JPEG with %d component%s; every image must be %dx%d, %s", w, h, c,
                 c == 1 ? "" : "s", DECODE_SIZE, DECODE_SIZE,
                 c == 4 ? "and CMYK JPEGs are not read (save it as RGB)" : "greyscale or colour");
        jpeg_destroy_decompress(&cinfo);
        return DECODE_BAD_SIZE;
    }
    cinfo.out_color_space = JCS_RGB;  // greyscale is replicated into R, G and B
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_width != DECODE_SIZE || cinfo.output_height != DECODE_SIZE || cinfo.output_components != 3) {
        snprintf(err, errlen, "is not a valid JPEG (it decodes to %ux%u with %d components, not %dx%d RGB)", cinfo.output_width,
                 cinfo.output_height, cinfo.output_components, DECODE_SIZE, DECODE_SIZE);
        jpeg_destroy_decompress(&cinfo);
        return DECODE_BAD_DATA;
    }
    uint8_t row[DECODE_SIZE * 3];
    while (cinfo.output_scanline < DECODE_SIZE) {
        JSAMPROW rows[1] = {row};
        int y = (int)cinfo.output_scanline;
        if (jpeg_read_scanlines(&cinfo, rows, 1) != 1) {
            snprintf(err, errlen, "is not a valid JPEG (row %d did not decode)", y);
            jpeg_destroy_decompress(&cinfo);
            return DECODE_BAD_DATA;
        }
        // interleaved RGBRGB... -> planar R plane, G plane, B plane (CIFAR)
        for (int x = 0; x < DECODE_SIZE; x++) {
            for (int q = 0; q < 3; q++) out[q * DECODE_PIXELS + y * DECODE_SIZE + x] = row[3 * x + q];
        }
    }
    jpeg_finish_decompress(&cinfo);
    jpeg_destroy_decompress(&cinfo);
    return DECODE_OK;
}

// ----------------------------------------------------------------------------
// PNG (stb_image)

static uint32_t decode_be32(const uint8_t* p) {
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) | ((uint32_t)p[2] << 8) | p[3];
}

// CRC-32 as PNG chunks carry it (reflected polynomial 0xEDB88320), bit by bit: files here are a few KB
static uint32_t decode_crc32(const uint8_t* p, size_t n) {
    uint32_t c = 0xFFFFFFFFu;
    for (size_t i = 0; i < n; i++) {
        c ^= p[i];
        for (int k = 0; k < 8; k++) c = (c >> 1) ^ (0xEDB88320u & (0u - (c & 1u)));
    }
    return ~c;
}

// PNG's chunk list, walked before stb_image sees the file: IHDR first, saying 32x32 (so the size is
// refused with its numbers, which stb_image reports as "corrupt" when they are large); every chunk
// inside the file with a matching CRC (stb_image checks none, so a damaged file would decode to
// wrong pixels); image data before IEND; and no empty IDAT chunk before the first non-empty one
// (stb_image 2.27 does arithmetic on a NULL pointer there, undefined behaviour; found by dev/fuzz).
// Fuzz builds skip the CRC comparison (FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION, as libpng does)
// so mutated files still reach the decoder.
static DecodeResult decode_png_chunks(const uint8_t* bytes, size_t n, char* err, size_t errlen) {
    int saw_data = 0;
    for (size_t pos = 8, index = 0;; index++) {
        if (n - pos < 12) {
            snprintf(err, errlen, "is not a valid PNG (it ends after %zu chunks without an IEND chunk: truncated?)", index);
            return DECODE_BAD_DATA;
        }
        uint32_t len = decode_be32(bytes + pos);
        const uint8_t* type = bytes + pos + 4;
        if (len > n - pos - 12) {
            snprintf(err, errlen, "is not a valid PNG (chunk %zu, %u bytes, runs past the end of the file: truncated?)", index, len);
            return DECODE_BAD_DATA;
        }
#ifndef FUZZING_BUILD_MODE_UNSAFE_FOR_PRODUCTION
        if (decode_crc32(type, 4 + (size_t)len) != decode_be32(type + 4 + len)) {
            snprintf(err, errlen, "is not a valid PNG (chunk %zu '%.4s' fails its CRC: the file is damaged)", index, (const char*)type);
            return DECODE_BAD_DATA;
        }
#endif
        if (index == 0) {
            if (memcmp(type, "IHDR", 4) != 0 || len != 13) {
                snprintf(err, errlen, "is not a valid PNG (no IHDR chunk after the signature)");
                return DECODE_BAD_DATA;
            }
            uint32_t w = decode_be32(type + 4), h = decode_be32(type + 8);
            if (w != DECODE_SIZE || h != DECODE_SIZE) {
                snprintf(err, errlen, "is a %ux%u PNG; every image must be %dx%d", w, h, DECODE_SIZE, DECODE_SIZE);
                return DECODE_BAD_SIZE;
            }
        }
        if (memcmp(type, "IDAT", 4) == 0) {
            if (len == 0 && !saw_data) {
                snprintf(err, errlen, "is not a valid PNG (an empty IDAT chunk before the image data)");
                return DECODE_BAD_DATA;
            }
            saw_data = 1;
        }
        if (memcmp(type, "IEND", 4) == 0) {
            if (saw_data) return DECODE_OK;
            snprintf(err, errlen, "is not a valid PNG (no image data before IEND)");
            return DECODE_BAD_DATA;
        }
        pos += 12 + (size_t)len;
    }
}

static DecodeResult decode_png(const uint8_t* bytes, size_t n, uint8_t* out, char* err, size_t errlen) {
    DecodeResult res = decode_png_chunks(bytes, n, err, errlen);
    if (res != DECODE_OK) return res;
    int w, h, c;
    if (!stbi_info_from_memory(bytes, (int)n, &w, &h, &c)) {
        snprintf(err, errlen, "is not a valid PNG (%s)", stbi_failure_reason());
        return DECODE_BAD_DATA;
    }
    if (w != DECODE_SIZE || h != DECODE_SIZE || c < 1 || c > 4) {
        snprintf(err, errlen, "is a %dx%d PNG with %d channel%s; every image must be %dx%d with 1 to 4 channels",
                 w, h, c, c == 1 ? "" : "s", DECODE_SIZE, DECODE_SIZE);
        return DECODE_BAD_SIZE;
    }
    uint8_t* px = stbi_load_from_memory(bytes, (int)n, &w, &h, &c, 3);  // forced to RGB: grey, alpha, palette
    if (px == NULL) {
        snprintf(err, errlen, "is not a valid PNG (%s)", stbi_failure_reason());
        return DECODE_BAD_DATA;
    }
    if (w != DECODE_SIZE || h != DECODE_SIZE) {  // the header said 32x32; the decoder must agree
        snprintf(err, errlen, "is not a valid PNG (it decodes to %dx%d after a 32x32 header)", w, h);
        stbi_image_free(px);
        return DECODE_BAD_DATA;
    }
    for (int p = 0; p < DECODE_PIXELS; p++) {
        for (int q = 0; q < 3; q++) out[q * DECODE_PIXELS + p] = px[3 * p + q];
    }
    stbi_image_free(px);
    return DECODE_OK;
}

// ----------------------------------------------------------------------------

// The image in bytes[0..n) as a CIFAR-10 record's pixels: out = (3, 32, 32), planar R, G, B.
// DECODE_OK, or the reason in err, a phrase to follow the file's name ("is a 33x32 PNG ...").
static DecodeResult decode_image_32(const uint8_t* bytes, size_t n, uint8_t* out, char* err, size_t errlen) {
    static const uint8_t jpeg_magic[3] = {0xFF, 0xD8, 0xFF};
    static const uint8_t png_magic[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    if (n > DECODE_MAX_FILE_BYTES) {
        snprintf(err, errlen, "is %zu bytes, more than the %d a 32x32 image could need", n, DECODE_MAX_FILE_BYTES);
        return DECODE_BAD_SIZE;
    }
    if (n >= sizeof(jpeg_magic) && memcmp(bytes, jpeg_magic, sizeof(jpeg_magic)) == 0) return decode_jpeg(bytes, n, out, err, errlen);
    if (n >= sizeof(png_magic) && memcmp(bytes, png_magic, sizeof(png_magic)) == 0) return decode_png(bytes, n, out, err, errlen);
    if (n == 0) {
        snprintf(err, errlen, "is empty (0 bytes), not an image");
        return DECODE_BAD_DATA;
    }
    char start[16] = "";
    for (size_t i = 0; i < n && i < 4; i++) snprintf(start + 3 * i, sizeof(start) - 3 * i, " %02x", bytes[i]);
    snprintf(err, errlen, "is neither a JPEG nor a PNG file (it starts with bytes%s)", start);
    return DECODE_BAD_DATA;
}
