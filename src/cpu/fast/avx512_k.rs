//! AVX-512 VNNI kernels of Q4_K and Q6_K with 8-bit activations in 256-value blocks
//! ([`ActsK`]): the `fast` path's products for the K-quants of Gemma 3's Q4_K_M files. The other
//! super-block types run the AVX2 kernels (`avx2_k`) on these machines.
//!
//! The arithmetic is `avx2_k`'s (see there), 64 values per register instead of 32: per
//! super-block of a row the scales are decoded once (`avx2_k::head`) and widened to one 16-bit
//! scale per 16 values; per 64 values (`k` < 4), for each (row, token), `vpmaddubsw` multiplies
//! the unsigned weight quants (Q6_K's 6 bits before the `- 32`) with the activation bytes into
//! 16-bit pair sums, and one VNNI `vpdpwssd` multiplies those with the group scales and adds
//! them into sixteen 32-bit lanes of the integer accumulator (AVX2 needs `vpmaddwd` and
//! `vpaddd`). `vpdpbusd` would multiply and sum four bytes at once, but its 32-bit sums would
//! then need a 32-bit multiply by the scale (`vpmulld`) and an add: three instructions where
//! these are two. At the end of the super-block the sixteen lanes are added into eight and the
//! rest is `avx2_k`'s: the Q6_K offsets (`- 32 * sum_g sc_g * bsum_g`), the conversion to f32,
//! one FMA by `d_w * d_x`, the Q4_K minimums. Same bounds: a pair sum is at most 2 * 63 * 127,
//! below 32767; a lane collects at most 8 of 2 * 32767 * 63 plus the offsets, below 2^31. The
//! integer sums are exact, so the results differ from the AVX2 kernels' only in how the exact
//! integers are split over lanes before their conversion to f32 and the f32 sums.
//!
//! Tiles: [`R_MANY`] × [`T_MANY`] for prefill, then [`T_MANY`] / 2 tokens, then single tokens
//! over [`R_ONE`] rows (decode), as `avx2_k` does.

use std::arch::x86_64::*;

use super::KType;
use super::act_k::{ActRowK, ActsK, GROUPS};
use super::avx2_k::{self, Head, Q4_K, Q6_K, block_bytes, head, hsum, lengths_ok};
use super::x86::{prefetch, store};
use crate::QK_K;

/// Rows per tile for a single token (decode): two interleaved weight streams.
const R_ONE: usize = 2;
/// Rows × tokens per tile for prefill: 8 integer and 8 f32 accumulators, one row's register of
/// weights and of scales.
const R_MANY: usize = 1;
const T_MANY: usize = 8;
/// How many row tiles ahead to prefetch the weights.
const PREFETCH_TILES: usize = 2;

/// Whether these kernels handle `ty` (the others run `avx2_k`'s).
pub(super) fn handles(ty: KType) -> bool {
    matches!(ty, KType::Q4_K | KType::Q6_K)
}

/// out[r][t] = row r of `w` · token t of `acts` (`out` is [rows][acts.n], `w` holds the rows,
/// `rb` bytes each); Q4_K and Q6_K here, the other types on `avx2_k`'s kernels.
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
pub(super) fn gemm(ty: KType, w: &[u8], rb: usize, acts: &ActsK, out: &mut [f32]) {
    match ty {
        KType::Q4_K => gemm_ty::<Q4_K>(w, rb, acts, out),
        KType::Q6_K => gemm_ty::<Q6_K>(w, rb, acts, out),
        _ => avx2_k::gemm(ty, w, rb, acts, out),
    }
}

k_gemm_loops!("avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c");

/// For the 64 values 64 k .. 64 k + 64: 16-bit lane m (the pair sum of values 2m, 2m + 1) takes
/// the scale of group 4 k + m / 8, from the 16 scales widened to 16 bits.
const SCALE_INDEX: [[u16; 32]; 4] = {
    let mut m = [[0u16; 32]; 4];
    let mut k = 0;
    while k < 4 {
        let mut l = 0;
        while l < 32 {
            m[k][l] = (4 * k + l / 8) as u16;
            l += 1;
        }
        k += 1;
    }
    m
};

