//! The vectorized CPU kernels the model runs on: matrix–vector and matrix–matrix products for
//! quantized weights and attention (`attention`). Both kinds of products handle every quantized
//! type ([`supports`], [`supports_8bit`]). The f32-activation products are hand-tiled for Q4_0,
//! Q4_1, Q8_0, Q5_0 (`f32act`) and, on x86, Q4_K and Q6_K (`f32act_k`, `f32act_k512`), with the weights decoded
//! in registers; decode-then-multiply (`f32act_dq` with the bit-exact decoders of `dq_decode`)
//! for Q5_1, Q2_K, Q3_K, Q5_K and the IQ4 types. The 8-bit products have integer kernels for all of them: the 32-value block types
//! (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, IQ4_NL) with activations in blocks of 32 (`act`, kernels
//! `scalar`, `avx2`, `avx512`), the 256-value super-block types (Q2_K … Q6_K, IQ4_XS) with
//! activations in blocks of 256 plus 16-value partial sums (`act_k`, kernels `scalar_k`,
//! `avx2_k`, and `avx512_k` for Q4_K and Q6_K; AVX-512 machines run the AVX2 ones for the other
//! K-quants, as they do for Q5_1 and IQ4_NL). The
//! reference in [`crate::cpu`] stays the oracle; every function here is tested against it.
//!
//! Two kinds of products: [`matvec_f32`] / [`matmul_f32`] (module `f32act`, the default
//! `exact` path) keep the activations in f32 and compute the reference's products in another
//! order; [`matvec`] / [`matmul`] (the `fast` path, described here) round them to 8 bits.
//!
//! What differs from the reference in the 8-bit products, and why they are faster:
//! - the activations are quantized once per call to 8-bit blocks of 32 with one scale each
//!   (llama.cpp's `q8_1`, see `act`), so each weight block meets its activations in one
//!   integer dot product (AVX2 `vpmaddubsw`, AVX-512 VNNI `vpdpbusd`) and one f32 multiply-add,
//!   instead of 32 dequantized f32 products; for the super-block types, to blocks of 256 with
//!   one f32 scale (llama.cpp's `q8_K`, see `act_k`), whose sub-block scales are applied in
//!   integers (`vpmaddwd`) and whose minimums and offsets meet the activations' 16-value
//!   partial sums, so a super-block costs one or two f32 multiply-adds per (row, token);
//! - rows are split over rayon in chunks of tens to hundreds of rows (a task per row costs
//!   more than a 576-column row does), and each kernel computes a tile of several rows × several
//!   tokens, so a weight block is unpacked once and used for every token of the tile (prefill).
//!
//! The result is therefore not the reference's: it is the exact product of the weights with
//! the rounded activations `x'` ([`activation_values_for`]), summed in another order. The error
//! against the reference is bounded by the activation rounding (see
//! [`crate::check::Tolerance::Q8_ACTIVATIONS`]); against the reference run on `x'` it is f32
//! accumulation error only. llama.cpp rounds the same way, but that does not bring the two
//! engines' logits closer than the reference's are: the rounding is a step function, so a
//! last-bit difference anywhere upstream (an f32 sum's order, an FMA) sends some value to the
//! other side of a step, and from there each engine carries its own rounding noise.
//!
//! Kernels, chosen at run time ([`Isa::best`]): AVX-512 VNNI (two blocks per 512-bit register),
//! AVX2 + FMA + F16C, and portable Rust ([`Isa::Scalar`], also the oracle of the SIMD ones). The
//! model reaches this module through `strata_tensor::ops` for host tensors;
//! `strata_tensor::ops::with_cpu_path` chooses between these and the reference per thread, and
//! `STRATA_CPU_REFERENCE=1` forces the reference. Products of up to 8 tokens (decode, small
//! batches) and decode attention run on [`crate::cpu::team`], whose threads spin between the
//! step's few hundred short ops; longer work goes to rayon's global pool, where a caller on
//! one of its threads (as the `strata` binary's main thread is) saves a hand-over per call.

