// matvec.cu — decode-time matrix-vector product y = W x, W of any weight type, x and y f32.
//
// Layout: W is `rows` rows of `cols` values (GGUF blocks for quantized types), x has `cols`
// f32 values, y has `rows`. Each warp computes ROWS consecutive rows; its 32 lanes take 8
// chunks (32 values each) per step, four lanes per chunk and 8 values per lane (common.cuh),
// so a warp reads 8 consecutive blocks of each row per step (coalesced) and loads each x value
// once for all ROWS rows. The block scale is factored out of the per-lane sum:
// sum(q*d*x) = d * sum(q*x) (+ m * sum(x) for the types with a min: Q4_1, Q5_1, Q2_K, Q4_K,
// Q5_K, where the K-quants' offset is -dmin * m of the chunk's sub-block).
//
// Bytes moved: rows * row_bytes(dtype, cols) of weights (x and y are noise), so the roofline
// is the device's memory bandwidth: 7B shapes (4096 x 4096, Q4_0) move 9.4 MB per call.
// The summation order differs from the CPU reference: compare with a tolerance.
#include "common.cuh"

using namespace strata;

static constexpr int kWarps = 4;
static constexpr int kRows = 2;   // rows per warp: reuses each x load twice
static constexpr int kSteps = 4;  // chunk-steps whose loads are issued together
static constexpr int kThreads = kWarps * kWarp;

// x values of part p of chunk c (positions from part_index), 0 past `cols`.
template <strata_dtype T>
static __device__ __forceinline__ void load_x8(const float *x, int64_t cols, int64_t c, int p,
                                               bool vec, float xv[8]) {
    const int64_t base = c * 32;
    if (vec && base + 32 <= cols) {
        const int first = part_index(T, p, 0), second = part_index(T, p, 4);
        const float4 a = __ldg(reinterpret_cast<const float4 *>(x + base + first));
        const float4 b = __ldg(reinterpret_cast<const float4 *>(x + base + second));
        xv[0] = a.x, xv[1] = a.y, xv[2] = a.z, xv[3] = a.w;
        xv[4] = b.x, xv[5] = b.y, xv[6] = b.z, xv[7] = b.w;
        return;
    }
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int64_t i = base + part_index(T, p, k);
        xv[k] = i < cols ? __ldg(x + i) : 0.0f;
    }
}

template <strata_dtype T>
static __device__ __forceinline__ void matvec_body(const uint8_t *w, int64_t rbytes,
                                                   int64_t rows, int64_t cols, const float *x,
                                                   bool x_vec, float *y) {
    using Raw = typename Decoder<T>::Raw;
    const int lane = threadIdx.x % kWarp;
    const int p = lane % 4;
    const int64_t chunks = (cols + 31) / 32;
    const int64_t groups = (rows + kRows - 1) / kRows;
    const int64_t warp_stride = (int64_t)gridDim.x * kWarps;
    for (int64_t g = (int64_t)blockIdx.x * kWarps + threadIdx.x / kWarp; g < groups;
         g += warp_stride) {
        const int64_t row0 = g * kRows;
        float acc[kRows];
#pragma unroll
        for (int r = 0; r < kRows; ++r) acc[r] = 0.0f;
        // kSteps chunk-steps at a time: first every load of the step (weights of all kRows rows,
        // then x), then the arithmetic, so each lane keeps kSteps * kRows weight loads in
        // flight instead of one. Without this the kernel is bound by DRAM latency.
        for (int64_t c0 = lane / 4; c0 < chunks; c0 += 8 * kSteps) {
            Raw raw[kSteps][kRows];
#pragma unroll
            for (int u = 0; u < kSteps; ++u) {
                const int64_t c = c0 + 8 * u;
#pragma unroll
                for (int r = 0; r < kRows; ++r)
                    if (c < chunks && row0 + r < rows)
                        raw[u][r] = Decoder<T>::load_raw(w + (row0 + r) * rbytes, c, p, cols);
            }
            float xv[kSteps][8];
#pragma unroll
            for (int u = 0; u < kSteps; ++u)
                if (c0 + 8 * u < chunks) load_x8<T>(x, cols, c0 + 8 * u, p, x_vec, xv[u]);
#pragma unroll
            for (int u = 0; u < kSteps; ++u) {
                if (c0 + 8 * u >= chunks) break;
                float xsum = 0.0f;
                if (has_offset(T)) {
#pragma unroll
                    for (int k = 0; k < 8; ++k) xsum += xv[u][k];
                }
#pragma unroll
                for (int r = 0; r < kRows; ++r) {
                    if (row0 + r < rows) {
                        float q[8], scale, offset;
                        Decoder<T>::decode(raw[u][r], q, scale, offset);
                        float s = 0.0f;
#pragma unroll
                        for (int k = 0; k < 8; ++k) s += q[k] * xv[u][k];
                        acc[r] += has_offset(T) ? scale * s + offset * xsum : scale * s;
                    }
                }
            }
        }
#pragma unroll
        for (int r = 0; r < kRows; ++r) {
            const float v = warp_sum(acc[r]);
            if (lane == 0 && row0 + r < rows) y[row0 + r] = v;
        }
    }
}

#define STRATA_MATVEC_KERNEL(name, T)                                                          \
    static __global__ void __launch_bounds__(kThreads)                                         \
        name(const uint8_t *w, int64_t rbytes, int64_t rows, int64_t cols, const float *x,     \
             bool x_vec, float *y) {                                                           \
        matvec_body<T>(w, rbytes, rows, cols, x, x_vec, y);                                    \
    }

#define STRATA_MATVEC_TYPED(sfx, T) STRATA_MATVEC_KERNEL(strata_matvec_##sfx##_f32, T)
STRATA_WEIGHT_DTYPES(STRATA_MATVEC_TYPED)
#undef STRATA_MATVEC_TYPED

using MatvecKernel = void (*)(const uint8_t *, int64_t, int64_t, int64_t, const float *, bool,
                              float *);

static strata_status launch_matvec(MatvecKernel kernel, strata_dtype dtype, const void *w,
                                   int64_t rows, int64_t cols, const float *x, float *y,
                                   cudaStream_t stream) {
    const bool x_vec = ((uintptr_t)x % 16) == 0 && cols % 4 == 0;
    const int64_t groups = (rows + kRows - 1) / kRows;
    kernel<<<grid_for(groups, kWarps), kThreads, 0, stream>>>(
        static_cast<const uint8_t *>(w), row_bytes(dtype, cols), rows, cols, x, x_vec, y);
    return launch_status();
}

extern "C" strata_status strata_matvec_f32(strata_dtype dtype, const void *w, int64_t rows,
                                           int64_t cols, const float *x, float *y,
                                           cudaStream_t stream) {
    STRATA_CHECK_ARG(is_weight_dtype(dtype) && rows >= 0 && cols >= 0);
    STRATA_CHECK_ARG(row_bytes(dtype, cols) >= 0);
    if (rows == 0) return STRATA_OK;
    STRATA_CHECK_ARG(y);
    if (cols == 0) return (strata_status)cudaMemsetAsync(y, 0, rows * sizeof(float), stream);
    STRATA_CHECK_ARG(w && x);
    MatvecKernel k = nullptr;
    switch (dtype) {
#define STRATA_MATVEC_CASE(sfx, T) case T: k = strata_matvec_##sfx##_f32; break;
        STRATA_WEIGHT_DTYPES(STRATA_MATVEC_CASE)
#undef STRATA_MATVEC_CASE
    default: break; // not a weight type: is_weight_dtype() refused it above
    }
    return launch_matvec(k, dtype, w, rows, cols, x, y, stream);
}
