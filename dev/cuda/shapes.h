// dev/cuda/shapes.h — the layer shapes the labs validate and time: every convolution, GroupNorm,
// attention and optimizer call that a model preset makes, at that preset's training batch size
// (VAE presets tiny/small/fast of train_vae.cu, U-Net presets tiny/small/base/fast of train_ldm.cu).
// They are read off the models themselves: vae_build / unet_build register a preset's layers, and the
// walkers below visit the registered layers in forward order. A shape several layers or presets share
// is listed once, under the first layer's name, with the number of layers using it.
#pragma once

#ifndef TESTING
#define TESTING  // train_ldm.cu (and the train_vae.cu it includes) without their main()
#endif
#include "train_ldm.cu"

#define MAX_LAB_SHAPES 512

typedef struct { char where[64]; int uses; int B, Cin, H, W, Cout, K, stride; } ConvShape;
// GroupNorm(G) of (B, C, HW); silu: followed by SiLU (NormSilu); temb: its input gets the U-Net's
// per-channel time embedding added first (a ResBlock's second norm)
typedef struct { char where[64]; int uses; int B, C, HW, G, silu, temb; } NormShape;
typedef struct { char where[64]; int uses; int B, C, HW, NH; } AttnShape;
// one optimizer step over all n parameters; ema: the U-Net keeps an EMA of the weights, the VAE does not
typedef struct { char where[64]; int uses; size_t n; int ema; } ParamShape;

typedef struct {
    ConvShape conv[MAX_LAB_SHAPES];
    NormShape norm[MAX_LAB_SHAPES];
    AttnShape attn[MAX_LAB_SHAPES];
    ParamShape params[MAX_LAB_SHAPES];
    int nconv, nnorm, nattn, nparams;
} PresetShapes;

// ----------------------------------------------------------------------------
// collecting shapes, each once

static void shapes_full(const char* kind) {
    fprintf(stderr, "Error: more than %d distinct %s shapes.\nHINT: raise MAX_LAB_SHAPES in dev/cuda/shapes.h.\n",
            MAX_LAB_SHAPES, kind);
    exit(EXIT_FAILURE);
}

static void add_conv(PresetShapes* s, const char* tag, const char* layer, int B, const Conv2d* c, int R) {
    ConvShape n = {"", 1, B, c->cin, R, R, c->cout, c->k, c->stride};
    for (int i = 0; i < s->nconv; i++) {
        ConvShape* o = &s->conv[i];
        if (o->B == n.B && o->Cin == n.Cin && o->H == n.H && o->W == n.W && o->Cout == n.Cout && o->K == n.K &&
            o->stride == n.stride) { o->uses++; return; }
    }
    if (s->nconv == MAX_LAB_SHAPES) shapes_full("convolution");
    snprintf(n.where, sizeof(n.where), "%.20s %.40s", tag, layer);
    s->conv[s->nconv++] = n;
}

static void add_norm(PresetShapes* s, const char* tag, const char* layer, int B, int C, int HW, int G, int silu, int temb) {
    NormShape n = {"", 1, B, C, HW, G, silu, temb};
    for (int i = 0; i < s->nnorm; i++) {
        NormShape* o = &s->norm[i];
        if (o->B == n.B && o->C == n.C && o->HW == n.HW && o->G == n.G && o->silu == n.silu && o->temb == n.temb) {
            o->uses++;
            return;
        }
    }
    if (s->nnorm == MAX_LAB_SHAPES) shapes_full("GroupNorm");
    snprintf(n.where, sizeof(n.where), "%.20s %.40s", tag, layer);
    s->norm[s->nnorm++] = n;
}

static void add_attn(PresetShapes* s, const char* tag, const char* layer, int B, int C, int HW, int NH) {
    AttnShape n = {"", 1, B, C, HW, NH};
    for (int i = 0; i < s->nattn; i++) {
        AttnShape* o = &s->attn[i];
        if (o->B == n.B && o->C == n.C && o->HW == n.HW && o->NH == n.NH) { o->uses++; return; }
    }
    if (s->nattn == MAX_LAB_SHAPES) shapes_full("attention");
    snprintf(n.where, sizeof(n.where), "%.20s %.40s", tag, layer);
    s->attn[s->nattn++] = n;
}

static void add_params(PresetShapes* s, const char* tag, size_t n, int ema) {
    if (s->nparams == MAX_LAB_SHAPES) shapes_full("parameter");
    ParamShape p = {"", 1, n, ema};
    snprintf(p.where, sizeof(p.where), "%.40s", tag);
    s->params[s->nparams++] = p;
}

