/*
eval_ldm.cu — how good are a set of images? Scores files of CIFAR-10 binary records (a label byte,
then 3,072 pixel bytes; what `sample_ldm --out-raw` writes, and what CIFAR-10's own files are) with
the small CIFAR-10 classifier committed in dev/classifier/ (ldmc/classifier.cuh):
  FD               the Fréchet distance between the classifier features (96-d) of the file's images and
                   of a reference set of real images (ldmc/frechet.h); lower is better, 0 for the same
                   distribution. It is biased upwards at small n, so the reference has, by default, as
                   many images as the file: the first n of the test split (--ref, --ref-n)
  class agreement  the fraction of images whose classifier argmax is their label byte (label 255 =
                   unconditional: not counted); for real images this is the classifier's accuracy
With --vae-checkpoint it also scores a VAE: the first --vae-n test images are reconstructed (decoding
the mean latent, as train_vae's final test MSE), and one line gives the reconstruction MSE (pixels in
[-1, 1]), PSNR (peak-to-peak 2) and the FD and class agreement of the reconstructions (rounded to bytes,
as a sample file is) against the reference set: by default the originals themselves.
One line per file on stdout; progress goes to stderr. dev/README.md has a calibration table.

    ./eval_ldm runs/quickstart_samples.bin
    ./eval_ldm --vae-checkpoint runs/vae_tiny/checkpoint_final.safetensors --vae-n 2000 samples.bin
    ./eval_ldm --ref train data/cifar-10-batches-bin/test_batch.bin    # real test images vs train
*/
#define TESTING
#include "train_vae.cu"
#include "ldmc/classifier.cuh"
#include "ldmc/frechet.h"

#define EVAL_MAX_FILES 64
#define EVAL_MAX_RECORDS 10000000   // 30 GB of records: a bound that keeps every count an int
#define LABEL_UNCONDITIONAL 255

typedef struct {
    const char* files[EVAL_MAX_FILES];
    int nfiles;
    const char* classifier;
    const char* data;        // NULL: cifar10_resolve_dir's default
    int ref_train;           // the reference split: 1 train, 0 test
    int ref_n;               // 0: each file's own n
    int n;                   // 0: every record of a file
    const char* vae_checkpoint;
    int vae_n;               // 0: the whole test split
    int batch_size;
    const char* device;
} EvalArgs;

static void eval_usage(void) {
    printf("Usage: ./eval_ldm [flags] FILE...\n"
           "Scores images stored as CIFAR-10 binary records (label byte, 3,072 pixel bytes; sample_ldm --out-raw)\n"
           "with the committed CIFAR-10 classifier: one line per file with n, the Fréchet distance (FD) of the\n"
           "classifier features against real images, and the class agreement (argmax == label byte; label 255 =\n"
           "unconditional, not counted; for real images it is the classifier's accuracy).\n\n"
           "  --ref test|train           the real images to compare with (default test)\n"
           "  --ref-n N                  reference images: the first N of the split (default: as many as the file\n"
           "                             has, since the FD depends on n; compare scores at equal n)\n"
           "  --n N                      score only the first N records of each file (default all)\n"
           "  --vae-checkpoint PATH      also score a VAE: reconstruct the first --vae-n test images and print their\n"
           "                             MSE (pixels in [-1, 1]), PSNR, FD and class agreement (no FILE needed)\n"
           "  --vae-n N                  test images to reconstruct (default all 10,000)\n"
           "  --classifier PATH          (default " CLASSIFIER_DEFAULT_PATH ")\n"
           "  --data DIR                 CIFAR-10 folder (default $CIFAR10_DIR, else " CIFAR10_DEFAULT_DIR ")\n"
           "  --batch-size N             images per forward pass (default 250)\n"
           "  --device auto|cpu|cuda     (default auto)\n"
           "  --help\n");
}

