//! The portable kernels of the 256-value super-block types (Q2_K … Q6_K, IQ4_XS) with 8-bit
//! activations ([`ActsK`]): the oracle the SIMD kernels are tested against.
//!
//! Each weight super-block is decoded by the block readers and scale helpers of
//! [`crate::quant`] into integer values `q` (with Q6_K's `- 32` and Q3_K's `- 4` applied, and
//! IQ4_XS's table looked up), a signed integer scale per 16 values and, for Q2_K/Q4_K/Q5_K, an
//! integer minimum per 16 values. Its dot product with an activation block (scale `d_x`) is then
//! `d_x * (d * sum_g sc_g * sum_{i in g} q_i x_i - dmin * sum_g m_g * sum_{i in g} x_i)`: two
//! exact integer sums and two f32 multiply-adds. The group sums of `x` are recomputed here from
//! the quantized values rather than read from [`ActsK::bsums`], so the SIMD kernels' use of
//! those sums is checked too.

use super::KType;
use super::act_k::{ActRowK, ActsK, GROUP, GROUPS};
use crate::QK_K;
use crate::dtype::{BlockIq4Xs, BlockQ2K, BlockQ3K, BlockQ4K, BlockQ5K, BlockQ6K, IQ4_VALUES};
use crate::quant::{iq4_xs_scales, k4_scale_min, q3_k_scales, q6_k_value};

/// out[r][t] = row r of `w` · token t of `acts`, for every row of `w` (`rb` bytes each) and
/// every token; `out` is [rows][acts.n].
pub(super) fn gemm(ty: KType, w: &[u8], rb: usize, acts: &ActsK, out: &mut [f32]) {
    let n = acts.n;
    if n == 0 || rb == 0 {
        out.fill(0.0);
        return;
    }
    for (row, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
        for (t, ot) in o.iter_mut().enumerate() {
            *ot = dot(ty, row, acts.token(t));
        }
    }
}

/// A super-block in integers: value i is `d * sc[i / 16] * q[i] - dmin * m[i / 16]`.
struct Decoded {
    d: f32,
    dmin: f32,
    q: [i32; QK_K],
    sc: [i32; GROUPS],
    m: [i32; GROUPS],
}

impl Decoded {
    fn new(d: u16, dmin: u16) -> Decoded {
        Decoded { d: h2f(d), dmin: h2f(dmin), q: [0; QK_K], sc: [0; GROUPS], m: [0; GROUPS] }
    }
}

fn h2f(bits: u16) -> f32 {
    half::f16::from_bits(bits).to_f32()
}

/// The 2-bit field of value v of a Q2_K/Q3_K super-block (value 128 h + 32 k + l is bits
/// 2k..2k+2 of qs[32 h + l]).
fn q2(qs: &[u8; QK_K / 4], v: usize) -> i32 {
    let (h, k, l) = (v / 128, (v % 128) / 32, v % 32);
    ((qs[32 * h + l] >> (2 * k)) & 3) as i32
}

fn decode(ty: KType, blk: &[u8]) -> Decoded {
    match ty {
        KType::Q2_K => {
            let b = BlockQ2K::read(blk.try_into().unwrap_or(&[0; 84]));
            let mut o = Decoded::new(b.d, b.dmin);
            for g in 0..GROUPS {
                (o.sc[g], o.m[g]) = ((b.scales[g] & 0x0F) as i32, (b.scales[g] >> 4) as i32);
            }
            for (v, q) in o.q.iter_mut().enumerate() {
                *q = q2(&b.qs, v);
            }
            o
        }
        KType::Q3_K => {
            let b = BlockQ3K::read(blk.try_into().unwrap_or(&[0; 110]));
            let mut o = Decoded::new(b.d, 0);
            for (s, sc) in o.sc.iter_mut().zip(q3_k_scales(&b.scales)) {
                *s = sc as i32;
            }
            for (v, q) in o.q.iter_mut().enumerate() {
                let high = (b.hmask[v % 32] >> (v / 32)) & 1;
                *q = q2(&b.qs, v) - if high == 1 { 0 } else { 4 };
            }
            o
        }
        KType::Q4_K | KType::Q5_K => {
            // Q5_K is Q4_K with 32 bytes of fifth bits between the scales and the nibbles.
            let (b, qh) = if ty == KType::Q4_K {
                (BlockQ4K::read(blk.try_into().unwrap_or(&[0; 144])), [0u8; 32])
            } else {
                let b5 = BlockQ5K::read(blk.try_into().unwrap_or(&[0; 176]));
                (BlockQ4K { d: b5.d, dmin: b5.dmin, scales: b5.scales, qs: b5.qs }, b5.qh)
            };
            let mut o = Decoded::new(b.d, b.dmin);
            for s in 0..8 {
                let (sc, m) = k4_scale_min(s, &b.scales);
                o.sc[2 * s..][..2].fill(sc as i32);
                o.m[2 * s..][..2].fill(m as i32);
                for (l, &high) in qh.iter().enumerate() {
                    let low = (b.qs[32 * (s / 2) + l] >> (4 * (s % 2))) & 0x0F;
                    o.q[32 * s + l] = (low | (((high >> s) & 1) << 4)) as i32;
                }
            }
            o
        }
        KType::Q6_K => {
            let b = BlockQ6K::read(blk.try_into().unwrap_or(&[0; 210]));
            let mut o = Decoded::new(b.d, 0);
            for (s, &sc) in o.sc.iter_mut().zip(&b.scales) {
                *s = sc as i32;
            }
            for (v, q) in o.q.iter_mut().enumerate() {
                *q = q6_k_value(&b, v) as i32 - 32;
            }
            o
        }
        KType::IQ4_XS => {
            let b = BlockIq4Xs::read(blk.try_into().unwrap_or(&[0; 136]));
            let mut o = Decoded::new(b.d, 0);
            for (s, sc) in iq4_xs_scales(&b).into_iter().enumerate() {
                o.sc[2 * s..][..2].fill(sc as i32);
                for (j, &byte) in b.qs[16 * s..][..16].iter().enumerate() {
                    o.q[32 * s + j] = IQ4_VALUES[(byte & 0x0F) as usize] as i32;
                    o.q[32 * s + 16 + j] = IQ4_VALUES[(byte >> 4) as usize] as i32;
                }
            }
            o
        }
    }
}

/// One row against one token. (`decode`'s fallbacks for a block of the wrong length are
/// unreachable: `chunks_exact` yields blocks of exactly `ty.block_bytes()`.)
fn dot(ty: KType, row: &[u8], a: ActRowK<'_>) -> f32 {
    let mut acc = 0.0f32;
    for (b, blk) in row.chunks_exact(ty.block_bytes()).enumerate() {
        let w = decode(ty, blk);
        let x = &a.qs[b * QK_K..][..QK_K];
        let (mut isum, mut msum) = (0i32, 0i32);
        for g in 0..GROUPS {
            let (wq, xq) = (&w.q[g * GROUP..][..GROUP], &x[g * GROUP..][..GROUP]);
            let p: i32 = wq.iter().zip(xq).map(|(&q, &v)| q * v as i32).sum();
            let s: i32 = xq.iter().map(|&v| v as i32).sum();
            isum += w.sc[g] * p;
            msum += w.m[g] * s;
        }
        acc += (w.d * a.d[b]) * isum as f32 - (w.dmin * a.d[b]) * msum as f32;
    }
    acc
}
