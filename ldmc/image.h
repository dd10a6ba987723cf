// ldmc/image.h — images out of the programs: float images -> uint8 RGB grids, PNG encoding (to a
// file, atomically through files.h's file_write_atomic, or to bytes in memory for TensorBoard) through
// stb_image_write, and CIFAR-10 binary records (sample_ldm --out-raw).
// Float images are host NCHW (N, 3, H, W) in [-1, 1]; a pixel is round((clamp(x, -1, 1) + 1) * 127.5),
// the inverse of the data loader's x/127.5 - 1. RGB buffers are HWC: (height, width, 3) uint8.
// stb_image_write's implementation is compiled here (every program is one translation unit): include
// this header, never define STB_IMAGE_WRITE_IMPLEMENTATION elsewhere.
#pragma once

#include "common.cuh"
#include "files.h"

// stb_image_write, static (no external symbols) and without its FILE* writers (we write ourselves)
#define STB_IMAGE_WRITE_IMPLEMENTATION
#define STB_IMAGE_WRITE_STATIC
#define STBI_WRITE_NO_STDIO
#include "stb_image_write.h"

// ----------------------------------------------------------------------------
// float -> uint8

static inline uint8_t image_pixel(float x) {
    x = fminf(fmaxf(x, -1.0f), 1.0f);  // fmaxf(NaN, -1) = -1: a NaN pixel comes out black
    return (uint8_t)roundf((x + 1.0f) * 127.5f);
}

// A grid of n images (n, 3, h, w), `cols` per row, rows = ceil(n / cols), row-major cells, no gaps
// (so a grid of 32x32 images stays 32-pixel aligned), cells past the last image black.
// Returns a malloc'd RGB buffer (height, width, 3) with *height = rows*h, *width = cols*w (free with free).
static inline uint8_t* image_grid_rgb(const float* images, int n, int h, int w, int cols,
                               int* height, int* width) {
    if (n <= 0 || h <= 0 || w <= 0 || cols <= 0) {
        fprintf(stderr, "Error: image_grid_rgb needs n, h, w, cols > 0 (got n=%d h=%d w=%d cols=%d)\n",
                n, h, w, cols);
        exit(EXIT_FAILURE);
    }
    int rows = ceil_div(n, cols);
    int gh = rows * h, gw = cols * w;
    uint8_t* rgb = (uint8_t*)mallocCheck((size_t)gh * gw * 3);
    memset(rgb, 0, (size_t)gh * gw * 3);
    for (int i = 0; i < n; i++) {
        int y0 = (i / cols) * h, x0 = (i % cols) * w;
        for (int c = 0; c < 3; c++) {
            const float* plane = images + ((size_t)i * 3 + c) * h * w;  // (h, w)
            for (int y = 0; y < h; y++) {
                for (int x = 0; x < w; x++) {
                    rgb[((size_t)(y0 + y) * gw + (x0 + x)) * 3 + c] = image_pixel(plane[y * w + x]);
                }
            }
        }
    }
    *height = gh;
    *width = gw;
    return rgb;
}

// ----------------------------------------------------------------------------
// PNG

// a growable byte buffer: the PNG stream stb_image_write hands over in pieces
typedef struct {
    uint8_t* data;
    size_t size;
    size_t capacity;
} ImageBytes;

static inline void image_bytes_append(void* context, void* chunk, int size) {
    ImageBytes* b = (ImageBytes*)context;
    if (size <= 0) return;
    if (b->size + (size_t)size > b->capacity) {
        size_t cap = b->capacity ? b->capacity : 4096;
        while (cap < b->size + (size_t)size) cap *= 2;
        uint8_t* grown = (uint8_t*)realloc(b->data, cap);
        if (grown == NULL) {
            fprintf(stderr, "Error: out of host memory growing a PNG buffer to %zu bytes\n", cap);
            exit(EXIT_FAILURE);
        }
        b->data = grown;
        b->capacity = cap;
    }
    memcpy(b->data + b->size, chunk, (size_t)size);
    b->size += (size_t)size;
}

static inline void image_bytes_free(ImageBytes* b) {
    free(b->data);
    b->data = NULL;
    b->size = b->capacity = 0;
}

// rgb (height, width, 3) -> PNG bytes in *png (start from a zeroed ImageBytes; free with image_bytes_free)
static inline void image_encode_png(ImageBytes* png, const uint8_t* rgb, int height, int width) {
    if (height <= 0 || width <= 0) {
        fprintf(stderr, "Error: cannot encode a %dx%d PNG\n", height, width);
        exit(EXIT_FAILURE);
    }
    png->size = 0;
    if (!stbi_write_png_to_func(image_bytes_append, png, width, height, 3, rgb, width * 3)) {
        fprintf(stderr, "Error: PNG encoding of a %dx%d image failed (stb_image_write)\n", height, width);
        exit(EXIT_FAILURE);
    }
}

// rgb (height, width, 3) -> PNG file at path, atomically
static inline void image_write_png(const char* path, const uint8_t* rgb, int height, int width) {
    ImageBytes png = {0};
    image_encode_png(&png, rgb, height, width);
    FileChunk chunk = {png.data, png.size};
    file_write_atomic(path, &chunk, 1);
    image_bytes_free(&png);
}

// ----------------------------------------------------------------------------
// CIFAR-10 binary records

#define CIFAR_IMAGE_BYTES 3072                    // 3 planes of 32x32: all R, then G, then B, row-major
#define CIFAR_RECORD_BYTES (1 + CIFAR_IMAGE_BYTES)  // label byte + pixels

// n float images (n, 3, 32, 32) -> records (n, 3073): label byte (labels[i], or 255 for every image
// when labels is NULL: unconditional samples), then the pixels; the plane order is NCHW's own.
static inline void image_to_cifar_records(uint8_t* records, const float* images, const int* labels, int n) {
    for (int i = 0; i < n; i++) {
        int label = labels ? labels[i] : 255;
        if (label < 0 || label > 255) {
            fprintf(stderr, "Error: label %d of image %d does not fit a CIFAR-10 record's label byte "
                            "(0..255)\n", label, i);
            exit(EXIT_FAILURE);
        }
        uint8_t* rec = records + (size_t)i * CIFAR_RECORD_BYTES;
        rec[0] = (uint8_t)label;
        const float* img = images + (size_t)i * CIFAR_IMAGE_BYTES;  // (3, 32, 32)
        for (int j = 0; j < CIFAR_IMAGE_BYTES; j++) rec[1 + j] = image_pixel(img[j]);
    }
}