use std::sync::OnceLock;

use rayon::prelude::*;

pub use attention::{attention_decode, attention_prefill};
pub use f32act::{matmul_f32, matmul_f32_with, matvec_f32};
pub use f32act_dq::dequantize_row_exact;
pub use glu::{gelu_mul, silu_mul};

use super::{expect_len, expect_matrix};
use crate::{DType, Error, Result};

/// The row loop of a kernel set (`avx2`, `avx512`, `avx2_k`, `avx512_k`) compiled for
/// `$features`: tokens t0..t0+T against every row, R rows at a time and the leftover rows one
/// at a time, through the invoking module's own `tile`, `store` and `prefetch`, with
/// activations `$acts` whose tokens are `$row`s.
#[cfg(target_arch = "x86_64")]
macro_rules! rows_loop {
    ($features:literal, $acts:ty, $row:ident) => {
        /// Tokens t0..t0+T against every row, R rows at a time and the leftover rows one at a
        /// time.
        #[target_feature(enable = $features)]
        fn rows_loop<const TY: u8, const R: usize, const T: usize>(
            w: &[u8],
            rb: usize,
            acts: &$acts,
            out: &mut [f32],
            t0: usize,
        ) {
            let n = acts.n;
            let rows = w.len() / rb;
            let toks: [$row<'_>; T] = std::array::from_fn(|j| acts.token(t0 + j));
            let mut r0 = 0;
            while r0 < rows {
                prefetch(w, (r0 + PREFETCH_TILES * R) * rb, R * rb);
                if r0 + R <= rows {
                    let tile = tile::<TY, R, T>(std::array::from_fn(|i| &w[(r0 + i) * rb..][..rb]), &toks, acts.nb);
                    store(&tile, out, n, r0, t0);
                    r0 += R;
                } else {
                    let tile = tile::<TY, 1, T>([&w[r0 * rb..][..rb]], &toks, acts.nb);
                    store(&tile, out, n, r0, t0);
                    r0 += 1;
                }
            }
        }
    };
}

/// The token loop of a K-quant kernel set (`avx2_k`, `avx512_k`) compiled for `$features`:
/// tiles of `T_MANY` tokens, then `T_MANY / 2`, then one, over [`rows_loop!`]'s rows.
#[cfg(target_arch = "x86_64")]
macro_rules! k_gemm_loops {
    ($features:literal) => {
        #[target_feature(enable = $features)]
        fn gemm_ty<const TY: u8>(w: &[u8], rb: usize, acts: &ActsK, out: &mut [f32]) {
            let n = acts.n;
            let mut t0 = 0;
            while t0 + T_MANY <= n {
                rows_loop::<TY, R_MANY, T_MANY>(w, rb, acts, out, t0);
                t0 += T_MANY;
            }
            while t0 + T_MANY / 2 <= n {
                rows_loop::<TY, R_MANY, { T_MANY / 2 }>(w, rb, acts, out, t0);
                t0 += T_MANY / 2;
            }
            while t0 < n {
                rows_loop::<TY, R_ONE, 1>(w, rb, acts, out, t0);
                t0 += 1;
            }
        }

        rows_loop!($features, ActsK, ActRowK);
    };
}

mod act;
mod act_k;
mod attention;
#[cfg(target_arch = "x86_64")]
mod avx2;
#[cfg(target_arch = "x86_64")]
mod avx2_k;
#[cfg(target_arch = "x86_64")]
mod avx512;
#[cfg(target_arch = "x86_64")]
mod avx512_k;
mod dq_decode;
mod f32act;
mod f32act_dq;
#[cfg(target_arch = "x86_64")]
mod f32act_k;
#[cfg(target_arch = "x86_64")]
mod f32act_k512;
#[cfg(target_arch = "x86_64")]
mod f32act_panel;
mod glu;
mod scalar;
mod scalar_k;
#[cfg(target_arch = "x86_64")]
mod x86;

/// An instruction set the fast kernels can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Isa {
    /// Portable Rust: any target.
    Scalar,
    /// x86_64 with AVX2, FMA and F16C (Haswell and later, Zen).
    Avx2,
    /// x86_64 with AVX-512 F/BW/VL and VNNI (Ice Lake, Sapphire Rapids, Zen 4 and later).
    Avx512Vnni,
}

