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
#include "ldmc/train.h"
#include "ldmc/validate.h"

#define IMG_C 3
#define IMG_RES 32
#define MAX_LEVELS 4
#define VAE_MAX_NRES 4     // ResBlocks per encoder level (the decoder has one more)

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
    TrainDefaults defaults;  // batch size, lr, epochs
    float kl_weight;         // default --kl-weight
} VAEPreset;

// KL weights: small and fast keep the seed's 1e-3 (fast is the seed's recorded VAE run); tiny uses
// 1e-5, the best of 1e-3, 1e-4 and 1e-5 for one CPU epoch by reconstruction and by the samples of
// a tiny LDM trained on its latents (README, "The VAE"; dev/README.md, "The VAE recipe")
static const VAEPreset VAE_PRESETS[] = {
    {{"tiny", 16, {1, 2, 4}, 3, 1, 4}, {64, 1e-3f, 1}, 1e-5f},
    {{"small", 64, {1, 2, 4}, 3, 2, 4}, {128, 1e-3f, 50}, 1e-3f},
    {{"fast", 128, {1, 2, 4}, 3, 2, 4}, {512, 4e-3f, 200}, 1e-3f},
};
#define NUM_VAE_PRESETS ((int)(sizeof(VAE_PRESETS) / sizeof(VAE_PRESETS[0])))

// the --preset choices, in the order of the table
static const char* const VAE_PRESET_NAMES[] = {"tiny", "small", "fast"};

// the latent grid side: one halving per level below the first
static int vae_latent_res(const VAEConfig* c) { return IMG_RES >> (c->levels - 1); }

// {"preset":"tiny","ch":16,"mult":[1,2,4],"nres":1,"z_channels":4}
static void vae_config_to_json(const VAEConfig* c, char* out, size_t n) {
    int len = snprintf(out, n, "{\"preset\":\"%s\",\"ch\":%d,\"mult\":[", c->preset, c->ch);
    for (int i = 0; i < c->levels; i++) len += snprintf(out + len, n - len, "%s%d", i ? "," : "", c->mult[i]);
    snprintf(out + len, n - len, "],\"nres\":%d,\"z_channels\":%d}", c->nres, c->z_channels);
}

// the largest config values the model code supports: ResBlocks per level (the arrays of Encoder and
// Decoder), channels and latent channels (so that every per-image product of them fits an int)
#define MODEL_MAX_CHANNELS 2048
#define MODEL_MAX_Z 64

// a channel count every GroupNorm can split into its GN_GROUPS groups
static int check_channels(Refusal* r, const char* field, int ch) {
    if (ch >= GN_GROUPS && ch <= MODEL_MAX_CHANNELS && ch % GN_GROUPS == 0) return 0;
    char allowed[96];
    snprintf(allowed, sizeof(allowed), "a multiple of %d (GroupNorm's groups) in [%d, %d]", GN_GROUPS, GN_GROUPS,
             MODEL_MAX_CHANNELS);
    return refusal_set(r, field, allowed, "%d", ch);
}

// the channel multipliers: `levels` entries, ch x mult within the channel bound
static int check_mults(Refusal* r, const int* mult, int levels, int ch) {
    for (int i = 0; i < levels; i++) {
        char field[32];
        snprintf(field, sizeof(field), "config mult[%d]", i);
        if (check_int_range(r, field, mult[i], 1, MODEL_MAX_CHANNELS / ch)) return -1;
    }
    return 0;
}

// the validator of a VAE config: 0 when the model code can build it, else -1 with r filled.
// The spatial path 32 -> 16 -> 8 is fixed by the latent-diffusion design (8x8 latents): 3 levels.
static int vae_config_check(const VAEConfig* c, Refusal* r) {
    if (c->levels != 3) return refusal_set(r, "config mult", "3 entries (32 -> 16 -> 8: the latents are 8x8)", "%d entries", c->levels);
    if (check_channels(r, "config ch", c->ch) || check_mults(r, c->mult, c->levels, c->ch)) return -1;
    if (check_int_range(r, "config nres", c->nres, 1, VAE_MAX_NRES)) return -1;
    return check_int_range(r, "config z_channels", c->z_channels, 1, MODEL_MAX_Z);
}

