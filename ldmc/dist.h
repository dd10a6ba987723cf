// ldmc/dist.h — data-parallel training over several processes ("ranks"), each holding a full replica
// of the model and taking an equal slice of every global batch:
//   g_dist, dist_rank / dist_world / dist_is_main   this process among how many (rank 0 is the main one)
//   dist_init / dist_init_device / dist_finalize    joining the job (MPI, or a file rendezvous for
//                        NCCL), the rank's GPU and NCCL communicator, leaving the job
//   dist_allreduce_mean  averages a float buffer of the current device over the ranks (the gradients):
//                        one NCCL all-reduce on GPUs, MPI_Allreduce on the CPU
//   dist_allreduce_mean_host   the same for a few host floats (the losses)
//   dist_broadcast       rank 0's float buffer (current device) to every rank
//   dist_allgather_host  every rank's chunk of a host float buffer to every rank
//   dist_barrier         no rank passes before every rank has arrived
//   abort on error       after dist_init, an exit with a non-zero status (every "Error:" of every module
//                        ends in exit(EXIT_FAILURE), directly or through fail_exit) calls MPI_Abort, so
//                        one failing rank stops the whole job with its message instead of leaving the
//                        others waiting in a collective;
//                        dist_wait_for_abort is for failures every rank meets alike (rank 0 reports them)
// The MPI parts build with -DLDMC_MPI (mpi.h), the NCCL parts with -DLDMC_NCCL (nccl.h); the Makefile
// sets them when it finds MPI and NCCL. Without them, or when no launcher started the process, every
// call is the no-op of one process.
//
// How a process joins (dist_init):
//   - started by an MPI launcher (mpirun, mpiexec, srun --mpi=pmix|pmi2): MPI_Init; the ranks of one
//     node (MPI_COMM_TYPE_SHARED) take one GPU each, and rank 0 sends NCCL's unique id to the others
//   - else, with $LDMC_DIST_DIR set (clusters without MPI; GPUs and NCCL only): rank and size from
//     $LDMC_RANK, $LDMC_WORLD_SIZE, $LDMC_LOCAL_RANK or Slurm's $SLURM_PROCID, $SLURM_NTASKS,
//     $SLURM_LOCALID; rank 0 writes NCCL's unique id into that shared directory and the others read it
//   - else one process.
// The NCCL calls compile here but have not run on a GPU yet (no multi-GPU machine was at hand).
#pragma once

#include <unistd.h>
#include <limits.h>
#include "common.cuh"
#ifdef LDMC_MPI
#include <mpi.h>
#endif
#ifdef LDMC_NCCL
#include <nccl.h>
#endif

typedef struct {
    int rank, world;              // this process among all of the job
    int local_rank;               // among the processes on this node: picks the GPU
    int nodes;                    // 0: not known
    const char* via;              // how the job was joined
    int mpi;                      // between MPI_Init and MPI_Finalize
#ifdef LDMC_NCCL
    ncclComm_t nccl;              // after dist_init_device on GPUs with world > 1; else NULL
#endif
    float* staging;               // (staging_n) device copy of host buffers for NCCL without MPI
    size_t staging_n;
} Dist;

static Dist g_dist = {0, 1, 0, 1, "one process", 0};

static inline int dist_rank(void) { return g_dist.rank; }
static inline int dist_world(void) { return g_dist.world; }
static inline int dist_is_main(void) { return g_dist.rank == 0; }

// ----------------------------------------------------------------------------
// checked calls

#ifdef LDMC_MPI
static inline void mpi_check(int err, const char* file, int line) {
    if (err == MPI_SUCCESS) return;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, msg, &len);
    fprintf(stderr, "[MPI ERROR] at %s:%d: %.*s\n", file, line, len, msg);
    exit(EXIT_FAILURE);
}
#define mpiCheck(err) (mpi_check((err), __FILE__, __LINE__))
#endif

