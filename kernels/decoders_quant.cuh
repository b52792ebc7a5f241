// decoders_quant.cuh — Decoder<T> (common.cuh) for Q5_0, Q5_1, IQ4_NL and the 256-value
// super-block types Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_XS.
//
// Each decoder follows the layout comment of its block in strata.h and the reference
// dequantization in src/quant.rs: the per-sub-block scale (d * sc) and min (dmin * m) are
// each one rounded f32 product, exactly as the reference computes them, so that
// dequant_value(q, scale, offset) = q * (d * sc) - (dmin * m) is bit-identical to it
// (offset = -(dmin * m); x + (-y) and x - y round the same).
//
// Chunk c of a super-block row is sub-block j = c % 8 of super-block c / 8. Blocks are only
// 2-byte aligned (110- and 210-byte blocks), so words are read with load_u32_a2. load_raw does
// only loads and keeps the small indices (j, p) decode needs; decode does the bit work.
#pragma once

#include "common.cuh"

namespace strata {

// Bit k (0..3) of b to bit 8k: one bit into each byte of a word.
__device__ __forceinline__ uint32_t spread4(uint32_t b) {
    return (b & 1u) | ((b & 2u) << 7) | ((b & 4u) << 14) | ((b & 8u) << 21);
}

// IQ4_NL's 16 values (strata.h) as int8 bytes, four per word, little-endian.
constexpr uint32_t kIq4Lo0 = 0xBFAD9881u;  // -127, -104, -83, -65
constexpr uint32_t kIq4Lo1 = 0xF6EADDCFu;  // -49, -35, -22, -10
constexpr uint32_t kIq4Hi0 = 0x26190D01u;  // 1, 13, 25, 38
constexpr uint32_t kIq4Hi1 = 0x71594535u;  // 53, 69, 89, 113

// kvalues[n] for a nibble n, as an exact float. __byte_perm picks byte n % 8 of the half
// of the table n falls in: no table in (divergently indexed) memory.
__device__ __forceinline__ float iq4_value(uint32_t n) {
    const uint32_t b = n < 8 ? __byte_perm(kIq4Lo0, kIq4Lo1, n & 7) : __byte_perm(kIq4Hi0, kIq4Hi1, n & 7);
    return (float)(int8_t)(uint8_t)(b & 0xFFu);
}

// The eight IQ4 values of one qs word: low nibbles (values 4p..4p+3), then high nibbles.
__device__ __forceinline__ void iq4_word_to_float(uint32_t w, float q[8]) {
#pragma unroll
    for (int k = 0; k < 4; ++k) {
        q[k] = iq4_value((w >> (8 * k)) & 15u);
        q[4 + k] = iq4_value((w >> (8 * k + 4)) & 15u);
    }
}

// Q5_0 / Q5_1: the 5-bit q of part p: qs word p's nibbles with bits 4p..4p+3 (low half) and
// 16+4p..16+4p+3 (high half) of qh as their fifth bit.
__device__ __forceinline__ void q5_word_to_float(uint32_t w, uint32_t qh, int p, float bias, float q[8]) {
    const uint32_t lo = (w & 0x0F0F0F0Fu) | (spread4((qh >> (4 * p)) & 15u) << 4);
    const uint32_t hi = ((w >> 4) & 0x0F0F0F0Fu) | (spread4((qh >> (16 + 4 * p)) & 15u) << 4);
    bytes_to_float(lo, hi, bias, q);
}

template <>
struct Decoder<STRATA_DTYPE_Q5_0> {
    static constexpr int64_t kChunkBytes = sizeof(strata_block_q5_0);
    struct Raw {
        uint16_t d;
        uint32_t qh, w;
        int p;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        const uint8_t *b = row + c * kChunkBytes;
        return Raw{load_u16(b), load_u32_a2(b + 2), load_u32_a2(b + 6 + 4 * p), p};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        scale = half_bits_to_float(r.d);
        offset = 0.0f;
        q5_word_to_float(r.w, r.qh, r.p, kTwo23 + 16.0f, q);  // q - 16
    }
};

template <>
struct Decoder<STRATA_DTYPE_Q5_1> {
    static constexpr int64_t kChunkBytes = sizeof(strata_block_q5_1);
    struct Raw {
        uint32_t dm, qh, w;
        int p;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        const uint8_t *b = row + c * kChunkBytes;
        return Raw{load_u32_a2(b), load_u32_a2(b + 4), load_u32_a2(b + 8 + 4 * p), p};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        scale = half_bits_to_float((uint16_t)(r.dm & 0xFFFF));
        offset = half_bits_to_float((uint16_t)(r.dm >> 16));
        q5_word_to_float(r.w, r.qh, r.p, kTwo23, q);
    }
};

template <>
struct Decoder<STRATA_DTYPE_IQ4_NL> {
    static constexpr int64_t kChunkBytes = sizeof(strata_block_iq4_nl);
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
        iq4_word_to_float(r.w, q);
    }
};

// ---- 256-value super-blocks --------------------------------------------------------------