static void eval_parse_args(int argc, char** argv, EvalArgs* a) {
    static const char* const splits[] = {"test", "train"};
    static const char* const devices[] = {"auto", "cpu", "cuda"};
    memset(a, 0, sizeof(*a));
    a->classifier = CLASSIFIER_DEFAULT_PATH;
    a->batch_size = 250;
    a->device = "auto";
    for (int i = 1; i < argc; i++) {
        const char* f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { eval_usage(); exit(EXIT_SUCCESS); }
        else if (strcmp(f, "--ref") == 0) a->ref_train = strcmp(arg_choice(argc, argv, &i, splits, 2), "train") == 0;
        else if (strcmp(f, "--ref-n") == 0) a->ref_n = (int)arg_long(argc, argv, &i, 2, 50000);
        else if (strcmp(f, "--n") == 0) a->n = (int)arg_long(argc, argv, &i, 2, EVAL_MAX_RECORDS);
        else if (strcmp(f, "--vae-checkpoint") == 0) a->vae_checkpoint = arg_value(argc, argv, &i);
        else if (strcmp(f, "--vae-n") == 0) a->vae_n = (int)arg_long(argc, argv, &i, 2, 10000);
        else if (strcmp(f, "--classifier") == 0) a->classifier = arg_value(argc, argv, &i);
        else if (strcmp(f, "--data") == 0) a->data = arg_value(argc, argv, &i);
        else if (strcmp(f, "--batch-size") == 0) a->batch_size = (int)arg_long(argc, argv, &i, 1, 65536);
        else if (strcmp(f, "--device") == 0) a->device = arg_choice(argc, argv, &i, devices, 3);
        else if (strncmp(f, "--", 2) == 0) arg_unknown(argv, i);
        else {
            if (a->nfiles == EVAL_MAX_FILES) args_fail(argv[0], "at most 64 files per run");
            a->files[a->nfiles++] = f;
        }
    }
    if (a->vae_n > 0 && a->vae_checkpoint == NULL) args_fail(argv[0], "--vae-n needs --vae-checkpoint PATH");
    if (a->nfiles == 0 && a->vae_checkpoint == NULL) {
        args_fail(argv[0], "nothing to score: give one or more files of CIFAR-10 records, or --vae-checkpoint PATH");
    }
}

// ----------------------------------------------------------------------------
// image files

typedef struct {
    int n;
    uint8_t* labels;   // (n)
    uint8_t* pixels;   // (n, 3, 32, 32)
} ImageSet;

static void image_set_free(ImageSet* s) {
    free(s->labels);
    free(s->pixels);
    memset(s, 0, sizeof(*s));
}

// reads the records of `path` (its first `limit`, when limit > 0): a regular file holding a whole
// number of 3,073-byte records, each label 0..9 or 255
static void read_image_file(const char* path, int limit, ImageSet* s) {
    check_regular_file(path, "image file");  // before the open: a FIFO or device would block or feed forever
    struct stat sb;
    long long size = stat(path, &sb) == 0 ? (long long)sb.st_size : -1;
    if (size == 0 || size % CIFAR10_RECORD_BYTES != 0 || size / CIFAR10_RECORD_BYTES > EVAL_MAX_RECORDS) {
        fprintf(stderr, "Error: '%s' is %lld bytes, not a whole number of CIFAR-10 records (%d bytes each: a label "
                        "byte, then 3,072 pixel bytes), 1 to %d of them.\nHINT: pass a file sample_ldm --out-raw "
                        "wrote, or one of CIFAR-10's binary files; a PNG grid cannot be scored.\n",
                path, size, CIFAR10_RECORD_BYTES, EVAL_MAX_RECORDS);
        exit(EXIT_FAILURE);
    }
    int records = (int)(size / CIFAR10_RECORD_BYTES);
    if (limit > records) {
        fprintf(stderr, "Error: --n %d, but '%s' holds %d records.\nHINT: lower --n, or sample more images.\n",
                limit, path, records);
        exit(EXIT_FAILURE);
    }
    FILE* fp = fopenCheck(path, "rb");
    s->n = limit > 0 ? limit : records;
    if (s->n < 2) {
        fprintf(stderr, "Error: '%s' holds 1 record; a covariance needs at least 2 images (use 2,000 or more).\n", path);
        exit(EXIT_FAILURE);
    }
    s->labels = (uint8_t*)mallocCheck((size_t)s->n);
    s->pixels = (uint8_t*)mallocCheck((size_t)s->n * CIFAR10_IMG_BYTES);
    uint8_t* rec = (uint8_t*)mallocCheck(CIFAR10_RECORD_BYTES);
    for (int i = 0; i < s->n; i++) {
        if (fread(rec, 1, CIFAR10_RECORD_BYTES, fp) != CIFAR10_RECORD_BYTES) {
            fprintf(stderr, "Error: cannot read record %d of '%s': %s.\n", i, path,
                    ferror(fp) ? strerror(errno) : "the file ended early (changed while reading?)");
            exit(EXIT_FAILURE);
        }
        if (rec[0] >= CLASSIFIER_CLASSES && rec[0] != LABEL_UNCONDITIONAL) {
            fprintf(stderr, "Error: record %d of '%s' has label %d; allowed: 0..%d (a CIFAR-10 class) or %d "
                            "(unconditional).\nHINT: the file is not CIFAR-10 records, or is damaged.\n",
                    i, path, rec[0], CLASSIFIER_CLASSES - 1, LABEL_UNCONDITIONAL);
            exit(EXIT_FAILURE);
        }
        s->labels[i] = rec[0];
        memcpy(s->pixels + (size_t)i * CIFAR10_IMG_BYTES, rec + 1, CIFAR10_IMG_BYTES);
    }
    free(rec);
    fclose(fp);
}

