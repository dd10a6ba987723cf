/*
CPU lab for ldmc/gemm.cuh and the CPU path of ldmc/conv2d.cuh (the llm.c dev/cuda pattern, for the host:
several versions of a kernel, a plain reference, validation, a timing loop). The versions kept in ldmc/
are the last ones here; the earlier ones show where they came from and what each step bought. The CUDA
convolution kernels have their own lab, dev/cuda/conv2d.cu.

CPU GEMM, C = A @ B (row-major, square sizes):
  version 1: naive triple loop
  version 2: i-k-j loop order, OpenMP over rows: the inner loop is a SAXPY that gcc vectorises
  version 3: gemm_cpu: packed panels, register-blocked micro-kernel, cache blocking (ldmc/gemm.cuh)
CPU convolution, the layer shapes of the models at training batch size:
  version 1: direct 7-deep loop (the reference, in double)
  version 2: explicit im2col into a buffer per image, then gemm_cpu per image; col2im for dx
  version 3: conv2d_forward_cpu / conv2d_backward_cpu: implicit im2col (packed straight from a padded
             copy of the input), the whole batch as one GEMM cut into column blocks, dweight from a
             channels-last copy, stride-1 dx as a convolution with flipped weights (ldmc/conv2d.cuh)

Build and run from the repository root (no GPU involved; nvcc only compiles the host code):
  make -C dev/cpu
  dev/cpu/conv2d gemm [reps]   # CPU GEMM versions, GFLOP/s
  dev/cpu/conv2d cpu [reps]    # CPU conv versions: validation on B=2, timings on the full batch
PyTorch on the same shapes and threads: python3 dev/refs_conv.py --bench --threads 2
(OMP_NUM_THREADS sets our thread count; compare at the same count, on a quiet machine: with another
process on the cores, every OpenMP barrier can cost a scheduler time slice.)

Measured on a 2-core AMD EPYC (AVX-512, Zen 4 class), 2 threads, quiet machine:
  GEMM 1024^3: v1 1.2, v2 51, v3 180 GFLOP/s (PyTorch/OpenBLAS matmul 197); 1 thread: v3 96-105,
  about the core's FMA peak (~110, a register-only FMA loop).
  conv table, forward + backward summed over all shapes: v2 401 ms, v3 283 ms, PyTorch 1.13
  (oneDNN direct convolution) 316 ms. v3 wins on the 32x32 layers with few channels and on odd
  channel counts; oneDNN wins by ~1.4x on 8x8/4x4 layers, where it skips the taps that fall on
  the zero padding (16% and 31% of the work) that an im2col GEMM multiplies through.
*/
#include "ldmc/common.cuh"
#include "ldmc/rng.cuh"
#include "ldmc/gemm.cuh"
#include "ldmc/conv2d.cuh"

// ----------------------------------------------------------------------------
// CPU GEMM versions (C (n, n) = A (n, n) @ B (n, n))

static void gemm_v1(int n, const float* A, const float* B, float* C) {
    #pragma omp parallel for
    for (int i = 0; i < n; i++) {
        for (int j = 0; j < n; j++) {
            float s = 0.0f;
            for (int k = 0; k < n; k++) s += A[(size_t)i * n + k] * B[(size_t)k * n + j];
            C[(size_t)i * n + j] = s;
        }
    }
}

static void gemm_v2(int n, const float* A, const float* B, float* C) {
    #pragma omp parallel for
    for (int i = 0; i < n; i++) {
        float* c = C + (size_t)i * n;
        for (int j = 0; j < n; j++) c[j] = 0.0f;
        for (int k = 0; k < n; k++) {
            float a = A[(size_t)i * n + k];
            const float* b = B + (size_t)k * n;
            for (int j = 0; j < n; j++) c[j] += a * b[j];
        }
    }
}

static void gemm_v3(int n, const float* A, const float* B, float* C) {
    gemm_cpu(0, 0, n, n, n, 1.0f, A, n, B, n, 0.0f, C, n);
}

// ----------------------------------------------------------------------------
// CPU convolution versions

