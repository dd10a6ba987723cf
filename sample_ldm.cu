/*
sample_ldm.cu — images from a trained latent diffusion model: the U-Net checkpoint (EMA weights) of a
train_ldm run and the VAE it was trained with. Samplers (ldmc/diffusion.h): DDPM (ancestral),
DDIM (eta) and DPM-Solver++(2M), over any number of respaced steps, with classifier-free guidance
computed in one batched forward of the conditional and "no class" rows.

    ./sample_ldm                                     # the default run's checkpoint, a grid per class
    ./sample_ldm --checkpoint runs/ldm_tiny/checkpoint_final.safetensors --sampler dpm++2m --steps 20 \
                 --guidance-scale 3 --n 500 --out grid.png --out-raw samples.bin
*/
#define TESTING
#include "train_ldm.cu"
#include "ldmc/sha256.h"

typedef struct {
    char checkpoint[512];
    const char* vae_checkpoint;   // NULL: the path stored in the U-Net checkpoint
    Sampler sampler;
    int steps;                    // 0: the sampler's default
    float eta;
    float guidance;
    int guidance_given;
    int class_id;                 // -1: all classes
    int n;                        // 0: one row of 8 per class (80 for CIFAR-10), or 64
    uint64_t seed;
    const char* out;
    const char* out_raw;
    const char* init_noise;
    const char* device;
    int batch_size;
} SampleArgs;

static void sample_usage(void) {
    printf("Usage: ./sample_ldm [flags]\n"
           "Samples images from a train_ldm checkpoint.\n\n"
           "  --checkpoint PATH          U-Net checkpoint (default runs/ldm_tiny/checkpoint_final.safetensors on a CPU,\n"
           "                             runs/ldm_fast/... on a GPU)\n"
           "  --vae-checkpoint PATH      overrides the VAE path stored in the U-Net checkpoint\n"
           "  --sampler ddpm|ddim|dpm++2m  (default ddim; ddpm clamps its x0 prediction to +-%g, the range of the\n"
           "                             unit-std latents: see README, Sampling)\n"
           "  --steps N                  sampling steps (default 50; 1000 for ddpm; ddim and dpm++2m do well with 20)\n"
           "  --eta X                    DDIM noise, 0 = deterministic (default 0)\n"
           "  --guidance-scale S         classifier-free guidance (default 3; 1 = plain conditional, 0 = unconditional)\n"
           "  --class K|all              the class to sample (default all: one grid row per class)\n"
           "  --n N                      number of samples (default 8 per class, or 64)\n"
           "  --seed N                   (default 0)\n"
           "  --out FILE.png             the grid (default samples.png); outputs are written atomically and may\n"
           "                             not be an input file; their directory must exist\n"
           "  --out-raw FILE             the samples as CIFAR-10 binary records (label byte, 255 when\n"
           "                             unconditional, then 3,072 pixel bytes)\n"
           "  --init-noise FILE          initial latents, raw little-endian float32 n x 4 x 8 x 8\n"
           "  --batch-size N             samples per batch (default 250)\n"
           "  --device auto|cpu|cuda     (default auto)\n"
           "  --help\n", DDPM_X0_CLIP);
}

static void sample_parse_args(int argc, char** argv, SampleArgs* a) {
    static const char* const samplers[] = {"ddpm", "ddim", "dpm++2m"};
    static const char* const devices[] = {"auto", "cpu", "cuda"};
    memset(a, 0, sizeof(*a));
    a->sampler = SAMPLER_DDIM; a->guidance = 3.0f; a->class_id = -1; a->out = "samples.png";
    a->device = "auto"; a->batch_size = 250;
    for (int i = 1; i < argc; i++) {
        const char* f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { sample_usage(); exit(EXIT_SUCCESS); }
        else if (strcmp(f, "--checkpoint") == 0) arg_path(argc, argv, &i, a->checkpoint, sizeof(a->checkpoint));
        else if (strcmp(f, "--vae-checkpoint") == 0) a->vae_checkpoint = arg_value(argc, argv, &i);
        else if (strcmp(f, "--sampler") == 0) {
            const char* s = arg_choice(argc, argv, &i, samplers, 3);
            a->sampler = strcmp(s, "ddpm") == 0 ? SAMPLER_DDPM : strcmp(s, "ddim") == 0 ? SAMPLER_DDIM : SAMPLER_DPMPP_2M;
        }
        else if (strcmp(f, "--steps") == 0) a->steps = (int)arg_long(argc, argv, &i, 1, DIFFUSION_T);
        else if (strcmp(f, "--eta") == 0) a->eta = arg_float(argc, argv, &i, 0.0, 1.0, 0);
        else if (strcmp(f, "--guidance-scale") == 0) { a->guidance = arg_float(argc, argv, &i, 0.0, 100.0, 0); a->guidance_given = 1; }
        else if (strcmp(f, "--class") == 0) {
            const char* v = argv[i + 1 < argc ? i + 1 : i];
            if (i + 1 < argc && strcmp(v, "all") == 0) { a->class_id = -1; i++; }
            else a->class_id = (int)arg_long(argc, argv, &i, 0, 100000);
        }
        else if (strcmp(f, "--n") == 0) a->n = (int)arg_long(argc, argv, &i, 1, 10000000);
        else if (strcmp(f, "--seed") == 0) a->seed = (uint64_t)arg_long(argc, argv, &i, 0, 2147483647L);
        else if (strcmp(f, "--out") == 0) a->out = arg_value(argc, argv, &i);
        else if (strcmp(f, "--out-raw") == 0) a->out_raw = arg_value(argc, argv, &i);
        else if (strcmp(f, "--init-noise") == 0) a->init_noise = arg_value(argc, argv, &i);
        else if (strcmp(f, "--batch-size") == 0) a->batch_size = (int)arg_long(argc, argv, &i, 1, 65536);
        else if (strcmp(f, "--device") == 0) a->device = arg_choice(argc, argv, &i, devices, 3);
        else arg_unknown(argv, i);
    }
    if (a->steps == 0) a->steps = a->sampler == SAMPLER_DDPM ? DIFFUSION_T : 50;
}

