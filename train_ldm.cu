/*
train_ldm.cu — the latent U-Net of ldm.c and its diffusion training, with classifier-free guidance.

A frozen VAE (train_vae.cu) encodes CIFAR-10 once into 8x8x4 latents z0 = mu * latent_scale; the
U-Net learns to predict the noise eps in z_t = sqrt(abar_t) z0 + sqrt(1 - abar_t) eps (SPEC §4, §5).
Class-conditional models add a class embedding to the time embedding and, with probability
--cfg-dropout, train on the "no class" row instead, so one network gives both the conditional and
the unconditional predictions that classifier-free guidance mixes at sampling time.

This file holds the U-Net (parameters, activations, forward, backward), its checkpoints and the
training program. sample_ldm.cu and test_ldm.cu reuse the model with `#define TESTING`.

    make train_ldm && ./train_ldm                     # after ./train_vae: tiny preset on a CPU
    ./train_ldm --preset small --num-classes 10 --vae-checkpoint runs/vae_small/checkpoint_final.safetensors
*/
#ifndef TESTING
#define TESTING
#define TRAIN_LDM_MAIN
#endif
#include "train_vae.cu"
#include "ldmc/linear.cuh"
#include "ldmc/attention.cuh"
#include "ldmc/diffusion.h"
#include "ldmc/sha256.h"

#define UNET_MAX_NRES 4        // ResBlocks per down level (the up levels have one more)
#define UNET_MAX_CLASSES 100000 // --num-classes' bound
#define UNET_MAX_TDIM 4096
#define MAX_SKIPS 32            // the skip stack: 1 + levels x nres + (levels - 1) <= 1 + 4 x 4 + 3 entries

// ----------------------------------------------------------------------------
// configuration and presets

typedef struct {
    char preset[16];
    int ch;
    int mult[MAX_LEVELS];
    int levels;
    int nres;                // ResBlocks per down level (nres + 1 per up level)
    int z_channels;          // 4
    int num_classes;         // 0: unconditional; N: N classes + the "no class" row N
    int attn_res;            // attention at this resolution (SPEC: {4})
    int heads;               // 4
    int tdim;                // time-embedding width (256; test configs shrink it)
    int in_res;              // latent side (8)
} UNetConfig;

typedef struct {
    UNetConfig cfg;
    TrainDefaults defaults;  // batch size, lr, epochs
} UNetPreset;

static const UNetPreset UNET_PRESETS[] = {
    {{"tiny", 32, {1, 2}, 2, 1, 4, 0, 4, 4, 256, 8}, {128, 3e-4f, 5}},
    {{"small", 64, {1, 2}, 2, 2, 4, 0, 4, 4, 256, 8}, {128, 3e-4f, 100}},
    {{"base", 128, {1, 2, 2}, 3, 2, 4, 0, 4, 4, 256, 8}, {128, 3e-4f, 200}},
    {{"fast", 128, {1, 2, 2}, 3, 2, 4, 0, 4, 4, 256, 8}, {256, 3e-4f, 200}},
};
#define NUM_UNET_PRESETS ((int)(sizeof(UNET_PRESETS) / sizeof(UNET_PRESETS[0])))

// the --preset choices, in the order of the table
static const char* const UNET_PRESET_NAMES[] = {"tiny", "small", "base", "fast"};

static void unet_config_to_json(const UNetConfig* c, char* out, size_t n) {
    int len = snprintf(out, n, "{\"preset\":\"%s\",\"ch\":%d,\"mult\":[", c->preset, c->ch);
    for (int i = 0; i < c->levels; i++) len += snprintf(out + len, n - len, "%s%d", i ? "," : "", c->mult[i]);
    snprintf(out + len, n - len, "],\"nres\":%d,\"z_channels\":%d,\"num_classes\":%d,\"attn_res\":[%d],"
             "\"heads\":%d,\"tdim\":%d}", c->nres, c->z_channels, c->num_classes, c->attn_res, c->heads, c->tdim);
}

// the resolution of level i (the latent side halved once per level below the first)
static int unet_level_res(const UNetConfig* c, int i) { return c->in_res >> i; }

// the heads must divide the channels of every attention block: the levels at attn_res and the middle
static int unet_check_heads(const UNetConfig* c, Refusal* r) {
    int mid = c->ch * c->mult[c->levels - 1];
    char allowed[160];
    int len = snprintf(allowed, sizeof(allowed), "a divisor of every attention block's channel count (%d", mid);
    int ok = c->heads >= 1 && mid % c->heads == 0;
    for (int i = 0; i < c->levels; i++) {
        if (unet_level_res(c, i) != c->attn_res) continue;
        int ch = c->ch * c->mult[i];
        ok = ok && ch % c->heads == 0;
        len += snprintf(allowed + len, sizeof(allowed) - len, ", %d", ch);
    }
    snprintf(allowed + len, sizeof(allowed) - len, ")");
    return ok ? 0 : refusal_set(r, "config heads", allowed, "%d", c->heads);
}

// the validator of a U-Net config: 0 when the model code can build it, else -1 with r filled. The
// latents are 8x8 and mult has at most MAX_LEVELS = 4 entries (config_read_mult), so the levels are
// 8, 4, 2, 1 at most; attention runs at one of them.
static int unet_config_check(const UNetConfig* c, Refusal* r) {
    if (check_channels(r, "config ch", c->ch) || check_int_range(r, "config mult (levels)", c->levels, 1, MAX_LEVELS) ||
        check_mults(r, c->mult, c->levels, c->ch) || check_int_range(r, "config nres", c->nres, 1, UNET_MAX_NRES) ||
        check_int_range(r, "config z_channels", c->z_channels, 1, MODEL_MAX_Z) ||
        check_int_range(r, "config num_classes", c->num_classes, 0, UNET_MAX_CLASSES)) return -1;
    int attn_ok = 0;
    char allowed[96];
    int len = snprintf(allowed, sizeof(allowed), "one of the model's resolutions (");
    for (int i = 0; i < c->levels; i++) {
        attn_ok |= unet_level_res(c, i) == c->attn_res;
        len += snprintf(allowed + len, sizeof(allowed) - len, "%s%d", i ? ", " : "", unet_level_res(c, i));
    }
    snprintf(allowed + len, sizeof(allowed) - len, ")");
    if (!attn_ok) return refusal_set(r, "config attn_res", allowed, "[%d]", c->attn_res);
    if (unet_check_heads(c, r)) return -1;
    if (c->tdim < 2 || c->tdim > UNET_MAX_TDIM || c->tdim % 2 != 0) {
        char tdim[64];
        snprintf(tdim, sizeof(tdim), "an even integer in [2, %d]", UNET_MAX_TDIM);
        return refusal_set(r, "config tdim", tdim, "%d", c->tdim);
    }
    return 0;
}

// parses and validates the `config` JSON of a U-Net file: 0, or -1 with r filled
static int unet_config_read(UNetConfig* c, const char* json, Refusal* r) {
    memset(c, 0, sizeof(*c));
    c->in_res = 8;
    int attn[64], n_attn = 0;
    if (json == NULL) return refusal_set(r, "the metadata 'config'", "a U-Net config (JSON)", "missing");
    if (json_get_string(json, "preset", c->preset, sizeof(c->preset)) != 0) {
        return config_unreadable(r, "preset", "a string of at most 15 bytes");
    }
    if (json_get_int(json, "ch", &c->ch) != 0) return config_unreadable(r, "ch", "an integer");
    if (config_read_mult(json, c->mult, &c->levels, r) != 0) return -1;
    if (json_get_int(json, "nres", &c->nres) != 0) return config_unreadable(r, "nres", "an integer");
    if (json_get_int(json, "z_channels", &c->z_channels) != 0) return config_unreadable(r, "z_channels", "an integer");
    if (json_get_int(json, "num_classes", &c->num_classes) != 0) return config_unreadable(r, "num_classes", "an integer");
    if (json_get_int_array(json, "attn_res", attn, 64, &n_attn) != 0) {
        return config_unreadable(r, "attn_res", "a list of one resolution");
    }
    if (n_attn != 1) return refusal_set(r, "config attn_res", "a list of one resolution", "%d entries", n_attn);
    c->attn_res = attn[0];
    if (json_get_int(json, "heads", &c->heads) != 0) return config_unreadable(r, "heads", "an integer");
    if (json_get_int(json, "tdim", &c->tdim) != 0) return config_unreadable(r, "tdim", "an integer");
    return unet_config_check(c, r);
}

// the same for callers that only need yes or no (the tests' reference files)
static int unet_config_from_json(UNetConfig* c, const char* json) {
    Refusal r;
    return unet_config_read(c, json, &r);
}

// ----------------------------------------------------------------------------
// the U-Net

