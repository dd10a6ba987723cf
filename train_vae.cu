/*
train_vae.cu — the VAE of ldm.c: 32x32x3 images -> 8x8x4 latents (mu, logvar) -> 32x32x3.

The model (SPEC §3): an encoder of ResBlocks with stride-2 downsampling, a reparameterised latent
z = mu + exp(logvar/2) * eps, and a decoder of ResBlocks with nearest-x2 upsampling. Loss = pixel MSE
+ kl_weight * KL, the KL weight ramping up linearly over a warm-up (the seed project's recipe).
Every layer runs on the CPU (plain C + OpenMP) or on a CUDA GPU; the same code drives both.

This file holds the model (parameters, activations, forward, backward), the checkpoint files and the
training program. train_ldm.cu reuses the model with `#define TESTING` + `#include "train_vae.cu"`.

    make train_vae && ./train_vae                       # tiny preset on a CPU, fast on a GPU
    ./train_vae --preset small --run-name my_vae --epochs 20
*/
#include "ldmc/common.cuh"
#include "ldmc/rng.cuh"
#include "ldmc/args.h"
#include "ldmc/params.h"
#include "ldmc/blocks.cuh"
#include "ldmc/vae_loss.cuh"
#include "ldmc/adamw.cuh"
#include "ldmc/optimizer.h"
#include "ldmc/safetensors.h"
#include "ldmc/cifar10.h"
#include "ldmc/image.h"
#include "ldmc/tensorboard.h"
#include "ldmc/run.h"

#define IMG_C 3
#define IMG_RES 32
#define MAX_LEVELS 4

// ----------------------------------------------------------------------------
// configuration and presets

typedef struct {
    char preset[16];
    int ch;                  // base channel count
    int mult[MAX_LEVELS];    // channel multiplier per level (level 0 = full resolution)
    int levels;
    int nres;                // ResBlocks per encoder level (the decoder has nres + 1)
    int z_channels;          // latent channels (4)
} VAEConfig;

typedef struct {
    VAEConfig cfg;
    int batch_size;
    float lr;
    int epochs;
} VAEPreset;

static const VAEPreset VAE_PRESETS[] = {
    {{"tiny", 16, {1, 2, 4}, 3, 1, 4}, 64, 1e-3f, 1},
    {{"small", 64, {1, 2, 4}, 3, 2, 4}, 128, 1e-3f, 50},
    {{"fast", 128, {1, 2, 4}, 3, 2, 4}, 512, 4e-3f, 200},
};
#define NUM_VAE_PRESETS ((int)(sizeof(VAE_PRESETS) / sizeof(VAE_PRESETS[0])))

static const VAEPreset* vae_preset_find(const char* name) {
    for (int i = 0; i < NUM_VAE_PRESETS; i++) {
        if (strcmp(VAE_PRESETS[i].cfg.preset, name) == 0) return &VAE_PRESETS[i];
    }
    return NULL;
}

// the latent grid side: one halving per level below the first
static int vae_latent_res(const VAEConfig* c) { return IMG_RES >> (c->levels - 1); }

// {"preset":"tiny","ch":16,"mult":[1,2,4],"nres":1,"z_channels":4}
static void vae_config_to_json(const VAEConfig* c, char* out, size_t n) {
    int len = snprintf(out, n, "{\"preset\":\"%s\",\"ch\":%d,\"mult\":[", c->preset, c->ch);
    for (int i = 0; i < c->levels; i++) len += snprintf(out + len, n - len, "%s%d", i ? "," : "", c->mult[i]);
    snprintf(out + len, n - len, "],\"nres\":%d,\"z_channels\":%d}", c->nres, c->z_channels);
}

static int vae_config_from_json(VAEConfig* c, const char* json) {
    memset(c, 0, sizeof(*c));
    if (json_get_string(json, "preset", c->preset, sizeof(c->preset)) != 0) return -1;
    if (json_get_int(json, "ch", &c->ch) != 0) return -1;
    if (json_get_int_array(json, "mult", c->mult, MAX_LEVELS, &c->levels) != 0) return -1;
    if (json_get_int(json, "nres", &c->nres) != 0) return -1;
    if (json_get_int(json, "z_channels", &c->z_channels) != 0) return -1;
    // the spatial path 32 -> 8 is fixed by the latent-diffusion design (8x8x4 latents)
    if (c->ch <= 0 || c->ch % GN_GROUPS != 0 || c->levels != 3 || c->nres <= 0 || c->z_channels <= 0) return -1;
    return 0;
}

// ----------------------------------------------------------------------------
// the model: parameters (in a ParamStore) and the activations each block keeps for backward

typedef struct {
    Conv2d conv_in;
    float* h_in;                       // (B, ch, 32, 32)
    ResBlock res[MAX_LEVELS][4];       // [level][block]
    Conv2d down[MAX_LEVELS];           // stride-2 conv after every level but the last
    const float* down_in[MAX_LEVELS];  // its input (the level's last output)
    float* down_out[MAX_LEVELS];       // (B, C_i, R/2, R/2)
    ResBlock mid[2];
    NormSilu norm_out;
    Conv2d conv_out;
    float* moments;                    // (B, 2Z, 8, 8): mu = channels [0, Z), logvar = [Z, 2Z)
} Encoder;

typedef struct {
    Conv2d conv_in;
    float* h_in;                       // (B, ch*mult[-1], 8, 8)
    ResBlock mid[2];
    ResBlock res[MAX_LEVELS][5];       // [level][block], nres + 1 blocks per level
    float* up_nearest[MAX_LEVELS];     // (B, C_i, 2R, 2R) nearest x2 of the level's output
    Conv2d up_conv[MAX_LEVELS];        // 3x3 conv after the nearest upsample (levels > 0)
    float* up_out[MAX_LEVELS];         // (B, C_i, 2R, 2R)
    NormSilu norm_out;
    Conv2d conv_out;
    float* out;                        // (B, 3, 32, 32) the reconstruction
} Decoder;

