// ldmc/classifier.cuh — the small CIFAR-10 classifier eval_ldm measures images with (its features
// are the space of the Fréchet distance, its argmax the class agreement), trained by
// dev/train_classifier.py and committed as dev/classifier/cifar10_classifier.safetensors.
// The network is made of layers ldm.c already has: nine 3x3 convs with bias, each followed by SiLU,
// a mean over the pixels and a linear head (PyTorch's BatchNorms were folded into the convs):
//   stem      conv 3 -> w1                 (B, w1, 32, 32)
//   stage1.0, stage1.1   conv w1 -> w1     (B, w1, 32, 32)
//   down2     conv w1 -> w2, stride 2      (B, w2, 16, 16)
//   stage2.0, stage2.1   conv w2 -> w2     (B, w2, 16, 16)
//   down3     conv w2 -> w3, stride 2      (B, w3, 8, 8)
//   stage3.0, stage3.1   conv w3 -> w3     (B, w3, 8, 8)
//   features  mean over the 8x8 pixels     (B, w3)
//   head      linear w3 -> 10              (B, 10) logits
// The widths come from the file's config metadata ({"widths":[w1,w2,w3]}).
//   classifier_load      the weights of a classifier file onto the current device, activations for B
//   classifier_forward   images (on the device, in [-1, 1]) -> features and logits on the host
//   classifier_free
// Inference only: no gradients, no saved activations (two ping-pong buffers).
#pragma once

#include "common.cuh"
#include "params.h"
#include "blocks.cuh"
#include "optimizer.h"
#include "safetensors.h"

#define CLASSIFIER_LAYERS 9
#define CLASSIFIER_CLASSES 10
#define CLASSIFIER_DEFAULT_PATH "dev/classifier/cifar10_classifier.safetensors"

typedef struct {
    ParamStore ps;
    Conv2d conv[CLASSIFIER_LAYERS];
    Linear head;
    int widths[3];
    int feature_dim;     // widths[2]
    int max_batch;
    float* act_a;        // (B, largest C*H*W) ping-pong activations on the device
    float* act_b;
    float* last_host;    // (B, w3, 8, 8) the last activation, pooled on the host
} Classifier;

// the layer table: name, input and output channels (as indices into {3, w1, w2, w3}), stride
static const struct { const char* name; int in, out, stride; } CLASSIFIER_TABLE[CLASSIFIER_LAYERS] = {
    {"stem", 0, 1, 1}, {"stage1.0", 1, 1, 1}, {"stage1.1", 1, 1, 1},
    {"down2", 1, 2, 2}, {"stage2.0", 2, 2, 1}, {"stage2.1", 2, 2, 1},
    {"down3", 2, 3, 2}, {"stage3.0", 3, 3, 1}, {"stage3.1", 3, 3, 1}};

// ----------------------------------------------------------------------------
// loading

static inline void classifier_build(Classifier* c, const int widths[3]) {
    memset(c, 0, sizeof(*c));
    int ch[4] = {3, widths[0], widths[1], widths[2]};
    for (int i = 0; i < CLASSIFIER_LAYERS; i++) {
        c->conv[i] = conv2d_register(&c->ps, CLASSIFIER_TABLE[i].name, ch[CLASSIFIER_TABLE[i].in],
                                     ch[CLASSIFIER_TABLE[i].out], 3, CLASSIFIER_TABLE[i].stride);
    }
    c->head = linear_register(&c->ps, "head", widths[2], CLASSIFIER_CLASSES);
    memcpy(c->widths, widths, sizeof(c->widths));
    c->feature_dim = widths[2];
}