typedef struct {
    UNetConfig cfg;
    ParamStore ps;
    int max_batch;

    // time and class embedding
    Linear lin1, lin2;
    size_t class_embed;          // offset of (num_classes + 1, tdim), when num_classes > 0
    int* t;                      // (B) timesteps on the device
    int* labels;                 // (B) class ids on the device (num_classes = "no class")
    float* temb_sin;             // (B, tdim) sinusoidal features
    float* h1;                   // (B, 4 tdim) linear1 output
    float* h1_act;               // (B, 4 tdim) silu(h1)
    float* emb;                  // (B, tdim) linear2 output + class embedding
    float* class_rows;           // (B, tdim) the looked-up class embeddings
    float* emb_silu;             // (B, tdim) what every ResBlock's temb Linear reads

    Conv2d conv_in;
    float* h_in;                 // (B, ch, 8, 8)
    TResBlock down_res[MAX_LEVELS][UNET_MAX_NRES];
    AttnBlock down_attn[MAX_LEVELS][UNET_MAX_NRES];
    int has_attn[MAX_LEVELS];    // level's resolution == attn_res
    Conv2d downsample[MAX_LEVELS];
    float* down_out[MAX_LEVELS];
    TResBlock mid_res1, mid_res2;
    AttnBlock mid_attn;
    TResBlock up_res[MAX_LEVELS][UNET_MAX_NRES + 1];
    AttnBlock up_attn[MAX_LEVELS][UNET_MAX_NRES + 1];
    float* up_cat[MAX_LEVELS][UNET_MAX_NRES + 1];  // (B, C_h + C_skip, R, R) the ResBlock's input concat(h, skip)
    float* up_nearest[MAX_LEVELS];
    Conv2d up_conv[MAX_LEVELS];
    float* up_out[MAX_LEVELS];
    NormSilu norm_out;
    Conv2d conv_out;
    float* out;                  // (B, 4, 8, 8) the eps prediction
    float* zt;                   // (B, 4, 8, 8) an input staging buffer (training batch, sampler latents)

    // the skip stack: every down output, in push order
    int nskips;
    const float* skip[MAX_SKIPS];
    int skip_c[MAX_SKIPS], skip_r[MAX_SKIPS];
    float* dskip[MAX_SKIPS];     // gradient of each skip from the up path's concat

    // backward buffers
    size_t max_act;              // largest C*H*W of any activation (qkv and concats included)
    float *grad_a, *grad_b, *scratch1, *scratch2;  // (B, max_act)
    float* datt;                 // (B, heads, HW, HW) at the attention resolution
    float* d_emb_silu;           // (B, tdim) summed over all ResBlocks
    float* d_h1;                 // (B, 4 tdim)
    float* dout;                 // (B, 4, 8, 8) gradient of the loss wrt the prediction
} UNet;

static void unet_note_act(UNet* m, int C, int R) {
    size_t n = (size_t)C * R * R;
    if (n > m->max_act) m->max_act = n;
}

static void unet_build(UNet* m, const UNetConfig* cfg) {
    memset(m, 0, sizeof(*m));
    m->cfg = *cfg;
    ParamStore* ps = &m->ps;
    int L = cfg->levels, T = cfg->tdim;
    char name[128];
    m->lin1 = linear_register(ps, "time_embed.linear1", T, 4 * T);
    m->lin2 = linear_register(ps, "time_embed.linear2", 4 * T, T);
    if (cfg->num_classes > 0) {
        m->class_embed = param_register(ps, "class_embed.weight", INIT_NORMAL, 0, 2, cfg->num_classes + 1, T, 0, 0);
    }
    int c = cfg->ch, R = cfg->in_res;
    m->conv_in = conv2d_register(ps, "conv_in", cfg->z_channels, c, 3, 1);
    m->skip_c[m->nskips] = c; m->skip_r[m->nskips++] = R;
    unet_note_act(m, c, R);
    for (int i = 0; i < L; i++) {
        int cout = cfg->ch * cfg->mult[i];
        m->has_attn[i] = R == cfg->attn_res;
        for (int j = 0; j < cfg->nres; j++) {
            snprintf(name, sizeof(name), "down.%d.res.%d", i, j);
            m->down_res[i][j] = tresblock_register(ps, name, c, cout, R, T);
            c = cout;
            if (m->has_attn[i]) {
                snprintf(name, sizeof(name), "down.%d.attn.%d", i, j);
                m->down_attn[i][j] = attnblock_register(ps, name, c, R, cfg->heads);
                unet_note_act(m, 3 * c, R);
            }
            m->skip_c[m->nskips] = c; m->skip_r[m->nskips++] = R;
            unet_note_act(m, c, R);
        }
        if (i < L - 1) {
            snprintf(name, sizeof(name), "down.%d.downsample", i);
            m->downsample[i] = conv2d_register(ps, name, c, c, 3, 2);
            R /= 2;
            m->skip_c[m->nskips] = c; m->skip_r[m->nskips++] = R;
        }
    }
    m->mid_res1 = tresblock_register(ps, "mid.res1", c, c, R, T);
    m->mid_attn = attnblock_register(ps, "mid.attn", c, R, cfg->heads);
    m->mid_res2 = tresblock_register(ps, "mid.res2", c, c, R, T);
    unet_note_act(m, 3 * c, R);
    int k = m->nskips;
    for (int i = L - 1; i >= 0; i--) {
        int cout = cfg->ch * cfg->mult[i];
        for (int j = 0; j < cfg->nres + 1; j++) {
            int cin = c + m->skip_c[--k];
            snprintf(name, sizeof(name), "up.%d.res.%d", i, j);
            m->up_res[i][j] = tresblock_register(ps, name, cin, cout, R, T);
            unet_note_act(m, cin, R);
            c = cout;
            if (m->has_attn[i]) {
                snprintf(name, sizeof(name), "up.%d.attn.%d", i, j);
                m->up_attn[i][j] = attnblock_register(ps, name, c, R, cfg->heads);
            }
        }
        if (i > 0) {
            snprintf(name, sizeof(name), "up.%d.upsample.conv", i);
            m->up_conv[i] = conv2d_register(ps, name, c, c, 3, 1);
            R *= 2;
            unet_note_act(m, c, R);
        }
    }
    m->norm_out = normsilu_register(ps, "norm_out", c, R * R);
    m->conv_out = conv2d_register(ps, "conv_out", c, cfg->z_channels, 3, 1);
}

static void unet_alloc_activations(UNet* m, int B) {
    check_batch_fits(B, m->max_act, "U-Net");
    const UNetConfig* cfg = &m->cfg;
    int L = cfg->levels, T = cfg->tdim, R = cfg->in_res;
    m->max_batch = B;
    m->t = (int*)dev_malloc(B * sizeof(int));
    m->labels = (int*)dev_malloc(B * sizeof(int));
    m->temb_sin = dev_malloc_floats((size_t)B * T);
    m->h1 = dev_malloc_floats((size_t)B * 4 * T);
    m->h1_act = dev_malloc_floats((size_t)B * 4 * T);
    m->emb = dev_malloc_floats((size_t)B * T);
    m->class_rows = dev_malloc_floats((size_t)B * T);
    m->emb_silu = dev_malloc_floats((size_t)B * T);
    m->h_in = dev_malloc_floats((size_t)B * cfg->ch * R * R);
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < cfg->nres; j++) {
            tresblock_alloc(&m->down_res[i][j], B);
            if (m->has_attn[i]) attnblock_alloc(&m->down_attn[i][j], B);
        }
        if (i < L - 1) {
            R /= 2;
            m->down_out[i] = dev_malloc_floats((size_t)B * m->downsample[i].cout * R * R);
        }
    }
    tresblock_alloc(&m->mid_res1, B);
    attnblock_alloc(&m->mid_attn, B);
    tresblock_alloc(&m->mid_res2, B);
    for (int i = L - 1; i >= 0; i--) {
        for (int j = 0; j < cfg->nres + 1; j++) {
            TResBlock* t = &m->up_res[i][j];
            tresblock_alloc(t, B);
            m->up_cat[i][j] = dev_malloc_floats((size_t)B * t->rb.cin * R * R);
            if (m->has_attn[i]) attnblock_alloc(&m->up_attn[i][j], B);
        }
        if (i > 0) {
            R *= 2;
            m->up_nearest[i] = dev_malloc_floats((size_t)B * m->up_conv[i].cin * R * R);
            m->up_out[i] = dev_malloc_floats((size_t)B * m->up_conv[i].cout * R * R);
        }
    }
    normsilu_alloc(&m->norm_out, B);
    m->out = dev_malloc_floats((size_t)B * cfg->z_channels * R * R);
    m->zt = dev_malloc_floats((size_t)B * cfg->z_channels * R * R);
    for (int s = 0; s < m->nskips; s++) {
        m->dskip[s] = dev_malloc_floats((size_t)B * m->skip_c[s] * m->skip_r[s] * m->skip_r[s]);
    }
    m->grad_a = dev_malloc_floats((size_t)B * m->max_act);
    m->grad_b = dev_malloc_floats((size_t)B * m->max_act);
    m->scratch1 = dev_malloc_floats((size_t)B * m->max_act);
    m->scratch2 = dev_malloc_floats((size_t)B * m->max_act);
    int ar = cfg->attn_res;
    m->datt = dev_malloc_floats((size_t)B * cfg->heads * ar * ar * ar * ar);
    m->d_emb_silu = dev_malloc_floats((size_t)B * T);
    m->d_h1 = dev_malloc_floats((size_t)B * 4 * T);
    m->dout = dev_malloc_floats((size_t)B * cfg->z_channels * cfg->in_res * cfg->in_res);
}

