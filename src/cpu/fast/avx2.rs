//! AVX2 + FMA + F16C kernels: one 32-value block per 256-bit register.
//!
//! Per block, for each (row, token) of a tile: `vpmaddubsw` multiplies the weight bytes
//! (unsigned: Q4 nibbles, Q5 nibbles with their fifth bit, or |q| for Q8_0 and IQ4_NL's table
//! values with the activation's sign flipped to match) with the activation bytes into 16-bit
//! pair sums, `vpmaddwd` with ones widens them to eight 32-bit partial sums, and one FMA adds
//! them, scaled by `d_w * d_x`, to the tile's f32 accumulator; the Q4/Q5 offset term
//! (`m_w * s_x`, spread over the eight lanes) is one more FMA. No 16-bit overflow: a pair sum
//! is at most 2 * 31 * 127 (Q4, Q5) or 2 * 128 * 127 (Q8_0, IQ4_NL), below 32767.
//!
//! A tile is R rows × T tokens, so each weight block is unpacked once per T tokens and the
//! R * T accumulators give independent FMA chains; 16 vector registers bound R * T to about 8.
//! As in the AVX-512 kernels, the block loops load through raw pointers with the lengths
//! checked once per tile, and the weights of the tiles ahead are prefetched.

use std::arch::x86_64::*;

use super::WType;
use super::act::{ActRow, Acts};
use super::x86::{prefetch, store};
use crate::QK;
use crate::dtype::IQ4_VALUES;

/// Rows per tile for a single token (decode): two accumulator chains. Four rows hide more FMA
/// latency but make four interleaved weight streams; a decode step waits on memory, and two
/// measured 7% to 20% faster (best of 15 decode steps of the default model, 2 threads).
const R_ONE: usize = 2;
/// Rows and tokens per tile for prefill: eight accumulators, each weight block used 4 times.
const R_MANY: usize = 2;
const T_MANY: usize = 4;
/// How many row tiles ahead to prefetch the weights (see the AVX-512 kernels).
const PREFETCH_TILES: usize = 2;

/// The weight type as a const parameter, so each kernel is compiled for one layout.
const Q4_0: u8 = 0;
const Q4_1: u8 = 1;
const Q8_0: u8 = 2;
const Q5_0: u8 = 3;
const Q5_1: u8 = 4;
const IQ4_NL: u8 = 5;

/// Bytes per block and where its quants start (as `WType::block_bytes`, `WType::qs_offset`).
const fn layout(ty: u8) -> (usize, usize) {
    match ty {
        Q4_0 | IQ4_NL => (18, 2),
        Q4_1 => (20, 4),
        Q5_0 => (22, 6),
        Q5_1 => (24, 8),
        _ => (34, 2),
    }
}

