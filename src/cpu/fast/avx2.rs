//! AVX2 + FMA + F16C kernels: one 32-value block per 256-bit register.
//!
//! Per block, for each (row, token) of a tile: `vpmaddubsw` multiplies the weight bytes
//! (unsigned: Q4 nibbles, or |q| for Q8_0 with the activation's sign flipped to match) with the
//! activation bytes into 16-bit pair sums, `vpmaddwd` with ones widens them to eight 32-bit
//! partial sums, and one FMA adds them, scaled by `d_w * d_x`, to the tile's f32 accumulator;
//! Q4's offset term (`m_w * s_x`, spread over the eight lanes) is one more FMA. No 16-bit
//! overflow: a pair sum is at most 2 * 15 * 127 (Q4) or 2 * 128 * 127 (Q8_0), below 32767.
//!
//! A tile is R rows × T tokens, so each weight block is unpacked once per T tokens and the
//! R * T accumulators give independent FMA chains; 16 vector registers bound R * T to about 8.

use std::arch::x86_64::*;

use super::WType;
use super::act::{ActRow, Acts};
use crate::QK;

/// Rows per tile for a single token (decode): four independent accumulator chains.
const R_ONE: usize = 4;
/// Rows and tokens per tile for prefill: eight accumulators, each weight block used 4 times.
const R_MANY: usize = 2;
const T_MANY: usize = 4;

/// out[r][t] = row r of `w` · token t of `acts` (`out` is [rows][acts.n], `w` holds the rows,
/// `rb` bytes each, in `ty`'s block layout).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemm(ty: WType, w: &[u8], rb: usize, acts: &Acts, out: &mut [f32]) {
    let n = acts.n;
    let mut t0 = 0;
    while t0 + T_MANY <= n {
        rows_loop::<R_MANY, T_MANY>(ty, w, rb, acts, out, t0);
        t0 += T_MANY;
    }
    while t0 < n {
        rows_loop::<R_ONE, 1>(ty, w, rb, acts, out, t0);
        t0 += 1;
    }
}