static void unet_free(UNet* m) {
    const UNetConfig* cfg = &m->cfg;
    if (m->max_batch > 0) {
        dev_free(m->t); dev_free(m->labels); dev_free(m->temb_sin); dev_free(m->h1); dev_free(m->h1_act);
        dev_free(m->emb); dev_free(m->class_rows); dev_free(m->emb_silu); dev_free(m->h_in);
        for (int i = 0; i < cfg->levels; i++) {
            for (int j = 0; j < cfg->nres; j++) {
                tresblock_free(&m->down_res[i][j]);
                if (m->has_attn[i]) attnblock_free(&m->down_attn[i][j]);
            }
            for (int j = 0; j < cfg->nres + 1; j++) {
                tresblock_free(&m->up_res[i][j]);
                dev_free(m->up_cat[i][j]);
                if (m->has_attn[i]) attnblock_free(&m->up_attn[i][j]);
            }
            dev_free(m->down_out[i]); dev_free(m->up_nearest[i]); dev_free(m->up_out[i]);
        }
        tresblock_free(&m->mid_res1); attnblock_free(&m->mid_attn); tresblock_free(&m->mid_res2);
        normsilu_free(&m->norm_out);
        dev_free(m->out); dev_free(m->zt);
        for (int s = 0; s < m->nskips; s++) dev_free(m->dskip[s]);
        dev_free(m->grad_a); dev_free(m->grad_b); dev_free(m->scratch1); dev_free(m->scratch2);
        dev_free(m->datt); dev_free(m->d_emb_silu); dev_free(m->d_h1); dev_free(m->dout);
    }
    params_free(&m->ps);
}

// ----------------------------------------------------------------------------
// forward: (z_t, t, labels) -> eps prediction in m->out

// m->t and (conditional models) m->labels must hold the batch's timesteps and labels
static void unet_forward(UNet* m, const float* zt, int B) {
    const ParamStore* ps = &m->ps;
    const UNetConfig* cfg = &m->cfg;
    int T = cfg->tdim, R = cfg->in_res;

    // embedding: linear2(silu(linear1(sinusoid(t)))) + class_embed[label]
    timestep_embedding_forward(m->temb_sin, m->t, B, T);
    linear_block_forward(ps, &m->lin1, m->h1, m->temb_sin, B);
    silu_forward(m->h1_act, m->h1, (size_t)B * 4 * T);
    linear_block_forward(ps, &m->lin2, m->emb, m->h1_act, B);
    if (cfg->num_classes > 0) {
        embedding_forward(m->class_rows, m->labels, ps->params + m->class_embed, B, T);
        add_inplace(m->emb, m->class_rows, (size_t)B * T);
    }
    silu_forward(m->emb_silu, m->emb, (size_t)B * T);

    // down path, pushing every output on the skip stack
    int k = 0;
    conv2d_block_forward(ps, &m->conv_in, m->h_in, zt, B, R, R);
    const float* h = m->h_in;
    m->skip[k++] = h;
    for (int i = 0; i < cfg->levels; i++) {
        for (int j = 0; j < cfg->nres; j++) {
            tresblock_forward(ps, &m->down_res[i][j], h, m->emb_silu, B);
            h = m->down_res[i][j].rb.out;
            if (m->has_attn[i]) {
                attnblock_forward(ps, &m->down_attn[i][j], h, B);
                h = m->down_attn[i][j].out;
            }
            m->skip[k++] = h;
        }
        if (i < cfg->levels - 1) {
            conv2d_block_forward(ps, &m->downsample[i], m->down_out[i], h, B, R, R);
            h = m->down_out[i];
            R /= 2;
            m->skip[k++] = h;
        }
    }
    tresblock_forward(ps, &m->mid_res1, h, m->emb_silu, B);
    attnblock_forward(ps, &m->mid_attn, m->mid_res1.rb.out, B);
    tresblock_forward(ps, &m->mid_res2, m->mid_attn.out, m->emb_silu, B);
    h = m->mid_res2.rb.out;

    // up path: every ResBlock takes concat(h, skip.pop())
    for (int i = cfg->levels - 1; i >= 0; i--) {
        for (int j = 0; j < cfg->nres + 1; j++) {
            TResBlock* t = &m->up_res[i][j];
            k--;
            concat_channels_forward(m->up_cat[i][j], h, m->skip[k], B, t->rb.cin - m->skip_c[k], m->skip_c[k], R * R);
            tresblock_forward(ps, t, m->up_cat[i][j], m->emb_silu, B);
            h = t->rb.out;
            if (m->has_attn[i]) {
                attnblock_forward(ps, &m->up_attn[i][j], h, B);
                h = m->up_attn[i][j].out;
            }
        }
        if (i > 0) {
            upsample2x_forward(m->up_nearest[i], h, B, m->up_conv[i].cin, R, R);
            R *= 2;
            conv2d_block_forward(ps, &m->up_conv[i], m->up_out[i], m->up_nearest[i], B, R, R);
            h = m->up_out[i];
        }
    }
    normsilu_forward(ps, &m->norm_out, h, B);
    conv2d_block_forward(ps, &m->conv_out, m->out, m->norm_out.act, B, R, R);
}

// ----------------------------------------------------------------------------
// backward: the forward in reverse; skip gradients are parked in dskip[] by the up path and
// added back when the down path reaches the tensor they belong to

// the last forward's output -> every parameter gradient (accumulated); dout (B, 4, 8, 8)
static void unet_backward(UNet* m, const float* zt, const float* dout, int B) {
    const ParamStore* ps = &m->ps;
    const UNetConfig* cfg = &m->cfg;
    int T = cfg->tdim, L = cfg->levels;
    int R = cfg->in_res;
    float *dh = m->grad_a, *dnext = m->grad_b;
    dev_zero(m->d_emb_silu, (size_t)B * T * sizeof(float));

    const float* h_last = m->has_attn[0] ? m->up_attn[0][cfg->nres].out : m->up_res[0][cfg->nres].rb.out;
    conv2d_block_backward(ps, &m->conv_out, dh, dout, m->norm_out.act, B, R, R);
    normsilu_backward(ps, &m->norm_out, dnext, dh, h_last, B);
    swap_buffers(&dh, &dnext);

    int k = 0;  // the skip the up path consumes, counting from the first pushed
    for (int i = 0; i < L; i++) {
        if (i > 0) {
            conv2d_block_backward(ps, &m->up_conv[i], dnext, dh, m->up_nearest[i], B, R, R);
            swap_buffers(&dh, &dnext);
            R /= 2;
            upsample2x_backward(dnext, dh, B, m->up_conv[i].cin, R, R);
            swap_buffers(&dh, &dnext);
        }
        for (int j = cfg->nres; j >= 0; j--) {
            const TResBlock* t = &m->up_res[i][j];
            if (m->has_attn[i]) {
                attnblock_backward(ps, &m->up_attn[i][j], dnext, dh, B, m->scratch1, m->scratch2, m->datt);
                swap_buffers(&dh, &dnext);
            }
            // the block's input was concat(h, skip): its gradient (in dnext) splits into dh and dskip[k]
            tresblock_backward(ps, t, dnext, dh, m->emb_silu, m->d_emb_silu, B, m->scratch1, m->scratch2);
            int cs = m->skip_c[k];
            concat_channels_backward(dh, m->dskip[k], dnext, B, t->rb.cin - cs, cs, R * R);
            k++;
        }
    }
    tresblock_backward(ps, &m->mid_res2, dnext, dh, m->emb_silu, m->d_emb_silu, B, m->scratch1, m->scratch2);
    swap_buffers(&dh, &dnext);
    attnblock_backward(ps, &m->mid_attn, dnext, dh, B, m->scratch1, m->scratch2, m->datt);
    swap_buffers(&dh, &dnext);
    tresblock_backward(ps, &m->mid_res1, dnext, dh, m->emb_silu, m->d_emb_silu, B, m->scratch1, m->scratch2);
    swap_buffers(&dh, &dnext);

    // down path in reverse: each pushed output also receives its skip gradient
    k = m->nskips - 1;
    for (int i = L - 1; i >= 0; i--) {
        if (i < L - 1) {
            add_inplace(dh, m->dskip[k], (size_t)B * m->skip_c[k] * R * R);
            k--;
            R *= 2;
            const float* x_in = m->has_attn[i] ? m->down_attn[i][cfg->nres - 1].out : m->down_res[i][cfg->nres - 1].rb.out;
            conv2d_block_backward(ps, &m->downsample[i], dnext, dh, x_in, B, R, R);
            swap_buffers(&dh, &dnext);
        }
        for (int j = cfg->nres - 1; j >= 0; j--) {
            add_inplace(dh, m->dskip[k], (size_t)B * m->skip_c[k] * R * R);
            k--;
            if (m->has_attn[i]) {
                attnblock_backward(ps, &m->down_attn[i][j], dnext, dh, B, m->scratch1, m->scratch2, m->datt);
                swap_buffers(&dh, &dnext);
            }
            tresblock_backward(ps, &m->down_res[i][j], dnext, dh, m->emb_silu, m->d_emb_silu, B, m->scratch1, m->scratch2);
            swap_buffers(&dh, &dnext);
        }
    }
    add_inplace(dh, m->dskip[k], (size_t)B * m->skip_c[k] * R * R);
    conv2d_block_backward(ps, &m->conv_in, NULL, dh, zt, B, R, R);

    // the embedding: silu, class rows, linear2, silu, linear1
    silu_backward(m->d_emb_silu, m->d_emb_silu, m->emb, (size_t)B * T);  // now d emb
    if (cfg->num_classes > 0) embedding_backward(m->ps.grads + m->class_embed, m->d_emb_silu, m->labels, B, T);
    linear_block_backward(ps, &m->lin2, m->d_h1, m->d_emb_silu, m->h1_act, B);
    silu_backward(m->d_h1, m->d_h1, m->h1, (size_t)B * 4 * T);
    linear_block_backward(ps, &m->lin1, NULL, m->d_h1, m->temb_sin, B);
}

