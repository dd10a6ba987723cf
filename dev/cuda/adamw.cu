/*
Kernel lab: the optimizer step of ldmc/adamw.cuh + ldmc/optimizer.h over the flat parameter buffer:

  norm = ||grads||_2;  s = min(1, 1 / (norm + 1e-6))            (clip_grad_norm_ at max norm 1)
  g = grad * s;  p *= 1 - lr*wd;  m = b1 m + (1-b1) g;  v = b2 v + (1-b2) g^2
  p -= lr / (1 - b1^t) * m / (sqrt(v) / sqrt(1 - b2^t) + eps);  ema = d ema + (1-d) p   (U-Net only)

Versions (version 2 is ldmc/ itself, included read-only):
  1  naive: grid-stride partial sums of g^2 added into one double with atomicAdd (order, and so the last
     bits, vary from run to run), the norm copied to the host, then one thread per element for the update
  2  SHIPPED: grad_norm (deterministic two-stage reduction, result copied to the host), clip_scale on
     the host, adamw_update (one fused float4 pass over grads, params, m, v, ema) — the sequence of
     optimizer_step. The copy of the norm makes the host wait for the GPU once per step.
  3  device-side clipping, new in this lab: the same two-stage reduction, but its last stage computes the
     norm and the clip factor on the device and leaves them in device memory, where the fused update
     kernel reads the factor; no copy, no host wait between the reduction and the update, so the host
     can run ahead and queue the next step (the trainer reads the norm back only when it logs it).
     Bit-identical to version 2: the same sums in the same order, and the factor computed as clip_scale does.
Versions 1 and 3 have never run on a GPU (written where none was lent): expect to debug them on the
first run. They do pass make -C dev/cuda emu (the CPU emulator of dev/cuda/emu,
small shapes), which checks indexing, barriers and fragment layouts, not speed, races or alignment.

Validation: every version on every parameter count of the presets (dev/cuda/shapes.h: VAE tiny/small/fast
without EMA, U-Net tiny/small/base/fast with EMA, unconditional and with 10 classes), each with the
gradient norm above 1 (clipping active) and below 1, against a plain CPU reference in double: params,
m, v, ema with tolerance 1e-6, the norm with 1e-5 (error = max |got - ref| / max |ref|). The step is t = 10
with weight decay 0.01 (the trainers use 0; the decay path is checked anyway).
Timing: one whole step (norm, clip, update) per version; GB/s counts what it must move: grads twice, then
params, m, v (and ema) read and written.

Build and run (a GPU is needed to run; without one the lab says so and exits 0):
  make -C dev/cuda adamw
  dev/cuda/adamw               # validate all versions, time version 2 (shipped)
  dev/cuda/adamw 3             # ... and time version 3 next to it
*/
#include "common.h"
#include "shapes.h"
#include "ldmc/adamw.cuh"

typedef struct { float lr, beta1, beta2, eps, weight_decay, max_norm, ema_decay; int t; } StepConfig;

static const StepConfig STEP = {1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0f, 0.9999f, 10};

// ----------------------------------------------------------------------------
// CPU reference: one step in double, from the formulas above; returns the pre-clip norm

static double adamw_step_ref(const StepConfig& c, size_t n, const float* grads, float* p, float* m, float* v, float* ema) {
    double sq = 0.0;
    #pragma omp parallel for reduction(+ : sq)
    for (size_t i = 0; i < n; i++) sq += (double)grads[i] * grads[i];
    double norm = sqrt(sq);
    double s = fmin(1.0, c.max_norm / (norm + 1e-6));
    double bc1 = 1.0 - pow((double)c.beta1, c.t), bc2 = 1.0 - pow((double)c.beta2, c.t);
    double d = fmin((double)c.ema_decay, (1.0 + (c.t - 1)) / (10.0 + (c.t - 1)));  // ema_decay_at(decay, step t - 1)
    #pragma omp parallel for
    for (size_t i = 0; i < n; i++) {
        double g = grads[i] * s;
        double pi = p[i] * (1.0 - (double)c.lr * c.weight_decay);
        double mi = c.beta1 * (double)m[i] + (1.0 - c.beta1) * g;
        double vi = c.beta2 * (double)v[i] + (1.0 - c.beta2) * g * g;
        pi -= c.lr / bc1 * mi / (sqrt(vi) / sqrt(bc2) + c.eps);
        p[i] = (float)pi;
        m[i] = (float)mi;
        v[i] = (float)vi;
        if (ema) ema[i] = (float)(d * ema[i] + (1.0 - d) * pi);
    }
    return norm;
}

