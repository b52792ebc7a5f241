//! f32-activation products for the block types without hand-tiled SIMD kernels: Q5_1, Q2_K,
//! Q3_K, Q5_K, IQ4_NL and IQ4_XS; on the portable kernel set ([`Isa::Scalar`]) also Q5_0, Q4_K
//! and Q6_K, which x86 runs in registers (`f32act`, `f32act_k`).
//!
//! Each block of a row is decoded by a per-type decoder of `dq_decode`, which returns the
//! reference's values bit for bit ([`crate::quant::dequantize_row`], the arithmetic
//! `tests/dequant.rs` holds to gguf-py), into a stack buffer, once per row, block and pass of
//! tokens, and then multiplied with the unrounded activations of every token in 16 f32 lanes
//! of multiply-adds. So each product is the reference's `w * x` and only the order of the sums
//! differs (lanes, then blocks), as in the hand-tiled kernels of `f32act`. The decoders and the
//! lanes are plain Rust on fixed-size arrays; compiled inside functions that enable AVX2 + FMA
//! (or AVX-512), LLVM turns them into vector code. The type is dispatched once per call, not
//! per block.

use super::Isa;
use super::dq_decode::{self, Decoder};
use crate::{DType, Error, QK, QK_K, Result};

/// Tokens per pass over a row's blocks (each block is decoded once per row and pass) and f32
/// lanes per token's accumulator, by how many tokens are left: eight tokens of 8 lanes for
/// prefill (eight accumulator registers with AVX2, independent chains of multiply-adds, and
/// one decode per eight tokens); one token of 32 lanes (four chains) for decode, where fewer
/// lanes would leave the multiply-adds waiting on each other; four tokens of 16 lanes between.
const PREFILL: (usize, usize) = (8, 8);
const FEW: (usize, usize) = (4, 16);
const ONE_LANES: usize = 32;

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
        _ => gemm_typed::<false>(dtype, w, rb, cols, x, n, out),
    }
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn gemm_avx2(dtype: DType, w: &[u8], rb: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    gemm_typed::<true>(dtype, w, rb, cols, x, n, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn gemm_avx512(dtype: DType, w: &[u8], rb: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    gemm_typed::<true>(dtype, w, rb, cols, x, n, out);
}

/// [`gemm_body`] with the decoder of `dtype`, chosen once per call.
#[inline(always)]
fn gemm_typed<const FMA: bool>(dtype: DType, w: &[u8], rb: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    use dq_decode as dq;
    match dtype {
        DType::Q5_0 => gemm_body::<FMA, 22, QK, dq::Q50>(w, rb, cols, x, n, out),
        DType::Q5_1 => gemm_body::<FMA, 24, QK, dq::Q51>(w, rb, cols, x, n, out),
        DType::IQ4_NL => gemm_body::<FMA, 18, QK, dq::Iq4Nl>(w, rb, cols, x, n, out),
        DType::Q2_K => gemm_body::<FMA, 84, QK_K, dq::Q2K>(w, rb, cols, x, n, out),
        DType::Q3_K => gemm_body::<FMA, 110, QK_K, dq::Q3K>(w, rb, cols, x, n, out),
        DType::Q4_K => gemm_body::<FMA, 144, QK_K, dq::Q4K>(w, rb, cols, x, n, out),
        DType::Q5_K => gemm_body::<FMA, 176, QK_K, dq::Q5K>(w, rb, cols, x, n, out),
        DType::Q6_K => gemm_body::<FMA, 210, QK_K, dq::Q6K>(w, rb, cols, x, n, out),
        DType::IQ4_XS => gemm_body::<FMA, 136, QK_K, dq::Iq4Xs>(w, rb, cols, x, n, out),
        // Not sent here (hand-tiled in `f32act`, or not quantized): NaN sums, never garbage.
        _ => out.fill(f32::NAN),
    }
}

/// The kernel body, inlined into each feature-enabled wrapper with one decoder of `BB`-byte
/// blocks of `BV` values (32 or 256). `FMA` fuses each product into its sum (one rounding
/// instead of two: still the reference's product, summed in f32).
#[inline(always)]
fn gemm_body<const FMA: bool, const BB: usize, const BV: usize, D: Decoder<BB, BV>>(
    w: &[u8],
    rb: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    out: &mut [f32],
) {
    let mut buf = [0.0f32; BV];
    for (wr, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
        let blocks = wr.as_chunks::<BB>().0;
        let mut t0 = 0;
        while t0 < n {
            let left = n - t0;
            let os = &mut o[t0..];
            t0 += if left >= PREFILL.0 {
                pass::<FMA, BB, BV, { PREFILL.0 }, { PREFILL.1 }, D>(blocks, x, cols, t0, PREFILL.0, &mut buf, os)
            } else if left == 1 {
                pass::<FMA, BB, BV, 1, ONE_LANES, D>(blocks, x, cols, t0, 1, &mut buf, os)
            } else {
                let tn = left.min(FEW.0);
                pass::<FMA, BB, BV, { FEW.0 }, { FEW.1 }, D>(blocks, x, cols, t0, tn, &mut buf, os)
            };
        }
    }
}

/// One pass over a row's `blocks` for tokens t0..t0 + tn (tn <= T) with T accumulators of L
/// lanes (L divides BV); writes the sums to out[..tn] and returns tn.
#[allow(clippy::too_many_arguments)]
#[inline(always)]
fn pass<const FMA: bool, const BB: usize, const BV: usize, const T: usize, const L: usize, D: Decoder<BB, BV>>(
    blocks: &[[u8; BB]],
    x: &[f32],
    cols: usize,
    t0: usize,
    tn: usize,
    buf: &mut [f32; BV],
    out: &mut [f32],
) -> usize {
    let mut acc = [[0.0f32; L]; T];
    for (b, block) in blocks.iter().enumerate() {
        D::decode(block, buf);
        for (t, a) in acc.iter_mut().enumerate().take(tn) {
            let xb = &x[(t0 + t) * cols + b * BV..][..BV];
            for (wc, xc) in buf.as_chunks::<L>().0.iter().zip(xb.as_chunks::<L>().0) {
                for l in 0..L {
                    a[l] = if FMA { wc[l].mul_add(xc[l], a[l]) } else { a[l] + wc[l] * xc[l] };
                }
            }
        }
    }
    for (o, a) in out.iter_mut().zip(&acc).take(tn) {
        *o = a.iter().sum();
    }
    tn
}

/// Whether [`dequantize_row_exact`] decodes `dtype`: every quantized type but the ternary ones.
pub(super) fn decodes(dtype: DType) -> bool {
    matches!(
        dtype,
        DType::Q4_0
            | DType::Q4_1
            | DType::Q8_0
            | DType::Q5_0
            | DType::Q5_1
            | DType::IQ4_NL
            | DType::Q2_K
            | DType::Q3_K
            | DType::Q4_K
            | DType::Q5_K
            | DType::Q6_K
            | DType::IQ4_XS
    )
}

/// Dequantizes `row` (whole blocks of `dtype`, `out.len()` values) with the exact path's block
/// decoders compiled for `isa`: the values [`crate::quant::dequantize_row`] returns, bit for
/// bit (what `tests/fast.rs` checks). For every quantized type but the ternary ones: the tiled
/// Q4_0, Q4_1, Q8_0 and Q5_0 through their tiles' decoders (the reference itself on
/// [`Isa::Scalar`], whose tiles are the reference's loop), Q5_1, the K-quants, IQ4_NL and
/// IQ4_XS through theirs.
///
/// # Errors
/// If this CPU cannot run `isa`, `dtype` is not one of those types, or the lengths do not
/// fit.
pub fn dequantize_row_exact(isa: Isa, dtype: DType, row: &[u8], out: &mut [f32]) -> Result<()> {
    const OP: &str = "fast::dequantize_row_exact";
    if !isa.is_available() {
        return Err(Error::invalid(OP, format!("this CPU cannot run the {} kernels", isa.name())));
    }
    if !decodes(dtype) {
        return Err(Error::UnsupportedDtype {
            op: OP,
            dtype,
            expected: "q4_0, q4_1, q8_0, q5_0, q5_1, iq4_nl, a K-quant or iq4_xs",
        });
    }
    let want = dtype.row_bytes(out.len())?;
    if row.len() != want {
        return Err(Error::invalid(OP, format!("{} {dtype} values take {want} bytes, got {}", out.len(), row.len())));
    }
    #[cfg(target_arch = "x86_64")]
    if isa != Isa::Scalar {
        // The types whose x86 kernels decode into registers: their decoders, not these.
        if super::f32act_k::handles(dtype) {
            match isa {
                // SAFETY: `isa.is_available()` was checked above: this CPU has AVX-512
                // F/BW/VL, AVX2, FMA and F16C, the features of `f32act_k512::decode_row`.
                Isa::Avx512Vnni => unsafe { super::f32act_k512::decode_row(dtype, row, out) },
                // SAFETY: as above; both x86 kernel sets include AVX2, FMA and F16C, the
                // features of `f32act_k::decode_row`.
                _ => unsafe { super::f32act_k::decode_row(dtype, row, out) },
            }
            return Ok(());
        }
        if let Some(ty) = super::WType::of(dtype).filter(|t| t.has_f32_tiles()) {
            match isa {
                // SAFETY: as above: this CPU has AVX-512 F/BW/VL, AVX2, FMA and F16C, the
                // features of `decode_row512`.
                Isa::Avx512Vnni => unsafe { super::f32act::decode_row512(ty, row, out) },
                // SAFETY: as above, for `decode_row256` (AVX2, FMA, F16C).
                _ => unsafe { super::f32act::decode_row256(ty, row, out) },
            }
            return Ok(());
        }
    }
    if matches!(dtype, DType::Q4_0 | DType::Q4_1 | DType::Q8_0) {
        // The portable tiles of these types are the reference's row loop.
        return crate::quant::dequantize_row(dtype, row, out);
    }
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `isa.is_available()` was checked above: this CPU has the features of
        // `decode_avx512`.
        Isa::Avx512Vnni => unsafe { decode_avx512(dtype, row, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, for `decode_avx2`.
        Isa::Avx2 => unsafe { decode_avx2(dtype, row, out) },
        _ => decode_typed(dtype, row, out),
    }
    Ok(())
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma,f16c")]
fn decode_avx2(dtype: DType, row: &[u8], out: &mut [f32]) {
    decode_typed(dtype, row, out);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
fn decode_avx512(dtype: DType, row: &[u8], out: &mut [f32]) {
    decode_typed(dtype, row, out);
}

/// Every block of `row` through `dtype`'s decoder (lengths checked by the caller).
#[inline(always)]
fn decode_typed(dtype: DType, row: &[u8], out: &mut [f32]) {
    #[inline(always)]
    fn each<const BB: usize, const BV: usize, D: Decoder<BB, BV>>(row: &[u8], out: &mut [f32]) {
        for (b, o) in row.as_chunks::<BB>().0.iter().zip(out.as_chunks_mut::<BV>().0) {
            D::decode(b, o);
        }
    }
    use dq_decode as dq;
    match dtype {
        DType::Q5_0 => each::<22, QK, dq::Q50>(row, out),
        DType::Q5_1 => each::<24, QK, dq::Q51>(row, out),
        DType::IQ4_NL => each::<18, QK, dq::Iq4Nl>(row, out),
        DType::Q2_K => each::<84, QK_K, dq::Q2K>(row, out),
        DType::Q3_K => each::<110, QK_K, dq::Q3K>(row, out),
        DType::Q4_K => each::<144, QK_K, dq::Q4K>(row, out),
        DType::Q5_K => each::<176, QK_K, dq::Q5K>(row, out),
        DType::Q6_K => each::<210, QK_K, dq::Q6K>(row, out),
        DType::IQ4_XS => each::<136, QK_K, dq::Iq4Xs>(row, out),
        _ => out.fill(f32::NAN),
    }
}