// the diffusion loss for a prepared batch (zt, t, labels already on the device): mean (eps_pred - eps)^2
static float unet_loss_forward(UNet* m, const float* zt, const float* eps, int B) {
    unet_forward(m, zt, B);
    return mse_forward(m->out, eps, (size_t)B * m->cfg.z_channels * m->cfg.in_res * m->cfg.in_res);
}

static void unet_loss_backward(UNet* m, const float* zt, const float* eps, int B) {
    size_t n = (size_t)B * m->cfg.z_channels * m->cfg.in_res * m->cfg.in_res;
    mse_backward(m->dout, m->out, eps, n);
    unet_backward(m, zt, m->dout, B);
}

// ----------------------------------------------------------------------------
// checkpoints

// what a U-Net checkpoint carries beside its weights (SPEC §7)
typedef struct {
    float latent_scale;
    Schedule schedule;
    char vae_path[512];
    char vae_sha256[65];
} LDMMeta;

// the metadata every U-Net file carries (SPEC §7): format, model, config, latent_scale, schedule, VAE
static void unet_add_meta(SafeTensorsWriter* w, const UNet* m, const LDMMeta* meta, const char* model) {
    char config[512], scale[32];
    unet_config_to_json(&m->cfg, config, sizeof(config));
    snprintf(scale, sizeof(scale), "%.9g", meta->latent_scale);
    st_writer_add_meta(w, "format", "ldm.c");
    st_writer_add_meta(w, "model", model);
    st_writer_add_meta(w, "config", config);
    st_writer_add_meta(w, "latent_scale", scale);
    st_writer_add_meta(w, "schedule", schedule_name(meta->schedule));
    st_writer_add_meta(w, "vae_checkpoint", meta->vae_path);
    st_writer_add_meta(w, "vae_sha256", meta->vae_sha256);
}

static void unet_save_checkpoint(const UNet* m, const float* host_weights, const LDMMeta* meta, int ema,
                                 const char* path) {
    SafeTensorsWriter w;
    st_writer_init(&w);
    unet_add_meta(&w, m, meta, "unet");
    st_writer_add_meta(&w, "ema", ema ? "1" : "0");
    params_add_to_writer(&m->ps, &w, host_weights, "");
    st_writer_write(&w, path);
    st_writer_free(&w);
}

// 0 when the metadata besides the config are usable (latent_scale finite and > 0, a known schedule, a VAE
// path and a sha256 of 64 hex digits), else -1 with r filled
static int unet_meta_read(const SafeTensors* st, LDMMeta* meta, Refusal* r) {
    const char* scale = safetensors_meta(st, "latent_scale");
    const char* sched = safetensors_meta(st, "schedule");
    const char* vae = safetensors_meta(st, "vae_checkpoint");
    const char* sha = safetensors_meta(st, "vae_sha256");
    char* end = NULL;
    float v = scale != NULL ? strtof(scale, &end) : NAN;   // a value beyond float's range becomes inf
    if (scale == NULL || end == scale || *end != '\0') {
        return refusal_set(r, "metadata latent_scale", "a finite number > 0 (1 / std of the VAE latents)", "'%s'",
                           scale ? scale : "(missing)");
    }
    if (check_float_range(r, "metadata latent_scale", v, 0.0, INFINITY, 1)) return -1;
    meta->latent_scale = v;
    if (sched == NULL || (strcmp(sched, "cosine") != 0 && strcmp(sched, "linear") != 0)) {
        return refusal_set(r, "metadata schedule", "cosine or linear", "'%s'", sched ? sched : "(missing)");
    }
    meta->schedule = strcmp(sched, "cosine") == 0 ? SCHEDULE_COSINE : SCHEDULE_LINEAR;
    if (vae == NULL || vae[0] == '\0' || strlen(vae) >= sizeof(meta->vae_path)) {
        return refusal_set(r, "metadata vae_checkpoint", "the path of the VAE checkpoint (1 to 511 bytes)", "%s",
                           vae == NULL ? "missing" : vae[0] == '\0' ? "empty" : "too long");
    }
    snprintf(meta->vae_path, sizeof(meta->vae_path), "%s", vae);
    if (sha == NULL || strlen(sha) != 64 || strspn(sha, "0123456789abcdef") != 64) {
        return refusal_set(r, "metadata vae_sha256", "64 lowercase hex digits", "'%.70s'", sha ? sha : "(missing)");
    }
    snprintf(meta->vae_sha256, sizeof(meta->vae_sha256), "%s", sha);
    return 0;
}

// the validator of the U-Net metadata every U-Net file carries (checkpoint or training state): config,
// latent_scale, schedule and the VAE it was trained on
static void unet_read_meta(const SafeTensors* st, const char* path, UNetConfig* cfg, LDMMeta* meta) {
    Refusal r;
    if (unet_config_read(cfg, safetensors_meta(st, "config"), &r) != 0 || unet_meta_read(st, meta, &r) != 0) {
        refuse(path, &r, FILE_DAMAGED_HINT);
    }
}

// reads a U-Net checkpoint's config and metadata; the file must be one of ours and a U-Net
static void unet_checkpoint_info(const SafeTensors* st, const char* path, UNetConfig* cfg, LDMMeta* meta) {
    file_expect_model(st, path, "unet", "a U-Net checkpoint", "pass the checkpoint_final.safetensors of a train_ldm run.");
    unet_read_meta(st, path, cfg, meta);
}

// builds a U-Net from a checkpoint and loads its (EMA) weights onto the current device
static void unet_load_checkpoint(UNet* m, LDMMeta* meta, const char* path) {
    SafeTensors st;
    safetensors_load(path, &st);
    UNetConfig cfg;
    unet_checkpoint_info(&st, path, &cfg, meta);
    unet_build(m, &cfg);
    params_allocate(&m->ps);
    params_upload_checkpoint(&m->ps, &st, path, "U-Net");
    safetensors_free(&st);
}

// ----------------------------------------------------------------------------
// sampling with classifier-free guidance: the callback the samplers in diffusion.h call

typedef struct {
    UNet* m;
    const int* labels;      // (n) class of each sample, or NULL for an unconditional model
    float guidance;         // s: eps = eps_u + s (eps_c - eps_u)
    float* zbuf;            // (max_batch, dim) host staging
    float* ebuf;            // (max_batch, dim)
    int* tbuf;              // (max_batch)
    int* lbuf;              // (max_batch)
} CFGContext;

// eps for n latents at timestep t. With guidance, the conditional and the unconditional ("no class")
// predictions come from ONE forward over 2b rows (cond first, then uncond), in chunks of b <= max_batch/2.
static void cfg_eps(void* ctx_, const float* z, int t, float* eps, int n) {
    CFGContext* c = (CFGContext*)ctx_;
    UNet* m = c->m;
    size_t dim = (size_t)m->cfg.z_channels * m->cfg.in_res * m->cfg.in_res;
    int guided = m->cfg.num_classes > 0;
    int chunk = guided ? m->max_batch / 2 : m->max_batch;
    for (int start = 0; start < n; start += chunk) {
        int b = n - start < chunk ? n - start : chunk;
        int rows = guided ? 2 * b : b;
        for (int r = 0; r < rows; r++) {
            int i = start + r % b;
            memcpy(c->zbuf + r * dim, z + i * dim, dim * sizeof(float));
            c->tbuf[r] = t;
            if (guided) c->lbuf[r] = r < b ? c->labels[i] : m->cfg.num_classes;
        }
        host_to_dev(m->zt, c->zbuf, rows * dim * sizeof(float));
        host_to_dev(m->t, c->tbuf, rows * sizeof(int));
        if (guided) host_to_dev(m->labels, c->lbuf, rows * sizeof(int));
        unet_forward(m, m->zt, rows);
        dev_to_host(c->ebuf, m->out, rows * dim * sizeof(float));
        for (int r = 0; r < b; r++) {
            float* e = eps + (start + r) * dim;
            const float* ec = c->ebuf + r * dim;
            const float* eu = c->ebuf + (b + r) * dim;
            for (size_t k = 0; k < dim; k++) e[k] = guided ? eu[k] + c->guidance * (ec[k] - eu[k]) : ec[k];
        }
    }
}

