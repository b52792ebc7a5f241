// matvec_q8.cuh — what the "next" decode matvec (matvec_q8.cu) and the fused decode ops
// (fused_q8.cu) share: the layout of an 8-bit activation buffer, the CPU fast path's rounding,
// the per-chunk dot products of every quantized type (host and device), and the warp-level
// quantization of one activation block. See matvec_q8.cu's header for the numerics.
#pragma once

#include "common.cuh"

#include <math.h>
#include <string.h>

using namespace strata;

namespace {

// ---- the activation buffer ----------------------------------------------------------------

// The types whose activations use 256-value blocks.
__host__ __device__ constexpr bool k_acts(strata_dtype t) { return is_k_quant(t); }

__host__ __device__ inline int64_t align16(int64_t n) { return (n + 15) & ~(int64_t)15; }

// Byte offsets of the sections of an activation buffer: q (int8, cols values), d (f32 per
// block), s (f32 per block: d * sum q) or bsums (int16, 16 per 256-value block). Each section
// starts 16-byte aligned (the buffer itself is, as every device allocation is).
struct ActLayout {
    int64_t q, d, s, total;
};

__host__ __device__ inline ActLayout act_layout(strata_dtype t, int64_t cols) {
    const int64_t nb = cols / (k_acts(t) ? STRATA_QK_K : STRATA_QK);
    ActLayout l;
    l.q = 0;
    l.d = align16(cols);
    l.s = l.d + align16(nb * 4);
    l.total = l.s + align16(k_acts(t) ? nb * 16 * 2 : nb * 4);
    return l;
}

// Whether `cols` is a whole number of the type's activation blocks (and of its weight blocks).
__host__ inline bool act_cols_ok(strata_dtype t, int64_t cols) {
    return cols >= 0 && cols % (k_acts(t) ? STRATA_QK_K : STRATA_QK) == 0;
}

// ---- rounding, shared by host and device ----------------------------------------------------

constexpr uint32_t kAbsMask = 0x7FFFFFFFu;
constexpr uint32_t kInfBits = 0x7F800000u;

__host__ __device__ inline uint32_t abs_bits(float v) {
#ifdef __CUDA_ARCH__
    return __float_as_uint(v) & kAbsMask;
#else
    uint32_t b;
    memcpy(&b, &v, 4);
    return b & kAbsMask;
#endif
}

__host__ __device__ inline float from_bits(uint32_t b) {
#ifdef __CUDA_ARCH__
    return __uint_as_float(b);
#else
    float v;
    memcpy(&v, &b, 4);
    return v;
#endif
}

// 127 / max|x| (0 for an all-zero block), IEEE division as Rust's.
__host__ __device__ inline float inv_scale(float amax) { return amax != 0.0f ? 127.0f / amax : 0.0f; }

// The 32-value blocks' scale: max|x| / 127 rounded to binary16 (nearest, ties to even).
__host__ __device__ inline float scale32(float amax) {
    return __half2float(__float2half_rn(amax / 127.0f));
}

// The 256-value blocks' scale: max|x| / 127 in f32.
__host__ __device__ inline float scale256(float amax) { return amax / 127.0f; }

// round-half-even(v * id): the product is rounded to f32 first, as on the CPU.
__host__ __device__ inline int32_t quant_value(float v, float id) {
    const float p = v * id;
#ifdef __CUDA_ARCH__
    return __float2int_rn(p);
#else
    return (int32_t)rintf(p);
#endif
}

// ---- loads ----------------------------------------------------------------------------------

// Every block of every type starts 2-byte aligned (rows of whole blocks of even size in buffers
// the allocator aligns), so words are read as two halves.
// A T read at p (aligned for T on the device): a plain load there, memcpy on the host, where
// the host twins may be handed any pointer.
template <typename T>
__host__ __device__ inline T load_as(const uint8_t *p) {
#ifdef __CUDA_ARCH__
    return *reinterpret_cast<const T *>(p);
#else
    T v;
    memcpy(&v, p, sizeof(T));
    return v;
#endif
}

__host__ __device__ inline uint16_t ld16(const uint8_t *p) { return load_as<uint16_t>(p); }

__host__ __device__ inline uint32_t ld32(const uint8_t *p) {
    return (uint32_t)ld16(p) | ((uint32_t)ld16(p + 2) << 16);
}

__host__ __device__ inline float ldf32(const uint8_t *p) { return load_as<float>(p); }

__host__ __device__ inline float ldf16(const uint8_t *p) {
    __half_raw r;
    r.x = ld16(p);
    return __half2float(__half(r));
}

// sum of the four signed byte products of a and b, plus c.
__host__ __device__ inline int32_t dp4a(uint32_t a, uint32_t b, int32_t c) {
#ifdef __CUDA_ARCH__
    return __dp4a((int)a, (int)b, c);
#else
    for (int k = 0; k < 4; ++k) c += (int32_t)(int8_t)(a >> (8 * k)) * (int32_t)(int8_t)(b >> (8 * k));
    return c;
#endif
}

// The IQ4_NL/IQ4_XS value table (ggml's kvalues_iq4nl) as two words of eight bytes, so host
// and device share it without a memory table: -127 -104 -83 -65 -49 -35 -22 -10 | 1 13 25 38 53
// 69 89 113.
__host__ __device__ inline uint32_t iq4_byte(uint32_t nibble) {
    const uint64_t lo = 0xF6EADDCFBFAD9881ull, hi = 0x7159453526190D01ull;
    return (uint32_t)(((nibble < 8 ? lo : hi) >> (8 * (nibble & 7))) & 0xFF);
}

// Four nibbles (in the low 4 bits of each byte of w) looked up in the IQ4 table.
__host__ __device__ inline uint32_t iq4_word(uint32_t w) {
    return iq4_byte(w & 15) | (iq4_byte((w >> 8) & 15) << 8) | (iq4_byte((w >> 16) & 15) << 16) |
           (iq4_byte((w >> 24) & 15) << 24);
}

// Bits b0..b3 of h moved to bit 4 (shifted by `to`) of bytes 0..3.
__host__ __device__ inline uint32_t spread4(uint32_t h, int to) {
    return (((h & 1) << 0) | ((h & 2) << 7) | ((h & 4) << 14) | ((h & 8) << 21)) << to;
}

// ---- one chunk of 32 values -----------------------------------------------------------------

// The activations of chunk i: its 32 quantized values as 8 words, and the scalars.
struct XChunk {
    uint32_t q[8];
    float d;      // block scale
    float s;      // 32-value types: d * sum q
    int32_t bs0;  // K types: sums of the chunk's two 16-value groups
    int32_t bs1;
};

template <strata_dtype T>
__host__ __device__ inline void load_x(const uint8_t *act, const ActLayout &l, int64_t i, XChunk &x) {
    const uint8_t *q = act + l.q + i * 32;
    const int4 a = load_as<int4>(q);
    const int4 b = load_as<int4>(q + 16);
    x.q[0] = a.x, x.q[1] = a.y, x.q[2] = a.z, x.q[3] = a.w;
    x.q[4] = b.x, x.q[5] = b.y, x.q[6] = b.z, x.q[7] = b.w;
    if (k_acts(T)) {
        x.d = ldf32(act + l.d + 4 * (i / 8));
        x.s = 0.0f;
        x.bs0 = (int16_t)ld16(act + l.s + 4 * i);
        x.bs1 = (int16_t)ld16(act + l.s + 4 * i + 2);
    } else {
        x.d = ldf32(act + l.d + 4 * i);
        x.s = ldf32(act + l.s + 4 * i);
        x.bs0 = x.bs1 = 0;
    }
}

// sum of q_w * q_x over words [from, from + 4) (one 16-value group).
__host__ __device__ inline int32_t dot16(const uint32_t w[8], const uint32_t xq[8], int from) {
    int32_t p = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) p = dp4a(w[from + k], xq[from + k], p);
    return p;
}