/// out[r][t] = row r of `w` · token t of `acts` (`out` is [rows][acts.n], `w` holds the rows,
/// `rb` bytes each, in `ty`'s block layout).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemm(ty: WType, w: &[u8], rb: usize, acts: &Acts, out: &mut [f32]) {
    match ty {
        WType::Q4_0 => gemm_ty::<Q4_0>(w, rb, acts, out),
        WType::Q4_1 => gemm_ty::<Q4_1>(w, rb, acts, out),
        WType::Q8_0 => gemm_ty::<Q8_0>(w, rb, acts, out),
        WType::Q5_0 => gemm_ty::<Q5_0>(w, rb, acts, out),
        WType::Q5_1 => gemm_ty::<Q5_1>(w, rb, acts, out),
        WType::IQ4_NL => gemm_ty::<IQ4_NL>(w, rb, acts, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_ty<const TY: u8>(w: &[u8], rb: usize, acts: &Acts, out: &mut [f32]) {
    let n = acts.n;
    let mut t0 = 0;
    while n - t0 > 8 {
        rows_loop::<TY, R_MANY, T_MANY>(w, rb, acts, out, t0);
        t0 += T_MANY;
    }
    // The last 1 to 8 tokens in one pass over the weights, so a verification pass of a few
    // drafted tokens (`--lookup`) reads and unpacks each weight block once (before, 2 and 3
    // tokens were that many one-token passes, 5 to 7 a 4-token tile and one-token passes).
    // Every tile keeps one accumulator per (row, token) and adds the blocks in order, so the
    // sums are the same bits whatever the tile.
    match n - t0 {
        0 => {}
        1 => rows_loop::<TY, R_ONE, 1>(w, rb, acts, out, t0),
        2 => rows_loop::<TY, R_MANY, 2>(w, rb, acts, out, t0),
        3 => rows_loop::<TY, R_MANY, 3>(w, rb, acts, out, t0),
        4 => rows_loop::<TY, R_MANY, T_MANY>(w, rb, acts, out, t0),
        5 => rows_loop::<TY, 1, 5>(w, rb, acts, out, t0),
        6 => rows_loop::<TY, 1, 6>(w, rb, acts, out, t0),
        7 => rows_loop::<TY, 1, 7>(w, rb, acts, out, t0),
        _ => rows_loop::<TY, 1, 8>(w, rb, acts, out, t0),
    }
}

rows_loop!("avx2,fma,f16c", Acts, ActRow);

/// Whether every row holds `nb` blocks of `bytes` and every token `nb` activation blocks with
/// eight scalars each: checked once per tile so the block loops need no bounds checks. Both
/// hold by construction (`super::run` slices whole rows, `Acts` has `lanes == 8` here).
fn lengths_ok<const R: usize, const T: usize>(
    rows: &[&[u8]; R],
    toks: &[ActRow<'_>; T],
    nb: usize,
    bytes: usize,
) -> bool {
    rows.iter().all(|r| r.len() == nb * bytes)
        && toks.iter().all(|a| a.qs.len() >= nb * QK && a.d.len() >= nb * 8 && a.s.len() >= nb * 8)
}

/// One row × token tile; NaN if the lengths do not fit (unreachable, see [`lengths_ok`]).
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const TY: u8, const R: usize, const T: usize>(
    rows: [&[u8]; R],
    toks: &[ActRow<'_>; T],
    nb: usize,
) -> [[f32; T]; R] {
    if !lengths_ok(&rows, toks, nb, layout(TY).0) {
        return [[f32::NAN; T]; R];
    }
    let acc = if TY == Q8_0 || TY == IQ4_NL {
        tile_signed::<TY, R, T>(&rows, toks, nb)
    } else {
        tile_q4::<TY, R, T>(&rows, toks, nb)
    };
    let mut sums = [[0.0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            sums[i][j] = hsum(acc[i][j]);
        }
    }
    sums
}

/// The activations of token `a` for block `b`: values, scales, sums.
#[inline]
#[target_feature(enable = "avx")]
fn act_block(a: &ActRow<'_>, b: usize) -> (__m256i, __m256, __m256) {
    // SAFETY: `lengths_ok` checked that the token holds `nb > b` blocks of 32 values and eight
    // scalars each; unaligned loads are allowed; the caller has AVX.
    unsafe {
        (
            _mm256_loadu_si256(a.qs.as_ptr().add(b * QK).cast()),
            _mm256_loadu_ps(a.d.as_ptr().add(b * 8)),
            _mm256_loadu_ps(a.s.as_ptr().add(b * 8)),
        )
    }
}

/// Rows of unsigned 4- or 5-bit quants: Q4_0 (offset `-8 d`), Q4_1 (offset `m`), Q5_0
/// (offset `-16 d`), Q5_1 (offset `m`).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q4<const TY: u8, const R: usize, const T: usize>(
    rows: &[&[u8]; R],
    toks: &[ActRow<'_>; T],
    nb: usize,
) -> [[__m256; T]; R] {
    let (bytes, off) = layout(TY);
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let mut wq = [_mm256_setzero_si256(); R];
        let mut dw = [_mm256_setzero_ps(); R];
        let mut mw = [_mm256_setzero_ps(); R];
        for i in 0..R {
            let p = rows[i].as_ptr().wrapping_add(b * bytes);
            // SAFETY: block b is inside rows[i] (b < nb, length checked in `tile`): the 4
            // bytes at its start (d and m; Q4_0/Q5_0: d and two bytes after it, unused), the
            // 16 bytes of nibbles at `off`; unaligned loads are allowed; SSE2 is part of the
            // x86_64 baseline.
            let (head, q) = unsafe { (_mm_loadu_si32(p), _mm_loadu_si128(p.add(off).cast())) };
            wq[i] = nibbles(q);
            if TY == Q5_0 || TY == Q5_1 {
                // SAFETY: as above: Q5's 4 bytes of fifth bits are just before the nibbles.
                let qh = unsafe { p.add(off - 4).cast::<u32>().read_unaligned() };
                wq[i] = _mm256_or_si256(wq[i], fifth_bits(u32::from_le(qh)));
            }
            let f = _mm_cvtph_ps(head);
            dw[i] = _mm256_broadcastss_ps(f);
            mw[i] = match TY {
                Q4_1 | Q5_1 => _mm256_broadcastss_ps(_mm_movehdup_ps(f)),
                Q5_0 => _mm256_mul_ps(dw[i], _mm256_set1_ps(-16.0)),
                _ => _mm256_mul_ps(dw[i], _mm256_set1_ps(-8.0)),
            };
        }
        for j in 0..T {
            let (xq, dx, sx) = act_block(&toks[j], b);
            for i in 0..R {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[i], xq), ones);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[i], dx), acc[i][j]);
                acc[i][j] = _mm256_fmadd_ps(mw[i], sx, acc[i][j]);
            }
        }
    }
    acc
}

