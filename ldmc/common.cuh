// ldmc/common.cuh — the pieces every ldm.c program shares:
//   checked calls (cudaCheck, cublasCheck, fopenCheck, freadCheck, fwriteCheck, mallocCheck),
//   the device choice (--device auto|cpu|cuda) and device-agnostic memory helpers,
//   a wall-clock timer, and the training progress line (step, loss, images/s, ETA).
// Every program is built by nvcc and runs on the CUDA device when there is one and on the CPU
// otherwise; model code calls the dev_* memory helpers and layer dispatchers, never cudaMalloc
// or malloc directly, so the same code drives both devices.
#pragma once

#include <stdio.h>
#include <stdlib.h>
#include <stdint.h>
#include <string.h>
#include <math.h>
#include <time.h>
#include <errno.h>
#include <cuda_runtime.h>
#include <cublas_v2.h>
#ifdef _OPENMP
#include <omp.h>
#endif

// ----------------------------------------------------------------------------
// bad input ends the program through fail_exit(): exit(EXIT_FAILURE), unless a fuzz harness
// (dev/fuzz) set g_fail_hook to return to itself instead (it longjmps and never comes back here)

static void (*g_fail_hook)(void) = NULL;

__attribute__((noreturn)) static void fail_exit(void) {
    if (g_fail_hook) g_fail_hook();
    exit(EXIT_FAILURE);
}

// ----------------------------------------------------------------------------
// checked calls: each failure names the call site and exits non-zero

static inline void cuda_check(cudaError_t err, const char* file, int line) {
    if (err != cudaSuccess) {
        fprintf(stderr, "[CUDA ERROR] at %s:%d: %s\n", file, line, cudaGetErrorString(err));
        if (err == cudaErrorMemoryAllocation) {
            fprintf(stderr, "HINT: out of GPU memory; lower --batch-size.\n");
        }
        exit(EXIT_FAILURE);
    }
}
#define cudaCheck(err) (cuda_check((err), __FILE__, __LINE__))

static inline void cublas_check(cublasStatus_t status, const char* file, int line) {
    if (status != CUBLAS_STATUS_SUCCESS) {
        fprintf(stderr, "[cuBLAS ERROR] %d at %s:%d\n", (int)status, file, line);
        exit(EXIT_FAILURE);
    }
}
#define cublasCheck(status) (cublas_check((status), __FILE__, __LINE__))

static inline FILE* fopen_check(const char* path, const char* mode, const char* file, int line) {
    FILE* fp = fopen(path, mode);
    if (fp == NULL) {
        fprintf(stderr, "Error: cannot open '%s' (mode %s): %s\n  at %s:%d\n",
                path, mode, strerror(errno), file, line);
        exit(EXIT_FAILURE);
    }
    return fp;
}
#define fopenCheck(path, mode) fopen_check(path, mode, __FILE__, __LINE__)

static inline void fread_check(void* ptr, size_t size, size_t nmemb, FILE* fp, const char* file, int line) {
    size_t got = fread(ptr, size, nmemb, fp);
    if (got != nmemb) {
        fprintf(stderr, "Error: short read (%zu of %zu items of %zu bytes)%s at %s:%d\n",
                got, nmemb, size, feof(fp) ? ": unexpected end of file, the file is truncated" : "",
                file, line);
        exit(EXIT_FAILURE);
    }
}
#define freadCheck(ptr, size, nmemb, fp) fread_check(ptr, size, nmemb, fp, __FILE__, __LINE__)

static inline void fwrite_check(const void* ptr, size_t size, size_t nmemb, FILE* fp, const char* file, int line) {
    if (fwrite(ptr, size, nmemb, fp) != nmemb) {
        fprintf(stderr, "Error: write failed at %s:%d: %s\nHINT: is the disk full?\n",
                file, line, strerror(errno));
        exit(EXIT_FAILURE);
    }
}
#define fwriteCheck(ptr, size, nmemb, fp) fwrite_check(ptr, size, nmemb, fp, __FILE__, __LINE__)

static inline void* malloc_check(size_t size, const char* file, int line) {
    void* ptr = malloc(size);
    if (ptr == NULL && size > 0) {
        fprintf(stderr, "Error: malloc of %zu bytes failed at %s:%d\n", size, file, line);
        exit(EXIT_FAILURE);
    }
    return ptr;
}
#define mallocCheck(size) malloc_check(size, __FILE__, __LINE__)

static inline int ceil_div(int a, int b) { return (a + b - 1) / b; }

// ----------------------------------------------------------------------------
// the device: chosen once at start-up, then every dev_* helper and layer follows it

typedef enum { DEVICE_CPU = 0, DEVICE_CUDA = 1 } Device;
static Device g_device = DEVICE_CPU;
static cublasHandle_t g_cublas;
static int g_cuda_ordinal = 0;  // the GPU device_init takes (dist_init gives each rank of a node its own)

static inline int cpu_thread_count(void) {
#ifdef _OPENMP
    return omp_get_max_threads();
#else
    return 1;
#endif
}

// choose the device from "auto" | "cpu" | "cuda" and say which one was picked and why
static inline void device_select(Device d) {
    g_device = d;
    if (d == DEVICE_CUDA) {
        cudaCheck(cudaSetDevice(g_cuda_ordinal));
        cublasCheck(cublasCreate(&g_cublas));
        // TF32 tensor cores stay off: fp32 results must match the CPU reference
        cublasCheck(cublasSetMathMode(g_cublas, CUBLAS_DEFAULT_MATH));
    }
}