impl Isa {
    /// Every kernel set, from the most portable to the fastest.
    pub const ALL: [Isa; 3] = [Isa::Scalar, Isa::Avx2, Isa::Avx512Vnni];

    pub fn name(self) -> &'static str {
        match self {
            Isa::Scalar => "scalar",
            Isa::Avx2 => "avx2",
            Isa::Avx512Vnni => "avx512-vnni",
        }
    }

    /// Whether this CPU can run these kernels (detected at run time).
    pub fn is_available(self) -> bool {
        match self {
            Isa::Scalar => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx2.is_available()
                    && is_x86_feature_detected!("avx512f")
                    && is_x86_feature_detected!("avx512bw")
                    && is_x86_feature_detected!("avx512vl")
                    && is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// The kernel sets this CPU can run.
    pub fn available() -> Vec<Isa> {
        Isa::ALL.into_iter().filter(|i| i.is_available()).collect()
    }

    /// The fastest kernel set this CPU can run (detected once), or at most the one the
    /// environment variable `STRATA_CPU_ISA` names (`scalar`, `avx2`, `avx512-vnni`: to measure
    /// or test the kernels another machine would run; a set this CPU lacks, or an unknown name,
    /// leaves the detected one).
    pub fn best() -> Isa {
        static BEST: OnceLock<Isa> = OnceLock::new();
        *BEST.get_or_init(|| {
            let mut sets = Isa::available();
            if let Ok(cap) = std::env::var("STRATA_CPU_ISA")
                && let Some(at) = sets.iter().position(|i| i.name() == cap.trim())
            {
                sets.truncate(at + 1);
            }
            sets.pop().unwrap_or(Isa::Scalar)
        })
    }

    /// How this kernel set wants the activations for weights of `ty` (see `act::Layout`).
    fn layout(self, ty: WType) -> act::Layout {
        match (self, ty) {
            (Isa::Scalar, _) => act::Layout::Natural { lanes: 1 },
            (Isa::Avx512Vnni, WType::Q4_0 | WType::Q4_1 | WType::Q5_0) if quads_enabled() => act::Layout::Q4Quads,
            (Isa::Avx512Vnni, WType::Q4_0 | WType::Q4_1 | WType::Q5_0) => act::Layout::Q4Pairs,
            (Isa::Avx2 | Isa::Avx512Vnni, _) => act::Layout::Natural { lanes: 8 },
        }
    }
}

/// A 32-value block type the 8-bit kernels handle (with [`act::Acts`]), with its block layout.
/// The first four also have hand-tiled f32-activation kernels ([`WType::has_f32_tiles`]).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum WType {
    Q4_0,
    Q4_1,
    Q8_0,
    Q5_0,
    Q5_1,
    IQ4_NL,
}

impl WType {
    fn of(dtype: DType) -> Option<WType> {
        match dtype {
            DType::Q4_0 => Some(WType::Q4_0),
            DType::Q4_1 => Some(WType::Q4_1),
            DType::Q8_0 => Some(WType::Q8_0),
            DType::Q5_0 => Some(WType::Q5_0),
            DType::Q5_1 => Some(WType::Q5_1),
            DType::IQ4_NL => Some(WType::IQ4_NL),
            _ => None,
        }
    }