typedef struct {
    VAEConfig cfg;
    ParamStore ps;
    int max_batch;        // activations are sized for this batch
    Encoder enc;
    Decoder dec;
    float* z;             // (B, Z, 8, 8) the sampled latent
    float* dx_rec;        // (B, 3, 32, 32) gradient of the reconstruction
    float* dz;            // (B, Z, 8, 8)
    float* dmoments;      // (B, 2Z, 8, 8)
    size_t max_act;       // largest C*H*W of any activation: sizes the buffers below
    float* grad_a;        // (B, max_act) ping-pong buffers for activation gradients
    float* grad_b;
    float* scratch1;      // (B, max_act) scratch inside ResBlock backward
    float* scratch2;
} VAE;

static void vae_note_act(VAE* m, int C, int R) {
    size_t n = (size_t)C * R * R;
    if (n > m->max_act) m->max_act = n;
}

// registers every parameter under its tensor-names.txt name, in the order of that file
static void vae_build(VAE* m, const VAEConfig* cfg) {
    memset(m, 0, sizeof(*m));
    m->cfg = *cfg;
    ParamStore* ps = &m->ps;
    Encoder* e = &m->enc;
    Decoder* d = &m->dec;
    int L = cfg->levels, Z = cfg->z_channels;
    char name[128];

    // encoder
    int c = cfg->ch, R = IMG_RES;
    e->conv_in = conv2d_register(ps, "encoder.conv_in", IMG_C, c, 3, 1);
    vae_note_act(m, c, R);
    for (int i = 0; i < L; i++) {
        int cout = cfg->ch * cfg->mult[i];
        for (int j = 0; j < cfg->nres; j++) {
            snprintf(name, sizeof(name), "encoder.down.%d.res.%d", i, j);
            e->res[i][j] = resblock_register(ps, name, c, cout, R, R);
            vae_note_act(m, c, R); vae_note_act(m, cout, R);
            c = cout;
        }
        if (i < L - 1) {
            snprintf(name, sizeof(name), "encoder.down.%d.downsample", i);
            e->down[i] = conv2d_register(ps, name, c, c, 3, 2);
            R /= 2;
        }
    }
    for (int j = 0; j < 2; j++) {
        snprintf(name, sizeof(name), "encoder.mid.%d", j);
        e->mid[j] = resblock_register(ps, name, c, c, R, R);
    }
    e->norm_out = normsilu_register(ps, "encoder.norm_out", c, R * R);
    e->conv_out = conv2d_register(ps, "encoder.conv_out", c, 2 * Z, 3, 1);

    // decoder: from the deepest level up
    c = cfg->ch * cfg->mult[L - 1];
    d->conv_in = conv2d_register(ps, "decoder.conv_in", Z, c, 3, 1);
    for (int j = 0; j < 2; j++) {
        snprintf(name, sizeof(name), "decoder.mid.%d", j);
        d->mid[j] = resblock_register(ps, name, c, c, R, R);
    }
    for (int i = L - 1; i >= 0; i--) {
        int cout = cfg->ch * cfg->mult[i];
        for (int j = 0; j < cfg->nres + 1; j++) {
            snprintf(name, sizeof(name), "decoder.up.%d.res.%d", i, j);
            d->res[i][j] = resblock_register(ps, name, c, cout, R, R);
            vae_note_act(m, c, R); vae_note_act(m, cout, R);
            c = cout;
        }
        if (i > 0) {
            snprintf(name, sizeof(name), "decoder.up.%d.upsample.conv", i);
            d->up_conv[i] = conv2d_register(ps, name, c, c, 3, 1);
            R *= 2;
            vae_note_act(m, c, R);
        }
    }
    d->norm_out = normsilu_register(ps, "decoder.norm_out", c, R * R);
    d->conv_out = conv2d_register(ps, "decoder.conv_out", c, IMG_C, 3, 1);
    vae_note_act(m, IMG_C, IMG_RES);
}

static void vae_alloc_activations(VAE* m, int B) {
    const VAEConfig* cfg = &m->cfg;
    Encoder* e = &m->enc;
    Decoder* d = &m->dec;
    int L = cfg->levels, Z = cfg->z_channels, LR = vae_latent_res(cfg);
    m->max_batch = B;
    e->h_in = dev_malloc_floats((size_t)B * cfg->ch * IMG_RES * IMG_RES);
    int R = IMG_RES;
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < cfg->nres; j++) resblock_alloc(&e->res[i][j], B);
        if (i < L - 1) {
            R /= 2;
            e->down_out[i] = dev_malloc_floats((size_t)B * e->down[i].cout * R * R);
        }
    }
    for (int j = 0; j < 2; j++) resblock_alloc(&e->mid[j], B);
    normsilu_alloc(&e->norm_out, B);
    e->moments = dev_malloc_floats((size_t)B * 2 * Z * LR * LR);

    d->h_in = dev_malloc_floats((size_t)B * d->conv_in.cout * LR * LR);
    for (int j = 0; j < 2; j++) resblock_alloc(&d->mid[j], B);
    for (int i = L - 1; i >= 0; i--) {
        for (int j = 0; j < cfg->nres + 1; j++) resblock_alloc(&d->res[i][j], B);
        if (i > 0) {
            R *= 2;
            d->up_nearest[i] = dev_malloc_floats((size_t)B * d->up_conv[i].cin * R * R);
            d->up_out[i] = dev_malloc_floats((size_t)B * d->up_conv[i].cout * R * R);
        }
    }
    normsilu_alloc(&d->norm_out, B);
    d->out = dev_malloc_floats((size_t)B * IMG_C * IMG_RES * IMG_RES);

    m->z = dev_malloc_floats((size_t)B * Z * LR * LR);
    m->dz = dev_malloc_floats((size_t)B * Z * LR * LR);
    m->dmoments = dev_malloc_floats((size_t)B * 2 * Z * LR * LR);
    m->dx_rec = dev_malloc_floats((size_t)B * IMG_C * IMG_RES * IMG_RES);
    m->grad_a = dev_malloc_floats((size_t)B * m->max_act);
    m->grad_b = dev_malloc_floats((size_t)B * m->max_act);
    m->scratch1 = dev_malloc_floats((size_t)B * m->max_act);
    m->scratch2 = dev_malloc_floats((size_t)B * m->max_act);
}

