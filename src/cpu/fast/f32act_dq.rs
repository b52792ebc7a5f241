//! f32-activation products for the block types without hand-tiled SIMD kernels: Q5_0, Q5_1,
//! the K-quants (Q2_K … Q6_K), IQ4_NL and IQ4_XS.
//!
//! Each block of a row is dequantized by the reference's own function
//! ([`crate::quant::dequantize_row`], the arithmetic `tests/dequant.rs` holds bit for bit to
//! gguf-py) into a stack buffer, once per row and block, and then multiplied with the unrounded
//! activations of every token in 16 f32 lanes of multiply-adds. So each product is the
//! reference's `w * x` and only the order of the sums differs (lanes, then blocks), as in the
//! hand-tiled kernels of `f32act`. The lanes are plain Rust arrays; compiled inside functions
//! that enable AVX2 + FMA (or AVX-512), LLVM turns them into vector FMAs.

use super::Isa;
use crate::DType;

/// Tokens whose sums one pass over a row's blocks keeps (the block is dequantized once per
/// row and pass): enough for prefill to amortize the decoding, few enough for registers.
const TOKENS_PER_PASS: usize = 4;
/// f32 lanes per accumulator.
const LANES: usize = 16;

/// out[r][t] = row r of `w` · token t of `x` ([n][cols]); `out` is [rows][n]. `w` holds whole
/// rows of `rb` bytes of `dtype` (checked by the caller).
pub(super) fn gemm(isa: Isa, dtype: DType, w: &[u8], rb: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: the caller checked `isa.is_available()`: this CPU has AVX-512 F/BW/VL, AVX2,
        // FMA and F16C, the features of `gemm_avx512`.
        Isa::Avx512Vnni => unsafe { gemm_avx512(dtype, w, rb, cols, x, n, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above: this CPU has AVX2, FMA and F16C, the features of `gemm_avx2`.
        Isa::Avx2 => unsafe { gemm_avx2(dtype, w, rb, cols, x, n, out) },
        _ => gemm_body::<false>(dtype, w, rb, cols, x, n, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_avx2(dtype: DType, w: &[u8], rb: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    gemm_body::<true>(dtype, w, rb, cols, x, n, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn gemm_avx512(dtype: DType, w: &[u8], rb: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    gemm_body::<true>(dtype, w, rb, cols, x, n, out);
}

/// The kernel body, inlined into each feature-enabled wrapper. `FMA` fuses each product into
/// its sum (one rounding instead of two: still the reference's product, summed in f32).
#[inline(always)]
fn gemm_body<const FMA: bool>(dtype: DType, w: &[u8], rb: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    let (bv, bb) = (dtype.block_values(), dtype.block_bytes());
    let mut buf = [0.0f32; crate::QK_K];
    for (wr, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
        let mut t0 = 0;
        while t0 < n {
            let tn = TOKENS_PER_PASS.min(n - t0);
            let mut acc = [[0.0f32; LANES]; TOKENS_PER_PASS];
            for (b, block) in wr.chunks_exact(bb).enumerate() {
                let wv = &mut buf[..bv];
                if crate::quant::dequantize_row(dtype, block, wv).is_err() {
                    // Unreachable: the caller checked that rows are whole blocks.
                    wv.fill(f32::NAN);
                }
                for (t, a) in acc.iter_mut().enumerate().take(tn) {
                    let xb = &x[(t0 + t) * cols + b * bv..][..bv];
                    for (wc, xc) in wv.chunks_exact(LANES).zip(xb.chunks_exact(LANES)) {
                        for l in 0..LANES {
                            a[l] = if FMA { wc[l].mul_add(xc[l], a[l]) } else { a[l] + wc[l] * xc[l] };
                        }
                    }
                }
            }
            for (t, a) in acc.iter().enumerate().take(tn) {
                o[t0 + t] = a.iter().sum();
            }
            t0 += tn;
        }
    }
}
