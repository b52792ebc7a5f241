//! Activation quantization for the 256-value super-block weight types (the K-quants and
//! IQ4_XS): each token's f32 activations become 8-bit blocks of 256 values with one f32 scale,
//! plus the sum of each 16 consecutive quantized values (llama.cpp's `block_q8_K`: `d`, `qs`,
//! `bsums`).
//!
//! The partial sums carry the terms a super-block's sub-blocks add to every value: Q4_K's,
//! Q5_K's and Q2_K's minimums (`- dmin * m_s` on sub-block s), Q6_K's `- 32` and Q3_K's `- 4`
//! offsets. Each costs one 16-lane integer multiply-add per super-block (`sum_g m_g * bsum_g`)
//! instead of a multiply per value.
//!
//! Rounding: `d = max|x| / 127` in f32 (not binary16, unlike the 32-value blocks of `act`),
//! `q = round_half_even(x * 127 / max|x|)`, so `|q| <= 127` and a 16-value sum fits an i16.
//! The kernels compute exactly `sum_c w[c] * x'[c]` with `x'[c] = q[c] * d` (up to the order
//! of f32 additions); [`dequantize_into`] gives those `x'` for tests. A block of 256 shares one
//! scale, so its rounding step is set by the largest of 256 values rather than of 32: for
//! inputs without outliers (as in the tests) the error is the same size as with `act`'s
//! blocks; llama.cpp accepts the same trade.

use rayon::prelude::*;

use super::act::ROUND_MAGIC;
use crate::QK_K;

/// Values per partial sum.
pub(crate) const GROUP: usize = 16;
/// Partial sums per block.
pub(crate) const GROUPS: usize = QK_K / GROUP;

/// The activations of `n` tokens of `cols` values each (`cols` a multiple of [`QK_K`]),
/// quantized to 8-bit blocks of 256.
pub(crate) struct ActsK {
    pub n: usize,
    /// Blocks per token.
    pub nb: usize,
    /// [n][nb * 256] quantized values.
    pub qs: Vec<i8>,
    /// [n][nb] block scales.
    pub d: Vec<f32>,
    /// [n][nb * 16] sums of each 16 consecutive values of `qs`.
    pub bsums: Vec<i16>,
}

/// One token's slice of [`ActsK`].
#[derive(Clone, Copy)]
pub(crate) struct ActRowK<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub bsums: &'a [i16],
}

impl ActsK {
    /// Quantizes `x`, `n` tokens of `cols` values each. `cols` must be a multiple of [`QK_K`]
    /// and `x.len() == n * cols`; the callers check both.
    pub fn quantize(x: &[f32], n: usize, cols: usize) -> ActsK {
        let nb = cols / QK_K;
        let mut a = ActsK { n, nb, qs: vec![0; n * cols], d: vec![0.0; n * nb], bsums: vec![0; n * nb * GROUPS] };
        if nb == 0 {
            return a;
        }
        // Tokens are independent: a prefill batch quantizes in parallel (a few tokens per task).
        a.qs.par_chunks_mut(cols)
            .zip(a.d.par_chunks_mut(nb))
            .zip(a.bsums.par_chunks_mut(nb * GROUPS))
            .zip(x.par_chunks(cols))
            .with_min_len(8)
            .for_each(|(((qs, ds), bs), xt)| {
                for (((xb, qb), d), sums) in xt
                    .as_chunks::<QK_K>()
                    .0
                    .iter()
                    .zip(qs.as_chunks_mut::<QK_K>().0)
                    .zip(ds.iter_mut())
                    .zip(bs.as_chunks_mut::<GROUPS>().0)
                {
                    *d = quantize_block(xb, qb, sums);
                }
            });
        a
    }

    pub fn token(&self, t: usize) -> ActRowK<'_> {
        ActRowK {
            qs: &self.qs[t * self.nb * QK_K..][..self.nb * QK_K],
            d: &self.d[t * self.nb..][..self.nb],
            bsums: &self.bsums[t * self.nb * GROUPS..][..self.nb * GROUPS],
        }
    }
}

/// Quantizes one block into `q` and its 16-value sums; returns its scale.
///
/// A block with a NaN or an infinity gets a NaN scale (and zero values), so every product
/// that uses it is NaN instead of silently dropping the value.
fn quantize_block(x: &[f32; QK_K], q: &mut [i8; QK_K], sums: &mut [i16; GROUPS]) -> f32 {
    // max |x| on the bit patterns, as in `act::quantize_block` (vectorizes; NaN and inf show
    // up at or above infinity's pattern).
    let amax_bits = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
    if amax_bits >= f32::INFINITY.to_bits() {
        q.fill(0);
        sums.fill(0);
        return f32::NAN;
    }
    let amax = f32::from_bits(amax_bits);
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    for ((qg, xg), s) in q.as_chunks_mut::<GROUP>().0.iter_mut().zip(x.as_chunks::<GROUP>().0).zip(sums.iter_mut()) {
        let mut sum = 0i32;
        for (qi, &v) in qg.iter_mut().zip(xg) {
            // |v * id| <= 127 (up to rounding), so the magic-number rounding is exact.
            let r = (v * id + ROUND_MAGIC) - ROUND_MAGIC;
            *qi = r as i8;
            sum += *qi as i32;
        }
        // |sum| <= 16 * 127.
        *s = sum as i16;
    }
    amax / 127.0
}

/// The values the kernels multiply the weights with when given `x` (`cols` values per token,
/// a multiple of [`QK_K`]): `x'[c] = q[c] * d` of its block. `x.len()` and `out.len()` must
/// both be a multiple of `cols`.
pub(crate) fn dequantize_into(x: &[f32], cols: usize, out: &mut [f32]) {
    let n = x.len() / cols.max(1);
    let a = ActsK::quantize(x, n, cols);
    for (t, ot) in out.chunks_exact_mut(cols.max(1)).enumerate().take(n) {
        let row = a.token(t);
        for (b, ob) in ot.as_chunks_mut::<QK_K>().0.iter_mut().enumerate() {
            for (o, &q) in ob.iter_mut().zip(&row.qs[b * QK_K..]) {
                *o = q as f32 * row.d[b];
            }
        }
    }
}
