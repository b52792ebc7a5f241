//! f32-activation products for Q4_K and Q6_K with the decoded weights kept in registers (AVX2,
//! FMA, F16C; AVX-512 machines run them too): the `exact` path's kernels for the K-quants
//! Gemma 3's Q4_K_M files use, replacing decode-to-memory-then-multiply (`f32act_dq`) there.
//!
//! A tile is R rows × T tokens. For each 256-value super-block, each row's sub-block scales are
//! computed once (eight f32 products per vector multiply), exactly as the reference computes them (`dl = d * sc` and
//! `ml = dmin * m` for Q4_K, `dl = d * sc` with a signed scale for Q6_K); then each 32-value
//! chunk of the super-block is decoded into four registers of eight f32 per row, with the
//! reference's operations in its order (`dl * q - ml`, two roundings, for Q4_K; `dl * (q - 32)`
//! with the offset subtracted in integers for Q6_K; see [`crate::quant::dequantize_row`]), and
//! multiplied with the T tokens' unrounded activations. So every weight is the reference's bit
//! for bit (`tests/fast.rs` checks [`dequantize_row_exact`](super::dequantize_row_exact), which
//! runs the same chunk decoders), and only the order of the f32 sums differs.
//!
//! Q4_K's quants are widened eight at a time straight from memory (`vpmovzxbd` with a memory
//! operand); Q6_K's are assembled as 32 bytes (low nibbles, high bits, minus 32) and then
//! widened. Per weight this is still about four vector instructions per eight values (widen,
//! convert, scale, multiply-add; Q4_K also subtracts), against about one per 32 in the 8-bit
//! kernels: for one token these stay about 3× the 8-bit kernels' time (`docs/cpu-bench.md`).

use std::arch::x86_64::*;

use super::x86::{prefetch, store};
#[cfg(doc)]
use crate::quant::k4_scale_min;
use crate::{DType, QK_K};

/// Tokens per tile for prefill, one row at a time: eight accumulators and the row's four
/// registers of weights (the activations are read as memory operands of the multiply-adds),
/// so a chunk's decoding is shared by 8 tokens; 4 for the last 4 to 7 tokens.
const T_MANY: usize = 8;
const T_FEW: usize = 4;
/// Rows per tile for one token (decode), each with four accumulators so that a chunk's four
/// multiply-adds per row do not wait on each other.
const R_ONE: usize = 2;
const A_ONE: usize = 4;
/// Row tiles ahead to prefetch.
const PREFETCH_TILES: usize = 2;

const Q4_K: u8 = 0;
const Q6_K: u8 = 1;

const fn block_bytes(ty: u8) -> usize {
    if ty == Q4_K { 144 } else { 210 }
}

/// Whether these kernels handle `dtype`.
pub(super) fn handles(dtype: DType) -> bool {
    matches!(dtype, DType::Q4_K | DType::Q6_K)
}