static void vae_free(VAE* m) {
    const VAEConfig* cfg = &m->cfg;
    Encoder* e = &m->enc;
    Decoder* d = &m->dec;
    if (m->max_batch > 0) {
        dev_free(e->h_in);
        for (int i = 0; i < cfg->levels; i++) {
            for (int j = 0; j < cfg->nres; j++) resblock_free(&e->res[i][j]);
            for (int j = 0; j < cfg->nres + 1; j++) resblock_free(&d->res[i][j]);
            dev_free(e->down_out[i]); dev_free(d->up_nearest[i]); dev_free(d->up_out[i]);
        }
        for (int j = 0; j < 2; j++) { resblock_free(&e->mid[j]); resblock_free(&d->mid[j]); }
        normsilu_free(&e->norm_out); normsilu_free(&d->norm_out);
        dev_free(e->moments); dev_free(d->h_in); dev_free(d->out);
        dev_free(m->z); dev_free(m->dz); dev_free(m->dmoments); dev_free(m->dx_rec);
        dev_free(m->grad_a); dev_free(m->grad_b); dev_free(m->scratch1); dev_free(m->scratch2);
    }
    params_free(&m->ps);
}

// ----------------------------------------------------------------------------
// forward

// x (B, 3, 32, 32) -> enc.moments (B, 2Z, 8, 8)
static void encoder_forward(VAE* m, const float* x, int B) {
    const ParamStore* ps = &m->ps;
    Encoder* e = &m->enc;
    int R = IMG_RES;
    conv2d_apply(ps, &e->conv_in, e->h_in, x, B, R, R);
    const float* h = e->h_in;
    for (int i = 0; i < m->cfg.levels; i++) {
        for (int j = 0; j < m->cfg.nres; j++) {
            resblock_forward(ps, &e->res[i][j], h, B, NULL);
            h = e->res[i][j].out;
        }
        if (i < m->cfg.levels - 1) {
            e->down_in[i] = h;
            conv2d_apply(ps, &e->down[i], e->down_out[i], h, B, R, R);
            h = e->down_out[i];
            R /= 2;
        }
    }
    resblock_forward(ps, &e->mid[0], h, B, NULL);
    resblock_forward(ps, &e->mid[1], e->mid[0].out, B, NULL);
    normsilu_forward(ps, &e->norm_out, e->mid[1].out, B);
    conv2d_apply(ps, &e->conv_out, e->moments, e->norm_out.act, B, R, R);
}

// z (B, Z, 8, 8) -> dec.out (B, 3, 32, 32)
static void decoder_forward(VAE* m, const float* z, int B) {
    const ParamStore* ps = &m->ps;
    Decoder* d = &m->dec;
    int R = vae_latent_res(&m->cfg);
    conv2d_apply(ps, &d->conv_in, d->h_in, z, B, R, R);
    resblock_forward(ps, &d->mid[0], d->h_in, B, NULL);
    resblock_forward(ps, &d->mid[1], d->mid[0].out, B, NULL);
    const float* h = d->mid[1].out;
    for (int i = m->cfg.levels - 1; i >= 0; i--) {
        for (int j = 0; j < m->cfg.nres + 1; j++) {
            resblock_forward(ps, &d->res[i][j], h, B, NULL);
            h = d->res[i][j].out;
        }
        if (i > 0) {
            upsample2x_forward(d->up_nearest[i], h, B, d->up_conv[i].cin, R, R);
            R *= 2;
            conv2d_apply(ps, &d->up_conv[i], d->up_out[i], d->up_nearest[i], B, R, R);
            h = d->up_out[i];
        }
    }
    normsilu_forward(ps, &d->norm_out, h, B);
    conv2d_apply(ps, &d->conv_out, d->out, d->norm_out.act, B, R, R);
}

typedef struct { float loss, mse, kl; } VAELoss;

// the whole forward pass and the loss: encode, sample z with the given eps, decode
static VAELoss vae_forward(VAE* m, const float* x, const float* eps, int B, float kl_weight) {
    int Z = m->cfg.z_channels, LR = vae_latent_res(&m->cfg);
    encoder_forward(m, x, B);
    vae_reparam_forward(m->z, m->enc.moments, eps, B, Z, LR * LR);
    decoder_forward(m, m->z, B);
    VAELoss l;
    l.mse = mse_forward(m->dec.out, x, (size_t)B * IMG_C * IMG_RES * IMG_RES);
    l.kl = vae_kl_forward(m->enc.moments, B, Z, LR * LR);
    l.loss = l.mse + kl_weight * l.kl;
    return l;
}

// ----------------------------------------------------------------------------
// backward: walks the forward in reverse; `g` holds the gradient of the current activation and
// each layer writes the gradient of its input into `o`, then the two swap

#define SWAP_GRADS() do { float* t_ = g; g = o; o = t_; } while (0)

// dout (B, 3, 32, 32) -> dz (B, Z, 8, 8); parameter gradients accumulated
static void decoder_backward(VAE* m, const float* dout, float* dz, int B) {
    const ParamStore* ps = &m->ps;
    Decoder* d = &m->dec;
    float *g = m->grad_a, *o = m->grad_b;
    int R = IMG_RES;
    const float* h_last = d->res[0][m->cfg.nres].out;  // norm_out's input: level 0 has no upsample
    conv2d_apply_backward(ps, &d->conv_out, g, dout, d->norm_out.act, B, R, R);
    normsilu_backward(ps, &d->norm_out, o, g, h_last, B);
    SWAP_GRADS();
    for (int i = 0; i < m->cfg.levels; i++) {
        if (i > 0) {
            conv2d_apply_backward(ps, &d->up_conv[i], o, g, d->up_nearest[i], B, R, R);
            SWAP_GRADS();
            R /= 2;
            upsample2x_backward(o, g, B, d->up_conv[i].cin, R, R);
            SWAP_GRADS();
        }
        for (int j = m->cfg.nres; j >= 0; j--) {
            resblock_backward(ps, &d->res[i][j], o, g, B, NULL, m->scratch1, m->scratch2);
            SWAP_GRADS();
        }
    }
    resblock_backward(ps, &d->mid[1], o, g, B, NULL, m->scratch1, m->scratch2);
    SWAP_GRADS();
    resblock_backward(ps, &d->mid[0], o, g, B, NULL, m->scratch1, m->scratch2);
    SWAP_GRADS();
    conv2d_apply_backward(ps, &d->conv_in, dz, g, m->z, B, R, R);
}

