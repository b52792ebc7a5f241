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
 *   a quantized row is cols/32 consecutive blocks (cols/256 super-blocks for the K-quants and
 *   IQ4_XS), so cols must be a multiple of 32 (256) there.
 * - The weight launchers (dequantize, embedding gather, matvec, matmul) return
 *   STRATA_ERR_INVALID_VALUE for a dtype they have no kernel for; the Rust side checks first
 *   and names the type (`cuda::supports`).
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

/* Weights per quantization block (GGUF's QK4_0 = QK4_1 = QK5_0 = QK5_1 = QK8_0 = QK4_NL = 32). */
#define STRATA_QK 32
/* Weights per super-block of the K-quants and IQ4_XS (GGUF's QK_K). */
#define STRATA_QK_K 256
/* Bytes of packed 6-bit scales and mins in a Q4_K/Q5_K super-block. */
#define STRATA_K_SCALE_SIZE 12

/* Weight and cache types. The values are GGUF's ggml_type ids. */
typedef enum strata_dtype {
    STRATA_DTYPE_F32 = 0,
    STRATA_DTYPE_F16 = 1,
    STRATA_DTYPE_Q4_0 = 2,
    STRATA_DTYPE_Q4_1 = 3,
    STRATA_DTYPE_Q5_0 = 6,
    STRATA_DTYPE_Q5_1 = 7,
    STRATA_DTYPE_Q8_0 = 8,
    STRATA_DTYPE_Q2_K = 10,
    STRATA_DTYPE_Q3_K = 11,
    STRATA_DTYPE_Q4_K = 12,
    STRATA_DTYPE_Q5_K = 13,
    STRATA_DTYPE_Q6_K = 14,
    STRATA_DTYPE_IQ4_NL = 20,
    STRATA_DTYPE_IQ4_XS = 23,
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

/* The layouts below are GGUF's (ggml-common.h); src/quant.rs has the reference dequantization
 * of each, operation for operation as llama.cpp's dequantize_row_*. Half-precision fields are
 * IEEE binary16 bits. All are 2-byte aligned. */

/* Q5_0: q = (qs[j] & 15) | (bit j of qh as a little-endian u32) << 4 for value j < 16,
 * (qs[j] >> 4) | (bit j + 16) << 4 for value j + 16; value = (q - 16) * d. 22 bytes. */
typedef struct strata_block_q5_0 {
    uint16_t d;
    uint8_t qh[4];
    uint8_t qs[STRATA_QK / 2];
} strata_block_q5_0;

/* Q5_1: the 5-bit q of Q5_0, value = q * d + m. 24 bytes. */
typedef struct strata_block_q5_1 {
    uint16_t d;
    uint16_t m;
    uint8_t qh[4];
    uint8_t qs[STRATA_QK / 2];
} strata_block_q5_1;

/* Q2_K: 16 sub-blocks of 16. scales[s] = 4-bit scale | 4-bit min << 4. Value 128h + 32k + l
 * (h < 2, k < 4, l < 32) is q = (qs[32h + l] >> 2k) & 3 in sub-block s = 8h + 2k + l/16:
 * value = (d * sc) * q - (dmin * min). 84 bytes. */
typedef struct strata_block_q2_k {
    uint8_t scales[STRATA_QK_K / 16];
    uint8_t qs[STRATA_QK_K / 4];
    uint16_t d;
    uint16_t dmin;
} strata_block_q2_k;

/* Q3_K: 16 sub-blocks of 16 with 6-bit scales stored + 32 (low nibble of scales[j] for
 * j < 8, high nibble of scales[j - 8] for j >= 8; high 2 bits at scales[8 + j%4] >> 2(j/4)).
 * q as in Q2_K minus 4 unless bit (v / 32) of hmask[v % 32] is set:
 * value = (d * (sc - 32)) * q. 110 bytes. */
typedef struct strata_block_q3_k {
    uint8_t hmask[STRATA_QK_K / 8];
    uint8_t qs[STRATA_QK_K / 4];
    uint8_t scales[12];
    uint16_t d;
} strata_block_q3_k;

/* Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins (get_scale_min_k4 in ggml): sub-block
 * s < 4 has sc = scales[s] & 63, min = scales[s + 4] & 63; s >= 4 has
 * sc = (scales[s + 4] & 15) | (scales[s - 4] >> 6) << 4, min = (scales[s + 4] >> 4) |
 * (scales[s] >> 6) << 4. Sub-block s is nibble s % 2 of qs[32(s/2) ..+32]:
 * value = (d * sc) * q - (dmin * min). 144 bytes. */
typedef struct strata_block_q4_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[STRATA_K_SCALE_SIZE];
    uint8_t qs[STRATA_QK_K / 2];
} strata_block_q4_k;