// ----------------------------------------------------------------------------
// the lab's state: one parameter buffer and its optimizer state on the device

typedef struct {
    size_t n;
    int with_ema;
    float *params, *grads, *m, *v, *ema;  // device
    double* norm_sq;                      // version 1: the atomic accumulator
    float* partial;                       // version 3: REDUCE_MAX_BLOCKS partial sums
    float* norm_scale;                    // version 3: [0] the norm, [1] the clip factor, on the device
    float norm;                           // the norm of the last step, as the host sees it
} OptLab;

// the step's constants for ldmc's AdamWStep; grad_scale is the clip factor
static AdamWStep step_constants(const StepConfig& c, float grad_scale, int with_ema) {
    float d = with_ema ? ema_decay_at(c.ema_decay, c.t - 1) : 0.0f;
    return adamw_step_constants(c.lr, c.beta1, c.beta2, c.eps, c.weight_decay, grad_scale, c.t, d);
}

// ---- version 1: naive

__global__ static void sum_squares_atomic_kernel(double* acc, const float* g, size_t n) {
    float s = 0.0f;
    for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) s += g[i] * g[i];
    atomicAdd(acc, (double)s);
}

__global__ static void adamw_naive_kernel(float* params, const float* grads, float* m, float* v, float* ema, size_t n,
                                          const AdamWStep s) {
    size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    adamw_element(params + i, m + i, v + i, ema ? ema + i : NULL, grads[i], s);
}

static void opt_v1_step(OptLab* L) {
    device_zero(L->norm_sq, sizeof(double));
    sum_squares_atomic_kernel<<<4 * g_lab_prop.multiProcessorCount, 256>>>(L->norm_sq, L->grads, L->n);
    launch_check();
    double sq;
    cudaCheck(cudaMemcpy(&sq, L->norm_sq, sizeof(double), cudaMemcpyDeviceToHost));
    L->norm = (float)sqrt(sq);
    AdamWStep s = step_constants(STEP, clip_scale(L->norm, STEP.max_norm), L->with_ema);
    adamw_naive_kernel<<<(unsigned)((L->n + 255) / 256), 256>>>(L->params, L->grads, L->m, L->v, L->ema, L->n, s);
    launch_check();
}

// ---- version 2: shipped, exactly the sequence of optimizer_step

static void opt_v2_step(OptLab* L) {
    L->norm = grad_norm(L->grads, L->n);
    const StepConfig& c = STEP;
    adamw_update(L->params, L->grads, L->m, L->v, L->ema, L->n, c.lr, c.beta1, c.beta2, c.eps, c.weight_decay,
                 clip_scale(L->norm, c.max_norm), c.t, L->with_ema ? ema_decay_at(c.ema_decay, c.t - 1) : 0.0f);
}

// ---- version 3: clipping on the device

// the reduction's last stage (one block): the partials summed in double in a fixed order, as
// reduce_final_kernel does, then the norm and clip_scale's factor, both left on the device
__global__ static void clip_factor_kernel(float* norm_scale, const float* partial, int count, float max_norm) {
    double acc = 0.0;
    for (int i = threadIdx.x; i < count; i += blockDim.x) acc += partial[i];
    acc = reduce_block_sum(acc);
    if (threadIdx.x == 0) {
        float norm = sqrtf((float)acc);
        float s = max_norm / (norm + 1e-6f);
        norm_scale[0] = norm;
        norm_scale[1] = s < 1.0f ? s : 1.0f;
    }
}

// the shipped fused update, with the clip factor read from device memory instead of a kernel argument
template <int V>
__global__ static void adamw_devclip_kernel(float* params, const float* grads, float* m, float* v, float* ema, size_t n,
                                            AdamWStep s, const float* norm_scale) {
    s.grad_scale = norm_scale[1];  // the same address in every thread: one broadcast load
    size_t stride = (size_t)gridDim.x * blockDim.x * V;
    for (size_t i = ((size_t)blockIdx.x * blockDim.x + threadIdx.x) * V; i < n; i += stride) {
        float rp[V], rg[V], rm[V], rv[V], re[V];
        load_vec<V>(rp, params + i);
        load_vec<V>(rg, grads + i);
        load_vec<V>(rm, m + i);
        load_vec<V>(rv, v + i);
        if (ema != NULL) load_vec<V>(re, ema + i);
        for (int k = 0; k < V; k++) adamw_element(rp + k, rm + k, rv + k, ema != NULL ? re + k : NULL, rg[k], s);
        store_vec<V>(params + i, rp);
        store_vec<V>(m + i, rm);
        store_vec<V>(v + i, rv);
        if (ema != NULL) store_vec<V>(ema + i, re);
    }
}

