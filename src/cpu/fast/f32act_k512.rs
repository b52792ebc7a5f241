//! The AVX-512 prefill tiles of the `exact` path's Q4_K and Q6_K products: `f32act_k`'s scheme
//! (sub-block scales computed once per super-block as the reference computes them, weights
//! decoded into registers with the reference's arithmetic, multiplied with the unrounded f32
//! activations) with 16 lanes and tiles of [`R`] rows × [`T`] tokens, so that each decoded
//! register of weights is used for T tokens and each register of activations for R rows, both
//! from registers. The last 1 to 3 tokens take one more pass over the weights with tiles of R
//! rows × 1, 2 or 3 tokens; a decode step's one token keeps two accumulators per row (one
//! chain per register of a decoded pair), which took 16% (Q4_K) and 22% (Q6_K) less CPU time
//! than `f32act_k`'s AVX2 one-token tile (640 × 2048, `examples/kquant_cputime.rs`).
//!
//! A register holds 16 values of one sub-block: values 64 u + 16 h .. + 16 and 64 u + 32 + 16 h
//! .. + 16 (u < 4, h < 2) are decoded together, since they share their quant bytes (Q4_K: the
//! low and high nibbles of the same 16 bytes, widened once) or their unit's assembled bytes
//! (Q6_K: 64 signed `q - 32` bytes per unit in one 512-bit register, built once per unit with
//! per-lane shifts). The weights are the reference's bit for bit: `dl * q - ml` by one fused
//! multiply-subtract whose product is exact (Q4_K), `dl * (q - 32)` with the offset subtracted
//! in integers (Q6_K), exactly as `f32act_k`'s eight-lane decoders compute them; `tests/fast.rs`
//! checks [`decode_row`] (the same decoder) against `quant::dequantize_row`, and the products
//! against a float64 product of the same weights.

use std::arch::x86_64::*;

use super::f32act_k::{Q4_K, Q6_K, Scales, block_bytes, scales};
use super::x86::{prefetch, store};
use crate::{DType, QK_K};

/// Rows × tokens per prefill tile: R × T accumulators, R × 2 registers of weights and 2 of
/// activations within the 32 vector registers (with Q6_K's R assembled units beside them).
const R: usize = 4;
const T: usize = 4;
/// Rows per tile for one token (decode), with two accumulators per row (one per register of a
/// decoded pair) so that a row's multiply-adds are two chains, not one.
const R_ONE: usize = 4;
/// Row tiles ahead to prefetch.
const PREFETCH_TILES: usize = 2;

/// out[r][t] = row r of `w` · token t of `x` ([n][nsb * 256]); `out` is [rows][n], `w` whole
/// rows of `rb` bytes of `dtype` (Q4_K or Q6_K; anything else gets NaN sums, never garbage).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn gemm(dtype: DType, w: &[u8], rb: usize, nsb: usize, x: &[f32], n: usize, out: &mut [f32]) {
    match dtype {
        DType::Q4_K => tokens::<Q4_K>(w, rb, nsb, x, n, out),
        DType::Q6_K => tokens::<Q6_K>(w, rb, nsb, x, n, out),
        _ => out.fill(f32::NAN),
    }
}

/// Whole tiles of T tokens, then the last 1 to 3 tokens in one pass over the weights.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn tokens<const TY: u8>(w: &[u8], rb: usize, nsb: usize, x: &[f32], n: usize, out: &mut [f32]) {
    let mut t0 = 0;
    while n - t0 >= T {
        pass::<TY, R, T, 1>(w, rb, nsb, x, n, t0, out);
        t0 += T;
    }
    match n - t0 {
        0 => {}
        1 => pass::<TY, R_ONE, 1, 2>(w, rb, nsb, x, n, t0, out),
        2 => pass::<TY, R, 2, 1>(w, rb, nsb, x, n, t0, out),
        _ => pass::<TY, R, 3, 1>(w, rb, nsb, x, n, t0, out),
    }
}

/// Tokens t0..t0 + TT against every row: RR rows per tile, the last rows one at a time.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn pass<const TY: u8, const RR: usize, const TT: usize, const A: usize>(
    w: &[u8],
    rb: usize,
    nsb: usize,
    x: &[f32],
    n: usize,
    t0: usize,
    out: &mut [f32],
) {
    let rows = w.len() / rb.max(1);
    let cols = nsb * QK_K;
    let row = |r: usize| &w[r * rb..][..rb];
    let xs: [&[f32]; TT] = std::array::from_fn(|j| &x[(t0 + j) * cols..][..cols]);
    let mut r0 = 0;
    while r0 < rows {
        prefetch(w, (r0 + PREFETCH_TILES * RR) * rb, RR * rb);
        if r0 + RR <= rows {
            store(&tile::<TY, RR, TT, A>(std::array::from_fn(|i| row(r0 + i)), xs, nsb), out, n, r0, t0);
            r0 += RR;
        } else {
            store(&tile::<TY, 1, TT, A>([row(r0)], xs, nsb), out, n, r0, t0);
            r0 += 1;
        }
    }
}

