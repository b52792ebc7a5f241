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
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_f32_f32, STRATA_DTYPE_F32)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_f16_f32, STRATA_DTYPE_F16)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_bf16_f32, STRATA_DTYPE_BF16)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q8_0_f32, STRATA_DTYPE_Q8_0)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q4_0_f32, STRATA_DTYPE_Q4_0)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q4_1_f32, STRATA_DTYPE_Q4_1)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q5_0_f32, STRATA_DTYPE_Q5_0)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q5_1_f32, STRATA_DTYPE_Q5_1)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_iq4_nl_f32, STRATA_DTYPE_IQ4_NL)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q2_k_f32, STRATA_DTYPE_Q2_K)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q3_k_f32, STRATA_DTYPE_Q3_K)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q4_k_f32, STRATA_DTYPE_Q4_K)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q5_k_f32, STRATA_DTYPE_Q5_K)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_q6_k_f32, STRATA_DTYPE_Q6_K)
STRATA_DEQUANT_KERNEL(strata_dequantize_rows_iq4_xs_f32, STRATA_DTYPE_IQ4_XS)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_f32_f32, STRATA_DTYPE_F32)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_f16_f32, STRATA_DTYPE_F16)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_bf16_f32, STRATA_DTYPE_BF16)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q8_0_f32, STRATA_DTYPE_Q8_0)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q4_0_f32, STRATA_DTYPE_Q4_0)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q4_1_f32, STRATA_DTYPE_Q4_1)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q5_0_f32, STRATA_DTYPE_Q5_0)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q5_1_f32, STRATA_DTYPE_Q5_1)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_iq4_nl_f32, STRATA_DTYPE_IQ4_NL)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q2_k_f32, STRATA_DTYPE_Q2_K)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q3_k_f32, STRATA_DTYPE_Q3_K)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q4_k_f32, STRATA_DTYPE_Q4_K)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q5_k_f32, STRATA_DTYPE_Q5_K)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_q6_k_f32, STRATA_DTYPE_Q6_K)
STRATA_DEQUANT_KERNEL(strata_embedding_gather_iq4_xs_f32, STRATA_DTYPE_IQ4_XS)

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
    case STRATA_DTYPE_F32: k = strata_dequantize_rows_f32_f32; break;
    case STRATA_DTYPE_F16: k = strata_dequantize_rows_f16_f32; break;
    case STRATA_DTYPE_BF16: k = strata_dequantize_rows_bf16_f32; break;
    case STRATA_DTYPE_Q8_0: k = strata_dequantize_rows_q8_0_f32; break;
    case STRATA_DTYPE_Q4_0: k = strata_dequantize_rows_q4_0_f32; break;
    case STRATA_DTYPE_Q4_1: k = strata_dequantize_rows_q4_1_f32; break;
    case STRATA_DTYPE_Q5_0: k = strata_dequantize_rows_q5_0_f32; break;
    case STRATA_DTYPE_Q5_1: k = strata_dequantize_rows_q5_1_f32; break;
    case STRATA_DTYPE_IQ4_NL: k = strata_dequantize_rows_iq4_nl_f32; break;
    case STRATA_DTYPE_Q2_K: k = strata_dequantize_rows_q2_k_f32; break;
    case STRATA_DTYPE_Q3_K: k = strata_dequantize_rows_q3_k_f32; break;
    case STRATA_DTYPE_Q4_K: k = strata_dequantize_rows_q4_k_f32; break;
    case STRATA_DTYPE_Q5_K: k = strata_dequantize_rows_q5_k_f32; break;
    case STRATA_DTYPE_Q6_K: k = strata_dequantize_rows_q6_k_f32; break;
    case STRATA_DTYPE_IQ4_XS: k = strata_dequantize_rows_iq4_xs_f32; break;
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
    case STRATA_DTYPE_F32: k = strata_embedding_gather_f32_f32; break;
    case STRATA_DTYPE_F16: k = strata_embedding_gather_f16_f32; break;
    case STRATA_DTYPE_BF16: k = strata_embedding_gather_bf16_f32; break;
    case STRATA_DTYPE_Q8_0: k = strata_embedding_gather_q8_0_f32; break;
    case STRATA_DTYPE_Q4_0: k = strata_embedding_gather_q4_0_f32; break;
    case STRATA_DTYPE_Q4_1: k = strata_embedding_gather_q4_1_f32; break;
    case STRATA_DTYPE_Q5_0: k = strata_embedding_gather_q5_0_f32; break;
    case STRATA_DTYPE_Q5_1: k = strata_embedding_gather_q5_1_f32; break;
    case STRATA_DTYPE_IQ4_NL: k = strata_embedding_gather_iq4_nl_f32; break;
    case STRATA_DTYPE_Q2_K: k = strata_embedding_gather_q2_k_f32; break;
    case STRATA_DTYPE_Q3_K: k = strata_embedding_gather_q3_k_f32; break;
    case STRATA_DTYPE_Q4_K: k = strata_embedding_gather_q4_k_f32; break;
    case STRATA_DTYPE_Q5_K: k = strata_embedding_gather_q5_k_f32; break;
    case STRATA_DTYPE_Q6_K: k = strata_embedding_gather_q6_k_f32; break;
    case STRATA_DTYPE_IQ4_XS: k = strata_embedding_gather_iq4_xs_f32; break;
    default: break; // not a weight type: is_weight_dtype() refused it above
    }
    return launch_dequantize(k, dtype, table, ids, n_vocab, n_ids, dim, out, stream);
}