/* Q5_K: Q4_K plus a fifth bit, bit s of qh[l] for value l of sub-block s. 176 bytes. */
typedef struct strata_block_q5_k {
    uint16_t d;
    uint16_t dmin;
    uint8_t scales[STRATA_K_SCALE_SIZE];
    uint8_t qh[STRATA_QK_K / 8];
    uint8_t qs[STRATA_QK_K / 2];
} strata_block_q5_k;

/* Q6_K: 16 sub-blocks of 16 with int8 scales. Value 128h + 32k + l: low nibble (k < 2) or
 * high nibble (k >= 2) of ql[64h + 32(k % 2) + l], high bits (qh[32h + l] >> 2k) & 3:
 * value = (d * scales[v / 16]) * (q - 32). 210 bytes. */
typedef struct strata_block_q6_k {
    uint8_t ql[STRATA_QK_K / 2];
    uint8_t qh[STRATA_QK_K / 4];
    int8_t scales[STRATA_QK_K / 16];
    uint16_t d;
} strata_block_q6_k;

/* IQ4_NL: Q4_0's nibble order; value = d * kvalues[q] with kvalues = {-127, -104, -83, -65,
 * -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113}. 18 bytes. */
typedef struct strata_block_iq4_nl {
    uint16_t d;
    uint8_t qs[STRATA_QK / 2];
} strata_block_iq4_nl;

/* IQ4_XS: 8 IQ4_NL-like sub-blocks of 32 (16 bytes of qs each) with 6-bit scales stored + 32
 * (low 4 bits: scales_l[i/2] >> 4(i%2), high 2 bits: scales_h >> 2i):
 * value = (d * (ls - 32)) * kvalues[q]. 136 bytes. */
typedef struct strata_block_iq4_xs {
    uint16_t d;
    uint16_t scales_h;
    uint8_t scales_l[STRATA_QK_K / 64];
    uint8_t qs[STRATA_QK_K / 2];
} strata_block_iq4_xs;

STRATA_STATIC_ASSERT(sizeof(strata_block_q8_0) == 34, "Q8_0 block must be 34 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q4_0) == 18, "Q4_0 block must be 18 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q4_1) == 20, "Q4_1 block must be 20 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q5_0) == 22, "Q5_0 block must be 22 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q5_1) == 24, "Q5_1 block must be 24 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q2_k) == 84, "Q2_K block must be 84 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q3_k) == 110, "Q3_K block must be 110 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q4_k) == 144, "Q4_K block must be 144 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q5_k) == 176, "Q5_K block must be 176 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_q6_k) == 210, "Q6_K block must be 210 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_iq4_nl) == 18, "IQ4_NL block must be 18 bytes");
STRATA_STATIC_ASSERT(sizeof(strata_block_iq4_xs) == 136, "IQ4_XS block must be 136 bytes");

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

/* ---- matvec_q8.cu (the "next" kernel set, STRATA_GPU_KERNELS=next) --------------------- */

/* Bytes of the 8-bit activation buffer of a matvec with `cols` columns of quantized `dtype`
 * (its blocks of 32 or, for the K-quants and IQ4_XS, 256 values, with their scales and sums),
 * or -1 if `dtype` is not quantized or `cols` is not a whole number of its blocks. */
int64_t strata_act_q8_bytes(strata_dtype dtype, int64_t cols);

/* Quantizes x (`cols` f32) into `act` (16-byte aligned, strata_act_q8_bytes long) with the CPU
 * fast path's rounding for weights of `dtype`. */
strata_status strata_quantize_act_q8(strata_dtype dtype, const float *x, int64_t cols, void *act,
                                     cudaStream_t stream);

/* Decode with 8-bit activations: y[r] = sum_c w[r][c] * x'[c], x' the values `act` holds
 * (strata_quantize_act_q8 of the same dtype and cols); integer dot products (dp4a). */
strata_status strata_matvec_q8(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
                               const void *act, float *y, cudaStream_t stream);

/* strata_matvec_q8 with the residual add in its epilogue: y[r] = add[r] + sum_c w[r][c] * x'[c];
 * `add` (not null) may be `y` itself. */
strata_status strata_matvec_q8_add(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
                                   const void *act, const float *add, float *y, cudaStream_t stream);

/* Host twins of the two above: the same per-block arithmetic on the CPU (no GPU needed), for
 * the tests that check every type's decoding against the CPU fast path. Host pointers. */
strata_status strata_quantize_act_q8_host(strata_dtype dtype, const float *x, int64_t cols,
                                          void *act);
strata_status strata_matvec_q8_host(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
                                    const void *act, float *y);

/* ---- fused_q8.cu (the "next" kernel set's fused decode ops) ----------------------------- */