// Row `row` (of type T) · activations, chunk i (32 values). f32 result of that chunk.
template <strata_dtype T>
__host__ __device__ inline float chunk_dot(const uint8_t *row, int64_t i, const XChunk &x);

// The 32-value block types: block i of the row.
template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q8_0>(const uint8_t *row, int64_t i, const XChunk &x) {
    const uint8_t *b = row + i * 34;
    int32_t p = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) p = dp4a(ld32(b + 2 + 4 * k), x.q[k], p);
    return (ldf16(b) * x.d) * (float)p;
}

// Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL: 16 bytes of nibbles at `qs` (low: values 0..15, high: 16..31),
// Q5's fifth bits in the word at `qh`.
template <strata_dtype T>
__host__ __device__ inline float nibble_dot(const uint8_t *b, const XChunk &x) {
    constexpr bool q5 = T == STRATA_DTYPE_Q5_0 || T == STRATA_DTYPE_Q5_1;
    constexpr bool with_m = T == STRATA_DTYPE_Q4_1 || T == STRATA_DTYPE_Q5_1;
    constexpr int qs_at = T == STRATA_DTYPE_Q4_1 ? 4 : T == STRATA_DTYPE_Q5_0 ? 6 : T == STRATA_DTYPE_Q5_1 ? 8 : 2;
    const float d = ldf16(b);
    const uint32_t qh = q5 ? ld32(b + qs_at - 4) : 0;
    int32_t p = 0;
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        const uint32_t word = ld32(b + qs_at + 4 * k);
        uint32_t lo = word & 0x0F0F0F0Fu, hi = (word >> 4) & 0x0F0F0F0Fu;
        if (T == STRATA_DTYPE_IQ4_NL) {
            lo = iq4_word(lo);
            hi = iq4_word(hi);
        }
        if (q5) {
            lo |= spread4(qh >> (4 * k), 4);
            hi |= spread4(qh >> (16 + 4 * k), 4);
        }
        p = dp4a(lo, x.q[k], p);
        p = dp4a(hi, x.q[4 + k], p);
    }
    float m = 0.0f;
    if (with_m) m = ldf16(b + 2);
    if (T == STRATA_DTYPE_Q4_0) m = -8.0f * d;
    if (T == STRATA_DTYPE_Q5_0) m = -16.0f * d;
    return (d * x.d) * (float)p + m * x.s;
}