// a field json_get_* could not read
static int config_unreadable(Refusal* r, const char* key, const char* allowed) {
    char field[64];
    snprintf(field, sizeof(field), "config %s", key);
    return refusal_set(r, field, allowed, "missing or unreadable");
}

// the multipliers list: at most MAX_LEVELS entries are kept, but the count is the list's own
static int config_read_mult(const char* json, int* mult, int* levels, Refusal* r) {
    int all[64];
    if (json_get_int_array(json, "mult", all, 64, levels) != 0) return config_unreadable(r, "mult", "a list of integers");
    if (*levels < 1 || *levels > MAX_LEVELS) {
        char allowed[64];
        snprintf(allowed, sizeof(allowed), "1 to %d entries", MAX_LEVELS);
        return refusal_set(r, "config mult", allowed, "%d entries", *levels);
    }
    memcpy(mult, all, *levels * sizeof(int));
    return 0;
}

// parses and validates the `config` JSON of a VAE file: 0, or -1 with r filled
static int vae_config_read(VAEConfig* c, const char* json, Refusal* r) {
    memset(c, 0, sizeof(*c));
    if (json == NULL) return refusal_set(r, "the metadata 'config'", "a VAE config (JSON)", "missing");
    if (json_get_string(json, "preset", c->preset, sizeof(c->preset)) != 0) {
        return config_unreadable(r, "preset", "a string of at most 15 bytes");
    }
    if (json_get_int(json, "ch", &c->ch) != 0) return config_unreadable(r, "ch", "an integer");
    if (config_read_mult(json, c->mult, &c->levels, r) != 0) return -1;
    if (json_get_int(json, "nres", &c->nres) != 0) return config_unreadable(r, "nres", "an integer");
    if (json_get_int(json, "z_channels", &c->z_channels) != 0) return config_unreadable(r, "z_channels", "an integer");
    return vae_config_check(c, r);
}

// the same for callers that only need yes or no (the tests' reference files)
static int vae_config_from_json(VAEConfig* c, const char* json) {
    Refusal r;
    return vae_config_read(c, json, &r);
}

// ----------------------------------------------------------------------------
// the model: parameters (in a ParamStore) and the activations each block keeps for backward

typedef struct {
    Conv2d conv_in;
    float* h_in;                       // (B, ch, 32, 32)
    ResBlock res[MAX_LEVELS][VAE_MAX_NRES];   // [level][block]
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
    ResBlock res[MAX_LEVELS][VAE_MAX_NRES + 1];  // [level][block], nres + 1 blocks per level
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
    check_batch_fits(B, m->max_act, "VAE");
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
    conv2d_block_forward(ps, &e->conv_in, e->h_in, x, B, R, R);
    const float* h = e->h_in;
    for (int i = 0; i < m->cfg.levels; i++) {
        for (int j = 0; j < m->cfg.nres; j++) {
            resblock_forward(ps, &e->res[i][j], h, B, NULL);
            h = e->res[i][j].out;
        }
        if (i < m->cfg.levels - 1) {
            e->down_in[i] = h;
            conv2d_block_forward(ps, &e->down[i], e->down_out[i], h, B, R, R);
            h = e->down_out[i];
            R /= 2;
        }
    }
    resblock_forward(ps, &e->mid[0], h, B, NULL);
    resblock_forward(ps, &e->mid[1], e->mid[0].out, B, NULL);
    normsilu_forward(ps, &e->norm_out, e->mid[1].out, B);
    conv2d_block_forward(ps, &e->conv_out, e->moments, e->norm_out.act, B, R, R);
}

// z (B, Z, 8, 8) -> dec.out (B, 3, 32, 32)
static void decoder_forward(VAE* m, const float* z, int B) {
    const ParamStore* ps = &m->ps;
    Decoder* d = &m->dec;
    int R = vae_latent_res(&m->cfg);
    conv2d_block_forward(ps, &d->conv_in, d->h_in, z, B, R, R);
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
            conv2d_block_forward(ps, &d->up_conv[i], d->up_out[i], d->up_nearest[i], B, R, R);
            h = d->up_out[i];
        }
    }
    normsilu_forward(ps, &d->norm_out, h, B);
    conv2d_block_forward(ps, &d->conv_out, d->out, d->norm_out.act, B, R, R);
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
// backward: walks the forward in reverse; `dh` holds the gradient of the current activation, each
// layer writes the gradient of its input into `dnext`, and swap_buffers exchanges the two

