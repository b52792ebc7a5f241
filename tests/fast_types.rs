//! The fast path's 8-bit kernels for the weight types strata reads but does not write: Q5_0,
//! Q5_1 and IQ4_NL (32-value blocks, the activations of `fast`'s other types) and the K-quants
//! Q2_K … Q6_K and IQ4_XS (256-value super-blocks, activations in 256-value blocks with 16-value
//! partial sums). Weights are valid random blocks (`quant::random_blocks`); shapes have odd row
//! counts, one and several super-blocks per row, one token and several (below, at and past the
//! prefill tiles of four and eight tokens).
//!
//! As in `fast`, from loose to tight:
//! - against the exact (f64) product on the raw activations, element by element under the
//!   worst-case bound of the activation rounding ([`assert_within_rounding_bound`]). This is
//!   the K-quant analogue of `fast`'s [`Tolerance::Q8_ACTIVATIONS`]: that tolerance is relative
//!   to the output's RMS, a statistical statement that assumes every row has about the same
//!   weight norm; random super-blocks have scales spread over 16× and sub-block means (the
//!   minimums) far from zero, so one row's error can be several percent of the RMS of a few
//!   rows while well inside its own bound. The bound is rigorous and per element;
//! - against the reference on the rounded activations `x'` ([`fast::activation_values_for`]),
//!   under [`Tolerance::F32_ACCUMULATION`]: the kernels compute `W x'` with exact integer sums;
//! - each SIMD kernel set against the portable one, under [`Tolerance::F32_ACCUMULATION`].

use proptest::prelude::*;
use strata_kernels::check::{Tolerance, assert_close, skip};
use strata_kernels::cpu::{fast, fast::Isa};
use strata_kernels::{DType, quant};

use crate::fast::{fast_with, reference};
use crate::oracle;
use crate::support::{rng, uniform};

/// The types of this module, in the priority order of the Gemma 3 Q4_K_M file first.
const TYPES: [DType; 9] = [
    DType::Q4_K,
    DType::Q6_K,
    DType::Q5_0,
    DType::Q5_K,
    DType::Q3_K,
    DType::Q2_K,
    DType::Q5_1,
    DType::IQ4_NL,
    DType::IQ4_XS,
];
const TOKENS: [usize; 6] = [1, 2, 4, 5, 9, 21];
/// (rows, blocks per row): one block, odd and even counts, 8 super-blocks (a 2048-wide row),
/// and enough rows for several rayon tasks.
const SHAPES: [(usize, usize); 6] = [(1, 1), (3, 2), (13, 3), (37, 6), (21, 8), (131, 5)];

fn matrix(seed: u64, dt: DType, rows: usize, cols: usize) -> Vec<u8> {
    quant::random_blocks(dt, rows * cols / dt.block_values(), seed)
}

fn rounded(dt: DType, x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![f32::NAN; x.len()];
    fast::activation_values_for(dt, x, cols, &mut out).expect("activation values");
    out
}

#[test]
fn every_quantized_type_has_8bit_kernels() {
    for dt in DType::QUANTIZED {
        assert!(fast::supports_8bit(dt), "{dt}");
    }
    for dt in [DType::F32, DType::F16, DType::BF16] {
        assert!(!fast::supports_8bit(dt), "{dt}");
    }
}

#[test]
fn new_types_match_the_reference() {
    for dt in TYPES {
        for (k, (rows, blocks)) in SHAPES.into_iter().enumerate() {
            let cols = blocks * dt.block_values();
            let w = matrix(k as u64 * 31 + dt.ggml_type() as u64, dt, rows, cols);
            for n in TOKENS {
                let x = uniform(&mut rng(k as u64 * 7 + n as u64), n * cols, 1.0);
                let got = fast_with(Isa::best(), dt, &w, rows, cols, &x, n);
                let label = format!("fast {dt} {rows}x{cols} T={n} ({})", Isa::best().name());
                assert_within_rounding_bound(&label, dt, &w, rows, cols, &x, n, &got);
                let want = reference(dt, &w, rows, cols, &rounded(dt, &x, cols), n);
                assert_close(&format!("{label} vs reference on x'"), &got, &want, Tolerance::F32_ACCUMULATION);
            }
        }
    }
}