// The super-block holding chunk c of a row, and the chunk's sub-block j (0..7) in it.
template <typename Block>
__device__ __forceinline__ const uint8_t *super_block(const uint8_t *row, int64_t c, int &j) {
    j = (int)(c & 7);
    return row + (c >> 3) * (int64_t)sizeof(Block);
}

// Q2_K: values 32j + 8p + k (k < 8) are bits 2(j%4).. of qs[32(j/4) + 8p + k]; their
// 16-value sub-block is s = 2j + p/2 with scales[s] = sc | m << 4.
template <>
struct Decoder<STRATA_DTYPE_Q2_K> {
    struct Raw {
        uint32_t dm;  // d | dmin << 16
        uint32_t w0, w1;
        uint8_t sc;
        int j;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        int j;
        const uint8_t *b = super_block<strata_block_q2_k>(row, c, j);
        const uint8_t *qs = b + 16 + 32 * (j / 4) + 8 * p;
        return Raw{load_u32_a2(b + 80), load_u32_a2(qs), load_u32_a2(qs + 4), __ldg(b + 2 * j + p / 2), j};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        const int shift = 2 * (r.j % 4);
        bytes_to_float((r.w0 >> shift) & 0x03030303u, (r.w1 >> shift) & 0x03030303u, kTwo23, q);
        scale = __fmul_rn(half_bits_to_float((uint16_t)(r.dm & 0xFFFF)), (float)(r.sc & 15));
        offset = -__fmul_rn(half_bits_to_float((uint16_t)(r.dm >> 16)), (float)(r.sc >> 4));
    }
};

// Q3_K: Q2_K's 2-bit fields, plus 4 unless bit j of hmask[8p + k] is set; 6-bit scales
// (strata.h) of sub-block s = 2j + p/2.
template <>
struct Decoder<STRATA_DTYPE_Q3_K> {
    struct Raw {
        uint16_t d;
        uint32_t w0, w1, m0, m1;
        uint8_t sc_low, sc_high;  // scales[s % 8], scales[8 + s % 4]
        int j, s;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        int j;
        const uint8_t *b = super_block<strata_block_q3_k>(row, c, j);
        const int s = 2 * j + p / 2;
        const uint8_t *qs = b + 32 + 32 * (j / 4) + 8 * p;
        const uint8_t *hm = b + 8 * p;
        return Raw{load_u16(b + 108), load_u32_a2(qs), load_u32_a2(qs + 4), load_u32_a2(hm),
                   load_u32_a2(hm + 4), __ldg(b + 96 + s % 8), __ldg(b + 104 + s % 4), j, s};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        const int shift = 2 * (r.j % 4);
        const uint32_t lo = ((r.w0 >> shift) & 0x03030303u) | (((r.m0 >> r.j) & 0x01010101u) << 2);
        const uint32_t hi = ((r.w1 >> shift) & 0x03030303u) | (((r.m1 >> r.j) & 0x01010101u) << 2);
        bytes_to_float(lo, hi, kTwo23 + 4.0f, q);  // high bit set: q; clear: q - 4
        const int low = r.s < 8 ? (r.sc_low & 15) : (r.sc_low >> 4);
        const int high = (r.sc_high >> (2 * (r.s / 4))) & 3;
        scale = __fmul_rn(half_bits_to_float(r.d), (float)((low | (high << 4)) - 32));
        offset = 0.0f;
    }
};

// Q4_K / Q5_K scale and min of sub-block j from three scale bytes: for j < 4, a = scales[j],
// b = scales[j + 4]; for j >= 4, a = scales[j + 4], b = scales[j - 4], c = scales[j]
// (get_scale_min_k4 in ggml; strata.h).
struct K4Scales {
    uint8_t a, b, c;
};

__device__ __forceinline__ K4Scales load_k4_scales(const uint8_t *scales, int j) {
    return K4Scales{__ldg(scales + (j < 4 ? j : j + 4)), __ldg(scales + (j < 4 ? j + 4 : j - 4)), __ldg(scales + j)};
}

// scale = d * sc and offset = -(dmin * m), each product rounded once, as the reference.
__device__ __forceinline__ void k4_scale_min(K4Scales s, int j, uint32_t dm, float &scale, float &offset) {
    const int sc = j < 4 ? (s.a & 63) : ((s.a & 15) | ((s.b >> 6) << 4));
    const int m = j < 4 ? (s.b & 63) : ((s.a >> 4) | ((s.c >> 6) << 4));
    scale = __fmul_rn(half_bits_to_float((uint16_t)(dm & 0xFFFF)), (float)sc);
    offset = -__fmul_rn(half_bits_to_float((uint16_t)(dm >> 16)), (float)m);
}