// dout (B, 3, 32, 32) -> dz (B, Z, 8, 8); parameter gradients accumulated
static void decoder_backward(VAE* m, const float* dout, float* dz, int B) {
    const ParamStore* ps = &m->ps;
    Decoder* d = &m->dec;
    float *dh = m->grad_a, *dnext = m->grad_b;
    int R = IMG_RES;
    const float* h_last = d->res[0][m->cfg.nres].out;  // norm_out's input: level 0 has no upsample
    conv2d_block_backward(ps, &d->conv_out, dh, dout, d->norm_out.act, B, R, R);
    normsilu_backward(ps, &d->norm_out, dnext, dh, h_last, B);
    swap_buffers(&dh, &dnext);
    for (int i = 0; i < m->cfg.levels; i++) {
        if (i > 0) {
            conv2d_block_backward(ps, &d->up_conv[i], dnext, dh, d->up_nearest[i], B, R, R);
            swap_buffers(&dh, &dnext);
            R /= 2;
            upsample2x_backward(dnext, dh, B, d->up_conv[i].cin, R, R);
            swap_buffers(&dh, &dnext);
        }
        for (int j = m->cfg.nres; j >= 0; j--) {
            resblock_backward(ps, &d->res[i][j], dnext, dh, B, NULL, m->scratch1, m->scratch2);
            swap_buffers(&dh, &dnext);
        }
    }
    resblock_backward(ps, &d->mid[1], dnext, dh, B, NULL, m->scratch1, m->scratch2);
    swap_buffers(&dh, &dnext);
    resblock_backward(ps, &d->mid[0], dnext, dh, B, NULL, m->scratch1, m->scratch2);
    swap_buffers(&dh, &dnext);
    conv2d_block_backward(ps, &d->conv_in, dz, dh, m->z, B, R, R);
}

