//! AVX2 + FMA + F16C kernels of the 256-value super-block types (Q2_K … Q6_K, IQ4_XS) with
//! 8-bit activations in 256-value blocks ([`ActsK`]).
//!
//! Per super-block of a row, the scales are decoded once into 16 signed bytes, one per 16
//! values (a 32-value sub-block's scale twice), and the minimums (Q2_K, Q4_K, Q5_K) into 16
//! 16-bit lanes. Then per 32 values (a "chunk"), for each (row, token) of the tile:
//! `vpmaddubsw` multiplies the unsigned weight quants (Q6_K's 6 bits before the `- 32`, Q3_K's
//! 3 bits before the `- 4`; IQ4_XS's signed table values through the sign trick of the Q8_0
//! kernels) with the activation bytes into 16-bit pair sums, and `vpmaddwd` with the chunk's
//! two group scales (lanes 0..8 and 8..16) sums them, scaled, into eight 32-bit lanes of an
//! integer accumulator. At the end of the super-block the accumulator gets the offsets
//! (`- 32 * sum_g sc_g * bsum_g` for Q6_K, `- 4 * ...` for Q3_K: one `vpmaddwd` of the scales
//! with the activations' 16 partial sums) and is added, scaled by `d_w * d_x`, to the tile's f32
//! accumulator; the minimums are one more `vpmaddwd` with the partial sums and one FMA.
//!
//! No overflow: a pair sum is at most 2 * 63 * 127 (Q6_K) or 2 * 127 * 127 (IQ4_XS), below
//! 32767; an integer lane collects at most 8 chunks of 2 * 32767 * 128 plus the offsets, below
//! 2^31. The integer sums are exact; only their conversion to f32 (past 2^24) and the f32 sums
//! round, as in the 32-value kernels.
//!
//! Decode tiles (2 rows × 1 token), prefetching and the raw-pointer loads with the lengths
//! checked once per tile are those of the 32-value AVX2 kernels (`avx2`); prefill tiles are 1
//! row × 8 tokens (see `T_MANY`).

use std::arch::x86_64::*;

use super::KType;
use super::act_k::{ActRowK, ActsK, GROUPS};
use super::x86::{prefetch, store};
use crate::QK_K;
use crate::dtype::IQ4_VALUES;

/// Rows per tile for a single token (decode): two interleaved weight streams, as in `avx2`.
const R_ONE: usize = 2;
/// Rows and tokens per tile for prefill: each chunk of weights unpacked once for 8 tokens,
/// whose 8 integer accumulators stay in registers (the f32 ones are touched once per
/// super-block). One row by 8 tokens measured 20% to 30% faster than 2 by 4 on a 576 x 1536
/// Q4_K/Q6_K matmul of 64 tokens (criterion, 2 threads, the dev VM); then tiles of 4 tokens
/// and single tokens for what is left.
const R_MANY: usize = 1;
const T_MANY: usize = 8;
/// How many row tiles ahead to prefetch the weights.
const PREFETCH_TILES: usize = 2;

/// The weight type as a const parameter, so each kernel is compiled for one layout.
const Q2_K: u8 = 0;
const Q3_K: u8 = 1;
pub(super) const Q4_K: u8 = 2;
const Q5_K: u8 = 3;
pub(super) const Q6_K: u8 = 4;
const IQ4_XS: u8 = 5;

pub(super) const fn block_bytes(ty: u8) -> usize {
    match ty {
        Q2_K => 84,
        Q3_K => 110,
        Q4_K => 144,
        Q5_K => 176,
        Q6_K => 210,
        _ => 136,
    }
}

/// Whether the type subtracts `dmin * m_g` per group (the minimums).
const fn has_mins(ty: u8) -> bool {
    matches!(ty, Q2_K | Q4_K | Q5_K)
}

/// log2 of the offset subtracted from every quant (Q6_K: 32, Q3_K: 4), or 0 for none.
const fn offset_shift(ty: u8) -> i32 {
    match ty {
        Q6_K => 5,
        Q3_K => 2,
        _ => 0,
    }
}

/// For chunk c (values 32c..32c+32): bytes 0..8 pick group scale 2c, bytes 8..16 group 2c + 1,
/// so that the scales widened to 16 bits line up with `vpmaddubsw`'s pair sums.
const CHUNK_SCALES: [[u8; 16]; 8] = {
    let mut m = [[0u8; 16]; 8];
    let mut c = 0;
    while c < 8 {
        let mut k = 0;
        while k < 16 {
            m[c][k] = (2 * c + k / 8) as u8;
            k += 1;
        }
        c += 1;
    }
    m
};

/// Byte g of the result is byte g / 2 of the input: 8 sub-block values → 16 group values.
const DUP: [u8; 16] = [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7];

