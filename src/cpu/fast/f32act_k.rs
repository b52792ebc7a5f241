//! f32-activation products for Q4_K and Q6_K with the decoded weights kept in registers (AVX2,
//! FMA, F16C; AVX-512 machines run `f32act_k512`'s 16-lane tiles instead, which share
//! [`scales`]): the `exact` path's kernels for the K-quants
//! Gemma 3's Q4_K_M files use, replacing decode-to-memory-then-multiply (`f32act_dq`) there.
//!
//! A tile is R rows × T tokens. For each 256-value super-block, each row's sub-block scales are
//! computed once (eight f32 products per vector multiply), exactly as the reference computes
//! them (`dl = d * sc` and `ml = dmin * m` for Q4_K, `dl = d * sc` with a signed scale for
//! Q6_K); then each 64-value unit of the super-block (two 32-value sub-blocks of Q4_K that
//! share their quant bytes, two 32-value chunks of Q6_K that share their high bits) is decoded
//! eight values at a time into a register, with the reference's values (`dl * q - ml` for
//! Q4_K, by one fused multiply-subtract whose product is exact; `dl * (q - 32)` with the offset
//! subtracted in integers for Q6_K; see [`crate::quant::dequantize_row`] and [`Unit`]), and
//! multiplied with the T tokens' unrounded activations. So every weight is the reference's bit
//! for bit (`tests/fast.rs` checks [`dequantize_row_exact`](super::dequantize_row_exact), which
//! runs the same unit decoders), and only the order of the f32 sums differs.
//!
//! Q4_K's quant bytes are widened eight at a time straight from memory (`vpmovzxbd` with a
//! memory operand), once for both of their nibbles: a mask gives one sub-block's eight values
//! and an immediate shift the other's, so eight weights cost a half widening, a mask or shift,
//! a conversion and a fused multiply-subtract. Q6_K's are assembled as 32 bytes per chunk (low
//! or high nibbles, high bits, minus 32; immediate shifts) and then widened, converted and
//! scaled. Against about one instruction per 32 values in the 8-bit kernels, one token stays
//! about 2.5-3× the 8-bit kernels' CPU time (`docs/cpu-bench.md`).

use std::arch::x86_64::*;

use super::x86::{prefetch, store};
#[cfg(doc)]
use crate::quant::k4_scale_min;
use crate::{DType, QK_K};

/// Tokens per tile for prefill, one row at a time: eight accumulators and the row's decoded
/// register (the activations are read as memory operands of the multiply-adds), so a value's
/// decoding is shared by 8 tokens; 4 for the last 4 to 7 tokens.
const T_MANY: usize = 8;
const T_FEW: usize = 4;
/// Rows per tile for one token (decode), each with four accumulators so that a unit's eight
/// multiply-adds per row do not wait on each other.
const R_ONE: usize = 2;
const A_ONE: usize = 4;
/// Row tiles ahead to prefetch.
const PREFETCH_TILES: usize = 2;

pub(super) const Q4_K: u8 = 0;
pub(super) const Q6_K: u8 = 1;

