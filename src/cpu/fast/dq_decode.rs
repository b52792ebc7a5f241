//! Block decoders of the `exact` path (`f32act_dq`) for Q5_0, Q5_1, the K-quants, IQ4_NL and
//! IQ4_XS: each returns the values [`crate::quant::dequantize_row`] returns, bit for bit.
//!
//! They perform the reference's f32 operations in the reference's order, value by value
//! (`dl * q - ml` with `dl = d * sc` and `ml = dmin * m` per sub-block for Q2_K/Q4_K/Q5_K,
//! `dl * q` for Q3_K/Q6_K/IQ4_XS, `q * d` and `q * d + m` for Q5_0/Q5_1, `d * v[q]` for IQ4_NL;
//! Rust never fuses a multiply and an add on its own), so only the loop structure differs:
//! the reference decodes value by value through index helpers (a division and two lookups per
//! value), these walk each super-block in runs of 16 or 32 values that share a scale, with
//! fixed-size arrays and constant trip counts, so that inside the kernels' AVX2 / AVX-512
//! functions (they are `#[inline(always)]`) LLVM turns every run into a few vector
//! conversions, multiplies and subtractions. `tests/fast.rs` holds them to the reference bit for
//! bit on random blocks and on blocks with extreme and non-finite scales.

use half::f16;

use crate::quant::{k4_scale_min, q3_k_scales};
use crate::{IQ4_VALUES, QK, QK_K};

/// The binary16 at bytes `lo`, `hi` (little-endian), widened exactly.
#[inline(always)]
fn h2f(lo: u8, hi: u8) -> f32 {
    f16::from_bits(u16::from_le_bytes([lo, hi])).to_f32()
}

/// Q5_0 (22 bytes: d, qh, qs): `(q - 16) as f32 * d`.
#[inline(always)]
pub(super) fn q5_0(b: &[u8; 22], out: &mut [f32; QK]) {
    let d = h2f(b[0], b[1]);
    let high = u32::from_le_bytes([b[2], b[3], b[4], b[5]]);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for j in 0..QK / 2 {
        let byte = b[6 + j];
        let q0 = (byte & 0x0F) | ((((high >> j) & 1) as u8) << 4);
        let q1 = (byte >> 4) | ((((high >> (j + QK / 2)) & 1) as u8) << 4);
        lo[j] = (q0 as i32 - 16) as f32 * d;
        hi[j] = (q1 as i32 - 16) as f32 * d;
    }
}

/// Q5_1 (24 bytes: d, m, qh, qs): `q as f32 * d + m`.
#[inline(always)]
pub(super) fn q5_1(b: &[u8; 24], out: &mut [f32; QK]) {
    let (d, m) = (h2f(b[0], b[1]), h2f(b[2], b[3]));
    let high = u32::from_le_bytes([b[4], b[5], b[6], b[7]]);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for j in 0..QK / 2 {
        let byte = b[8 + j];
        let q0 = (byte & 0x0F) | ((((high >> j) & 1) as u8) << 4);
        let q1 = (byte >> 4) | ((((high >> (j + QK / 2)) & 1) as u8) << 4);
        lo[j] = q0 as f32 * d + m;
        hi[j] = q1 as f32 * d + m;
    }
}

/// IQ4_NL (18 bytes: d, qs): `d * IQ4_VALUES[q] as f32`, nibbles in Q4_0's order.
#[inline(always)]
pub(super) fn iq4_nl(b: &[u8; 18], out: &mut [f32; QK]) {
    let d = h2f(b[0], b[1]);
    let (lo, hi) = out.split_at_mut(QK / 2);
    for j in 0..QK / 2 {
        let q = b[2 + j];
        lo[j] = d * IQ4_VALUES[(q & 0x0F) as usize] as f32;
        hi[j] = d * IQ4_VALUES[(q >> 4) as usize] as f32;
    }
}