// ----------------------------------------------------------------------------
// scoring

typedef struct {
    float* features;   // (n, D)
    int agree, labelled;
} Scores;

// bytes (n, 3, 32, 32) -> floats in [-1, 1], as the trainers see images (cifar10_get_batch)
static void bytes_to_images(float* x, const uint8_t* pixels, int n) {
    size_t total = (size_t)n * CIFAR10_IMG_BYTES;
    for (size_t i = 0; i < total; i++) x[i] = (float)pixels[i] / 127.5f - 1.0f;
}

// features of every image and the class agreement over the labelled ones; `what` names the work in
// the progress lines (printed for sets above 2,000 images)
static Scores score_images(Classifier* c, const uint8_t* pixels, const uint8_t* labels, int n, const char* what) {
    int B = c->max_batch, D = c->feature_dim;
    Scores s = {(float*)mallocCheck((size_t)n * D * sizeof(float)), 0, 0};
    float* x = (float*)mallocCheck((size_t)B * CIFAR10_IMG_BYTES * sizeof(float));  // (B, 3, 32, 32)
    float* d_x = dev_malloc_floats((size_t)B * CIFAR10_IMG_BYTES);
    float* logits = (float*)mallocCheck((size_t)B * CLASSIFIER_CLASSES * sizeof(float));
    double t0 = wall_seconds(), last = t0;
    for (int start = 0; start < n; start += B) {
        int b = n - start < B ? n - start : B;
        bytes_to_images(x, pixels + (size_t)start * CIFAR10_IMG_BYTES, b);
        host_to_dev(d_x, x, (size_t)b * CIFAR10_IMG_BYTES * sizeof(float));
        classifier_forward(c, d_x, b, s.features + (size_t)start * D, logits);
        for (int i = 0; i < b; i++) {
            int label = labels[start + i];
            if (label == LABEL_UNCONDITIONAL) continue;
            s.labelled++;
            s.agree += classifier_argmax(logits + (size_t)i * CLASSIFIER_CLASSES) == label;
        }
        double now = wall_seconds();
        int done = start + b;
        if (n > 2000 && (now - last > 10.0 || done == n)) {
            char eta[32];
            format_duration((now - t0) / done * (n - done), eta, sizeof(eta));
            fprintf(stderr, "  %s: %d/%d images | %.0f img/s | ETA %s\n", what, done, n, done / (now - t0), eta);
            last = now;
        }
    }
    free(x); free(logits);
    dev_free(d_x);
    return s;
}

