// ldmc/cpu_conv2d.h — the fast CPU convolution: conv2d_forward_cpu and conv2d_backward_cpu, with the
// semantics of conv2d_forward_ref / conv2d_backward_ref in ldmc/conv2d.cuh, which are the oracle the
// tests check this file against (tests/test_conv.h). What makes it fast:
//   - every conv is a GEMM on the building blocks of ldmc/cpu_gemm.h (packed panels, a SIMD
//     micro-kernel), with the im2col done inside the packing of the GEMM panels (implicit im2col:
//     no col buffer), from a zero-padded copy of the input;
//   - where the input's rows line up with the SIMD vectors (stride-1 layers whose width is a
//     multiple of the vector length; for dweight, K*Cin a multiple of NR), there is no B panel at
//     all: the micro-kernel loads its vectors straight from the padded image (the direct paths);
//   - the batch is one GEMM with N = B*Ho*Wo columns, cut into column blocks that the threads take
//     one at a time, so the 8x8 and 4x4 layers (tiny per-image GEMMs) are as efficient as the 32x32 ones;
//   - dweight packs from a channels-last copy of x, where the GEMM's inner index (positions) is the
//     slow one, so its panels are contiguous copies rather than transposes;
//   - for stride 1, dx is itself a convolution (of dout with the flipped, transposed weights) and
//     reuses the forward path; for stride 2 it is weight^T @ dout followed by col2im.
// Every output value is summed in an order fixed by the shape alone, so the results are the same
// bits on every run and for any number of threads (tests/test_conv.h checks 1, 2 and 3 threads).
// This file is the CPU section of ldmc/conv2d.cuh, which includes it after the shapes and the
// reference: include ldmc/conv2d.cuh, not this file.
#pragma once

#ifndef LDMC_CONV2D_CUH
#error "ldmc/cpu_conv2d.h is a section of ldmc/conv2d.cuh: include ldmc/conv2d.cuh instead"
#endif

// ----------------------------------------------------------------------------
// CPU: workspace
// Slot 0 holds packed panels, slot 1 a padded copy of the input, slot 2 the flipped weights of the
// stride-1 dx, which must survive the forward call that uses slots 0 and 1.

#define CONV2D_CPU_SLOTS 3
static float* g_conv2d_cpu_ws[CONV2D_CPU_SLOTS];
static size_t g_conv2d_cpu_ws_floats[CONV2D_CPU_SLOTS];

// a host buffer of at least `floats` floats, aligned to 64 bytes (packed panels are read as SIMD
// vectors); its contents do not survive the next call for the same slot
static inline float* conv2d_cpu_workspace(int slot, size_t floats) {
    if (floats > g_conv2d_cpu_ws_floats[slot]) {
        free(g_conv2d_cpu_ws[slot]);
        g_conv2d_cpu_ws[slot] = (float*)mallocCheck((floats + 16) * sizeof(float));
        g_conv2d_cpu_ws_floats[slot] = floats;
    }
    return (float*)(((uintptr_t)g_conv2d_cpu_ws[slot] + 63) & ~(uintptr_t)63);
}

// sub-buffer sizes are rounded to 16 floats so every sub-buffer stays 64-byte aligned
static inline size_t conv2d_round16(size_t n) { return (n + 15) & ~(size_t)15; }

static inline int conv2d_thread_id(void) {
#ifdef _OPENMP
    return omp_get_thread_num();
#else
    return 0;
#endif
}

// ----------------------------------------------------------------------------
// CPU: implicit im2col
// The im2col matrix is never formed: its entries are copied from the input straight into the
// packed GEMM panels. The input is first copied once with a zero border of `pad` pixels, so
// every copy is branch-free (the padding reads zeros) — an extra pass over x that costs about
// 1/(K*K) of the im2col it replaces.

// GEMM columns are output positions of the whole batch, n = (b*Ho + oy)*Wo + ox. A run is a
// stretch of consecutive columns inside one output row of one image: along a run, tap
// (c, ky, kx) of the im2col matrix reads one input row at a fixed stride.
typedef struct { int b, oy, ox, len; } ConvRun;

// cut columns [n0, n0 + n) into runs; `runs` needs room for n entries (runs are never empty)
static inline int conv2d_runs(ConvRun* runs, long n0, int n, int Ho, int Wo) {
    int count = 0;
    while (n > 0) {
        long img = n0 / ((long)Ho * Wo);
        int p = (int)(n0 - img * Ho * Wo);
        int ox = p % Wo;
        int len = Wo - ox < n ? Wo - ox : n;
        runs[count].b = (int)img;
        runs[count].oy = p / Wo;
        runs[count].ox = ox;
        runs[count].len = len;
        count++;
        n0 += len;
        n -= len;
    }
    return count;
}

