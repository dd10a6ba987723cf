// ldmc/blocks.cuh — the building blocks both models are made of, on top of the layer kernels:
//   Conv2d     a registered K x K conv (weight + bias offsets in the ParamStore)
//   Linear     a registered fully connected layer
//   NormSilu   GroupNorm followed by SiLU, keeping both outputs for the backward pass
//   ResBlock   h = conv1(silu(norm1(x))), h = conv2(silu(norm2(h))), out = skip(x) + h
//   TResBlock  the U-Net's ResBlock: + Linear(tdim -> cout)(silu(embedding)) added after conv1
//   AttnBlock  out = x + proj(attention(qkv(GroupNorm(1)(x))))
// Every block has one verb pair: <block>_forward (keeps what backward needs) and <block>_backward
// (parameter gradients accumulated in the ParamStore, the input gradient written to dx).
// A block owns the activations it saves for backward, sized for the largest batch at build time;
// forward and backward take the actual batch B (<= that size), so evaluation can run a short
// final batch. Backward needs two scratch buffers of at least B * max(C) * H * W floats.
#pragma once

#include "common.cuh"
#include "params.h"
#include "conv2d.cuh"
#include "groupnorm.cuh"
#include "elementwise.cuh"
#include "embedding.cuh"
#include "linear.cuh"
#include "attention.cuh"

#define GN_GROUPS 8

// backward passes walk a model in reverse with two gradient buffers: `dh` holds the gradient of the
// current activation, each layer writes the gradient of its input into `dnext`, and the caller swaps them
static inline void swap_buffers(float** dh, float** dnext) {
    float* t = *dh;
    *dh = *dnext;
    *dnext = t;
}

// ----------------------------------------------------------------------------
// Conv2d: K x K convolution with bias, pad K/2

typedef struct {
    size_t weight, bias;   // offsets: weight (cout, cin, k, k), bias (cout)
    int cin, cout, k, stride;
} Conv2d;

static inline Conv2d conv2d_register(ParamStore* ps, const char* name, int cin, int cout, int k, int stride) {
    char buf[128];
    Conv2d c = {0, 0, cin, cout, k, stride};
    int fan_in = cin * k * k;
    snprintf(buf, sizeof(buf), "%s.weight", name);
    c.weight = param_register(ps, buf, INIT_FAN_IN, fan_in, 4, cout, cin, k, k);
    snprintf(buf, sizeof(buf), "%s.bias", name);
    c.bias = param_register(ps, buf, INIT_FAN_IN, fan_in, 1, cout, 0, 0, 0);
    return c;
}

// x (B, cin, H, W) -> out (B, cout, H/stride, W/stride)
static inline void conv2d_block_forward(const ParamStore* ps, const Conv2d* c, float* out, const float* x, int B, int H, int W) {
    conv2d_forward(out, x, ps->params + c->weight, ps->params + c->bias, B, c->cin, H, W, c->cout, c->k, c->stride);
}

// dx (B, cin, H, W) overwritten (NULL: not needed); weight and bias gradients accumulated
static inline void conv2d_block_backward(const ParamStore* ps, const Conv2d* c, float* dx, const float* dout,
                                  const float* x, int B, int H, int W) {
    conv2d_backward(dx, ps->grads + c->weight, ps->grads + c->bias, dout, x, ps->params + c->weight,
                    B, c->cin, H, W, c->cout, c->k, c->stride);
}

// ----------------------------------------------------------------------------
// Linear: out (N, out) = x (N, in) @ weight^T + bias

typedef struct {
    size_t weight, bias;   // offsets: weight (out, in), bias (out)
    int in, out;
} Linear;

static inline Linear linear_register(ParamStore* ps, const char* name, int in, int out) {
    char buf[128];
    Linear l = {0, 0, in, out};
    snprintf(buf, sizeof(buf), "%s.weight", name);
    l.weight = param_register(ps, buf, INIT_FAN_IN, in, 2, out, in, 0, 0);
    snprintf(buf, sizeof(buf), "%s.bias", name);
    l.bias = param_register(ps, buf, INIT_FAN_IN, in, 1, out, 0, 0, 0);
    return l;
}

static inline void linear_block_forward(const ParamStore* ps, const Linear* l, float* out, const float* x, int N) {
    linear_forward(out, x, ps->params + l->weight, ps->params + l->bias, N, l->in, l->out);
}

static inline void linear_block_backward(const ParamStore* ps, const Linear* l, float* dx, const float* dout,
                                  const float* x, int N) {
    linear_backward(dx, ps->grads + l->weight, ps->grads + l->bias, dout, x, ps->params + l->weight, N, l->in, l->out);
}