// n samples: initial noise from (seed), decoded by the VAE into images (n, 3, 32, 32) on the host.
// labels (n) or NULL. The U-Net must hold the weights to sample with (the EMA) and have
// max_batch >= 2 for guidance; the VAE decodes in chunks of its max_batch.
static void ldm_sample_images(UNet* m, VAE* vae, const LDMMeta* meta, Sampler sampler, int steps, float eta,
                              float guidance, const int* labels, int n, uint64_t seed, float* images,
                              const float* init_noise) {
    size_t dim = (size_t)m->cfg.z_channels * m->cfg.in_res * m->cfg.in_res;
    float* z = (float*)mallocCheck(n * dim * sizeof(float));
    if (init_noise) memcpy(z, init_noise, n * dim * sizeof(float));
    else rng_fill_normal_cpu(z, n * dim, seed, 0);
    double abar[DIFFUSION_T];
    diffusion_schedule(meta->schedule, abar);
    CFGContext c = {m, labels, guidance,
                    (float*)mallocCheck(m->max_batch * dim * sizeof(float)),
                    (float*)mallocCheck(m->max_batch * dim * sizeof(float)),
                    (int*)mallocCheck(m->max_batch * sizeof(int)), (int*)mallocCheck(m->max_batch * sizeof(int))};
    sample_latents(sampler, steps, eta, abar, cfg_eps, &c, z, n, dim, seed ^ STREAM_SAMPLE, NULL, NULL);
    for (size_t k = 0; k < n * dim; k++) z[k] /= meta->latent_scale;
    size_t img = IMG_C * IMG_RES * IMG_RES;
    for (int start = 0; start < n; start += vae->max_batch) {
        int b = n - start < vae->max_batch ? n - start : vae->max_batch;
        host_to_dev(vae->z, z + start * dim, b * dim * sizeof(float));
        decoder_forward(vae, vae->z, b);
        dev_to_host(images + start * img, vae->dec.out, b * img * sizeof(float));
    }
    free(z); free(c.zbuf); free(c.ebuf); free(c.tbuf); free(c.lbuf);
}

// the VAE's latents must be what the U-Net takes: z_channels channels of in_res x in_res
static void ldm_check_vae_latents(const VAEConfig* vae, const char* vae_path, const UNetConfig* unet) {
    if (vae->z_channels == unet->z_channels && vae_latent_res(vae) == unet->in_res) return;
    fprintf(stderr, "Error: VAE checkpoint '%s' makes %dx%dx%d latents; the U-Net takes %dx%dx%d.\nHINT: use the VAE "
                    "the U-Net was trained with (or a VAE with z_channels %d).\n", vae_path, vae->z_channels,
            vae_latent_res(vae), vae_latent_res(vae), unet->z_channels, unet->in_res, unet->in_res, unet->z_channels);
    exit(EXIT_FAILURE);
}

#ifdef TRAIN_LDM_MAIN
// ----------------------------------------------------------------------------
// the training program

typedef struct {
    TrainArgs t;             // the flags both trainers share (ldmc/train.h)
    UNetConfig cfg;          // the preset's (with --num-classes), or the resumed run's
    char vae_path[512];
    float cfg_dropout;
    float guidance;          // for the preview samples
    long warmup_steps;
    Schedule schedule;
    float ema_decay;
    int vae_path_given, classes_given, cfg_dropout_given, guidance_given, warmup_given, schedule_given, ema_given;
} LDMTrainArgs;

static void ldm_usage(void) {
    printf("Usage: ./train_ldm [flags]\n"
           "Trains the latent U-Net (SPEC §4-§6) on CIFAR-10 latents of a frozen VAE; writes runs/<run-name>/.\n\n"
           "  --preset tiny|small|base|fast  U-Net size and defaults (default: tiny on a CPU, fast on a GPU)\n"
           "                             tiny (ch 32, mult 1-2, nres 1; batch 128, lr 3e-4, 5 epochs)\n"
           "                             small (64, 1-2, 2; 128, 3e-4, 100)   base (128, 1-2-2, 2; 128, 3e-4, 200)\n"
           "                             fast (base's network; batch 256, lr 3e-4, 200 epochs)\n"
           "  --vae-checkpoint PATH      the frozen VAE (default runs/vae_tiny/... on a CPU, runs/vae_fast/... on a GPU;\n"
           "                             a resumed run uses the VAE it was trained with)\n"
           "  --num-classes N            0 = unconditional (default), 10 = CIFAR-10 classes with CFG\n"
           "  --cfg-dropout P            probability a label becomes \"no class\" in training (default 0.1)\n"
           "  --guidance-scale S         CFG scale of the preview samples (default 3; conditional models only)\n"
           "  --warmup-steps N           linear learning-rate warm-up (default 0)\n"
           "  --schedule cosine|linear   noise schedule (default cosine)\n"
           "  --ema-decay D              EMA of the weights (default 0.9999)\n");
    train_usage_common("ldm", 1000, "DDIM-50 preview grid");
}

static void ldm_parse_args(int argc, char** argv, LDMTrainArgs* a) {
    static const char* const schedules[] = {"cosine", "linear"};
    memset(a, 0, sizeof(*a));
    train_args_init(&a->t, 1000);
    a->cfg_dropout = 0.1f; a->guidance = 3.0f;
    a->schedule = SCHEDULE_COSINE; a->ema_decay = 0.9999f;
    for (int i = 1; i < argc; i++) {
        const char* f = argv[i];
        if (strcmp(f, "--help") == 0 || strcmp(f, "-h") == 0) { ldm_usage(); exit(EXIT_SUCCESS); }
        else if (train_parse_flag(argc, argv, &i, &a->t, UNET_PRESET_NAMES, NUM_UNET_PRESETS)) continue;
        else if (strcmp(f, "--vae-checkpoint") == 0) { arg_path(argc, argv, &i, a->vae_path, sizeof(a->vae_path)); a->vae_path_given = 1; }
        else if (strcmp(f, "--num-classes") == 0) { a->cfg.num_classes = (int)arg_long(argc, argv, &i, 0, 100000); a->classes_given = 1; }
        else if (strcmp(f, "--cfg-dropout") == 0) { a->cfg_dropout = arg_float(argc, argv, &i, 0.0, 1.0, 0); a->cfg_dropout_given = 1; }
        else if (strcmp(f, "--guidance-scale") == 0) { a->guidance = arg_float(argc, argv, &i, 0.0, 100.0, 0); a->guidance_given = 1; }
        else if (strcmp(f, "--warmup-steps") == 0) { a->warmup_steps = arg_long(argc, argv, &i, 0, 1000000000L); a->warmup_given = 1; }
        else if (strcmp(f, "--schedule") == 0) { a->schedule = strcmp(arg_choice(argc, argv, &i, schedules, 2), "cosine") == 0 ? SCHEDULE_COSINE : SCHEDULE_LINEAR; a->schedule_given = 1; }
        else if (strcmp(f, "--ema-decay") == 0) { a->ema_decay = arg_float(argc, argv, &i, 0.0, 1.0, 0); a->ema_given = 1; }
        else arg_unknown(argv, i);
    }
}

// the preset (by device when not given), what the flags left open, and the default VAE
static void ldm_apply_preset(LDMTrainArgs* a) {
    train_pick_preset(&a->t, "fast", "ldm");
    const UNetPreset* p = &UNET_PRESETS[train_preset_index(&a->t, UNET_PRESET_NAMES, NUM_UNET_PRESETS)];
    int num_classes = a->cfg.num_classes;
    a->cfg = p->cfg;
    a->cfg.num_classes = num_classes;
    train_apply_defaults(&a->t, &p->defaults);
    if (!a->vae_path_given && !a->t.resume) {
        snprintf(a->vae_path, sizeof(a->vae_path), "runs/vae_%s/checkpoint_final.safetensors",
                 g_device == DEVICE_CUDA ? "fast" : "tiny");
        printf("vae checkpoint: %s (no --vae-checkpoint given)\n", a->vae_path);
    }
}

// flips images (B, 3, 32, 32) left-right in place
static void flip_horizontal(float* x, int B) {
    for (size_t row = 0; row < (size_t)B * IMG_C * IMG_RES; row++) {
        float* r = x + row * IMG_RES;
        for (int i = 0; i < IMG_RES / 2; i++) { float t = r[i]; r[i] = r[IMG_RES - 1 - i]; r[IMG_RES - 1 - i] = t; }
    }
}