/// out[r][t] = row r of `w` · token t of `x` ([n][nsb * 256]); `out` is [rows][n], `w` whole
/// rows of `rb` bytes of `dtype` (Q4_K or Q6_K; anything else gets NaN sums, never garbage).
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn gemm(dtype: DType, w: &[u8], rb: usize, nsb: usize, x: &[f32], n: usize, out: &mut [f32]) {
    match dtype {
        DType::Q4_K => rows_tokens::<Q4_K>(w, rb, nsb, x, n, out),
        DType::Q6_K => rows_tokens::<Q6_K>(w, rb, nsb, x, n, out),
        _ => out.fill(f32::NAN),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows_tokens<const TY: u8>(w: &[u8], rb: usize, nsb: usize, x: &[f32], n: usize, out: &mut [f32]) {
    let rows = w.len() / rb.max(1);
    let cols = nsb * QK_K;
    let token = |t: usize| &x[t * cols..][..cols];
    let row = |r: usize| &w[r * rb..][..rb];
    let mut t0 = 0;
    while t0 < n {
        let left = n - t0;
        let tn = if left >= T_MANY {
            T_MANY
        } else if left >= T_FEW {
            T_FEW
        } else {
            1
        };
        let mut r0 = 0;
        while r0 < rows {
            if tn == 1 && r0 + R_ONE <= rows {
                prefetch(w, (r0 + PREFETCH_TILES * R_ONE) * rb, R_ONE * rb);
                let s = tile::<TY, R_ONE, 1, A_ONE>(std::array::from_fn(|i| row(r0 + i)), [token(t0)], nsb);
                store(&s, out, n, r0, t0);
                r0 += R_ONE;
                continue;
            }
            prefetch(w, (r0 + PREFETCH_TILES) * rb, rb);
            match tn {
                1 => store(&tile::<TY, 1, 1, A_ONE>([row(r0)], [token(t0)], nsb), out, n, r0, t0),
                T_FEW => {
                    let s = tile::<TY, 1, T_FEW, 1>([row(r0)], std::array::from_fn(|j| token(t0 + j)), nsb);
                    store(&s, out, n, r0, t0);
                }
                _ => {
                    let s = tile::<TY, 1, T_MANY, 1>([row(r0)], std::array::from_fn(|j| token(t0 + j)), nsb);
                    store(&s, out, n, r0, t0);
                }
            }
            r0 += 1;
        }
        t0 += tn;
    }
}

/// A super-block's sub-block scales: `dl` per 32 values and `ml` (Q4_K), or `dl` per 16 values
/// (Q6_K), as the reference computes them.
struct Scales {
    dl: [f32; 16],
    ml: [f32; 8],
}

/// The scales of the super-block `b` (a whole one: the caller slices it), with the reference's
/// arithmetic: the integer scales as the reference unpacks them ([`k4_scale_min`]: checked
/// against it in `tests/fast.rs` through the decoded values), widened exactly, times `d` (or
/// `dmin`) in f32, one rounding per product as in the reference; eight products per vector
/// multiply instead of one at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scales<const TY: u8>(b: &[u8]) -> Scales {
    let mut s = Scales { dl: [0.0; 16], ml: [0.0; 8] };
    let word = |at: usize| u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let scaled = |d: __m256, q: __m256i| _mm256_mul_ps(d, _mm256_cvtepi32_ps(q));
    if TY == Q4_K {
        // d and dmin (binary16) widened exactly by F16C.
        let dm = _mm_cvtph_ps(_mm_cvtsi32_si128(word(0) as i32));
        let (d, dmin) = (_mm256_broadcastss_ps(dm), _mm256_broadcastss_ps(_mm_movehdup_ps(dm)));
        // The 12 packed bytes: sub-blocks 0..4 keep 6 bits of bytes 0..4 (scales) and 4..8
        // (minimums); 4..8 take the nibbles of bytes 8..12 with the top two bits of bytes 0..4
        // (scales) and 4..8 (minimums) above them. Byte lanes of u32 words, as `k4_scale_min`.
        let (a, m, c) = (word(4), word(8), word(12));
        let sc_lo = a & 0x3F3F_3F3F;
        let m_lo = m & 0x3F3F_3F3F;
        let sc_hi = (c & 0x0F0F_0F0F) | (((a >> 6) & 0x0303_0303) << 4);
        let m_hi = ((c >> 4) & 0x0F0F_0F0F) | (((m >> 6) & 0x0303_0303) << 4);
        let bytes = |lo: u32, hi: u32| _mm_cvtsi64_si128((u64::from(hi) << 32 | u64::from(lo)) as i64);
        let sc = _mm256_cvtepu8_epi32(bytes(sc_lo, sc_hi));
        let mn = _mm256_cvtepu8_epi32(bytes(m_lo, m_hi));
        // SAFETY: `dl` holds 16 and `ml` 8 f32; each store writes 8 of them.
        unsafe {
            _mm256_storeu_ps(s.dl.as_mut_ptr(), scaled(d, sc));
            _mm256_storeu_ps(s.ml.as_mut_ptr(), scaled(dmin, mn));
        }
    } else {
        let d = _mm256_broadcastss_ps(_mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(u16::from_le_bytes([b[208], b[209]])))));
        let sc = _mm_cvtsi64_si128(u64::from_le_bytes(std::array::from_fn(|i| b[192 + i])) as i64);
        let sc2 = _mm_cvtsi64_si128(u64::from_le_bytes(std::array::from_fn(|i| b[200 + i])) as i64);
        // SAFETY: as above, two stores of 8 into `dl`.
        unsafe {
            _mm256_storeu_ps(s.dl.as_mut_ptr(), scaled(d, _mm256_cvtepi8_epi32(sc)));
            _mm256_storeu_ps(s.dl.as_mut_ptr().add(8), scaled(d, _mm256_cvtepi8_epi32(sc2)));
        }
    }
    s
}