static inline Device device_init(const char* want) {
    int count = 0;
    cudaError_t err = cudaGetDeviceCount(&count);
    int have_cuda = (err == cudaSuccess && count > g_cuda_ordinal);
    if (strcmp(want, "cpu") == 0) {
        device_select(DEVICE_CPU);
        printf("device: cpu (asked for with --device cpu), %d OpenMP threads\n", cpu_thread_count());
    } else if (strcmp(want, "cuda") == 0 || strcmp(want, "auto") == 0) {
        if (have_cuda) {
            device_select(DEVICE_CUDA);
            cudaDeviceProp prop;
            cudaCheck(cudaGetDeviceProperties(&prop, g_cuda_ordinal));
            printf("device: cuda (%s, sm_%d%d, %.0f GiB)%s\n", prop.name, prop.major, prop.minor,
                   prop.totalGlobalMem / 1073741824.0,
                   strcmp(want, "auto") == 0 ? ", picked by --device auto" : "");
        } else if (strcmp(want, "cuda") == 0) {
            fprintf(stderr, "Error: --device cuda but no CUDA device is usable (%s).\n"
                            "HINT: run with --device cpu (or auto).\n",
                    err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
            exit(EXIT_FAILURE);
        } else {
            device_select(DEVICE_CPU);
            printf("device: cpu (--device auto found no CUDA device: %s), %d OpenMP threads\n",
                   err != cudaSuccess ? cudaGetErrorString(err) : "0 devices", cpu_thread_count());
        }
    } else {
        fprintf(stderr, "Error: --device must be auto, cpu or cuda (got '%s').\n", want);
        exit(EXIT_FAILURE);
    }
    return g_device;
}

// memory on the current device
static inline void* dev_malloc(size_t bytes) {
    void* p = NULL;
    if (g_device == DEVICE_CUDA) {
        cudaCheck(cudaMalloc(&p, bytes));
    } else {
        p = mallocCheck(bytes);
    }
    return p;
}
static float* dev_malloc_floats(size_t n) { return (float*)dev_malloc(n * sizeof(float)); }
static inline void dev_free(void* p) {
    if (p == NULL) return;
    if (g_device == DEVICE_CUDA) { cudaCheck(cudaFree(p)); } else { free(p); }
}
static inline void dev_zero(void* p, size_t bytes) {
    if (g_device == DEVICE_CUDA) { cudaCheck(cudaMemset(p, 0, bytes)); } else { memset(p, 0, bytes); }
}
static inline void dev_to_host(void* host_dst, const void* dev_src, size_t bytes) {
    if (g_device == DEVICE_CUDA) {
        cudaCheck(cudaMemcpy(host_dst, dev_src, bytes, cudaMemcpyDeviceToHost));
    } else {
        memcpy(host_dst, dev_src, bytes);
    }
}
static inline void host_to_dev(void* dev_dst, const void* host_src, size_t bytes) {
    if (g_device == DEVICE_CUDA) {
        cudaCheck(cudaMemcpy(dev_dst, host_src, bytes, cudaMemcpyHostToDevice));
    } else {
        memcpy(dev_dst, host_src, bytes);
    }
}
static inline void dev_copy(void* dst, const void* src, size_t bytes) {
    if (g_device == DEVICE_CUDA) {
        cudaCheck(cudaMemcpy(dst, src, bytes, cudaMemcpyDeviceToDevice));
    } else {
        memcpy(dst, src, bytes);
    }
}
static inline void dev_synchronize(void) {
    if (g_device == DEVICE_CUDA) { cudaCheck(cudaDeviceSynchronize()); }
}

// ----------------------------------------------------------------------------
// timing and progress

static inline double wall_seconds(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

static inline int compare_doubles(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

// the median of n values (sorts them in place)
static inline double median_of(double* v, int n) {
    qsort(v, n, sizeof(double), compare_doubles);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static inline void format_duration(double s, char* out, size_t n) {
    if (s < 0 || !isfinite(s)) { snprintf(out, n, "?"); return; }
    int t = (int)(s + 0.5);
    if (t >= 3600) snprintf(out, n, "%dh%02dm", t / 3600, (t / 60) % 60);
    else if (t >= 60) snprintf(out, n, "%dm%02ds", t / 60, t % 60);
    else snprintf(out, n, "%ds", t);
}

// one line per logged step: "step 120/300 | loss 0.0412 | 512.3 img/s | ETA 1m10s"
// `extra` (may be NULL) holds program-specific fields, e.g. "mse 0.031 | kl 12.5"
static inline void format_progress(char* out, size_t n, long step, long total_steps, float loss, const char* extra,
                            double images_per_s, double seconds_per_step) {
    char eta[32];
    format_duration((total_steps - step) * seconds_per_step, eta, sizeof(eta));
    snprintf(out, n, "step %*ld/%ld | loss %.5f%s%s | %.1f img/s | ETA %s",
             (int)log10((double)(total_steps > 0 ? total_steps : 1)) + 1, step, total_steps, loss,
             extra ? " | " : "", extra ? extra : "", images_per_s, eta);
}
