// ldmc/embedding.cuh — the small U-Net layers that condition and route activations:
//   timestep_embedding   sinusoidal embedding of integer timesteps (no parameters, forward only)
//   embedding            table lookup (the class embedding), backward scatter-adds into the table
//   broadcast_add        h (B, C, HW) += v (B, C): the ResBlock's time-embedding injection
//   concat_channels      out = cat(a, b) along channels: the U-Net's skip connections
// Each has a plain reference (*_ref: the loops of the definition), CUDA kernels with launchers
// (*_cuda) and a dispatcher that follows g_device. The reference is also the CPU path: these layers
// are copies and sums of a few values per element, memory-bound, with nothing for a blocked
// version to gain. In backward, gradients of inputs are overwritten, of the table accumulated.
#pragma once

#include "common.cuh"

// ----------------------------------------------------------------------------
// sinusoidal timestep embedding
// out[b, i] = cos(t_b f_i), out[b, half + i] = sin(t_b f_i), f_i = exp(-ln(10000) i / half), half = dim/2.
// The argument t f_i reaches 999 radians: in float32 it would carry an absolute error of ~6e-5, so
// frequency and argument are computed in double on both devices and only the result is rounded.

static inline void check_timestep_embedding_dim(int dim) {
    if (dim <= 0 || dim % 2 != 0) {
        fprintf(stderr, "Error: timestep embedding width must be a positive even number (got %d).\n"
                        "HINT: set the U-Net's time-embedding width (tdim) to an even value.\n", dim);
        exit(EXIT_FAILURE);
    }
}

__host__ __device__ static inline float timestep_embedding_value(int t, int i, int half) {
    int k = i < half ? i : i - half;
    double arg = (double)t * exp(-log(10000.0) * (double)k / (double)half);
    return (float)(i < half ? cos(arg) : sin(arg));
}

static inline void timestep_embedding_forward_ref(float* out, const int* t, int B, int dim) {
    // out (B, dim), t (B)
    int half = dim / 2;
    #pragma omp parallel for collapse(2)
    for (int b = 0; b < B; b++) {
        for (int i = 0; i < dim; i++) {
            out[b * dim + i] = timestep_embedding_value(t[b], i, half);
        }
    }
}

__global__ static void timestep_embedding_kernel(float* out, const int* t, int B, int dim) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * dim) return;
    out[idx] = timestep_embedding_value(t[idx / dim], idx % dim, dim / 2);
}

static inline void timestep_embedding_forward_cuda(float* out, const int* t, int B, int dim) {
    int block = 256;
    timestep_embedding_kernel<<<ceil_div(B * dim, block), block>>>(out, t, B, dim);
    cudaCheck(cudaGetLastError());
}

static inline void timestep_embedding_forward(float* out, const int* t, int B, int dim) {
    check_timestep_embedding_dim(dim);
    if (g_device == DEVICE_CUDA) {
        timestep_embedding_forward_cuda(out, t, B, dim);
    } else {
        timestep_embedding_forward_ref(out, t, B, dim);
    }
}

// ----------------------------------------------------------------------------
// embedding lookup: out[b, :] = table[ids[b], :]
// Several batch items share a row (every class appears many times in a batch, and the "no class"
// row very often), so the backward is a scatter-add with collisions. Atomics would make the sum
// order, and so the rounding, change from run to run; instead the CUDA kernel gives each (row, column)
// to one thread: the thread owning the first batch item with a given id sums that id's items in
// increasing b, the same order as the CPU loop, so both devices give the same bits every run.
// The table's row count is not passed: ids are class labels validated by the caller (the data
// loader checks labels, CFG dropout only writes the "no class" row).

static inline void embedding_forward_ref(float* out, const int* ids, const float* table, int B, int dim) {
    // out (B, dim), ids (B), table (rows, dim)
    #pragma omp parallel for
    for (int b = 0; b < B; b++) {
        memcpy(out + (size_t)b * dim, table + (size_t)ids[b] * dim, dim * sizeof(float));
    }
}

static inline void embedding_backward_ref(float* dtable, const float* dout, const int* ids, int B, int dim) {
    // dtable (rows, dim) accumulated, dout (B, dim); parallel over columns so no two threads
    // ever add into the same element
    #pragma omp parallel for
    for (int c = 0; c < dim; c++) {
        for (int b = 0; b < B; b++) {
            dtable[(size_t)ids[b] * dim + c] += dout[(size_t)b * dim + c];
        }
    }
}

