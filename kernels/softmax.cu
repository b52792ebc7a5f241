// softmax.cu — row-wise softmax and argmax over x[rows][cols] f32.
//
// One 256-thread block per row. Softmax makes three passes over the row (max, sum of
// exp(x - max), write exp(x - max) / sum); argmax keeps (value, index) pairs and prefers the
// larger value, then the smaller index, and never picks NaN. Bytes moved: softmax reads the
// row twice and writes it once; argmax reads it once (the logits row: 49152 or 32000 values).
#include "common.cuh"

using namespace strata;

static constexpr int kThreads = 256;

static __global__ void __launch_bounds__(kThreads)
    strata_softmax_rows_f32_kernel(const float *x, int64_t rows, int64_t cols, float *out) {
    __shared__ float scratch[32];
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * cols;
        float m = -INFINITY;
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) m = fmaxf(m, xr[i]);
        m = block_max(m, scratch);
        float s = 0.0f;
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) s += expf(xr[i] - m);
        s = block_sum(s, scratch);
        float *o = out + r * cols;
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) o[i] = expf(xr[i] - m) / s;
    }
}

// True if (v, i) should win over (best, best_i). best_i < 0 means "nothing yet".
static __device__ __forceinline__ bool argmax_better(float v, int64_t i, float best,
                                                     int64_t best_i) {
    if (isnan(v) || i < 0) return false;
    if (best_i < 0) return true;
    return v > best || (v == best && i < best_i);
}

static __global__ void __launch_bounds__(kThreads)
    strata_argmax_rows_f32_kernel(const float *x, int64_t rows, int64_t cols, int32_t *out) {
    __shared__ float s_val[32];
    __shared__ int64_t s_idx[32];
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
        const float *xr = x + r * cols;
        float best = -INFINITY;
        int64_t best_i = -1;
        for (int64_t i = threadIdx.x; i < cols; i += blockDim.x)
            if (argmax_better(xr[i], i, best, best_i)) best = xr[i], best_i = i;
#pragma unroll
        for (int o = kWarp / 2; o > 0; o >>= 1) {
            const float v = __shfl_xor_sync(0xffffffffu, best, o);
            const int64_t vi = __shfl_xor_sync(0xffffffffu, best_i, o);
            if (argmax_better(v, vi, best, best_i)) best = v, best_i = vi;
        }
        __syncthreads();  // the previous row's readers are done with s_val / s_idx
        if (lane == 0) s_val[warp] = best, s_idx[warp] = best_i;
        __syncthreads();
        if (warp == 0) {
            const int n_warps = blockDim.x / kWarp;
            best = lane < n_warps ? s_val[lane] : -INFINITY;
            best_i = lane < n_warps ? s_idx[lane] : -1;
#pragma unroll
            for (int o = kWarp / 2; o > 0; o >>= 1) {
                const float v = __shfl_xor_sync(0xffffffffu, best, o);
                const int64_t vi = __shfl_xor_sync(0xffffffffu, best_i, o);
                if (argmax_better(v, vi, best, best_i)) best = v, best_i = vi;
            }
            if (lane == 0) out[r] = best_i < 0 ? 0 : (int32_t)best_i;
        }
    }
}

extern "C" strata_status strata_softmax_rows_f32(const float *x, int64_t rows, int64_t cols,
                                                 float *out, cudaStream_t stream) {
    STRATA_CHECK_ARG(rows >= 0 && cols >= 0);
    if (rows == 0 || cols == 0) return STRATA_OK;
    STRATA_CHECK_ARG(x && out);
    strata_softmax_rows_f32_kernel<<<grid_for(rows, 1), kThreads, 0, stream>>>(x, rows, cols,
                                                                              out);
    return launch_status();
}

extern "C" strata_status strata_argmax_rows_f32(const float *x, int64_t rows, int64_t cols,
                                                int32_t *out, cudaStream_t stream) {
    STRATA_CHECK_ARG(rows >= 0 && cols >= 0);
    if (rows == 0) return STRATA_OK;
    STRATA_CHECK_ARG(out);
    if (cols == 0) return (strata_status)cudaMemsetAsync(out, 0, rows * sizeof(int32_t), stream);
    STRATA_CHECK_ARG(x);
    strata_argmax_rows_f32_kernel<<<grid_for(rows, 1), kThreads, 0, stream>>>(x, rows, cols,
                                                                             out);
    return launch_status();
}
