/*
 * strata.h — the C ABI between strata's CUDA kernels and Rust.
 *
 * Every launcher and every struct shared with Rust is declared here, once. Every .cu file
 * includes this header, so nvcc checks each definition against its declaration; build.rs runs
 * bindgen over it (allowlist `strata_.*`) to generate the Rust side. Keep it plain C: no CUDA
 * headers, no C++.
 *
 * Conventions
 * - Launchers are `strata_status strata_<op>_<variant>(..., cudaStream_t stream)`. They check
 *   their arguments (STRATA_ERR_INVALID_VALUE, nothing launched), launch on `stream`, and
 *   return cudaGetLastError(). They never allocate, never synchronize.
 * - All pointers are device pointers unless a comment says otherwise. Sizes and indices are
 *   int64_t; a negative size is an argument error. A size of zero launches nothing and
 *   returns STRATA_OK.
 * - Activations are f32. Weights are a matrix of `rows` rows of `cols` values, row-major;
 *   a quantized row is cols/32 consecutive blocks, so cols must be a multiple of 32 there.
 * - Unless said otherwise, `out` may not alias an input.
 */
#ifndef STRATA_H
#define STRATA_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#define STRATA_STATIC_ASSERT(cond, msg) static_assert(cond, msg)
#else
#define STRATA_STATIC_ASSERT(cond, msg) _Static_assert(cond, msg)
#endif

/* The same typedef the CUDA headers use, so bindgen needs no CUDA include path and .cu files
 * that include both compile. */
typedef struct CUstream_st *cudaStream_t;

/* A cudaError_t value: 0 is success. */
typedef int32_t strata_status;
#define STRATA_OK 0
/* cudaErrorInvalidValue: an argument failed the launcher's checks; nothing was launched. */
#define STRATA_ERR_INVALID_VALUE 1

/* Weights per quantization block (GGUF's QK4_0 = QK4_1 = QK8_0 = 32). */
#define STRATA_QK 32

/* Weight and cache types. The values are GGUF's ggml_type ids. */
typedef enum strata_dtype {
    STRATA_DTYPE_F32 = 0,
    STRATA_DTYPE_F16 = 1,
    STRATA_DTYPE_Q4_0 = 2,
    STRATA_DTYPE_Q4_1 = 3,
    STRATA_DTYPE_Q8_0 = 8,
    STRATA_DTYPE_BF16 = 30
} strata_dtype;

/* Q8_0: value[i] = qs[i] * d. 34 bytes, 2-byte aligned. `d` is IEEE binary16 bits. */
typedef struct strata_block_q8_0 {
    uint16_t d;
    int8_t qs[STRATA_QK];
} strata_block_q8_0;

/* Q4_0: value[j] = ((qs[j] & 15) - 8) * d and value[j + 16] = ((qs[j] >> 4) - 8) * d for
 * j in 0..16: low nibbles hold the first half of the block, high nibbles the second.
 * 18 bytes, 2-byte aligned. */
typedef struct strata_block_q4_0 {
    uint16_t d;
    uint8_t qs[STRATA_QK / 2];
} strata_block_q4_0;

/* Q4_1: value[j] = (qs[j] & 15) * d + m and value[j + 16] = (qs[j] >> 4) * d + m.
 * 20 bytes, 2-byte aligned. */
typedef struct strata_block_q4_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qs[STRATA_QK / 2];
} strata_block_q4_1;

STRATA_STATIC_ASSERT(sizeof(strata_block_q8_0) == 34, "Q8_0 block must be 34 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q4_0) == 18, "Q4_0 block must be 18 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q4_1) == 20, "Q4_1 block must be 20 bytes");

/* RoPE pair layouts. ADJACENT rotates (x[2i], x[2i+1]) (GGUF llama); HALF_SPLIT rotates
 * (x[i], x[i + n_rot/2]) (NeoX, Hugging Face checkpoints). */
typedef enum strata_rope_layout {
    STRATA_ROPE_ADJACENT = 0,
    STRATA_ROPE_HALF_SPLIT = 1
} strata_rope_layout;

/* Name and description of a status (cudaGetErrorName / cudaGetErrorString); static strings. */
const char *strata_status_name(strata_status status);
const char *strata_status_string(strata_status status);

/* ---- dequant.cu ------------------------------------------------------------------------ */

/* out[r][c] = value of w[r][c] as f32, for `rows` rows of `cols` values of type `dtype`. */
strata_status strata_dequantize_rows_f32(strata_dtype dtype, const void *w, int64_t rows,
                                         int64_t cols, float *out, cudaStream_t stream);

/* out[t][c] = table[ids[t]][c] as f32. `ids` (device, n_ids values) must lie in
 * [0, n_vocab); a row whose id does not is filled with NaN rather than read out of bounds. */
strata_status strata_embedding_gather_f32(strata_dtype dtype, const void *table,
                                          int64_t n_vocab, int64_t dim, const int32_t *ids,
                                          int64_t n_ids, float *out, cudaStream_t stream);

/* ---- matvec.cu ------------------------------------------------------------------------- */