pub(super) const fn block_bytes(ty: u8) -> usize {
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
pub(super) struct Scales {
    pub(super) dl: [f32; 16],
    pub(super) ml: [f32; 8],
}

impl Scales {
    pub(super) const ZERO: Scales = Scales { dl: [0.0; 16], ml: [0.0; 8] };
}

/// The scales of the super-block `b` (a whole one: the caller slices it), with the reference's
/// arithmetic: the integer scales as the reference unpacks them ([`k4_scale_min`]: checked
/// against it in `tests/fast.rs` through the decoded values), widened exactly, times `d` (or
/// `dmin`) in f32, one rounding per product as in the reference; eight products per vector
/// multiply instead of one at a time.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn scales<const TY: u8>(b: &[u8]) -> Scales {
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

/// Values 64 u .. 64 u + 64 of a super-block (u < 4), ready to be decoded eight at a time by
/// [`Unit::get`]: what the eight registers of one unit share, loaded once.
///
/// Q4_K: sub-blocks 2u (low nibbles) and 2u + 1 (high nibbles) of the same 32 bytes
/// `qs[32 u..][..32]`; each eight bytes are widened once (`vpmovzxbd` from memory) and give
/// eight values of each sub-block, by a mask and by an immediate shift, and the weight is
/// `dl * q - ml` by one fused multiply-subtract: the product is exact in f32 (`dl = d * sc`
/// has at most 11 + 6 significant bits and q at most 4), so the one rounding of the fused
/// operation is the reference's second one and the bits are the reference's (checked, extreme
/// and non-finite scales included, in `tests/fast.rs`).
///
/// Q6_K: values 128 h + 32 k + l with h = u / 2 and k = 2 (u % 2), 2 (u % 2) + 1: the two
/// 32-byte runs of `ql` (low nibbles for u even, high for u odd) and the run of `qh` they share
/// (bits 4 (u % 2) .. + 4), assembled into the two chunks' 32 signed `q - 32` bytes with
/// immediate shifts; the weight is `dl * (q - 32)` (one rounding, as the reference).
struct Unit {
    /// Q4_K: the first of the 32 quant bytes; Q6_K: unused.
    qs: *const u8,
    /// Q6_K: the two chunks' `q - 32` bytes; Q4_K: unused.
    q6: [__m256i; 2],
    /// Q4_K: dl, ml of sub-block 2u, then of 2u + 1; Q6_K: dl of its four 16-value sub-blocks.
    s: [__m256; 4],
}

impl Unit {
    /// The unit `u` of the super-block at `p` with its scales `s` (from [`scales`]).
    ///
    /// # Safety
    /// `p` must point to one whole readable super-block of `TY` (any alignment), `u < 4`, and
    /// the CPU must support AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn new<const TY: u8>(p: *const u8, u: usize, s: &Scales) -> Unit {
        // SAFETY: the caller guarantees a whole super-block at p and u < 4: every offset below
        // is inside its 144 (Q4_K: quants at 16..144) or 210 (Q6_K: ql 0..128, qh 128..192)
        // bytes.
        unsafe {
            if TY == Q4_K {
                let sv = [
                    _mm256_set1_ps(s.dl[2 * u]),
                    _mm256_set1_ps(s.ml[2 * u]),
                    _mm256_set1_ps(s.dl[2 * u + 1]),
                    _mm256_set1_ps(s.ml[2 * u + 1]),
                ];
                Unit { qs: p.add(16 + 32 * u), q6: [_mm256_setzero_si256(); 2], s: sv }
            } else {
                let h = u / 2;
                let ql0 = _mm256_loadu_si256(p.add(64 * h).cast());
                let ql1 = _mm256_loadu_si256(p.add(64 * h + 32).cast());
                let qh = _mm256_loadu_si256(p.add(128 + 32 * h).cast());
                let m4 = _mm256_set1_epi8(0x0F);
                let m2 = _mm256_set1_epi8(0x30);
                // Low nibbles with qh bits 0..2 (k = 0) and 2..4 (k = 1) above them; high
                // nibbles with bits 4..6 (k = 2) and 6..8 (k = 3). Shifts of 16-bit lanes
                // whose crossed-over bits the masks drop.
                let (l0, l1, h0, h1) = if u.is_multiple_of(2) {
                    (
                        _mm256_and_si256(ql0, m4),
                        _mm256_and_si256(ql1, m4),
                        _mm256_and_si256(_mm256_slli_epi16::<4>(qh), m2),
                        _mm256_and_si256(_mm256_slli_epi16::<2>(qh), m2),
                    )
                } else {
                    (
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql0), m4),
                        _mm256_and_si256(_mm256_srli_epi16::<4>(ql1), m4),
                        _mm256_and_si256(qh, m2),
                        _mm256_and_si256(_mm256_srli_epi16::<2>(qh), m2),
                    )
                };
                let off = _mm256_set1_epi8(32);
                let q6 = [_mm256_sub_epi8(_mm256_or_si256(l0, h0), off), _mm256_sub_epi8(_mm256_or_si256(l1, h1), off)];
                // Values 64 u .. 64 u + 64 are the 16-value sub-blocks 4 u .. 4 u + 4.
                // Not `array::from_fn`: its closure could not be inlined (see `tile`).
                let sv = [
                    _mm256_set1_ps(s.dl[4 * u]),
                    _mm256_set1_ps(s.dl[4 * u + 1]),
                    _mm256_set1_ps(s.dl[4 * u + 2]),
                    _mm256_set1_ps(s.dl[4 * u + 3]),
                ];
                Unit { qs: p, q6, s: sv }
            }
        }
    }

    /// Values 64 u + 8 g .. + 8 (g < 8) as f32, bit for bit the reference's.
    ///
    /// # Safety
    /// `self` from [`Unit::new`] of the same `TY` on a live super-block, `g < 8`, and the CPU
    /// must support AVX2, FMA and F16C.
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn get<const TY: u8>(&self, g: usize) -> __m256 {
        if TY == Q4_K {
            // SAFETY: qs[8 (g % 4)..][..8] is inside the unit's 32 bytes (Unit::new's caller).
            let q = unsafe { _mm256_cvtepu8_epi32(_mm_loadl_epi64(self.qs.add(8 * (g % 4)).cast())) };
            let (q, dl, ml) = if g < 4 {
                (_mm256_and_si256(q, _mm256_set1_epi32(0x0F)), self.s[0], self.s[1])
            } else {
                (_mm256_srli_epi32::<4>(q), self.s[2], self.s[3])
            };
            _mm256_fmsub_ps(dl, _mm256_cvtepi32_ps(q), ml)
        } else {
            let v = self.q6[g / 4];
            let half = if g % 4 < 2 { _mm256_castsi256_si128(v) } else { _mm256_extracti128_si256::<1>(v) };
            let bytes = if g.is_multiple_of(2) { half } else { _mm_srli_si128::<8>(half) };
            _mm256_mul_ps(self.s[g / 2], _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(bytes)))
        }
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
        // A loop rather than `array::from_fn`: a closure here has this function's target
        // features, so it cannot be inlined into `from_fn` (which has none); it was a call
        // per super-block and row, around which the accumulators were spilled (the one-token
        // tile took 35-40% less CPU time without it: `examples/kquant_cputime.rs`).
        let mut sc = [Scales::ZERO; R];
        for i in 0..R {
            sc[i] = scales::<TY>(&rows[i][sb * bytes..][..bytes]);
        }
        for u in 0..QK_K / 64 {
            // Row by row, so that one row's unit lives at a time; each decoded register is
            // used for the T tokens at once, whose activations are memory operands of the
            // multiply-adds (from L1).
            for i in 0..R {
                // SAFETY: super-block sb < nsb is inside rows[i] (checked above), u < 4.
                let unit = unsafe { Unit::new::<TY>(rows[i].as_ptr().add(sb * bytes), u, &sc[i]) };
                for g in 0..8 {
                    // SAFETY: `unit` is of this TY on a live super-block, g < 8.
                    let wv = unsafe { unit.get::<TY>(g) };
                    for j in 0..T {
                        // SAFETY: xs[j] holds nsb * 256 values (checked above); values
                        // 256 sb + 64 u + 8 g .. + 8 are inside.
                        let xg = unsafe { _mm256_loadu_ps(xs[j].as_ptr().add(sb * QK_K + 64 * u + 8 * g)) };
                        acc[i][j][g % A] = _mm256_fmadd_ps(wv, xg, acc[i][j][g % A]);
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

/// Every super-block of `row` through the unit decoders (the tests' window on them): the
/// values `out` gets are the ones the kernels multiply. Lengths are checked by the caller.
#[target_feature(enable = "avx2,fma,f16c")]
pub(super) fn decode_row(dtype: DType, row: &[u8], out: &mut [f32]) {
    let ty = if dtype == DType::Q4_K { Q4_K } else { Q6_K };
    let bytes = block_bytes(ty);
    for (b, o) in row.chunks_exact(bytes).zip(out.chunks_exact_mut(QK_K)) {
        let s = if ty == Q4_K { scales::<Q4_K>(b) } else { scales::<Q6_K>(b) };
        for u in 0..QK_K / 64 {
            for g in 0..8 {
                // SAFETY: `b` is one whole super-block (chunks_exact), u < 4, g < 8.
                let w = unsafe {
                    if ty == Q4_K {
                        Unit::new::<Q4_K>(b.as_ptr(), u, &s).get::<Q4_K>(g)
                    } else {
                        Unit::new::<Q6_K>(b.as_ptr(), u, &s).get::<Q6_K>(g)
                    }
                };
                // SAFETY: o holds 256 values; 64 u + 8 g + 8 <= 256.
                unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(64 * u + 8 * g), w) };
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
