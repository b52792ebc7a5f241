//! The portable kernels: plain Rust integer dot products per block, for targets without the
//! SIMD paths and as the oracle the SIMD kernels are tested against.
//!
//! Per weight block `b` of a row and activation block of a token, the exact integer dot
//! product `p = sum q_w * q_x` is scaled once: `acc += (d_w * d_x) * p + m_w * s_x`, where the
//! weight offset `m_w` is Q4_1's `m`, Q4_0's `-8 d_w` (its nibbles are stored with +8) and 0
//! for Q8_0, and `s_x = d_x * sum q_x` comes with the activations.

use super::WType;
use super::act::{ActRow, Acts};
use crate::QK;

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
            WType::Q4_0 | WType::Q4_1 => {
                let qs = &blk[ty.qs_offset()..][..QK / 2];
                let mut p = 0i32;
                for (j, &q) in qs.iter().enumerate() {
                    p += (q & 0x0F) as i32 * xq[j] as i32 + (q >> 4) as i32 * xq[j + QK / 2] as i32;
                }
                (p, if ty == WType::Q4_1 { f16_at(blk, 2) } else { -8.0 * d })
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