/// Q2_K (84 bytes: scales[16], qs[64], d, dmin): value 128 h + 32 k + l is bits 2k..2k+2 of
/// qs[32 h + l], in sub-block 8 h + 2 k + l / 16; `dl * q as f32 - ml`.
#[inline(always)]
pub(super) fn q2_k(b: &[u8; 84], out: &mut [f32; QK_K]) {
    let (d, dmin) = (h2f(b[80], b[81]), h2f(b[82], b[83]));
    for h in 0..2 {
        for k in 0..4 {
            for half in 0..2 {
                let sc = b[8 * h + 2 * k + half];
                let dl = d * (sc & 0x0F) as f32;
                let ml = dmin * (sc >> 4) as f32;
                let o = &mut out[128 * h + 32 * k + 16 * half..][..16];
                let qs = &b[16 + 32 * h + 16 * half..][..16];
                for i in 0..16 {
                    let q = (qs[i] >> (2 * k)) & 3;
                    o[i] = dl * q as f32 - ml;
                }
            }
        }
    }
}

/// Q3_K (110 bytes: hmask[32], qs[64], scales[12], d): value 128 h + 32 k + l is bits 2k..2k+2
/// of qs[32 h + l], minus 4 unless bit 4 h + k of hmask[l] is set; `dl * q as f32`.
#[inline(always)]
pub(super) fn q3_k(b: &[u8; 110], out: &mut [f32; QK_K]) {
    let d = h2f(b[108], b[109]);
    let scales = q3_k_scales(&std::array::from_fn(|i| b[96 + i]));
    for h in 0..2 {
        for k in 0..4 {
            for half in 0..2 {
                let dl = d * scales[8 * h + 2 * k + half] as f32;
                let o = &mut out[128 * h + 32 * k + 16 * half..][..16];
                let qs = &b[32 + 32 * h + 16 * half..][..16];
                let hm = &b[16 * half..][..16];
                for i in 0..16 {
                    let low = ((qs[i] >> (2 * k)) & 3) as i32;
                    let high_set = (hm[i] >> (4 * h + k)) & 1;
                    // 4 when the high bit is clear, 0 when it is set.
                    let q = low - 4 + 4 * high_set as i32;
                    o[i] = dl * q as f32;
                }
            }
        }
    }
}

/// Q4_K (144 bytes: d, dmin, scales[12], qs[128]): sub-blocks 2 j and 2 j + 1 are the low and
/// high nibbles of qs[32 j..32 j + 32]; `dl * q as f32 - ml`.
#[inline(always)]
pub(super) fn q4_k(b: &[u8; 144], out: &mut [f32; QK_K]) {
    let (d, dmin) = (h2f(b[0], b[1]), h2f(b[2], b[3]));
    let scales: [u8; 12] = std::array::from_fn(|i| b[4 + i]);
    for j in 0..4 {
        let (sc0, m0) = k4_scale_min(2 * j, &scales);
        let (sc1, m1) = k4_scale_min(2 * j + 1, &scales);
        let (dl0, ml0) = (d * sc0 as f32, dmin * m0 as f32);
        let (dl1, ml1) = (d * sc1 as f32, dmin * m1 as f32);
        let qs = &b[16 + 32 * j..][..32];
        let (lo, hi) = out[64 * j..][..64].split_at_mut(32);
        for l in 0..32 {
            lo[l] = dl0 * (qs[l] & 0x0F) as f32 - ml0;
            hi[l] = dl1 * (qs[l] >> 4) as f32 - ml1;
        }
    }
}