// version 1: out = conv(x, w) + bias, straight from the definition, accumulated in double
static void conv_forward_v1(float* out, const float* x, const float* w, const float* bias,
                            int B, int Cin, int H, int W, int Cout, int K, int s) {
    int Ho = conv2d_out_size(H, K, s), Wo = conv2d_out_size(W, K, s), pad = K / 2;
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int co = 0; co < Cout; co++) {
            for (int oy = 0; oy < Ho; oy++) {
                for (int ox = 0; ox < Wo; ox++) {
                    double acc = bias[co];
                    for (int c = 0; c < Cin; c++) {
                        for (int ky = 0; ky < K; ky++) {
                            int iy = oy * s + ky - pad;
                            if (iy < 0 || iy >= H) continue;
                            for (int kx = 0; kx < K; kx++) {
                                int ix = ox * s + kx - pad;
                                if (ix < 0 || ix >= W) continue;
                                acc += (double)w[(((size_t)co * Cin + c) * K + ky) * K + kx] *
                                       x[(((size_t)b * Cin + c) * H + iy) * W + ix];
                            }
                        }
                    }
                    out[(((size_t)b * Cout + co) * Ho + oy) * Wo + ox] = (float)acc;
                }
            }
        }
    }
}

// version 1 backward: dx = (overwrite), dw/db += ; parallel over input channels (dx, dw rows do not collide)
static void conv_backward_v1(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                             int B, int Cin, int H, int W, int Cout, int K, int s) {
    int Ho = conv2d_out_size(H, K, s), Wo = conv2d_out_size(W, K, s), pad = K / 2;
    for (int co = 0; co < Cout; co++) {
        double acc = 0.0;
        for (int b = 0; b < B; b++) {
            for (int p = 0; p < Ho * Wo; p++) acc += dout[((size_t)b * Cout + co) * Ho * Wo + p];
        }
        db[co] += (float)acc;
    }
    #pragma omp parallel for
    for (int c = 0; c < Cin; c++) {
        double* gw = (double*)calloc((size_t)Cout * K * K, sizeof(double));
        for (int b = 0; b < B; b++) {
            for (int iy = 0; iy < H; iy++) {
                for (int ix = 0; ix < W; ix++) {
                    double g = 0.0;
                    for (int co = 0; co < Cout; co++) {
                        for (int ky = 0; ky < K; ky++) {
                            int ty = iy + pad - ky;
                            if (ty < 0 || ty % s != 0 || ty / s >= Ho) continue;
                            for (int kx = 0; kx < K; kx++) {
                                int tx = ix + pad - kx;
                                if (tx < 0 || tx % s != 0 || tx / s >= Wo) continue;
                                double d = dout[(((size_t)b * Cout + co) * Ho + ty / s) * Wo + tx / s];
                                g += d * w[(((size_t)co * Cin + c) * K + ky) * K + kx];
                                gw[((size_t)co * K + ky) * K + kx] += d * x[(((size_t)b * Cin + c) * H + iy) * W + ix];
                            }
                        }
                    }
                    dx[(((size_t)b * Cin + c) * H + iy) * W + ix] = (float)g;
                }
            }
        }
        for (int co = 0; co < Cout; co++) {
            for (int t = 0; t < K * K; t++) dw[((size_t)co * Cin + c) * K * K + t] += (float)gw[(size_t)co * K * K + t];
        }
        free(gw);
    }
}

// version 2: an explicit im2col matrix col (Cin*K*K, Ho*Wo) per image
static void im2col_v2(float* col, const float* x, int Cin, int H, int W, int K, int s, int Ho, int Wo) {
    int pad = K / 2;
    #pragma omp parallel for
    for (int tap = 0; tap < Cin * K * K; tap++) {
        int c = tap / (K * K), ky = (tap / K) % K, kx = tap % K;
        for (int oy = 0; oy < Ho; oy++) {
            for (int ox = 0; ox < Wo; ox++) {
                int iy = oy * s + ky - pad, ix = ox * s + kx - pad;
                col[((size_t)tap * Ho + oy) * Wo + ox] =
                    (iy >= 0 && iy < H && ix >= 0 && ix < W) ? x[((size_t)c * H + iy) * W + ix] : 0.0f;
            }
        }
    }
}

static void col2im_v2(float* dx, const float* col, int Cin, int H, int W, int K, int s, int Ho, int Wo) {
    int pad = K / 2;
    #pragma omp parallel for
    for (int c = 0; c < Cin; c++) {
        float* plane = dx + (size_t)c * H * W;
        memset(plane, 0, (size_t)H * W * sizeof(float));
        for (int ky = 0; ky < K; ky++) {
            for (int kx = 0; kx < K; kx++) {
                const float* src = col + (size_t)((c * K + ky) * K + kx) * Ho * Wo;
                for (int oy = 0; oy < Ho; oy++) {
                    for (int ox = 0; ox < Wo; ox++) {
                        int iy = oy * s + ky - pad, ix = ox * s + kx - pad;
                        if (iy >= 0 && iy < H && ix >= 0 && ix < W) plane[(size_t)iy * W + ix] += src[oy * Wo + ox];
                    }
                }
            }
        }
    }
}