// dmoments (B, 2Z, 8, 8) -> parameter gradients (the image gradient is not needed)
static void encoder_backward(VAE* m, const float* dmoments, const float* x, int B) {
    const ParamStore* ps = &m->ps;
    Encoder* e = &m->enc;
    float *dh = m->grad_a, *dnext = m->grad_b;
    int R = vae_latent_res(&m->cfg);
    conv2d_block_backward(ps, &e->conv_out, dh, dmoments, e->norm_out.act, B, R, R);
    normsilu_backward(ps, &e->norm_out, dnext, dh, e->mid[1].out, B);
    swap_buffers(&dh, &dnext);
    resblock_backward(ps, &e->mid[1], dnext, dh, B, NULL, m->scratch1, m->scratch2);
    swap_buffers(&dh, &dnext);
    resblock_backward(ps, &e->mid[0], dnext, dh, B, NULL, m->scratch1, m->scratch2);
    swap_buffers(&dh, &dnext);
    for (int i = m->cfg.levels - 1; i >= 0; i--) {
        if (i < m->cfg.levels - 1) {
            R *= 2;
            conv2d_block_backward(ps, &e->down[i], dnext, dh, e->down_in[i], B, R, R);
            swap_buffers(&dh, &dnext);
        }
        for (int j = m->cfg.nres - 1; j >= 0; j--) {
            resblock_backward(ps, &e->res[i][j], dnext, dh, B, NULL, m->scratch1, m->scratch2);
            swap_buffers(&dh, &dnext);
        }
    }
    conv2d_block_backward(ps, &e->conv_in, NULL, dh, x, B, R, R);
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

// the VAE config every VAE file carries (checkpoint or training state)
static void vae_read_config(const SafeTensors* st, const char* path, VAEConfig* cfg) {
    Refusal r;
    if (vae_config_read(cfg, safetensors_meta(st, "config"), &r) != 0) refuse(path, &r, FILE_DAMAGED_HINT);
}

// reads a VAE checkpoint's config: the file must be one of ours and a VAE
static void vae_checkpoint_config(const SafeTensors* st, const char* path, VAEConfig* cfg) {
    file_expect_model(st, path, "vae", "a VAE checkpoint", "pass the checkpoint_final.safetensors of a train_vae run.");
    vae_read_config(st, path, cfg);
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
    TrainArgs t;             // the flags both trainers share (ldmc/train.h)
    VAEConfig cfg;           // the preset's, or the resumed run's
    float kl_weight;
    long kl_warmup_steps;    // < 0: the default (10 epochs, at most a quarter of the run)
    int kl_weight_given, kl_warmup_given;
} VAETrainArgs;

static void vae_usage(void) {
    printf("Usage: ./train_vae [flags]\n"
           "Trains the VAE (SPEC §3) on CIFAR-10; writes runs/<run-name>/.\n\n"
           "  --preset tiny|small|fast   model size and defaults (default: tiny on a CPU, fast on a GPU)\n"
           "                             tiny (ch 16, mult 1-2-4, nres 1; batch 64, lr 1e-3, 1 epoch, KL weight 1e-5)\n"
           "                             small (ch 64, 1-2-4, 2; batch 128, lr 1e-3, 50 epochs, 1e-3)\n"
           "                             fast (ch 128, 1-2-4, 2; batch 512, lr 4e-3, 200 epochs, 1e-3)\n"
           "  --kl-weight X              weight of the KL term (default: the preset's; the seed's is 0.001)\n"
           "  --kl-warmup-steps N        linear KL warm-up (default: 10 epochs, at most a quarter of the run)\n");
    train_usage_common("vae", 500, "reconstruction grid");
}

static void vae_parse_args(int argc, char** argv, VAETrainArgs* a) {
    memset(a, 0, sizeof(*a));
    train_args_init(&a->t, 500);
    a->kl_warmup_steps = -1;  // kl_weight: the preset's unless given (vae_apply_preset)
    for (int i = 1; i < argc; i++) {
        const char* f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { vae_usage(); exit(EXIT_SUCCESS); }
        else if (train_parse_flag(argc, argv, &i, &a->t, VAE_PRESET_NAMES, NUM_VAE_PRESETS)) continue;
        else if (strcmp(f, "--kl-weight") == 0) { a->kl_weight = arg_float(argc, argv, &i, 0.0, 1e6, 0); a->kl_weight_given = 1; }
        else if (strcmp(f, "--kl-warmup-steps") == 0) { a->kl_warmup_steps = arg_long(argc, argv, &i, 0, 1000000000L); a->kl_warmup_given = 1; }
        else arg_unknown(argv, i);
    }
}

// the KL weight at a step: linear ramp from 0 over the warm-up
static float kl_weight_at(float kl_weight, long step, long warmup) {
    if (warmup <= 0 || step >= warmup) return kl_weight;
    return kl_weight * (float)step / (float)warmup;
}

// the settings a resumed run keeps (the train_args of its state), in the order they are stored
#define VAE_NUM_SETTINGS 6
static void vae_settings(VAETrainArgs* a, long* total_steps, Setting* s) {
    Setting t[VAE_NUM_SETTINGS] = {
        {"batch_size", SETTING_INT, &a->t.batch_size, (a->t.given & GIVEN_BATCH) != 0, 1, 65536},
        {"lr", SETTING_FLOAT, &a->t.lr, (a->t.given & GIVEN_LR) != 0, 0, 10},
        {"kl_weight", SETTING_FLOAT, &a->kl_weight, a->kl_weight_given, 0, 1e6},
        {"kl_warmup_steps", SETTING_LONG, &a->kl_warmup_steps, a->kl_warmup_given, 0, TRAIN_MAX_STEPS},
        {"total_steps", SETTING_LONG, total_steps, 0, 1, TRAIN_MAX_STEPS},
        {"seed", SETTING_U64, &a->t.seed, (a->t.given & GIVEN_SEED) != 0, 0, 2147483647},
    };
    memcpy(s, t, sizeof(t));
}

// state.safetensors: everything --resume needs (weights, AdamW moments, step, settings); refused (the
// last good state kept) when the weights are not finite
static void vae_save_state(const VAE* m, const OptState* opt, const char* args_json, const char* path) {
    SafeTensorsWriter w;
    train_state_begin(&w, &m->ps, opt, path);
    vae_add_meta(&w, m, "vae-train-state");
    train_state_finish(&w, &m->ps, opt, args_json, path);
}

// the number of parameters of a VAE of this config (the model registered, nothing allocated)
static size_t vae_param_count(const VAEConfig* cfg) {
    VAE* m = (VAE*)mallocCheck(sizeof(VAE));
    vae_build(m, cfg);
    size_t n = m->ps.total;
    params_free(&m->ps);
    free(m);
    return n;
}

// the validator of a VAE training state, run before anything else of --resume: its config, settings
// (each within its flag's range) and tensors (train_check_state_tensors). Its config and settings
// replace the flags' (a flag that contradicts them is an error).
static void vae_read_state(TrainRun* run, VAETrainArgs* a) {
    const char* targs = train_read_state(run, "vae-train-state", "a train_vae training state");
    VAEConfig cfg;
    vae_read_config(&run->state, run->state_path, &cfg);
    if ((a->t.given & GIVEN_PRESET) && strcmp(cfg.preset, a->t.preset) != 0) {
        fprintf(stderr, "Error: --preset %s, but the run to resume ('%s') is a '%s' VAE.\n"
                        "HINT: drop --preset when resuming, or start a new run with another --run-name.\n",
                a->t.preset, run->state_path, cfg.preset);
        exit(EXIT_FAILURE);
    }
    a->cfg = cfg;
    a->t.preset = a->cfg.preset;
    Setting s[VAE_NUM_SETTINGS];
    vae_settings(a, &run->resumed_total, s);
    settings_resume(s, VAE_NUM_SETTINGS, targs, run->state_path);
    train_check_state_tensors(run, vae_param_count(&cfg), 0);
}

// writes the first n test images beside their reconstructions (pairs in columns: image,
// reconstruction, ...), reconstructed in chunks of the activations' batch
// d_x: a (max_batch, 3, 32, 32) device buffer to stage the images in
static void vae_write_recon_grid(VAE* m, const Cifar10* test, float* d_x, const float* zero_eps, int n,
                                 const char* path, TBWriter* tb, long step) {
    size_t img = IMG_C * IMG_RES * IMG_RES;
    float* x = (float*)mallocCheck(n * img * sizeof(float));
    float* rec = (float*)mallocCheck(n * img * sizeof(float));
    float* pairs = (float*)mallocCheck(2 * n * img * sizeof(float));
    int* idx = (int*)mallocCheck(n * sizeof(int));
    for (int i = 0; i < n; i++) idx[i] = i;
    cifar10_get_batch(test, idx, n, x, NULL, 0, 0);
    for (int start = 0; start < n; start += m->max_batch) {
        int b = n - start < m->max_batch ? n - start : m->max_batch;
        host_to_dev(d_x, x + start * img, b * img * sizeof(float));
        vae_reconstruct(m, d_x, zero_eps, b);
        dev_to_host(rec + start * img, m->dec.out, b * img * sizeof(float));
    }
    for (int i = 0; i < n; i++) {
        memcpy(pairs + (2 * i) * img, x + i * img, img * sizeof(float));
        memcpy(pairs + (2 * i + 1) * img, rec + i * img, img * sizeof(float));
    }
    int h, w;
    uint8_t* rgb = image_grid_rgb(pairs, 2 * n, IMG_RES, IMG_RES, 16, &h, &w);
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
    rng_fill_normal_cpu(eps, B * lat, seed ^ STREAM_EVAL, 0);
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

// ----------------------------------------------------------------------------
// --bench N: training steps on random images

typedef struct {
    VAE* m;
    OptState opt;
    float *x, *eps;   // (B, 3, 32, 32), (B, Z, 8, 8) on the device
    int B;
    float lr;
} VAEBench;

static void vae_bench_prepare(void* ctx, int s) {
    VAEBench* b = (VAEBench*)ctx;
    size_t img = (size_t)b->B * IMG_C * IMG_RES * IMG_RES, lat = (size_t)b->B * b->m->cfg.z_channels * 64;
    rng_fill_uniform(b->x, img, STREAM_BENCH, (uint64_t)s * img);
    rng_fill_normal(b->eps, lat, STREAM_BENCH ^ STREAM_EPS, (uint64_t)s * lat);
}

static void vae_bench_step(void* ctx, int s) {
    VAEBench* b = (VAEBench*)ctx;
    dev_zero(b->m->ps.grads, b->m->ps.total * sizeof(float));
    vae_forward(b->m, b->x, b->eps, b->B, 0.001f);
    vae_backward(b->m, b->x, b->eps, b->B, 0.001f);
    optimizer_step(&b->m->ps, &b->opt, b->lr, 0.0f);
}

static void vae_bench(const VAETrainArgs* a) {
    int B = train_local_batch(a->t.batch_size);
    VAE m;
    vae_build(&m, &a->cfg);
    params_allocate(&m.ps);
    params_init(&m.ps, a->t.seed);
    vae_alloc_activations(&m, B);
    VAEBench b = {&m, {0}, dev_malloc_floats((size_t)B * IMG_C * IMG_RES * IMG_RES),
                  dev_malloc_floats((size_t)B * m.cfg.z_channels * 64), B, a->t.lr};
    optstate_init(&b.opt, &m.ps, 0);
    char what[64];
    snprintf(what, sizeof(what), "preset %s", a->t.preset);
    train_bench(a->t.bench_steps, B, vae_bench_prepare, vae_bench_step, &b, what);
    dev_free(b.x); dev_free(b.eps);
    optstate_free(&b.opt);
    vae_free(&m);
}

// ----------------------------------------------------------------------------
// training

// the preset (by device when not given) and what the flags left open
static void vae_apply_preset(VAETrainArgs* a) {
    train_pick_preset(&a->t, "fast", "vae");
    const VAEPreset* p = &VAE_PRESETS[train_preset_index(&a->t, VAE_PRESET_NAMES, NUM_VAE_PRESETS)];
    a->cfg = p->cfg;
    train_apply_defaults(&a->t, &p->defaults);
    if (!a->kl_weight_given) a->kl_weight = p->kl_weight;
}

static void vae_train(VAETrainArgs* a) {
    TrainRun run;
    train_run_check(&run, &a->t);
    if (a->t.resume) vae_read_state(&run, a);
    const VAEConfig cfg = a->cfg;

    // data (validated before any training work)
    Cifar10 train, test;
    train_load_data(&a->t, &train, &test);
    train_run_plan(&run, &a->t, train.n);
    long total_steps = run.total_steps;
    if (a->kl_warmup_steps < 0) {
        a->kl_warmup_steps = 10 * run.steps_per_epoch;
        if (a->kl_warmup_steps > total_steps / 4) a->kl_warmup_steps = total_steps / 4;
    }
    Setting settings[VAE_NUM_SETTINGS];
    vae_settings(a, &total_steps, settings);
    char args_json[512], config_json[256], config_text[1024];
    settings_to_json(settings, VAE_NUM_SETTINGS, args_json, sizeof(args_json));
    vae_config_to_json(&cfg, config_json, sizeof(config_json));
    snprintf(config_text, sizeof(config_text), "{\"model\":\"vae\",\"config\":%s,\"train_args\":%s}\n", config_json, args_json);

    // the model and optimizer; activations for this rank's rows of the batch (all of it for one process)
    int B = run.local_batch;
    VAE m;
    vae_build(&m, &cfg);
    params_allocate(&m.ps);
    vae_alloc_activations(&m, B);
    params_init(&m.ps, a->t.seed ^ STREAM_INIT);
    OptState opt;
    optstate_init(&opt, &m.ps, 0);
    train_run_start(&run, &a->t, config_text, &m.ps, &opt);
    run_log("%s %s: VAE %s, %.2fM parameters, batch %d, lr %g, kl_weight %g (warm-up %ld steps), %ld steps (%.1f epochs)\n",
            a->t.resume ? "resuming" : "starting", run.dir, config_json, m.ps.total / 1e6, run.batch_size, a->t.lr, a->kl_weight,
            a->kl_warmup_steps, total_steps, (double)total_steps / run.steps_per_epoch);
    if (a->t.resume) run_log("resumed at step %ld\n", opt.step);

    // device buffers for a batch
    int Z = cfg.z_channels, LR = vae_latent_res(&cfg);
    size_t img = IMG_C * IMG_RES * IMG_RES, lat = (size_t)Z * LR * LR;
    float* x_host = (float*)mallocCheck(B * img * sizeof(float));
    float* d_x = dev_malloc_floats(B * img);            // (B, 3, 32, 32)
    float* d_eps = dev_malloc_floats(B * lat);          // (B, Z, 8, 8)
    float* d_zero = dev_malloc_floats(B * lat);         // (B, Z, 8, 8) eps = 0: z = mu
    dev_zero(d_zero, B * lat * sizeof(float));

    char path[600];
    train_run_clock_start(&run, opt.step);
    while (opt.step < total_steps) {
        long step = opt.step;
        uint64_t sample = train_run_sample(&run, step);  // the global position of this rank's first row
        cifar10_get_batch(&train, train_run_batch(&run, step), B, x_host, NULL, a->t.seed ^ STREAM_FLIP, sample);
        host_to_dev(d_x, x_host, B * img * sizeof(float));
        rng_fill_normal(d_eps, B * lat, a->t.seed ^ STREAM_EPS, sample * lat);
        float klw = kl_weight_at(a->kl_weight, step, a->kl_warmup_steps);

        dev_zero(m.ps.grads, m.ps.total * sizeof(float));
        VAELoss l = vae_forward(&m, d_x, d_eps, B, klw);
        float parts[3] = {l.loss, l.mse, l.kl};  // means over this rank's rows -> over the global batch
        dist_allreduce_mean_host(parts, 3);
        l.loss = parts[0]; l.mse = parts[1]; l.kl = parts[2];
        char detail[96];
        snprintf(detail, sizeof(detail), " (mse %g, kl %g)", l.mse, l.kl);
        train_check_loss(l.loss, step, detail, "lower --lr or --kl-weight");
        vae_backward(&m, d_x, d_eps, B, klw);
        float norm = optimizer_step(&m.ps, &opt, a->t.lr, 0.0f);

        long done = opt.step;
        char extra[160];
        snprintf(extra, sizeof(extra), "mse %.5f | kl %.2f | kl_w %.2e | norm %.3f", l.mse, l.kl, klw, norm);
        Scalar scalars[] = {{"train/mse", l.mse}, {"train/kl", l.kl}, {"train/kl_weight", klw},
                            {"train/lr", a->t.lr}, {"train/grad_norm", norm}};
        train_run_log(&run, &a->t, done, l.loss, extra, scalars, 5);
        if (train_due_before_end(&run, done, a->t.sample_every)) {
            snprintf(path, sizeof(path), "%s/recon_step%06ld.png", run.dir, done);
            vae_write_recon_grid(&m, &test, d_x, d_zero, 64, path, &run.tb, done);
        }
        if (train_save_due(&run, &a->t, done)) vae_save_state(&m, &opt, args_json, run.state_path);
    }

    // the end of the run (rank 0): weights, state, grid, test MSE, the eval batch for the PyTorch check
    if (dist_is_main()) {
        vae_save_state(&m, &opt, args_json, run.state_path);
        snprintf(path, sizeof(path), "%s/checkpoint_final.safetensors", run.dir);
        vae_save_checkpoint(&m, path);
        run_log("wrote %s\n", path);
        snprintf(path, sizeof(path), "%s/recon_final.png", run.dir);
        vae_write_recon_grid(&m, &test, d_x, d_zero, 64, path, &run.tb, opt.step);
        run_log("wrote %s (test images beside their reconstructions)\n", path);
        snprintf(path, sizeof(path), "%s/eval_batch.safetensors", run.dir);
        vae_write_eval_batch(&m, &test, a->kl_weight, a->t.seed, path);
        double mse = vae_eval_mse(&m, &test, d_x, d_zero);
        tb_add_scalar(&run.tb, "test/recon_mse", (float)mse, opt.step);
        run_log("test reconstruction MSE (decoding mu, %d images, pixels in [-1, 1]): %.5f\n", test.n, mse);
    }

    train_run_finish(&run);
    free(x_host);
    dev_free(d_x); dev_free(d_eps); dev_free(d_zero);
    optstate_free(&opt);
    cifar10_free(&train); cifar10_free(&test);
    vae_free(&m);
}

int main(int argc, char** argv) {
    dist_init(&argc, &argv);  // one rank of a data-parallel job when started by mpirun (ldmc/dist.h)
    VAETrainArgs a;
    vae_parse_args(argc, argv, &a);
    device_init(a.t.device);
    dist_init_device();
    vae_apply_preset(&a);
    if (a.t.bench_steps > 0) vae_bench(&a);
    else vae_train(&a);
    dist_finalize();
    return 0;
}
#endif
