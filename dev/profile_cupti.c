/*
dev/profile_cupti.c — a CUPTI injection library: every kernel's GPU time in a CUDA program, without
touching the program (no Nsight Systems needed; dev/profile_gpu.py builds it, runs a program with it
and groups the kernels by category).

CUDA loads the library named by CUDA_INJECTION64_PATH when the program initialises the driver and
calls its InitializeInjection(). That subscribes to CUPTI's concurrent-kernel activity records (GPU
start and end timestamps of each kernel, kept in buffers CUPTI fills asynchronously, so the program
runs at its own speed), adds each record's end - start to a table keyed by the kernel's name, and
at exit flushes the last buffers and writes the table to $LDMC_PROFILE_OUT:

    # kernels: <records> records, <dropped> dropped
    <launches>\t<total ns>\t<kernel name as CUPTI gives it (mangled)>

    nvcc -shared -Xcompiler -fPIC -O2 dev/profile_cupti.c -lcupti -o gpu/libprofile_cupti.so
*/
#include <cupti.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

// ----------------------------------------------------------------------------
// checks: CUPTI's message and where it failed

#define cuptiCheck(call) cupti_check((call), #call, __FILE__, __LINE__)

static void cupti_check(CUptiResult r, const char* what, const char* file, int line) {
    if (r == CUPTI_SUCCESS) return;
    const char* msg = "unknown";
    cuptiGetResultString(r, &msg);
    fprintf(stderr, "[profile_cupti] %s failed at %s:%d: %s\n"
                    "HINT: CUPTI must match the driver (CUDA_INJECTION64_PATH loads it into the program); "
                    "rebuild this library with the machine's nvcc.\n", what, file, line, msg);
    exit(EXIT_FAILURE);
}

// ----------------------------------------------------------------------------
// the table: kernel name -> launches and total GPU nanoseconds (open addressing, grown at half full)

typedef struct {
    char* name;
    uint64_t launches;
    uint64_t total_ns;
} KernelStat;

static KernelStat* g_table;
static size_t g_capacity;
static size_t g_used;
static uint64_t g_records, g_dropped;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static uint64_t hash_name(const char* s) {  // FNV-1a
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++) h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

static KernelStat* table_slot(KernelStat* table, size_t capacity, const char* name) {
    size_t i = hash_name(name) & (capacity - 1);
    while (table[i].name != NULL && strcmp(table[i].name, name) != 0) i = (i + 1) & (capacity - 1);
    return &table[i];
}

static void table_grow(void) {
    size_t capacity = g_capacity ? 2 * g_capacity : 1024;
    KernelStat* table = (KernelStat*)calloc(capacity, sizeof(KernelStat));
    if (table == NULL) { fprintf(stderr, "[profile_cupti] out of memory\n"); exit(EXIT_FAILURE); }
    for (size_t i = 0; i < g_capacity; i++)
        if (g_table[i].name != NULL) *table_slot(table, capacity, g_table[i].name) = g_table[i];
    free(g_table);
    g_table = table;
    g_capacity = capacity;
}

// caller holds g_lock
static void table_add(const char* name, uint64_t ns) {
    if (2 * (g_used + 1) > g_capacity) table_grow();
    KernelStat* s = table_slot(g_table, g_capacity, name);
    if (s->name == NULL) {
        s->name = strdup(name);
        g_used++;
    }
    s->launches++;
    s->total_ns += ns;
}

// ----------------------------------------------------------------------------
// CUPTI's buffers: handed out empty, given back full (from CUPTI's thread, or ours at the flush)

#define BUFFER_BYTES (8u << 20)

static void CUPTIAPI buffer_requested(uint8_t** buffer, size_t* size, size_t* max_records) {
    *buffer = (uint8_t*)aligned_alloc(8, BUFFER_BYTES);
    *size = *buffer ? BUFFER_BYTES : 0;
    *max_records = 0;  // as many as fit
}

static void CUPTIAPI buffer_completed(CUcontext ctx, uint32_t stream, uint8_t* buffer, size_t size, size_t valid) {
    CUpti_Activity* record = NULL;
    pthread_mutex_lock(&g_lock);
    while (cuptiActivityGetNextRecord(buffer, valid, &record) == CUPTI_SUCCESS) {
        if (record->kind != CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL) continue;
        const CUpti_ActivityKernel10* k = (const CUpti_ActivityKernel10*)record;
        table_add(k->name ? k->name : "(unnamed)", k->end > k->start ? k->end - k->start : 0);
        g_records++;
    }
    size_t dropped = 0;
    if (cuptiActivityGetNumDroppedRecords(ctx, stream, &dropped) == CUPTI_SUCCESS) g_dropped += dropped;
    pthread_mutex_unlock(&g_lock);
    free(buffer);
    (void)size;
}

// ----------------------------------------------------------------------------
// the end of the program: flush, write the table

static void write_table(void) {
    cuptiActivityFlushAll(CUPTI_ACTIVITY_FLAG_FLUSH_FORCED);
    const char* path = getenv("LDMC_PROFILE_OUT");
    FILE* f = path ? fopen(path, "w") : stderr;
    if (f == NULL) {
        fprintf(stderr, "[profile_cupti] cannot write %s\n", path);
        return;
    }
    pthread_mutex_lock(&g_lock);
    fprintf(f, "# kernels: %llu records, %llu dropped\n", (unsigned long long)g_records,
            (unsigned long long)g_dropped);
    for (size_t i = 0; i < g_capacity; i++)
        if (g_table[i].name != NULL)
            fprintf(f, "%llu\t%llu\t%s\n", (unsigned long long)g_table[i].launches,
                    (unsigned long long)g_table[i].total_ns, g_table[i].name);
    pthread_mutex_unlock(&g_lock);
    if (f != stderr) fclose(f);
}

// called by the CUDA driver when CUDA_INJECTION64_PATH names this library; non-zero means success
int InitializeInjection(void) {
    cuptiCheck(cuptiActivityRegisterCallbacks(buffer_requested, buffer_completed));
    cuptiCheck(cuptiActivityEnable(CUPTI_ACTIVITY_KIND_CONCURRENT_KERNEL));
    // registered after the CUDA runtime's own exit handler, so it runs before the runtime tears down
    atexit(write_table);
    return 1;
}