/// Element by element against the exact product of the weights with the raw activations:
/// |x - x'| <= d/2 per element with d = max|x_b| / 127 for the 256-value blocks (an f32
/// scale), and d/2 + 127 * (binary16 rounding of d) <= max|x_b| (1/254 + 2^-11) for the
/// 32-value ones, so a row's error is at most sum_b that * ||w_b||_1, plus f32 accumulation
/// (1e-4 of the row's magnitude covers it).
#[allow(clippy::too_many_arguments)]
fn assert_within_rounding_bound(
    label: &str,
    dt: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    got: &[f32],
) {
    let bv = dt.block_values();
    let per = if dt.is_super_block() { 1.0 / 254.0 + 1e-6 } else { 1.0 / 254.0 + 1.0 / 2048.0 };
    let want = oracle::matmul(dt, w, rows, cols, x, n);
    let wd = oracle::dequantize(dt, w, rows, cols);
    for t in 0..n {
        for r in 0..rows {
            let (mut bound, mut mag) = (0.0f64, 0.0f64);
            for b in 0..cols / bv {
                let xb = &x[t * cols + b * bv..][..bv];
                let wb = &wd[r * cols + b * bv..][..bv];
                let amax = xb.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
                let w1: f64 = wb.iter().map(|v| v.abs()).sum();
                bound += amax * per * w1;
                mag += amax * w1;
            }
            let (g, want) = (got[t * rows + r] as f64, want[t * rows + r]);
            let err = (g - want).abs();
            assert!(err <= bound + 1e-4 * mag, "{label} row {r} token {t}: |{g} - {want}| = {err:e} > bound {bound:e}");
        }
    }
}

/// The bound holds on wider activations, and the error it bounds is really there: the largest
/// error is a visible fraction of the bound (typically ||w||_2 / ||w||_1 * 2 / sqrt(12), about
/// 2% here), so the kernels do round the activations as documented rather than, say, computing
/// in f32 where the tight comparisons would then be testing the wrong `x'`.
#[test]
fn new_types_error_is_within_the_worst_case_bound() {
    for dt in TYPES {
        let (rows, cols, n) = (29, 3 * 256, 5);
        let w = matrix(5, dt, rows, cols);
        let x = uniform(&mut rng(6), n * cols, 3.0);
        let got = fast_with(Isa::best(), dt, &w, rows, cols, &x, n);
        assert_within_rounding_bound(&format!("{dt}"), dt, &w, rows, cols, &x, n, &got);
        let exact = oracle::matmul(dt, &w, rows, cols, &x, n);
        let wd = oracle::dequantize(dt, &w, rows, cols);
        // The typical error is ||w||_2 * d / sqrt(12) per row; the largest over the outputs
        // must be a visible fraction of the worst-case sum (||w||_1 * d / 2).
        let worst = (0..n * rows)
            .map(|k| {
                let r = k % rows;
                let w1: f64 = wd[r * cols..][..cols].iter().map(|v| v.abs()).sum();
                (got[k] as f64 - exact[k]).abs() / (w1 * 3.0 / 254.0)
            })
            .fold(0.0f64, f64::max);
        assert!(worst > 1e-3, "{dt}: largest error only {worst:e} of the bound: is x rounded at all?");
    }
}

#[test]
fn new_types_simd_kernels_match_the_portable_ones() {
    for isa in Isa::ALL.into_iter().filter(|&i| i != Isa::Scalar) {
        if !isa.is_available() {
            skip(
                &format!("fast_types::new_types_simd_kernels_match_the_portable_ones[{}]", isa.name()),
                "this CPU lacks the features",
            );
            continue;
        }
        for dt in TYPES {
            for (k, (rows, blocks)) in SHAPES.into_iter().enumerate() {
                let cols = blocks * dt.block_values();
                let w = matrix(k as u64 * 13 + 2 + dt.ggml_type() as u64, dt, rows, cols);
                for n in TOKENS {
                    let x = uniform(&mut rng(k as u64 * 3 + n as u64), n * cols, 2.0);
                    let want = fast_with(Isa::Scalar, dt, &w, rows, cols, &x, n);
                    let got = fast_with(isa, dt, &w, rows, cols, &x, n);
                    let label = format!("{} vs scalar {dt} {rows}x{cols} T={n}", isa.name());
                    assert_close(&label, &got, &want, Tolerance::F32_ACCUMULATION);
                }
            }
        }
    }
}