    /// Whether `f32act` has hand-tiled kernels for this type (the others go through
    /// `f32act_dq` there).
    fn has_f32_tiles(self) -> bool {
        matches!(self, WType::Q4_0 | WType::Q4_1 | WType::Q8_0 | WType::Q5_0)
    }

    fn block_bytes(self) -> usize {
        match self {
            WType::Q4_0 | WType::IQ4_NL => 18,
            WType::Q4_1 => 20,
            WType::Q5_0 => 22,
            WType::Q5_1 => 24,
            WType::Q8_0 => 34,
        }
    }

    /// Where the 16 bytes of nibbles start in a 4- or 5-bit block (after `d`, `m` for the
    /// `_1` types and `qh` for the Q5 types); where the 32 quants start in Q8_0.
    fn qs_offset(self) -> usize {
        match self {
            WType::Q4_0 | WType::Q8_0 | WType::IQ4_NL => 2,
            WType::Q4_1 => 4,
            WType::Q5_0 => 6,
            WType::Q5_1 => 8,
        }
    }
}

/// A 256-value super-block type the 8-bit kernels handle (with [`act_k::ActsK`]).
#[allow(non_camel_case_types)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KType {
    Q2_K,
    Q3_K,
    Q4_K,
    Q5_K,
    Q6_K,
    IQ4_XS,
}

impl KType {
    fn of(dtype: DType) -> Option<KType> {
        match dtype {
            DType::Q2_K => Some(KType::Q2_K),
            DType::Q3_K => Some(KType::Q3_K),
            DType::Q4_K => Some(KType::Q4_K),
            DType::Q5_K => Some(KType::Q5_K),
            DType::Q6_K => Some(KType::Q6_K),
            DType::IQ4_XS => Some(KType::IQ4_XS),
            _ => None,
        }
    }

    fn block_bytes(self) -> usize {
        match self {
            KType::Q2_K => 84,
            KType::Q3_K => 110,
            KType::Q4_K => 144,
            KType::Q5_K => 176,
            KType::Q6_K => 210,
            KType::IQ4_XS => 136,
        }
    }
}

/// Whether the f32-activation kernels ([`matvec_f32`], [`matmul_f32`]) handle `dtype`: every
/// quantized type (plain floats use the reference).
pub fn supports(dtype: DType) -> bool {
    dtype.is_quantized()
}

/// Whether the 8-bit-activation kernels ([`matvec`], [`matmul`]) handle `dtype`: every
/// quantized type.
pub fn supports_8bit(dtype: DType) -> bool {
    WType::of(dtype).is_some() || KType::of(dtype).is_some()
}

/// The values the fast kernels multiply the weights of the 32-value block types (Q4_0, Q4_1,
/// Q5_0, Q5_1, Q8_0, IQ4_NL) with when given `x` (rows of `cols` values): each block of 32
/// rounded to 8 bits with one binary16 scale. Tests compare the fast path with the reference
/// run on these values; [`activation_values_for`] gives them for any weight type.
///
/// # Errors
/// If `cols` is not a multiple of 32 or `x` is not a whole number of rows or `out` is not as
/// long as `x`.
pub fn activation_values(x: &[f32], cols: usize, out: &mut [f32]) -> Result<()> {
    const OP: &str = "activation_values";
    if !cols.is_multiple_of(crate::QK) || (cols == 0 && !x.is_empty()) || !x.len().is_multiple_of(cols.max(1)) {
        return Err(Error::invalid(OP, format!("{} values are not whole rows of {cols} (a multiple of 32)", x.len())));
    }
    expect_len(OP, "out", out.len(), Some(x.len()))?;
    act::dequantize_into(x, cols, out);
    Ok(())
}