/// Q6_K's unit `u` (values 64 u .. 64 u + 64) of the super-block at `p`: its 64 `q - 32` bytes
/// in value order (bytes 0..32 the first 32-value chunk, 32..64 the second). The chunks' low
/// bits are the low (u even) or high (u odd) nibbles of the 64 bytes `ql[64 (u / 2)..]`; their
/// high bits are bits 4 (u % 2) + 2 k .. + 2 of `qh[128 + 32 (u / 2) + l]` for chunk k, moved to
/// bits 4..6 by one shift of 16-bit lanes per half (the bits crossing over are masked off).
///
/// # Safety
/// `p` must point to one whole readable Q6_K super-block (any alignment), `u < 4`, and the CPU
/// must support AVX-512 F/BW.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn q6_unit(p: *const u8, u: usize) -> __m512i {
    let h = u / 2;
    // SAFETY: ql[64 h..][..64] and qh[32 h..][..32] lie inside the 210 bytes (ql 0..128, qh
    // 128..192) for h < 2 (the caller guarantees u < 4).
    let (ql, qh) =
        unsafe { (_mm512_loadu_si512(p.add(64 * h).cast()), _mm256_loadu_si256(p.add(128 + 32 * h).cast())) };
    let qh = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), qh);
    let m4 = _mm512_set1_epi8(0x0F);
    let (lo, hi) = if u.is_multiple_of(2) {
        // Chunk 0 takes qh bits 0..2 (shift left 4), chunk 1 bits 2..4 (left 2).
        let shifts = _mm512_inserti64x4::<1>(_mm512_set1_epi16(4), _mm256_set1_epi16(2));
        let hi = _mm512_sllv_epi16(qh, shifts);
        (_mm512_and_si512(ql, m4), hi)
    } else {
        // Chunk 0 (values 64..96 of the half) takes bits 4..6 (no shift), chunk 1 bits 6..8
        // (right 2).
        let shifts = _mm512_inserti64x4::<1>(_mm512_setzero_si512(), _mm256_set1_epi16(2));
        let hi = _mm512_srlv_epi16(qh, shifts);
        (_mm512_and_si512(_mm512_srli_epi16::<4>(ql), m4), hi)
    };
    let hi = _mm512_and_si512(hi, _mm512_set1_epi8(0x30));
    _mm512_sub_epi8(_mm512_or_si512(lo, hi), _mm512_set1_epi8(32))
}

/// Values 64 u + 16 h .. + 16 and 64 u + 32 + 16 h .. + 16 (u < 4, h < 2) of the super-block at
/// `p` with scales `s`, bit for bit the reference's. `q6` is [`q6_unit`]`(p, u)` for Q6_K
/// (unused for Q4_K).
///
/// # Safety
/// `p` must point to one whole readable super-block of `TY` (any alignment), `u < 4`, `h < 2`,
/// and the CPU must support AVX-512 F/BW, FMA and F16C.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
unsafe fn decode16<const TY: u8>(p: *const u8, u: usize, h: usize, s: &Scales, q6: __m512i) -> [__m512; 2] {
    if TY == Q4_K {
        // Sub-block 2u is the low nibbles of qs[32 u..][..32], 2u + 1 their high nibbles: the
        // 16 bytes at 32 u + 16 h hold values 16 h .. + 16 of both.
        // SAFETY: the quants are bytes 16..144 of the 144; 16 + 32 u + 16 h + 16 <= 144.
        let q = unsafe { _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(16 + 32 * u + 16 * h).cast())) };
        let lo = _mm512_cvtepi32_ps(_mm512_and_si512(q, _mm512_set1_epi32(0x0F)));
        let hi = _mm512_cvtepi32_ps(_mm512_srli_epi32::<4>(q));
        let (a, b) = (2 * u, 2 * u + 1);
        [
            _mm512_fmsub_ps(_mm512_set1_ps(s.dl[a]), lo, _mm512_set1_ps(s.ml[a])),
            _mm512_fmsub_ps(_mm512_set1_ps(s.dl[b]), hi, _mm512_set1_ps(s.ml[b])),
        ]
    } else {
        // Bytes 16 h .. + 16 of the unit are values 64 u + 16 h .., bytes 32 + 16 h .. values
        // 64 u + 32 + 16 h ..: 128-bit lanes h and 2 + h. Their 16-value sub-blocks are 4 u + h
        // and 4 u + 2 + h.
        let (b0, b1) = if h == 0 {
            (_mm512_castsi512_si128(q6), _mm512_extracti32x4_epi32::<2>(q6))
        } else {
            (_mm512_extracti32x4_epi32::<1>(q6), _mm512_extracti32x4_epi32::<3>(q6))
        };
        let v0 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b0));
        let v1 = _mm512_cvtepi32_ps(_mm512_cvtepi8_epi32(b1));
        [_mm512_mul_ps(_mm512_set1_ps(s.dl[4 * u + h]), v0), _mm512_mul_ps(_mm512_set1_ps(s.dl[4 * u + 2 + h]), v1)]
    }
}