// the raw float32 initial latents of --init-noise (a regular file, checked before it is opened): exactly
// n x dim finite values
static float* read_init_noise(const char* path, int n, size_t dim) {
    check_regular_file(path, "--init-noise file");
    struct stat sb;
    size_t want = (size_t)n * dim * sizeof(float);
    if (stat(path, &sb) != 0 || (size_t)sb.st_size != want) {
        fprintf(stderr, "Error: --init-noise '%s' has %lld bytes; %d samples x %zu float32 latents need %zu.\n"
                        "HINT: write n x %zu little-endian float32 values, or match --n to the file.\n",
                path, (long long)sb.st_size, n, dim, want, dim);
        exit(EXIT_FAILURE);
    }
    FILE* f = fopenCheck(path, "rb");
    float* z = (float*)mallocCheck(want);
    freadCheck(z, 1, want, f);
    fclose(f);
    long long bad = first_nonfinite(z, (size_t)n * dim);
    if (bad >= 0) {
        fprintf(stderr, "Error: --init-noise '%s': value %lld is %g; allowed: finite numbers.\nHINT: the file is "
                        "damaged; write n x %zu finite float32 values.\n", path, bad, z[bad], dim);
        exit(EXIT_FAILURE);
    }
    return z;
}

// an input path given on the command line: it must exist and be a regular file before anything reads it
static void check_input(const char* path, const char* what, const char* hint) {
    if (!path_exists(path)) {
        fprintf(stderr, "Error: %s '%s' not found.\nHINT: %s\n", what, path, hint);
        exit(EXIT_FAILURE);
    }
    check_regular_file(path, what);
}

// the outputs may not be (or replace) an input or each other, and their directories must be writable:
// all checked before any sampling, so a bad path costs nothing and destroys nothing
static void check_outputs(const SampleArgs* a, const char* vae_path) {
    const char* inputs[3] = {a->checkpoint, vae_path, a->init_noise};
    check_output_path("--out", a->out, inputs, 3);
    if (a->out_raw == NULL) return;
    check_output_path("--out-raw", a->out_raw, inputs, 3);
    char out_full[8192], raw_full[8192];
    path_resolve(a->out, out_full, sizeof(out_full));
    path_resolve(a->out_raw, raw_full, sizeof(raw_full));
    if (strcmp(out_full, raw_full) == 0) {
        fprintf(stderr, "Error: --out and --out-raw are the same file '%s'.\nHINT: give them different paths.\n", a->out);
        exit(EXIT_FAILURE);
    }
}