// the reference set: features of the first `n` images of the split, computed once for the largest n
// any line needs; each line takes the moments of its first n rows
typedef struct {
    Cifar10 split;
    const char* name;   // "test" / "train"
    int n;              // images scored so far (the first n of the split)
    float* features;    // (n, D)
    int agree;          // classifier argmax == label among them
} Reference;

// the split must hold the n reference images a line needs
static void reference_check(const Reference* r, int n) {
    if (n > r->split.n) {
        fprintf(stderr, "Error: the reference needs %d images, but the %s split has %d.\nHINT: pass --ref-n %d (the "
                        "FD then compares unequal n: say so), --ref train (50,000 images), or --n to score fewer.\n",
                n, r->name, r->split.n, r->split.n);
        exit(EXIT_FAILURE);
    }
}

static void reference_prepare(Reference* r, Classifier* c, int n) {
    reference_check(r, n);
    if (n <= r->n) return;
    char what[64];
    snprintf(what, sizeof(what), "reference (%s split)", r->name);
    Scores s = score_images(c, r->split.pixels, r->split.labels, n, what);
    free(r->features);
    r->features = s.features;
    r->agree = s.agree;
    r->n = n;
}

// FD of `feats` (n, D) against the first ref_n reference images
static double fd_against_reference(const Reference* r, const float* feats, int n, int ref_n, int D) {
    double* mu1 = (double*)mallocCheck((size_t)D * sizeof(double));
    double* mu2 = (double*)mallocCheck((size_t)D * sizeof(double));
    double* cov1 = (double*)mallocCheck((size_t)D * D * sizeof(double));
    double* cov2 = (double*)mallocCheck((size_t)D * D * sizeof(double));
    feature_moments(feats, n, D, mu1, cov1);
    feature_moments(r->features, ref_n, D, mu2, cov2);
    double fd = frechet_distance(mu1, cov1, mu2, cov2, D);
    free(mu1); free(mu2); free(cov1); free(cov2);
    return fd;
}

// " | class agreement 0.853 (2000 labelled)", or the reason there is none
static void format_agreement(char* out, size_t len, const Scores* s, int n) {
    if (s->labelled == 0) {
        snprintf(out, len, " | class agreement - (all labels 255: unconditional)");
    } else {
        snprintf(out, len, " | class agreement %.3f (%d%s labelled)", (double)s->agree / s->labelled, s->labelled,
                 s->labelled == n ? "" : " of them");
    }
}

static void score_file(const EvalArgs* a, Classifier* c, Reference* ref, const char* path, const ImageSet* set) {
    int ref_n = a->ref_n > 0 ? a->ref_n : set->n;
    reference_prepare(ref, c, ref_n);
    Scores s = score_images(c, set->pixels, set->labels, set->n, path);
    double fd = fd_against_reference(ref, s.features, set->n, ref_n, c->feature_dim);
    char agreement[96];
    format_agreement(agreement, sizeof(agreement), &s, set->n);
    printf("%s: n %d | FD %.4f vs the first %d %s images%s\n", path, set->n, fd, ref_n, ref->name, agreement);
    fflush(stdout);
    free(s.features);
}