/// Q5_K (176 bytes: d, dmin, scales[12], qh[32], qs[128]): as Q4_K, with bit s of qh[l] as
/// bit 4 of value l of sub-block s.
#[inline(always)]
pub(super) fn q5_k(b: &[u8; 176], out: &mut [f32; QK_K]) {
    let (d, dmin) = (h2f(b[0], b[1]), h2f(b[2], b[3]));
    let scales: [u8; 12] = std::array::from_fn(|i| b[4 + i]);
    let qh = &b[16..48];
    for j in 0..4 {
        let (sc0, m0) = k4_scale_min(2 * j, &scales);
        let (sc1, m1) = k4_scale_min(2 * j + 1, &scales);
        let (dl0, ml0) = (d * sc0 as f32, dmin * m0 as f32);
        let (dl1, ml1) = (d * sc1 as f32, dmin * m1 as f32);
        let qs = &b[48 + 32 * j..][..32];
        let (lo, hi) = out[64 * j..][..64].split_at_mut(32);
        for l in 0..32 {
            let q0 = (qs[l] & 0x0F) | (((qh[l] >> (2 * j)) & 1) << 4);
            let q1 = (qs[l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4);
            lo[l] = dl0 * q0 as f32 - ml0;
            hi[l] = dl1 * q1 as f32 - ml1;
        }
    }
}

/// Q6_K (210 bytes: ql[128], qh[64], scales[16] signed, d): value 128 h + 32 k + l is nibble
/// k / 2 of ql[64 h + 32 (k % 2) + l] with bits 2k..2k+2 of qh[32 h + l] above it, in
/// sub-block 8 h + 2 k + l / 16; `dl * (q - 32) as f32`.
#[inline(always)]
pub(super) fn q6_k(b: &[u8; 210], out: &mut [f32; QK_K]) {
    let d = h2f(b[208], b[209]);
    for h in 0..2 {
        for k in 0..4 {
            for half in 0..2 {
                let dl = d * (b[192 + 8 * h + 2 * k + half] as i8) as f32;
                let o = &mut out[128 * h + 32 * k + 16 * half..][..16];
                let ql = &b[64 * h + 32 * (k % 2) + 16 * half..][..16];
                let qh = &b[128 + 32 * h + 16 * half..][..16];
                for i in 0..16 {
                    let low = (ql[i] >> (4 * (k / 2))) & 0x0F;
                    let high = (qh[i] >> (2 * k)) & 3;
                    o[i] = dl * ((low | (high << 4)) as i32 - 32) as f32;
                }
            }
        }
    }
}

/// IQ4_XS (136 bytes: d, scales_h, scales_l[4], qs[128]): sub-block s has the signed 6-bit
/// scale `(nibble s % 2 of scales_l[s / 2] | bits 2s..2s+2 of scales_h << 4) - 32` and the
/// nibbles of qs[16 s..16 s + 16] (low: values 0..16, high: 16..32); `dl * v[q] as f32`.
#[inline(always)]
pub(super) fn iq4_xs(b: &[u8; 136], out: &mut [f32; QK_K]) {
    let d = h2f(b[0], b[1]);
    let scales_h = u16::from_le_bytes([b[2], b[3]]);
    for s in 0..QK_K / 32 {
        let low = (b[4 + s / 2] >> (4 * (s % 2))) & 0x0F;
        let high = ((scales_h >> (2 * s)) & 3) as u8;
        let sc = (low | (high << 4)) as i32 - 32;
        let dl = d * sc as f32;
        let qs = &b[8 + 16 * s..][..16];
        let (lo, hi) = out[32 * s..][..32].split_at_mut(16);
        for j in 0..16 {
            lo[j] = dl * IQ4_VALUES[(qs[j] & 0x0F) as usize] as f32;
            hi[j] = dl * IQ4_VALUES[(qs[j] >> 4) as usize] as f32;
        }
    }
}

/// A block type's decoder as a type, so that kernels generic over it inline the decoder into
/// their AVX2 / AVX-512 functions (a function item passed as `impl Fn` is called through a
/// shim that LLVM left out of line, compiled for the baseline x86_64 without those features).
pub(super) trait Decoder<const BB: usize, const BV: usize> {
    fn decode(b: &[u8; BB], out: &mut [f32; BV]);
}

macro_rules! decoder {
    ($name:ident, $f:ident, $bb:expr, $bv:expr) => {
        pub(super) struct $name;
        impl Decoder<$bb, $bv> for $name {
            #[inline(always)]
            fn decode(b: &[u8; $bb], out: &mut [f32; $bv]) {
                $f(b, out)
            }
        }
    };
}

decoder!(Q50, q5_0, 22, QK);
decoder!(Q51, q5_1, 24, QK);
decoder!(Iq4Nl, iq4_nl, 18, QK);
decoder!(Q2K, q2_k, 84, QK_K);
decoder!(Q3K, q3_k, 110, QK_K);
decoder!(Q4K, q4_k, 144, QK_K);
decoder!(Q5K, q5_k, 176, QK_K);
decoder!(Q6K, q6_k, 210, QK_K);
decoder!(Iq4Xs, iq4_xs, 136, QK_K);