int main(int argc, char** argv) {
    SampleArgs a;
    sample_parse_args(argc, argv, &a);
    device_init(a.device);
    if (a.checkpoint[0] == '\0') {
        snprintf(a.checkpoint, sizeof(a.checkpoint), "runs/ldm_%s/checkpoint_final.safetensors",
                 g_device == DEVICE_CUDA ? "fast" : "tiny");
        printf("checkpoint: %s (no --checkpoint given)\n", a.checkpoint);
    }
    check_input(a.checkpoint, "U-Net checkpoint", "train one with `./train_ldm` (after `./train_vae`), or pass "
                "--checkpoint PATH.");
    if (a.vae_checkpoint) check_input(a.vae_checkpoint, "--vae-checkpoint", "check the path.");
    if (a.init_noise) check_input(a.init_noise, "--init-noise file", "check the path.");

    // the U-Net (EMA weights) and its settings; all checks before any sampling
    UNet m;
    LDMMeta meta;
    unet_load_checkpoint(&m, &meta, a.checkpoint);
    const char* vae_path = a.vae_checkpoint ? a.vae_checkpoint : meta.vae_path;
    check_input(vae_path, a.vae_checkpoint ? "--vae-checkpoint" : "VAE checkpoint (stored in the U-Net checkpoint)",
                "pass --vae-checkpoint PATH.");
    check_outputs(&a, vae_path);
    int nc = m.cfg.num_classes;
    if (nc == 0 && a.class_id >= 0) {
        fprintf(stderr, "Error: --class %d, but '%s' is an unconditional model (num_classes 0).\n", a.class_id, a.checkpoint);
        return EXIT_FAILURE;
    }
    if (nc > 0 && a.class_id >= nc) {
        fprintf(stderr, "Error: --class %d, but the model has classes 0..%d.\n", a.class_id, nc - 1);
        return EXIT_FAILURE;
    }
    if (a.out_raw && nc > 255) {
        fprintf(stderr, "Error: --out-raw stores each label in one byte (255 = unconditional), but the model has %d "
                        "classes.\nHINT: drop --out-raw, or write only --out.\n", nc);
        return EXIT_FAILURE;
    }
    if (nc == 0 && a.guidance_given) {
        fprintf(stderr, "Warning: --guidance-scale has no effect on an unconditional model; sampling without guidance.\n");
    }
    int rows = nc > 0 && a.class_id < 0 ? nc : 1;
    int n = a.n > 0 ? a.n : (nc > 0 && a.class_id < 0 ? 8 * nc : 64);
    int per_row = nc > 0 && a.class_id < 0 ? ceil_div(n, rows) : (n < 8 ? n : 8);
    size_t dim = (size_t)m.cfg.z_channels * m.cfg.in_res * m.cfg.in_res;
    float* noise = a.init_noise ? read_init_noise(a.init_noise, n, dim) : NULL;

    char sha[65];
    sha256_file(vae_path, sha);
    if (strcmp(sha, meta.vae_sha256) != 0) {
        fprintf(stderr, "Warning: '%s' is not the VAE this U-Net was trained with (sha256 differs); samples may be off.\n",
                vae_path);
    }
    VAE vae;
    vae_load_checkpoint(&vae, vae_path);
    ldm_check_vae_latents(&vae.cfg, vae_path, &m.cfg);
    int B = a.batch_size < n ? a.batch_size : n;
    vae_alloc_activations(&vae, B);
    unet_alloc_activations(&m, nc > 0 ? 2 * B : B);

    int* labels = (int*)mallocCheck(n * sizeof(int));
    for (int i = 0; i < n; i++) labels[i] = nc == 0 ? 255 : a.class_id >= 0 ? a.class_id : (i / per_row) % nc;
    float guidance = nc > 0 ? a.guidance : 0.0f;
    printf("sampling %d images: %s, %d steps%s, guidance %g, %s model, batches of %d\n", n, sampler_name(a.sampler),
           a.steps, a.sampler == SAMPLER_DDIM ? (a.eta > 0 ? " (eta > 0)" : " (eta 0)") : "", guidance,
           nc > 0 ? "class-conditional" : "unconditional", B);
    size_t img = IMG_C * IMG_RES * IMG_RES;
    float* images = (float*)mallocCheck((size_t)n * img * sizeof(float));
    if (noise == NULL) {
        noise = (float*)mallocCheck((size_t)n * dim * sizeof(float));
        rng_fill_normal_cpu(noise, (size_t)n * dim, a.seed, 0);
    }
    double t0 = wall_seconds();
    for (int start = 0; start < n; start += B) {
        int b = n - start < B ? n - start : B;
        ldm_sample_images(&m, &vae, &meta, a.sampler, a.steps, a.eta, guidance, nc > 0 ? labels + start : NULL, b,
                          a.seed + 1 + start, images + (size_t)start * img, noise + (size_t)start * dim);
        double el = wall_seconds() - t0;
        int done = start + b;
        char eta_s[32];
        format_duration(el / done * (n - done), eta_s, sizeof(eta_s));
        printf("sampled %d/%d | %.1f img/s | ETA %s\n", done, n, done / el, eta_s);
        fflush(stdout);
    }

    int h, w;
    uint8_t* rgb = image_grid_rgb(images, n, IMG_RES, IMG_RES, per_row, &h, &w);
    image_write_png(a.out, rgb, h, w);
    printf("wrote %s (%dx%d, %d per row%s)\n", a.out, w, h, per_row, rows > 1 ? ", one row per class" : "");
    free(rgb);
    if (a.out_raw) {
        uint8_t* rec = (uint8_t*)mallocCheck((size_t)n * CIFAR_RECORD_BYTES);
        image_to_cifar_records(rec, images, nc > 0 ? labels : NULL, n);
        FileChunk chunk = {rec, (size_t)n * CIFAR_RECORD_BYTES};
        file_write_atomic(a.out_raw, &chunk, 1);
        printf("wrote %s (%d CIFAR-10 records of %d bytes)\n", a.out_raw, n, CIFAR_RECORD_BYTES);
        free(rec);
    }
    free(images); free(labels); free(noise);
    unet_free(&m);
    vae_free(&vae);
    return 0;
}