// dmoments (B, 2Z, 8, 8) -> parameter gradients (the image gradient is not needed)
static void encoder_backward(VAE* m, const float* dmoments, const float* x, int B) {
    const ParamStore* ps = &m->ps;
    Encoder* e = &m->enc;
    float *g = m->grad_a, *o = m->grad_b;
    int R = vae_latent_res(&m->cfg);
    conv2d_apply_backward(ps, &e->conv_out, g, dmoments, e->norm_out.act, B, R, R);
    normsilu_backward(ps, &e->norm_out, o, g, e->mid[1].out, B);
    SWAP_GRADS();
    resblock_backward(ps, &e->mid[1], o, g, B, NULL, m->scratch1, m->scratch2);
    SWAP_GRADS();
    resblock_backward(ps, &e->mid[0], o, g, B, NULL, m->scratch1, m->scratch2);
    SWAP_GRADS();
    for (int i = m->cfg.levels - 1; i >= 0; i--) {
        if (i < m->cfg.levels - 1) {
            R *= 2;
            conv2d_apply_backward(ps, &e->down[i], o, g, e->down_in[i], B, R, R);
            SWAP_GRADS();
        }
        for (int j = m->cfg.nres - 1; j >= 0; j--) {
            resblock_backward(ps, &e->res[i][j], o, g, B, NULL, m->scratch1, m->scratch2);
            SWAP_GRADS();
        }
    }
    conv2d_apply_backward(ps, &e->conv_in, NULL, g, x, B, R, R);
}

// gradients of the loss of the last vae_forward with respect to every parameter (accumulated)
static void vae_backward(VAE* m, const float* x, const float* eps, int B, float kl_weight) {
    int Z = m->cfg.z_channels, LR = vae_latent_res(&m->cfg);
    mse_backward(m->dx_rec, m->dec.out, x, (size_t)B * IMG_C * IMG_RES * IMG_RES);
    decoder_backward(m, m->dx_rec, m->dz, B);
    vae_reparam_kl_backward(m->dmoments, m->dz, m->enc.moments, eps, kl_weight, B, Z, LR * LR);
    encoder_backward(m, m->dmoments, x, B);
}

// reconstruction from the mean latent (no sampling): the eps of zeros makes z = mu
static void vae_reconstruct(VAE* m, const float* x, const float* zero_eps, int B) {
    int LR = vae_latent_res(&m->cfg);
    encoder_forward(m, x, B);
    vae_reparam_forward(m->z, m->enc.moments, zero_eps, B, m->cfg.z_channels, LR * LR);
    decoder_forward(m, m->z, B);
}

// ----------------------------------------------------------------------------
// checkpoints: weights by name (PyTorch layout) + metadata; the training state in its own file

static void vae_params_to_host(const VAE* m, float* host) {
    dev_to_host(host, m->ps.params, m->ps.total * sizeof(float));
}

// the metadata every VAE file carries (SPEC §7)
static void vae_add_meta(SafeTensorsWriter* w, const VAE* m, const char* model) {
    char config[256];
    vae_config_to_json(&m->cfg, config, sizeof(config));
    st_writer_add_meta(w, "format", "ldm.c");
    st_writer_add_meta(w, "model", model);
    st_writer_add_meta(w, "config", config);
}

// checkpoint_final.safetensors: the weights, loadable into the PyTorch twin by name
static void vae_save_checkpoint(const VAE* m, const char* path) {
    float* host = (float*)mallocCheck(m->ps.total * sizeof(float));
    vae_params_to_host(m, host);
    SafeTensorsWriter w;
    st_writer_init(&w);
    vae_add_meta(&w, m, "vae");
    params_add_to_writer(&m->ps, &w, host, "");
    st_writer_write(&w, path);
    st_writer_free(&w);
    free(host);
}

// reads a VAE checkpoint's config: the file must be one of ours and a VAE
static void vae_checkpoint_config(const SafeTensors* st, const char* path, VAEConfig* cfg) {
    const char* format = safetensors_meta(st, "format");
    const char* model = safetensors_meta(st, "model");
    const char* config = safetensors_meta(st, "config");
    if (format == NULL || strcmp(format, "ldm.c") != 0 || model == NULL || config == NULL) {
        fprintf(stderr, "Error: '%s' is not an ldm.c checkpoint (no format/model/config metadata).\n", path);
        exit(EXIT_FAILURE);
    }
    if (strcmp(model, "vae") != 0) {
        fprintf(stderr, "Error: '%s' is a %s checkpoint, not a VAE.\n"
                        "HINT: pass the checkpoint_final.safetensors of a train_vae run.\n", path, model);
        exit(EXIT_FAILURE);
    }
    if (vae_config_from_json(cfg, config) != 0) {
        fprintf(stderr, "Error: '%s' has an unreadable VAE config: %s\n", path, config);
        exit(EXIT_FAILURE);
    }
}

// builds a VAE from a checkpoint and loads its weights (on the current device)
static void vae_load_checkpoint(VAE* m, const char* path) {
    SafeTensors st;
    safetensors_load(path, &st);
    VAEConfig cfg;
    vae_checkpoint_config(&st, path, &cfg);
    vae_build(m, &cfg);
    params_allocate(&m->ps);
    params_upload_checkpoint(&m->ps, &st, path, "VAE");
    safetensors_free(&st);
}

#ifndef TESTING
// ----------------------------------------------------------------------------
// the training program

typedef struct {
    VAEConfig cfg;
    int batch_size;
    float lr;
    int epochs;
    long max_steps;          // > 0: stop after this many steps (overrides --epochs)
    float kl_weight;
    long kl_warmup_steps;    // < 0: the default (10 epochs, at most a quarter of the run)
    char run_name[128];
    const char* data_dir;
    const char* device;
    uint64_t seed;
    int resume;
    int bench_steps;         // > 0: time this many training steps on random data and exit
    int log_every, sample_every, save_every;
} VAETrainArgs;