/* RMSNorm of one row and its 8-bit activations in one launch: out = strata_rmsnorm_f32 of x
 * (bit for bit) and act = strata_quantize_act_q8(dtype, out) (byte for byte); `act` 16-byte
 * aligned, strata_act_q8_bytes(dtype, cols) long. */
strata_status strata_rmsnorm_quantize_q8(strata_dtype dtype, const float *x, const float *weight,
                                         int64_t cols, float eps, float *out, void *act,
                                         cudaStream_t stream);

/* The FFN's gate and up matvecs and the gated activation in one launch: out[r] = act(g_r) * u_r
 * with g = W_gate x', u = W_up x' (both `dtype`, [rows][cols], on the activations `act` of
 * strata_quantize_act_q8) and act SiLU (gelu = 0) or GELU with the tanh approximation (1). */
strata_status strata_matvec_q8_glu(strata_dtype dtype, const void *w_gate, const void *w_up,
                                   int64_t rows, int64_t cols, const void *act, int32_t gelu,
                                   float *out, cudaStream_t stream);

/* ---- matmul.cu ------------------------------------------------------------------------- */

/* Prefill: y[t][r] = sum_c x[t][c] * w[r][c] (Y = X W^T) for t in 0..n_tokens;
 * x is [n_tokens][cols], y is [n_tokens][rows]. */
strata_status strata_matmul_f32(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
                                const float *x, int64_t n_tokens, float *y,
                                cudaStream_t stream);

/* ---- matmul_tc.cu (the "next" kernel set, STRATA_GPU_KERNELS=next) --------------------- */

/* Prefill like strata_matmul_f32 on tensor cores: the weights dequantized as there, both
 * inputs rounded to TF32 (10 mantissa bits), f32 accumulation. Needs compute capability 8.0
 * (STRATA_ERR_INVALID_VALUE below it). */