/// Values 32 c .. 32 c + 32 of the super-block at `p` as f32, in four registers of eight, bit
/// for bit the reference's, with the super-block's scales `s` (from [`scales`]).
///
/// # Safety
/// `p` must point to one whole readable super-block of `TY` (any alignment), `c < 8`, and the
/// CPU must support AVX2, FMA and F16C.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
unsafe fn chunk<const TY: u8>(p: *const u8, c: usize, s: &Scales) -> [__m256; 4] {
    // SAFETY: the caller guarantees a whole super-block at p and c < 8: every offset below is
    // inside its 144 (Q4_K: quants at 16..144) or 210 (Q6_K: ql 0..128, qh 128..192) bytes.
    unsafe {
        let mut w = [_mm256_setzero_ps(); 4];
        if TY == Q4_K {
            // Sub-block c: the low (c even) or high (c odd) nibbles of qs[32 (c / 2)..][..32].
            let qs = p.add(16 + 32 * (c / 2));
            let shift = _mm_cvtsi32_si128(4 * (c % 2) as i32);
            let mask = _mm256_set1_epi32(0x0F);
            let (dl, ml) = (_mm256_set1_ps(s.dl[c]), _mm256_set1_ps(s.ml[c]));
            for (g, o) in w.iter_mut().enumerate() {
                let q = _mm256_cvtepu8_epi32(_mm_loadl_epi64(qs.add(8 * g).cast()));
                let q = _mm256_and_si256(_mm256_srl_epi32(q, shift), mask);
                *o = _mm256_sub_ps(_mm256_mul_ps(dl, _mm256_cvtepi32_ps(q)), ml);
            }
        } else {
            // Value 128 h + 32 k + l: nibble k / 2 of ql[64 h + 32 (k % 2) + l], bits 2k..2k+2
            // of qh[32 h + l] above it; sub-blocks of 16.
            let (h, k) = (c / 4, c % 4);
            let ql = _mm256_loadu_si256(p.add(64 * h + 32 * (k % 2)).cast());
            let qh = _mm256_loadu_si256(p.add(128 + 32 * h).cast());
            let low =
                _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (k / 2) as i32)), _mm256_set1_epi8(0x0F));
            let high = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)), _mm256_set1_epi8(3));
            let q = _mm256_sub_epi8(_mm256_or_si256(low, _mm256_slli_epi16::<4>(high)), _mm256_set1_epi8(32));
            let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
            let qi = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
            for (g, o) in w.iter_mut().enumerate() {
                let dl = _mm256_set1_ps(s.dl[2 * c + g / 2]);
                *o = _mm256_mul_ps(dl, _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(qi[g])));
            }
        }
        w
    }
}

/// One R × T tile with A accumulators per (row, token); NaN if the lengths do not fit
/// (unreachable: the callers slice whole rows and tokens).
#[target_feature(enable = "avx2,fma,f16c")]
fn tile<const TY: u8, const R: usize, const T: usize, const A: usize>(
    rows: [&[u8]; R],
    xs: [&[f32]; T],
    nsb: usize,
) -> [[f32; T]; R] {
    let bytes = block_bytes(TY);
    if !rows.iter().all(|r| r.len() == nsb * bytes) || !xs.iter().all(|x| x.len() == nsb * QK_K) {
        return [[f32::NAN; T]; R];
    }
    let mut acc = [[[_mm256_setzero_ps(); A]; T]; R];
    for sb in 0..nsb {
        let sc: [Scales; R] = std::array::from_fn(|i| scales::<TY>(&rows[i][sb * bytes..][..bytes]));
        for c in 0..QK_K / 32 {
            // Row by row, so that one row's four registers of weights live at a time; the
            // activations are memory operands of the multiply-adds (from L1).
            for i in 0..R {
                // SAFETY: super-block sb < nsb is inside rows[i] (checked above), c < 8.
                let wv = unsafe { chunk::<TY>(rows[i].as_ptr().add(sb * bytes), c, &sc[i]) };
                for j in 0..T {
                    for g in 0..4 {
                        // SAFETY: xs[j] holds nsb * 256 values (checked above); values
                        // 256 sb + 32 c + 8 g .. + 8 are inside.
                        let xg = unsafe { _mm256_loadu_ps(xs[j].as_ptr().add(sb * QK_K + 32 * c + 8 * g)) };
                        acc[i][j][g % A] = _mm256_fmadd_ps(wv[g], xg, acc[i][j][g % A]);
                    }
                }
            }
        }
    }
    let mut sums = [[0.0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            let v = acc[i][j][1..].iter().fold(acc[i][j][0], |s, &a| _mm256_add_ps(s, a));
            sums[i][j] = hsum(v);
        }
    }
    sums
}

/// Every super-block of `row` through the chunk decoders (the tests' window on them): the
/// values `out` gets are the ones the kernels multiply. Lengths are checked by the caller.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn decode_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    let ty = if dtype == DType::Q4_K { Q4_K } else { Q6_K };
    let bytes = block_bytes(ty);
    for (b, o) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(QK_K)) {
        let s = if ty == Q4_K { scales::<Q4_K>(b) } else { scales::<Q6_K>(b) };
        for c in 0..QK_K / 32 {
            // SAFETY: `b` is one whole super-block (chunks_exact), c < 8.
            let w =
                unsafe { if ty == Q4_K { chunk::<Q4_K>(b.as_ptr(), c, &s) } else { chunk::<Q6_K>(b.as_ptr(), c, &s) } };
            for (g, v) in w.iter().enumerate() {
                // SAFETY: o holds 256 values; 32 c + 8 g + 8 <= 256.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(32 * c + 8 * g), *v) };
            }
        }
    }
}

/// The sum of the 8 lanes.
#[inline]
#[target_feature(enable = "avx")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}