// reads `path` (an ldm.c classifier file), uploads its weights and sizes the activations for B images
static inline void classifier_load(Classifier* c, const char* path, int B) {
    static const char* hint = "use dev/classifier/cifar10_classifier.safetensors (dev/train_classifier.py writes it).";
    check_regular_file(path, "classifier file");
    SafeTensors st;
    safetensors_load(path, &st);
    file_expect_model(&st, path, "classifier", "a classifier file", hint);
    const char* config = safetensors_meta(&st, "config");
    int widths[3], count = 0;
    if (config == NULL || json_get_int_array(config, "widths", widths, 3, &count) != 0 || count != 3 ||
        widths[0] < 1 || widths[1] < 1 || widths[2] < 1 || widths[0] > 4096 || widths[1] > 4096 || widths[2] > 4096) {
        fprintf(stderr, "Error: '%s' has no valid config {\"widths\":[w1,w2,w3]} (each in [1, 4096]).\nHINT: %s\n",
                path, hint);
        exit(EXIT_FAILURE);
    }
    classifier_build(c, widths);
    params_allocate(&c->ps);
    params_upload_checkpoint(&c->ps, &st, path, "classifier");
    safetensors_free(&st);
    size_t largest = 0;
    int res[4] = {32, 32, 16, 8};  // resolution after channel index 0..3
    int ch[4] = {3, widths[0], widths[1], widths[2]};
    for (int k = 1; k < 4; k++) {
        size_t n = (size_t)ch[k] * res[k] * res[k];
        if (n > largest) largest = n;
    }
    c->max_batch = B;
    c->act_a = dev_malloc_floats((size_t)B * largest);
    c->act_b = dev_malloc_floats((size_t)B * largest);
    c->last_host = (float*)mallocCheck((size_t)B * widths[2] * 64 * sizeof(float));
}

static inline void classifier_free(Classifier* c) {
    params_free(&c->ps);
    dev_free(c->act_a);
    dev_free(c->act_b);
    free(c->last_host);
    memset(c, 0, sizeof(*c));
}

// ----------------------------------------------------------------------------
// forward

// x (B, 3, 32, 32) on the device in [-1, 1] -> features (B, w3) and logits (B, 10) on the host
// (either may be NULL)
static inline void classifier_forward(Classifier* c, const float* x, int B, float* features, float* logits) {
    if (B > c->max_batch) {
        fprintf(stderr, "Error: classifier_forward: batch %d exceeds the %d it was sized for.\n", B, c->max_batch);
        exit(EXIT_FAILURE);
    }
    const float* in = x;
    float* out = c->act_a;
    int R = 32;
    for (int i = 0; i < CLASSIFIER_LAYERS; i++) {
        const Conv2d* conv = &c->conv[i];
        conv2d_block_forward(&c->ps, conv, out, in, B, R, R);  // (B, cout, R / stride, R / stride)
        R /= conv->stride;
        silu_forward(out, out, (size_t)B * conv->cout * R * R);
        in = out;
        out = out == c->act_a ? c->act_b : c->act_a;
    }
    int D = c->feature_dim, HW = R * R;
    dev_to_host(c->last_host, in, (size_t)B * D * HW * sizeof(float));
    float* feats = (float*)mallocCheck((size_t)B * D * sizeof(float));  // (B, D)
    for (int b = 0; b < B; b++) {
        for (int k = 0; k < D; k++) {
            const float* plane = c->last_host + ((size_t)b * D + k) * HW;
            double s = 0.0;
            for (int p = 0; p < HW; p++) s += plane[p];
            feats[(size_t)b * D + k] = (float)(s / HW);
        }
    }
    if (logits != NULL) {
        float* w = (float*)mallocCheck((size_t)CLASSIFIER_CLASSES * D * sizeof(float));
        float* bias = (float*)mallocCheck(CLASSIFIER_CLASSES * sizeof(float));
        dev_to_host(w, c->ps.params + c->head.weight, (size_t)CLASSIFIER_CLASSES * D * sizeof(float));
        dev_to_host(bias, c->ps.params + c->head.bias, CLASSIFIER_CLASSES * sizeof(float));
        linear_forward_ref(logits, feats, w, bias, B, D, CLASSIFIER_CLASSES);  // 10 x D per image: host loops
        free(w); free(bias);
    }
    if (features != NULL) memcpy(features, feats, (size_t)B * D * sizeof(float));
    free(feats);
}

// the argmax of each row of logits (B, 10) (the first on ties)
static inline int classifier_argmax(const float* logits_row) {
    int best = 0;
    for (int k = 1; k < CLASSIFIER_CLASSES; k++) {
        if (logits_row[k] > logits_row[best]) best = k;
    }
    return best;
}