template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q4_0>(const uint8_t *row, int64_t i, const XChunk &x) {
    return nibble_dot<STRATA_DTYPE_Q4_0>(row + i * 18, x);
}
template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q4_1>(const uint8_t *row, int64_t i, const XChunk &x) {
    return nibble_dot<STRATA_DTYPE_Q4_1>(row + i * 20, x);
}
template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q5_0>(const uint8_t *row, int64_t i, const XChunk &x) {
    return nibble_dot<STRATA_DTYPE_Q5_0>(row + i * 22, x);
}
template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q5_1>(const uint8_t *row, int64_t i, const XChunk &x) {
    return nibble_dot<STRATA_DTYPE_Q5_1>(row + i * 24, x);
}
template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_IQ4_NL>(const uint8_t *row, int64_t i, const XChunk &x) {
    return nibble_dot<STRATA_DTYPE_IQ4_NL>(row + i * 18, x);
}

// K-quants: chunk i is sub-block s = i % 8 of super-block i / 8.
__host__ __device__ inline float k_result(float d, float dmin, float dx, int32_t isum, int32_t msum) {
    return (d * dx) * (float)isum - (dmin * dx) * (float)msum;
}

// The 2-bit fields of sub-block s of a Q2_K/Q3_K super-block's qs (value 128 h + 32 k + l is
// bits 2k of qs[32 h + l]).
__host__ __device__ inline void q2_words(const uint8_t *qs, int s, uint32_t w[8]) {
    const int h = s / 4, k = s % 4;
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j] = (ld32(qs + 32 * h + 4 * j) >> (2 * k)) & 0x03030303u;
}

template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q2_K>(const uint8_t *row, int64_t i, const XChunk &x) {
    const uint8_t *b = row + (i / 8) * 84;
    const int s = (int)(i % 8);
    uint32_t w[8];
    q2_words(b + 16, s, w);
    const uint32_t sc0 = b[2 * s], sc1 = b[2 * s + 1];
    const int32_t isum = (int32_t)(sc0 & 15) * dot16(w, x.q, 0) + (int32_t)(sc1 & 15) * dot16(w, x.q, 4);
    const int32_t msum = (int32_t)(sc0 >> 4) * x.bs0 + (int32_t)(sc1 >> 4) * x.bs1;
    return k_result(ldf16(b + 80), ldf16(b + 82), x.d, isum, msum);
}