/// The values the fast kernels multiply weights of `dtype` with when given `x` (rows of
/// `cols` values): for the 32-value block types those of [`activation_values`]; for the
/// K-quants and IQ4_XS each block of 256 rounded to 8 bits with one f32 scale (`act_k`).
///
/// # Errors
/// If `dtype` is not quantized, `cols` is not a whole number of `dtype`'s blocks, `x` is not a
/// whole number of rows or `out` is not as long as `x`.
pub fn activation_values_for(dtype: DType, x: &[f32], cols: usize, out: &mut [f32]) -> Result<()> {
    const OP: &str = "activation_values_for";
    if KType::of(dtype).is_none() {
        check(OP, Isa::Scalar, dtype)?;
        return activation_values(x, cols, out);
    }
    if !cols.is_multiple_of(crate::QK_K) || (cols == 0 && !x.is_empty()) || !x.len().is_multiple_of(cols.max(1)) {
        return Err(Error::invalid(OP, format!("{} values are not whole rows of {cols} (a multiple of 256)", x.len())));
    }
    expect_len(OP, "out", out.len(), Some(x.len()))?;
    act_k::dequantize_into(x, cols, out);
    Ok(())
}

/// `y[r] = sum_c w[r][c] * x[c]` with the best kernels for this CPU; like [`crate::cpu::matvec`]
/// except for the activation rounding described in the module doc.
///
/// # Errors
/// If `dtype` is not quantized, or a length does not fit the shape.
pub fn matvec(dtype: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    matvec_with(Isa::best(), dtype, w, rows, cols, x, y)
}

/// [`matvec`] with the given kernel set (tests compare them).
///
/// # Errors
/// As [`matvec`], and if this CPU cannot run `isa`.
pub fn matvec_with(isa: Isa, dtype: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], y: &mut [f32]) -> Result<()> {
    if let Some(kt) = KType::of(dtype) {
        return product_k("fast::matvec", isa, kt, dtype, w, rows, cols, x, 1, y);
    }
    let (ty, rb) = check_product("fast::matvec", isa, dtype, w, rows, cols, x, 1, y)?;
    let acts = act::Acts::quantize(x, 1, cols, isa.layout(ty));
    by_rows(w, rb, rows, 1, y, |wc, o| kernel(isa, ty, wc, rb, &acts, o));
    Ok(())
}

/// `y[t][r] = sum_c x[t][c] * w[r][c]` (`Y = X W^T`) with the best kernels for this CPU; like
/// [`crate::cpu::matmul`] except for the activation rounding described in the module doc.
///
/// # Errors
/// If `dtype` is not quantized, or a length does not fit the shape.
pub fn matmul(
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    matmul_with(Isa::best(), dtype, w, rows, cols, x, n_tokens, y)
}

/// [`matmul`] with the given kernel set (tests compare them).
///
/// # Errors
/// As [`matmul`], and if this CPU cannot run `isa`.
pub fn matmul_with(
    isa: Isa,
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n_tokens: usize,
    y: &mut [f32],
) -> Result<()> {
    if let Some(kt) = KType::of(dtype) {
        return product_k("fast::matmul", isa, kt, dtype, w, rows, cols, x, n_tokens, y);
    }
    let (ty, rb) = check_product("fast::matmul", isa, dtype, w, rows, cols, x, n_tokens, y)?;
    if n_tokens == 0 || rows == 0 {
        return Ok(());
    }
    let acts = act::Acts::quantize(x, n_tokens, cols, isa.layout(ty));
    by_rows(w, rb, rows, n_tokens, y, |wc, o| kernel(isa, ty, wc, rb, &acts, o));
    Ok(())
}

/// Y = X W^T for `n` tokens of a super-block type: the activations quantized to 256-value
/// blocks ([`act_k::ActsK`]), then the rows split over rayon as for the 32-value types.
#[allow(clippy::too_many_arguments)]
fn product_k(
    op: &'static str,
    isa: Isa,
    kt: KType,
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &mut [f32],
) -> Result<()> {
    let rb = check_shapes(op, isa, dtype, w, rows, cols, x, n, y)?;
    if n == 0 || rows == 0 {
        return Ok(());
    }
    let acts = act_k::ActsK::quantize(x, n, cols);
    by_rows(w, rb, rows, n, y, |wc, o| kernel_k(isa, kt, wc, rb, &acts, o));
    Ok(())
}

