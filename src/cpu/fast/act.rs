//! Activation quantization: each token's f32 activations become 8-bit blocks of 32 values with
//! one scale per block, once per matvec or matmul, so the weight blocks can be multiplied with
//! integer dot products.
//!
//! The format is llama.cpp's `q8_1` as its x86 code builds it (`quantize_row_q8_1`):
//! `d = max|x| / 127` rounded to binary16, `q = round_half_even(x * 127 / max|x|)`, and the
//! block's sum of `q` kept so that a weight block's offset term (Q4_1's `m`, Q4_0's `-8 d`)
//! costs one multiply per block instead of 32. The fast kernels therefore compute exactly
//! `sum_c w[c] * x'[c]` with `x'[c] = q[c] * d` (up to the order of f32 additions), and
//! [`dequantize_into`] gives those `x'` values for tests.

use half::f16;
use rayon::prelude::*;

use crate::QK;

/// `1.5 * 2^23`: adding it to an f32 of magnitude below 2^22 and subtracting it again rounds
/// to the nearest integer, ties to even, in the default rounding mode, without an SSE4.1
/// `roundps` (the baseline x86_64 target lacks it) and in a form that vectorizes.
pub(super) const ROUND_MAGIC: f32 = 12_582_912.0;

/// How [`Acts`] arranges each pair of blocks for the kernels that read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Layout {
    /// Blocks in order; each per-block scalar `lanes` times in a row.
    Natural { lanes: usize },
    /// For the AVX-512 Q4 and Q5_0 kernels, which unpack the nibbles of two blocks b0, b1 as
    /// [b0 low nibbles, b1 low, b0 high, b1 high] (values b0[0..16], b1[0..16], b0[16..32],
    /// b1[16..32]: fewer shuffles than putting them in order): each pair's 64 values in that
    /// order, and its 16 per-lane scalars as [b0 x4, b1 x4, b0 x4, b1 x4] to match the
    /// 32-bit lanes `vpdpbusd` sums them into.
    Q4Pairs,
    /// For the AVX-512 Q4_0, Q4_1 and Q5_0 kernels that take four blocks b0..b3 at a time, one
    /// per 128-bit lane (`avx512::tile_quads`): each quad's 128 values as [b0[0..16],
    /// b1[0..16], b2[0..16], b3[0..16], b0[16..32], b1[16..32], b2[16..32], b3[16..32]] (the
    /// low and the high nibbles of the four blocks' bytes), and its 16 per-lane scalars as
    /// [b0 x4, b1 x4, b2 x4, b3 x4].
    Q4Quads,
}

impl Layout {
    /// Copies of each per-block scalar.
    fn lanes(self) -> usize {
        match self {
            Layout::Natural { lanes } => lanes,
            Layout::Q4Pairs => 8,
            Layout::Q4Quads => 4,
        }
    }

    /// The padded block count is a multiple of this (a kernel's loads take this many blocks).
    fn group(self) -> usize {
        match self {
            Layout::Q4Quads => 4,
            _ => 2,
        }
    }
}

/// The activations of `n` tokens of `cols` values each (`cols` a multiple of [`QK`]),
/// quantized to 8-bit blocks.
///
/// The per-block scale arrays hold [`Acts::lanes`] copies of each value so that a SIMD kernel
/// can load the scales of a block (or a pair of blocks) spread over its lanes with one load;
/// `qs` is padded with zeros to a whole number of block pairs (quads for `Q4Quads`) for the
/// same reason.
pub(crate) struct Acts {
    pub n: usize,
    pub layout: Layout,
    /// Blocks per token, before padding.
    pub nb: usize,
    /// Blocks per token after padding to an even count (a multiple of 4 for `Q4Quads`).
    pub nb_pad: usize,
    /// Copies of each per-block scalar in `d` and `s` (1, or 4 or 8 for the SIMD kernels).
    pub lanes: usize,
    /// [n][nb_pad * 32] quantized values; padding blocks are zero.
    pub qs: Vec<i8>,
    /// [n][nb_pad * lanes] block scales (binary16 values, widened).
    pub d: Vec<f32>,
    /// [n][nb_pad * lanes] `d * sum(q)` of each block, divided by `lanes` (a kernel adds it to
    /// every lane and sums the lanes at the end; dividing by a power of two is exact).
    pub s: Vec<f32>,
}

/// One token's slice of [`Acts`].
#[derive(Clone, Copy)]
pub(crate) struct ActRow<'a> {
    pub qs: &'a [i8],
    pub d: &'a [f32],
    pub s: &'a [f32],
}

