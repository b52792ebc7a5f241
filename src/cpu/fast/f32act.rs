//! Quantized products with f32 activations: the reference's arithmetic ([`crate::cpu::matvec`],
//! [`crate::cpu::matmul`]), vectorized.
//!
//! Each weight is dequantized to the reference's bits (`q * d + m` with two roundings, which
//! for Q4_1 one FMA reproduces: the product is exact) and multiplied with the unrounded activation; only the order of the f32 sums differs
//! (16 or 8 lanes, then a horizontal sum, where the reference adds in column order). So the
//! results are the reference's up to f32 accumulation error, about 1e-6 relative, and the
//! model's tokens are the reference's — which equal llama.cpp's on the reference cases (see
//! `crates/strata-model/tests/reference.rs`). This is the default CPU path of the `strata`
//! binary (`--cpu-kernels exact`); the 8-bit-activation kernels of the parent module are the
//! `fast` path.
//!
//! Tiled here: Q4_0, Q4_1, Q8_0 and Q5_0. On x86, Q4_K and Q6_K have tiles of their own
//! (`f32act_k`, the same scheme per 256-value super-block, and its AVX-512 prefill tiles in
//! `f32act_k512`); Q5_1, the other K-quants and the
//! IQ4 types go through `f32act_dq` (each block decoded by a per-type decoder that returns the
//! reference's values bit for bit, then vector multiply-adds). All with the same guarantee.
//!
//! Tiles: R rows × T tokens of sums. Each 32-value weight block of a row is dequantized once
//! into registers and used for the T tokens (prefill), so the dequantization, which costs more
//! than the multiply-adds, is amortized over the tile.

use super::{Isa, WType, by_rows, check_product, check_shapes, f32act_dq};
use crate::{DType, Error, Result};

/// `y[r] = sum_c w[r][c] * x[c]` with f32 activations and the best kernels for this CPU.
///
/// # Errors
/// If `dtype` is not quantized, or a length does not fit the shape.
pub fn matvec_f32(dtype: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    matmul_f32_with(Isa::best(), dtype, w, rows, cols, x, 1, y)
}

/// `Y = X W^T` (`y[t][r] = sum_c x[t][c] * w[r][c]`) with f32 activations and the best kernels for
/// this CPU.
///
/// # Errors
/// If `dtype` is not quantized, or a length does not fit the shape.
pub fn matmul_f32(
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    matmul_f32_with(Isa::best(), dtype, w, rows, cols, x, n_tokens, y)
}