/// For IQ4_XS: byte g of the result is the scale of sub-block i = g / 2, from bytes [even
/// scales 0, 2, 4, 6, odd scales 1, 3, 5, 7].
const IQ4_XS_GROUPS: [u8; 16] = [0, 0, 4, 4, 1, 1, 5, 5, 2, 2, 6, 6, 3, 3, 7, 7];

/// The 4 nibbles of the low 16 bits of `x`, one per byte (nibble k in the low half of byte k).
#[inline]
fn nibbles_to_bytes(x: u32) -> u32 {
    let x = (x | (x << 8)) & 0x00FF_00FF;
    (x | (x << 4)) & 0x0F0F_0F0F
}

/// out[r][t] = row r of `w` · token t of `acts` (`out` is [rows][acts.n], `w` holds the rows,
/// `rb` bytes each, in `ty`'s block layout).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemm(ty: KType, w: &[u8], rb: usize, acts: &ActsK, out: &mut [f32]) {
    match ty {
        KType::Q2_K => gemm_ty::<Q2_K>(w, rb, acts, out),
        KType::Q3_K => gemm_ty::<Q3_K>(w, rb, acts, out),
        KType::Q4_K => gemm_ty::<Q4_K>(w, rb, acts, out),
        KType::Q5_K => gemm_ty::<Q5_K>(w, rb, acts, out),
        KType::Q6_K => gemm_ty::<Q6_K>(w, rb, acts, out),
        KType::IQ4_XS => gemm_ty::<IQ4_XS>(w, rb, acts, out),
    }
}

k_gemm_loops!("avx2,fma,f16c");