/// Rows of signed 8-bit weights: Q8_0's quants, or IQ4_NL's nibbles looked up in
/// `IQ4_VALUES` (in [-127, 113]: a pair sum is at most 2 * 127 * 127 < 32767).
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_signed<const TY: u8, const R: usize, const T: usize>(
    rows: &[&[u8]; R],
    toks: &[ActRow<'_>; T],
    nb: usize,
) -> [[__m256; T]; R] {
    let (bytes, off) = layout(TY);
    let ones = _mm256_set1_epi16(1);
    // SAFETY: IQ4_VALUES is 16 bytes; unaligned loads are allowed; SSE2 is baseline.
    let table = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(IQ4_VALUES.as_ptr().cast()) });
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let mut wq = [_mm256_setzero_si256(); R];
        let mut wabs = [_mm256_setzero_si256(); R];
        let mut dw = [_mm256_setzero_ps(); R];
        for i in 0..R {
            let p = rows[i].as_ptr().wrapping_add(b * bytes);
            // SAFETY: block b is inside rows[i] (b < nb, length checked in `tile`): d at its
            // start and its quants at `off` (32 bytes for Q8_0, 16 bytes of nibbles for
            // IQ4_NL); unaligned loads are allowed; the caller has AVX.
            let (d, q) = unsafe {
                let d = _mm_loadu_si16(p);
                if TY == IQ4_NL {
                    (d, _mm256_shuffle_epi8(table, nibbles(_mm_loadu_si128(p.add(off).cast()))))
                } else {
                    (d, _mm256_loadu_si256(p.add(off).cast()))
                }
            };
            wq[i] = q;
            wabs[i] = _mm256_abs_epi8(q);
            dw[i] = _mm256_broadcastss_ps(_mm_cvtph_ps(d));
        }
        for j in 0..T {
            let (xq, dx, _) = act_block(&toks[j], b);
            for i in 0..R {
                // w * x = |w| * (x with w's sign): vpmaddubsw wants its first operand unsigned.
                let sx = _mm256_sign_epi8(xq, wq[i]);
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wabs[i], sx), ones);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[i], dx), acc[i][j]);
            }
        }
    }
    acc
}

/// Q5's 32 fifth bits (bit j for value j) → byte j = 16 if bit j is set, else 0.
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn fifth_bits(qh: u32) -> __m256i {
    // Byte j takes byte j / 8 of qh, then keeps bit j % 8 of it.
    let spread = _mm256_shuffle_epi8(
        _mm256_set1_epi32(qh as i32),
        _mm256_setr_epi8(
            0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3,
        ),
    );
    let bit = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(spread, bit), bit);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// 16 bytes of nibbles → the block's 32 values 0..15 in order (low nibbles are values 0..16,
/// high nibbles 16..32).
#[inline]
#[target_feature(enable = "avx2")]
pub(super) fn nibbles(q: __m128i) -> __m256i {
    let both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

/// The sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