// dst[t] = src[t * stride], t < len. The lengths that occur (image widths 32, 16, 8, 4, and
// channel counts) get fixed-size copies, which gcc turns into a few vector moves; a general
// memcpy call would cost more than the copy for runs this short.
static inline void conv2d_copy(float* __restrict__ dst, const float* __restrict__ src, int len, int stride) {
    if (stride == 1) {
        switch (len) {
            case 32: memcpy(dst, src, 32 * sizeof(float)); return;
            case 16: memcpy(dst, src, 16 * sizeof(float)); return;
            case 8:  memcpy(dst, src, 8 * sizeof(float)); return;
            case 4:  memcpy(dst, src, 4 * sizeof(float)); return;
            default: for (int t = 0; t < len; t++) dst[t] = src[t]; return;
        }
    }
    for (int t = 0; t < len; t++) dst[t] = src[t * stride];
}

// xp (B, C, H + 2*pad, W + 2*pad) = x (B, C, H, W) with a zero border
static inline void conv2d_pad_nchw(float* xp, const float* x, int B, int C, int H, int W, int pad) {
    int Hp = H + 2 * pad, Wp = W + 2 * pad;
    #pragma omp parallel for schedule(static)
    for (long plane = 0; plane < (long)B * C; plane++) {
        float* dst = xp + plane * Hp * Wp;
        const float* src = x + plane * H * W;
        memset(dst, 0, (size_t)pad * Wp * sizeof(float));
        for (int iy = 0; iy < H; iy++) {
            float* row = dst + (size_t)(iy + pad) * Wp;
            for (int i = 0; i < pad; i++) { row[i] = 0.0f; row[pad + W + i] = 0.0f; }
            memcpy(row + pad, src + (size_t)iy * W, (size_t)W * sizeof(float));
        }
        memset(dst + (size_t)(H + pad) * Wp, 0, (size_t)pad * Wp * sizeof(float));
    }
}

// xn (B, H + 2*pad, W + 2*pad, C) = x (B, C, H, W) with a zero border, channels last
static inline void conv2d_pad_nhwc(float* xn, const float* x, int B, int C, int H, int W, int pad) {
    int Hp = H + 2 * pad, Wp = W + 2 * pad;
    #pragma omp parallel for schedule(static)
    for (long row = 0; row < (long)B * Hp; row++) {
        long b = row / Hp;
        int iy = (int)(row - b * Hp) - pad;
        float* dst = xn + row * Wp * C;
        if (iy < 0 || iy >= H) {
            memset(dst, 0, (size_t)Wp * C * sizeof(float));
            continue;
        }
        memset(dst, 0, (size_t)pad * C * sizeof(float));
        memset(dst + (size_t)(pad + W) * C, 0, (size_t)pad * C * sizeof(float));
        // four source rows at a time, each written as 4 consecutive floats per pixel. Reading
        // many channels at once would stride by H*W floats (4 KiB at 32x32), which maps the
        // reads to one L1 set; four rows fit its ways. The output row (Wp*C floats) stays in L1.
        const float* src = x + ((size_t)b * C * H + iy) * W;
        size_t plane = (size_t)H * W;
        int c = 0;
        for (; c + 4 <= C; c += 4) {
            const float* s0 = src + c * plane;
            float* d = dst + (size_t)pad * C + c;
            for (int ix = 0; ix < W; ix++) {
                d[(size_t)ix * C + 0] = s0[ix];
                d[(size_t)ix * C + 1] = s0[plane + ix];
                d[(size_t)ix * C + 2] = s0[2 * plane + ix];
                d[(size_t)ix * C + 3] = s0[3 * plane + ix];
            }
        }
        for (; c < C; c++) {
            for (int ix = 0; ix < W; ix++) dst[(size_t)(ix + pad) * C + c] = src[c * plane + ix];
        }
    }
}