impl Acts {
    /// Quantizes `x`, `n` tokens of `cols` values each, into `layout`. `cols` must be a
    /// multiple of [`QK`] and `x.len() == n * cols`; the callers check both.
    pub fn quantize(x: &[f32], n: usize, cols: usize, layout: Layout) -> Acts {
        let lanes = layout.lanes();
        let nb = cols / QK;
        let nb_pad = nb.next_multiple_of(layout.group());
        let mut a = Acts {
            n,
            layout,
            nb,
            nb_pad,
            lanes,
            qs: vec![0; n * nb_pad * QK],
            d: vec![0.0; n * nb_pad * lanes],
            s: vec![0.0; n * nb_pad * lanes],
        };
        if nb == 0 {
            return a;
        }
        let (row_q, row_s) = (nb_pad * QK, nb_pad * lanes);
        let per_lane = 1.0 / lanes as f32;
        // Tokens are independent: a prefill batch quantizes in parallel (a few tokens per task).
        a.qs.par_chunks_mut(row_q)
            .zip(a.d.par_chunks_mut(row_s))
            .zip(a.s.par_chunks_mut(row_s))
            .zip(x.par_chunks(cols))
            .with_min_len(8)
            .for_each(|(((qs, ds), ss), xt)| {
                let mut q = [0i8; QK];
                for (b, xb) in xt.as_chunks::<QK>().0.iter().enumerate() {
                    let (d, sum) = quantize_block(xb, &mut q);
                    let s = d * sum as f32 * per_lane;
                    match layout {
                        Layout::Natural { .. } => {
                            qs[b * QK..][..QK].copy_from_slice(&q);
                            ds[b * lanes..][..lanes].fill(d);
                            ss[b * lanes..][..lanes].fill(s);
                        }
                        Layout::Q4Pairs => {
                            // Block b is half `h` of pair `b / 2`: its values 0..16 go to
                            // [16h, 16h + 16) of the pair and 16..32 to [32 + 16h, 48 + 16h);
                            // its scalars to lanes [4h, 4h + 4) and [8 + 4h, 12 + 4h).
                            let (pair, h) = (b / 2, b % 2);
                            let pq = &mut qs[pair * 2 * QK..][..2 * QK];
                            pq[16 * h..][..16].copy_from_slice(&q[..16]);
                            pq[32 + 16 * h..][..16].copy_from_slice(&q[16..]);
                            for base in [4 * h, 8 + 4 * h] {
                                ds[pair * 16 + base..][..4].fill(d);
                                ss[pair * 16 + base..][..4].fill(s);
                            }
                        }
                        Layout::Q4Quads => {
                            // Block b is lane `l` of quad `b / 4`: its values 0..16 go to
                            // [16l, 16l + 16) of the quad and 16..32 to [64 + 16l, 80 + 16l);
                            // its scalars to lanes [4l, 4l + 4).
                            let (quad, l) = (b / 4, b % 4);
                            let qq = &mut qs[quad * 4 * QK..][..4 * QK];
                            qq[16 * l..][..16].copy_from_slice(&q[..16]);
                            qq[64 + 16 * l..][..16].copy_from_slice(&q[16..]);
                            ds[quad * 16 + 4 * l..][..4].fill(d);
                            ss[quad * 16 + 4 * l..][..4].fill(s);
                        }
                    }
                }
            });
        a
    }

    pub fn token(&self, t: usize) -> ActRow<'_> {
        let row_q = self.nb_pad * QK;
        let row_s = self.nb_pad * self.lanes;
        ActRow {
            qs: &self.qs[t * row_q..][..row_q],
            d: &self.d[t * row_s..][..row_s],
            s: &self.s[t * row_s..][..row_s],
        }
    }
}

/// Quantizes one block into `q`; returns its scale and the sum of `q`.
///
/// A block with a NaN or an infinity gets a NaN scale, so every dot product that uses it is NaN
/// (as with f32 activations, up to inf becoming NaN) instead of silently dropping the value.
fn quantize_block(x: &[f32; QK], q: &mut [i8; QK]) -> (f32, i32) {
    // max |x| on the bit patterns: for non-negative floats the integer order is the float
    // order, this vectorizes (a float max reduction does not, because of NaN), and a NaN or
    // an infinity shows up as a pattern at or above infinity's.
    let amax_bits = x.iter().fold(0u32, |m, v| m.max(v.to_bits() & 0x7FFF_FFFF));
    if amax_bits >= f32::INFINITY.to_bits() {
        q.fill(0);
        return (f32::NAN, 0);
    }
    let amax = f32::from_bits(amax_bits);
    let d = f16::from_f32(amax / 127.0).to_f32();
    let id = if amax != 0.0 { 127.0 / amax } else { 0.0 };
    let mut sum = 0i32;
    for (qi, &v) in q.iter_mut().zip(x) {
        // |v * id| <= 127 (up to rounding), so the magic-number rounding is exact.
        let r = (v * id + ROUND_MAGIC) - ROUND_MAGIC;
        *qi = r as i8;
        sum += *qi as i32;
    }
    (d, sum)
}

/// The values the fast kernels multiply the weights with when given `x` (`cols` values per
/// token): `x'[c] = q[c] * d` of its block. `x.len()` and `out.len()` must both be a multiple
/// of `cols`, itself a multiple of [`QK`].
pub(crate) fn dequantize_into(x: &[f32], cols: usize, out: &mut [f32]) {
    let n = x.len() / cols.max(1);
    let a = Acts::quantize(x, n, cols, Layout::Natural { lanes: 1 });
    for (t, ot) in out.chunks_exact_mut(cols.max(1)).enumerate().take(n) {
        let row = a.token(t);
        for (b, ob) in ot.as_chunks_mut::<QK>().0.iter_mut().enumerate() {
            for (o, &q) in ob.iter_mut().zip(&row.qs[b * QK..]) {
                *o = q as f32 * row.d[b];
            }
        }
    }
}