static float* g_col_v2 = NULL;  // (Cin*K*K, Ho*Wo), grown on demand

static float* col_v2(size_t n) {
    static size_t have = 0;
    if (n > have) { free(g_col_v2); g_col_v2 = (float*)mallocCheck(n * sizeof(float)); have = n; }
    return g_col_v2;
}

static void conv_forward_v2(float* out, const float* x, const float* w, const float* bias,
                            int B, int Cin, int H, int W, int Cout, int K, int s) {
    int Ho = conv2d_out_size(H, K, s), Wo = conv2d_out_size(W, K, s), Kd = Cin * K * K, HWo = Ho * Wo;
    float* col = col_v2((size_t)Kd * HWo);
    for (int b = 0; b < B; b++) {
        float* o = out + (size_t)b * Cout * HWo;
        im2col_v2(col, x + (size_t)b * Cin * H * W, Cin, H, W, K, s, Ho, Wo);
        for (int co = 0; co < Cout; co++) {
            for (int p = 0; p < HWo; p++) o[(size_t)co * HWo + p] = bias[co];
        }
        gemm_cpu(0, 0, Cout, HWo, Kd, 1.0f, w, Kd, col, HWo, 1.0f, o, HWo);
    }
}

static void conv_backward_v2(float* dx, float* dw, float* db, const float* dout, const float* x, const float* w,
                             int B, int Cin, int H, int W, int Cout, int K, int s) {
    int Ho = conv2d_out_size(H, K, s), Wo = conv2d_out_size(W, K, s), Kd = Cin * K * K, HWo = Ho * Wo;
    float* col = col_v2((size_t)Kd * HWo);
    for (int b = 0; b < B; b++) {
        const float* d = dout + (size_t)b * Cout * HWo;
        for (int co = 0; co < Cout; co++) {
            float acc = 0.0f;
            for (int p = 0; p < HWo; p++) acc += d[(size_t)co * HWo + p];
            db[co] += acc;
        }
        im2col_v2(col, x + (size_t)b * Cin * H * W, Cin, H, W, K, s, Ho, Wo);
        gemm_cpu(0, 1, Cout, Kd, HWo, 1.0f, d, HWo, col, HWo, 1.0f, dw, Kd);      // dw += dout @ col^T
        gemm_cpu(1, 0, Kd, HWo, Cout, 1.0f, w, Kd, d, HWo, 0.0f, col, HWo);       // dcol = w^T @ dout
        col2im_v2(dx + (size_t)b * Cin * H * W, col, Cin, H, W, K, s, Ho, Wo);
    }
}

// ----------------------------------------------------------------------------
// helpers

typedef void (*ConvForwardFn)(float*, const float*, const float*, const float*, int, int, int, int, int, int, int);
typedef void (*ConvBackwardFn)(float*, float*, float*, const float*, const float*, const float*,
                               int, int, int, int, int, int, int);

static float* random_floats(size_t n, uint64_t seed, float scale) {
    float* p = (float*)mallocCheck(n * sizeof(float));
    rng_fill_normal_cpu(p, n, seed, 0);
    for (size_t i = 0; i < n; i++) p[i] *= scale;
    return p;
}

// max |a - b| / max |b|
static double rel_err(const float* a, const float* b, size_t n) {
    double e = 0.0, m = 0.0;
    for (size_t i = 0; i < n; i++) {
        e = fmax(e, fabs((double)a[i] - b[i]));
        m = fmax(m, fabs((double)b[i]));
    }
    return e / (m > 0 ? m : 1.0);
}

// The model's conv shapes (VAE tiny/small levels, a stride-2 downsample, a 1x1 skip, the U-Net's 4x4
// level). Keep in step with BENCH_SHAPES in dev/refs_conv.py.
static const int SHAPES[][7] = {  // B, Cin, H, W, Cout, K, stride
    {64, 16, 32, 32, 16, 3, 1}, {64, 32, 16, 16, 32, 3, 1}, {64, 64, 8, 8, 64, 3, 1},
    {64, 3, 32, 32, 16, 3, 1}, {64, 16, 32, 32, 3, 3, 1}, {64, 16, 32, 32, 16, 3, 2},
    {64, 32, 16, 16, 64, 1, 1}, {64, 64, 32, 32, 64, 3, 1}, {64, 128, 16, 16, 128, 3, 1},
    {64, 256, 8, 8, 256, 3, 1}, {128, 128, 4, 4, 128, 3, 1},
};
#define NSHAPES ((int)(sizeof(SHAPES) / sizeof(SHAPES[0])))

