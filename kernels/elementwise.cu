// elementwise.cu — SwiGLU's silu(gate) * up, GeGLU's gelu_tanh(gate) * up, residual add, bias
// add, and scale, all f32.
//
// Layout: flat arrays of n values; out may alias the inputs. One thread per value in a
// grid-stride loop. Bytes moved: 3n*4 (silu_mul, gelu_mul, add) or 2n*4 (scale, add_bias: the
// bias row stays in cache): memory-bound.
// silu(g) * u and gelu_tanh(g) * u are common.cuh's silu_times / gelu_tanh_times (the CPU
// reference's operations; only expf / tanhf differ from libm, by a couple of ulp): silu_mul and
// gelu_mul are compared with a tolerance, add and scale exactly.
#include "common.cuh"

using namespace strata;

static constexpr int kThreads = 256;

static __global__ void __launch_bounds__(kThreads)
    strata_silu_mul_f32_kernel(const float *gate, const float *up, int64_t n, float *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = silu_times(gate[i], up[i]);
    }
}

static __global__ void __launch_bounds__(kThreads)
    strata_gelu_tanh_mul_f32_kernel(const float *gate, const float *up, int64_t n, float *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride) {
        out[i] = gelu_tanh_times(gate[i], up[i]);
    }
}

static __global__ void __launch_bounds__(kThreads)
    strata_add_f32_kernel(const float *a, const float *b, int64_t n, float *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = a[i] + b[i];
}

static __global__ void __launch_bounds__(kThreads)
    strata_add_bias_f32_kernel(const float *x, const float *bias, int64_t cols, int64_t n, float *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = x[i] + bias[i % cols];
}

static __global__ void __launch_bounds__(kThreads)
    strata_scale_f32_kernel(const float *x, float s, int64_t n, float *out) {
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < n; i += stride)
        out[i] = x[i] * s;
}

extern "C" strata_status strata_silu_mul_f32(const float *gate, const float *up, int64_t n,
                                             float *out, cudaStream_t stream) {
    STRATA_CHECK_ARG(n >= 0);
    if (n == 0) return STRATA_OK;
    STRATA_CHECK_ARG(gate && up && out);
    strata_silu_mul_f32_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(gate, up, n, out);
    return launch_status();
}

extern "C" strata_status strata_gelu_mul_f32(const float *gate, const float *up, int64_t n,
                                             float *out, cudaStream_t stream) {
    STRATA_CHECK_ARG(n >= 0);
    if (n == 0) return STRATA_OK;
    STRATA_CHECK_ARG(gate && up && out);
    strata_gelu_tanh_mul_f32_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(gate, up, n,
                                                                                     out);
    return launch_status();
}

extern "C" strata_status strata_add_f32(const float *a, const float *b, int64_t n, float *out,
                                        cudaStream_t stream) {
    STRATA_CHECK_ARG(n >= 0);
    if (n == 0) return STRATA_OK;
    STRATA_CHECK_ARG(a && b && out);
    strata_add_f32_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(a, b, n, out);
    return launch_status();
}

extern "C" strata_status strata_add_bias_f32(const float *x, const float *bias, int64_t rows,
                                             int64_t cols, float *out, cudaStream_t stream) {
    STRATA_CHECK_ARG(rows >= 0 && cols >= 0);
    if (rows == 0 || cols == 0) return STRATA_OK;
    STRATA_CHECK_ARG(x && bias && out);
    STRATA_CHECK_ARG(rows <= INT64_MAX / cols);
    const int64_t n = rows * cols;
    strata_add_bias_f32_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(x, bias, cols, n, out);
    return launch_status();
}

extern "C" strata_status strata_scale_f32(const float *x, float s, int64_t n, float *out,
                                          cudaStream_t stream) {
    STRATA_CHECK_ARG(n >= 0);
    if (n == 0) return STRATA_OK;
    STRATA_CHECK_ARG(x && out);
    strata_scale_f32_kernel<<<grid_for(n, kThreads), kThreads, 0, stream>>>(x, s, n, out);
    return launch_status();
}