#ifdef LDMC_NCCL
static inline void nccl_check(ncclResult_t r, const char* file, int line) {
    if (r == ncclSuccess) return;
    fprintf(stderr, "[NCCL ERROR] at %s:%d: %s\nHINT: run with NCCL_DEBUG=INFO for NCCL's own account.\n", file,
            line, ncclGetErrorString(r));
    exit(EXIT_FAILURE);
}
#define ncclCheck(r) (nccl_check((r), __FILE__, __LINE__))
#endif

// ----------------------------------------------------------------------------
// the transports: MPI on host memory, NCCL on device memory (stream 0, where every kernel runs)

typedef enum {
    DIST_MEAN,    // buf (n): the mean over the ranks, on every rank
    DIST_BCAST,   // buf (n): rank 0's values on every rank
    DIST_GATHER,  // buf (world, n): rank r's chunk r on every rank
} DistOp;

#ifdef LDMC_MPI
#define DIST_MPI_PIECE ((size_t)1 << 30)  // MPI counts are int: big buffers go in pieces

static inline void dist_mpi(DistOp op, float* host, size_t n) {
    if (op == DIST_GATHER) {
        if (n > INT_MAX) { fprintf(stderr, "Error: dist_allgather_host: %zu floats per rank is over MPI's int count.\n", n); exit(EXIT_FAILURE); }
        mpiCheck(MPI_Allgather(MPI_IN_PLACE, 0, MPI_DATATYPE_NULL, host, (int)n, MPI_FLOAT, MPI_COMM_WORLD));
        return;
    }
    for (size_t off = 0; off < n; off += DIST_MPI_PIECE) {
        int c = (int)(n - off < DIST_MPI_PIECE ? n - off : DIST_MPI_PIECE);
        if (op == DIST_MEAN) mpiCheck(MPI_Allreduce(MPI_IN_PLACE, host + off, c, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD));
        else mpiCheck(MPI_Bcast(host + off, c, MPI_FLOAT, 0, MPI_COMM_WORLD));
    }
    if (op == DIST_MEAN) for (size_t i = 0; i < n; i++) host[i] /= (float)g_dist.world;
}
#endif

#ifdef LDMC_NCCL
static inline void dist_nccl(DistOp op, float* dev, size_t n) {
    switch (op) {
        case DIST_MEAN: ncclCheck(ncclAllReduce(dev, dev, n, ncclFloat, ncclAvg, g_dist.nccl, 0)); break;
        case DIST_BCAST: ncclCheck(ncclBroadcast(dev, dev, n, ncclFloat, 0, g_dist.nccl, 0)); break;
        case DIST_GATHER:  // in place: this rank's chunk already sits at its offset
            ncclCheck(ncclAllGather(dev + (size_t)g_dist.rank * n, dev, n, ncclFloat, g_dist.nccl, 0)); break;
    }
}

// a device buffer of at least n floats for staging host data (kept for the next call)
static inline float* dist_staging(size_t n) {
    if (n > g_dist.staging_n) {
        if (g_dist.staging) cudaCheck(cudaFree(g_dist.staging));
        cudaCheck(cudaMalloc(&g_dist.staging, n * sizeof(float)));
        g_dist.staging_n = n;
    }
    return g_dist.staging;
}
#endif

// an op on a host buffer: MPI when the job has it, else NCCL through a device copy
static inline void dist_host(DistOp op, float* host, size_t n) {
#ifdef LDMC_MPI
    if (g_dist.mpi) { dist_mpi(op, host, n); return; }
#endif
#ifdef LDMC_NCCL
    size_t total = op == DIST_GATHER ? n * g_dist.world : n;
    float* d = dist_staging(total);
    cudaCheck(cudaMemcpy(d, host, total * sizeof(float), cudaMemcpyHostToDevice));
    dist_nccl(op, d, n);
    cudaCheck(cudaMemcpy(host, d, total * sizeof(float), cudaMemcpyDeviceToHost));
#endif
}

