// dev/cuda/common.h — what every kernel lab in dev/cuda shares (the labs follow llm.c's dev/cuda):
//   lab_init            no CUDA device: one line saying so, exit 0; else device 0, the cuBLAS handle
//                       the shipped kernels use (TF32 off), and a line naming the GPU
//   lab_parse_args      [kernel_num|all] [--repeats N] [--only TEXT]; lab_selected / lab_timed apply them
//   make_random_*       host buffers from the counter-based RNG of ldmc/rng.cuh (same numbers every run)
//   to_device, from_device, device_alloc, device_floats, device_zero    checked copies and allocations
//   validate_host, validate_result    max |got - ref| against rtol * max |ref|, printed side by side;
//                       lab_print_failures after a shape's summary line, lab_finish for the closing line
//                       and the exit status (1 when any check failed)
//   benchmark_kernel    median time of one call in microseconds (CUDA events, L2 flushed before each call)
//   gbps, tflops        throughput of a timed call
// The checked-call macros cudaCheck / cublasCheck / mallocCheck (failures name file:line) are those of
// ldmc/common.cuh, which the ldmc headers a lab includes already define; launch_check() follows a
// kernel launch.
#pragma once

#include <float.h>
#include <string>
#include <vector>
#include <algorithm>
#include "ldmc/common.cuh"
#include "ldmc/rng.cuh"

#define launch_check() cudaCheck(cudaGetLastError())

// ----------------------------------------------------------------------------
// start-up and arguments

static cudaDeviceProp g_lab_prop;

// With no usable CUDA device the lab has nothing to run: it says so on one line and exits 0, so the
// labs can be built and smoke-run on a machine without a GPU.
static void lab_init(const char* lab) {
    setvbuf(stdout, NULL, _IOLBF, 0);  // a line at a time, also into a pipe
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    if (err != cudaSuccess || count == 0) {
        printf("%s: no CUDA device (%s): this lab validates and times CUDA kernels and needs a GPU; nothing to do.\n",
               lab, err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
        exit(EXIT_SUCCESS);
    }
    device_select(DEVICE_CUDA);
    cudaCheck(cudaGetDeviceProperties(&g_lab_prop, 0));
    printf("%s on %s (sm_%d%d, %d SMs, %.0f GiB), %d host threads for the CPU reference\n", lab, g_lab_prop.name,
           g_lab_prop.major, g_lab_prop.minor, g_lab_prop.multiProcessorCount,
           g_lab_prop.totalGlobalMem / 1073741824.0, cpu_thread_count());
}

typedef struct {
    int kernel_num;    // the version to time; 0: all of them
    int repeats;       // timed calls per measurement
    const char* only;  // only the shapes whose label contains this text (NULL: all)
} LabArgs;

// Usage: lab [kernel_num|all] [--repeats N] [--only TEXT]. Every version is validated on every
// shape whatever kernel_num is; kernel_num picks what is timed (next to the shipped version).
static LabArgs lab_parse_args(int argc, char** argv, int nversions, int shipped) {
    LabArgs a = {shipped, 20, NULL};
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--repeats") == 0 && i + 1 < argc) {
            a.repeats = atoi(argv[++i]);
            if (a.repeats < 1) {
                fprintf(stderr, "Error: --repeats must be >= 1 (got '%s').\n", argv[i]);
                exit(EXIT_FAILURE);
            }
        } else if (strcmp(argv[i], "--only") == 0 && i + 1 < argc) {
            a.only = argv[++i];
        } else if (strcmp(argv[i], "all") == 0) {
            a.kernel_num = 0;
        } else {
            char* end = NULL;
            long k = strtol(argv[i], &end, 10);
            if (end == argv[i] || *end != '\0' || k < 1 || k > nversions) {
                fprintf(stderr, "Error: unknown argument '%s'.\nUsage: %s [kernel_num 1..%d | all] [--repeats N] "
                                "[--only TEXT]\n  (default kernel_num %d, the shipped version)\n",
                        argv[i], argv[0], nversions, shipped);
                exit(EXIT_FAILURE);
            }
            a.kernel_num = (int)k;
        }
    }
    return a;
}

static int lab_selected(const LabArgs* a, const char* label) { return a->only == NULL || strstr(label, a->only); }

// the versions timed: kernel_num and the shipped one, or all of them
static int lab_timed(const LabArgs* a, int version, int shipped) {
    return a->kernel_num == 0 || version == a->kernel_num || version == shipped;
}

// ----------------------------------------------------------------------------
// random inputs and device buffers

// n normal numbers times `scale`: element i is rng_normal(seed, i)
static float* make_random_normal(size_t n, uint64_t seed, float scale) {
    float* p = (float*)mallocCheck(n * sizeof(float));
    rng_fill_normal_cpu(p, n, seed, 0);
    for (size_t i = 0; i < n; i++) p[i] *= scale;
    return p;
}

// n numbers uniform in [lo, hi)
static float* make_random_uniform(size_t n, uint64_t seed, float lo, float hi) {
    float* p = (float*)mallocCheck(n * sizeof(float));
    rng_fill_uniform_cpu(p, n, seed, 0);
    for (size_t i = 0; i < n; i++) p[i] = lo + (hi - lo) * p[i];
    return p;
}