// ----------------------------------------------------------------------------
// walking the registered layers (the order and resolutions of vae_build / unet_build)

// norm1 + conv1, [time embedding], norm2 + conv2, the 1x1 skip when the width changes
static void walk_resblock(PresetShapes* s, const char* tag, const char* name, const ResBlock* rb, int B, int temb) {
    int HW = rb->H * rb->W;
    char layer[96];
    snprintf(layer, sizeof(layer), "%s.norm1", name);
    add_norm(s, tag, layer, B, rb->cin, HW, rb->ns1.groups, 1, 0);
    snprintf(layer, sizeof(layer), "%s.conv1", name);
    add_conv(s, tag, layer, B, &rb->conv1, rb->H);
    snprintf(layer, sizeof(layer), "%s.norm2", name);
    add_norm(s, tag, layer, B, rb->cout, HW, rb->ns2.groups, 1, temb);
    snprintf(layer, sizeof(layer), "%s.conv2", name);
    add_conv(s, tag, layer, B, &rb->conv2, rb->H);
    if (rb->has_skip) {
        snprintf(layer, sizeof(layer), "%s.skip", name);
        add_conv(s, tag, layer, B, &rb->skip, rb->H);
    }
}

// GroupNorm(1) (no SiLU), the qkv 1x1 conv, attention, the proj 1x1 conv
static void walk_attnblock(PresetShapes* s, const char* tag, const char* name, const AttnBlock* a, int B) {
    int R = (int)lrint(sqrt((double)a->HW));
    char layer[96];
    snprintf(layer, sizeof(layer), "%s.norm", name);
    add_norm(s, tag, layer, B, a->C, a->HW, 1, 0, 0);
    snprintf(layer, sizeof(layer), "%s.qkv", name);
    add_conv(s, tag, layer, B, &a->qkv, R);
    add_attn(s, tag, name, B, a->C, a->HW, a->heads);
    snprintf(layer, sizeof(layer), "%s.proj", name);
    add_conv(s, tag, layer, B, &a->proj, R);
}

static void walk_vae(PresetShapes* s, const VAEPreset* p) {
    VAE* m = (VAE*)calloc(1, sizeof(VAE));
    if (m == NULL) { fprintf(stderr, "Error: out of memory\n"); exit(EXIT_FAILURE); }
    vae_build(m, &p->cfg);
    const Encoder* e = &m->enc;
    const Decoder* d = &m->dec;
    int B = p->defaults.batch_size, L = p->cfg.levels, nres = p->cfg.nres, R = IMG_RES;
    char tag[32], name[48];
    snprintf(tag, sizeof(tag), "vae-%.15s", p->cfg.preset);
    add_conv(s, tag, "encoder.conv_in", B, &e->conv_in, R);
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < nres; j++) {
            snprintf(name, sizeof(name), "encoder.down.%d.res.%d", i, j);
            walk_resblock(s, tag, name, &e->res[i][j], B, 0);
            R = e->res[i][j].H;
        }
        if (i < L - 1) {
            snprintf(name, sizeof(name), "encoder.down.%d.downsample", i);
            add_conv(s, tag, name, B, &e->down[i], R);
            R /= 2;
        }
    }
    walk_resblock(s, tag, "encoder.mid.0", &e->mid[0], B, 0);
    walk_resblock(s, tag, "encoder.mid.1", &e->mid[1], B, 0);
    add_norm(s, tag, "encoder.norm_out", B, e->norm_out.C, e->norm_out.HW, e->norm_out.groups, 1, 0);
    add_conv(s, tag, "encoder.conv_out", B, &e->conv_out, R);

    R = d->mid[0].H;
    add_conv(s, tag, "decoder.conv_in", B, &d->conv_in, R);
    walk_resblock(s, tag, "decoder.mid.0", &d->mid[0], B, 0);
    walk_resblock(s, tag, "decoder.mid.1", &d->mid[1], B, 0);
    for (int i = L - 1; i >= 0; i--) {
        for (int j = 0; j < nres + 1; j++) {
            snprintf(name, sizeof(name), "decoder.up.%d.res.%d", i, j);
            walk_resblock(s, tag, name, &d->res[i][j], B, 0);
            R = d->res[i][j].H;
        }
        if (i > 0) {
            R *= 2;  // the 3x3 conv runs after the nearest-neighbour upsample
            snprintf(name, sizeof(name), "decoder.up.%d.upsample.conv", i);
            add_conv(s, tag, name, B, &d->up_conv[i], R);
        }
    }
    add_norm(s, tag, "decoder.norm_out", B, d->norm_out.C, d->norm_out.HW, d->norm_out.groups, 1, 0);
    add_conv(s, tag, "decoder.conv_out", B, &d->conv_out, R);
    add_params(s, tag, m->ps.total, 0);
    params_free(&m->ps);
    free(m);
}