/// The checks of every product entry point: a quantized type, kernels this CPU runs, and
/// lengths that fit `rows` × `cols` for `n` tokens. Returns the type and the bytes per row.
#[allow(clippy::too_many_arguments)]
fn check_product(
    op: &'static str,
    isa: Isa,
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &[f32],
) -> Result<(WType, usize)> {
    let ty = check(op, isa, dtype)?;
    let rb = check_shapes(op, isa, dtype, w, rows, cols, x, n, y)?;
    Ok((ty, rb))
}

/// The checks of [`check_product`] but the weight type's: kernels this CPU runs and lengths
/// that fit. Returns the bytes per row.
#[allow(clippy::too_many_arguments)]
fn check_shapes(
    op: &'static str,
    isa: Isa,
    dtype: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    y: &[f32],
) -> Result<usize> {
    if !isa.is_available() {
        return Err(Error::invalid(op, format!("this CPU cannot run the {} kernels", isa.name())));
    }
    let rb = expect_matrix(op, dtype, w, rows, cols)?;
    expect_len(op, "x", x.len(), n.checked_mul(cols))?;
    expect_len(op, "y", y.len(), n.checked_mul(rows))?;
    Ok(rb)
}

/// Y = X W^T for `n` tokens, computed by `task(rows of w, their sums [row][token])` over rayon
/// tasks of whole rows. Tasks own whole rows, so for several tokens they write Y transposed
/// ([row][token], contiguous per task) and it is transposed back here: rows * n stores, against
/// rows * n * cols multiply-adds, and no shared mutable output across threads.
fn by_rows(w: &[u8], rb: usize, rows: usize, n: usize, y: &mut [f32], task: impl Fn(&[u8], &mut [f32]) + Sync) {
    if rows == 0 || n == 0 {
        return;
    }
    if rb == 0 {
        // No columns: every sum is empty.
        y.fill(0.0);
        return;
    }
    let per = rows_per_task(rows, n);
    // Decode and small batches (`--lookup` verification) are a few hundred short products per
    // step: the spinning team hands them over without waking a sleeping thread. Prefill's
    // long products stay on rayon.
    let w_chunk = |i: usize| &w[i * per * rb..((i + 1) * per).min(rows) * rb];
    if n == 1 {
        crate::cpu::team::for_each_chunk_mut(y, per, |i, o| task(w_chunk(i), o));
        return;
    }
    let mut yt = vec![0.0f32; rows * n];
    if n <= TEAM_TOKENS {
        crate::cpu::team::for_each_chunk_mut(&mut yt, per * n, |i, o| task(w_chunk(i), o));
    } else {
        yt.par_chunks_mut(per * n).zip(w.par_chunks(per * rb)).for_each(|(o, wc)| task(wc, o));
    }
    transpose(&yt, n, y);
}

/// Whether a product of `dtype` with `n_tokens` tokens is faster with f32 activations than with
/// 8-bit ones on this CPU: on x86, prefill runs in panels (`f32act_panel`: each weight decoded
/// once per call, then 32 (AVX-512) or 16 (AVX2) FMA lanes per column and token), which
/// measured faster than the 8-bit tiles on both kernel sets, whose per-block scales cost an
/// integer-to-float conversion and one or two FMAs per 32 or 64 products (`docs/cpu-bench.md`). The `fast` path runs such products as the
/// `exact` path does ([`matmul_f32`]: more accurate, and faster); decode keeps 8-bit
/// activations, whose weights it reads in fewer passes.
pub fn prefill_prefers_f32(dtype: DType, n_tokens: usize) -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        matches!(Isa::best(), Isa::Avx512Vnni | Isa::Avx2) && f32act_panel::applies(dtype, n_tokens)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (dtype, n_tokens);
        false
    }
}