// an op on a buffer of the current device: NCCL on GPUs, the host path on the CPU (and on GPUs
// of a build without NCCL, through a host copy)
static inline void dist_dev(DistOp op, float* buf, size_t n) {
#ifdef LDMC_NCCL
    if (g_dist.nccl) { dist_nccl(op, buf, n); return; }
#endif
    if (g_device == DEVICE_CPU) { dist_host(op, buf, n); return; }
    size_t total = op == DIST_GATHER ? n * g_dist.world : n;
    float* host = (float*)mallocCheck(total * sizeof(float));
    dev_to_host(host, buf, total * sizeof(float));
    dist_host(op, host, n);
    host_to_dev(buf, host, total * sizeof(float));
    free(host);
}

// ----------------------------------------------------------------------------
// the collectives the trainers call (no-ops for one process)

// buf (n) on the current device: the mean over the ranks. Gradients: the losses are means over
// each rank's equal slice of the batch, so the mean of the ranks' gradients is the gradient of the
// global batch's loss. The whole flat gradient goes as one bucket (ParamStore keeps it contiguous),
// after the backward pass.
static inline void dist_allreduce_mean(float* buf, size_t n) {
    if (g_dist.world > 1) dist_dev(DIST_MEAN, buf, n);
}

static inline void dist_allreduce_mean_host(float* host, size_t n) {
    if (g_dist.world > 1) dist_host(DIST_MEAN, host, n);
}

// buf (n) on the current device: rank 0's values on every rank
static inline void dist_broadcast(float* buf, size_t n) {
    if (g_dist.world > 1) dist_dev(DIST_BCAST, buf, n);
}

// host (world, chunk): rank r has filled chunk r; afterwards every rank has every chunk
static inline void dist_allgather_host(float* host, size_t chunk) {
    if (g_dist.world > 1) dist_host(DIST_GATHER, host, chunk);
}

static inline void dist_barrier(void) {
    if (g_dist.world == 1) return;
#ifdef LDMC_MPI
    if (g_dist.mpi) { mpiCheck(MPI_Barrier(MPI_COMM_WORLD)); return; }
#endif
    float token = 0.0f;
    dist_host(DIST_MEAN, &token, 1);
}

// a failure every rank meets alike (the global loss is not finite): rank 0 reports it and exits,
// which aborts the job; the other ranks wait here for that rather than race it with their own abort,
// which could kill rank 0 before its message is out
static inline void dist_wait_for_abort(void) {
#ifdef LDMC_MPI
    if (g_dist.mpi && !dist_is_main()) MPI_Barrier(MPI_COMM_WORLD);  // rank 0 never arrives
#endif
    exit(EXIT_FAILURE);
}

// ----------------------------------------------------------------------------
// joining and leaving the job

static inline void dist_finalize(void) {
#ifdef LDMC_NCCL
    if (g_dist.nccl) { ncclCheck(ncclCommDestroy(g_dist.nccl)); g_dist.nccl = NULL; }
    if (g_dist.staging) { cudaCheck(cudaFree(g_dist.staging)); g_dist.staging = NULL; g_dist.staging_n = 0; }
#endif
#ifdef LDMC_MPI
    if (g_dist.mpi) {
        // every rank waits here for rank 0's end-of-run outputs; sleeping, not spinning as MPI's own
        // waits do, so that on a CPU the waiting ranks leave their cores to rank 0
        MPI_Request all_here;
        int done = 0;
        mpiCheck(MPI_Ibarrier(MPI_COMM_WORLD, &all_here));
        for (;;) {
            mpiCheck(MPI_Test(&all_here, &done, MPI_STATUS_IGNORE));
            if (done) break;
            usleep(1000);
        }
        g_dist.mpi = 0;
        mpiCheck(MPI_Finalize());
    }
#endif
}

