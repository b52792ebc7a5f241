// matvec_q8.cu — the "next" decode matvec (selected with STRATA_GPU_KERNELS=next; the proven
// f32-activation kernels of matvec.cu stay the default until a GPU run promotes these).
//
// Two launches per product, as in llama.cpp's mmvq:
// 1. strata_quantize_act_q8: x (f32) becomes 8-bit blocks with the CPU fast path's exact
//    rounding (src/cpu/fast/act.rs for the 32-value block types: d = binary16(max|x| / 127),
//    s = d * sum(q); act_k.rs for the K-quants and IQ4_XS: 256-value blocks, d = max|x| / 127 in
//    f32, the sums of each 16 values). q = round-half-even(x * (127 / max|x|)), a block holding a
//    NaN or an infinity gets d = NaN and q = 0. The same bytes as the CPU's, so the GPU product
//    equals the CPU fast path's up to the order of f32 additions.
// 2. strata_matvec_q8: integer dot products (__dp4a) of 32-value chunks of weights with the
//    8-bit activations, scaled once per chunk:
//      32-value types: (d_w * d_x) * sum(q_w * q_x) + m_w * s_x (m_w: Q4_1/Q5_1's m, Q4_0's
//                      -8 d, Q5_0's -16 d, else 0), as src/cpu/fast/scalar.rs;
//      K-quants, IQ4_XS: chunk = sub-block of 32 (two groups of 16): (d * d_x) * isum -
//                      (dmin * d_x) * msum with isum = sum_g sc_g * sum(q x), msum = sum_g m_g *
//                      bsum_g (scalar_k.rs; Q6_K's -32 and Q3_K's -4 are taken off with the
//                      group sums instead of per value).
//    Each warp computes kRows rows; lane l takes chunks l, l + 32, ... of each, so a warp reads
//    32 consecutive blocks (32-value types) or 4 super-blocks (K-quants) of a row per step.
//
// Every per-chunk function is __host__ __device__: strata_quantize_act_q8_host and
// strata_matvec_q8_host run the same arithmetic on the CPU (dp4a emulated), so the decoding of
// every type is tested against the CPU fast path on machines without a GPU. What only a GPU can
// check: the warp/lane structure, the launch, and the speed.
//
// strata_matvec_q8_add fuses the residual add into the epilogue (y = add + W x', add may be y):
// a decode step's attention output and FFN down projections need no separate add launch.
//
// Bytes moved: the weights (rows * row_bytes) plus cols + a few bytes of activations (plus 8 *
// rows with the residual add); the roofline is the device's memory bandwidth.
#include "matvec_q8.cuh"

