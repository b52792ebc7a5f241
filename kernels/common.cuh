// common.cuh — helpers shared by strata's kernels: argument checks, grid sizing, warp and
// block reductions, and the per-type weight decoders every op family uses.
//
// The decoders work on "chunks" of 32 consecutive values of a row (one quant block, or 32
// plain floats), split into four "parts" of 8 values so that four threads share a chunk.
// For the types that split a block's 16 bytes into low and high nibbles (Q4_0, Q4_1, Q5_0,
// Q5_1, IQ4_NL, and IQ4_XS's sub-blocks), part p holds values {4p..4p+3} (low nibbles of qs
// word p) and {16+4p..16+4p+3} (its high nibbles); for every other type, part p holds values
// 8p..8p+7. The K-quants and IQ4_XS have 256-value super-blocks: chunk c of a row is
// sub-block c % 8 of super-block c / 8, so one chunk still has one scale (and one min) per
// part: parts of 8 never straddle the 16-value sub-blocks of Q2_K, Q3_K and Q6_K.
// `part_index(dtype, p, k)` gives the position in the chunk of the k-th value of part p.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

#include "strata.h"

namespace strata {

constexpr int kWarp = 32;
// Grid-stride loops cover any amount of work; this caps the grid (well under every device's
// gridDim.x limit of 2^31-1) so that huge inputs do not launch millions of tiny blocks.
constexpr int64_t kMaxBlocks = 1 << 16;

__host__ inline unsigned grid_for(int64_t work_items, int items_per_block) {
    int64_t blocks = (work_items + items_per_block - 1) / items_per_block;
    if (blocks < 1) blocks = 1;
    if (blocks > kMaxBlocks) blocks = kMaxBlocks;
    return (unsigned)blocks;
}

#define STRATA_CHECK_ARG(cond)                                                                 \
    do {                                                                                       \
        if (!(cond)) return STRATA_ERR_INVALID_VALUE;                                          \
    } while (0)

// The quantized weight types, X(suffix, dtype) each, in one order: every kernel family is
// instantiated from this list (kernel names end in the suffix, as Nsight shows them) and its
// launcher's switch is built from it, so a new type is added here once.
#define STRATA_QUANT_DTYPES(X)                                                                 \
    X(q8_0, STRATA_DTYPE_Q8_0)                                                                 \
    X(q4_0, STRATA_DTYPE_Q4_0)                                                                 \
    X(q4_1, STRATA_DTYPE_Q4_1)                                                                 \
    X(q5_0, STRATA_DTYPE_Q5_0)                                                                 \
    X(q5_1, STRATA_DTYPE_Q5_1)                                                                 \
    X(iq4_nl, STRATA_DTYPE_IQ4_NL)                                                             \
    X(q2_k, STRATA_DTYPE_Q2_K)                                                                 \
    X(q3_k, STRATA_DTYPE_Q3_K)                                                                 \
    X(q4_k, STRATA_DTYPE_Q4_K)                                                                 \
    X(q5_k, STRATA_DTYPE_Q5_K)                                                                 \
    X(q6_k, STRATA_DTYPE_Q6_K)                                                                 \
    X(iq4_xs, STRATA_DTYPE_IQ4_XS)

// Every weight type: the plain float ones, then the quantized ones.
#define STRATA_WEIGHT_DTYPES(X)                                                                \
    X(f32, STRATA_DTYPE_F32)                                                                   \
    X(f16, STRATA_DTYPE_F16)                                                                   \
    X(bf16, STRATA_DTYPE_BF16)                                                                 \
    STRATA_QUANT_DTYPES(X)

__host__ __device__ constexpr bool is_k_quant(strata_dtype t) {
    return t == STRATA_DTYPE_Q2_K || t == STRATA_DTYPE_Q3_K || t == STRATA_DTYPE_Q4_K ||
           t == STRATA_DTYPE_Q5_K || t == STRATA_DTYPE_Q6_K || t == STRATA_DTYPE_IQ4_XS;
}

__host__ __device__ constexpr bool is_quantized(strata_dtype t) {
    return t == STRATA_DTYPE_Q4_0 || t == STRATA_DTYPE_Q4_1 || t == STRATA_DTYPE_Q8_0 ||
           t == STRATA_DTYPE_Q5_0 || t == STRATA_DTYPE_Q5_1 || t == STRATA_DTYPE_IQ4_NL ||
           is_k_quant(t);
}

// Types whose values are q * scale + offset with a per-block offset (a min): dot products need
// the sum of x as well, and dequantization adds the offset after the product.
__host__ __device__ constexpr bool has_offset(strata_dtype t) {
    return t == STRATA_DTYPE_Q4_1 || t == STRATA_DTYPE_Q5_1 || t == STRATA_DTYPE_Q2_K ||
           t == STRATA_DTYPE_Q4_K || t == STRATA_DTYPE_Q5_K;
}

__host__ inline bool is_weight_dtype(strata_dtype t) {
    return t == STRATA_DTYPE_F32 || t == STRATA_DTYPE_F16 || t == STRATA_DTYPE_BF16 ||
           is_quantized(t);
}

// Bytes of one row of `cols` values, or -1 if cols does not fit the type's blocks.
__host__ inline int64_t row_bytes(strata_dtype t, int64_t cols) {
    switch (t) {
    case STRATA_DTYPE_F32: return cols * 4;
    case STRATA_DTYPE_F16:
    case STRATA_DTYPE_BF16: return cols * 2;
    case STRATA_DTYPE_Q8_0:
        return cols % STRATA_QK ? -1 : cols / STRATA_QK * (int64_t)sizeof(strata_block_q8_0);
    case STRATA_DTYPE_Q4_0:
        return cols % STRATA_QK ? -1 : cols / STRATA_QK * (int64_t)sizeof(strata_block_q4_0);
    case STRATA_DTYPE_Q4_1:
        return cols % STRATA_QK ? -1 : cols / STRATA_QK * (int64_t)sizeof(strata_block_q4_1);
    case STRATA_DTYPE_Q5_0:
        return cols % STRATA_QK ? -1 : cols / STRATA_QK * (int64_t)sizeof(strata_block_q5_0);
    case STRATA_DTYPE_Q5_1:
        return cols % STRATA_QK ? -1 : cols / STRATA_QK * (int64_t)sizeof(strata_block_q5_1);
    case STRATA_DTYPE_IQ4_NL:
        return cols % STRATA_QK ? -1 : cols / STRATA_QK * (int64_t)sizeof(strata_block_iq4_nl);
    case STRATA_DTYPE_Q2_K:
        return cols % STRATA_QK_K ? -1 : cols / STRATA_QK_K * (int64_t)sizeof(strata_block_q2_k);
    case STRATA_DTYPE_Q3_K:
        return cols % STRATA_QK_K ? -1 : cols / STRATA_QK_K * (int64_t)sizeof(strata_block_q3_k);
    case STRATA_DTYPE_Q4_K:
        return cols % STRATA_QK_K ? -1 : cols / STRATA_QK_K * (int64_t)sizeof(strata_block_q4_k);
    case STRATA_DTYPE_Q5_K:
        return cols % STRATA_QK_K ? -1 : cols / STRATA_QK_K * (int64_t)sizeof(strata_block_q5_k);
    case STRATA_DTYPE_Q6_K:
        return cols % STRATA_QK_K ? -1 : cols / STRATA_QK_K * (int64_t)sizeof(strata_block_q6_k);
    case STRATA_DTYPE_IQ4_XS:
        return cols % STRATA_QK_K ? -1 : cols / STRATA_QK_K * (int64_t)sizeof(strata_block_iq4_xs);
    }
    return -1;
}

__host__ inline strata_status launch_status() { return (strata_status)cudaGetLastError(); }

// ---- gated activations (the FFN's act(gate) * up) ----------------------------------------

// silu(g) * u = g / (1 + expf(-g)) * u (as llama.cpp writes it), and gelu_tanh(g) * u = 0.5 g (1 +
// tanhf(sqrt(2/pi) g (1 + 0.044715 g^2))) * u: each product rounded on its own (_rn intrinsics,
// no contraction to fma) in the CPU reference's order (src/cpu/elementwise.rs), so only expf /
// tanhf differ from libm. Shared by elementwise.cu and the fused gate/up matvec (fused_q8.cu),
// which therefore give the same bits for the same gate and up.
__device__ __forceinline__ float silu_times(float g, float u) {
    return __fmul_rn(__fdiv_rn(g, __fadd_rn(1.0f, expf(-g))), u);
}

// The constants of the CPU reference, as f32.
constexpr float kGeluSqrt2OverPi = 0.7978846f;
constexpr float kGeluCoefA = 0.044715f;

__device__ __forceinline__ float gelu_tanh_times(float g, float u) {
    const float cube = __fadd_rn(1.0f, __fmul_rn(__fmul_rn(kGeluCoefA, g), g));
    const float t = tanhf(__fmul_rn(__fmul_rn(kGeluSqrt2OverPi, g), cube));
    return __fmul_rn(__fmul_rn(__fmul_rn(0.5f, g), __fadd_rn(1.0f, t)), u);
}

// ---- reductions ------------------------------------------------------------------------

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
    for (int o = kWarp / 2; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

// Sum over the whole block (blockDim.x a multiple of 32, at most 1024). Every thread gets the
// result. `scratch` holds 32 floats of shared memory; it may be reused after the call.
__device__ __forceinline__ float block_sum(float v, float *scratch) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int n_warps = blockDim.x / kWarp;
    v = warp_sum(v);
    __syncthreads();  // scratch may still be read by a previous reduction
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : 0.0f;
    return warp_sum(v);
}

__device__ __forceinline__ float block_max(float v, float *scratch) {
    const int lane = threadIdx.x % kWarp, warp = threadIdx.x / kWarp;
    const int n_warps = blockDim.x / kWarp;
    v = warp_max(v);
    __syncthreads();
    if (lane == 0) scratch[warp] = v;
    __syncthreads();
    v = lane < n_warps ? scratch[lane] : -INFINITY;
    return warp_max(v);
}

// ---- loads -----------------------------------------------------------------------------

__device__ __forceinline__ float half_bits_to_float(uint16_t bits) {
    return __half2float(__ushort_as_half(bits));
}

__device__ __forceinline__ float bf16_bits_to_float(uint16_t bits) {
    return __uint_as_float((uint32_t)bits << 16);
}

// A 4-byte word at a 2-byte aligned address (quant blocks are only 2-byte aligned).
__device__ __forceinline__ uint32_t load_u32_a2(const uint8_t *p) {
    const uint16_t *h = reinterpret_cast<const uint16_t *>(p);
    return (uint32_t)__ldg(h) | ((uint32_t)__ldg(h + 1) << 16);
}

__device__ __forceinline__ bool aligned16(const void *p) {
    return ((uintptr_t)p & 15) == 0;
}

__device__ __forceinline__ uint16_t load_u16(const uint8_t *p) {
    return __ldg(reinterpret_cast<const uint16_t *>(p));
}

// Turns byte k (0..3) of w, a value 0..255, into a float exactly without the slow I2F path:
// 0x4B0000bb is the float 2^23 + bb, so subtracting `bias` = 2^23 + offset gives bb - offset.
// (Exact: every intermediate is an integer below 2^24.)
template <int k>
__device__ __forceinline__ float byte_to_float(uint32_t w, float bias) {
    return __uint_as_float(__byte_perm(w, 0x4B000000u, 0x7650 | k)) - bias;
}

constexpr float kTwo23 = 8388608.0f;

// ---- weight decoders ---------------------------------------------------------------------

// Types whose 32-value chunks keep the first 16 values in the low nibbles of 16 bytes and the
// last 16 in the high nibbles (Q4_0's order).
__host__ __device__ constexpr bool nibble_split(strata_dtype t) {
    return t == STRATA_DTYPE_Q4_0 || t == STRATA_DTYPE_Q4_1 || t == STRATA_DTYPE_Q5_0 ||
           t == STRATA_DTYPE_Q5_1 || t == STRATA_DTYPE_IQ4_NL || t == STRATA_DTYPE_IQ4_XS;
}

// Position in a 32-value chunk of the k-th value of part p (see the file comment).
__host__ __device__ __forceinline__ int part_index(strata_dtype t, int p, int k) {
    if (nibble_split(t)) return k < 4 ? 4 * p + k : 16 + 4 * p + (k - 4);
    return 8 * p + k;
}

// Decoder<T> reads part p of chunk c of `row` (a row of `cols` values of type T) in two steps
// so that callers can issue many loads before using any (memory-level parallelism):
//   load_raw(row, c, p, cols) -> Raw      only global loads, no arithmetic on the data;
//   decode(raw, q, scale, offset)         v[k] = q[k] * scale + offset for the 8 values.
// Dot products factor the scale out of the sum:
//   sum_k v[k] x[k] = scale * sum_k q[k] x[k] + offset * sum_k x[k].
// For plain float types scale = 1, offset = 0 and q = the values. Values past `cols` in the
// last chunk of a plain-float row decode as 0 (quantized rows have no partial chunks).
// load(...) does both steps.
template <strata_dtype T>
struct Decoder;

// Eight byte values 0..255 (four in each word, little-endian order) minus (bias - 2^23).
__device__ __forceinline__ void bytes_to_float(uint32_t lo, uint32_t hi, float bias, float q[8]) {
    q[0] = byte_to_float<0>(lo, bias);
    q[1] = byte_to_float<1>(lo, bias);
    q[2] = byte_to_float<2>(lo, bias);
    q[3] = byte_to_float<3>(lo, bias);
    q[4] = byte_to_float<0>(hi, bias);
    q[5] = byte_to_float<1>(hi, bias);
    q[6] = byte_to_float<2>(hi, bias);
    q[7] = byte_to_float<3>(hi, bias);
}

// Q4 nibbles of one qs word: low nibbles are values 4p..4p+3, high nibbles 16+4p..16+4p+3.
__device__ __forceinline__ void nibbles_to_float(uint32_t w, float bias, float q[8]) {
    bytes_to_float(w & 0x0F0F0F0Fu, (w >> 4) & 0x0F0F0F0Fu, bias, q);
}

template <>
struct Decoder<STRATA_DTYPE_Q4_0> {
    static constexpr int64_t kChunkBytes = sizeof(strata_block_q4_0);
    struct Raw {
        uint16_t d;
        uint32_t w;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        const uint8_t *b = row + c * kChunkBytes;
        return Raw{load_u16(b), load_u32_a2(b + 2 + 4 * p)};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        scale = half_bits_to_float(r.d);
        offset = 0.0f;
        nibbles_to_float(r.w, kTwo23 + 8.0f, q);  // q - 8
    }
};

template <>
struct Decoder<STRATA_DTYPE_Q4_1> {
    static constexpr int64_t kChunkBytes = sizeof(strata_block_q4_1);
    struct Raw {
        uint32_t dm;
        uint32_t w;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        const uint8_t *b = row + c * kChunkBytes;
        // 20-byte blocks: 4-byte aligned whenever the row is, so single 32-bit loads.
        if (((uintptr_t)b & 3) == 0)
            return Raw{__ldg(reinterpret_cast<const uint32_t *>(b)),
                       __ldg(reinterpret_cast<const uint32_t *>(b + 4 + 4 * p))};
        return Raw{load_u32_a2(b), load_u32_a2(b + 4 + 4 * p)};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        scale = half_bits_to_float((uint16_t)(r.dm & 0xFFFF));
        offset = half_bits_to_float((uint16_t)(r.dm >> 16));
        nibbles_to_float(r.w, kTwo23, q);
    }
};

template <>
struct Decoder<STRATA_DTYPE_Q8_0> {
    static constexpr int64_t kChunkBytes = sizeof(strata_block_q8_0);
    struct Raw {
        uint16_t d;
        uint32_t w0, w1;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        const uint8_t *b = row + c * kChunkBytes;
        return Raw{load_u16(b), load_u32_a2(b + 2 + 8 * p), load_u32_a2(b + 2 + 8 * p + 4)};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        scale = half_bits_to_float(r.d);
        offset = 0.0f;
        // Flipping the sign bit maps int8 -128..127 to 0..255; the bias undoes it.
        const uint32_t w0 = r.w0 ^ 0x80808080u, w1 = r.w1 ^ 0x80808080u;
        const float bias = kTwo23 + 128.0f;
        q[0] = byte_to_float<0>(w0, bias);
        q[1] = byte_to_float<1>(w0, bias);
        q[2] = byte_to_float<2>(w0, bias);
        q[3] = byte_to_float<3>(w0, bias);
        q[4] = byte_to_float<0>(w1, bias);
        q[5] = byte_to_float<1>(w1, bias);
        q[6] = byte_to_float<2>(w1, bias);
        q[7] = byte_to_float<3>(w1, bias);
    }
};

template <>
struct Decoder<STRATA_DTYPE_F32> {
    static constexpr int64_t kChunkBytes = 32 * 4;
    struct Raw {
        float v[8];
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t cols) {
        Raw r;
        const float *f = reinterpret_cast<const float *>(row);
        const int64_t i0 = c * 32 + 8 * p;
        if (i0 + 8 <= cols && aligned16(f + i0)) {
            const float4 a = __ldg(reinterpret_cast<const float4 *>(f + i0));
            const float4 b = __ldg(reinterpret_cast<const float4 *>(f + i0) + 1);
            r.v[0] = a.x, r.v[1] = a.y, r.v[2] = a.z, r.v[3] = a.w;
            r.v[4] = b.x, r.v[5] = b.y, r.v[6] = b.z, r.v[7] = b.w;
            return r;
        }
#pragma unroll
        for (int k = 0; k < 8; ++k) r.v[k] = i0 + k < cols ? __ldg(f + i0 + k) : 0.0f;
        return r;
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        scale = 1.0f;
        offset = 0.0f;
#pragma unroll
        for (int k = 0; k < 8; ++k) q[k] = r.v[k];
    }
};

// F16 and BF16 rows: 8 values are one 16-byte load when aligned (raw bits, converted later).
template <strata_dtype T>
struct Decoder16 {
    static constexpr int64_t kChunkBytes = 32 * 2;
    struct Raw {
        uint32_t w[4];
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t cols) {
        Raw r;
        const uint16_t *h = reinterpret_cast<const uint16_t *>(row);
        const int64_t i0 = c * 32 + 8 * p;
        if (i0 + 8 <= cols && aligned16(h + i0)) {
            const uint4 w = __ldg(reinterpret_cast<const uint4 *>(h + i0));
            r.w[0] = w.x, r.w[1] = w.y, r.w[2] = w.z, r.w[3] = w.w;
            return r;
        }
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            const uint32_t a = i0 + 2 * k < cols ? __ldg(h + i0 + 2 * k) : 0;
            const uint32_t b = i0 + 2 * k + 1 < cols ? __ldg(h + i0 + 2 * k + 1) : 0;
            r.w[k] = a | (b << 16);
        }
        return r;
    }
    __device__ __forceinline__ static float cvt(uint16_t bits) {
        return T == STRATA_DTYPE_F16 ? half_bits_to_float(bits) : bf16_bits_to_float(bits);
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        scale = 1.0f;
        offset = 0.0f;
#pragma unroll
        for (int k = 0; k < 4; ++k) {
            q[2 * k] = cvt((uint16_t)(r.w[k] & 0xFFFF));
            q[2 * k + 1] = cvt((uint16_t)(r.w[k] >> 16));
        }
    }
};

template <>
struct Decoder<STRATA_DTYPE_F16> : Decoder16<STRATA_DTYPE_F16> {};
template <>
struct Decoder<STRATA_DTYPE_BF16> : Decoder16<STRATA_DTYPE_BF16> {};

// Both steps at once.
template <strata_dtype T>
__device__ __forceinline__ void decode_part(const uint8_t *row, int64_t c, int p, int64_t cols, float q[8],
                                            float &scale, float &offset) {
    Decoder<T>::decode(Decoder<T>::load_raw(row, c, p, cols), q, scale, offset);
}

// Dequantized value from the decoder's outputs, rounded exactly like the CPU reference:
// q * scale, then + offset, with no fused multiply-add (nvcc would otherwise contract it).
__device__ __forceinline__ float dequant_value(float q, float scale, float offset, bool has_offset) {
    const float v = __fmul_rn(q, scale);
    return has_offset ? __fadd_rn(v, offset) : v;
}

}  // namespace strata

// The decoders of the types added with the K-quants (they use the helpers above).
#include "decoders_quant.cuh"
