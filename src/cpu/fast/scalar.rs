//! The portable kernels: plain Rust integer dot products per block, for targets without the
//! SIMD paths and as the oracle the SIMD kernels are tested against.
//!
//! Per weight block `b` of a row and activation block of a token, the exact integer dot
//! product `p = sum q_w * q_x` is scaled once: `acc += (d_w * d_x) * p + m_w * s_x`, where the
//! weight offset `m_w` is Q4_1's and Q5_1's `m`, Q4_0's `-8 d_w` and Q5_0's `-16 d_w` (their
//! quants are stored with +8 and +16) and 0 for Q8_0 and IQ4_NL (whose nibbles index the
//! signed table `IQ4_VALUES`), and `s_x = d_x * sum q_x` comes with the activations.

use super::WType;
use super::act::{ActRow, Acts};
use crate::QK;
use crate::dtype::IQ4_VALUES;

/// out[r][t] = row r of `w` · token t of `acts`, for every row of `w` (`rb` bytes each) and
/// every token; `out` is [rows][acts.n].
pub(super) fn gemm(ty: WType, w: &[u8], rb: usize, acts: &Acts, out: &mut [f32]) {
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

/// One row against one token.
fn dot(ty: WType, row: &[u8], a: ActRow<'_>) -> f32 {
    let mut acc = 0.0f32;
    for (b, blk) in row.chunks_exact(ty.block_bytes()).enumerate() {
        let xq = &a.qs[b * QK..][..QK];
        let d = f16_at(blk, 0);
        let (p, m) = match ty {
            WType::Q8_0 => {
                let p = blk[2..].iter().zip(xq).map(|(&w, &x)| w as i8 as i32 * x as i32).sum::<i32>();
                (p, 0.0)
            }
            WType::Q4_0 | WType::Q4_1 | WType::Q5_0 | WType::Q5_1 | WType::IQ4_NL => {
                let qs = &blk[ty.qs_offset()..][..QK / 2];
                // Q5's fifth bits: bit j of the little-endian u32 before the nibbles, value j.
                let high = match ty {
                    WType::Q5_0 | WType::Q5_1 => {
                        let at = ty.qs_offset() - 4;
                        u32::from_le_bytes([blk[at], blk[at + 1], blk[at + 2], blk[at + 3]])
                    }
                    _ => 0,
                };
                let value = |nibble: u8, j: usize| -> i32 {
                    let q = nibble as i32 | ((((high >> j) & 1) as i32) << 4);
                    if ty == WType::IQ4_NL { IQ4_VALUES[nibble as usize] as i32 } else { q }
                };
                let mut p = 0i32;
                for (j, &q) in qs.iter().enumerate() {
                    p += value(q & 0x0F, j) * xq[j] as i32 + value(q >> 4, j + QK / 2) * xq[j + QK / 2] as i32;
                }
                let m = match ty {
                    WType::Q4_1 | WType::Q5_1 => f16_at(blk, 2),
                    WType::Q4_0 => -8.0 * d,
                    WType::Q5_0 => -16.0 * d,
                    _ => 0.0,
                };
                (p, m)
            }
        };
        acc += (d * a.d[b]) * p as f32 + m * a.s[b];
    }
    acc
}

/// The binary16 at byte `at` of a block, widened.
fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}