/// One RR × TT tile with A (1 or 2) accumulators per (row, token); NaN if the lengths do not
/// fit (unreachable: the caller slices whole rows and tokens).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn tile<const TY: u8, const RR: usize, const TT: usize, const A: usize>(
    rows: [&[u8]; RR],
    xs: [&[f32]; TT],
    nsb: usize,
) -> [[f32; TT]; RR] {
    let bytes = block_bytes(TY);
    if !rows.iter().all(|r| r.len() == nsb * bytes) || !xs.iter().all(|x| x.len() == nsb * QK_K) {
        return [[f32::NAN; TT]; RR];
    }
    let mut acc = [[[_mm512_setzero_ps(); A]; TT]; RR];
    for sb in 0..nsb {
        // Plain loops rather than `array::from_fn`: a closure here has this function's target
        // features, so it cannot be inlined into `from_fn` (which has none) and stays a call,
        // which spilled the tile's 16 accumulators around it (the first version of this tile
        // was slower than the AVX2 one for that).
        let mut sc = [Scales::ZERO; RR];
        let mut blocks = [std::ptr::null::<u8>(); RR];
        for i in 0..RR {
            sc[i] = scales::<TY>(&rows[i][sb * bytes..][..bytes]);
            blocks[i] = rows[i][sb * bytes..].as_ptr();
        }
        for u in 0..QK_K / 64 {
            let mut q6 = [_mm512_setzero_si512(); RR];
            if TY == Q6_K {
                for i in 0..RR {
                    // SAFETY: blocks[i] is a whole super-block of rows[i] (lengths checked
                    // above), u < 4.
                    q6[i] = unsafe { q6_unit(blocks[i], u) };
                }
            }
            for h in 0..2 {
                let mut wv = [[_mm512_setzero_ps(); 2]; RR];
                for i in 0..RR {
                    // SAFETY: as above, h < 2.
                    wv[i] = unsafe { decode16::<TY>(blocks[i], u, h, &sc[i], q6[i]) };
                }
                for j in 0..TT {
                    // SAFETY: xs[j] holds nsb * 256 values (checked above); values
                    // 256 sb + 64 u + 16 h .. + 16 and 32 further are inside.
                    let (x0, x1) = unsafe {
                        let p = xs[j].as_ptr().add(sb * QK_K + 64 * u + 16 * h);
                        (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(32)))
                    };
                    for i in 0..RR {
                        acc[i][j][0] = _mm512_fmadd_ps(wv[i][0], x0, acc[i][j][0]);
                        acc[i][j][1 % A] = _mm512_fmadd_ps(wv[i][1], x1, acc[i][j][1 % A]);
                    }
                }
            }
        }
    }
    let mut sums = [[0.0f32; TT]; RR];
    for i in 0..RR {
        for j in 0..TT {
            let v = if A > 1 { _mm512_add_ps(acc[i][j][0], acc[i][j][A - 1]) } else { acc[i][j][0] };
            sums[i][j] = _mm512_reduce_add_ps(v);
        }
    }
    sums
}

/// Every super-block of `row` through [`decode16`] (the tests' window on it): the values `out`
/// gets are the ones the tiles multiply. Lengths are checked by the caller.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
pub(super) fn decode_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn each<const TY: u8>(row: &[u8], out: &mut [f32]) {
        for (b, o) in row.chunks_exact(block_bytes(TY)).zip(out.chunks_exact_mut(QK_K)) {
            let s = scales::<TY>(b);
            for u in 0..QK_K / 64 {
                // SAFETY: `b` is one whole super-block (chunks_exact), u < 4, h < 2; `o` holds
                // 256 values and 64 u + 32 + 16 h + 16 <= 256.
                unsafe {
                    let q6 = if TY == Q6_K { q6_unit(b.as_ptr(), u) } else { _mm512_setzero_si512() };
                    for h in 0..2 {
                        let [v0, v1] = decode16::<TY>(b.as_ptr(), u, h, &s, q6);
                        _mm512_storeu_ps(o.as_mut_ptr().add(64 * u + 16 * h), v0);
                        _mm512_storeu_ps(o.as_mut_ptr().add(64 * u + 32 + 16 * h), v1);
                    }
                }
            }
        }
    }
    if dtype == DType::Q4_K { each::<Q4_K>(row, out) } else { each::<Q6_K>(row, out) }
}