// Q3_K's signed 6-bit scale j (stored + 32 in 12 packed bytes).
__host__ __device__ inline int32_t q3_scale(const uint8_t *sc, int j) {
    const uint32_t low = j < 8 ? (sc[j] & 15u) : (uint32_t)(sc[j - 8] >> 4);
    const uint32_t high = (sc[8 + j % 4] >> (2 * (j / 4))) & 3u;
    return (int32_t)(low | (high << 4)) - 32;
}

template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q3_K>(const uint8_t *row, int64_t i, const XChunk &x) {
    const uint8_t *b = row + (i / 8) * 110;
    const int s = (int)(i % 8);
    uint32_t w[8];
    q2_words(b + 32, s, w);
    // value = field - (hmask bit ? 0 : 4) = (field | hmask bit << 2) - 4; the -4 is taken off
    // with the group sums.
#pragma unroll
    for (int j = 0; j < 8; ++j) w[j] |= ((ld32(b + 4 * j) >> s) & 0x01010101u) << 2;
    const int32_t p0 = dot16(w, x.q, 0) - 4 * x.bs0, p1 = dot16(w, x.q, 4) - 4 * x.bs1;
    const int32_t isum = q3_scale(b + 96, 2 * s) * p0 + q3_scale(b + 96, 2 * s + 1) * p1;
    return k_result(ldf16(b + 108), 0.0f, x.d, isum, 0);
}

// Q4_K/Q5_K's 6-bit scale and min of sub-block j (k4_scale_min in src/quant.rs).
__host__ __device__ inline void k4_scale_min(const uint8_t *q, int j, int32_t &sc, int32_t &m) {
    if (j < 4) {
        sc = q[j] & 63;
        m = q[j + 4] & 63;
    } else {
        sc = (q[j + 4] & 15) | ((q[j - 4] >> 6) << 4);
        m = (q[j + 4] >> 4) | ((q[j] >> 6) << 4);
    }
}

template <strata_dtype T>
__host__ __device__ inline float k45_dot(const uint8_t *row, int64_t i, const XChunk &x) {
    constexpr bool q5 = T == STRATA_DTYPE_Q5_K;
    const uint8_t *b = row + (i / 8) * (q5 ? 176 : 144);
    const int s = (int)(i % 8);
    const uint8_t *qs = b + (q5 ? 48 : 16) + 32 * (s / 2);
    uint32_t w[8];
#pragma unroll
    for (int j = 0; j < 8; ++j) {
        w[j] = (ld32(qs + 4 * j) >> (4 * (s % 2))) & 0x0F0F0F0Fu;
        if (q5) w[j] |= ((ld32(b + 16 + 4 * j) >> s) & 0x01010101u) << 4;
    }
    int32_t sc, m;
    k4_scale_min(b + 4, s, sc, m);
    const int32_t isum = sc * (dot16(w, x.q, 0) + dot16(w, x.q, 4));
    const int32_t msum = m * (x.bs0 + x.bs1);
    return k_result(ldf16(b), ldf16(b + 2), x.d, isum, msum);
}

template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q4_K>(const uint8_t *row, int64_t i, const XChunk &x) {
    return k45_dot<STRATA_DTYPE_Q4_K>(row, i, x);
}
template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q5_K>(const uint8_t *row, int64_t i, const XChunk &x) {
    return k45_dot<STRATA_DTYPE_Q5_K>(row, i, x);
}

template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_Q6_K>(const uint8_t *row, int64_t i, const XChunk &x) {
    const uint8_t *b = row + (i / 8) * 210;
    const int s = (int)(i % 8);
    const int h = s / 4, k = s % 4;
    // value 128 h + 32 k + l: low 4 bits from ql[64 h + 32 (k % 2) + l] >> 4 (k / 2), high 2
    // bits from qh[32 h + l] >> 2 k; stored + 32 (taken off with the group sums).
    const uint8_t *ql = b + 64 * h + 32 * (k % 2);
    const uint8_t *qh = b + 128 + 32 * h;
    uint32_t w[8];
#pragma unroll
    for (int j = 0; j < 8; ++j)
        w[j] = ((ld32(ql + 4 * j) >> (4 * (k / 2))) & 0x0F0F0F0Fu) |
               (((ld32(qh + 4 * j) >> (2 * k)) & 0x03030303u) << 4);
    const int32_t sc0 = (int8_t)b[192 + 2 * s], sc1 = (int8_t)b[192 + 2 * s + 1];
    const int32_t isum = sc0 * (dot16(w, x.q, 0) - 32 * x.bs0) + sc1 * (dot16(w, x.q, 4) - 32 * x.bs1);
    return k_result(ldf16(b + 208), 0.0f, x.d, isum, 0);
}