// the settings a resumed run must keep, stored in the training state's metadata
static void vae_args_to_json(const VAETrainArgs* a, long total_steps, long kl_warmup, char* out, size_t n) {
    snprintf(out, n, "{\"batch_size\":%d,\"lr\":%.9g,\"kl_weight\":%.9g,\"kl_warmup_steps\":%ld,"
                     "\"total_steps\":%ld,\"seed\":%llu}",
             a->batch_size, a->lr, a->kl_weight, kl_warmup, total_steps, (unsigned long long)a->seed);
}

static void vae_usage(void) {
    printf("Usage: ./train_vae [flags]\n"
           "Trains the VAE (SPEC §3) on CIFAR-10; writes runs/<run-name>/.\n\n"
           "  --preset tiny|small|fast   model size and defaults (default: tiny on a CPU, fast on a GPU)\n"
           "                             tiny (ch 16, mult 1-2-4, nres 1; batch 64, lr 1e-3, 1 epoch)\n"
           "                             small (ch 64, 1-2-4, 2; batch 128, lr 1e-3, 50 epochs)\n"
           "                             fast (ch 128, 1-2-4, 2; batch 512, lr 4e-3, 200 epochs)\n"
           "  --epochs N                 training epochs (preset default)\n"
           "  --max-steps N              stop after N optimizer steps (overrides --epochs)\n"
           "  --batch-size N             (preset default)\n"
           "  --lr X                     AdamW learning rate (preset default)\n"
           "  --kl-weight X              weight of the KL term (default 0.001)\n"
           "  --kl-warmup-steps N        linear KL warm-up (default: 10 epochs, at most a quarter of the run)\n"
           "  --run-name NAME            run directory runs/NAME (default vae_<preset>)\n"
           "  --resume                   continue the run in runs/NAME from its training state\n"
           "  --data DIR                 CIFAR-10 binary directory (default $CIFAR10_DIR, then data/cifar-10-batches-bin)\n"
           "  --device auto|cpu|cuda     (default auto)\n"
           "  --seed N                   (default 1337)\n"
           "  --log-every N              progress line every N steps (default 10)\n"
           "  --sample-every N           reconstruction grid every N steps (default 500; and at the end)\n"
           "  --save-every N             training state every N steps (default 500; and every epoch end)\n"
           "  --bench N                  time N training steps on random data, print img/s, write nothing\n"
           "  --help\n");
}

// flags given on the command line (so a resumed run can tell a new value from a default)
enum { GIVEN_PRESET = 1, GIVEN_BATCH = 2, GIVEN_LR = 4, GIVEN_KLW = 8, GIVEN_KLWARM = 16, GIVEN_SEED = 32 };

static int vae_parse_args(int argc, char** argv, VAETrainArgs* a) {
    static const char* const presets[] = {"tiny", "small", "fast"};
    static const char* const devices[] = {"auto", "cpu", "cuda"};
    int given = 0;
    const char* preset = NULL;
    memset(a, 0, sizeof(*a));
    a->epochs = -1; a->batch_size = -1; a->lr = -1.0f;
    a->kl_weight = 0.001f; a->kl_warmup_steps = -1;
    a->device = "auto"; a->seed = 1337;
    a->log_every = 10; a->sample_every = 500; a->save_every = 500;
    for (int i = 1; i < argc; i++) {
        const char* f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { vae_usage(); exit(EXIT_SUCCESS); }
        else if (strcmp(f, "--preset") == 0) { preset = arg_choice(argc, argv, &i, presets, 3); given |= GIVEN_PRESET; }
        else if (strcmp(f, "--epochs") == 0) a->epochs = (int)arg_long(argc, argv, &i, 1, 100000);
        else if (strcmp(f, "--max-steps") == 0) a->max_steps = arg_long(argc, argv, &i, 1, 1000000000L);
        else if (strcmp(f, "--batch-size") == 0) { a->batch_size = (int)arg_long(argc, argv, &i, 1, 65536); given |= GIVEN_BATCH; }
        else if (strcmp(f, "--lr") == 0) { a->lr = arg_float(argc, argv, &i, 0.0, 10.0, 1); given |= GIVEN_LR; }
        else if (strcmp(f, "--kl-weight") == 0) { a->kl_weight = arg_float(argc, argv, &i, 0.0, 1e6, 0); given |= GIVEN_KLW; }
        else if (strcmp(f, "--kl-warmup-steps") == 0) { a->kl_warmup_steps = arg_long(argc, argv, &i, 0, 1000000000L); given |= GIVEN_KLWARM; }
        else if (strcmp(f, "--run-name") == 0) snprintf(a->run_name, sizeof(a->run_name), "%s", arg_run_name(argc, argv, &i));
        else if (strcmp(f, "--data") == 0) a->data_dir = arg_value(argc, argv, &i);
        else if (strcmp(f, "--device") == 0) a->device = arg_choice(argc, argv, &i, devices, 3);
        else if (strcmp(f, "--seed") == 0) { a->seed = (uint64_t)arg_long(argc, argv, &i, 0, 2147483647L); given |= GIVEN_SEED; }
        else if (strcmp(f, "--resume") == 0) a->resume = 1;
        else if (strcmp(f, "--bench") == 0) a->bench_steps = (int)arg_long(argc, argv, &i, 1, 100000);
        else if (strcmp(f, "--log-every") == 0) a->log_every = (int)arg_long(argc, argv, &i, 1, 1000000);
        else if (strcmp(f, "--sample-every") == 0) a->sample_every = (int)arg_long(argc, argv, &i, 1, 100000000);
        else if (strcmp(f, "--save-every") == 0) a->save_every = (int)arg_long(argc, argv, &i, 1, 100000000);
        else arg_unknown(argv, i);
    }
    if (preset) a->cfg = vae_preset_find(preset)->cfg;
    return given;
}

// fills what the flags left open from the preset (picked by device when not given)
static void vae_apply_preset(VAETrainArgs* a, int given) {
    if (!(given & GIVEN_PRESET)) {
        const char* name = g_device == DEVICE_CUDA ? "fast" : "tiny";
        a->cfg = vae_preset_find(name)->cfg;
        if (!a->resume) printf("preset: %s (no --preset given; %s on a %s)\n", name, name, g_device == DEVICE_CUDA ? "GPU" : "CPU");
    }
    const VAEPreset* p = vae_preset_find(a->cfg.preset);
    if (a->batch_size < 0) a->batch_size = p->batch_size;
    if (a->lr < 0) a->lr = p->lr;
    if (a->epochs < 0) a->epochs = p->epochs;
    if (a->run_name[0] == '\0') snprintf(a->run_name, sizeof(a->run_name), "vae_%s", a->cfg.preset);
}