// mu of every image of a split through the frozen VAE: returns host (n * views, Z, 8, 8), with
// views = 2 (row 2i: image i, row 2i+1: image i flipped) or 1. With several ranks each encodes an
// equal share of the images (the last one fewer) and the shares are all-gathered, so every rank
// holds all of them; the buffer is padded to world x share images.
static float* encode_split(VAE* vae, const Cifar10* d, int views, const char* what) {
    int B = vae->max_batch, Z = vae->cfg.z_channels, LR = vae_latent_res(&vae->cfg);
    size_t img = IMG_C * IMG_RES * IMG_RES, dim = (size_t)Z * LR * LR;
    int share = ceil_div(d->n, dist_world());
    int first = dist_rank() * share, end = first + share < d->n ? first + share : d->n, mine = end - first;
    float* mu = (float*)mallocCheck((size_t)share * dist_world() * views * dim * sizeof(float));
    float* x = (float*)mallocCheck(B * img * sizeof(float));
    float* moments = (float*)mallocCheck(B * 2 * dim * sizeof(float));
    float* d_x = dev_malloc_floats(B * img);
    int* idx = (int*)mallocCheck(B * sizeof(int));
    for (int v = 0; v < views; v++) {
        double t0 = wall_seconds();
        for (int start = first; start < end; start += B) {
            int b = end - start < B ? end - start : B;
            for (int i = 0; i < b; i++) idx[i] = start + i;
            cifar10_get_batch(d, idx, b, x, NULL, 0, 0);
            if (v == 1) flip_horizontal(x, b);
            host_to_dev(d_x, x, b * img * sizeof(float));
            encoder_forward(vae, d_x, b);
            dev_to_host(moments, vae->enc.moments, b * 2 * dim * sizeof(float));
            for (int i = 0; i < b; i++) {  // mu = channels [0, Z) of (2Z, 8, 8)
                memcpy(mu + ((size_t)(start + i) * views + v) * dim, moments + i * 2 * dim, dim * sizeof(float));
            }
            int done = start + b - first;
            if (done % 10240 < B && done < mine) {  // a progress line about every 10k images
                double el = wall_seconds() - t0;
                char eta[32];
                format_duration(el / done * (mine - done), eta, sizeof(eta));
                printf("encoding %s%s: %d/%d images | %.0f img/s | ETA %s\n", what, v ? " (flipped)" : "", done, mine,
                       done / el, eta);
                fflush(stdout);
            }
        }
        printf("encoded %s%s: %d images in %.1f s\n", what, v ? " (flipped)" : "", mine, wall_seconds() - t0);
        fflush(stdout);
    }
    dist_allgather_host(mu, (size_t)share * views * dim);
    if (dist_world() > 1) printf("gathered the %s from %d ranks: %d images\n", what, dist_world(), d->n);
    free(x); free(moments); free(idx);
    dev_free(d_x);
    return mu;
}

// the standard deviation of n values (mean removed), in double
static double std_of(const float* v, size_t n) {
    double s = 0.0, s2 = 0.0;
    for (size_t i = 0; i < n; i++) { s += v[i]; s2 += (double)v[i] * v[i]; }
    double mean = s / n;
    return sqrt(fmax(s2 / n - mean * mean, 0.0) * n / (n > 1 ? n - 1 : 1));
}

// the scaled training latents against the bound DDPM clamps its x0 prediction to (diffusion.h,
// DDPM_X0_CLIP): their max |z0| and the fraction outside, logged; a warning when more than one value in
// a thousand lies outside, since DDPM's samples then lose part of the data's range
static void log_latent_range(const float* mu, size_t n, float latent_scale) {
    double max_abs = 0.0;
    size_t outside = 0;
    for (size_t i = 0; i < n; i++) {
        double z = fabs((double)mu[i] * latent_scale);
        if (z > max_abs) max_abs = z;
        if (z > DDPM_X0_CLIP) outside++;
    }
    double frac = (double)outside / (double)n;
    run_log("scaled training latents: max |z0| %.2f, %.3g%% outside DDPM's x0 bound +-%g\n", max_abs, 100.0 * frac,
            DDPM_X0_CLIP);
    if (frac > 1e-3) {
        fprintf(stderr, "Warning: %.3g%% of the scaled training latents lie outside +-%g, where --sampler ddpm clamps "
                        "its x0 prediction; its samples will lack those values (ddim and dpm++2m do not clamp).\n",
                100.0 * frac, DDPM_X0_CLIP);
    }
}

// learning rate with the optional linear warm-up
static float ldm_lr_at(const LDMTrainArgs* a, long step) {
    if (a->warmup_steps <= 0 || step >= a->warmup_steps) return a->t.lr;
    return a->t.lr * (float)(step + 1) / (float)a->warmup_steps;
}

// the random choices of one training batch (this rank's rows of it), all counter-based in (seed,
// global sample position)
typedef struct {
    float* z0;    // (B, dim) scaled latents
    float* eps;   // (B, dim)
    float* zt;    // (B, dim)
    int* t;       // (B)
    int* labels;  // (B) after CFG dropout
} LDMBatch;

// row b is the global batch's sample `sample + b` (train_run_sample) and draws with that counter
static void ldm_make_batch(LDMBatch* bt, const float* latents, const Cifar10* train, const int* idx, int B,
                           size_t dim, float scale, const double* abar, const LDMTrainArgs* a, uint64_t sample) {
    int nc = a->cfg.num_classes;
    for (int b = 0; b < B; b++) {
        uint64_t ctr = sample + b;
        int flip = rng_uniform(a->t.seed ^ STREAM_FLIP, ctr) < 0.5f;
        const float* mu = latents + ((size_t)idx[b] * 2 + flip) * dim;
        for (size_t k = 0; k < dim; k++) bt->z0[b * dim + k] = mu[k] * scale;
        int t = (int)(rng_uniform(a->t.seed ^ STREAM_T, ctr) * DIFFUSION_T);
        bt->t[b] = t < DIFFUSION_T ? t : DIFFUSION_T - 1;
        int drop = rng_uniform(a->t.seed ^ STREAM_DROP, ctr) < a->cfg_dropout;
        bt->labels[b] = nc > 0 ? (drop ? nc : train->labels[idx[b]]) : 0;
    }
    rng_fill_normal_cpu(bt->eps, B * dim, a->t.seed ^ STREAM_EPS, sample * dim);
    diffusion_q_sample(bt->zt, bt->z0, bt->eps, bt->t, abar, B, dim);
}

// swaps the EMA weights into the model (and back: call twice)
static void swap_ema(UNet* m, OptState* opt, float* spare) {
    size_t bytes = m->ps.total * sizeof(float);
    dev_copy(spare, m->ps.params, bytes);
    dev_copy(m->ps.params, opt->ema, bytes);
    dev_copy(opt->ema, spare, bytes);
}

// a DDIM-50 preview grid: one row per class (8 samples each) or 8 x 8 unconditional samples
static void ldm_write_preview(UNet* m, VAE* vae, const LDMMeta* meta, float guidance, const char* path,
                              TBWriter* tb, long step, uint64_t seed) {
    int nc = m->cfg.num_classes;
    int rows = nc > 0 ? (nc < 10 ? nc : 10) : 8, cols = 8, n = rows * cols;
    int* labels = (int*)mallocCheck(n * sizeof(int));
    for (int i = 0; i < n; i++) labels[i] = i / cols;
    float* images = (float*)mallocCheck((size_t)n * IMG_C * IMG_RES * IMG_RES * sizeof(float));
    ldm_sample_images(m, vae, meta, SAMPLER_DDIM, 50, 0.0f, guidance, nc > 0 ? labels : NULL, n, seed, images, NULL);
    int h, w;
    uint8_t* rgb = image_grid_rgb(images, n, IMG_RES, IMG_RES, cols, &h, &w);
    image_write_png(path, rgb, h, w);
    if (tb) tb_add_image(tb, "samples", rgb, h, w, step);
    free(rgb); free(images); free(labels);
}

// the settings a resumed run keeps (the train_args of its state), in the order they are stored
#define LDM_NUM_SETTINGS 7
static void ldm_settings(LDMTrainArgs* a, long* total_steps, Setting* s) {
    Setting t[LDM_NUM_SETTINGS] = {
        {"batch_size", SETTING_INT, &a->t.batch_size, (a->t.given & GIVEN_BATCH) != 0, 1, 65536},
        {"lr", SETTING_FLOAT, &a->t.lr, (a->t.given & GIVEN_LR) != 0, 0, 10},
        {"warmup_steps", SETTING_LONG, &a->warmup_steps, a->warmup_given, 0, TRAIN_MAX_STEPS},
        {"cfg_dropout", SETTING_FLOAT, &a->cfg_dropout, a->cfg_dropout_given, 0, 1},
        {"ema_decay", SETTING_FLOAT, &a->ema_decay, a->ema_given, 0, 1},
        {"total_steps", SETTING_LONG, total_steps, 0, 1, TRAIN_MAX_STEPS},
        {"seed", SETTING_U64, &a->t.seed, (a->t.given & GIVEN_SEED) != 0, 0, 2147483647},
    };
    memcpy(s, t, sizeof(t));
}

// state.safetensors: weights, AdamW moments, EMA, step — everything --resume needs; refused (the last
// good state kept) when the weights or the EMA are not finite
static void ldm_save_state(const UNet* m, const OptState* opt, const LDMMeta* meta, const char* args_json,
                           const char* path) {
    SafeTensorsWriter w;
    train_state_begin(&w, &m->ps, opt, path);
    unet_add_meta(&w, m, meta, "unet-train-state");
    train_state_finish(&w, &m->ps, opt, args_json, path);
}

// the number of parameters of a U-Net of this config (the model registered, nothing allocated)
static size_t unet_param_count(const UNetConfig* cfg) {
    UNet* m = (UNet*)mallocCheck(sizeof(UNet));
    unet_build(m, cfg);
    size_t n = m->ps.total;
    params_free(&m->ps);
    free(m);
    return n;
}