template <>
__host__ __device__ inline float chunk_dot<STRATA_DTYPE_IQ4_XS>(const uint8_t *row, int64_t i, const XChunk &x) {
    const uint8_t *b = row + (i / 8) * 136;
    const int s = (int)(i % 8);
    const uint8_t *qs = b + 8 + 16 * s;
    uint32_t w[8];
#pragma unroll
    for (int j = 0; j < 4; ++j) {
        const uint32_t word = ld32(qs + 4 * j);
        w[j] = iq4_word(word & 0x0F0F0F0Fu);
        w[4 + j] = iq4_word((word >> 4) & 0x0F0F0F0Fu);
    }
    const uint32_t low = (b[4 + s / 2] >> (4 * (s % 2))) & 15u;
    const uint32_t high = (ld16(b + 2) >> (2 * s)) & 3u;
    const int32_t sc = (int32_t)(low | (high << 4)) - 32;
    const int32_t isum = sc * (dot16(w, x.q, 0) + dot16(w, x.q, 4));
    return k_result(ldf16(b), 0.0f, x.d, isum, 0);
}

// ---- activation quantization by one warp ------------------------------------------------------

constexpr int kQuantWarps = 4;

__device__ inline uint32_t warp_max_u32(uint32_t v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) {
        const uint32_t u = __shfl_xor_sync(0xFFFFFFFFu, v, o);
        v = u > v ? u : v;
    }
    return v;
}

__device__ inline int32_t warp_sum_i32(int32_t v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xFFFFFFFFu, v, o);
    return v;
}

// 32-value block b, one warp: lane k holds value k. Writes q, d and s of the block.
__device__ __forceinline__ void quantize_block32_warp(float v, int lane, int64_t b, uint8_t *act, const ActLayout &l) {
    const uint32_t amax_bits = warp_max_u32(abs_bits(v));
    const bool bad = amax_bits >= kInfBits;
    const float amax = from_bits(amax_bits);
    const int32_t q = bad ? 0 : quant_value(v, inv_scale(amax));
    reinterpret_cast<int8_t *>(act + l.q)[b * 32 + lane] = (int8_t)q;
    const int32_t sum = warp_sum_i32(q);
    if (lane == 0) {
        const float d = bad ? NAN : scale32(amax);
        reinterpret_cast<float *>(act + l.d)[b] = d;
        reinterpret_cast<float *>(act + l.s)[b] = d * (float)sum;
    }
}

// 256-value block b, one warp: lane k holds values 8k..8k+7 (half of group k / 2). Writes q, d
// and the 16-value group sums of the block.
__device__ __forceinline__ void quantize_block256_warp(const float v[8], int lane, int64_t b, uint8_t *act,
                                                       const ActLayout &l) {
    uint32_t m = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) m = max(m, abs_bits(v[k]));
    const uint32_t amax_bits = warp_max_u32(m);
    const bool bad = amax_bits >= kInfBits;
    const float amax = from_bits(amax_bits);
    const float id = bad ? 0.0f : inv_scale(amax);
    uint32_t packed[2] = {0, 0};
    int32_t sum = 0;
#pragma unroll
    for (int k = 0; k < 8; ++k) {
        const int32_t q = bad ? 0 : quant_value(v[k], id);
        packed[k / 4] |= ((uint32_t)q & 0xFFu) << (8 * (k % 4));
        sum += q;
    }
    *reinterpret_cast<uint2 *>(act + l.q + b * 256 + lane * 8) = make_uint2(packed[0], packed[1]);
    const int32_t group = sum + __shfl_xor_sync(0xFFFFFFFFu, sum, 1);
    if (lane % 2 == 0) reinterpret_cast<int16_t *>(act + l.s)[b * 16 + lane / 2] = (int16_t)group;
    if (lane == 0) reinterpret_cast<float *>(act + l.d)[b] = bad ? NAN : scale256(amax);
}

}  // namespace