// Pack the B panel of the forward GEMM, col[pc : pc+kc, columns n0 : n0+nc], in NR-column strips
// (the layout of gemm_pack_b_strip), from the padded input xp (B, Cin, Hp, Wp).
static inline void conv2d_pack_col(float* Bp, const float* xp, int Cin, int Hp, int Wp, int K, int stride,
                            int Ho, int Wo, long n0, int nc, int pc, int kc) {
    ConvRun runs[GEMM_NR];
    long run_src[GEMM_NR];  // offset of each run's first input pixel for tap (0, 0, 0)
    for (int j = 0; j < nc; j += GEMM_NR) {
        int nr = nc - j < GEMM_NR ? nc - j : GEMM_NR;
        int nruns = conv2d_runs(runs, n0 + j, nr, Ho, Wo);
        for (int r = 0; r < nruns; r++) {
            run_src[r] = ((long)runs[r].b * Cin * Hp + (long)runs[r].oy * stride) * Wp + (long)runs[r].ox * stride;
        }
        float* strip = Bp + (size_t)j * kc;
        // tap pc + k = (c, ky, kx), stepped without divisions (they would cost more than the copies)
        int c = pc / (K * K), ky = (pc / K) % K, kx = pc % K;
        for (int k = 0; k < kc; k++) {
            const float* base = xp + ((size_t)c * Hp + ky) * Wp + kx;
            float* dst = strip + (size_t)k * GEMM_NR;
            for (int r = 0; r < nruns; r++) {
                conv2d_copy(dst, base + run_src[r], runs[r].len, stride);
                dst += runs[r].len;
            }
            for (int t = nr; t < GEMM_NR; t++) dst[t - nr] = 0.0f;
            if (++kx == K) { kx = 0; if (++ky == K) { ky = 0; c++; } }
        }
    }
}

// Pack all of op(A) (M, Kd) as the A operand for every KC-deep block: block pc starts at
// Ap + pc * Mpad and holds ceil(M/MR) strips of (kc, MR). Used for weights shared by all threads.
static inline void conv2d_pack_a_all(int transA, int M, int Kd, const float* A, int lda, float* Ap) {
    int m_strips = ceil_div(M, GEMM_MR);
    size_t Mpad = (size_t)m_strips * GEMM_MR;
    int k_blocks = ceil_div(Kd, GEMM_KC);
    #pragma omp parallel for collapse(2) schedule(static)
    for (int kb = 0; kb < k_blocks; kb++) {
        for (int s = 0; s < m_strips; s++) {
            int pc = kb * GEMM_KC, i = s * GEMM_MR;
            int kc = Kd - pc < GEMM_KC ? Kd - pc : GEMM_KC;
            gemm_pack_a_strip(transA, M - i < GEMM_MR ? M - i : GEMM_MR, kc, gemm_at(A, transA, lda, i, pc),
                              lda, Ap + (size_t)pc * Mpad + (size_t)i * kc);
        }
    }
}

// ----------------------------------------------------------------------------
// CPU: the direct path of stride-1 convolutions
// With stride 1, VL consecutive output positions that lie in one output row read, for each tap
// (c, ky, kx), VL consecutive pixels of one padded input row: each SIMD vector of row k of a B
// strip is already contiguous in the padded image, at a fixed offset from its first position's
// pixel. So instead of copying the strip into a packed panel (conv2d_pack_col: about as much
// time as the GEMM itself when Cout is small), the micro-kernel loads its B vectors from the
// image. It applies when no vector crosses a row: Wr, the width of the rows the runs follow, a
// multiple of VL (8 with AVX2, 16 with AVX-512; 1x1 convolutions read whole images as one row).

static inline int conv2d_direct_ok(int stride, int Wr) { return stride == 1 && Wr % GEMM_VL == 0; }

// tap_offset[t] for tap t = (c, ky, kx): where the tap's pixel is in the padded input (Cin, Hp, Wp),
// relative to the output position's (0, 0, 0) tap pixel; malloc'd, free with free
static inline int* conv2d_tap_offsets(int Cin, int K, int Hp, int Wp) {
    int* off = (int*)mallocCheck((size_t)Cin * K * K * sizeof(int));
    for (int c = 0; c < Cin; c++) {
        for (int ky = 0; ky < K; ky++) {
            for (int kx = 0; kx < K; kx++) off[(c * K + ky) * K + kx] = (c * Hp + ky) * Wp + kx;
        }
    }
    return off;
}

