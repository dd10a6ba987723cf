// dev/fuzz/fuzz_safetensors.cu — libFuzzer harness for the safetensors reader (ldmc/safetensors.h).
// Each input is a whole file: it goes into one in-memory file (memfd, no disk), safetensors_load
// parses it from /proc/self/fd/N exactly as from a checkpoint path, and on success every tensor's
// bytes are read (so ASan sees any span outside the buffer), every name is looked up, and every
// metadata value goes through the flat-JSON getters the programs use on "config", and the file is
// read as the programs read checkpoints: the VAE and U-Net config validators (vae_config_from_json,
// unet_config_from_json + their _check), and the U-Net metadata reader with its latent_scale,
// schedule and VAE checks (unet_read_meta).
// safetensors_load ends the program on bad input through fail_exit() (ldmc/common.cuh); the harness
// sets g_fail_hook so that a refusal longjmps back here instead, and frees what the reader held.
// Built by dev/fuzz/Makefile (nvcc for the CUDA headers, clang++ with the sanitizers for the host code).
#include <sys/mman.h>
#include <setjmp.h>
#define TESTING
#include "train_ldm.cu"

static int g_fd = -1;
static jmp_buf g_refused;
static SafeTensors g_st;   // global so that a refusal's longjmp can free what the reader had allocated

static void fuzz_refused(void) { longjmp(g_refused, 1); }
static char g_path[64];

// one memfd for the whole run, rewritten per input
static void fuzz_write_file(const uint8_t* data, size_t size) {
    if (g_fd < 0) {
        g_fd = memfd_create("fuzz_safetensors", 0);
        if (g_fd < 0) { perror("memfd_create"); abort(); }
        snprintf(g_path, sizeof(g_path), "/proc/self/fd/%d", g_fd);
    }
    if (ftruncate(g_fd, 0) != 0 || pwrite(g_fd, data, size, 0) != (ssize_t)size) { perror("memfd write"); abort(); }
}

// what a program does with a parsed file: look tensors up and read their bytes, parse "config"
static void fuzz_use(const SafeTensors* st) {
    volatile uint8_t sink = 0;
    for (int i = 0; i < st->num_tensors; i++) {
        const SafeTensorInfo* t = safetensors_find(st, st->tensors[i].name);
        if (t != &st->tensors[i] && (t == NULL || strcmp(t->name, st->tensors[i].name) != 0)) abort();
        const uint8_t* p = (const uint8_t*)t->data;
        for (size_t b = 0; b < t->nbytes; b++) sink ^= p[b];
    }
    for (int i = 0; i < st->num_meta; i++) {
        const char* v = safetensors_meta(st, st->meta[i].key);
        if (v == NULL) abort();
        int n = 0, arr[8], count = 0;
        float f = 0.0f;
        char s[64];
        json_get_int(v, "ch", &n);
        json_get_float(v, "latent_scale", &f);
        json_get_string(v, "preset", s, sizeof(s));
        json_get_int_array(v, "mult", arr, 8, &count);
    }
    (void)sink;
    VAEConfig vc;
    UNetConfig uc;
    Refusal r;
    const char* config = safetensors_meta(st, "config");
    if (config != NULL) {
        if (vae_config_from_json(&vc, config) == 0) vae_config_check(&vc, &r);
        if (unet_config_from_json(&uc, config) == 0) unet_config_check(&uc, &r);
    }
    LDMMeta meta;
    unet_read_meta(st, st->path, &uc, &meta);   // refusals return through g_fail_hook
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
    fuzz_write_file(data, size);
    g_fail_hook = fuzz_refused;
    if (setjmp(g_refused) == 0) {
        safetensors_load(g_path, &g_st);
        fuzz_use(&g_st);
    }
    safetensors_free(&g_st);
    return 0;
}