// registered with on_exit, which passes the exit status: a failure on this rank aborts every rank
// (MPI_Abort ends the whole job); a clean exit before the end of main (--help) leaves MPI properly
static inline void dist_on_exit(int status, void* arg) {
    (void)arg;
#ifdef LDMC_MPI
    if (!g_dist.mpi) return;
    fflush(stdout);
    fflush(stderr);
    if (status != 0) MPI_Abort(MPI_COMM_WORLD, status);
    g_dist.mpi = 0;
    MPI_Finalize();
#else
    (void)status;
#endif
}

static inline int env_int(const char* name, int fallback) {
    const char* s = getenv(name);
    if (s == NULL || s[0] == '\0') return fallback;
    char* end = NULL;
    long v = strtol(s, &end, 10);
    if (*end != '\0' || v < 0 || v > INT_MAX) {
        fprintf(stderr, "Error: $%s must be a non-negative integer (got '%s').\n", name, s);
        exit(EXIT_FAILURE);
    }
    return (int)v;
}

// the first of two environment variables that is set (ours, then Slurm's), else fallback
static inline int env_int2(const char* ours, const char* slurm, int fallback) {
    return env_int(ours, env_int(slurm, fallback));
}

// the number of ranks an MPI launcher started, from what it puts in the environment (0: none did)
static inline int dist_launcher_world(void) {
    int n = env_int("OMPI_COMM_WORLD_SIZE", 0);                                    // Open MPI's mpirun
    if (n == 0) n = env_int("PMI_SIZE", 0);                           // MPICH's mpiexec, srun --mpi=pmi2
    if (n == 0 && getenv("PMIX_RANK")) n = env_int("SLURM_STEP_NUM_TASKS", 1);     // srun --mpi=pmix
    return n;
}

#ifdef LDMC_MPI
static inline void dist_join_mpi(int* argc, char*** argv) {
    mpiCheck(MPI_Init(argc, argv));
    g_dist.mpi = 1;
    g_dist.via = "MPI";
    mpiCheck(MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN));  // errors come back to mpiCheck
    mpiCheck(MPI_Comm_rank(MPI_COMM_WORLD, &g_dist.rank));
    mpiCheck(MPI_Comm_size(MPI_COMM_WORLD, &g_dist.world));
    MPI_Comm node;  // the ranks that share this node's memory, and so its GPUs
    mpiCheck(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, g_dist.rank, MPI_INFO_NULL, &node));
    mpiCheck(MPI_Comm_rank(node, &g_dist.local_rank));
    mpiCheck(MPI_Comm_free(&node));
    int leader = g_dist.local_rank == 0;
    mpiCheck(MPI_Allreduce(&leader, &g_dist.nodes, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD));
}

// every rank must run with the same flags (argv[0] aside): ranks with other settings would train
// other models and average their gradients into nonsense
static inline void dist_check_same_args(int argc, char** argv) {
    uint64_t h = 1469598103934665603ULL;  // FNV-1a over the flags, '\0'-separated
    for (int i = 1; i < argc; i++) {
        for (const char* c = argv[i]; ; c++) { h = (h ^ (uint8_t)*c) * 1099511628211ULL; if (*c == '\0') break; }
    }
    uint64_t main_h = h;
    mpiCheck(MPI_Bcast(&main_h, 1, MPI_UINT64_T, 0, MPI_COMM_WORLD));
    if (h != main_h) {
        char flags[1024] = "";  // one fprintf, so that the line stays whole among the other ranks' output
        for (int i = 1, k = 0; i < argc && k < (int)sizeof(flags); i++) {
            k += snprintf(flags + k, sizeof(flags) - k, " %s", argv[i]);
        }
        fprintf(stderr, "Error: rank %d was started with other flags than rank 0:%s\nHINT: every rank of a job takes "
                        "the same flags.\n", g_dist.rank, flags);
        exit(EXIT_FAILURE);
    }
}
#endif