strata_status strata_matmul_tc_f32(strata_dtype dtype, const void *w, int64_t rows, int64_t cols,
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
 * head_dim at most 256. Scores are (q . k) * scale, softmax in f32, out = sum softmax * v.
 * `window` > 0 is a sliding window: the query at position p attends only positions
 * p+1-window..=p (llama.cpp's standard SWA); 0 is no window. */

/* Decode: q and out are [n_heads][head_dim]; attends cache positions 0..n_kv-1. */
strata_status strata_attention_decode_f32(const float *q, strata_dtype cache_dtype,
                                          const void *k_cache, const void *v_cache,
                                          int64_t n_heads, int64_t n_kv_heads,
                                          int64_t head_dim, int64_t n_kv, float scale,
                                          int64_t window, float *out, cudaStream_t stream);

/* The "next" decode attention (STRATA_GPU_KERNELS=next, attention_split.cu): the same result
 * as strata_attention_decode_f32 up to the order of f32 sums, computed as flash-decoding (the
 * visible rows cut into splits of 256 positions, one block per (kv head, split) sharing K/V
 * loads across the group's query heads, then one combine). `scratch` (device, 16-byte aligned)
 * holds strata_attention_split_bytes(n_heads, head_dim, n_kv, window) bytes of partials; that
 * function returns -1 for arguments the launcher refuses. */
int64_t strata_attention_split_bytes(int64_t n_heads, int64_t head_dim, int64_t n_kv, int64_t window);
strata_status strata_attention_decode_split_f32(const float *q, strata_dtype cache_dtype,
                                                const void *k_cache, const void *v_cache,
                                                int64_t n_heads, int64_t n_kv_heads,
                                                int64_t head_dim, int64_t n_kv, float scale,
                                                int64_t window, void *scratch, float *out,
                                                cudaStream_t stream);

/* The same, for a CUDA graph of the decode step: the query's position is read on the device
 * from position[0] (one int32), and it attends rows 0..=position[0] (at most cache_rows), so a
 * captured launch stays valid as the position moves. `scratch` holds
 * strata_attention_split_bytes(n_heads, head_dim, cache_rows, window) bytes. */
strata_status strata_attention_decode_split_at_f32(const float *q, strata_dtype cache_dtype,
                                                   const void *k_cache, const void *v_cache,
                                                   int64_t n_heads, int64_t n_kv_heads,
                                                   int64_t head_dim, const int32_t *position,
                                                   int64_t cache_rows, float scale, int64_t window,
                                                   void *scratch, float *out, cudaStream_t stream);

/* Prefill: q and out are [n_tokens][n_heads][head_dim]; token t is at position pos0 + t and
 * attends cache positions 0..=pos0+t (causal). The cache must already hold those rows. */
strata_status strata_attention_prefill_f32(const float *q, int64_t n_tokens, int64_t pos0,
                                           strata_dtype cache_dtype, const void *k_cache,
                                           const void *v_cache, int64_t n_heads,
                                           int64_t n_kv_heads, int64_t head_dim, float scale,
                                           int64_t window, float *out, cudaStream_t stream);

/* ---- attention_tiled.cu ------------------------------------------------------------------ */

/* The `next` kernel set's prefill attention: the same contract as
 * strata_attention_prefill_f32, computed in tiles of 16 tokens of one head that share each
 * 32-row K/V tile in shared memory (raises the kernel's dynamic shared-memory limit to 82 KiB
 * for head_dim > 128, within every sm_80+ device's). */
strata_status strata_attention_prefill_tiled_f32(const float *q, int64_t n_tokens, int64_t pos0,
                                                 strata_dtype cache_dtype, const void *k_cache,
                                                 const void *v_cache, int64_t n_heads,
                                                 int64_t n_kv_heads, int64_t head_dim,
                                                 float scale, int64_t window, float *out,
                                                 cudaStream_t stream);

/* ---- attention_mma.cu ------------------------------------------------------------------- */

/* The `next` kernel set's prefill attention on tensor cores: the same contract as
 * strata_attention_prefill_f32, computed flash-attention style with mma.sync (Q and the softmax
 * weights rounded to f16, f32 accumulation and softmax) in blocks of 64 query rows of one kv
 * head's GQA group. Covers an F16 cache with head_dim 64, 128 or 256 on compute capability 8.0+
 * (16-byte aligned caches, 8-byte aligned q and out); every other case runs
 * strata_attention_prefill_tiled_f32. */
strata_status strata_attention_prefill_mma_f32(const float *q, int64_t n_tokens, int64_t pos0,
                                               strata_dtype cache_dtype, const void *k_cache,
                                               const void *v_cache, int64_t n_heads,
                                               int64_t n_kv_heads, int64_t head_dim, float scale,
                                               int64_t window, float *out, cudaStream_t stream);

/* ---- paged_attention.cu ---------------------------------------------------------------- */

/* Attention for a batch of sequences of different lengths over a paged KV cache (one
 * continuous-batching pass). q and out are [n_rows][n_heads][head_dim] f32; the caches are
 * [cache_rows][n_kv_heads][head_dim] of `cache_dtype` (F32 or F16) in blocks of block_size
 * rows. Row r is the query at logical position positions[r]; its sequence's block table
 * starts at tables[table_start[r]] (tables holds n_table entries), and logical position p
 * lives in cache row tables[table_start[r] + p / block_size] * block_size + p % block_size.
 * The row attends positions 0..=positions[r], or with `window` > 0 only the last `window`.
 * head_dim at most 256. A table entry or block out of range makes that row's output NaN. */
strata_status strata_paged_attention_f32(const float *q, int64_t n_rows, const int32_t *positions,
                                         const int32_t *table_start, const int32_t *tables,
                                         int64_t n_table, int64_t block_size,
                                         strata_dtype cache_dtype, const void *k_cache,
                                         const void *v_cache, int64_t cache_rows,
                                         int64_t n_heads, int64_t n_kv_heads, int64_t head_dim,
                                         float scale, int64_t window, float *out,
                                         cudaStream_t stream);

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

/* out[i] = gelu_tanh(gate[i]) * up[i], gelu_tanh(x) = 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715
 * x^3))) (Gemma's GeGLU FFN). `out` may equal `gate` or `up`. */
strata_status strata_gelu_mul_f32(const float *gate, const float *up, int64_t n, float *out,
                                  cudaStream_t stream);

/* out[i] = a[i] + b[i]. `out` may equal `a` or `b`. */
strata_status strata_add_f32(const float *a, const float *b, int64_t n, float *out,
                             cudaStream_t stream);

/* out[r][c] = x[r][c] + bias[c] for x[rows][cols] (a bias broadcast over tokens). `out` may
 * equal `x`. */
strata_status strata_add_bias_f32(const float *x, const float *bias, int64_t rows, int64_t cols,
                                  float *out, cudaStream_t stream);

/* out[i] = x[i] * s. `out` may equal `x`. */
strata_status strata_scale_f32(const float *x, float s, int64_t n, float *out,
                               cudaStream_t stream);

/* ---- moe.cu ---------------------------------------------------------------------------- */

/* out[rows[i]][c] += weights[i] * src[i][c] for i < n, c < cols: one expert's outputs added into
 * the rows of the tokens routed to it. `rows` must be distinct (no atomics); a row outside
 * 0..out_rows is skipped. */
strata_status strata_scatter_add_scaled_f32(const float *src, const int32_t *rows,
                                            const float *weights, int64_t n, int64_t cols,
                                            int64_t out_rows, float *out, cudaStream_t stream);

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
