// fused_q8.cu — fused small ops of the "next" decode step (STRATA_GPU_KERNELS=next), each one
// launch where the proven step takes two or three:
//
// 1. strata_rmsnorm_quantize_q8: RMSNorm of one row (rmsnorm.cu's arithmetic: a 256-thread
//    block sum of squares in the same order, 1/sqrt with IEEE sqrt and division, the same two
//    rounded products, so `out` equals strata_rmsnorm_f32's bit for bit) and the 8-bit
//    activations of the normed row (matvec_q8.cuh's warp quantizers, so `act` equals
//    strata_quantize_act_q8 of `out` byte for byte). The matvecs that follow read `act`; `out`
//    (f32) is still written for the consumers that need it (plain-float weights, a router).
//    Each warp recomputes its block's normed values instead of re-reading `out`: no block-wide
//    barrier between the two halves. Bytes moved: cols * 4 read (x; the weight is cached) +
//    cols * 4 written (out) + cols + cols / 8 written (act).
// 2. strata_matvec_q8_glu: the FFN's gate and up products and act(gate) * up in one kernel:
//    each warp takes one row r of both matrices (the same lane/chunk walk as matvec_q8.cu with
//    its two rows per warp, so gate and up sum in the same order as two strata_matvec_q8 and the
//    result equals strata_matvec_q8 + strata_silu_mul_f32 / strata_gelu_mul_f32 bit for bit),
//    then lane 0 writes silu(g) * u or gelu_tanh(g) * u (common.cuh). Bytes moved: both
//    matrices (2 * rows * row_bytes) + the activations + rows * 4 written; the gate, up and
//    activation buffers of the unfused step (5 * rows * 4 more) are never written or read.
//
// Layout: x, weight, out [cols] f32; act as strata_act_q8_bytes(dtype, cols) (16-byte aligned);
// w_gate, w_up [rows][cols] of the same quantized dtype; glu_out [rows] f32.
#include "matvec_q8.cuh"

namespace {

constexpr int kNormThreads = 256;  // as rmsnorm.cu: the same sum order
constexpr int kNormWarps = kNormThreads / kWarp;

// One block, one row: x[cols] -> out[cols] (f32) and act (8-bit blocks of 32 or 256 values).
template <bool kBlocks256>
static __global__ void __launch_bounds__(kNormThreads)
    strata_rmsnorm_quantize_q8_kernel(const float *x, const float *weight, int64_t cols, float eps, float *out,
                                      uint8_t *act, ActLayout l) {
    __shared__ float scratch[32];
    float ss = 0.0f;
    for (int64_t i = threadIdx.x; i < cols; i += blockDim.x) ss += x[i] * x[i];
    ss = block_sum(ss, scratch);
    const float scale = 1.0f / sqrtf(ss / (float)cols + eps);
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    if (kBlocks256) {
        for (int64_t b = warp; b < cols / 256; b += kNormWarps) {
            const int64_t at = b * 256 + lane * 8;
            float v[8];
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                v[k] = __fmul_rn(__fmul_rn(x[at + k], scale), weight[at + k]);
                out[at + k] = v[k];
            }
            quantize_block256_warp(v, lane, b, act, l);
        }
    } else {
        for (int64_t b = warp; b < cols / 32; b += kNormWarps) {
            const int64_t at = b * 32 + lane;
            const float v = __fmul_rn(__fmul_rn(x[at], scale), weight[at]);
            out[at] = v;
            quantize_block32_warp(v, lane, b, act, l);
        }
    }
}

constexpr int kGluWarps = 4;
constexpr int kGluThreads = kGluWarps * kWarp;

// One warp per row r: gate row r and up row r, both against the same activations.
template <strata_dtype T>
static __device__ __forceinline__ void matvec_q8_glu_body(const uint8_t *w_gate, const uint8_t *w_up, int64_t rbytes,
                                                          int64_t rows, int64_t chunks, const uint8_t *act,
                                                          ActLayout l, int gelu, float *out) {
    const int lane = threadIdx.x % kWarp;
    for (int64_t r = (int64_t)blockIdx.x * kGluWarps + threadIdx.x / kWarp; r < rows;
         r += (int64_t)gridDim.x * kGluWarps) {
        const uint8_t *g_row = w_gate + r * rbytes;
        const uint8_t *u_row = w_up + r * rbytes;
        float g = 0.0f, u = 0.0f;
        // matvec_q8.cu's walk: two chunks per lane per step, each chunk's activations loaded
        // once for both rows.
        for (int64_t i = lane; i < chunks; i += 2 * kWarp) {
            XChunk x0, x1;
            const bool second = i + kWarp < chunks;
            load_x<T>(act, l, i, x0);
            if (second) load_x<T>(act, l, i + kWarp, x1);
            g += chunk_dot<T>(g_row, i, x0);
            if (second) g += chunk_dot<T>(g_row, i + kWarp, x1);
            u += chunk_dot<T>(u_row, i, x0);
            if (second) u += chunk_dot<T>(u_row, i + kWarp, x1);
        }
        g = warp_sum(g);
        u = warp_sum(u);
        if (lane == 0) out[r] = gelu ? gelu_tanh_times(g, u) : silu_times(g, u);
    }
}