/// [`matmul_f32`] with the given kernel set ([`Isa::Scalar`] is the reference itself).
///
/// # Errors
/// As [`matmul_f32`], and if this CPU cannot run `isa`.
pub fn matmul_f32_with(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    const OP: &str = "fast::matmul_f32";
    #[cfg(target_arch = "x86_64")]
    if matches!(isa, Isa::Avx512Vnni | Isa::Avx2) && super::f32act_panel::applies(dtype, n_tokens) {
        // Prefill: each weight decoded once per call into a panel that every token meets
        // (`f32act_panel`), where the register tiles below decode it once per 4 tokens.
        let rb = check_shapes(OP, isa, dtype, w, rows, cols, x, n_tokens, y)?;
        // SAFETY: `check_shapes` returned Ok only if `isa.is_available()`: this CPU has `isa`'s
        // features, as `f32act_panel::matmul` requires.
        unsafe { super::f32act_panel::matmul(isa, dtype, w, rb, cols, x, n_tokens, y) };
        return Ok(());
    }
    // Q5_0's tiles are x86 ones: the portable set keeps `f32act_dq`'s vectorizable lanes for it
    // rather than the reference's row loop below.
    let portable_q5_0 = isa == Isa::Scalar && dtype == DType::Q5_0;
    if !WType::of(dtype).is_some_and(WType::has_f32_tiles) || portable_q5_0 {
        // Q5_1, the K-quants and the IQ4 types: dequantize-then-multiply (`f32act_dq`), but
        // Q4_K and Q6_K on x86 (`f32act_k`).
        if !dtype.is_quantized() {
            return Err(Error::UnsupportedDtype { op: OP, dtype, expected: "a quantized type" });
        }
        let rb = check_shapes(OP, isa, dtype, w, rows, cols, x, n_tokens, y)?;
        #[cfg(target_arch = "x86_64")]
        if isa != Isa::Scalar && super::f32act_k::handles(dtype) {
            // Q4_K and Q6_K: decoded into registers, tiles of rows × tokens (`f32act_k`).
            let nsb = cols / crate::QK_K;
            by_rows(w, rb, rows, n_tokens, y, |wc, o| match isa {
                // SAFETY: `check_shapes` returned Ok only if `isa.is_available()`: this CPU has
                // AVX-512 F/BW/VL, AVX2, FMA and F16C, the features of `f32act_k512::gemm`.
                Isa::Avx512Vnni => unsafe { super::f32act_k512::gemm(dtype, wc, rb, nsb, x, n_tokens, o) },
                // SAFETY: as above: both x86 kernel sets include AVX2, FMA and F16C, the
                // features of `f32act_k::gemm`.
                _ => unsafe { super::f32act_k::gemm(dtype, wc, rb, nsb, x, n_tokens, o) },
            });
            return Ok(());
        }
        by_rows(w, rb, rows, n_tokens, y, |wc, o| f32act_dq::gemm(isa, dtype, wc, rb, cols, x, n_tokens, o));
        return Ok(());
    }
    let (ty, rb) = check_product(OP, isa, dtype, w, rows, cols, x, n_tokens, y)?;
    let nb = cols / crate::QK;
    by_rows(w, rb, rows, n_tokens, y, |wc, o| match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_product` returned Ok only if `isa.is_available()`: this CPU has
        // AVX-512 F/BW/VL (and VNNI, unused here), AVX2, FMA and F16C, the features of
        // `x86::gemm512`.
        Isa::Avx512Vnni => unsafe { x86::gemm512(ty, wc, rb, nb, x, n_tokens, o) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above: this CPU has AVX2, FMA and F16C, the features of `x86::gemm256`.
        Isa::Avx2 => unsafe { x86::gemm256(ty, wc, rb, nb, x, n_tokens, o) },
        _ => scalar_gemm(dtype, wc, rb, cols, x, n_tokens, o),
    });
    Ok(())
}

/// The portable kernel: the reference's row dot product for each (row, token).
fn scalar_gemm(dtype: DType, w: &[u8], rb: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    let mut row = vec![0.0f32; cols];
    for (wr, o) in w.chunks_exact(rb).zip(out.chunks_exact_mut(n)) {
        if crate::quant::dequantize_row(dtype, wr, &mut row).is_err() {
            o.fill(f32::NAN);
            continue;
        }
        for (ot, xt) in o.iter_mut().zip(x.chunks_exact(cols)) {
            *ot = row.iter().zip(xt).fold(0.0f32, |acc, (a, b)| acc + a * b);
        }
    }
}

#[cfg(target_arch = "x86_64")]
pub(super) use x86::{decode_row256, decode_row512};

#[cfg(target_arch = "x86_64")]
mod x86 {
    use std::arch::x86_64::*;

    use crate::QK;
    use crate::cpu::fast::WType;
    use crate::cpu::fast::avx2::{fifth_bits, nibbles};
    use crate::cpu::fast::x86::{prefetch, store};

    /// Rows × tokens per tile with AVX-512: 16 accumulators and four rows' two registers of
    /// weights within the 32 vector registers. One token (decode) uses two rows: a decode step
    /// waits on memory, and two interleaved weight streams measured 13% faster than four
    /// (`cargo bench --bench cpu_fast -- 'decode step'`, 2 threads, this dev VM).
    const R512: usize = 4;
    const T512: usize = 4;
    const R512_ONE: usize = 2;
    /// With AVX2 (16 registers): one row's four registers of weights and 8 accumulators (the
    /// tiles decode one row at a time, the activations are memory operands), so a block's
    /// decoding is shared by 8 tokens. Measured against 2 rows × 4 tokens on the K-quant tiles
    /// of `f32act_k` (same scheme): 20-30% less CPU time for a 64-token 640 × 2048 product.
    const R256: usize = 1;
    const T256: usize = 8;
    /// Q8_0's blocks decode in few instructions, so its multiply-adds dominate and 2 rows × 4
    /// tokens (each activation register used twice) measured 25% faster than 1 × 8.
    const R256_Q8_0: usize = 2;
    const T256_Q8_0: usize = 4;
    const R256_ONE: usize = 2;
    /// Accumulators per row for one token: a block's two (AVX-512) or four (AVX2) multiply-adds
    /// per row go to as many registers, so they do not wait on each other (with one
    /// accumulator a row's block is a chain of FMA latencies, which bounded the Q8_0 output head
    /// of Gemma 3, 262144 × 640, below the memory's speed). Prefill tiles have R × T
    /// independent accumulators already.
    const A512_ONE: usize = 2;
    const A256_ONE: usize = 4;
    /// Row tiles ahead to prefetch (see the 8-bit kernels: a decode step waits on memory).
    const PREFETCH_TILES: usize = 2;

    /// The weight type as a const parameter, so each kernel is compiled for one layout.
    const Q4_0: u8 = 0;
    const Q4_1: u8 = 1;
    const Q8_0: u8 = 2;
    const Q5_0: u8 = 3;

    /// The tiled types' codes. `matmul_f32_with` sends the others to `f32act_dq`; were one to
    /// arrive here, it gets Q8_0's code, whose kernels read the 34-byte blocks only inside the
    /// row lengths checked per tile (NaN sums, never a read out of bounds).
    fn code(ty: WType) -> u8 {
        match ty {
            WType::Q4_0 => Q4_0,
            WType::Q4_1 => Q4_1,
            WType::Q5_0 => Q5_0,
            WType::Q8_0 | WType::Q5_1 | WType::IQ4_NL => Q8_0,
        }
    }

    const fn block_bytes(ty: u8) -> usize {
        match ty {
            Q4_0 => 18,
            Q4_1 => 20,
            Q5_0 => 22,
            _ => 34,
        }
    }

    /// out[r][t] = row r of `w` · token t of `x` ([n][nb * 32]); `out` is [rows][n]. The AVX-512
    /// kernels: tiles of [`R512`] × [`T512`] while more than 8 tokens are left, then the last 1
    /// to 8 tokens in one pass over the weights ([`few_tokens512`]).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(super) fn gemm512(ty: WType, w: &[u8], rb: usize, nb: usize, x: &[f32], n: usize, out: &mut [f32]) {
        match code(ty) {
            Q4_0 => tokens512::<Q4_0>(w, rb, nb, x, n, out),
            Q4_1 => tokens512::<Q4_1>(w, rb, nb, x, n, out),
            Q5_0 => tokens512::<Q5_0>(w, rb, nb, x, n, out),
            _ => tokens512::<Q8_0>(w, rb, nb, x, n, out),
        }
    }

    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn tokens512<const TY: u8>(w: &[u8], rb: usize, nb: usize, x: &[f32], n: usize, out: &mut [f32]) {
        let mut t0 = 0;
        while n - t0 > 8 {
            pass512::<TY, R512, T512, 1>(w, rb, nb, x, n, t0, out);
            t0 += T512;
        }
        few_tokens512::<TY>(w, rb, nb, x, n, t0, out);
    }

    /// Tokens t0..n (1 to 8 of them; none: nothing) in one pass over the weights, as
    /// [`few_tokens`] does with AVX2: a `--lookup` verification pass of 2, 3 or 5 to 8 tokens
    /// was that many one-token passes, or a 4-token tile and one-token passes, each reading and
    /// decoding every weight block again. Two to four tokens keep the one-token tile's two
    /// accumulators per (row, token), so their sums are the one-token pass's bit for bit (4 × 2,
    /// 2 × 3 and 2 × 4 tiles: at most 16 accumulators); five to eight keep one each, two rows at
    /// a time (at most 16 accumulators and 4 registers of weights), whose sums are the 4 × 4
    /// prefill tile's bit for bit (one accumulator adds a row's blocks in order whatever the
    /// tile's shape). Four tokens as 2 × 4 rather than the 4 × 4 prefill tile: 1.45 against
    /// 1.61 one-token passes of the default model (interleaved `strata bench -p 4`, loaded VM).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn few_tokens512<const TY: u8>(w: &[u8], rb: usize, nb: usize, x: &[f32], n: usize, t0: usize, out: &mut [f32]) {
        match n.saturating_sub(t0) {
            0 => {}
            1 => pass512::<TY, R512_ONE, 1, A512_ONE>(w, rb, nb, x, n, t0, out),
            2 => pass512::<TY, 4, 2, A512_ONE>(w, rb, nb, x, n, t0, out),
            3 => pass512::<TY, 2, 3, A512_ONE>(w, rb, nb, x, n, t0, out),
            4 => pass512::<TY, 2, 4, A512_ONE>(w, rb, nb, x, n, t0, out),
            5 => pass512::<TY, 2, 5, 1>(w, rb, nb, x, n, t0, out),
            6 => pass512::<TY, 2, 6, 1>(w, rb, nb, x, n, t0, out),
            7 => pass512::<TY, 2, 7, 1>(w, rb, nb, x, n, t0, out),
            _ => pass512::<TY, 2, 8, 1>(w, rb, nb, x, n, t0, out),
        }
    }

    /// Tokens t0..t0 + T against every row with 512-bit registers: R rows per tile, the last
    /// rows one at a time.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn pass512<const TY: u8, const R: usize, const T: usize, const A: usize>(
        w: &[u8],
        rb: usize,
        nb: usize,
        x: &[f32],
        n: usize,
        t0: usize,
        out: &mut [f32],
    ) {
        let rows = w.len() / rb;
        let cols = nb * QK;
        let xs: [&[f32]; T] = std::array::from_fn(|j| &x[(t0 + j) * cols..][..cols]);
        let mut r0 = 0;
        while r0 < rows {
            prefetch(w, (r0 + PREFETCH_TILES * R) * rb, R * rb);
            if r0 + R <= rows {
                let s = tile512::<TY, R, T, A>(std::array::from_fn(|i| &w[(r0 + i) * rb..][..rb]), xs, nb);
                store(&s, out, n, r0, t0);
                r0 += R;
            } else {
                let s = tile512::<TY, 1, T, A>([&w[r0 * rb..][..rb]], xs, nb);
                store(&s, out, n, r0, t0);
                r0 += 1;
            }
        }
    }

    /// out[r][t] = row r of `w` · token t of `x` ([n][nb * 32]); `out` is [rows][n]. The AVX2
    /// kernels: tiles of [`R256`] × [`T256`] ([`R256_Q8_0`] × [`T256_Q8_0`] for Q8_0) while at
    /// least that many tokens are left, then the last 1 to 8 tokens in one pass over the
    /// weights ([`few_tokens`]).
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(super) fn gemm256(ty: WType, w: &[u8], rb: usize, nb: usize, x: &[f32], n: usize, out: &mut [f32]) {
        match code(ty) {
            Q4_0 => tokens256::<Q4_0, R256, T256>(w, rb, nb, x, n, out),
            Q4_1 => tokens256::<Q4_1, R256, T256>(w, rb, nb, x, n, out),
            Q5_0 => tokens256::<Q5_0, R256, T256>(w, rb, nb, x, n, out),
            _ => tokens256::<Q8_0, R256_Q8_0, T256_Q8_0>(w, rb, nb, x, n, out),
        }
    }

    #[target_feature(enable = "avx2,fma,f16c")]
    fn tokens256<const TY: u8, const R: usize, const T: usize>(
        w: &[u8],
        rb: usize,
        nb: usize,
        x: &[f32],
        n: usize,
        out: &mut [f32],
    ) {
        let mut t0 = 0;
        while n - t0 > T.max(8) {
            pass256::<TY, R, T, 1>(w, rb, nb, x, n, t0, out);
            t0 += T;
        }
        few_tokens::<TY>(w, rb, nb, x, n, t0, out);
    }

    /// Tokens t0..n (1 to 8 of them; none: nothing) in one pass over the weights, so a
    /// verification pass of a few drafted tokens (`--lookup`) reads and decodes each weight
    /// block once, as a one-token pass does, instead of once per token (before, 2 and 3 tokens
    /// were that many one-token passes, 5 to 7 a 4-token tile and one-token passes). The tile
    /// keeps one row's decoded block in four registers and multiplies it into every token's
    /// accumulators. Two tokens keep four accumulators per (row, token), one per register of
    /// the block, as the one-token tile does, so their sums are the one-token pass's bit for
    /// bit; three keep two (twelve spilled to the stack: 190 µs against 146 µs for two, a
    /// 1536 × 576 Q4_1 product, 1 thread); four or more one each (as many independent chains
    /// as tokens), the 4- and 8-token sums of the prefill tiles. Only the order of the f32 sums
    /// differs between these (the `exact` path's promise).
    #[target_feature(enable = "avx2,fma,f16c")]
    fn few_tokens<const TY: u8>(w: &[u8], rb: usize, nb: usize, x: &[f32], n: usize, t0: usize, out: &mut [f32]) {
        match n.saturating_sub(t0) {
            0 => {}
            1 => pass256::<TY, R256_ONE, 1, A256_ONE>(w, rb, nb, x, n, t0, out),
            2 => pass256::<TY, 1, 2, A256_ONE>(w, rb, nb, x, n, t0, out),
            3 => pass256::<TY, 1, 3, 2>(w, rb, nb, x, n, t0, out),
            4 => pass256::<TY, 2, 4, 1>(w, rb, nb, x, n, t0, out),
            5 => pass256::<TY, 1, 5, 1>(w, rb, nb, x, n, t0, out),
            6 => pass256::<TY, 1, 6, 1>(w, rb, nb, x, n, t0, out),
            7 => pass256::<TY, 1, 7, 1>(w, rb, nb, x, n, t0, out),
            _ => pass256::<TY, 1, 8, 1>(w, rb, nb, x, n, t0, out),
        }
    }

    /// Tokens t0..t0 + T against every row: R rows per tile, the last rows one at a time.
    #[allow(clippy::too_many_arguments)]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn pass256<const TY: u8, const R: usize, const T: usize, const A: usize>(
        w: &[u8],
        rb: usize,
        nb: usize,
        x: &[f32],
        n: usize,
        t0: usize,
        out: &mut [f32],
    ) {
        let rows = w.len() / rb;
        let cols = nb * QK;
        let xs: [&[f32]; T] = std::array::from_fn(|j| &x[(t0 + j) * cols..][..cols]);
        let mut r0 = 0;
        while r0 < rows {
            prefetch(w, (r0 + PREFETCH_TILES * R) * rb, R * rb);
            if r0 + R <= rows {
                let s = tile256::<TY, R, T, A>(std::array::from_fn(|i| &w[(r0 + i) * rb..][..rb]), xs, nb);
                store(&s, out, n, r0, t0);
                r0 += R;
            } else {
                let s = tile256::<TY, 1, T, A>([&w[r0 * rb..][..rb]], xs, nb);
                store(&s, out, n, r0, t0);
                r0 += 1;
            }
        }
    }

    /// Whether every row holds `nb` blocks and every token `nb * 32` values, so that the block
    /// loops may load without bounds checks (true by construction of the callers).
    fn lengths_ok<const R: usize, const T: usize>(
        rows: &[&[u8]; R],
        xs: &[&[f32]; T],
        nb: usize,
        bytes: usize,
    ) -> bool {
        rows.iter().all(|r| r.len() == nb * bytes) && xs.iter().all(|x| x.len() == nb * QK)
    }

    /// The binary16 scale at `p` widened (F16C).
    ///
    /// # Safety
    /// `p` must point to two readable bytes (any alignment), and the CPU must support AVX2 and
    /// F16C (the callers are only reached after `is_x86_feature_detected!` says so).
    #[inline]
    #[target_feature(enable = "avx2,f16c")]
    unsafe fn f16_at(p: *const u8) -> __m128 {
        // SAFETY: the caller guarantees two readable bytes at p; unaligned loads are allowed.
        let bits = unsafe { std::ptr::read_unaligned(p.cast::<u16>()) };
        _mm_cvtph_ps(_mm_cvtsi32_si128(i32::from(bits)))
    }

    /// One R × T tile with 512-bit registers and A accumulators per (row, token) (A divides 2);
    /// NaN if the lengths do not fit (unreachable).
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    fn tile512<const TY: u8, const R: usize, const T: usize, const A: usize>(
        rows: [&[u8]; R],
        xs: [&[f32]; T],
        nb: usize,
    ) -> [[f32; T]; R] {
        let bytes = block_bytes(TY);
        if !lengths_ok(&rows, &xs, nb, bytes) {
            return [[f32::NAN; T]; R];
        }
        let mut acc = [[[_mm512_setzero_ps(); A]; T]; R];
        for b in 0..nb {
            let mut wv = [[_mm512_setzero_ps(); 2]; R];
            for i in 0..R {
                // SAFETY: block b < nb is inside rows[i] (`lengths_ok`); its d (and m) and
                // quants are read at offsets inside the block's `bytes`.
                wv[i] = unsafe { dequant512::<TY>(rows[i].as_ptr().add(b * bytes)) };
            }
            for j in 0..T {
                // SAFETY: xs[j] holds nb * 32 values (`lengths_ok`), b < nb.
                let (x0, x1) = unsafe {
                    let p = xs[j].as_ptr().add(b * QK);
                    (_mm512_loadu_ps(p), _mm512_loadu_ps(p.add(16)))
                };
                for i in 0..R {
                    acc[i][j][0] = _mm512_fmadd_ps(wv[i][0], x0, acc[i][j][0]);
                    acc[i][j][1 % A] = _mm512_fmadd_ps(wv[i][1], x1, acc[i][j][1 % A]);
                }
            }
        }
        let mut sums = [[0.0f32; T]; R];
        for i in 0..R {
            for j in 0..T {
                let v = acc[i][j][1..].iter().fold(acc[i][j][0], |s, &a| _mm512_add_ps(s, a));
                sums[i][j] = hsum512(v);
            }
        }
        sums
    }

    /// The 32 weights of the block at `p` as f32, values 0..16 and 16..32, computed as the
    /// reference does (`crate::quant`): `q * d + m` (Q4_1), `(q - 8) * d` (Q4_0), `q * d`
    /// (Q8_0), `(q - 16) * d` (Q5_0, the offset subtracted in integers as the reference does),
    /// each product and sum rounded separately.
    ///
    /// # Safety
    /// `p` must point to one whole readable block of type `TY` (`block_bytes(TY)` bytes, any
    /// alignment), and the CPU must support AVX-512 F/BW/VL, AVX2, FMA and F16C (checked at run
    /// time before this path is chosen).
    #[inline]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    unsafe fn dequant512<const TY: u8>(p: *const u8) -> [__m512; 2] {
        // SAFETY: the caller guarantees a whole block of `TY` at p.
        unsafe {
            let d = _mm512_broadcastss_ps(f16_at(p));
            if TY == Q4_0 || TY == Q4_1 {
                // A 4-bit block has 16 possible weights: the table of all 16 computed as the
                // reference computes each (`q * d + m` by one exact-product FMA for Q4_1,
                // `(q - 8) * d` for Q4_0; the same instructions on the same inputs as the
                // per-weight code had, so the same bits), then each weight picked from it by
                // its nibble (`vpermps` reads only the low 4 bits of each 32-bit index, so the
                // widened bytes index the low nibbles as they are). Two permutes and a shift
                // per 32 weights, on the shuffle port, where converting the nibbles to f32 and
                // scaling them took six operations on the port the FMAs need: on a core with
                // one 512-bit FMA port a decode step's Q4 products were bound by that port.
                let iota = _mm512_setr_ps(0., 1., 2., 3., 4., 5., 6., 7., 8., 9., 10., 11., 12., 13., 14., 15.);
                let table = if TY == Q4_1 {
                    _mm512_fmadd_ps(iota, d, _mm512_broadcastss_ps(f16_at(p.add(2))))
                } else {
                    _mm512_mul_ps(_mm512_sub_ps(iota, _mm512_set1_ps(8.0)), d)
                };
                let qs = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(if TY == Q4_1 { 4 } else { 2 }).cast()));
                return [_mm512_permutexvar_ps(qs, table), _mm512_permutexvar_ps(_mm512_srli_epi32::<4>(qs), table)];
            }
            let (q0, q1) = match TY {
                Q8_0 => (
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(2).cast())),
                    _mm512_cvtepi8_epi32(_mm_loadu_si128(p.add(18).cast())),
                ),
                Q5_0 => {
                    // Value j is nibble j + 16 * (bit j of qh) - 16: so nibble j where the bit is
                    // set and nibble j - 16 where it is clear, the same integers as
                    // `q5_0_bytes`, with qh as two 16-lane masks (one masked subtract per 16
                    // values, where spreading the bits into bytes took six instructions). The
                    // decoding is most of a decode step's Q5_0 product on this path.
                    let qh = !u32::from_le(p.add(2).cast::<u32>().read_unaligned());
                    let qs = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(6).cast()));
                    let (lo, hi) = (_mm512_and_si512(qs, _mm512_set1_epi32(0x0F)), _mm512_srli_epi32::<4>(qs));
                    let sixteen = _mm512_set1_epi32(16);
                    (
                        _mm512_mask_sub_epi32(lo, qh as __mmask16, lo, sixteen),
                        _mm512_mask_sub_epi32(hi, (qh >> 16) as __mmask16, hi, sixteen),
                    )
                }
                _ => {
                    // The 16 bytes widened once; low nibbles (values 0..16) masked out, high
                    // nibbles (16..32) shifted down, in 32-bit lanes (see `dequant256`).
                    let qs = _mm512_cvtepu8_epi32(_mm_loadu_si128(p.add(if TY == Q4_1 { 4 } else { 2 }).cast()));
                    (_mm512_and_si512(qs, _mm512_set1_epi32(0x0F)), _mm512_srli_epi32::<4>(qs))
                }
            };
            let (mut f0, mut f1) = (_mm512_cvtepi32_ps(q0), _mm512_cvtepi32_ps(q1));
            if TY == Q4_0 {
                let eight = _mm512_set1_ps(8.0);
                (f0, f1) = (_mm512_sub_ps(f0, eight), _mm512_sub_ps(f1, eight));
            }
            if TY == Q4_1 {
                // One FMA is the reference's `q * d + m`: see `dequant256`.
                let m = _mm512_broadcastss_ps(f16_at(p.add(2)));
                return [_mm512_fmadd_ps(f0, d, m), _mm512_fmadd_ps(f1, d, m)];
            }
            [_mm512_mul_ps(f0, d), _mm512_mul_ps(f1, d)]
        }
    }

    /// The sum of the 16 lanes, written out so it inlines (see the 8-bit AVX-512 kernels).
    #[inline]
    #[target_feature(enable = "avx512f")]
    fn hsum512(v: __m512) -> f32 {
        let hi = _mm256_castpd_ps(_mm512_extractf64x4_pd::<1>(_mm512_castps_pd(v)));
        hsum256(_mm256_add_ps(_mm512_castps512_ps256(v), hi))
    }

    /// One R × T tile with 256-bit registers and A accumulators per (row, token) (A divides 4);
    /// NaN if the lengths do not fit (unreachable).
    // k indexes a block's four registers in the weights and the activations alike.
    #[allow(clippy::needless_range_loop)]
    #[target_feature(enable = "avx2,fma,f16c")]
    fn tile256<const TY: u8, const R: usize, const T: usize, const A: usize>(
        rows: [&[u8]; R],
        xs: [&[f32]; T],
        nb: usize,
    ) -> [[f32; T]; R] {
        let bytes = block_bytes(TY);
        if !lengths_ok(&rows, &xs, nb, bytes) {
            return [[f32::NAN; T]; R];
        }
        let mut acc = [[[_mm256_setzero_ps(); A]; T]; R];
        for b in 0..nb {
            // Row by row: one row's four registers of weights live at a time (with all rows'
            // decoded first, 2 × 4 of them and the 2 × 4 accumulators spilled to the stack);
            // the activations are memory operands of the multiply-adds, from L1.
            for i in 0..R {
                // SAFETY: as in `tile512`.
                let wv = unsafe { dequant256::<TY>(rows[i].as_ptr().add(b * bytes)) };
                for j in 0..T {
                    for k in 0..4 {
                        // SAFETY: as in `tile512`; values 8k..8k+8 of block b.
                        let xk = unsafe { _mm256_loadu_ps(xs[j].as_ptr().add(b * QK + 8 * k)) };
                        acc[i][j][k % A] = _mm256_fmadd_ps(wv[k], xk, acc[i][j][k % A]);
                    }
                }
            }
        }
        let mut sums = [[0.0f32; T]; R];
        for i in 0..R {
            for j in 0..T {
                let v = acc[i][j][1..].iter().fold(acc[i][j][0], |s, &a| _mm256_add_ps(s, a));
                sums[i][j] = hsum256(v);
            }
        }
        sums
    }

    /// As [`dequant512`], in four registers of eight values.
    ///
    /// # Safety
    /// `p` must point to one whole readable block of type `TY`, and the CPU must support AVX2,
    /// FMA and F16C (checked at run time before this path is chosen).
    #[inline]
    #[target_feature(enable = "avx2,fma,f16c")]
    unsafe fn dequant256<const TY: u8>(p: *const u8) -> [__m256; 4] {
        // SAFETY: the caller guarantees a whole block of `TY` at p.
        unsafe {
            let d = _mm256_broadcastss_ps(f16_at(p));
            let q: [__m256i; 4] = match TY {
                // Eight quants per load, so that each widening reads memory (one shuffle
                // each, none to move the upper halves down).
                Q8_0 => std::array::from_fn(|k| _mm256_cvtepi8_epi32(_mm_loadl_epi64(p.add(2 + 8 * k).cast()))),
                Q5_0 => {
                    let q = q5_0_bytes(p);
                    let (lo, hi) = (_mm256_castsi256_si128(q), _mm256_extracti128_si256::<1>(q));
                    [
                        _mm256_cvtepi8_epi32(lo),
                        _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(lo)),
                        _mm256_cvtepi8_epi32(hi),
                        _mm256_cvtepi8_epi32(_mm_srli_si128::<8>(hi)),
                    ]
                }
                _ => {
                    // Bytes 0..8 and 8..16 widened straight from memory (two shuffles, where
                    // masking the 16 bytes first needed four and two more to move upper
                    // halves down); each gives its low nibbles (values 0..8, 8..16) masked
                    // and its high nibbles (16..24, 24..32) shifted down, in 32-bit lanes.
                    let at = p.add(if TY == Q4_1 { 4 } else { 2 });
                    let b0 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(at.cast()));
                    let b1 = _mm256_cvtepu8_epi32(_mm_loadl_epi64(at.add(8).cast()));
                    let mask = _mm256_set1_epi32(0x0F);
                    [
                        _mm256_and_si256(b0, mask),
                        _mm256_and_si256(b1, mask),
                        _mm256_srli_epi32::<4>(b0),
                        _mm256_srli_epi32::<4>(b1),
                    ]
                }
            };
            let m = if TY == Q4_1 { _mm256_broadcastss_ps(f16_at(p.add(2))) } else { _mm256_setzero_ps() };
            let mut w = [_mm256_setzero_ps(); 4];
            for k in 0..4 {
                let mut f = _mm256_cvtepi32_ps(q[k]);
                if TY == Q4_0 {
                    f = _mm256_sub_ps(f, _mm256_set1_ps(8.0));
                }
                w[k] = if TY == Q4_1 {
                    // The reference's `q * d + m` rounds twice; one FMA rounds once, and gives
                    // the same bits because the product is exact: q < 16 has 4 significant
                    // bits and d, a widened binary16, at most 11, so q * d fits f32's 24 (no
                    // overflow: 15 * 65504 is finite; binary16 subnormals are f32 normals, so
                    // no product underflows). Then round(q * d + m) is the reference's second
                    // rounding alone. Zeros, infinities and NaN scales give the same values
                    // (up to NaN payloads). `exact_decoders_equal_dequantize_row_bit_for_bit`
                    // checks it, extreme scales included.
                    _mm256_fmadd_ps(f, d, m)
                } else {
                    _mm256_mul_ps(f, d)
                };
            }
            w
        }
    }

    /// Every block of `row` (Q4_0, Q4_1, Q8_0 or Q5_0: whole blocks, checked by the caller)
    /// through [`dequant256`] into `out`: the values the AVX2 kernels multiply, for the tests
    /// to compare with the reference.
    #[target_feature(enable = "avx2,fma,f16c")]
    pub(in crate::cpu::fast) fn decode_row256(ty: WType, row: &[u8], out: &mut [f32]) {
        #[target_feature(enable = "avx2,fma,f16c")]
        fn each<const TY: u8>(row: &[u8], out: &mut [f32]) {
            for (b, o) in row.chunks_exact(block_bytes(TY)).zip(out.chunks_exact_mut(QK)) {
                // SAFETY: `b` is one whole block of TY (chunks_exact).
                let w = unsafe { dequant256::<TY>(b.as_ptr()) };
                for (k, v) in w.iter().enumerate() {
                    // SAFETY: `o` holds 32 values; 8 k + 8 <= 32.
                    unsafe { _mm256_storeu_ps(o.as_mut_ptr().add(8 * k), *v) };
                }
            }
        }
        match code(ty) {
            Q4_0 => each::<Q4_0>(row, out),
            Q4_1 => each::<Q4_1>(row, out),
            Q5_0 => each::<Q5_0>(row, out),
            _ => each::<Q8_0>(row, out),
        }
    }

    /// As [`decode_row256`], through [`dequant512`]: the values the AVX-512 kernels multiply.
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
    pub(in crate::cpu::fast) fn decode_row512(ty: WType, row: &[u8], out: &mut [f32]) {
        #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx2,fma,f16c")]
        fn each<const TY: u8>(row: &[u8], out: &mut [f32]) {
            for (b, o) in row.chunks_exact(block_bytes(TY)).zip(out.chunks_exact_mut(QK)) {
                // SAFETY: `b` is one whole block of TY (chunks_exact).
                let w = unsafe { dequant512::<TY>(b.as_ptr()) };
                for (k, v) in w.iter().enumerate() {
                    // SAFETY: `o` holds 32 values; 16 k + 16 <= 32.
                    unsafe { _mm512_storeu_ps(o.as_mut_ptr().add(16 * k), *v) };
                }
            }
        }
        match code(ty) {
            Q4_0 => each::<Q4_0>(row, out),
            Q4_1 => each::<Q4_1>(row, out),
            Q5_0 => each::<Q5_0>(row, out),
            _ => each::<Q8_0>(row, out),
        }
    }

    /// The 32 quants of the Q5_0 block at `p` minus 16, as signed bytes in value order: the
    /// nibbles (low: values 0..16, high: 16..32) with bit j of the 4 bytes after `d` as bit 4
    /// of value j, then `q - 16` in integers (exact), as the reference computes it.
    ///
    /// # Safety
    /// `p` must point to one whole readable Q5_0 block (22 bytes, any alignment), and the CPU
    /// must support AVX2 (checked at run time before this path is chosen).
    #[inline]
    #[target_feature(enable = "avx2")]
    unsafe fn q5_0_bytes(p: *const u8) -> __m256i {
        // SAFETY: the caller guarantees 22 readable bytes at p: qh at 2..6, nibbles at 6..22.
        let (qh, qs) = unsafe { (p.add(2).cast::<u32>().read_unaligned(), _mm_loadu_si128(p.add(6).cast())) };
        let q = _mm256_or_si256(nibbles(qs), fifth_bits(u32::from_le(qh)));
        _mm256_sub_epi8(q, _mm256_set1_epi8(16))
    }

    /// The sum of the 8 lanes.
    #[inline]
    #[target_feature(enable = "avx")]
    fn hsum256(v: __m256) -> f32 {
        let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
        let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
        _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
    }
}