// the KL weight at a step: linear ramp from 0 over the warm-up
static float kl_weight_at(float kl_weight, long step, long warmup) {
    if (warmup <= 0 || step >= warmup) return kl_weight;
    return kl_weight * (float)step / (float)warmup;
}

// state.safetensors: everything --resume needs (weights, AdamW moments, step, settings)
static void vae_save_state(const VAE* m, const OptState* opt, const char* args_json, const char* path) {
    SafeTensorsWriter w;
    st_writer_init(&w);
    vae_add_meta(&w, m, "vae-train-state");
    st_writer_add_meta(&w, "train_args", args_json);
    train_state_write(&m->ps, opt, &w, path);
    st_writer_free(&w);
}

// reads the state of a run to resume; the preset and settings must match what the flags ask for
static void vae_read_state(const char* path, VAETrainArgs* a, int given, SafeTensors* st, long* total_steps) {
    safetensors_load(path, st);
    const char* model = safetensors_meta(st, "model");
    const char* config = safetensors_meta(st, "config");
    const char* targs = safetensors_meta(st, "train_args");
    VAEConfig cfg;
    if (model == NULL || strcmp(model, "vae-train-state") != 0 || config == NULL || targs == NULL ||
        vae_config_from_json(&cfg, config) != 0) {
        fprintf(stderr, "Error: '%s' is not a train_vae training state.\n", path);
        exit(EXIT_FAILURE);
    }
    if ((given & GIVEN_PRESET) && strcmp(cfg.preset, a->cfg.preset) != 0) {
        fprintf(stderr, "Error: --preset %s, but the run to resume ('%s') is a '%s' VAE.\n"
                        "HINT: drop --preset when resuming, or start a new run with another --run-name.\n",
                a->cfg.preset, path, cfg.preset);
        exit(EXIT_FAILURE);
    }
    a->cfg = cfg;
    int batch; float lr, klw; int seed; int warm, total;
    if (json_get_int(targs, "batch_size", &batch) || json_get_float(targs, "lr", &lr) ||
        json_get_float(targs, "kl_weight", &klw) || json_get_int(targs, "kl_warmup_steps", &warm) ||
        json_get_int(targs, "total_steps", &total) || json_get_int(targs, "seed", &seed)) {
        fprintf(stderr, "Error: '%s' has unreadable train_args: %s\n", path, targs);
        exit(EXIT_FAILURE);
    }
    if (((given & GIVEN_BATCH) && a->batch_size != batch) || ((given & GIVEN_LR) && a->lr != lr) ||
        ((given & GIVEN_KLW) && a->kl_weight != klw) || ((given & GIVEN_KLWARM) && a->kl_warmup_steps != warm) ||
        ((given & GIVEN_SEED) && a->seed != (uint64_t)seed)) {
        fprintf(stderr, "Error: a resumed run keeps its settings (%s); drop the conflicting flags.\n", targs);
        exit(EXIT_FAILURE);
    }
    a->batch_size = batch; a->lr = lr; a->kl_weight = klw; a->kl_warmup_steps = warm; a->seed = (uint64_t)seed;
    *total_steps = total;
}

// random streams: each is a separate seed, indexed by a counter that depends only on the step
#define STREAM_INIT 0x1A17ULL
#define STREAM_EPS 0xE95ULL
#define STREAM_FLIP 0xF11FULL
#define STREAM_SHUFFLE 0x5AFFULL

// writes test images beside their reconstructions (pairs in columns: image, reconstruction, ...)
// d_x: a (B, 3, 32, 32) device buffer to stage the images in
static void vae_write_recon_grid(VAE* m, const Cifar10* test, float* d_x, const float* zero_eps, int n,
                                 const char* path, TBWriter* tb, long step) {
    int B = n < m->max_batch ? n : m->max_batch;
    size_t img = IMG_C * IMG_RES * IMG_RES;
    float* x = (float*)mallocCheck(B * img * sizeof(float));
    float* rec = (float*)mallocCheck(B * img * sizeof(float));
    float* pairs = (float*)mallocCheck(2 * B * img * sizeof(float));
    int* idx = (int*)mallocCheck(B * sizeof(int));
    for (int i = 0; i < B; i++) idx[i] = i;
    cifar10_get_batch(test, idx, B, x, NULL, 0, 0);
    host_to_dev(d_x, x, B * img * sizeof(float));
    vae_reconstruct(m, d_x, zero_eps, B);
    dev_to_host(rec, m->dec.out, B * img * sizeof(float));
    for (int i = 0; i < B; i++) {
        memcpy(pairs + (2 * i) * img, x + i * img, img * sizeof(float));
        memcpy(pairs + (2 * i + 1) * img, rec + i * img, img * sizeof(float));
    }
    int h, w;
    uint8_t* rgb = image_grid_rgb(pairs, 2 * B, IMG_RES, IMG_RES, 16, &h, &w);
    image_write_png(path, rgb, h, w);
    if (tb) tb_add_image(tb, "reconstructions", rgb, h, w, step);
    free(rgb); free(x); free(rec); free(pairs); free(idx);
}

// mean squared error of the reconstruction from mu over a whole split
static double vae_eval_mse(VAE* m, const Cifar10* split, float* d_x, const float* zero_eps) {
    int B = m->max_batch;
    size_t img = IMG_C * IMG_RES * IMG_RES;
    float* x = (float*)mallocCheck(B * img * sizeof(float));
    int* idx = (int*)mallocCheck(B * sizeof(int));
    double sum = 0.0;
    for (int start = 0; start < split->n; start += B) {
        int b = split->n - start < B ? split->n - start : B;
        for (int i = 0; i < b; i++) idx[i] = start + i;
        cifar10_get_batch(split, idx, b, x, NULL, 0, 0);
        host_to_dev(d_x, x, b * img * sizeof(float));
        vae_reconstruct(m, d_x, zero_eps, b);
        sum += (double)mse_forward(m->dec.out, d_x, b * img) * b;
    }
    free(x); free(idx);
    return sum / split->n;
}