// the validator of a U-Net training state, run before anything else of --resume: its config and
// metadata (unet_read_meta), settings (each within its flag's range) and tensors, the EMA included
// (train_check_state_tensors). Its config, schedule, VAE and settings replace the flags' (a flag that
// contradicts them is an error).
static void ldm_read_state(TrainRun* run, LDMTrainArgs* a, LDMMeta* meta) {
    const char* targs = train_read_state(run, "unet-train-state", "a train_ldm training state");
    const char* path = run->state_path;
    UNetConfig cfg;
    unet_read_meta(&run->state, path, &cfg, meta);
    if (((a->t.given & GIVEN_PRESET) && strcmp(cfg.preset, a->t.preset) != 0) ||
        (a->classes_given && cfg.num_classes != a->cfg.num_classes)) {
        fprintf(stderr, "Error: the run to resume ('%s') is preset '%s' with %d classes; the flags ask for '%s' with %d.\n"
                        "HINT: drop --preset/--num-classes when resuming, or start a new --run-name.\n",
                path, cfg.preset, cfg.num_classes, a->t.preset, a->cfg.num_classes);
        exit(EXIT_FAILURE);
    }
    if (a->schedule_given && a->schedule != meta->schedule) {
        fprintf(stderr, "Error: --schedule %s, but the run to resume ('%s') was trained with --schedule %s; a resumed "
                        "run keeps its settings.\nHINT: drop --schedule when resuming, or start a new run with another "
                        "--run-name.\n", schedule_name(a->schedule), path, schedule_name(meta->schedule));
        exit(EXIT_FAILURE);
    }
    a->cfg = cfg;
    a->t.preset = a->cfg.preset;
    a->schedule = meta->schedule;
    if (!a->vae_path_given) {
        snprintf(a->vae_path, sizeof(a->vae_path), "%s", meta->vae_path);
        printf("vae checkpoint: %s (the one this run was trained with)\n", a->vae_path);
    }
    Setting s[LDM_NUM_SETTINGS];
    ldm_settings(a, &run->resumed_total, s);
    settings_resume(s, LDM_NUM_SETTINGS, targs, path);
    train_check_state_tensors(run, unet_param_count(&cfg), 1);
}

// eval_batch.safetensors: a fixed batch of test latents (z0, t, eps, labels) and our loss with the
// final EMA weights, for dev/check_checkpoint.py
static void ldm_write_eval_batch(UNet* m, const float* test_mu, const Cifar10* test, float scale, const double* abar,
                                 const LDMTrainArgs* a, const char* path) {
    int B = m->max_batch < 16 ? m->max_batch : 16;
    size_t dim = (size_t)m->cfg.z_channels * m->cfg.in_res * m->cfg.in_res;
    float* z0 = (float*)mallocCheck(B * dim * sizeof(float));
    float* eps = (float*)mallocCheck(B * dim * sizeof(float));
    float* zt = (float*)mallocCheck(B * dim * sizeof(float));
    int* t = (int*)mallocCheck(B * sizeof(int));
    int* labels = (int*)mallocCheck(B * sizeof(int));
    int64_t t64[64], l64[64];
    for (int b = 0; b < B; b++) {
        for (size_t k = 0; k < dim; k++) z0[b * dim + k] = test_mu[b * dim + k] * scale;
        t[b] = (b * 997 + 13) % DIFFUSION_T;  // spread over the whole schedule
        labels[b] = m->cfg.num_classes > 0 ? test->labels[b] % (m->cfg.num_classes + 1) : 0;
        t64[b] = t[b]; l64[b] = labels[b];
    }
    rng_fill_normal_cpu(eps, B * dim, a->t.seed ^ STREAM_EVAL, 0);
    diffusion_q_sample(zt, z0, eps, t, abar, B, dim);
    float* d_eps = dev_malloc_floats(B * dim);
    host_to_dev(m->zt, zt, B * dim * sizeof(float));
    host_to_dev(d_eps, eps, B * dim * sizeof(float));
    host_to_dev(m->t, t, B * sizeof(int));
    host_to_dev(m->labels, labels, B * sizeof(int));
    float loss = unet_loss_forward(m, m->zt, d_eps, B);
    int64_t zs[4] = {B, m->cfg.z_channels, m->cfg.in_res, m->cfg.in_res}, bs = B, one = 1;
    SafeTensorsWriter w;
    st_writer_init(&w);
    st_writer_add_meta(&w, "format", "ldm.c");
    st_writer_add(&w, "z0", "F32", z0, 4, zs);
    st_writer_add(&w, "t", "I64", t64, 1, &bs);
    st_writer_add(&w, "eps", "F32", eps, 4, zs);
    if (m->cfg.num_classes > 0) st_writer_add(&w, "labels", "I64", l64, 1, &bs);
    st_writer_add(&w, "loss", "F32", &loss, 1, &one);
    st_writer_write(&w, path);
    st_writer_free(&w);
    dev_free(d_eps);
    free(z0); free(eps); free(zt); free(t); free(labels);
}

// ----------------------------------------------------------------------------
// --bench N: training steps (forward, backward, clip, AdamW + EMA) on random latents

typedef struct {
    const LDMTrainArgs* a;
    UNet* m;
    OptState opt;
    float* eps;   // (B, 4, 8, 8) on the device
    int* t;       // (B) host staging for timesteps and labels
} LDMBench;

static void ldm_bench_prepare(void* ctx, int s) {
    LDMBench* b = (LDMBench*)ctx;
    UNet* m = b->m;
    int B = b->a->t.batch_size, nc = m->cfg.num_classes;
    size_t n = (size_t)B * m->cfg.z_channels * m->cfg.in_res * m->cfg.in_res;
    for (int i = 0; i < B; i++) b->t[i] = (int)(rng_uniform(STREAM_BENCH ^ STREAM_T, (uint64_t)s * B + i) * DIFFUSION_T) % DIFFUSION_T;
    host_to_dev(m->t, b->t, B * sizeof(int));
    for (int i = 0; i < B; i++) b->t[i] = nc > 0 ? i % (nc + 1) : 0;
    host_to_dev(m->labels, b->t, B * sizeof(int));
    rng_fill_normal(m->zt, n, STREAM_BENCH, (uint64_t)s * n);
    rng_fill_normal(b->eps, n, STREAM_BENCH ^ STREAM_EPS, (uint64_t)s * n);
}

static void ldm_bench_step(void* ctx, int s) {
    LDMBench* b = (LDMBench*)ctx;
    int B = b->a->t.batch_size;
    dev_zero(b->m->ps.grads, b->m->ps.total * sizeof(float));
    unet_loss_forward(b->m, b->m->zt, b->eps, B);
    unet_loss_backward(b->m, b->m->zt, b->eps, B);
    optimizer_step(&b->m->ps, &b->opt, ldm_lr_at(b->a, b->opt.step), b->a->ema_decay);
}

static void ldm_bench(const LDMTrainArgs* a) {
    int B = train_local_batch(a->t.batch_size);
    UNet m;
    unet_build(&m, &a->cfg);
    params_allocate(&m.ps);
    params_init(&m.ps, a->t.seed);
    unet_alloc_activations(&m, B);
    LDMBench b = {a, &m, {0}, dev_malloc_floats((size_t)B * a->cfg.z_channels * a->cfg.in_res * a->cfg.in_res),
                  (int*)mallocCheck(B * sizeof(int))};
    optstate_init(&b.opt, &m.ps, 1);
    char what[64];
    snprintf(what, sizeof(what), "preset %s, %d classes", a->t.preset, a->cfg.num_classes);
    train_bench(a->t.bench_steps, B, ldm_bench_prepare, ldm_bench_step, &b, what);
    free(b.t);
    dev_free(b.eps);
    optstate_free(&b.opt);
    unet_free(&m);
}

// ----------------------------------------------------------------------------
// training

// the frozen VAE: it must exist, be a regular file (checked before it is hashed), make the latents the
// U-Net takes, and for a resumed run be the very VAE it was trained with
static void ldm_load_vae(VAE* vae, const LDMTrainArgs* a, LDMMeta* meta) {
    if (!path_exists(a->vae_path)) {
        fprintf(stderr, "Error: VAE checkpoint '%s' not found.\nHINT: train one first with `./train_vae%s`, or "
                        "pass --vae-checkpoint PATH.\n", a->vae_path, g_device == DEVICE_CUDA ? " --preset fast" : "");
        exit(EXIT_FAILURE);
    }
    check_regular_file(a->vae_path, "VAE checkpoint");
    char sha[65];
    sha256_file(a->vae_path, sha);
    if (a->t.resume && strcmp(sha, meta->vae_sha256) != 0) {
        fprintf(stderr, "Error: VAE checkpoint '%s' (sha256 %.12s...) is not the VAE this run was trained with "
                        "('%s', sha256 %.12s...).\nHINT: resume with --vae-checkpoint pointing at that VAE, or start a "
                        "new run with another --run-name.\n", a->vae_path, sha, meta->vae_path, meta->vae_sha256);
        exit(EXIT_FAILURE);
    }
    vae_load_checkpoint(vae, a->vae_path);
    ldm_check_vae_latents(&vae->cfg, a->vae_path, &a->cfg);
    snprintf(meta->vae_path, sizeof(meta->vae_path), "%s", a->vae_path);
    snprintf(meta->vae_sha256, sizeof(meta->vae_sha256), "%s", sha);
    meta->schedule = a->schedule;
}