/// Q4_K and Q6_K, which have AVX-512 VNNI kernels, on prefill-sized batches (every tile of
/// 8, 4 and 1 tokens, 1- and 2-row tiles) and Gemma 3's 2048-wide rows with activations up to
/// 300 (large integer sums): every SIMD kernel set against the portable one, and the AVX-512
/// kernels against the AVX2 ones (the same exact integer sums, converted and added in another
/// order).
#[test]
fn k_quant_prefill_kernels_agree_across_isas() {
    for dt in [DType::Q4_K, DType::Q6_K] {
        for (k, (rows, cols, n)) in [(19, 2048, 33), (6, 512, 64), (5, 768, 13)].into_iter().enumerate() {
            let w = matrix(k as u64 + 40, dt, rows, cols);
            let x = uniform(&mut rng(k as u64 + 41), n * cols, 300.0);
            let want = fast_with(Isa::Scalar, dt, &w, rows, cols, &x, n);
            for isa in Isa::available().into_iter().filter(|&i| i != Isa::Scalar) {
                let got = fast_with(isa, dt, &w, rows, cols, &x, n);
                let label = format!("{} vs scalar {dt} {rows}x{cols} T={n}", isa.name());
                assert_close(&label, &got, &want, Tolerance::F32_ACCUMULATION);
                if isa == Isa::Avx512Vnni {
                    let avx2 = fast_with(Isa::Avx2, dt, &w, rows, cols, &x, n);
                    assert_close(&format!("avx512-vnni vs avx2 {dt} T={n}"), &got, &avx2, Tolerance::F32_ACCUMULATION);
                }
            }
        }
    }
    if !Isa::Avx512Vnni.is_available() {
        skip("fast_types::k_quant_prefill_kernels_agree_across_isas[avx512-vnni]", "this CPU lacks AVX-512 VNNI");
    }
}

/// Splitting the rows over 1, 2 or 3 threads gives the same bits: each task computes whole
/// rows with the same tiles, so only the split changes.
#[test]
fn new_types_thread_splits_agree() {
    let (rows, n) = (203, 6);
    for dt in TYPES {
        let cols = 4 * dt.block_values();
        let w = matrix(21, dt, rows, cols);
        let x = uniform(&mut rng(22), n * cols, 1.0);
        for isa in Isa::available() {
            let on = |threads: usize, n: usize| {
                let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("thread pool");
                pool.install(|| fast_with(isa, dt, &w, rows, cols, &x[..n * cols], n))
            };
            for n in [1, n] {
                let one = on(1, n);
                for threads in [2, 3] {
                    assert_eq!(on(threads, n), one, "{dt} {} T={n} on {threads} threads", isa.name());
                }
            }
        }
    }
}

/// The comparisons above can fail: one changed weight byte in row 0 moves its product by about
/// what the dequantized weights moved, on every kernel set, and leaves the other rows alone.
#[test]
fn new_types_catch_a_changed_weight() {
    for dt in TYPES {
        let (rows, cols) = (3, 2 * dt.block_values());
        let w = matrix(5, dt, rows, cols);
        let x = vec![1.0f32; cols];
        // Flip every bit of one byte in the middle of row 0's first block, past its scales.
        let mut bad = w.clone();
        bad[dt.block_bytes() / 2 + 4] ^= 0xFF;
        let before = oracle::dequantize(dt, &w, 1, cols);
        let after = oracle::dequantize(dt, &bad, 1, cols);
        let moved: f64 = before.iter().zip(&after).map(|(a, b)| b - a).sum();
        assert!(moved.abs() > 1e-3, "{dt}: the mutation must change row 0's sum (moved {moved})");
        for isa in Isa::available() {
            let good = fast_with(isa, dt, &w, rows, cols, &x, 1);
            let got = fast_with(isa, dt, &bad, rows, cols, &x, 1);
            let delta = (got[0] - good[0]) as f64;
            // The activation rounding of ones (x' = 127 d, within 2^-11 of 1) and the f32 sums.
            assert!(
                (delta - moved).abs() <= 1e-3 * (moved.abs() + good[0].abs() as f64) + 1e-4,
                "{dt} {}: row 0 moved {delta}, the weights {moved}",
                isa.name()
            );
            assert_eq!(&got[1..], &good[1..], "{dt}: other rows unchanged");
        }
    }
}