// the whole step without a host wait; L->norm is not updated (the norm stays on the device)
static void opt_v3_launch(OptLab* L) {
    const int block = 256;
    size_t blocks = (L->n + block - 1) / block;
    int grid = (int)(blocks < 1 ? 1 : (blocks > (size_t)REDUCE_MAX_BLOCKS ? REDUCE_MAX_BLOCKS : blocks));
    reduce_partial_kernel<<<grid, block>>>(L->partial, L->n, SquareTerm{L->grads});
    launch_check();
    clip_factor_kernel<<<1, 1024>>>(L->norm_scale, L->partial, grid, STEP.max_norm);
    launch_check();
    AdamWStep s = step_constants(STEP, 1.0f, L->with_ema);  // grad_scale comes from the device
    if (L->n % 4 == 0) {  // cudaMalloc'd buffers are 16-byte aligned
        adamw_devclip_kernel<4><<<grid_for(L->n / 4, block), block>>>(L->params, L->grads, L->m, L->v, L->ema, L->n, s,
                                                                      L->norm_scale);
    } else {
        adamw_devclip_kernel<1><<<grid_for(L->n, block), block>>>(L->params, L->grads, L->m, L->v, L->ema, L->n, s,
                                                                  L->norm_scale);
    }
    launch_check();
}

static void opt_v3_step(OptLab* L) {
    opt_v3_launch(L);
    float ns[2];
    cudaCheck(cudaMemcpy(ns, L->norm_scale, sizeof(ns), cudaMemcpyDeviceToHost));  // validation only
    L->norm = ns[0];
}

typedef struct {
    const char* name;
    void (*step)(OptLab*);  // one step; sets L->norm
    void (*timed)(OptLab*); // what is timed: the step as a trainer would issue it
} OptVersion;

static const OptVersion VERSIONS[] = {
    {"naive: atomic norm, host clip, scalar update", opt_v1_step, opt_v1_step},
    {"shipped: grad_norm + clip_scale + adamw_update", opt_v2_step, opt_v2_step},
    {"device-side clip, no host round trip", opt_v3_step, opt_v3_launch},
};
#define NVERSIONS ((int)(sizeof(VERSIONS) / sizeof(VERSIONS[0])))
#define SHIPPED 2

static const double TOL_STATE = 1e-6, TOL_NORM = 1e-5;