/// Whether `STRATA_CPU_PANELS` leaves the exact path's prefill panels on (anything but
/// `off`/`0`; off, prefill runs the register tiles, to measure one against the other).
fn panels_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("STRATA_CPU_PANELS").as_deref(), Ok("off" | "0")))
}

/// Whether `STRATA_CPU_QUADS` leaves the AVX-512 Q4_0/Q4_1/Q5_0 8-bit kernels on four blocks per
/// register (anything but `off`/`0`; off, they take two, the older kernel, to measure one
/// against the other).
fn quads_enabled() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| !matches!(std::env::var("STRATA_CPU_QUADS").as_deref(), Ok("off" | "0")))
}

/// Most tokens a product runs on the spinning team ([`crate::cpu::team`]); longer ones use rayon.
const TEAM_TOKENS: usize = 8;

/// Tokens per block of the transpose: each task reads TB contiguous values of a row of `yt` and
/// writes one value to each of TB rows of `y`, so both sides stream.
const TRANSPOSE_TOKENS: usize = 8;

/// y[t][r] = yt[r][t] for yt [rows][n], in parallel over blocks of tokens.
fn transpose(yt: &[f32], n: usize, y: &mut [f32]) {
    let rows = yt.len() / n.max(1);
    if rows == 0 {
        return;
    }
    y.par_chunks_mut(rows * TRANSPOSE_TOKENS).enumerate().for_each(|(b, yb)| {
        let t0 = b * TRANSPOSE_TOKENS;
        let tb = yb.len() / rows;
        for (r, src) in yt.chunks_exact(n).enumerate() {
            for (j, &v) in src[t0..t0 + tb].iter().enumerate() {
                yb[j * rows + r] = v;
            }
        }
    });
}

fn check(op: &'static str, isa: Isa, dtype: DType) -> Result<WType> {
    let ty = WType::of(dtype).ok_or(Error::UnsupportedDtype { op, dtype, expected: "a quantized type" })?;
    if !isa.is_available() {
        return Err(Error::invalid(op, format!("this CPU cannot run the {} kernels", isa.name())));
    }
    Ok(ty)
}

/// Rows per rayon task: about four tasks per thread so a slow thread (another process on its
/// core) can be balanced, but at least 16 rows so the scheduling (a microsecond or so per task)
/// stays small next to the work, and at most 256 so large matrices still spread. A multiple
/// of 8, the largest row tile.
fn rows_per_task(rows: usize, n_tokens: usize) -> usize {
    let threads = rayon::current_num_threads().max(1);
    // Prefill rows carry n_tokens times the work: fewer rows per task still amortize a task.
    let min = if n_tokens > 8 { 8 } else { 16 };
    rows.div_ceil(4 * threads).clamp(min, 256).next_multiple_of(8)
}