// Q4_K: sub-block j is nibble j % 2 of qs[32(j/2) ..+32]; part p is 8 of those bytes.
template <>
struct Decoder<STRATA_DTYPE_Q4_K> {
    struct Raw {
        uint32_t dm;
        uint32_t w0, w1;
        K4Scales sc;
        int j;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        int j;
        const uint8_t *b = super_block<strata_block_q4_k>(row, c, j);
        const uint8_t *qs = b + 16 + 32 * (j / 2) + 8 * p;
        return Raw{load_u32_a2(b), load_u32_a2(qs), load_u32_a2(qs + 4), load_k4_scales(b + 4, j), j};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        const int shift = 4 * (r.j % 2);
        bytes_to_float((r.w0 >> shift) & 0x0F0F0F0Fu, (r.w1 >> shift) & 0x0F0F0F0Fu, kTwo23, q);
        k4_scale_min(r.sc, r.j, r.dm, scale, offset);
    }
};

// Q5_K: Q4_K's nibbles with bit j of qh[8p + k] as the fifth bit.
template <>
struct Decoder<STRATA_DTYPE_Q5_K> {
    struct Raw {
        uint32_t dm;
        uint32_t w0, w1, h0, h1;
        K4Scales sc;
        int j;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        int j;
        const uint8_t *b = super_block<strata_block_q5_k>(row, c, j);
        const uint8_t *qs = b + 48 + 32 * (j / 2) + 8 * p;
        const uint8_t *qh = b + 16 + 8 * p;
        return Raw{load_u32_a2(b), load_u32_a2(qs), load_u32_a2(qs + 4), load_u32_a2(qh), load_u32_a2(qh + 4),
                   load_k4_scales(b + 4, j), j};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        const int shift = 4 * (r.j % 2);
        const uint32_t lo = ((r.w0 >> shift) & 0x0F0F0F0Fu) | (((r.h0 >> r.j) & 0x01010101u) << 4);
        const uint32_t hi = ((r.w1 >> shift) & 0x0F0F0F0Fu) | (((r.h1 >> r.j) & 0x01010101u) << 4);
        bytes_to_float(lo, hi, kTwo23, q);
        k4_scale_min(r.sc, r.j, r.dm, scale, offset);
    }
};

// Q6_K: values 32j + 8p + k: low nibble (j%4 < 2) or high nibble of
// ql[64(j/4) + 32(j%2) + 8p + k], bits 2(j%4).. of qh[32(j/4) + 8p + k]; int8 scale of
// sub-block 2j + p/2.
template <>
struct Decoder<STRATA_DTYPE_Q6_K> {
    struct Raw {
        uint16_t d;
        uint32_t l0, l1, h0, h1;
        int8_t sc;
        int j;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        int j;
        const uint8_t *b = super_block<strata_block_q6_k>(row, c, j);
        const int kk = j % 4;
        const uint8_t *ql = b + 64 * (j / 4) + 32 * (kk % 2) + 8 * p;
        const uint8_t *qh = b + 128 + 32 * (j / 4) + 8 * p;
        return Raw{load_u16(b + 208), load_u32_a2(ql), load_u32_a2(ql + 4), load_u32_a2(qh), load_u32_a2(qh + 4),
                   __ldg(reinterpret_cast<const int8_t *>(b + 192 + 2 * j + p / 2)), j};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        const int kk = r.j % 4;
        const int nib = 4 * (kk / 2), hs = 2 * kk;
        const uint32_t lo = ((r.l0 >> nib) & 0x0F0F0F0Fu) | (((r.h0 >> hs) & 0x03030303u) << 4);
        const uint32_t hi = ((r.l1 >> nib) & 0x0F0F0F0Fu) | (((r.h1 >> hs) & 0x03030303u) << 4);
        bytes_to_float(lo, hi, kTwo23 + 32.0f, q);  // q - 32
        scale = __fmul_rn(half_bits_to_float(r.d), (float)r.sc);
        offset = 0.0f;
    }
};

// IQ4_XS: sub-block j is an IQ4_NL block without its own d: qs[16j ..+16] in Q4_0's nibble
// order, 6-bit scale ls = low 4 bits of scales_l[j/2] >> 4(j%2), high 2 of scales_h >> 2j.
template <>
struct Decoder<STRATA_DTYPE_IQ4_XS> {
    struct Raw {
        uint32_t dsh;  // d | scales_h << 16
        uint32_t w;
        uint8_t sl;
        int j;
    };
    __device__ __forceinline__ static Raw load_raw(const uint8_t *row, int64_t c, int p, int64_t) {
        int j;
        const uint8_t *b = super_block<strata_block_iq4_xs>(row, c, j);
        return Raw{load_u32_a2(b), load_u32_a2(b + 8 + 16 * j + 4 * p), __ldg(b + 4 + j / 2), j};
    }
    __device__ __forceinline__ static void decode(const Raw &r, float q[8], float &scale, float &offset) {
        const int low = (r.sl >> (4 * (r.j % 2))) & 15;
        const int high = (int)((r.dsh >> (16 + 2 * r.j)) & 3u);
        scale = __fmul_rn(half_bits_to_float((uint16_t)(r.dsh & 0xFFFF)), (float)((low | (high << 4)) - 32));
        offset = 0.0f;
        iq4_word_to_float(r.w, q);
    }
};

}  // namespace strata
