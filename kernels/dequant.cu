// dequant.cu — dequantize whole rows of a weight matrix to f32, and gather embedding rows.
//
// Inputs: `rows` rows of `cols` values of any weight type (GGUF block layouts, strata.h);
// for the gather, a device array of row ids. Output: f32, row-major [rows][cols].
// One thread decodes one part (8 values) of a 32-value chunk (common.cuh).
// Bytes moved: rows * row_bytes(dtype, cols) read + rows * cols * 4 written; purely
// memory-bound, so the bench compares it with the device-to-device copy bandwidth.
// Values are bit-identical to the CPU reference (q * d, then + m or - dmin * m, no fused
// multiply-add; the K-quants' d * sc and dmin * m are rounded products as in src/quant.rs).
#include "common.cuh"

using namespace strata;

static constexpr int kThreads = 256;

template <strata_dtype T>
static __device__ __forceinline__ void dequantize_rows_body(const uint8_t *w, int64_t rbytes,
                                                     const int32_t *ids, int64_t n_vocab,
                                                     int64_t rows, int64_t cols, float *out) {
    const int64_t chunks = (cols + 31) / 32;
    const int64_t items = rows * chunks * 4;
    const int64_t stride = (int64_t)gridDim.x * blockDim.x;
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < items; i += stride) {
        const int p = (int)(i & 3);
        const int64_t c = (i >> 2) % chunks, r = (i >> 2) / chunks;
        float *o = out + r * cols + c * 32;
        const int64_t src = ids ? (int64_t)ids[r] : r;
        if (ids && (src < 0 || src >= n_vocab)) {
#pragma unroll
            for (int k = 0; k < 8; ++k) {
                const int idx = part_index(T, p, k);
                if (c * 32 + idx < cols) o[idx] = __int_as_float(0x7fc00000);  // NaN
            }
            continue;
        }
        float q[8], scale, offset;
        decode_part<T>(w + src * rbytes, c, p, cols, q, scale, offset);
#pragma unroll
        for (int k = 0; k < 8; ++k) {
            const int idx = part_index(T, p, k);
            if (c * 32 + idx < cols)
                o[idx] = dequant_value(q[k], scale, offset, has_offset(T));
        }
    }
}

#define STRATA_DEQUANT_KERNEL(name, T)                                                         \
    static __global__ void __launch_bounds__(kThreads)                                         \
        name(const uint8_t *w, int64_t rbytes, const int32_t *ids, int64_t n_vocab,            \
             int64_t rows, int64_t cols, float *out) {                                         \
        dequantize_rows_body<T>(w, rbytes, ids, n_vocab, rows, cols, out);                     \
    }

// Kernel names say the weight type and the output type, as Nsight shows them.
#define STRATA_DEQUANT_TYPED(sfx, T) STRATA_DEQUANT_KERNEL(strata_dequantize_rows_##sfx##_f32, T)
STRATA_WEIGHT_DTYPES(STRATA_DEQUANT_TYPED)
#undef STRATA_DEQUANT_TYPED
#define STRATA_GATHER_TYPED(sfx, T) STRATA_DEQUANT_KERNEL(strata_embedding_gather_##sfx##_f32, T)
STRATA_WEIGHT_DTYPES(STRATA_GATHER_TYPED)
#undef STRATA_GATHER_TYPED

using DequantKernel = void (*)(const uint8_t *, int64_t, const int32_t *, int64_t, int64_t,
                               int64_t, float *);

// Typed launcher: one thread per 8-value part.
static strata_status launch_dequantize(DequantKernel kernel, strata_dtype dtype, const void *w,
                                const int32_t *ids, int64_t n_vocab, int64_t rows,
                                int64_t cols, float *out, cudaStream_t stream) {
    const int64_t rbytes = row_bytes(dtype, cols);
    const int64_t items = rows * ((cols + 31) / 32) * 4;
    kernel<<<grid_for(items, kThreads), kThreads, 0, stream>>>(
        static_cast<const uint8_t *>(w), rbytes, ids, n_vocab, rows, cols, out);
    return launch_status();
}

extern "C" strata_status strata_dequantize_rows_f32(strata_dtype dtype, const void *w,
                                                    int64_t rows, int64_t cols, float *out,
                                                    cudaStream_t stream) {
    STRATA_CHECK_ARG(is_weight_dtype(dtype) && rows >= 0 && cols >= 0);
    STRATA_CHECK_ARG(row_bytes(dtype, cols) >= 0);
    if (rows == 0 || cols == 0) return STRATA_OK;
    STRATA_CHECK_ARG(w && out);
    DequantKernel k = nullptr;
    switch (dtype) {
#define STRATA_DEQUANT_CASE(sfx, T) case T: k = strata_dequantize_rows_##sfx##_f32; break;
        STRATA_WEIGHT_DTYPES(STRATA_DEQUANT_CASE)
#undef STRATA_DEQUANT_CASE
    default: break; // not a weight type: is_weight_dtype() refused it above
    }
    return launch_dequantize(k, dtype, w, nullptr, rows, rows, cols, out, stream);
}

extern "C" strata_status strata_embedding_gather_f32(strata_dtype dtype, const void *table,
                                                     int64_t n_vocab, int64_t dim,
                                                     const int32_t *ids, int64_t n_ids,
                                                     float *out, cudaStream_t stream) {
    STRATA_CHECK_ARG(is_weight_dtype(dtype) && n_vocab >= 0 && dim >= 0 && n_ids >= 0);
    STRATA_CHECK_ARG(row_bytes(dtype, dim) >= 0);
    if (n_ids == 0 || dim == 0) return STRATA_OK;
    STRATA_CHECK_ARG(table && ids && out);
    DequantKernel k = nullptr;
    switch (dtype) {
#define STRATA_GATHER_CASE(sfx, T) case T: k = strata_embedding_gather_##sfx##_f32; break;
        STRATA_WEIGHT_DTYPES(STRATA_GATHER_CASE)
#undef STRATA_GATHER_CASE
    default: break; // not a weight type: is_weight_dtype() refused it above
    }
    return launch_dequantize(k, dtype, table, ids, n_vocab, n_ids, dim, out, stream);
}