// ----------------------------------------------------------------------------
// NormSilu: act = silu(GroupNorm(x))

typedef struct {
    size_t weight, bias;   // offsets: (C), (C)
    int C, HW, groups;
    float* xn;    // (B, C, HW) normalised input
    float* mean;  // (B, groups)
    float* rstd;  // (B, groups)
    float* act;   // (B, C, HW) silu(xn)
} NormSilu;

static inline size_t groupnorm_register(ParamStore* ps, const char* name, int C, size_t* bias) {
    char buf[128];
    snprintf(buf, sizeof(buf), "%s.weight", name);
    size_t w = param_register(ps, buf, INIT_ONES, 0, 1, C, 0, 0, 0);
    snprintf(buf, sizeof(buf), "%s.bias", name);
    *bias = param_register(ps, buf, INIT_ZEROS, 0, 1, C, 0, 0, 0);
    return w;
}

static inline NormSilu normsilu_register(ParamStore* ps, const char* name, int C, int HW) {
    NormSilu n;
    memset(&n, 0, sizeof(n));
    n.C = C; n.HW = HW; n.groups = GN_GROUPS;
    n.weight = groupnorm_register(ps, name, C, &n.bias);
    return n;
}

static inline void normsilu_alloc(NormSilu* n, int B) {
    n->xn = dev_malloc_floats((size_t)B * n->C * n->HW);
    n->act = dev_malloc_floats((size_t)B * n->C * n->HW);
    n->mean = dev_malloc_floats((size_t)B * n->groups);
    n->rstd = dev_malloc_floats((size_t)B * n->groups);
}

static inline void normsilu_free(NormSilu* n) {
    dev_free(n->xn); dev_free(n->act); dev_free(n->mean); dev_free(n->rstd);
}

static inline void normsilu_forward(const ParamStore* ps, NormSilu* n, const float* x, int B) {
    groupnorm_forward(n->xn, n->mean, n->rstd, x, ps->params + n->weight, ps->params + n->bias,
                      B, n->C, n->HW, n->groups);
    silu_forward(n->act, n->xn, (size_t)B * n->C * n->HW);
}

// dact (B, C, HW) is consumed (turned into the gradient of xn in place); dx overwritten
static inline void normsilu_backward(const ParamStore* ps, const NormSilu* n, float* dx, float* dact,
                              const float* x, int B) {
    silu_backward(dact, dact, n->xn, (size_t)B * n->C * n->HW);
    groupnorm_backward(dx, ps->grads + n->weight, ps->grads + n->bias, dact, x, n->mean, n->rstd,
                       ps->params + n->weight, B, n->C, n->HW, n->groups);
}

// ----------------------------------------------------------------------------
// ResBlock(cin, cout) at resolution H x W

typedef struct {
    int cin, cout, H, W;
    NormSilu ns1, ns2;
    Conv2d conv1, conv2, skip;
    int has_skip;        // 1x1 skip conv only when cin != cout
    const float* x;      // (B, cin, H, W) the input of the last forward (owned by the caller)
    float* h1;           // (B, cout, H, W) conv1(silu(norm1(x))) [+ temb]
    float* skip_out;     // (B, cout, H, W) skip(x), only when has_skip
    float* out;          // (B, cout, H, W)
} ResBlock;

static inline ResBlock resblock_register(ParamStore* ps, const char* name, int cin, int cout, int H, int W) {
    ResBlock rb;
    memset(&rb, 0, sizeof(rb));
    rb.cin = cin; rb.cout = cout; rb.H = H; rb.W = W;
    char buf[128];
    snprintf(buf, sizeof(buf), "%s.norm1", name); rb.ns1 = normsilu_register(ps, buf, cin, H * W);
    snprintf(buf, sizeof(buf), "%s.conv1", name); rb.conv1 = conv2d_register(ps, buf, cin, cout, 3, 1);
    snprintf(buf, sizeof(buf), "%s.norm2", name); rb.ns2 = normsilu_register(ps, buf, cout, H * W);
    snprintf(buf, sizeof(buf), "%s.conv2", name); rb.conv2 = conv2d_register(ps, buf, cout, cout, 3, 1);
    rb.has_skip = cin != cout;
    if (rb.has_skip) {
        snprintf(buf, sizeof(buf), "%s.skip", name); rb.skip = conv2d_register(ps, buf, cin, cout, 1, 1);
    }
    return rb;
}