namespace {

// ---- activation quantization ----------------------------------------------------------------

// Host: block b of `qk` values (32 or 256), the same arithmetic as the device kernels below.
__host__ void quantize_block_host(strata_dtype t, const float *x, int64_t b, uint8_t *act, const ActLayout &l) {
    const int qk = k_acts(t) ? STRATA_QK_K : STRATA_QK;
    const float *xb = x + b * qk;
    int8_t *q = reinterpret_cast<int8_t *>(act + l.q) + b * qk;
    float *d = reinterpret_cast<float *>(act + l.d);
    uint32_t amax_bits = 0;
    for (int k = 0; k < qk; ++k) amax_bits = amax_bits > abs_bits(xb[k]) ? amax_bits : abs_bits(xb[k]);
    const bool bad = amax_bits >= kInfBits;
    const float amax = from_bits(amax_bits);
    const float id = bad ? 0.0f : inv_scale(amax);
    int32_t sum = 0, group = 0;
    for (int k = 0; k < qk; ++k) {
        const int32_t v = bad ? 0 : quant_value(xb[k], id);
        q[k] = (int8_t)v;
        sum += v;
        group += v;
        if (k_acts(t) && k % 16 == 15) {
            reinterpret_cast<int16_t *>(act + l.s)[b * 16 + k / 16] = (int16_t)group;
            group = 0;
        }
    }
    if (k_acts(t)) {
        d[b] = bad ? NAN : scale256(amax);
    } else {
        d[b] = bad ? NAN : scale32(amax);
        reinterpret_cast<float *>(act + l.s)[b] = d[b] * (float)sum;
    }
}

// One warp per 32-value block: lane k quantizes value k.
static __global__ void __launch_bounds__(kQuantWarps * kWarp)
    strata_quantize_act_q8_32(const float *x, int64_t nb, uint8_t *act, ActLayout l) {
    const int lane = threadIdx.x % kWarp;
    for (int64_t b = (int64_t)blockIdx.x * kQuantWarps + threadIdx.x / kWarp; b < nb;
         b += (int64_t)gridDim.x * kQuantWarps)
        quantize_block32_warp(x[b * 32 + lane], lane, b, act, l);
}

// One warp per 256-value block: lane k quantizes values 8k..8k+7 (half of group k / 2).
static __global__ void __launch_bounds__(kQuantWarps * kWarp)
    strata_quantize_act_q8_256(const float *x, int64_t nb, uint8_t *act, ActLayout l) {
    const int lane = threadIdx.x % kWarp;
    for (int64_t b = (int64_t)blockIdx.x * kQuantWarps + threadIdx.x / kWarp; b < nb;
         b += (int64_t)gridDim.x * kQuantWarps) {
        const float *xb = x + b * 256 + lane * 8;
        float v[8];
#pragma unroll
        for (int k = 0; k < 8; ++k) v[k] = xb[k];
        quantize_block256_warp(v, lane, b, act, l);
    }
}

// ---- the matvec -----------------------------------------------------------------------------

constexpr int kWarps = 4;
constexpr int kRows = 2;  // rows per warp: each activation chunk is loaded once for both
constexpr int kThreads = kWarps * kWarp;

template <strata_dtype T>
static __device__ __forceinline__ void matvec_q8_body(const uint8_t *w, int64_t rbytes, int64_t rows,
                                                      int64_t chunks, const uint8_t *act, ActLayout l,
                                                      const float *add, float *y) {
    const int lane = threadIdx.x % kWarp;
    const int64_t groups = (rows + kRows - 1) / kRows;
    for (int64_t g = (int64_t)blockIdx.x * kWarps + threadIdx.x / kWarp; g < groups;
         g += (int64_t)gridDim.x * kWarps) {
        const int64_t row0 = g * kRows;
        float acc[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
        // Two chunks per lane per step: both chunks' loads can be in flight together.
        for (int64_t i = lane; i < chunks; i += 2 * kWarp) {
            XChunk x0, x1;
            const bool second = i + kWarp < chunks;
            load_x<T>(act, l, i, x0);
            if (second) load_x<T>(act, l, i + kWarp, x1);
#pragma unroll
            for (int r = 0; r < kRows; ++r) {
                if (row0 + r < rows) {
                    const uint8_t *row = w + (row0 + r) * rbytes;
                    acc[r] += chunk_dot<T>(row, i, x0);
                    if (second) acc[r] += chunk_dot<T>(row, i + kWarp, x1);
                }
            }
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const float v = warp_sum(acc[r]);
            // The residual add of strata_matvec_q8_add (add may be y: each value is read and
            // written by the same lane).
            if (lane == 0 && row0 + r < rows) y[row0 + r] = add ? add[row0 + r] + v : v;
        }
    }
}

#define STRATA_MATVEC_Q8_KERNEL(name, T)                                                        \
    static __global__ void __launch_bounds__(kThreads)                                          \
        name(const uint8_t *w, int64_t rbytes, int64_t rows, int64_t chunks, const uint8_t *act, \
             ActLayout l, const float *add, float *y) {                                         \
        matvec_q8_body<T>(w, rbytes, rows, chunks, act, l, add, y);                             \
    }

#define STRATA_MATVEC_Q8_TYPED(sfx, T) STRATA_MATVEC_Q8_KERNEL(strata_matvec_q8_##sfx, T)
STRATA_QUANT_DTYPES(STRATA_MATVEC_Q8_TYPED)
#undef STRATA_MATVEC_Q8_TYPED

using MatvecQ8Kernel = void (*)(const uint8_t *, int64_t, int64_t, int64_t, const uint8_t *, ActLayout, const float *,
                               float *);

// Host twin of the kernels: rows in order, chunks in order.
template <strata_dtype T>
__host__ void matvec_q8_host(const uint8_t *w, int64_t rbytes, int64_t rows, int64_t chunks, const uint8_t *act,
                             const ActLayout &l, float *y) {
    for (int64_t r = 0; r < rows; ++r) {
        float acc = 0.0f;
        for (int64_t i = 0; i < chunks; ++i) {
            XChunk x;
            load_x<T>(act, l, i, x);
            acc += chunk_dot<T>(w + r * rbytes, i, x);
        }
        y[r] = acc;
    }
}

struct Q8Kernels {
    MatvecQ8Kernel device;
    void (*host)(const uint8_t *, int64_t, int64_t, int64_t, const uint8_t *, const ActLayout &, float *);
};

// The kernels of a quantized type; {nullptr, nullptr} for the plain float types.
__host__ Q8Kernels q8_kernels(strata_dtype t) {
    switch (t) {
#define STRATA_MATVEC_Q8_CASE(sfx, T) case T: return {strata_matvec_q8_##sfx, matvec_q8_host<T>};
        STRATA_QUANT_DTYPES(STRATA_MATVEC_Q8_CASE)
#undef STRATA_MATVEC_Q8_CASE
    default: return {nullptr, nullptr};
    }
}

}  // namespace

extern "C" int64_t strata_act_q8_bytes(strata_dtype dtype, int64_t cols) {
    if (!is_quantized(dtype) || !act_cols_ok(dtype, cols)) return -1;
    return act_layout(dtype, cols).total;
}

extern "C" strata_status strata_quantize_act_q8(strata_dtype dtype, const float *x, int64_t cols, void *act,
                                                cudaStream_t stream) {
    STRATA_CHECK_ARG(is_quantized(dtype) && act_cols_ok(dtype, cols));
    if (cols == 0) return STRATA_OK;
    STRATA_CHECK_ARG(x && act && (uintptr_t)act % 16 == 0);
    const ActLayout l = act_layout(dtype, cols);
    uint8_t *a = static_cast<uint8_t *>(act);
    if (k_acts(dtype)) {
        const int64_t nb = cols / STRATA_QK_K;
        strata_quantize_act_q8_256<<<grid_for(nb, kQuantWarps), kQuantWarps * kWarp, 0, stream>>>(x, nb, a, l);
    } else {
        const int64_t nb = cols / STRATA_QK;
        strata_quantize_act_q8_32<<<grid_for(nb, kQuantWarps), kQuantWarps * kWarp, 0, stream>>>(x, nb, a, l);
    }
    return launch_status();
}

// y = add + W x' (add may be null, or y itself: the residual add fused into the epilogue).
static strata_status matvec_q8_launch(strata_dtype dtype, const void *w, int64_t rows, int64_t cols, const void *act,
                                      const float *add, float *y, cudaStream_t stream) {
    STRATA_CHECK_ARG(is_quantized(dtype) && act_cols_ok(dtype, cols) && rows >= 0);
    STRATA_CHECK_ARG(row_bytes(dtype, cols) >= 0);
    if (rows == 0) return STRATA_OK;
    STRATA_CHECK_ARG(y);
    if (cols == 0) {
        if (add) return (strata_status)cudaMemcpyAsync(y, add, rows * sizeof(float), cudaMemcpyDeviceToDevice, stream);
        return (strata_status)cudaMemsetAsync(y, 0, rows * sizeof(float), stream);
    }
    STRATA_CHECK_ARG(w && act && (uintptr_t)act % 16 == 0 && (uintptr_t)w % 2 == 0);
    const Q8Kernels k = q8_kernels(dtype);
    const int64_t groups = (rows + kRows - 1) / kRows;
    k.device<<<grid_for(groups, kWarps), kThreads, 0, stream>>>(static_cast<const uint8_t *>(w),
                                                              row_bytes(dtype, cols), rows, cols / STRATA_QK,
                                                              static_cast<const uint8_t *>(act),
                                                              act_layout(dtype, cols), add, y);
    return launch_status();
}

extern "C" strata_status strata_matvec_q8(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
                                          const void *act, float *y, cudaStream_t stream) {
    return matvec_q8_launch(dtype, w, rows, cols, act, nullptr, y, stream);
}

extern "C" strata_status strata_matvec_q8_add(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
                                              const void *act, const float *add, float *y, cudaStream_t stream) {
    STRATA_CHECK_ARG(add);
    return matvec_q8_launch(dtype, w, rows, cols, act, add, y, stream);
}

extern "C" strata_status strata_quantize_act_q8_host(strata_dtype dtype, const float *x, int64_t cols, void *act) {
    STRATA_CHECK_ARG(is_quantized(dtype) && act_cols_ok(dtype, cols));
    if (cols == 0) return STRATA_OK;
    STRATA_CHECK_ARG(x && act);
    const ActLayout l = act_layout(dtype, cols);
    memset(act, 0, (size_t)l.total);
    const int64_t nb = cols / (k_acts(dtype) ? STRATA_QK_K : STRATA_QK);
    for (int64_t b = 0; b < nb; ++b) quantize_block_host(dtype, x, b, static_cast<uint8_t *>(act), l);
    return STRATA_OK;
}

extern "C" strata_status strata_matvec_q8_host(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
                                               const void *act, float *y) {
    STRATA_CHECK_ARG(is_quantized(dtype) && act_cols_ok(dtype, cols) && rows >= 0);
    STRATA_CHECK_ARG(row_bytes(dtype, cols) >= 0);
    if (rows == 0) return STRATA_OK;
    STRATA_CHECK_ARG(y);
    if (cols == 0) {
        for (int64_t r = 0; r < rows; ++r) y[r] = 0.0f;
        return STRATA_OK;
    }
    STRATA_CHECK_ARG(w && act);
    q8_kernels(dtype).host(static_cast<const uint8_t *>(w), row_bytes(dtype, cols), rows, cols / STRATA_QK,
                           static_cast<const uint8_t *>(act), act_layout(dtype, cols), y);
    return STRATA_OK;
}