/* Decode: y[r] = sum_c w[r][c] * x[c]; x has `cols` values, y `rows`. */
strata_status strata_matvec_f32(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
                                const float *x, float *y, cudaStream_t stream);

/* ---- matmul.cu ------------------------------------------------------------------------- */

/* Prefill: y[t][r] = sum_c x[t][c] * w[r][c] (Y = X W^T) for t in 0..n_tokens;
 * x is [n_tokens][cols], y is [n_tokens][rows]. */
strata_status strata_matmul_f32(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
                                const float *x, int64_t n_tokens, float *y,
                                cudaStream_t stream);

/* ---- rmsnorm.cu ------------------------------------------------------------------------ */

/* For each of n_rows rows of `dim` values: out = (x * (1 / sqrt(mean(x^2) + eps))) * weight.
 * `out` may equal `x`. */
strata_status strata_rmsnorm_f32(const float *x, const float *weight, int64_t n_rows,
                                 int64_t dim, float eps, float *out, cudaStream_t stream);

/* ---- rope.cu --------------------------------------------------------------------------- */

/* In place on x[n_tokens][n_heads][head_dim]: token t is at position positions[t] (device).
 * For pair i in 0..n_rot/2: theta = (pos * freq_scale) * inv_freq[i], with
 * inv_freq[i] = (float)(pow((double)freq_base, -2.0 * i / n_rot) / ff[i]), where ff[i] is
 * freq_factors[i] (device, n_rot/2 values: Llama 3.1-style per-frequency divisors) or 1 when
 * freq_factors is null; the pair is rotated by theta. Values past n_rot in each head are left
 * alone. n_rot must be even and <= head_dim. */
strata_status strata_rope_f32(float *x, int64_t n_tokens, int64_t n_heads, int64_t head_dim,
                              const int32_t *positions, int64_t n_rot, float freq_base,
                              float freq_scale, const float *freq_factors,
                              strata_rope_layout layout, cudaStream_t stream);

/* ---- attention.cu ---------------------------------------------------------------------- */

/* KV caches are [cache_rows][n_kv_heads][head_dim] of `cache_dtype` (F32 or F16). Query head h
 * reads kv head h / (n_heads / n_kv_heads); n_heads must be a multiple of n_kv_heads, and
 * head_dim at most 256. Scores are (q . k) * scale, softmax in f32, out = sum softmax * v. */

/* Decode: q and out are [n_heads][head_dim]; attends cache positions 0..n_kv-1. */
strata_status strata_attention_decode_f32(const float *q, strata_dtype cache_dtype,
                                          const void *k_cache, const void *v_cache,
                                          int64_t n_heads, int64_t n_kv_heads,
                                          int64_t head_dim, int64_t n_kv, float scale,
                                          float *out, cudaStream_t stream);

/* Prefill: q and out are [n_tokens][n_heads][head_dim]; token t is at position pos0 + t and
 * attends cache positions 0..=pos0+t (causal). The cache must already hold those rows. */
strata_status strata_attention_prefill_f32(const float *q, int64_t n_tokens, int64_t pos0,
                                           strata_dtype cache_dtype, const void *k_cache,
                                           const void *v_cache, int64_t n_heads,
                                           int64_t n_kv_heads, int64_t head_dim, float scale,
                                           float *out, cudaStream_t stream);

/* ---- kv_cache.cu ----------------------------------------------------------------------- */

/* cache[positions[t]][i] = src[t][i] converted to cache_dtype (F32, or F16 rounded to
 * nearest even), for t in 0..n_tokens and i in 0..row_len. A position outside
 * [0, cache_rows) is skipped. */
strata_status strata_kv_append_f32(const float *src, int64_t n_tokens, int64_t row_len,
                                   const int32_t *positions, strata_dtype cache_dtype,
                                   void *cache, int64_t cache_rows, cudaStream_t stream);

/* ---- elementwise.cu -------------------------------------------------------------------- */

/* out[i] = gate[i] / (1 + exp(-gate[i])) * up[i]. `out` may equal `gate` or `up`. */
strata_status strata_silu_mul_f32(const float *gate, const float *up, int64_t n, float *out,
                                  cudaStream_t stream);

/* out[i] = a[i] + b[i]. `out` may equal `a` or `b`. */
strata_status strata_add_f32(const float *a, const float *b, int64_t n, float *out,
                             cudaStream_t stream);

/* out[i] = x[i] * s. `out` may equal `x`. */
strata_status strata_scale_f32(const float *x, float s, int64_t n, float *out,
                               cudaStream_t stream);

/* ---- softmax.cu ------------------------------------------------------------------------ */

/* Row-wise softmax over x[rows][cols]: out = exp(x - max) / sum. `out` may equal `x`. */
strata_status strata_softmax_rows_f32(const float *x, int64_t rows, int64_t cols, float *out,
                                      cudaStream_t stream);

/* out[r] = the smallest index of the largest non-NaN value of row r (0 if all are NaN). */
strata_status strata_argmax_rows_f32(const float *x, int64_t rows, int64_t cols, int32_t *out,
                                     cudaStream_t stream);

#ifdef __cplusplus
}
#endif

#endif /* STRATA_H */