#ifdef LDMC_NCCL
// the file rendezvous: rank 0 writes NCCL's unique id to $LDMC_DIST_DIR/ldmc_nccl_id.<job> (a
// temporary name, then rename, so no reader sees half a file); the others poll for it. <job> is
// $LDMC_DIST_JOB, else Slurm's job and step id, so an old file of another launch is never read.
static inline void dist_nccl_id_from_file(ncclUniqueId* id, char* path, size_t n) {
    const char* job = getenv("LDMC_DIST_JOB");
    char slurm_job[64];
    if (job == NULL && getenv("SLURM_JOB_ID")) {
        snprintf(slurm_job, sizeof(slurm_job), "%s.%s", getenv("SLURM_JOB_ID"),
                 getenv("SLURM_STEP_ID") ? getenv("SLURM_STEP_ID") : "0");
        job = slurm_job;
    }
    if (job == NULL) {
        fprintf(stderr, "Error: the file rendezvous needs a name for this launch: set $LDMC_DIST_JOB (or run under Slurm).\n"
                        "HINT: LDMC_DIST_JOB=$(date +%%s) on every node, the same value for all ranks.\n");
        exit(EXIT_FAILURE);
    }
    snprintf(path, n, "%s/ldmc_nccl_id.%s", getenv("LDMC_DIST_DIR"), job);
    if (dist_is_main()) {
        ncclCheck(ncclGetUniqueId(id));
        char tmp[1100];
        snprintf(tmp, sizeof(tmp), "%s.tmp", path);
        FILE* f = fopenCheck(tmp, "wb");
        fwriteCheck(id, sizeof(*id), 1, f);
        if (fclose(f) != 0 || rename(tmp, path) != 0) {
            fprintf(stderr, "Error: cannot write '%s': %s\n", path, strerror(errno));
            exit(EXIT_FAILURE);
        }
        return;
    }
    int timeout = env_int("LDMC_DIST_TIMEOUT", 600);
    double t0 = wall_seconds();
    for (;;) {
        FILE* f = fopen(path, "rb");
        int got = f != NULL && fread(id, sizeof(*id), 1, f) == 1;
        if (f) fclose(f);
        if (got) return;
        if (wall_seconds() - t0 > timeout) {
            fprintf(stderr, "Error: rank %d waited %d s for rank 0's NCCL id in '%s'.\nHINT: is $LDMC_DIST_DIR the same "
                            "shared directory on every node, and did rank 0 start?\n", g_dist.rank, timeout, path);
            exit(EXIT_FAILURE);
        }
        usleep(100 * 1000);
    }
}
#endif

// the job from the environment, for the file rendezvous (no MPI)
static inline void dist_join_env(void) {
#ifndef LDMC_NCCL
    fprintf(stderr, "Error: $LDMC_DIST_DIR is set, but this build has no NCCL: the file rendezvous starts NCCL on GPUs.\n"
                    "HINT: launch with mpirun (or srun with PMI) on a build with MPI, or build where nccl.h is found.\n");
    exit(EXIT_FAILURE);
#endif
    g_dist.world = env_int2("LDMC_WORLD_SIZE", "SLURM_NTASKS", 0);
    g_dist.rank = env_int2("LDMC_RANK", "SLURM_PROCID", -1);
    g_dist.local_rank = env_int2("LDMC_LOCAL_RANK", "SLURM_LOCALID", -1);
    g_dist.nodes = 0;
    g_dist.via = "the file rendezvous";
    if (g_dist.world < 1 || g_dist.rank < 0 || g_dist.rank >= g_dist.world || g_dist.local_rank < 0) {
        fprintf(stderr, "Error: $LDMC_DIST_DIR is set, but rank %d, world size %d, local rank %d are not a valid rank "
                        "of a job.\nHINT: set $LDMC_RANK, $LDMC_WORLD_SIZE and $LDMC_LOCAL_RANK (or run under srun).\n",
                g_dist.rank, g_dist.world, g_dist.local_rank);
        exit(EXIT_FAILURE);
    }
}