// the largest label of the training split must fit --num-classes
static void ldm_check_classes(const LDMTrainArgs* a, const Cifar10* train) {
    int max_label = 0;
    for (int i = 0; i < train->n; i++) if (train->labels[i] > max_label) max_label = train->labels[i];
    if (a->cfg.num_classes > 0 && a->cfg.num_classes <= max_label) {
        fprintf(stderr, "Error: --num-classes %d, but the data has labels up to %d.\n"
                        "HINT: use --num-classes %d (or 0 for an unconditional model).\n",
                a->cfg.num_classes, max_label, max_label + 1);
        exit(EXIT_FAILURE);
    }
}

static void ldm_train(LDMTrainArgs* a) {
    TrainRun run;
    train_run_check(&run, &a->t);
    LDMMeta meta;
    memset(&meta, 0, sizeof(meta));
    if (a->t.resume) ldm_read_state(&run, a, &meta);
    if (a->cfg.num_classes == 0 && a->guidance_given) {
        fprintf(stderr, "Warning: --guidance-scale has no effect on an unconditional model (--num-classes 0); ignored.\n");
    }

    // the frozen VAE and the data, checked before any training work
    VAE vae;
    ldm_load_vae(&vae, a, &meta);
    Cifar10 train, test;
    train_load_data(&a->t, &train, &test);
    ldm_check_classes(a, &train);
    train_run_plan(&run, &a->t, train.n);
    long total_steps = run.total_steps;
    Setting settings[LDM_NUM_SETTINGS];
    ldm_settings(a, &total_steps, settings);
    char args_json[512], config_json[512];
    settings_to_json(settings, LDM_NUM_SETTINGS, args_json, sizeof(args_json));
    unet_config_to_json(&a->cfg, config_json, sizeof(config_json));

    // the U-Net's buffers first, so that a batch size they cannot hold is refused before the encoding:
    // activations for this rank's rows of the batch, at least 2 for the preview's guided forward
    // (conditional and unconditional rows together)
    int B = run.local_batch;
    UNet m;
    unet_build(&m, &a->cfg);
    params_allocate(&m.ps);
    unet_alloc_activations(&m, B > 2 ? B : 2);

    // encode the training split once (mu of both flips; each rank a share) and measure
    // latent_scale = 1 / std(mu), the same on every rank
    vae_alloc_activations(&vae, 256);
    float* train_mu = encode_split(&vae, &train, 2, "training split");
    float* test_mu = encode_split(&vae, &test, 1, "test split");
    size_t dim = (size_t)a->cfg.z_channels * a->cfg.in_res * a->cfg.in_res;
    meta.latent_scale = (float)(1.0 / std_of(train_mu, (size_t)train.n * 2 * dim));
    double test_std = std_of(test_mu, (size_t)test.n * dim) * meta.latent_scale;
    char config_text[2048];
    snprintf(config_text, sizeof(config_text), "{\"model\":\"unet\",\"config\":%s,\"train_args\":%s,\"schedule\":\"%s\","
             "\"vae_checkpoint\":\"%s\",\"latent_scale\":%.9g}\n", config_json, args_json,
             schedule_name(a->schedule), a->vae_path, meta.latent_scale);

    // the U-Net's weights, its optimizer and EMA
    params_init(&m.ps, a->t.seed ^ STREAM_INIT);
    OptState opt;
    optstate_init(&opt, &m.ps, 1);
    float* spare = dev_malloc_floats(m.ps.total);
    size_t pbytes = m.ps.total * sizeof(float);
    train_run_start(&run, &a->t, config_text, &m.ps, &opt);
    run_log("latent_scale = %.5f (1/std of mu over %d training latents); scaled test latents have std %.4f\n",
            meta.latent_scale, 2 * train.n, test_std);
    log_latent_range(train_mu, (size_t)train.n * 2 * dim, meta.latent_scale);
    run_log("%s %s: U-Net %s, %.2fM parameters, %s, batch %d, lr %g, cfg-dropout %g, %ld steps (%.1f epochs)\n",
            a->t.resume ? "resuming" : "starting", run.dir, config_json, m.ps.total / 1e6,
            a->cfg.num_classes > 0 ? "class-conditional" : "unconditional", run.batch_size, a->t.lr, a->cfg_dropout, total_steps,
            (double)total_steps / run.steps_per_epoch);
    if (a->t.resume) run_log("resumed at step %ld\n", opt.step);

    double abar[DIFFUSION_T];
    diffusion_schedule(a->schedule, abar);
    LDMBatch bt = {(float*)mallocCheck(B * dim * sizeof(float)), (float*)mallocCheck(B * dim * sizeof(float)),
                   (float*)mallocCheck(B * dim * sizeof(float)), (int*)mallocCheck(B * sizeof(int)),
                   (int*)mallocCheck(B * sizeof(int))};
    float* d_eps = dev_malloc_floats(B * dim);
    float guidance = a->cfg.num_classes > 0 ? a->guidance : 0.0f;

    char path[600];
    train_run_clock_start(&run, opt.step);
    while (opt.step < total_steps) {
        long step = opt.step;
        ldm_make_batch(&bt, train_mu, &train, train_run_batch(&run, step), B, dim, meta.latent_scale, abar, a,
                       train_run_sample(&run, step));
        host_to_dev(m.zt, bt.zt, B * dim * sizeof(float));
        host_to_dev(d_eps, bt.eps, B * dim * sizeof(float));
        host_to_dev(m.t, bt.t, B * sizeof(int));
        host_to_dev(m.labels, bt.labels, B * sizeof(int));

        dev_zero(m.ps.grads, pbytes);
        float loss = unet_loss_forward(&m, m.zt, d_eps, B);
        dist_allreduce_mean_host(&loss, 1);  // the mean over this rank's rows -> over the global batch
        train_check_loss(loss, step, "", "lower --lr or add --warmup-steps");
        unet_loss_backward(&m, m.zt, d_eps, B);
        float lr = ldm_lr_at(a, step);
        float norm = optimizer_step(&m.ps, &opt, lr, a->ema_decay);

        long done = opt.step;
        char extra[96];
        snprintf(extra, sizeof(extra), "lr %.2e | norm %.3f", lr, norm);
        Scalar scalars[] = {{"train/lr", lr}, {"train/grad_norm", norm}};
        train_run_log(&run, &a->t, done, loss, extra, scalars, 2);
        if (train_due_before_end(&run, done, a->t.sample_every)) {
            snprintf(path, sizeof(path), "%s/samples_step%06ld.png", run.dir, done);
            swap_ema(&m, &opt, spare);
            ldm_write_preview(&m, &vae, &meta, guidance, path, &run.tb, done, a->t.seed);
            swap_ema(&m, &opt, spare);
            run_log("wrote %s\n", path);
            run.t_log = wall_seconds();  // sampling time is not training time
        }
        if (train_save_due(&run, &a->t, done)) ldm_save_state(&m, &opt, &meta, args_json, run.state_path);
    }

    // the end (rank 0): state, EMA checkpoint, the eval batch, a preview grid
    if (dist_is_main()) {
        ldm_save_state(&m, &opt, &meta, args_json, run.state_path);
        float* host = (float*)mallocCheck(pbytes);
        dev_to_host(host, opt.ema, pbytes);
        snprintf(path, sizeof(path), "%s/checkpoint_final.safetensors", run.dir);
        unet_save_checkpoint(&m, host, &meta, 1, path);
        run_log("wrote %s (EMA weights)\n", path);
        free(host);
        swap_ema(&m, &opt, spare);
        snprintf(path, sizeof(path), "%s/eval_batch.safetensors", run.dir);
        ldm_write_eval_batch(&m, test_mu, &test, meta.latent_scale, abar, a, path);
        snprintf(path, sizeof(path), "%s/samples_final.png", run.dir);
        ldm_write_preview(&m, &vae, &meta, guidance, path, &run.tb, opt.step, a->t.seed);
        run_log("wrote %s (DDIM 50 steps%s)\n", path, a->cfg.num_classes > 0 ? ", one row per class" : "");
    }

    train_run_finish(&run);
    free(bt.z0); free(bt.eps); free(bt.zt); free(bt.t); free(bt.labels); free(train_mu); free(test_mu);
    dev_free(d_eps); dev_free(spare);
    optstate_free(&opt);
    cifar10_free(&train); cifar10_free(&test);
    unet_free(&m);
    vae_free(&vae);
}

int main(int argc, char** argv) {
    dist_init(&argc, &argv);  // one rank of a data-parallel job when started by mpirun (ldmc/dist.h)
    LDMTrainArgs a;
    ldm_parse_args(argc, argv, &a);
    device_init(a.t.device);
    dist_init_device();
    ldm_apply_preset(&a);
    if (a.t.bench_steps > 0) ldm_bench(&a);
    else ldm_train(&a);
    dist_finalize();
    return 0;
}
#endif
