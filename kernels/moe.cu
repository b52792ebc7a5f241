// moe.cu — the combine step of a mixture-of-experts FFN: the outputs of one expert for the
// tokens routed to it, each scaled by its routing weight and added into that token's row.
//
// Layout: src[n][cols] f32 (one expert's output rows, in the order of `rows`), rows[n] i32
// (the token row of each, distinct within one call, so no two threads add into the same value
// and no atomics are needed), weights[n] f32, out[out_rows][cols] f32, updated in place. One
// thread per value in a grid-stride loop. Bytes moved: 3 n cols * 4 (read src, read and write
// out): memory-bound. A row index outside 0..out_rows is skipped (the host cannot see it
// without a synchronize; the CPU reference returns an error).
// out += w * src is rounded as the CPU reference rounds it: one product, one sum (_rn, no fma).
#include "common.cuh"

using namespace strata;

static constexpr int kThreads = 256;

static __global__ void __launch_bounds__(kThreads)
    strata_scatter_add_scaled_f32_kernel(const float *src, const int32_t *rows, const float *weights,
                                         int64_t cols, int64_t n_values, int64_t out_rows,
                                         float *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n_values; i += stride) {
        const int64_t r = i / cols;
        const int64_t row = rows[r];
        if (row < 0 || row >= out_rows) continue;
        float *o = out + row * cols + (i - r * cols);
        *o = __fadd_rn(*o, __fmul_rn(weights[r], src[i]));
    }
}

extern "C" strata_status strata_scatter_add_scaled_f32(const float *src, const int32_t *rows,
                                                       const float *weights, int64_t n,
                                                       int64_t cols, int64_t out_rows, float *out,
                                                       cudaStream_t stream) {
    STRATA_CHECK_ARG(n >= 0 && cols >= 0 && out_rows >= 0);
    if (n == 0 || cols == 0) return STRATA_OK;
    STRATA_CHECK_ARG(src && rows && weights && out);
    STRATA_CHECK_ARG(n <= INT64_MAX / cols && out_rows <= INT64_MAX / cols);
    const int64_t n_values = n * cols;
    strata_scatter_add_scaled_f32_kernel<<<grid_for(n_values, kThreads), kThreads, 0, stream>>>(
        src, rows, weights, cols, n_values, out_rows, out);
    return launch_status();
}