// Cb (M, nc) = Ap-block @ col[taps of tap_offset[0 : kc], columns n0 : n0 + nc] + beta * Cb, the
// same loop order as gemm_macro_kernel. image_size = Cin * Hp * Wp floats per padded image.
static inline void conv2d_direct_block(int M, int nc, int kc, const float* Ap, const float* xp, const int* tap_offset,
                                       int Hr, int Wr, long image_size, int Wp, long n0, float beta, float* Cb) {
    long HWr = (long)Hr * Wr;
    for (int j = 0; j < nc; j += GEMM_NR) {
        const float* first[GEMM_NV];  // tap (0, 0, 0) pixel of each vector's first position
        for (int v = 0; v < GEMM_NV; v++) {
            long n = n0 + j + v * GEMM_VL, img = n / HWr, p = n - img * HWr;
            first[v] = xp + img * image_size + (p / Wr) * Wp + p % Wr;
        }
        auto brow = [&first, tap_offset](int k, int v) { return first[v] + tap_offset[k]; };
        for (int i = 0; i < M; i += GEMM_MR) {
            gemm_tile_rows(M - i < GEMM_MR ? M - i : GEMM_MR, GEMM_NR, kc, Ap + (size_t)i * kc, brow, 1.0f, beta,
                           Cb + (size_t)i * nc + j, nc);
        }
    }
}

// ----------------------------------------------------------------------------
// CPU: forward

// columns per work item: enough to amortise packing, small enough that the B panel (KC x NCB)
// and the output block stay in L2
#define CONV2D_NCB ((256 / GEMM_NR) * GEMM_NR)

// out (B, Cout, Ho, Wo) = conv(x, weight) + bias; bias may be NULL (no bias)
static inline void conv2d_forward_cpu(float* out, const float* x, const float* weight, const float* bias,
                               int B, int Cin, int H, int W, int Cout, int K, int stride) {
    conv2d_check_args("conv2d_forward_cpu", B, Cin, H, W, Cout, K, stride);
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride);
    int Kd = Cin * K * K;
    long HWo = (long)Ho * Wo, N = (long)B * HWo;
    // the padded input; a 1x1 stride-1 conv reads x as is, and as an image of one row of H*W
    // pixels, so its runs span whole images instead of stopping at each row
    const float* xp = x;
    int Hp = H, Wp = W, Hr = Ho, Wr = Wo;
    if (K == 1 && stride == 1) {
        Hp = Hr = 1;
        Wp = Wr = H * W;
    } else if (K > 1) {
        Hp = H + 2 * (K / 2);
        Wp = W + 2 * (K / 2);
        float* pad_buf = conv2d_cpu_workspace(1, (size_t)B * Cin * Hp * Wp);
        conv2d_pad_nchw(pad_buf, x, B, Cin, H, W, K / 2);
        xp = pad_buf;
    }
    int nthreads = cpu_thread_count();
    size_t Mpad = (size_t)ceil_div(Cout, GEMM_MR) * GEMM_MR;
    int kc_max = Kd < GEMM_KC ? Kd : GEMM_KC;
    size_t per_thread = conv2d_round16((size_t)kc_max * CONV2D_NCB) + conv2d_round16((size_t)Cout * CONV2D_NCB);
    float* ws = conv2d_cpu_workspace(0, conv2d_round16(Mpad * Kd) + per_thread * nthreads);
    float* w_packed = ws;  // packed weights, shared
    conv2d_pack_a_all(0, Cout, Kd, weight, Kd, w_packed);

    int direct = conv2d_direct_ok(stride, Wr);
    int* tap_offset = direct ? conv2d_tap_offsets(Cin, K, Hp, Wp) : NULL;

    long n_blocks = (N + CONV2D_NCB - 1) / CONV2D_NCB;
    #pragma omp parallel for schedule(dynamic) num_threads(nthreads)
    for (long blk = 0; blk < n_blocks; blk++) {
        float* Bp = ws + conv2d_round16(Mpad * Kd) + per_thread * conv2d_thread_id();
        float* Cb = Bp + conv2d_round16((size_t)kc_max * CONV2D_NCB);  // (Cout, nc) block of outputs
        long n0 = blk * CONV2D_NCB;
        int nc = N - n0 < CONV2D_NCB ? (int)(N - n0) : CONV2D_NCB;
        for (int pc = 0; pc < Kd; pc += GEMM_KC) {
            int kc = Kd - pc < GEMM_KC ? Kd - pc : GEMM_KC;
            const float* Ap = w_packed + (size_t)pc * Mpad;
            float beta = pc == 0 ? 0.0f : 1.0f;
            if (direct) {
                conv2d_direct_block(Cout, nc, kc, Ap, xp, tap_offset + pc, Hr, Wr, (long)Cin * Hp * Wp, Wp, n0, beta, Cb);
            } else {
                conv2d_pack_col(Bp, xp, Cin, Hp, Wp, K, stride, Hr, Wr, n0, nc, pc, kc);
                gemm_macro_kernel(Cout, nc, kc, 1.0f, Ap, Bp, beta, Cb, nc);
            }
        }
        // columns -> NCHW, one stretch of consecutive positions of one image at a time
        for (long n = n0; n < n0 + nc;) {
            long img = n / HWo, p = n - img * HWo;
            int len = (int)(HWo - p < n0 + nc - n ? HWo - p : n0 + nc - n);
            for (int co = 0; co < Cout; co++) {
                const float* src = Cb + (size_t)co * nc + (n - n0);
                float* dst = out + ((size_t)img * Cout + co) * HWo + p;
                float bv = bias ? bias[co] : 0.0f;
                for (int t = 0; t < len; t++) dst[t] = src[t] + bv;
            }
            n += len;
        }
    }
    free(tap_offset);
}