int main(int argc, char** argv) {
    LabArgs args = lab_parse_args(argc, argv, NVERSIONS, SHIPPED);
    lab_init("adamw lab");
    PresetShapes* shapes = preset_shapes();
    printf("versions:");
    for (int v = 1; v <= NVERSIONS; v++) printf("  %d %s", v, VERSIONS[v - 1].name);
    printf("\nvalidation: worst error over params/m/v/ema (tol %.0e) and the norm (tol %.0e) per version, with the\n"
           "gradient norm at 3 (clipped) and at 0.5 (not clipped)\n", TOL_STATE, TOL_NORM);
    std::vector<int> picked;
    for (int i = 0; i < shapes->nparams; i++) {
        if (lab_selected(&args, shapes->params[i].where)) picked.push_back(i);
    }
    std::vector<double> times(picked.size() * NVERSIONS);
    for (size_t si = 0; si < picked.size(); si++) {
        const ParamShape& ps = shapes->params[picked[si]];
        size_t n = ps.n;
        OptLab L = {};
        L.n = n;
        L.with_ema = ps.ema;
        float* hp = make_random_normal(n, 1, 0.05f);
        float* hm = make_random_normal(n, 3, 1e-3f);
        float* hv = make_random_uniform(n, 4, 0.0f, 1e-6f);
        float* he = ps.ema ? make_random_normal(n, 5, 0.05f) : NULL;
        L.params = device_floats(n);
        L.grads = device_floats(n);
        L.m = device_floats(n);
        L.v = device_floats(n);
        L.ema = ps.ema ? device_floats(n) : NULL;
        L.norm_sq = device_alloc<double>(1);
        L.partial = device_floats(REDUCE_MAX_BLOCKS);
        L.norm_scale = device_floats(2);
        printf("[%2zu/%zu] %-16s n %9zu%s |", si + 1, picked.size(), ps.where, n, ps.ema ? " +ema" : "     ");
        float* ref[4];
        for (int k = 0; k < 4; k++) ref[k] = (float*)mallocCheck(n * sizeof(float));
        const double targets[2] = {3.0, 0.5};  // gradient norms: clipped, not clipped
        std::vector<double> worst(NVERSIONS, 0.0);
        for (int ti = 0; ti < 2; ti++) {
            float* hg = make_random_normal(n, 2, (float)(targets[ti] / sqrt((double)n)));
            memcpy(ref[0], hp, n * sizeof(float));
            memcpy(ref[1], hm, n * sizeof(float));
            memcpy(ref[2], hv, n * sizeof(float));
            if (ps.ema) memcpy(ref[3], he, n * sizeof(float));
            float ref_norm = (float)adamw_step_ref(STEP, n, hg, ref[0], ref[1], ref[2], ps.ema ? ref[3] : NULL);
            cudaCheck(cudaMemcpy(L.grads, hg, n * sizeof(float), cudaMemcpyHostToDevice));
            for (int v = 1; v <= NVERSIONS; v++) {
                cudaCheck(cudaMemcpy(L.params, hp, n * sizeof(float), cudaMemcpyHostToDevice));
                cudaCheck(cudaMemcpy(L.m, hm, n * sizeof(float), cudaMemcpyHostToDevice));
                cudaCheck(cudaMemcpy(L.v, hv, n * sizeof(float), cudaMemcpyHostToDevice));
                if (ps.ema) cudaCheck(cudaMemcpy(L.ema, he, n * sizeof(float), cudaMemcpyHostToDevice));
                VERSIONS[v - 1].step(&L);
                cudaCheck(cudaDeviceSynchronize());
                char what[64];
                const char* names[4] = {"params", "m", "v", "ema"};
                float* got[4] = {L.params, L.m, L.v, L.ema};
                for (int k = 0; k < (ps.ema ? 4 : 3); k++) {
                    snprintf(what, sizeof(what), "v%d %s (norm %.1f)", v, names[k], targets[ti]);
                    worst[v - 1] = fmax(worst[v - 1], validate_result(what, got[k], ref[k], n, TOL_STATE));
                }
                snprintf(what, sizeof(what), "v%d norm (norm %.1f)", v, targets[ti]);
                worst[v - 1] = fmax(worst[v - 1], validate_host(what, &L.norm, &ref_norm, 1, TOL_NORM));
            }
            free(hg);
        }
        for (int v = 1; v <= NVERSIONS; v++) printf(" v%d %.1e", v, worst[v - 1]);
        printf("\n");
        lab_print_failures();
        for (int v = 1; v <= NVERSIONS; v++) {
            if (lab_timed(&args, v, SHIPPED)) {
                times[si * NVERSIONS + v - 1] = benchmark_kernel(args.repeats, [&] { VERSIONS[v - 1].timed(&L); });
            }
        }
        float* d[] = {L.params, L.grads, L.m, L.v, L.ema, L.partial, L.norm_scale};
        for (float* p : d) cudaCheck(cudaFree(p));
        cudaCheck(cudaFree(L.norm_sq));
        for (int k = 0; k < 4; k++) free(ref[k]);
        free(hp); free(hm); free(hv); free(he);
    }

    printf("\ntimings: one optimizer step, median of %d calls, L2 flushed; us and effective GB/s\n", args.repeats);
    printf("%-16s %-16s | %-15s | vs v%d\n", "parameters", "", "step", SHIPPED);
    for (size_t si = 0; si < picked.size(); si++) {
        const ParamShape& ps = shapes->params[picked[si]];
        double bytes = 4.0 * ps.n * (ps.ema ? 10 : 8);
        double base = times[si * NVERSIONS + SHIPPED - 1];
        for (int v = 1; v <= NVERSIONS; v++) {
            if (!lab_timed(&args, v, SHIPPED)) continue;
            double t = times[si * NVERSIONS + v - 1];
            printf("%-16s %9zu%s v%d | %8.1f %6.0f | %.2f\n", ps.where, ps.n, ps.ema ? " ema" : "    ", v, t, gbps(bytes, t),
                   base / t);
        }
    }
    free(shapes);
    return lab_finish();
}
