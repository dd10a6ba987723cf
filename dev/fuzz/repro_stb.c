// dev/fuzz/repro_stb.c — why the converter does not hand files straight to Debian's stb_image
// (2.27): its JPEG and PNG decoders on one file, built with ASan and UBSan.
//   data/testdata/stb_dht_overflow.jpg  out-of-bounds write in stbi__build_huffman (a DHT segment
//                                       declaring more than 256 codes)
//   data/testdata/empty_idat.png        arithmetic on a NULL pointer (an empty first IDAT chunk)
// UBSan reports each and the run stops with a non-zero status: `make -C dev/fuzz repro-stb`.
#define STB_IMAGE_IMPLEMENTATION
#define STB_IMAGE_STATIC
#define STBI_ONLY_JPEG
#define STBI_ONLY_PNG
#include <stb_image.h>
#include <stdio.h>

int main(int argc, char** argv) {
    if (argc != 2) { fprintf(stderr, "usage: repro_stb FILE\n"); return 2; }
    int w, h, c;
    unsigned char* px = stbi_load(argv[1], &w, &h, &c, 3);
    printf("stb_image %s: %s\n", argv[1], px ? "decoded" : stbi_failure_reason());
    stbi_image_free(px);
    return 0;
}