// ----------------------------------------------------------------------------
// CPU: backward

// dbias (Cout) += sum over b, positions of dout (B, Cout, HWo)
static inline void conv2d_dbias_cpu(float* dbias, const float* dout, int B, int Cout, long HWo) {
    #pragma omp parallel for schedule(static)
    for (int co = 0; co < Cout; co++) {
        double sum = 0.0;  // double across images: a sum over up to B*HWo ~ 10^5 terms
        for (int b = 0; b < B; b++) {
            const float* d = dout + ((size_t)b * Cout + co) * HWo;
            // 16 interleaved partial sums: independent adds that gcc vectorises (one running sum
            // would be a chain of dependent adds, and gcc may not reorder float adds itself)
            float lane[16] = {0.0f};
            long p = 0;
            for (; p + 16 <= HWo; p += 16) {
                for (int l = 0; l < 16; l++) lane[l] += d[p + l];
            }
            for (; p < HWo; p++) lane[0] += d[p];
            float s = 0.0f;
            for (int l = 0; l < 16; l++) s += lane[l];
            sum += s;
        }
        dbias[co] += (float)sum;
    }
}

// dweight (Cout, Kd) += dout (Cout, N) @ col^T (N, Kd), the inner dimension running over the N
// output positions of the batch. The GEMM's k index is the position, so both operands must be
// packed position-major; in NCHW that is a transpose. Instead x is copied once to a padded
// channels-last layout xn (B, Hp, Wp, Cin) and the taps are ordered (ky, kx, c): then the taps of
// one position in a B strip are a few contiguous runs of xn (one per ky). dout (Cout per position, a
// fraction 1/(K*K*Cin/Cout) of the data) is transposed while packing A.
// The sum over positions is cut into a fixed number of parts, a function of the shape only (never
// of the thread count): threads take whole parts, each part is summed into its own partial
// dweight (in the (ky, kx, c) tap order), and the partials are added into dweight (in PyTorch's
// (c, ky, kx) order) in part order. So the rounding, and the result, is the same on every run and
// for any number of threads. Parts of about 2 KC-deep steps balance the threads; at most
// CONV2D_DW_MAX_PARTS of them, and at most CONV2D_DW_MAX_PARTIAL floats of partials, bound the memory.
#define CONV2D_DW_MAX_PARTS 64
#define CONV2D_DW_MAX_PARTIAL (1L << 22)

static inline int conv2d_dweight_parts(long N, int Cout, int Kd) {
    long parts = (N + 2L * GEMM_KC - 1) / (2L * GEMM_KC);
    long fit = CONV2D_DW_MAX_PARTIAL / ((long)Cout * Kd);
    if (parts > fit) parts = fit;
    if (parts > CONV2D_DW_MAX_PARTS) parts = CONV2D_DW_MAX_PARTS;
    return parts < 1 ? 1 : (int)parts;
}

// The direct path of dweight: with the taps in (ky, kx, c) order, the taps of one ky are K*Cin
// consecutive floats of one xn row, so when K*Cin is a multiple of NR, every NR-tap B row of a
// position is contiguous in xn and the micro-kernel loads it from there (no B panel, as in the
// forward's direct path; same sums in the same order). This holds for stride 2 as well.
static inline int conv2d_dweight_direct_ok(int Cin, int K) { return (K * Cin) % GEMM_NR == 0; }

