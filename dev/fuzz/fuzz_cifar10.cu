// dev/fuzz/fuzz_cifar10.cu — libFuzzer harness for the CIFAR-10 loader (ldmc/cifar10.h).
// A real batch file is 30,730,000 bytes, so the harness calls what cifar10_try_load does with each
// file's bytes, on small inputs:
//   byte 0         the number of records the batch must hold (0..4), and whether to parse a meta file
//   bytes 1..2     the meta text's length L (little-endian, cut to what is left)
//   next L bytes   batches.meta.txt               -> cifar10_parse_meta
//   the rest       a batch file                   -> cifar10_parse_batch
// then, when both parse, a batch of every image with flips through cifar10_get_batch, and a shuffle.
// The parsers report errors through their return value and `err`: nothing here exits.
// Built by dev/fuzz/Makefile (nvcc for the CUDA headers, clang++ with the sanitizers for the host code).
#include "ldmc/cifar10.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    if (size < 3) return 0;
    int nrecords = data[0] % 5, with_meta = (data[0] >> 3) & 1;
    size_t meta_len = (size_t)data[1] | ((size_t)data[2] << 8);
    if (meta_len > size - 3) meta_len = size - 3;
    const char* meta = (const char*)data + 3;
    const uint8_t* batch = data + 3 + meta_len;
    size_t batch_len = size - 3 - meta_len;

    Cifar10 d;
    memset(&d, 0, sizeof(d));
    cifar10_default_names(&d);
    char err[1024];
    err[0] = '\0';
    if (with_meta && cifar10_parse_meta(&d, meta, meta_len, "batches.meta.txt", err, sizeof(err)) != 0) {
        if (err[0] == '\0') abort();  // every refusal must say why
        return 0;
    }
    if (d.num_classes < 1 || d.num_classes > CIFAR10_MAX_CLASSES) abort();
    for (int k = 0; k < d.num_classes; k++) {
        if (strlen(d.class_names[k]) == 0 || strlen(d.class_names[k]) >= CIFAR10_MAX_NAME) abort();
    }
    d.n = nrecords;
    d.labels = (uint8_t*)mallocCheck((size_t)nrecords);
    d.pixels = (uint8_t*)mallocCheck((size_t)nrecords * CIFAR10_IMG_BYTES);
    if (cifar10_parse_batch(&d, 0, batch, batch_len, nrecords, "data_batch_1.bin", "data", err, sizeof(err)) == 0) {
        int idx[4], labels[4];
        float x[4 * CIFAR10_IMG_BYTES];
        for (int b = 0; b < d.n; b++) idx[b] = d.n - 1 - b;
        cifar10_get_batch(&d, idx, d.n, x, labels, 1234, d.n);
        for (int b = 0; b < d.n; b++) {
            if (labels[b] >= d.num_classes) abort();
            for (int i = 0; i < CIFAR10_IMG_BYTES; i++) if (!(x[(size_t)b * CIFAR10_IMG_BYTES + i] >= -1.0f && x[(size_t)b * CIFAR10_IMG_BYTES + i] <= 1.0f)) abort();
        }
        int perm[4];
        cifar10_shuffle(perm, d.n, data[0], batch_len);
    } else if (err[0] == '\0') {
        abort();
    }
    cifar10_free(&d);
    return 0;
}