__global__ static void embedding_forward_kernel(float* out, const int* ids, const float* table, int B, int dim) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * dim) return;
    int b = idx / dim, c = idx % dim;
    out[idx] = table[(size_t)ids[b] * dim + c];
}

// one thread per (b, c): only the first b carrying its id does the work (see above).
// O(B^2) comparisons per column, negligible for batch sizes in the hundreds.
__global__ static void embedding_backward_kernel(float* dtable, const float* dout, const int* ids, int B, int dim) {
    int idx = blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= B * dim) return;
    int b = idx / dim, c = idx % dim;
    int id = ids[b];
    for (int p = 0; p < b; p++) {
        if (ids[p] == id) return;  // an earlier item owns this row
    }
    float sum = dtable[(size_t)id * dim + c];
    for (int q = b; q < B; q++) {
        if (ids[q] == id) sum += dout[(size_t)q * dim + c];
    }
    dtable[(size_t)id * dim + c] = sum;
}

static inline void embedding_forward_cuda(float* out, const int* ids, const float* table, int B, int dim) {
    int block = 256;
    embedding_forward_kernel<<<ceil_div(B * dim, block), block>>>(out, ids, table, B, dim);
    cudaCheck(cudaGetLastError());
}

static inline void embedding_backward_cuda(float* dtable, const float* dout, const int* ids, int B, int dim) {
    int block = 256;
    embedding_backward_kernel<<<ceil_div(B * dim, block), block>>>(dtable, dout, ids, B, dim);
    cudaCheck(cudaGetLastError());
}

static inline void embedding_forward(float* out, const int* ids, const float* table, int B, int dim) {
    if (g_device == DEVICE_CUDA) {
        embedding_forward_cuda(out, ids, table, B, dim);
    } else {
        embedding_forward_ref(out, ids, table, B, dim);
    }
}

static inline void embedding_backward(float* dtable, const float* dout, const int* ids, int B, int dim) {
    if (g_device == DEVICE_CUDA) {
        embedding_backward_cuda(dtable, dout, ids, B, dim);
    } else {
        embedding_backward_ref(dtable, dout, ids, B, dim);
    }
}

// ----------------------------------------------------------------------------
// per-channel broadcast add: h[b, c, :] += v[b, c]; backward dv[b, c] = sum over HW of dh[b, c, :]

static inline void broadcast_add_forward_ref(float* h, const float* v, int B, int C, int HW) {
    // h (B, C, HW) in place, v (B, C)
    #pragma omp parallel for
    for (int bc = 0; bc < B * C; bc++) {
        float* row = h + (size_t)bc * HW;
        for (int i = 0; i < HW; i++) row[i] += v[bc];
    }
}

static inline void broadcast_add_backward_ref(float* dv, const float* dh, int B, int C, int HW) {
    // dv (B, C) overwritten, dh (B, C, HW)
    #pragma omp parallel for
    for (int bc = 0; bc < B * C; bc++) {
        const float* row = dh + (size_t)bc * HW;
        float sum = 0.0f;
        for (int i = 0; i < HW; i++) sum += row[i];
        dv[bc] = sum;
    }
}

__global__ static void broadcast_add_forward_kernel(float* h, const float* v, int B, int C, int HW) {
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * C * HW) return;
    h[idx] += v[idx / HW];
}

// one warp per (b, c) row: lanes stride over the row (coalesced), then a shuffle reduction
__global__ static void broadcast_add_backward_kernel(float* dv, const float* dh, int B, int C, int HW) {
    int row = (blockIdx.x * blockDim.x + threadIdx.x) / 32;
    int lane = threadIdx.x % 32;
    if (row >= B * C) return;
    const float* r = dh + (size_t)row * HW;
    float sum = 0.0f;
    for (int i = lane; i < HW; i += 32) sum += r[i];
    for (int offset = 16; offset > 0; offset /= 2) sum += __shfl_xor_sync(0xffffffff, sum, offset);
    if (lane == 0) dv[row] = sum;
}

static inline void broadcast_add_forward_cuda(float* h, const float* v, int B, int C, int HW) {
    int block = 256;
    size_t n = (size_t)B * C * HW;
    broadcast_add_forward_kernel<<<(unsigned)((n + block - 1) / block), block>>>(h, v, B, C, HW);
    cudaCheck(cudaGetLastError());
}