static void walk_unet(PresetShapes* s, const UNetPreset* p, int num_classes) {
    UNet* m = (UNet*)calloc(1, sizeof(UNet));
    if (m == NULL) { fprintf(stderr, "Error: out of memory\n"); exit(EXIT_FAILURE); }
    UNetConfig cfg = p->cfg;
    cfg.num_classes = num_classes;
    unet_build(m, &cfg);
    int B = p->defaults.batch_size, L = cfg.levels, nres = cfg.nres, R = cfg.in_res;
    char tag[32], name[48];
    snprintf(tag, sizeof(tag), "unet-%.15s", cfg.preset);
    if (num_classes > 0) {
        // the class embedding adds parameters only: the layer shapes are those of the unconditional model
        char ptag[48];
        snprintf(ptag, sizeof(ptag), "%.31s-c%d", tag, num_classes);
        add_params(s, ptag, m->ps.total, 1);
        params_free(&m->ps);
        free(m);
        return;
    }
    add_conv(s, tag, "conv_in", B, &m->conv_in, R);
    for (int i = 0; i < L; i++) {
        for (int j = 0; j < nres; j++) {
            snprintf(name, sizeof(name), "down.%d.res.%d", i, j);
            walk_resblock(s, tag, name, &m->down_res[i][j].rb, B, 1);
            R = m->down_res[i][j].rb.H;
            if (m->has_attn[i]) {
                snprintf(name, sizeof(name), "down.%d.attn.%d", i, j);
                walk_attnblock(s, tag, name, &m->down_attn[i][j], B);
            }
        }
        if (i < L - 1) {
            snprintf(name, sizeof(name), "down.%d.downsample", i);
            add_conv(s, tag, name, B, &m->downsample[i], R);
            R /= 2;
        }
    }
    walk_resblock(s, tag, "mid.res1", &m->mid_res1.rb, B, 1);
    walk_attnblock(s, tag, "mid.attn", &m->mid_attn, B);
    walk_resblock(s, tag, "mid.res2", &m->mid_res2.rb, B, 1);
    for (int i = L - 1; i >= 0; i--) {
        for (int j = 0; j < nres + 1; j++) {
            snprintf(name, sizeof(name), "up.%d.res.%d", i, j);
            walk_resblock(s, tag, name, &m->up_res[i][j].rb, B, 1);
            R = m->up_res[i][j].rb.H;
            if (m->has_attn[i]) {
                snprintf(name, sizeof(name), "up.%d.attn.%d", i, j);
                walk_attnblock(s, tag, name, &m->up_attn[i][j], B);
            }
        }
        if (i > 0) {
            R *= 2;
            snprintf(name, sizeof(name), "up.%d.upsample.conv", i);
            add_conv(s, tag, name, B, &m->up_conv[i], R);
        }
    }
    add_norm(s, tag, "norm_out", B, m->norm_out.C, m->norm_out.HW, m->norm_out.groups, 1, 0);
    add_conv(s, tag, "conv_out", B, &m->conv_out, R);
    add_params(s, tag, m->ps.total, 1);
    params_free(&m->ps);
    free(m);
}

// every preset of both models; the U-Nets also with 10 classes (the class embedding's extra parameters)
static PresetShapes* preset_shapes(void) {
    PresetShapes* s = (PresetShapes*)calloc(1, sizeof(PresetShapes));
    if (s == NULL) { fprintf(stderr, "Error: out of memory\n"); exit(EXIT_FAILURE); }
    for (int i = 0; i < NUM_VAE_PRESETS; i++) walk_vae(s, &VAE_PRESETS[i]);
    for (int i = 0; i < NUM_UNET_PRESETS; i++) walk_unet(s, &UNET_PRESETS[i], 0);
    for (int i = 0; i < NUM_UNET_PRESETS; i++) walk_unet(s, &UNET_PRESETS[i], 10);
    return s;
}