static inline void resblock_alloc(ResBlock* rb, int B) {
    normsilu_alloc(&rb->ns1, B);
    normsilu_alloc(&rb->ns2, B);
    rb->h1 = dev_malloc_floats((size_t)B * rb->cout * rb->H * rb->W);
    rb->out = dev_malloc_floats((size_t)B * rb->cout * rb->H * rb->W);
    if (rb->has_skip) rb->skip_out = dev_malloc_floats((size_t)B * rb->cout * rb->H * rb->W);
}

static inline void resblock_free(ResBlock* rb) {
    normsilu_free(&rb->ns1); normsilu_free(&rb->ns2);
    dev_free(rb->h1); dev_free(rb->out); dev_free(rb->skip_out);
}

// temb_proj (B, cout) or NULL: the U-Net's projected time embedding, added after conv1
static inline void resblock_forward(const ParamStore* ps, ResBlock* rb, const float* x, int B, const float* temb_proj) {
    int H = rb->H, W = rb->W;
    size_t n = (size_t)B * rb->cout * H * W;
    rb->x = x;
    normsilu_forward(ps, &rb->ns1, x, B);
    conv2d_block_forward(ps, &rb->conv1, rb->h1, rb->ns1.act, B, H, W);
    if (temb_proj) broadcast_add_forward(rb->h1, temb_proj, B, rb->cout, H * W);
    normsilu_forward(ps, &rb->ns2, rb->h1, B);
    conv2d_block_forward(ps, &rb->conv2, rb->out, rb->ns2.act, B, H, W);
    if (rb->has_skip) {
        conv2d_block_forward(ps, &rb->skip, rb->skip_out, x, B, H, W);
        add_inplace(rb->out, rb->skip_out, n);
    } else {
        add_inplace(rb->out, x, n);
    }
}

// dout (B, cout, H, W) -> dx (B, cin, H, W) overwritten; dtemb_proj (B, cout) overwritten when the
// forward had a temb_proj. s1, s2: scratch of B * max(cin, cout) * H * W floats. dx must not alias
// dout, s1 or s2.
static inline void resblock_backward(const ParamStore* ps, const ResBlock* rb, float* dx, const float* dout,
                              int B, float* dtemb_proj, float* s1, float* s2) {
    int H = rb->H, W = rb->W;
    conv2d_block_backward(ps, &rb->conv2, s1, dout, rb->ns2.act, B, H, W);   // s1 = d act2
    normsilu_backward(ps, &rb->ns2, s2, s1, rb->h1, B);                         // s2 = d h1
    if (dtemb_proj) broadcast_add_backward(dtemb_proj, s2, B, rb->cout, H * W);
    conv2d_block_backward(ps, &rb->conv1, s1, s2, rb->ns1.act, B, H, W);     // s1 = d act1
    normsilu_backward(ps, &rb->ns1, dx, s1, rb->x, B);                          // dx = main path
    size_t n = (size_t)B * rb->cin * H * W;
    if (rb->has_skip) {
        conv2d_block_backward(ps, &rb->skip, s2, dout, rb->x, B, H, W);
        add_inplace(dx, s2, n);
    } else {
        add_inplace(dx, dout, n);
    }
}

// ----------------------------------------------------------------------------
// TResBlock: the U-Net's ResBlock, with Linear(tdim -> cout) of silu(embedding) added after conv1

typedef struct {
    ResBlock rb;
    Linear temb;
    float* tproj;     // (B, cout) the projected embedding
    float* d_tproj;   // (B, cout) its gradient
    float* d_emb;     // (B, tdim) this block's share of the gradient of silu(embedding)
} TResBlock;

static inline TResBlock tresblock_register(ParamStore* ps, const char* name, int cin, int cout, int R, int tdim) {
    TResBlock t;
    memset(&t, 0, sizeof(t));
    char buf[128];
    t.rb = resblock_register(ps, name, cin, cout, R, R);
    snprintf(buf, sizeof(buf), "%s.temb", name);
    t.temb = linear_register(ps, buf, tdim, cout);
    return t;
}

static inline void tresblock_alloc(TResBlock* t, int B) {
    resblock_alloc(&t->rb, B);
    t->tproj = dev_malloc_floats((size_t)B * t->rb.cout);
    t->d_tproj = dev_malloc_floats((size_t)B * t->rb.cout);
    t->d_emb = dev_malloc_floats((size_t)B * t->temb.in);
}

static inline void tresblock_free(TResBlock* t) {
    resblock_free(&t->rb);
    dev_free(t->tproj); dev_free(t->d_tproj); dev_free(t->d_emb);
}

// emb_silu (B, tdim): silu of the time (+ class) embedding, shared by every block
static inline void tresblock_forward(const ParamStore* ps, TResBlock* t, const float* x, const float* emb_silu, int B) {
    linear_block_forward(ps, &t->temb, t->tproj, emb_silu, B);
    resblock_forward(ps, &t->rb, x, B, t->tproj);
}