// call first in main: joins the job, makes ranks > 0 quiet on stdout (their errors still go to
// stderr) and picks this rank's GPU (its index among the node's ranks, modulo the visible GPUs, so
// that one GPU per rank bound by the launcher works too)
static inline void dist_init(int* argc, char*** argv) {
    if (dist_launcher_world() > 1) {
#ifdef LDMC_MPI
        dist_join_mpi(argc, argv);
#else
        fprintf(stderr, "Error: started by an MPI launcher as %d ranks, but this build has no MPI.\nHINT: install MPI "
                        "(e.g. apt-get install libopenmpi-dev) and rebuild; `make` says what it found.\n",
                dist_launcher_world());
        exit(EXIT_FAILURE);
#endif
    } else if (getenv("LDMC_DIST_DIR")) {
        dist_join_env();
    }
    on_exit(dist_on_exit, NULL);
#ifdef LDMC_MPI
    if (g_dist.mpi) dist_check_same_args(*argc, *argv);
#endif
    if (g_dist.world == 1) return;
    int gpus = 0;
    if (cudaGetDeviceCount(&gpus) == cudaSuccess && gpus > 0) g_cuda_ordinal = g_dist.local_rank % gpus;
    if (!dist_is_main() && freopen("/dev/null", "w", stdout) == NULL) {
        fprintf(stderr, "Error: rank %d cannot send its stdout to /dev/null: %s\n", g_dist.rank, strerror(errno));
        exit(EXIT_FAILURE);
    }
    char nodes[64] = "";
    if (g_dist.nodes > 0) snprintf(nodes, sizeof(nodes), ", %d node%s", g_dist.nodes, g_dist.nodes > 1 ? "s" : "");
    printf("dist: %d ranks joined through %s%s; rank 0 prints progress, every rank prints its errors\n", g_dist.world,
           g_dist.via, nodes);
}

// call after device_init: checks that every rank got the same kind of device and, on GPUs, starts
// NCCL; says how gradients will be averaged
static inline void dist_init_device(void) {
    if (g_dist.world == 1) return;
#ifdef LDMC_MPI
    if (g_dist.mpi) {
        int dev[2] = {(int)g_device, -(int)g_device};  // min and -max in one MPI_MIN
        mpiCheck(MPI_Allreduce(MPI_IN_PLACE, dev, 2, MPI_INT, MPI_MIN, MPI_COMM_WORLD));
        if (dev[0] != -dev[1]) {
            if (!dist_is_main()) dist_wait_for_abort();
            fprintf(stderr, "Error: some ranks run on a GPU and some on the CPU.\nHINT: start as many ranks per node as "
                            "it has GPUs, or pass --device cpu.\n");
            exit(EXIT_FAILURE);
        }
    }
#endif
    if (g_device == DEVICE_CPU) {
        if (!g_dist.mpi) {
            fprintf(stderr, "Error: the file rendezvous ($LDMC_DIST_DIR) is for GPU ranks (NCCL); CPU ranks join through MPI.\n"
                            "HINT: launch with mpirun on a build with MPI.\n");
            exit(EXIT_FAILURE);
        }
        printf("dist: gradients averaged with MPI_Allreduce on the CPU\n");
        return;
    }
#ifdef LDMC_NCCL
    ncclUniqueId id;
    char path[1024] = "";
#ifdef LDMC_MPI
    if (g_dist.mpi) {
        if (dist_is_main()) ncclCheck(ncclGetUniqueId(&id));
        mpiCheck(MPI_Bcast(&id, sizeof(id), MPI_BYTE, 0, MPI_COMM_WORLD));
    }
#endif
    if (!g_dist.mpi) dist_nccl_id_from_file(&id, path, sizeof(path));
    ncclCheck(ncclCommInitRank(&g_dist.nccl, g_dist.world, id, g_dist.rank));
    if (path[0] != '\0' && dist_is_main()) unlink(path);  // every rank has read it: init is collective
    printf("dist: gradients averaged with NCCL all-reduce, one GPU per rank\n");
#else
    printf("dist: built without NCCL: gradients go through host memory and MPI_Allreduce (slow; build with NCCL)\n");
#endif
}