// eval_batch.safetensors: a fixed test batch, its eps and our loss, for dev/check_checkpoint.py
static void vae_write_eval_batch(VAE* m, const Cifar10* test, float kl_weight, uint64_t seed, const char* path) {
    int B = m->max_batch < 16 ? m->max_batch : 16;
    int Z = m->cfg.z_channels, LR = vae_latent_res(&m->cfg);
    size_t img = IMG_C * IMG_RES * IMG_RES, lat = (size_t)Z * LR * LR;
    float* x = (float*)mallocCheck(B * img * sizeof(float));
    float* eps = (float*)mallocCheck(B * lat * sizeof(float));
    int* idx = (int*)mallocCheck(B * sizeof(int));
    for (int i = 0; i < B; i++) idx[i] = i;
    cifar10_get_batch(test, idx, B, x, NULL, 0, 0);
    rng_fill_normal_cpu(eps, B * lat, seed ^ 0xE7A1ULL, 0);
    float* d_x = dev_malloc_floats(B * img);
    float* d_eps = dev_malloc_floats(B * lat);
    host_to_dev(d_x, x, B * img * sizeof(float));
    host_to_dev(d_eps, eps, B * lat * sizeof(float));
    VAELoss l = vae_forward(m, d_x, d_eps, B, kl_weight);
    int64_t xs[4] = {B, IMG_C, IMG_RES, IMG_RES}, es[4] = {B, Z, LR, LR}, one = 1;
    SafeTensorsWriter w;
    st_writer_init(&w);
    st_writer_add_meta(&w, "format", "ldm.c");
    st_writer_add(&w, "x", "F32", x, 4, xs);
    st_writer_add(&w, "eps", "F32", eps, 4, es);
    st_writer_add(&w, "kl_weight", "F32", &kl_weight, 1, &one);
    st_writer_add(&w, "loss", "F32", &l.loss, 1, &one);
    st_writer_add(&w, "mse", "F32", &l.mse, 1, &one);
    st_writer_add(&w, "kl", "F32", &l.kl, 1, &one);
    st_writer_write(&w, path);
    st_writer_free(&w);
    dev_free(d_x); dev_free(d_eps);
    free(x); free(eps); free(idx);
}

// --bench N: training steps on random data, median images/s; nothing is written
static void vae_bench(VAE* m, int B, int steps, float lr) {
    size_t img = IMG_C * IMG_RES * IMG_RES, lat = (size_t)m->cfg.z_channels * 64;
    float* x = dev_malloc_floats(B * img);
    float* eps = dev_malloc_floats(B * lat);
    OptState opt;
    optstate_init(&opt, &m->ps, 0);
    double* times = (double*)mallocCheck(steps * sizeof(double));
    for (int s = -2; s < steps; s++) {  // two warm-up steps
        rng_fill_uniform(x, B * img, 7, (uint64_t)(s + 2) * B * img);
        rng_fill_normal(eps, B * lat, 8, (uint64_t)(s + 2) * B * lat);
        dev_synchronize();
        double t0 = wall_seconds();
        dev_zero(m->ps.grads, m->ps.total * sizeof(float));
        vae_forward(m, x, eps, B, 0.001f);
        vae_backward(m, x, eps, B, 0.001f);
        optimizer_step(&m->ps, &opt, lr, 0.0f);
        dev_synchronize();
        if (s >= 0) times[s] = wall_seconds() - t0;
    }
    printf("bench: %.1f img/s (median of %d steps, batch %d, preset %s)\n", B / median_of(times, steps), steps, B,
           m->cfg.preset);
    free(times);
    dev_free(x); dev_free(eps);
    optstate_free(&opt);
}