// partial (Cout, Kd) (+)= Ap-strips @ xn rows for the kc positions of `runs` (one KC step of a part)
static inline void conv2d_dweight_direct_step(int Cout, int Kd, int kc, const float* Ap, const float* xn,
                                              const ConvRun* runs, int nruns, int Cin, int K, int Hp, int Wp,
                                              int stride, float beta, float* partial) {
    long pos_offset[GEMM_KC];  // where position k's tap (0, 0, 0) pixel is in xn
    int k = 0;
    for (int q = 0; q < nruns; q++) {
        long first = (((long)runs[q].b * Hp + (long)runs[q].oy * stride) * Wp + (long)runs[q].ox * stride) * Cin;
        for (int t = 0; t < runs[q].len; t++) pos_offset[k++] = first + (long)t * stride * Cin;
    }
    for (int j = 0; j < Kd; j += GEMM_NR) {
        long tap_offset = (long)(j / (K * Cin)) * Wp * Cin + j % (K * Cin);  // taps j.. of ky = j / (K*Cin)
        auto brow = [xn, &pos_offset, tap_offset](int k, int v) { return xn + pos_offset[k] + tap_offset + v * GEMM_VL; };
        for (int i = 0; i < Cout; i += GEMM_MR) {
            gemm_tile_rows(Cout - i < GEMM_MR ? Cout - i : GEMM_MR, GEMM_NR, kc, Ap + (size_t)i * kc, brow, 1.0f, beta,
                           partial + (size_t)i * Kd + j, Kd);
        }
    }
}

static inline void conv2d_dweight_cpu(float* dweight, const float* dout, const float* x,
                               int B, int Cin, int H, int W, int Cout, int K, int stride) {
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride), pad = K / 2;
    int Hp = H + 2 * pad, Wp = W + 2 * pad;
    int Kd = Cin * K * K;
    long HWo = (long)Ho * Wo, N = (long)B * HWo;
    float* xn = conv2d_cpu_workspace(1, (size_t)B * Hp * Wp * Cin);
    conv2d_pad_nhwc(xn, x, B, Cin, H, W, pad);
    int nthreads = cpu_thread_count();
    size_t Mpad = (size_t)ceil_div(Cout, GEMM_MR) * GEMM_MR;
    int nc_max = Kd < GEMM_NC ? ceil_div(Kd, GEMM_NR) * GEMM_NR : GEMM_NC;
    int parts = conv2d_dweight_parts(N, Cout, Kd);
    int direct = conv2d_dweight_direct_ok(Cin, K);
    // per thread: packed A (Mpad, KC), packed B (KC, nc_max); then per part: partial dweight (Cout, Kd)
    size_t b_off = conv2d_round16(Mpad * GEMM_KC);
    size_t per_thread = b_off + conv2d_round16((size_t)GEMM_KC * nc_max);
    size_t per_part = conv2d_round16((size_t)Cout * Kd);
    float* ws = conv2d_cpu_workspace(0, per_thread * nthreads + per_part * parts);
    float* partials = ws + per_thread * nthreads;

    #pragma omp parallel num_threads(nthreads)
    {
        float* Ap = ws + per_thread * conv2d_thread_id();
        float* Bp = Ap + b_off;
        ConvRun runs[GEMM_KC];
        // one B strip's taps as runs of consecutive floats in xn: source offset relative to a
        // position's first pixel, destination column in the strip, length
        int seg_src[GEMM_NR], seg_dst[GEMM_NR], seg_len[GEMM_NR];
        #pragma omp for schedule(dynamic)
        for (int part = 0; part < parts; part++) {
            float* partial = partials + per_part * part;
            long part_begin = N * part / parts, part_end = N * (part + 1) / parts;
            for (long pc = part_begin; pc < part_end; pc += GEMM_KC) {
                int kc = part_end - pc < GEMM_KC ? (int)(part_end - pc) : GEMM_KC;
                int nruns = conv2d_runs(runs, pc, kc, Ho, Wo);
                // A strips: Ap[k*MR + r] = dout[b][co = i + r][position k]
                for (int i = 0; i < Cout; i += GEMM_MR) {
                    float* strip = Ap + (size_t)i * kc;
                    for (int r = 0; r < GEMM_MR; r++) {
                        if (i + r >= Cout) {  // zero rows pad the last strip
                            for (int k = 0; k < kc; k++) strip[(size_t)k * GEMM_MR + r] = 0.0f;
                            continue;
                        }
                        int k = 0;
                        for (int q = 0; q < nruns; q++) {
                            const float* src = dout + ((size_t)runs[q].b * Cout + i + r) * HWo +
                                               (size_t)runs[q].oy * Wo + runs[q].ox;
                            for (int t = 0; t < runs[q].len; t++, k++) strip[(size_t)k * GEMM_MR + r] = src[t];
                        }
                    }
                }
                float beta = pc == part_begin ? 0.0f : 1.0f;  // a part's first step sets its partial
                if (direct) {
                    conv2d_dweight_direct_step(Cout, Kd, kc, Ap, xn, runs, nruns, Cin, K, Hp, Wp, stride, beta, partial);
                    continue;
                }
                for (int jc = 0; jc < Kd; jc += GEMM_NC) {
                    int nc = Kd - jc < GEMM_NC ? Kd - jc : GEMM_NC;
                    // B strips: Bp[k*NR + jj] = xn[b][oy*stride + ky][ox*stride + kx][c] for
                    // tap jc + j + jj = (ky*K + kx)*Cin + c and position k = (b, oy, ox)
                    for (int j = 0; j < nc; j += GEMM_NR) {
                        int nr = nc - j < GEMM_NR ? nc - j : GEMM_NR;
                        // taps of one ky, (kx, c), are K*Cin consecutive floats of one xn row
                        int nseg = 0;
                        for (int jj = 0; jj < nr;) {
                            int tap = jc + j + jj;
                            int ky = tap / (K * Cin), kxc = tap % (K * Cin);
                            int len = K * Cin - kxc < nr - jj ? K * Cin - kxc : nr - jj;
                            seg_src[nseg] = ky * Wp * Cin + kxc;
                            seg_dst[nseg] = jj;
                            seg_len[nseg] = len;
                            nseg++;
                            jj += len;
                        }
                        float* dst = Bp + (size_t)j * kc;
                        for (int q = 0; q < nruns; q++) {
                            const float* pos = xn + (((size_t)runs[q].b * Hp + runs[q].oy * stride) * Wp +
                                                     runs[q].ox * stride) * Cin;
                            for (int t = 0; t < runs[q].len; t++) {
                                for (int sgi = 0; sgi < nseg; sgi++) {
                                    conv2d_copy(dst + seg_dst[sgi], pos + seg_src[sgi], seg_len[sgi], 1);
                                }
                                for (int jj = nr; jj < GEMM_NR; jj++) dst[jj] = 0.0f;
                                dst += GEMM_NR;
                                pos += (size_t)stride * Cin;
                            }
                        }
                    }
                    gemm_macro_kernel(Cout, nc, kc, 1.0f, Ap, Bp, beta, partial + jc, Kd);
                }
            }
        }
        // after the implicit barrier of the omp for every partial is complete: add them up in part
        // order, reordering the taps from (ky, kx, c) to PyTorch's (c, ky, kx)
        #pragma omp for schedule(static)
        for (int co = 0; co < Cout; co++) {
            for (int tap = 0; tap < Kd; tap++) {
                int kk = tap / Cin, c = tap % Cin;
                float s = 0.0f;
                for (int part = 0; part < parts; part++) s += partials[per_part * part + (size_t)co * Kd + tap];
                dweight[((size_t)co * Cin + c) * K * K + kk] += s;
            }
        }
    }
}