// ----------------------------------------------------------------------------
// modes

static void run_gemm(int reps) {
    printf("CPU GEMM, %d threads, best of %d (GFLOP/s)\n", cpu_thread_count(), reps);
    printf("   n  |   v1 naive |   v2 ikj   | v3 gemm_cpu | v3 err\n");
    int sizes[] = {128, 256, 512, 1024};
    for (int si = 0; si < 4; si++) {
        int n = sizes[si];
        float* A = random_floats((size_t)n * n, 1, 1.0f);
        float* B = random_floats((size_t)n * n, 2, 1.0f);
        float* C1 = (float*)mallocCheck((size_t)n * n * sizeof(float));
        float* C3 = (float*)mallocCheck((size_t)n * n * sizeof(float));
        double gf[3];
        void (*fns[3])(int, const float*, const float*, float*) = {gemm_v1, gemm_v2, gemm_v3};
        for (int v = 0; v < 3; v++) {
            int r = (v == 0 && n > 256) ? 1 : reps;  // the naive version is slow
            double best = 1e30;
            for (int i = 0; i < r + 1; i++) {
                double t = wall_seconds();
                fns[v](n, A, B, v == 2 ? C3 : C1);
                if (i > 0 || r == 1) best = fmin(best, wall_seconds() - t);
            }
            gf[v] = 2.0 * n * n * n / best / 1e9;
        }
        printf("%5d | %10.1f | %10.1f | %11.1f | %.1e\n", n, gf[0], gf[1], gf[2], rel_err(C3, C1, (size_t)n * n));
        free(A); free(B); free(C1); free(C3);
    }
}