/// Whether every row holds `nb` super-blocks of `bytes` and every token `nb` activation
/// blocks: checked once per tile so the block loops need no bounds checks. Both hold by
/// construction (`super::by_rows` slices whole rows, `ActsK` has `nb` blocks per token).
pub(super) fn lengths_ok<const R: usize, const T: usize>(
    rows: &[&[u8]; R],
    toks: &[ActRowK<'_>; T],
    nb: usize,
    bytes: usize,
) -> bool {
    rows.iter().all(|r| r.len() == nb * bytes)
        && toks.iter().all(|a| a.qs.len() >= nb * QK_K && a.d.len() >= nb && a.bsums.len() >= nb * GROUPS)
}

/// What a super-block's chunks share: its scales.
#[derive(Clone, Copy)]
pub(super) struct Head {
    pub(super) d: f32,
    pub(super) dmin: f32,
    /// The signed scale of each group of 16 values.
    pub(super) g8: __m128i,
    /// The minimum of each group of 16 values (zero for the types without).
    pub(super) m16: __m256i,
}

/// The binary16 at `p`, widened.
///
/// # Safety
/// `p` must point to two readable bytes; the CPU must have F16C.
#[inline]
#[target_feature(enable = "avx2,f16c")]
unsafe fn f16_at(p: *const u8) -> f32 {
    // SAFETY: the caller guarantees two readable bytes at p; unaligned loads are allowed.
    _mm_cvtss_f32(_mm_cvtph_ps(unsafe { _mm_loadu_si16(p) }))
}

/// The little-endian u32 at `p`.
///
/// # Safety
/// `p` must point to four readable bytes.
#[inline]
unsafe fn u32_at(p: *const u8) -> u32 {
    // SAFETY: the caller guarantees four readable bytes at p; read_unaligned allows any
    // alignment.
    u32::from_le(unsafe { p.cast::<u32>().read_unaligned() })
}

/// The 8 sub-block values in the low bytes of `v` (a u64 of bytes), each twice: 16 groups.
#[inline]
#[target_feature(enable = "avx2")]
fn dup8(v: u64) -> __m128i {
    // SAFETY: DUP is 16 bytes; unaligned loads are allowed.
    _mm_shuffle_epi8(_mm_cvtsi64_si128(v as i64), unsafe { _mm_loadu_si128(DUP.as_ptr().cast()) })
}

/// Decodes the scales of the super-block at `p`.
///
/// # Safety
/// `p` must point to a whole super-block of `TY` (`block_bytes(TY)` readable bytes).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) unsafe fn head<const TY: u8>(p: *const u8) -> Head {
    let zero = _mm256_setzero_si256();
    // SAFETY (all reads below): the offsets are those of the block layouts in `crate::dtype`,
    // inside the block the caller guarantees.
    unsafe {
        match TY {
            Q2_K => {
                // 16 bytes: scale in the low nibble, minimum in the high one.
                let s = _mm_loadu_si128(p.cast());
                let low = _mm_set1_epi8(0x0F);
                Head {
                    d: f16_at(p.add(80)),
                    dmin: f16_at(p.add(82)),
                    g8: _mm_and_si128(s, low),
                    m16: _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(s, 4), low)),
                }
            }
            Q3_K => {
                // 16 6-bit scales + 32 in 12 bytes a, b, c: low nibbles of a, b are scales
                // 0..8, their high nibbles 8..16; the top two bits of scale j are bits
                // 2 (j / 4).. of byte j % 4 of c.
                let (a, b, c) = (u32_at(p.add(96)), u32_at(p.add(100)), u32_at(p.add(104)));
                let (lo, hi) = (0x0F0F_0F0F, 0x0303_0303);
                let s0 = (a & lo) | ((c & hi) << 4);
                let s1 = (b & lo) | (((c >> 2) & hi) << 4);
                let s2 = ((a >> 4) & lo) | (((c >> 4) & hi) << 4);
                let s3 = ((b >> 4) & lo) | (((c >> 6) & hi) << 4);
                let s = _mm_setr_epi32(s0 as i32, s1 as i32, s2 as i32, s3 as i32);
                Head { d: f16_at(p.add(108)), dmin: 0.0, g8: _mm_sub_epi8(s, _mm_set1_epi8(32)), m16: zero }
            }
            Q4_K | Q5_K => {
                // 8 6-bit scales and mins in 12 bytes a, b, c (`quant::k4_scale_min`): scales
                // 0..4 are the low 6 bits of a, mins 0..4 of b; scales 4..8 the low nibbles of
                // c with a's top two bits above them, mins 4..8 c's high nibbles with b's.
                let (a, b, c) = (u32_at(p.add(4)), u32_at(p.add(8)), u32_at(p.add(12)));
                let (six, lo, top) = (0x3F3F_3F3F, 0x0F0F_0F0F, 0x0303_0303);
                let sc = (a & six) as u64 | ((((c & lo) | (((a >> 6) & top) << 4)) as u64) << 32);
                let m = (b & six) as u64 | (((((c >> 4) & lo) | (((b >> 6) & top) << 4)) as u64) << 32);
                Head { d: f16_at(p), dmin: f16_at(p.add(2)), g8: dup8(sc), m16: _mm256_cvtepu8_epi16(dup8(m)) }
            }
            Q6_K => Head { d: f16_at(p.add(208)), dmin: 0.0, g8: _mm_loadu_si128(p.add(192).cast()), m16: zero },
            _ => {
                // IQ4_XS: scale i has 4 low bits at bits 4i.. of the u32 at 4 and 2 high bits
                // at bits 2i.. of the u16 at 2; stored + 32. Even and odd scales separately:
                // each a u32 of 4 bytes, then picked into groups by one shuffle.
                let (h, l) = (u32_at(p) >> 16, u32_at(p.add(4)));
                let lo = 0x0F0F_0F0F;
                let even = (l & lo) | (nibbles_to_bytes(h & 0x3333) << 4);
                let odd = ((l >> 4) & lo) | (nibbles_to_bytes((h >> 2) & 0x3333) << 4);
                let both = _mm_cvtsi64_si128((even as u64 | ((odd as u64) << 32)) as i64);
                let g8 = _mm_shuffle_epi8(both, _mm_loadu_si128(IQ4_XS_GROUPS.as_ptr().cast()));
                Head { d: f16_at(p), dmin: 0.0, g8: _mm_sub_epi8(g8, _mm_set1_epi8(32)), m16: zero }
            }
        }
    }
}

/// The 32 quants of chunk `c` (values 32c..32c+32) of the super-block at `p`, as unsigned
/// bytes (IQ4_XS: signed table values).
///
/// # Safety
/// As [`head`].
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk<const TY: u8>(p: *const u8, c: usize, table: __m256i) -> __m256i {
    let bits = |v: __m256i, shift: usize, mask: i8| {
        _mm256_and_si256(_mm256_srl_epi16(v, _mm_cvtsi32_si128(shift as i32)), _mm256_set1_epi8(mask))
    };
    let (h, k) = (c / 4, c % 4);
    // SAFETY (all loads below): the offsets are those of the block layouts in `crate::dtype`,
    // 32 bytes (16 for IQ4_XS) inside the block the caller guarantees; unaligned loads are
    // allowed.
    unsafe {
        let load = |at: usize| _mm256_loadu_si256(p.add(at).cast());
        match TY {
            // Value 128 h + 32 k + l: bits 2k.. of qs[32 h + l].
            Q2_K => bits(load(16 + 32 * h), 2 * k, 3),
            // The same two bits, and bit 4h + k of hmask[l] set means "no - 4": q + 4.
            Q3_K => {
                _mm256_or_si256(bits(load(32 + 32 * h), 2 * k, 3), _mm256_slli_epi16(bits(load(0), 4 * h + k, 1), 2))
            }
            // Sub-block c: nibble c % 2 of qs[32 (c / 2) + l] (Q5_K: bit c of qh[l] above it).
            Q4_K => bits(load(16 + 32 * (c / 2)), 4 * (c % 2), 0x0F),
            Q5_K => _mm256_or_si256(
                bits(load(48 + 32 * (c / 2)), 4 * (c % 2), 0x0F),
                _mm256_slli_epi16(bits(load(16), c, 1), 4),
            ),
            // Nibble k / 2 of ql[64 h + 32 (k % 2) + l], bits 2k.. of qh[32 h + l] above it.
            Q6_K => _mm256_or_si256(
                bits(load(64 * h + 32 * (k % 2)), 4 * (k / 2), 0x0F),
                _mm256_slli_epi16(bits(load(128 + 32 * h), 2 * k, 3), 4),
            ),
            // IQ4_XS: sub-block c is qs[16c..16c + 16], low nibbles first, through the table.
            _ => {
                let q = _mm_loadu_si128(p.add(8 + 16 * c).cast());
                let both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
                _mm256_shuffle_epi8(table, _mm256_and_si256(both, _mm256_set1_epi8(0x0F)))
            }
        }
    }
}