// dx for stride 2: dcol (Kd, n) = weight^T @ dout over blocks of whole images (so no two threads
// write the same dx pixel), then col2im adds every tap's contribution into dx.
static inline void conv2d_dx_strided_cpu(float* dx, const float* dout, const float* weight,
                                  int B, int Cin, int H, int W, int Cout, int K, int stride) {
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride), pad = K / 2;
    int Kd = Cin * K * K;
    long HWo = (long)Ho * Wo;
    int nthreads = cpu_thread_count();
    // images per block: ~CONV2D_NCB columns, but at least one block per thread
    int g = HWo >= CONV2D_NCB ? 1 : (int)(CONV2D_NCB / HWo);
    int g_balance = ceil_div(B, nthreads);
    if (g > g_balance) g = g_balance;
    int n_blocks = ceil_div(B, g);
    long nc_max = (long)g * HWo;
    size_t nc_pad = (size_t)ceil_div((int)nc_max, GEMM_NR) * GEMM_NR;
    size_t Kdpad = (size_t)ceil_div(Kd, GEMM_MR) * GEMM_MR;
    int kc_max = Cout < GEMM_KC ? Cout : GEMM_KC;
    size_t per_thread = conv2d_round16((size_t)kc_max * nc_pad) + conv2d_round16((size_t)Kd * nc_max);
    float* ws = conv2d_cpu_workspace(0, conv2d_round16(Kdpad * Cout) + per_thread * nthreads);
    float* WTp = ws;  // packed weight^T (Kd, Cout), shared
    conv2d_pack_a_all(1, Kd, Cout, weight, Kd, WTp);

    #pragma omp parallel for schedule(dynamic) num_threads(nthreads)
    for (int blk = 0; blk < n_blocks; blk++) {
        float* Bp = ws + conv2d_round16(Kdpad * Cout) + per_thread * conv2d_thread_id();
        float* dcol = Bp + conv2d_round16((size_t)kc_max * nc_pad);  // (Kd, nc)
        int b0 = blk * g, nb = B - b0 < g ? B - b0 : g;
        int nc = (int)(nb * HWo);
        for (int pc = 0; pc < Cout; pc += GEMM_KC) {
            int kc = Cout - pc < GEMM_KC ? Cout - pc : GEMM_KC;
            // B strips: Bp[k*NR + t] = dout[b][co = pc + k][position], columns image after image
            for (int j = 0; j < nc; j += GEMM_NR) {
                int nr = nc - j < GEMM_NR ? nc - j : GEMM_NR;
                float* strip = Bp + (size_t)j * kc;
                for (int k = 0; k < kc; k++) {
                    for (int t = 0; t < GEMM_NR; t++) {
                        long n = j + t;
                        long img = n / HWo;
                        strip[(size_t)k * GEMM_NR + t] = t < nr ?
                            dout[((size_t)(b0 + img) * Cout + pc + k) * HWo + (n - img * HWo)] : 0.0f;
                    }
                }
            }
            gemm_macro_kernel(Kd, nc, kc, 1.0f, WTp + (size_t)pc * Kdpad, Bp, pc == 0 ? 0.0f : 1.0f, dcol, nc);
        }
        // col2im: dx[b][c][oy*stride + ky - pad][ox*stride + kx - pad] += dcol[(c, ky, kx)][b, oy, ox]
        for (int bi = 0; bi < nb; bi++) {
            for (int c = 0; c < Cin; c++) {
                float* plane = dx + ((size_t)(b0 + bi) * Cin + c) * H * W;
                memset(plane, 0, (size_t)H * W * sizeof(float));
                for (int ky = 0; ky < K; ky++) {
                    for (int kx = 0; kx < K; kx++) {
                        const float* src = dcol + (size_t)((c * K + ky) * K + kx) * nc + bi * HWo;
                        for (int oy = 0; oy < Ho; oy++) {
                            int iy = oy * stride + ky - pad;
                            if (iy < 0 || iy >= H) continue;
                            for (int ox = 0; ox < Wo; ox++) {
                                int ix = ox * stride + kx - pad;
                                if (ix >= 0 && ix < W) plane[(size_t)iy * W + ix] += src[oy * Wo + ox];
                            }
                        }
                    }
                }
            }
        }
    }
}