#define STRATA_MATVEC_Q8_GLU_KERNEL(sfx, T)                                                                     \
    static __global__ void __launch_bounds__(kGluThreads)                                                       \
        strata_matvec_q8_glu_##sfx(const uint8_t *w_gate, const uint8_t *w_up, int64_t rbytes, int64_t rows,    \
                                   int64_t chunks, const uint8_t *act, ActLayout l, int gelu, float *out) {     \
        matvec_q8_glu_body<T>(w_gate, w_up, rbytes, rows, chunks, act, l, gelu, out);                           \
    }
STRATA_QUANT_DTYPES(STRATA_MATVEC_Q8_GLU_KERNEL)
#undef STRATA_MATVEC_Q8_GLU_KERNEL

using GluKernel = void (*)(const uint8_t *, const uint8_t *, int64_t, int64_t, int64_t, const uint8_t *, ActLayout,
                           int, float *);

// The kernel of a quantized type; nullptr for the plain float types.
__host__ GluKernel glu_kernel(strata_dtype t) {
    switch (t) {
#define STRATA_MATVEC_Q8_GLU_CASE(sfx, T) case T: return strata_matvec_q8_glu_##sfx;
        STRATA_QUANT_DTYPES(STRATA_MATVEC_Q8_GLU_CASE)
#undef STRATA_MATVEC_Q8_GLU_CASE
    default: return nullptr;
    }
}

}  // namespace

extern "C" strata_status strata_rmsnorm_quantize_q8(strata_dtype dtype, const float *x, const float *weight,
                                                    int64_t cols, float eps, float *out, void *act,
                                                    cudaStream_t stream) {
    STRATA_CHECK_ARG(is_quantized(dtype) && act_cols_ok(dtype, cols) && eps >= 0.0f);
    if (cols == 0) return STRATA_OK;
    STRATA_CHECK_ARG(x && weight && out && act && (uintptr_t)act % 16 == 0);
    const ActLayout l = act_layout(dtype, cols);
    uint8_t *a = static_cast<uint8_t *>(act);
    if (k_acts(dtype))
        strata_rmsnorm_quantize_q8_kernel<true><<<1, kNormThreads, 0, stream>>>(x, weight, cols, eps, out, a, l);
    else
        strata_rmsnorm_quantize_q8_kernel<false><<<1, kNormThreads, 0, stream>>>(x, weight, cols, eps, out, a, l);
    return launch_status();
}

extern "C" strata_status strata_matvec_q8_glu(strata_dtype dtype, const void *w_gate, const void *w_up, int64_t rows,
                                              int64_t cols, const void *act, int32_t gelu, float *out,
                                              cudaStream_t stream) {
    STRATA_CHECK_ARG(is_quantized(dtype) && act_cols_ok(dtype, cols) && rows >= 0 && (gelu == 0 || gelu == 1));
    STRATA_CHECK_ARG(row_bytes(dtype, cols) >= 0);
    if (rows == 0) return STRATA_OK;
    STRATA_CHECK_ARG(out);
    // No columns: gate = up = 0, and act(0) * 0 = 0 for both activations.
    if (cols == 0) return (strata_status)cudaMemsetAsync(out, 0, rows * sizeof(float), stream);
    STRATA_CHECK_ARG(w_gate && w_up && act && (uintptr_t)act % 16 == 0);
    STRATA_CHECK_ARG((uintptr_t)w_gate % 2 == 0 && (uintptr_t)w_up % 2 == 0);
    glu_kernel(dtype)<<<grid_for(rows, kGluWarps), kGluThreads, 0, stream>>>(
        static_cast<const uint8_t *>(w_gate), static_cast<const uint8_t *>(w_up), row_bytes(dtype, cols), rows,
        cols / STRATA_QK, static_cast<const uint8_t *>(act), act_layout(dtype, cols), gelu, out);
    return launch_status();
}