static void run_cpu(int reps) {
    printf("CPU convolution, %d threads\n", cpu_thread_count());
    // validation of versions 2 and 3 against version 1, on 2 images of each shape
    printf("validation (B=2, max |err| / max |ref|):\n");
    ConvForwardFn fwd[2] = {conv_forward_v2, conv2d_forward_cpu};
    ConvBackwardFn bwd[2] = {conv_backward_v2, conv2d_backward_cpu};
    int all_ok = 1;
    for (int si = 0; si < NSHAPES; si++) {
        int B = 2, Cin = SHAPES[si][1], H = SHAPES[si][2], W = SHAPES[si][3], Cout = SHAPES[si][4];
        int K = SHAPES[si][5], s = SHAPES[si][6];
        int Ho = conv2d_out_size(H, K, s), Wo = conv2d_out_size(W, K, s);
        size_t nx = (size_t)B * Cin * H * W, nw = (size_t)Cout * Cin * K * K, no = (size_t)B * Cout * Ho * Wo;
        float* x = random_floats(nx, 1, 1.0f);
        float* w = random_floats(nw, 2, 1.0f / sqrtf((float)Cin * K * K));
        float* bias = random_floats(Cout, 3, 0.1f);
        float* dout = random_floats(no, 4, 1.0f);
        float* out_ref = (float*)mallocCheck(no * sizeof(float));
        float* dx_ref = (float*)mallocCheck(nx * sizeof(float));
        float* dw_ref = (float*)calloc(nw, sizeof(float));
        float* db_ref = (float*)calloc(Cout, sizeof(float));
        conv_forward_v1(out_ref, x, w, bias, B, Cin, H, W, Cout, K, s);
        conv_backward_v1(dx_ref, dw_ref, db_ref, dout, x, w, B, Cin, H, W, Cout, K, s);
        printf("  %3d->%3d %2dx%2d K%d s%d:", Cin, Cout, H, W, K, s);
        for (int v = 0; v < 2; v++) {
            float* out = (float*)mallocCheck(no * sizeof(float));
            float* dx = (float*)mallocCheck(nx * sizeof(float));
            float* dw = (float*)calloc(nw, sizeof(float));
            float* db = (float*)calloc(Cout, sizeof(float));
            fwd[v](out, x, w, bias, B, Cin, H, W, Cout, K, s);
            bwd[v](dx, dw, db, dout, x, w, B, Cin, H, W, Cout, K, s);
            double e = fmax(fmax(rel_err(out, out_ref, no), rel_err(dx, dx_ref, nx)),
                            fmax(rel_err(dw, dw_ref, nw), rel_err(db, db_ref, Cout)));
            all_ok &= e < 1e-5;
            printf("  v%d %.1e%s", v + 2, e, e < 1e-5 ? "" : " FAIL");
            free(out); free(dx); free(dw); free(db);
        }
        printf("\n");
        free(x); free(w); free(bias); free(dout); free(out_ref); free(dx_ref); free(dw_ref); free(db_ref);
    }
    printf("validation %s\n", all_ok ? "ok" : "FAILED");

    // timings on the full batch: forward, backward without dx (dweight + dbias), backward with dx
    printf("timings, best of %d (ms); GFLOP/s counts all K*K taps of one pass:\n", reps);
    double total[2] = {0.0, 0.0};
    for (int si = 0; si < NSHAPES; si++) {
        int B = SHAPES[si][0], Cin = SHAPES[si][1], H = SHAPES[si][2], W = SHAPES[si][3], Cout = SHAPES[si][4];
        int K = SHAPES[si][5], s = SHAPES[si][6];
        int Ho = conv2d_out_size(H, K, s), Wo = conv2d_out_size(W, K, s);
        size_t nx = (size_t)B * Cin * H * W, nw = (size_t)Cout * Cin * K * K, no = (size_t)B * Cout * Ho * Wo;
        float* x = random_floats(nx, 1, 1.0f);
        float* w = random_floats(nw, 2, 1.0f / sqrtf((float)Cin * K * K));
        float* bias = random_floats(Cout, 3, 0.1f);
        float* dout = random_floats(no, 4, 1.0f);
        float* out = (float*)mallocCheck(no * sizeof(float));
        float* dx = (float*)mallocCheck(nx * sizeof(float));
        float* dw = (float*)calloc(nw, sizeof(float));
        float* db = (float*)calloc(Cout, sizeof(float));
        double flops = 2.0 * B * Cout * Cin * K * K * Ho * Wo;
        printf("B%3d %3d->%3d %2dx%2d K%d s%d:", B, Cin, Cout, H, W, K, s);
        for (int v = 0; v < 2; v++) {
            double tf = 1e30, tw = 1e30, tb = 1e30;
            for (int r = 0; r <= reps; r++) {
                double t0 = wall_seconds();
                fwd[v](out, x, w, bias, B, Cin, H, W, Cout, K, s);
                double t1 = wall_seconds();
                if (v == 1) conv2d_backward_cpu(NULL, dw, db, dout, x, w, B, Cin, H, W, Cout, K, s);
                double t2 = wall_seconds();
                bwd[v](dx, dw, db, dout, x, w, B, Cin, H, W, Cout, K, s);
                double t3 = wall_seconds();
                if (r == 0) continue;  // warm-up
                tf = fmin(tf, t1 - t0); tw = fmin(tw, t2 - t1); tb = fmin(tb, t3 - t2);
            }
            total[v] += tf + tb;
            if (v == 0) {
                printf("  v2 fwd %6.2f bwd %6.2f |", tf * 1e3, tb * 1e3);
            } else {
                printf("  v3 fwd %6.2f (%3.0f GF/s) dw+db %6.2f (%3.0f) dx %6.2f (%3.0f)\n", tf * 1e3, flops / tf / 1e9,
                       tw * 1e3, flops / tw / 1e9, (tb - tw) * 1e3, flops / fmax(tb - tw, 1e-9) / 1e9);
            }
        }
        free(x); free(w); free(bias); free(dout); free(out); free(dx); free(dw); free(db);
    }
    printf("total fwd+bwd: v2 %.1f ms, v3 %.1f ms\n", total[0] * 1e3, total[1] * 1e3);
}

int main(int argc, char** argv) {
    setvbuf(stdout, NULL, _IOLBF, 0);  // a line at a time, also into a pipe
    const char* mode = argc > 1 ? argv[1] : "cpu";
    int reps = argc > 2 ? atoi(argv[2]) : 5;
    if (reps < 1) {
        fprintf(stderr, "Error: repetitions must be >= 1 (got '%s').\n", argv[2]);
        return EXIT_FAILURE;
    }
    if (strcmp(mode, "gemm") == 0) {
        run_gemm(reps);
    } else if (strcmp(mode, "cpu") == 0) {
        run_cpu(reps);
    } else {
        fprintf(stderr, "Error: unknown mode '%s'.\nUsage: %s gemm|cpu [repetitions]\n", mode, argv[0]);
        return EXIT_FAILURE;
    }
    return 0;
}