// reconstructs the first n test images with the VAE (from the mean latent) and scores them: MSE of the
// float reconstructions, then FD and agreement of the reconstructions rounded to bytes
static void score_vae(const EvalArgs* a, Classifier* c, Reference* ref, const Cifar10* test) {
    int n = a->vae_n > 0 ? a->vae_n : test->n;
    int ref_n = a->ref_n > 0 ? a->ref_n : n;
    reference_prepare(ref, c, ref_n);
    VAE vae;
    vae_load_checkpoint(&vae, a->vae_checkpoint);
    int B = a->batch_size < n ? a->batch_size : n;
    vae_alloc_activations(&vae, B);
    size_t img = CIFAR10_IMG_BYTES, lat = (size_t)vae.cfg.z_channels * vae_latent_res(&vae.cfg) * vae_latent_res(&vae.cfg);
    float* x = (float*)mallocCheck((size_t)B * img * sizeof(float));          // (B, 3, 32, 32)
    float* rec = (float*)mallocCheck((size_t)B * img * sizeof(float));        // (B, 3, 32, 32)
    float* d_x = dev_malloc_floats((size_t)B * img);
    float* d_zero = dev_malloc_floats((size_t)B * lat);
    dev_zero(d_zero, (size_t)B * lat * sizeof(float));
    uint8_t* rec_pixels = (uint8_t*)mallocCheck((size_t)n * img);              // (n, 3, 32, 32)
    double sq = 0.0, t0 = wall_seconds(), last = t0;
    for (int start = 0; start < n; start += B) {
        int b = n - start < B ? n - start : B;
        bytes_to_images(x, test->pixels + (size_t)start * img, b);
        host_to_dev(d_x, x, (size_t)b * img * sizeof(float));
        vae_reconstruct(&vae, d_x, d_zero, b);
        sq += (double)mse_forward(vae.dec.out, d_x, (size_t)b * img) * b;
        dev_to_host(rec, vae.dec.out, (size_t)b * img * sizeof(float));
        for (size_t i = 0; i < (size_t)b * img; i++) rec_pixels[(size_t)start * img + i] = image_pixel(rec[i]);
        double now = wall_seconds();
        int done = start + b;
        if (n > 2000 && (now - last > 10.0 || done == n)) {
            char eta[32];
            format_duration((now - t0) / done * (n - done), eta, sizeof(eta));
            fprintf(stderr, "  VAE reconstructions: %d/%d images | %.0f img/s | ETA %s\n", done, n, done / (now - t0), eta);
            last = now;
        }
    }
    double mse = sq / n;
    Scores s = score_images(c, rec_pixels, test->labels, n, "reconstructions");
    double fd = fd_against_reference(ref, s.features, n, ref_n, c->feature_dim);
    char agreement[96];
    format_agreement(agreement, sizeof(agreement), &s, n);
    printf("VAE %s: n %d test images reconstructed | MSE %.5f PSNR %.2f dB | FD %.4f vs the first %d %s images%s\n",
           a->vae_checkpoint, n, mse, 10.0 * log10(4.0 / mse), fd, ref_n, ref->name, agreement);
    fflush(stdout);
    free(s.features); free(x); free(rec); free(rec_pixels);
    dev_free(d_x); dev_free(d_zero);
    vae_free(&vae);
}

int main(int argc, char** argv) {
    EvalArgs a;
    eval_parse_args(argc, argv, &a);
    device_init(a.device);
    // every input is read and checked before any work: a bad last file costs nothing
    static ImageSet sets[EVAL_MAX_FILES];
    for (int i = 0; i < a.nfiles; i++) read_image_file(a.files[i], a.n, &sets[i]);
    if (a.vae_checkpoint) check_regular_file(a.vae_checkpoint, "--vae-checkpoint");
    char dir[4096];
    cifar10_resolve_dir(a.data, dir, sizeof(dir));

    Classifier c;
    classifier_load(&c, a.classifier, a.batch_size);
    Reference ref;
    memset(&ref, 0, sizeof(ref));
    ref.name = a.ref_train ? "train" : "test";
    cifar10_load(&ref.split, dir, a.ref_train);
    for (int i = 0; i < a.nfiles; i++) reference_check(&ref, a.ref_n > 0 ? a.ref_n : sets[i].n);
    Cifar10 test;
    memset(&test, 0, sizeof(test));
    if (a.vae_checkpoint && a.ref_train) cifar10_load(&test, dir, 0);

    for (int i = 0; i < a.nfiles; i++) score_file(&a, &c, &ref, a.files[i], &sets[i]);
    if (a.vae_checkpoint) score_vae(&a, &c, &ref, a.ref_train ? &test : &ref.split);
    if (ref.n > 0) {
        printf("(classifier accuracy on those %d %s images: %.3f)\n", ref.n, ref.name, (double)ref.agree / ref.n);
    }

    for (int i = 0; i < a.nfiles; i++) image_set_free(&sets[i]);
    free(ref.features);
    cifar10_free(&ref.split);
    cifar10_free(&test);
    classifier_free(&c);
    return 0;
}