template <class T>
static T* device_alloc(size_t n) {
    T* d = NULL;
    cudaCheck(cudaMalloc((void**)&d, (n > 0 ? n : 1) * sizeof(T)));
    return d;
}

static float* device_floats(size_t n) { return device_alloc<float>(n); }

template <class T>
static T* to_device(const T* host, size_t n) {
    T* d = device_alloc<T>(n);
    cudaCheck(cudaMemcpy(d, host, n * sizeof(T), cudaMemcpyHostToDevice));
    return d;
}

template <class T>
static T* from_device(const T* dev, size_t n) {
    T* h = (T*)mallocCheck((n > 0 ? n : 1) * sizeof(T));
    cudaCheck(cudaMemcpy(h, dev, n * sizeof(T), cudaMemcpyDeviceToHost));
    return h;
}

static void device_zero(void* dev, size_t bytes) { cudaCheck(cudaMemset(dev, 0, bytes)); }

// ----------------------------------------------------------------------------
// validation
// The error of a result is max |got - ref| / max |ref|: relative to the scale of the reference, so
// one tolerance serves tensors of any magnitude (the metric of ldmc/testing.h). A non-finite value
// always fails. A failure is described (worst element, got, ref) in a line that lab_print_failures()
// prints after the lab's summary line of the shape; the counters feed the closing summary.

static int g_lab_checks = 0;
static int g_lab_failures = 0;
static std::string g_lab_failure_lines;

static void lab_print_failures(void) {
    printf("%s", g_lab_failure_lines.c_str());
    g_lab_failure_lines.clear();
}

// returns the relative error (+inf for a non-finite value)
static double validate_host(const char* what, const float* got, const float* ref, size_t n, double rtol) {
    double max_err = 0.0, max_ref = 0.0;
    size_t worst = 0;
    int finite = 1;
    for (size_t i = 0; i < n; i++) {
        if (!isfinite(got[i])) { finite = 0; worst = i; break; }
        double e = fabs((double)got[i] - (double)ref[i]);
        if (e > max_err) { max_err = e; worst = i; }
        max_ref = fmax(max_ref, fabs((double)ref[i]));
    }
    double rel = finite ? max_err / (max_ref > 0.0 ? max_ref : 1.0) : INFINITY;
    g_lab_checks++;
    if (!(rel <= rtol)) {
        g_lab_failures++;
        char line[256];
        snprintf(line, sizeof(line), "    FAIL %s: error %.2e > tol %.1e (worst element %zu of %zu: got %.7g, ref %.7g; "
                 "max |ref| %.4g)\n", what, rel, rtol, worst, n, n ? got[worst] : 0.0f, n ? ref[worst] : 0.0f, max_ref);
        g_lab_failure_lines += line;
    }
    return rel;
}

static double validate_result(const char* what, const float* device_result, const float* ref, size_t n, double rtol) {
    float* got = from_device(device_result, n);
    double rel = validate_host(what, got, ref, n, rtol);
    free(got);
    return rel;
}

// the last line of every lab; the exit status says whether every check passed
static int lab_finish(void) {
    if (g_lab_failures == 0) {
        printf("validation: all %d checks within tolerance\n", g_lab_checks);
        return EXIT_SUCCESS;
    }
    printf("validation FAILED: %d of %d checks out of tolerance (see FAIL lines above)\n", g_lab_failures, g_lab_checks);
    return EXIT_FAILURE;
}

// ----------------------------------------------------------------------------
// timing

// Median time of one call of `launch` (a callable that launches the kernels) in microseconds, over
// `repeats` calls after one warm-up call. Before each call a memset larger than L2 evicts the data
// the previous call left there, so every call reads its inputs from HBM as it does in training.
template <class F>
static double benchmark_kernel(int repeats, F launch) {
    static void* flush = NULL;
    static size_t flush_bytes = 0;
    if (flush == NULL) {
        flush_bytes = (size_t)g_lab_prop.l2CacheSize * 2;
        cudaCheck(cudaMalloc(&flush, flush_bytes));
    }
    cudaEvent_t start, stop;
    cudaCheck(cudaEventCreate(&start));
    cudaCheck(cudaEventCreate(&stop));
    launch();  // warm-up: first-call allocations, module loading
    std::vector<double> us;
    for (int r = 0; r < repeats; r++) {
        cudaCheck(cudaMemsetAsync(flush, r & 0xff, flush_bytes));
        cudaCheck(cudaEventRecord(start));
        launch();
        cudaCheck(cudaEventRecord(stop));
        cudaCheck(cudaEventSynchronize(stop));
        float ms = 0.0f;
        cudaCheck(cudaEventElapsedTime(&ms, start, stop));
        us.push_back(ms * 1e3);
    }
    cudaCheck(cudaEventDestroy(start));
    cudaCheck(cudaEventDestroy(stop));
    std::sort(us.begin(), us.end());
    return repeats % 2 ? us[repeats / 2] : 0.5 * (us[repeats / 2 - 1] + us[repeats / 2]);
}

static double gbps(double bytes, double us) { return bytes / (us * 1e3); }
static double tflops(double flops, double us) { return flops / (us * 1e6); }