/// One task's rows, on the chosen kernels.
fn kernel(isa: Isa, ty: WType, w: &[u8], rb: usize, acts: &act::Acts, out: &mut [f32]) {
    match isa {
        Isa::Scalar => scalar::gemm(ty, w, rb, acts, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check` returned Ok only if `isa.is_available()`, i.e. this CPU has AVX2,
        // FMA and F16C, the features `avx2::gemm` is compiled for.
        Isa::Avx2 => unsafe { avx2::gemm(ty, w, rb, acts, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: as above, with AVX-512 F/BW/VL/VNNI as well, the features of `avx512::gemm`.
        Isa::Avx512Vnni => unsafe { avx512::gemm(ty, w, rb, acts, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar::gemm(ty, w, rb, acts, out),
    }
}

/// One task's rows of a super-block type, on the chosen kernels. The AVX-512 machines run
/// VNNI kernels for Q4_K and Q6_K (`avx512_k`) and the AVX2 ones for the other types.
fn kernel_k(isa: Isa, ty: KType, w: &[u8], rb: usize, acts: &act_k::ActsK, out: &mut [f32]) {
    match isa {
        Isa::Scalar => scalar_k::gemm(ty, w, rb, acts, out),
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_shapes` returned Ok only if `isa.is_available()`: this CPU has
        // AVX-512 F/BW/VL/VNNI, AVX2, FMA and F16C, the features of `avx512_k::gemm`.
        Isa::Avx512Vnni if avx512_k::handles(ty) => unsafe { avx512_k::gemm(ty, w, rb, acts, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: `check_shapes` returned Ok only if `isa.is_available()`; both x86 kernel sets
        // include AVX2, FMA and F16C, the features `avx2_k::gemm` is compiled for.
        Isa::Avx2 | Isa::Avx512Vnni => unsafe { avx2_k::gemm(ty, w, rb, acts, out) },
        #[cfg(not(target_arch = "x86_64"))]
        _ => scalar_k::gemm(ty, w, rb, acts, out),
    }
}

#[cfg(all(test, target_arch = "x86_64"))]
mod tests {
    use super::*;
    use crate::QK;

    /// The AVX-512 Q4_0/Q4_1/Q5_0 kernels on both activation layouts (four blocks per register, the
    /// default, and two, `STRATA_CPU_QUADS=off`) against the portable kernel, on rows ending
    /// in a whole quad and in one, two or three blocks, for one token and for the prefill
    /// tiles of 8 and 4 and the tokens left after them. The integer sums are the same; only the
    /// order of the f32 additions differs, hence the tolerance.
    #[test]
    fn avx512_quads_and_pairs_match_the_portable_kernel() {
        if !Isa::Avx512Vnni.is_available() {
            crate::check::skip("fast::avx512_quads_and_pairs_match_the_portable_kernel", "this CPU lacks AVX-512 VNNI");
            return;
        }
        let mut next = crate::check::test_values(0x9E37_79B9_7F4A_7C15);
        for (ty, dtype) in [(WType::Q4_0, DType::Q4_0), (WType::Q4_1, DType::Q4_1), (WType::Q5_0, DType::Q5_0)] {
            for (k, (rows, nb)) in [(7, 1), (9, 2), (5, 3), (13, 4), (6, 5), (11, 18), (3, 47)].into_iter().enumerate()
            {
                let cols = nb * QK;
                let rb = nb * ty.block_bytes();
                let w = crate::quant::random_blocks(dtype, rows * nb, k as u64 + 3);
                for n in [1, 3, 4, 8, 13] {
                    let x: Vec<f32> = (0..n * cols).map(|_| next()).collect();
                    let mut want = vec![0.0f32; rows * n];
                    let natural = act::Acts::quantize(&x, n, cols, act::Layout::Natural { lanes: 1 });
                    scalar::gemm(ty, &w, rb, &natural, &mut want);
                    let tol = 1e-4 * want.iter().fold(0.0f32, |m, v| m.max(v.abs())) + 1e-6;
                    for layout in [act::Layout::Q4Quads, act::Layout::Q4Pairs] {
                        let acts = act::Acts::quantize(&x, n, cols, layout);
                        let mut got = vec![0.0f32; rows * n];
                        // SAFETY: this CPU has AVX-512 F/BW/VL/VNNI (checked above), AVX2, FMA
                        // and F16C (part of `Isa::Avx512Vnni`), the features of `avx512::gemm`.
                        unsafe { avx512::gemm(ty, &w, rb, &acts, &mut got) };
                        for (i, (g, e)) in got.iter().zip(&want).enumerate() {
                            assert!(
                                (g - e).abs() <= tol,
                                "{dtype} {layout:?} {rows}x{cols} T={n} row {} token {}: {g} vs {e} (tolerance {tol:e})",
                                i / n,
                                i % n
                            );
                        }
                    }
                }
            }
        }
    }
}