#[test]
fn new_types_non_finite_activations_give_nan() {
    for dt in TYPES {
        let (rows, cols) = (5, 2 * dt.block_values());
        let w = matrix(3, dt, rows, cols);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = uniform(&mut rng(4), cols, 1.0);
            x[cols - 3] = bad;
            for isa in Isa::available() {
                let y = fast_with(isa, dt, &w, rows, cols, &x, 1);
                assert!(y.iter().all(|v| v.is_nan()), "{} {dt} with {bad} in x: {y:?}", isa.name());
            }
        }
    }
}

#[test]
fn new_types_bad_arguments_are_errors() {
    let w = matrix(1, DType::Q4_K, 2, 512);
    let x = vec![0.0f32; 512];
    let mut y = vec![0.0f32; 2];
    assert!(fast::matvec(DType::Q4_K, &w, 2, 512, &x[..256], &mut y).is_err(), "short x");
    assert!(fast::matvec(DType::Q4_K, &w[..w.len() - 1], 2, 512, &x, &mut y).is_err(), "short w");
    assert!(fast::matvec(DType::Q4_K, &w, 2, 512, &x, &mut y[..1]).is_err(), "short y");
    let e = fast::matvec(DType::Q4_K, &w[..144 * 3], 1, 384, &x[..384], &mut y[..1]).unwrap_err();
    assert!(e.to_string().contains("256"), "a row that is not whole super-blocks: {e}");
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_available()) {
        assert!(fast::matmul_with(isa, DType::Q6_K, &w[..420], 1, 512, &x, 1, &mut y[..1]).is_err());
    }
    let mut out = vec![0.0f32; 384];
    assert!(fast::activation_values_for(DType::Q4_K, &x[..384], 384, &mut out).is_err(), "not whole blocks");
    assert!(fast::activation_values_for(DType::F32, &x[..32], 32, &mut out[..32]).is_err(), "not quantized");
    // Empty shapes are fine and leave nothing behind.
    fast::matmul(DType::Q6_K, &[], 0, 256, &x[..256], 1, &mut []).expect("no rows");
    let mut y = [1.0f32; 6];
    fast::matmul(DType::Q6_K, &[], 3, 0, &[], 2, &mut y).expect("no columns");
    assert_eq!(y, [0.0; 6], "an empty sum is zero");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random shapes and magnitudes on every available kernel set: against the reference on
    /// x' (tight) and on x.
    #[test]
    fn new_types_random_shapes(dt in prop::sample::select(TYPES.to_vec()), rows in 1usize..70, blocks in 1usize..6,
                               n in 1usize..12, amp in prop::sample::select(vec![1e-3f32, 1.0, 300.0]), seed: u64) {
        let cols = blocks * dt.block_values();
        let w = matrix(seed, dt, rows, cols);
        let x = uniform(&mut rng(seed ^ 9), n * cols, amp);
        let want = reference(dt, &w, rows, cols, &rounded(dt, &x, cols), n);
        for isa in Isa::available() {
            let got = fast_with(isa, dt, &w, rows, cols, &x, n);
            let label = format!("{} {dt} {rows}x{cols} T={n}", isa.name());
            assert_close(&format!("{label} vs reference on x'"), &got, &want, Tolerance::F32_ACCUMULATION);
            assert_within_rounding_bound(&label, dt, &w, rows, cols, &x, n, &got);
        }
    }
}