/// The 64 quants of values 64 k .. 64 k + 64 (k < 4) of the super-block at `p`, as unsigned
/// bytes in value order: Q4_K's sub-blocks 2k and 2k + 1 (the low and high nibbles of
/// qs[32 k..][..32]); Q6_K's chunks 2k and 2k + 1 of `avx2_k` (nibble k % 2 of the 64 bytes
/// ql[64 (k / 2)..], with bits 4 (k % 2) .. + 2 and 4 (k % 2) + 2 .. + 2 of qh[32 (k / 2)..]
/// above them).
///
/// # Safety
/// `p` must point to a whole super-block of `TY`; `k < 4`; the CPU must have AVX-512 F/BW.
#[inline]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
unsafe fn quants<const TY: u8>(p: *const u8, k: usize) -> __m512i {
    // SAFETY (all loads): Q4_K's quants are bytes 16..144 (16 + 32 k + 32 <= 144); Q6_K's ql
    // bytes 0..128 (64 (k / 2) + 64 <= 128) and qh 128..192 (128 + 32 (k / 2) + 32 <= 192).
    unsafe {
        if TY == Q4_K {
            let q = _mm256_loadu_si256(p.add(16 + 32 * k).cast());
            let both = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(q), _mm256_srli_epi16::<4>(q));
            _mm512_and_si512(both, _mm512_set1_epi8(0x0F))
        } else {
            let h = k / 2;
            let shift = _mm_cvtsi32_si128(4 * (k % 2) as i32);
            let ql = _mm512_and_si512(
                _mm512_srl_epi16(_mm512_loadu_si512(p.add(64 * h).cast()), shift),
                _mm512_set1_epi8(0x0F),
            );
            let qh = _mm256_srl_epi16(_mm256_loadu_si256(p.add(128 + 32 * h).cast()), shift);
            let qh = _mm512_inserti64x4::<1>(_mm512_castsi256_si512(qh), _mm256_srli_epi16::<2>(qh));
            let qh = _mm512_slli_epi16::<4>(_mm512_and_si512(qh, _mm512_set1_epi8(3)));
            _mm512_or_si512(ql, qh)
        }
    }
}

/// One row × token tile; NaN if the lengths do not fit (unreachable, see `avx2_k::lengths_ok`).
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512vnni,avx2,fma,f16c")]
fn tile<const TY: u8, const R: usize, const T: usize>(
    rows: [&[u8]; R],
    toks: &[ActRowK<'_>; T],
    nb: usize,
) -> [[f32; T]; R] {
    let bytes = block_bytes(TY);
    if !lengths_ok(&rows, toks, nb, bytes) {
        return [[f32::NAN; T]; R];
    }
    // SAFETY: each SCALE_INDEX entry is 64 bytes; unaligned loads are allowed.
    let idx: [__m512i; 4] = [0, 1, 2, 3].map(|k| unsafe { _mm512_loadu_si512(SCALE_INDEX[k].as_ptr().cast()) });
    let mut facc = [[_mm256_setzero_ps(); T]; R];
    for b in 0..nb {
        // Loops, not `array::from_fn`: a closure with these target features would not be
        // inlined into `from_fn` and would spill the accumulators around its call.
        let mut ptrs = [std::ptr::null::<u8>(); R];
        let mut heads = [Head { d: 0.0, dmin: 0.0, g8: _mm_setzero_si128(), m16: _mm256_setzero_si256() }; R];
        let mut g16 = [_mm256_setzero_si256(); R];
        for i in 0..R {
            ptrs[i] = rows[i].as_ptr().wrapping_add(b * bytes);
            // SAFETY: block b is inside each row (b < nb, lengths checked above).
            heads[i] = unsafe { head::<TY>(ptrs[i]) };
            g16[i] = _mm256_cvtepi8_epi16(heads[i].g8);
        }
        let mut isum = [[_mm512_setzero_si512(); T]; R];
        for (k, ix) in idx.iter().enumerate() {
            let mut wq = [_mm512_setzero_si512(); R];
            let mut sc = [_mm512_setzero_si512(); R];
            for i in 0..R {
                // SAFETY: as for `heads`; k < 4.
                wq[i] = unsafe { quants::<TY>(ptrs[i], k) };
                sc[i] = _mm512_permutexvar_epi16(*ix, _mm512_castsi256_si512(g16[i]));
            }
            for j in 0..T {
                // SAFETY: the token holds nb > b blocks of 256 values (checked above).
                let xq = unsafe { _mm512_loadu_si512(toks[j].qs.as_ptr().add(b * QK_K + 64 * k).cast()) };
                for i in 0..R {
                    isum[i][j] = _mm512_dpwssd_epi32(isum[i][j], _mm512_maddubs_epi16(wq[i], xq), sc[i]);
                }
            }
        }
        for j in 0..T {
            // SAFETY: the token holds nb > b blocks of 16 partial sums (checked above).
            let bs = unsafe { _mm256_loadu_si256(toks[j].bsums.as_ptr().add(b * GROUPS).cast()) };
            let dx = toks[j].d[b];
            for i in 0..R {
                let v = isum[i][j];
                let mut s = _mm256_add_epi32(_mm512_castsi512_si256(v), _mm512_extracti64x4_epi64::<1>(v));
                if TY == Q6_K {
                    s = _mm256_sub_epi32(s, _mm256_slli_epi32::<5>(_mm256_madd_epi16(g16[i], bs)));
                }
                facc[i][j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(s), _mm256_set1_ps(heads[i].d * dx), facc[i][j]);
                if TY == Q4_K {
                    let m = _mm256_cvtepi32_ps(_mm256_madd_epi16(heads[i].m16, bs));
                    facc[i][j] = _mm256_fnmadd_ps(m, _mm256_set1_ps(heads[i].dmin * dx), facc[i][j]);
                }
            }
        }
    }
    let mut sums = [[0.0f32; T]; R];
    for i in 0..R {
        for j in 0..T {
            sums[i][j] = hsum(facc[i][j]);
        }
    }
    sums
}
