// dev/fuzz/fuzz_decode.c — libFuzzer harness for the converter's decode path (data/image_decode.h):
// each input is one image file's bytes, decoded exactly as data/cifar10_from_folders.c does (magic
// bytes, header checks, then libjpeg-turbo or stb_image's PNG decoder). decode_image_32 reports
// errors through its return value and `err` (libjpeg's error exits jump back into it): nothing here
// exits. Seeds: data/testdata/ (JPEG and PNG variants and the stb_image 2.27 crasher).
#include "image_decode.h"

int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    uint8_t out[3 * DECODE_PIXELS];
    char err[JMSG_LENGTH_MAX + 128];
    err[0] = '\0';
    DecodeResult res = decode_image_32(data, size, out, err, sizeof(err));
    if (res != DECODE_OK && err[0] == '\0') abort();  // every refusal must say why
    if (res == DECODE_OK) {
        volatile uint8_t sink = 0;  // every output byte was written (MSan would say; here ASan sees the reads)
        for (size_t i = 0; i < sizeof(out); i++) sink ^= out[i];
        (void)sink;
    }
    return 0;
}