// dx (OVERWRITTEN; may be NULL: skipped), dweight and dbias ACCUMULATED (+=)
static inline void conv2d_backward_cpu(float* dx, float* dweight, float* dbias, const float* dout, const float* x,
                                const float* weight, int B, int Cin, int H, int W, int Cout, int K, int stride) {
    conv2d_check_args("conv2d_backward_cpu", B, Cin, H, W, Cout, K, stride);
    int Ho = conv2d_out_size(H, K, stride), Wo = conv2d_out_size(W, K, stride);
    conv2d_dbias_cpu(dbias, dout, B, Cout, (long)Ho * Wo);
    conv2d_dweight_cpu(dweight, dout, x, B, Cin, H, W, Cout, K, stride);
    if (dx == NULL) return;
    if (stride == 1) {
        // With stride 1 and pad K/2 the input gradient is a convolution of dout with the weights
        // transposed (Cin <-> Cout) and flipped in space:
        //   dx[ci][y][x] = sum_{co,ky,kx} w[co][ci][ky][kx] dout[co][y - ky + pad][x - kx + pad]
        //                = conv(dout, wf)[ci][y][x]  with wf[ci][co][ky][kx] = w[co][ci][K-1-ky][K-1-kx]
        // so it runs on the forward path, without a col2im pass.
        float* wf = conv2d_cpu_workspace(2, (size_t)Cout * Cin * K * K);
        #pragma omp parallel for schedule(static)
        for (int ci = 0; ci < Cin; ci++) {
            for (int co = 0; co < Cout; co++) {
                for (int t = 0; t < K * K; t++) {
                    wf[((size_t)ci * Cout + co) * K * K + t] = weight[((size_t)co * Cin + ci) * K * K + (K * K - 1 - t)];
                }
            }
        }
        conv2d_forward_cpu(dx, dout, wf, NULL, B, Cout, H, W, Cin, K, 1);
    } else {
        conv2d_dx_strided_cpu(dx, dout, weight, B, Cin, H, W, Cout, K, stride);
    }
}