/// One row × token tile; NaN if the lengths do not fit (unreachable, see [`lengths_ok`]).
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const TY: u8, const R: usize, const T: usize>(
    rows: [&[u8]; R],
    toks: &[ActRowK<'_>; T],
    nb: usize,
) -> [[f32; T]; R] {
    let bytes = block_bytes(TY);
    if !lengths_ok(&rows, toks, nb, bytes) {
        return [[f32::NAN; T]; R];
    }
    let signed = TY == IQ4_XS;
    // SAFETY: IQ4_VALUES is 16 bytes; unaligned loads are allowed.
    let table = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(IQ4_VALUES.as_ptr().cast()) });
    let mut facc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let ptrs: [*const u8; R] = std::array::from_fn(|i| rows[i].as_ptr().wrapping_add(b * bytes));
        // SAFETY: block b is inside each row (b < nb, lengths checked above).
        let heads: [Head; R] = std::array::from_fn(|i| unsafe { head::<TY>(ptrs[i]) });
        let mut isum = [[_mm256_setzero_si256(); T]; R];
        for (c, picks) in CHUNK_SCALES.iter().enumerate() {
            // SAFETY: each entry of CHUNK_SCALES is 16 bytes; unaligned loads are allowed.
            let pick = unsafe { _mm_loadu_si128(picks.as_ptr().cast()) };
            let mut wq = [_mm256_setzero_si256(); R];
            let mut wabs = [_mm256_setzero_si256(); R];
            let mut sc = [_mm256_setzero_si256(); R];
            for i in 0..R {
                // SAFETY: as for `heads`.
                wq[i] = unsafe { chunk::<TY>(ptrs[i], c, table) };
                if signed {
                    wabs[i] = _mm256_abs_epi8(wq[i]);
                }
                sc[i] = _mm256_cvtepi8_epi16(_mm_shuffle_epi8(heads[i].g8, pick));
            }
            for j in 0..T {
                // SAFETY: the token holds nb > b blocks of 256 values (checked above).
                let xq = unsafe { _mm256_loadu_si256(toks[j].qs.as_ptr().add(b * QK_K + 32 * c).cast()) };
                for i in 0..R {
                    let p16 = if signed {
                        // w * x = |w| * (x with w's sign): vpmaddubsw wants unsigned weights.
                        _mm256_maddubs_epi16(wabs[i], _mm256_sign_epi8(xq, wq[i]))
                    } else {
                        _mm256_maddubs_epi16(wq[i], xq)
                    };
                    isum[i][j] = _mm256_add_epi32(isum[i][j], _mm256_madd_epi16(p16, sc[i]));
                }
            }
        }
        for j in 0..T {
            // SAFETY: the token holds nb > b blocks of 16 partial sums (checked above).
            let bs = unsafe { _mm256_loadu_si256(toks[j].bsums.as_ptr().add(b * GROUPS).cast()) };
            let dx = toks[j].d[b];
            for i in 0..R {
                let mut s = isum[i][j];
                if offset_shift(TY) > 0 {
                    let g16 = _mm256_cvtepi8_epi16(heads[i].g8);
                    let corr = _mm256_madd_epi16(g16, bs);
                    s = _mm256_sub_epi32(s, _mm256_sll_epi32(corr, _mm_cvtsi32_si128(offset_shift(TY))));
                }
                facc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(heads[i].d * dx), facc[i][j]);
                if has_mins(TY) {
                    let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(heads[i].m16, bs));
                    facc[i][j] = _mm256_fnmadd_ps(m, _mm256_set1_ps(heads[i].dmin * dx), facc[i][j]);
                }
            }
        }
    }
    let mut sums = [[0.0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            sums[i][j] = hsum(facc[i][j]);
        }
    }
    sums
}

/// The sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx")]
pub(super) fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