// as resblock_backward; this block's share of the embedding gradient is added to d_emb_silu (B, tdim)
static inline void tresblock_backward(const ParamStore* ps, const TResBlock* t, float* dx, const float* dout,
                               const float* emb_silu, float* d_emb_silu, int B, float* s1, float* s2) {
    resblock_backward(ps, &t->rb, dx, dout, B, t->d_tproj, s1, s2);
    linear_block_backward(ps, &t->temb, t->d_emb, t->d_tproj, emb_silu, B);
    add_inplace(d_emb_silu, t->d_emb, (size_t)B * t->temb.in);
}

// ----------------------------------------------------------------------------
// AttnBlock(C) at resolution R x R: out = x + proj(attention(qkv(GroupNorm(1)(x)))), heads of C/heads

typedef struct {
    int C, R, HW, heads;
    size_t norm_weight, norm_bias;
    Conv2d qkv, proj;
    const float* x;   // (B, C, HW) input of the last forward
    float* xn;        // (B, C, HW) GroupNorm(1) output
    float* mean;      // (B, 1)
    float* rstd;      // (B, 1)
    float* qkv_out;   // (B, 3C, HW)
    float* att;       // (B, heads, HW, HW) softmax probabilities
    float* attn;      // (B, C, HW) attention output before proj
    float* out;       // (B, C, HW)
} AttnBlock;

static inline AttnBlock attnblock_register(ParamStore* ps, const char* name, int C, int R, int heads) {
    AttnBlock a;
    memset(&a, 0, sizeof(a));
    char buf[128];
    a.C = C; a.R = R; a.HW = R * R; a.heads = heads;
    snprintf(buf, sizeof(buf), "%s.norm", name); a.norm_weight = groupnorm_register(ps, buf, C, &a.norm_bias);
    snprintf(buf, sizeof(buf), "%s.qkv", name); a.qkv = conv2d_register(ps, buf, C, 3 * C, 1, 1);
    snprintf(buf, sizeof(buf), "%s.proj", name); a.proj = conv2d_register(ps, buf, C, C, 1, 1);
    return a;
}

static inline void attnblock_alloc(AttnBlock* a, int B) {
    size_t n = (size_t)B * a->C * a->HW;
    a->xn = dev_malloc_floats(n);
    a->mean = dev_malloc_floats(B);
    a->rstd = dev_malloc_floats(B);
    a->qkv_out = dev_malloc_floats(3 * n);
    a->att = dev_malloc_floats((size_t)B * a->heads * a->HW * a->HW);
    a->attn = dev_malloc_floats(n);
    a->out = dev_malloc_floats(n);
}

static inline void attnblock_free(AttnBlock* a) {
    dev_free(a->xn); dev_free(a->mean); dev_free(a->rstd); dev_free(a->qkv_out);
    dev_free(a->att); dev_free(a->attn); dev_free(a->out);
}

static inline void attnblock_forward(const ParamStore* ps, AttnBlock* a, const float* x, int B) {
    int R = a->R;
    a->x = x;
    groupnorm_forward(a->xn, a->mean, a->rstd, x, ps->params + a->norm_weight, ps->params + a->norm_bias,
                      B, a->C, a->HW, 1);
    conv2d_block_forward(ps, &a->qkv, a->qkv_out, a->xn, B, R, R);
    attention_forward(a->attn, a->att, a->qkv_out, B, a->C, a->HW, a->heads);
    conv2d_block_forward(ps, &a->proj, a->out, a->attn, B, R, R);
    add_inplace(a->out, x, (size_t)B * a->C * a->HW);
}

// dx overwritten; s1 >= B*C*HW, s2 >= B*3C*HW floats, datt >= B*heads*HW*HW floats
static inline void attnblock_backward(const ParamStore* ps, const AttnBlock* a, float* dx, const float* dout, int B,
                               float* s1, float* s2, float* datt) {
    int R = a->R;
    conv2d_block_backward(ps, &a->proj, s1, dout, a->attn, B, R, R);                 // s1 = d attn
    attention_backward(s2, datt, s1, a->qkv_out, a->att, B, a->C, a->HW, a->heads); // s2 = d qkv
    conv2d_block_backward(ps, &a->qkv, s1, s2, a->xn, B, R, R);                      // s1 = d xn
    groupnorm_backward(dx, ps->grads + a->norm_weight, ps->grads + a->norm_bias, s1, a->x, a->mean, a->rstd,
                       ps->params + a->norm_weight, B, a->C, a->HW, 1);
    add_inplace(dx, dout, (size_t)B * a->C * a->HW);
}