static inline void broadcast_add_backward_cuda(float* dv, const float* dh, int B, int C, int HW) {
    int block = 256;  // 8 warps = 8 rows per block
    broadcast_add_backward_kernel<<<ceil_div(B * C * 32, block), block>>>(dv, dh, B, C, HW);
    cudaCheck(cudaGetLastError());
}

static inline void broadcast_add_forward(float* h, const float* v, int B, int C, int HW) {
    if (g_device == DEVICE_CUDA) {
        broadcast_add_forward_cuda(h, v, B, C, HW);
    } else {
        broadcast_add_forward_ref(h, v, B, C, HW);
    }
}

static inline void broadcast_add_backward(float* dv, const float* dh, int B, int C, int HW) {
    if (g_device == DEVICE_CUDA) {
        broadcast_add_backward_cuda(dv, dh, B, C, HW);
    } else {
        broadcast_add_backward_ref(dv, dh, B, C, HW);
    }
}

// ----------------------------------------------------------------------------
// channel concat: out[b] = [a[b]; b[b]] (a's Ca channels first); backward splits dout back.
// In NCHW each batch item of a and b is one contiguous block, so this is two copies per item.

static inline void concat_channels_forward_ref(float* out, const float* a, const float* b, int B, int Ca, int Cb, int HW) {
    // out (B, Ca+Cb, HW), a (B, Ca, HW), b (B, Cb, HW)
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
    #pragma omp parallel for
    for (int n = 0; n < B; n++) {
        memcpy(out + n * (na + nb), a + n * na, na * sizeof(float));
        memcpy(out + n * (na + nb) + na, b + n * nb, nb * sizeof(float));
    }
}

static inline void concat_channels_backward_ref(float* da, float* db, const float* dout, int B, int Ca, int Cb, int HW) {
    // da (B, Ca, HW), db (B, Cb, HW) overwritten, dout (B, Ca+Cb, HW)
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
    #pragma omp parallel for
    for (int n = 0; n < B; n++) {
        memcpy(da + n * na, dout + n * (na + nb), na * sizeof(float));
        memcpy(db + n * nb, dout + n * (na + nb) + na, nb * sizeof(float));
    }
}

// one thread per element of out: the forward gathers from a or b, the backward scatters to da or db
__global__ static void concat_channels_forward_kernel(float* out, const float* a, const float* b, int B, int Ca, int Cb, int HW) {
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * (na + nb)) return;
    size_t n = idx / (na + nb), r = idx % (na + nb);
    out[idx] = r < na ? a[n * na + r] : b[n * nb + (r - na)];
}

__global__ static void concat_channels_backward_kernel(float* da, float* db, const float* dout, int B, int Ca, int Cb, int HW) {
    size_t na = (size_t)Ca * HW, nb = (size_t)Cb * HW;
    size_t idx = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (idx >= (size_t)B * (na + nb)) return;
    size_t n = idx / (na + nb), r = idx % (na + nb);
    if (r < na) { da[n * na + r] = dout[idx]; } else { db[n * nb + (r - na)] = dout[idx]; }
}

static inline void concat_channels_forward_cuda(float* out, const float* a, const float* b, int B, int Ca, int Cb, int HW) {
    int block = 256;
    size_t n = (size_t)B * (Ca + Cb) * HW;
    concat_channels_forward_kernel<<<(unsigned)((n + block - 1) / block), block>>>(out, a, b, B, Ca, Cb, HW);
    cudaCheck(cudaGetLastError());
}

static inline void concat_channels_backward_cuda(float* da, float* db, const float* dout, int B, int Ca, int Cb, int HW) {
    int block = 256;
    size_t n = (size_t)B * (Ca + Cb) * HW;
    concat_channels_backward_kernel<<<(unsigned)((n + block - 1) / block), block>>>(da, db, dout, B, Ca, Cb, HW);
    cudaCheck(cudaGetLastError());
}

static inline void concat_channels_forward(float* out, const float* a, const float* b, int B, int Ca, int Cb, int HW) {
    if (g_device == DEVICE_CUDA) {
        concat_channels_forward_cuda(out, a, b, B, Ca, Cb, HW);
    } else {
        concat_channels_forward_ref(out, a, b, B, Ca, Cb, HW);
    }
}

static inline void concat_channels_backward(float* da, float* db, const float* dout, int B, int Ca, int Cb, int HW) {
    if (g_device == DEVICE_CUDA) {
        concat_channels_backward_cuda(da, db, dout, B, Ca, Cb, HW);
    } else {
        concat_channels_backward_ref(da, db, dout, B, Ca, Cb, HW);
    }
}
