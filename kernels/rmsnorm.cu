// rmsnorm.cu — RMS normalization with a weight vector: out = (x * (1/sqrt(mean(x^2) + eps))) * w.
//
// Layout: x and out are [n_rows][dim] f32, weight is [dim] f32. One 256-thread block per row:
// a block-wide sum of squares, then a scaled copy. Bytes moved: 2 * n_rows * dim * 4 (+ the
// weight, cached): memory-bound. 1/sqrt is computed with IEEE sqrt and division (no rsqrtf),
// as the CPU reference does; only the order of the sum differs.
#include "common.cuh"

using namespace strata;

static constexpr int kThreads = 256;

static __global__ void __launch_bounds__(kThreads)
    strata_rmsnorm_f32_kernel(const float *x, const float *weight, int64_t n_rows, int64_t dim,
                              float eps, float *out) {
    __shared__ float scratch[32];
    for (int64_t r = blockIdx.x; r < n_rows; r += gridDim.x) {
        const float *xr = x + r * dim;
        float ss = 0.0f;
        for (int64_t i = threadIdx.x; i < dim; i += blockDim.x) ss += xr[i] * xr[i];
        ss = block_sum(ss, scratch);
        const float scale = 1.0f / sqrtf(ss / (float)dim + eps);
        float *o = out + r * dim;
        for (int64_t i = threadIdx.x; i < dim; i += blockDim.x)
            o[i] = __fmul_rn(__fmul_rn(xr[i], scale), weight[i]);
    }
}

extern "C" strata_status strata_rmsnorm_f32(const float *x, const float *weight, int64_t n_rows,
                                            int64_t dim, float eps, float *out,
                                            cudaStream_t stream) {
    STRATA_CHECK_ARG(n_rows >= 0 && dim >= 0 && eps >= 0.0f);
    if (n_rows == 0 || dim == 0) return STRATA_OK;
    STRATA_CHECK_ARG(x && weight && out);
    strata_rmsnorm_f32_kernel<<<grid_for(n_rows, 1), kThreads, 0, stream>>>(x, weight, n_rows,
                                                                            dim, eps, out);
    return launch_status();
}