static void vae_train(VAETrainArgs* a, int given) {
    // the run directory: a new name for a new run, an existing one for --resume
    char run_dir[256], path[512], state_path[512];
    run_dir_check(run_dir, sizeof(run_dir), a->run_name, a->resume, "state.safetensors");
    snprintf(state_path, sizeof(state_path), "%s/state.safetensors", run_dir);
    SafeTensors state;
    long total_steps = 0;
    if (a->resume) vae_read_state(state_path, a, given, &state, &total_steps);

    // data (validated before any training work)
    char data_dir[1024];
    cifar10_resolve_dir(a->data_dir, data_dir, sizeof(data_dir));
    Cifar10 train, test;
    cifar10_load(&train, data_dir, 1);
    cifar10_load(&test, data_dir, 0);
    int B = a->batch_size;
    if (B > train.n) {
        fprintf(stderr, "Error: --batch-size %d is larger than the training set (%d images).\n", B, train.n);
        exit(EXIT_FAILURE);
    }
    long steps_per_epoch = train.n / B;
    if (!a->resume) total_steps = a->max_steps > 0 ? a->max_steps : a->epochs * steps_per_epoch;
    else if (a->max_steps > 0) total_steps = a->max_steps;  // a resumed run may be extended
    long kl_warmup = a->kl_warmup_steps;
    if (kl_warmup < 0) {
        kl_warmup = 10 * steps_per_epoch;
        if (kl_warmup > total_steps / 4) kl_warmup = total_steps / 4;
    }
    char args_json[512], config_json[256];
    vae_args_to_json(a, total_steps, kl_warmup, args_json, sizeof(args_json));
    vae_config_to_json(&a->cfg, config_json, sizeof(config_json));

    // the model and optimizer
    VAE m;
    vae_build(&m, &a->cfg);
    params_allocate(&m.ps);
    vae_alloc_activations(&m, B);
    params_init(&m.ps, a->seed ^ STREAM_INIT);
    OptState opt;
    optstate_init(&opt, &m.ps, 0);
    run_dir_create(run_dir);
    if (a->resume) {
        train_state_restore(&m.ps, &opt, &state);
        safetensors_free(&state);
    } else {
        char cfg_text[1024];
        snprintf(cfg_text, sizeof(cfg_text), "{\"model\":\"vae\",\"config\":%s,\"train_args\":%s}\n", config_json, args_json);
        snprintf(path, sizeof(path), "%s/config.json", run_dir);
        write_text_file(path, cfg_text);
    }
    run_log_open(run_dir);
    run_log("%s %s: VAE %s, %.2fM parameters, batch %d, lr %g, kl_weight %g (warm-up %ld steps), %ld steps (%.1f epochs)\n",
            a->resume ? "resuming" : "starting", run_dir, config_json, m.ps.total / 1e6, B, a->lr, a->kl_weight,
            kl_warmup, total_steps, (double)total_steps / steps_per_epoch);
    if (a->resume) run_log("resumed at step %ld\n", opt.step);
    TBWriter tb;
    tb_open(&tb, run_dir, opt.step);

    // device buffers for a batch
    int Z = a->cfg.z_channels, LR = vae_latent_res(&a->cfg);
    size_t img = IMG_C * IMG_RES * IMG_RES, lat = (size_t)Z * LR * LR;
    float* x_host = (float*)mallocCheck(B * img * sizeof(float));
    float* d_x = dev_malloc_floats(B * img);
    float* d_eps = dev_malloc_floats(B * lat);
    float* d_zero = dev_malloc_floats(B * lat);
    dev_zero(d_zero, B * lat * sizeof(float));
    int* perm = (int*)mallocCheck(train.n * sizeof(int));
    long perm_epoch = -1;

    double t_start = wall_seconds(), t_log = t_start;
    long step_log = opt.step;
    VAELoss l = {0, 0, 0};
    while (opt.step < total_steps) {
        long step = opt.step;
        long epoch = step / steps_per_epoch;
        if (epoch != perm_epoch) { cifar10_shuffle(perm, train.n, a->seed ^ STREAM_SHUFFLE, epoch); perm_epoch = epoch; }
        const int* idx = perm + (step % steps_per_epoch) * B;
        cifar10_get_batch(&train, idx, B, x_host, NULL, a->seed ^ STREAM_FLIP, (uint64_t)step * B);
        host_to_dev(d_x, x_host, B * img * sizeof(float));
        rng_fill_normal(d_eps, B * lat, a->seed ^ STREAM_EPS, (uint64_t)step * B * lat);
        float klw = kl_weight_at(a->kl_weight, step, kl_warmup);

        dev_zero(m.ps.grads, m.ps.total * sizeof(float));
        l = vae_forward(&m, d_x, d_eps, B, klw);
        if (!isfinite(l.loss)) {
            run_log("Error: the loss is %f at step %ld (mse %g, kl %g); stopping without saving.\n"
                    "HINT: lower --lr (now %g) or --kl-weight; resume from the last saved state with --resume.\n",
                    l.loss, step, l.mse, l.kl, a->lr);
            exit(EXIT_FAILURE);
        }
        vae_backward(&m, d_x, d_eps, B, klw);
        float norm = optimizer_step(&m.ps, &opt, a->lr, 0.0f);

        long done = opt.step;
        if (done % a->log_every == 0 || done == total_steps) {
            dev_synchronize();
            double now = wall_seconds();
            double ips = (done - step_log) * B / (now - t_log);
            char extra[160], line[320];
            snprintf(extra, sizeof(extra), "mse %.5f | kl %.2f | kl_w %.2e | norm %.3f", l.mse, l.kl, klw, norm);
            format_progress(line, sizeof(line), done, total_steps, l.loss, extra, ips, (now - t_log) / (done - step_log));
            run_log("%s\n", line);
            tb_add_scalar(&tb, "train/loss", l.loss, done);
            tb_add_scalar(&tb, "train/mse", l.mse, done);
            tb_add_scalar(&tb, "train/kl", l.kl, done);
            tb_add_scalar(&tb, "train/kl_weight", klw, done);
            tb_add_scalar(&tb, "train/lr", a->lr, done);
            tb_add_scalar(&tb, "train/grad_norm", norm, done);
            tb_add_scalar(&tb, "train/images_per_sec", (float)ips, done);
            tb_flush(&tb);
            t_log = now;
            step_log = done;
        }
        if (done % a->sample_every == 0 && done < total_steps) {
            snprintf(path, sizeof(path), "%s/recon_step%06ld.png", run_dir, done);
            vae_write_recon_grid(&m, &test, d_x, d_zero, 64, path, &tb, done);
        }
        if ((done % a->save_every == 0 || done % steps_per_epoch == 0) && done < total_steps) {
            vae_save_state(&m, &opt, args_json, state_path);
        }
    }

    // the end of the run: weights, state, grid, test MSE, the eval batch for the PyTorch check
    vae_save_state(&m, &opt, args_json, state_path);
    snprintf(path, sizeof(path), "%s/checkpoint_final.safetensors", run_dir);
    vae_save_checkpoint(&m, path);
    run_log("wrote %s\n", path);
    snprintf(path, sizeof(path), "%s/recon_final.png", run_dir);
    vae_write_recon_grid(&m, &test, d_x, d_zero, 64, path, &tb, opt.step);
    run_log("wrote %s (test images beside their reconstructions)\n", path);
    snprintf(path, sizeof(path), "%s/eval_batch.safetensors", run_dir);
    vae_write_eval_batch(&m, &test, a->kl_weight, a->seed, path);
    double mse = vae_eval_mse(&m, &test, d_x, d_zero);
    tb_add_scalar(&tb, "test/recon_mse", (float)mse, opt.step);
    run_log("test reconstruction MSE (decoding mu, %d images, pixels in [-1, 1]): %.5f\n", test.n, mse);
    run_log("done in %.1f s\n", wall_seconds() - t_start);

    tb_close(&tb);
    run_log_close();
    free(x_host); free(perm);
    dev_free(d_x); dev_free(d_eps); dev_free(d_zero);
    optstate_free(&opt);
    cifar10_free(&train); cifar10_free(&test);
    vae_free(&m);
}

int main(int argc, char** argv) {
    VAETrainArgs a;
    int given = vae_parse_args(argc, argv, &a);
    device_init(a.device);
    vae_apply_preset(&a, given);
    if (a.bench_steps > 0) {
        VAE m;
        vae_build(&m, &a.cfg);
        params_allocate(&m.ps);
        params_init(&m.ps, a.seed);
        vae_alloc_activations(&m, a.batch_size);
        vae_bench(&m, a.batch_size, a.bench_steps, a.lr);
        vae_free(&m);
        return 0;
    }
    vae_train(&a, given);
    return 0;
}
#endif