/// Tokens t0..t0+T against every row, R rows at a time and the leftover rows one at a time.
#[target_feature(enable = "avx2,fma,f16c")]
fn rows_loop<const R: usize, const T: usize>(ty: WType, w: &[u8], rb: usize, acts: &Acts, out: &mut [f32], t0: usize) {
    let n = acts.n;
    let rows = w.len() / rb;
    let toks: [ActRow<'_>; T] = std::array::from_fn(|j| acts.token(t0 + j));
    let mut r0 = 0;
    while r0 < rows {
        if r0 + R <= rows {
            let tile = tile::<R, T>(ty, std::array::from_fn(|i| &w[(r0 + i) * rb..][..rb]), toks, acts.nb);
            store(&tile, out, n, r0, t0);
            r0 += R;
        } else {
            let tile = tile::<1, T>(ty, [&w[r0 * rb..][..rb]], toks, acts.nb);
            store(&tile, out, n, r0, t0);
            r0 += 1;
        }
    }
}

fn store<const R: usize, const T: usize>(tile: &[[f32; T]; R], out: &mut [f32], n: usize, r0: usize, t0: usize) {
    for (i, vals) in tile.iter().enumerate() {
        out[(r0 + i) * n + t0..][..T].copy_from_slice(vals);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const R: usize, const T: usize>(
    ty: WType,
    rows: [&[u8]; R],
    toks: [ActRow<'_>; T],
    nb: usize,
) -> [[f32; T]; R] {
    let acc = match ty {
        WType::Q4_0 => tile_q4::<false, R, T>(rows, toks, nb),
        WType::Q4_1 => tile_q4::<true, R, T>(rows, toks, nb),
        WType::Q8_0 => tile_q8::<R, T>(rows, toks, nb),
    };
    let mut sums = [[0.0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            sums[i][j] = hsum(acc[i][j]);
        }
    }
    sums
}

/// Q4_0 (`Q41 = false`: offset `-8 d`) or Q4_1 (offset `m`) blocks.
#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q4<const Q41: bool, const R: usize, const T: usize>(
    rows: [&[u8]; R],
    toks: [ActRow<'_>; T],
    nb: usize,
) -> [[__m256; T]; R] {
    let (bytes, off) = if Q41 { (20, 4) } else { (18, 2) };
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let mut wq = [_mm256_setzero_si256(); R];
        let mut dw = [_mm256_setzero_ps(); R];
        let mut mw = [_mm256_setzero_ps(); R];
        for i in 0..R {
            let blk = &rows[i][b * bytes..][..bytes];
            wq[i] = nibbles(load16(blk, off));
            let d = f16_at(blk, 0);
            dw[i] = _mm256_set1_ps(d);
            mw[i] = _mm256_set1_ps(if Q41 { f16_at(blk, 2) } else { -8.0 * d });
        }
        for j in 0..T {
            let a = &toks[j];
            let xq = load32(a.qs, b * QK);
            let dx = load_ps(a.d, b * 8);
            let sx = load_ps(a.s, b * 8);
            for i in 0..R {
                let p = _mm256_madd_epi16(_mm256_maddubs_epi16(wq[i], xq), ones);
                acc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_mul_ps(dw[i], dx), acc[i][j]);
                acc[i][j] = _mm256_fmadd_ps(mw[i], sx, acc[i][j]);
            }
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma,f16c")]
fn tile_q8<const R: usize, const T: usize>(rows: [&[u8]; R], toks: [ActRow<'_>; T], nb: usize) -> [[__m256; T]; R] {
    const BYTES: usize = 34;
    let ones = _mm256_set1_epi16(1);
    let mut acc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        let mut wq = [_mm256_setzero_si256(); R];
        let mut wabs = [_mm256_setzero_si256(); R];
        let mut dw = [_mm256_setzero_ps(); R];
        for i in 0..R {
            let blk = &rows[i][b * BYTES..][..BYTES];
            wq[i] = load32_u8(blk, 2);
            wabs[i] = _mm256_abs_epi8(wq[i]);
            dw[i] = _mm256_set1_ps(f16_at(blk, 0));
        }
        for j in 0..T {
            let a = &toks[j];
            let xq = load32(a.qs, b * QK);
            let dx = load_ps(a.d, b * 8);
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

/// 16 bytes of nibbles → the block's 32 values 0..15 in order (low nibbles are values 0..16,
/// high nibbles 16..32).
#[inline]
#[target_feature(enable = "avx2")]
fn nibbles(q: __m128i) -> __m256i {
    let both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    _mm256_and_si256(both, _mm256_set1_epi8(0x0F))
}

#[inline]
#[target_feature(enable = "avx")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// The binary16 at byte `at` of a block, widened with F16C.
#[inline]
#[target_feature(enable = "f16c")]
fn f16_at(b: &[u8], at: usize) -> f32 {
    let bits = u16::from_le_bytes([b[at], b[at + 1]]);
    _mm_cvtss_f32(_mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32)))
}

#[inline]
fn load16(s: &[u8], at: usize) -> __m128i {
    let s = &s[at..at + 16];
    // SAFETY: `s` holds the 16 bytes read (the slice above is bounds-checked); unaligned
    // loads are allowed; SSE2 is part of the x86_64 baseline.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx")]
fn load32_u8(s: &[u8], at: usize) -> __m256i {
    let s = &s[at..at + 32];
    // SAFETY: `s` holds the 32 bytes read; unaligned loads are allowed; the caller has AVX.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx")]
fn load32(s: &[i8], at: usize) -> __m256i {
    let s = &s[at..at + 32];
    // SAFETY: `s` holds the 32 bytes read; unaligned loads are allowed; the caller has AVX.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx")]
fn load_ps(s: &[f32], at: usize) -> __m256 {
    let s = &s[at..at + 8];
    // SAFETY: `s` holds the 8 floats read; unaligned loads are allowed; the caller has AVX.
    unsafe { _mm256_loadu_ps(s.as_ptr()) }
}
