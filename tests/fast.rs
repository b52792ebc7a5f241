//! The fast CPU path (`cpu::fast`) against the CPU reference: every quantized weight type, every
//! kernel set this CPU runs, odd row counts, one token and several (1, 2, 7, 33: below, at and
//! past the tiles' token counts).
//!
//! Three comparisons, from loose to tight:
//! - against the reference on the raw activations, under [`Tolerance::Q8_ACTIVATIONS`] (the
//!   8-bit activation rounding), and element by element under its worst-case bound;
//! - against the reference on the rounded activations `x'` ([`fast::activation_values`]),
//!   under [`Tolerance::F32_ACCUMULATION`]: the fast kernels compute exactly `W x'`, so only
//!   the order of f32 additions differs;
//! - each SIMD kernel set against the portable one, under [`Tolerance::F32_ACCUMULATION`]: the
//!   same per-block integer products and scales, summed in another order (lanes, then blocks).

use proptest::prelude::*;
use strata_kernels::check::{Tolerance, assert_close, skip};
use strata_kernels::cpu::{self, fast, fast::Isa};
use strata_kernels::{DType, Error, QK, quant};

use crate::oracle;
use crate::support::{rng, uniform};

const QTYPES: [DType; 3] = [DType::Q4_0, DType::Q4_1, DType::Q8_0];
const TOKENS: [usize; 4] = [1, 2, 7, 33];
/// (rows, cols): rows that are multiples of nothing, an odd and an even number of blocks,
/// and the default model's 576 and 1536.
const SHAPES: [(usize, usize); 6] = [(1, 32), (3, 64), (13, 96), (67, 160), (193, 576), (37, 1536)];

fn matrix(seed: u64, dt: DType, rows: usize, cols: usize) -> Vec<u8> {
    quant::quantize_matrix(dt, &uniform(&mut rng(seed), rows * cols, 1.0), rows, cols).expect("valid shape")
}

pub(crate) fn reference(dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; n * rows];
    cpu::matmul(dt, w, rows, cols, x, n, &mut y).expect("reference matmul");
    y
}

/// The fast path with `isa`: matvec for one token, matmul otherwise. Outputs start as NaN so
/// an element the kernels skip cannot pass.
pub(crate) fn fast_with(isa: Isa, dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; n * rows];
    if n == 1 {
        fast::matvec_with(isa, dt, w, rows, cols, x, &mut y).expect("fast matvec");
    } else {
        fast::matmul_with(isa, dt, w, rows, cols, x, n, &mut y).expect("fast matmul");
    }
    y
}

fn rounded(x: &[f32], cols: usize) -> Vec<f32> {
    let mut out = vec![0.0; x.len()];
    fast::activation_values(x, cols, &mut out).expect("activation values");
    out
}

#[test]
fn fast_matches_the_reference() {
    for dt in QTYPES {
        for (k, (rows, cols)) in SHAPES.into_iter().enumerate() {
            let w = matrix(k as u64 * 31 + 1, dt, rows, cols);
            for n in TOKENS {
                let x = uniform(&mut rng(k as u64 * 7 + n as u64), n * cols, 1.0);
                let got = fast_with(Isa::best(), dt, &w, rows, cols, &x, n);
                let label = format!("fast {dt} {rows}x{cols} T={n} ({})", Isa::best().name());
                let want = reference(dt, &w, rows, cols, &x, n);
                assert_close(&format!("{label} vs reference"), &got, &want, Tolerance::Q8_ACTIVATIONS);
                let want = reference(dt, &w, rows, cols, &rounded(&x, cols), n);
                assert_close(&format!("{label} vs reference on x'"), &got, &want, Tolerance::F32_ACCUMULATION);
            }
        }
    }
}

/// Element by element, the rigorous bound: |x - x'| <= d/2 + (binary16 rounding of d) * 127
/// <= max|x_b| (1/254 + 127 * 2^-11 / 127) per element of block b, so a row's error is at
/// most sum_b max|x_b| (1/254 + 2^-11) ||w_b||_1, plus f32 accumulation (1e-4 of the row's
/// magnitude covers it).
#[test]
fn fast_error_is_within_the_worst_case_bound() {
    for dt in QTYPES {
        let (rows, cols, n) = (29, 320, 7);
        let w = matrix(5, dt, rows, cols);
        let x = uniform(&mut rng(6), n * cols, 3.0);
        let got = fast_with(Isa::best(), dt, &w, rows, cols, &x, n);
        let want = oracle::matmul(dt, &w, rows, cols, &x, n);
        let wd = oracle::dequantize(dt, &w, rows, cols);
        for t in 0..n {
            for r in 0..rows {
                let (mut bound, mut mag) = (0.0f64, 0.0f64);
                for b in 0..cols / QK {
                    let xb = &x[t * cols + b * QK..][..QK];
                    let wb = &wd[r * cols + b * QK..][..QK];
                    let amax = xb.iter().fold(0.0f64, |m, &v| m.max(v.abs() as f64));
                    let w1: f64 = wb.iter().map(|v| v.abs()).sum();
                    bound += amax * (1.0 / 254.0 + 1.0 / 2048.0) * w1;
                    mag += amax * w1;
                }
                let (g, want) = (got[t * rows + r] as f64, want[t * rows + r]);
                let err = (g - want).abs();
                assert!(
                    err <= bound + 1e-4 * mag,
                    "{dt} row {r} token {t}: |{g} - {want}| = {err:e} > bound {bound:e}"
                );
            }
        }
    }
}

#[test]
fn simd_kernels_match_the_portable_ones() {
    for isa in Isa::ALL.into_iter().filter(|&i| i != Isa::Scalar) {
        if !isa.is_available() {
            skip(&format!("fast::simd_kernels_match_the_portable_ones[{}]", isa.name()), "this CPU lacks the features");
            continue;
        }
        for dt in QTYPES {
            for (k, (rows, cols)) in SHAPES.into_iter().enumerate() {
                let w = matrix(k as u64 * 13 + 2, dt, rows, cols);
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random shapes on every available kernel set: against the reference on x' and on x.
    #[test]
    fn random_shapes(dt in prop::sample::select(QTYPES.to_vec()), rows in 1usize..90, blocks in 1usize..20,
                     n in 1usize..40, amp in prop::sample::select(vec![1e-3f32, 1.0, 300.0]), seed: u64) {
        let cols = blocks * QK;
        let w = matrix(seed, dt, rows, cols);
        let x = uniform(&mut rng(seed ^ 9), n * cols, amp);
        let want_raw = reference(dt, &w, rows, cols, &x, n);
        let want = reference(dt, &w, rows, cols, &rounded(&x, cols), n);
        for isa in Isa::available() {
            let got = fast_with(isa, dt, &w, rows, cols, &x, n);
            let label = format!("{} {dt} {rows}x{cols} T={n}", isa.name());
            assert_close(&format!("{label} vs reference on x'"), &got, &want, Tolerance::F32_ACCUMULATION);
            assert_close(&format!("{label} vs reference"), &got, &want_raw, Tolerance::Q8_ACTIVATIONS);
        }
    }
}

/// A matmul's token t is the matvec of that token (same kernels, other tiles: f32 order).
#[test]
fn matmul_rows_are_matvecs() {
    let (rows, cols, n) = (45, 192, 9);
    for dt in QTYPES {
        let w = matrix(11, dt, rows, cols);
        let x = uniform(&mut rng(12), n * cols, 1.0);
        let all = fast_with(Isa::best(), dt, &w, rows, cols, &x, n);
        for t in 0..n {
            let one = fast_with(Isa::best(), dt, &w, rows, cols, &x[t * cols..][..cols], 1);
            assert_close(&format!("{dt} token {t}"), &all[t * rows..][..rows], &one, Tolerance::F32_ACCUMULATION);
        }
    }
}

/// llama.cpp's q8_1 rounding: d = max|x| / 127 in binary16, round half to even.
#[test]
fn activations_round_half_to_even() {
    let mut x = vec![0.0f32; QK];
    x[0] = 127.0; // d = 1 exactly
    x[1] = 0.5;
    x[2] = 1.5;
    x[3] = 2.5;
    x[4] = -2.5;
    x[5] = -3.7;
    let got = rounded(&x, QK);
    assert_eq!(&got[..6], &[127.0, 0.0, 2.0, 2.0, -2.0, -4.0]);
    let zeros = rounded(&[0.0; QK], QK);
    assert!(zeros.iter().all(|&v| v == 0.0), "an all-zero block stays zero: {zeros:?}");
}

#[test]
fn non_finite_activations_give_nan() {
    let (rows, cols) = (5, 64);
    for dt in QTYPES {
        let w = matrix(3, dt, rows, cols);
        for bad in [f32::NAN, f32::INFINITY] {
            let mut x = uniform(&mut rng(4), cols, 1.0);
            x[40] = bad;
            for isa in Isa::available() {
                let y = fast_with(isa, dt, &w, rows, cols, &x, 1);
                assert!(y.iter().all(|v| v.is_nan()), "{} {dt} with {bad} in x: {y:?}", isa.name());
            }
        }
    }
}

#[test]
fn bad_arguments_are_errors() {
    let w = matrix(1, DType::Q4_1, 4, 64);
    let x = vec![0.0f32; 64];
    let mut y = vec![0.0f32; 4];
    let f32w = vec![0u8; 4 * 64 * 4];
    assert!(matches!(
        fast::matvec(DType::F32, &f32w, 4, 64, &x, &mut y),
        Err(Error::UnsupportedDtype { dtype: DType::F32, .. })
    ));
    assert!(fast::matvec(DType::Q4_1, &w, 4, 64, &x[..32], &mut y).is_err(), "short x");
    assert!(fast::matvec(DType::Q4_1, &w, 4, 64, &x, &mut y[..3]).is_err(), "short y");
    assert!(fast::matvec(DType::Q4_1, &w[..w.len() - 1], 4, 64, &x, &mut y).is_err(), "short w");
    assert!(fast::matvec(DType::Q4_1, &w, 4, 60, &x[..60], &mut y).is_err(), "cols not whole blocks");
    assert!(fast::matmul(DType::Q4_1, &w, 4, 64, &x, 2, &mut y).is_err(), "x of one token for two");
    let mut out = vec![0.0f32; 60];
    assert!(fast::activation_values(&x[..60], 60, &mut out).is_err(), "cols not whole blocks");
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_available()) {
        assert!(fast::matvec_with(isa, DType::Q4_1, &w, 4, 64, &x, &mut y).is_err(), "{} unavailable", isa.name());
    }
    // Empty shapes are fine and leave nothing behind.
    fast::matmul(DType::Q8_0, &[], 0, 64, &x, 1, &mut []).expect("no rows");
    let mut y = [1.0f32; 6];
    fast::matmul(DType::Q8_0, &[], 3, 0, &[], 2, &mut y).expect("no columns");
    assert_eq!(y, [0.0; 6], "an empty sum is zero");
}

/// The f32-activation kernels on `isa`: matvec for one token, matmul otherwise; NaN-filled
/// outputs so a skipped element cannot pass.
fn f32act_with(isa: Isa, dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) -> Vec<f32> {
    let mut y = vec![f32::NAN; n * rows];
    if n == 1 && isa == Isa::best() {
        fast::matvec_f32(dt, w, rows, cols, x, &mut y).expect("f32 matvec");
    } else {
        fast::matmul_f32_with(isa, dt, w, rows, cols, x, n, &mut y).expect("f32 matmul");
    }
    y
}

/// The f32-activation kernels compute the reference's products (same dequantized weights,
/// unrounded activations) and differ only in the order of the f32 sums. Checked element by
/// element against the exact (f64) product under the rigorous bound for two f32 dot products
/// of `cols` terms in any order, 2 * cols * 2^-24 * sum |w x|, and against the reference.
fn check_f32act(isa: Isa, dt: DType, w: &[u8], rows: usize, cols: usize, x: &[f32], n: usize) {
    let got = f32act_with(isa, dt, w, rows, cols, x, n);
    let label = format!("f32act {} {dt} {rows}x{cols} T={n}", isa.name());
    let exact = oracle::matmul(dt, w, rows, cols, x, n);
    let wd = oracle::dequantize(dt, w, rows, cols);
    for t in 0..n {
        for r in 0..rows {
            let mag: f64 = (0..cols).map(|c| (wd[r * cols + c] * x[t * cols + c] as f64).abs()).sum();
            let bound = 2.0 * cols as f64 * 2f64.powi(-24) * mag;
            let (g, e) = (got[t * rows + r] as f64, exact[t * rows + r]);
            assert!((g - e).abs() <= bound, "{label} row {r} token {t}: |{g} - {e}| > {bound:e}");
        }
    }
    let want = reference(dt, w, rows, cols, x, n);
    assert_close(&format!("{label} vs reference"), &got, &want, Tolerance::F32_ACCUMULATION);
}

#[test]
fn f32_activation_kernels_match_the_reference() {
    for isa in Isa::ALL {
        if !isa.is_available() {
            skip(
                &format!("fast::f32_activation_kernels_match_the_reference[{}]", isa.name()),
                "this CPU lacks the features",
            );
            continue;
        }
        for dt in QTYPES {
            for (k, (rows, cols)) in SHAPES.into_iter().enumerate() {
                let w = matrix(k as u64 * 17 + 3, dt, rows, cols);
                for n in TOKENS.into_iter().chain([4, 5, 9]) {
                    let x = uniform(&mut rng(k as u64 * 5 + n as u64), n * cols, 2.0);
                    check_f32act(isa, dt, &w, rows, cols, &x, n);
                }
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random shapes and magnitudes on every available kernel set, f32 activations.
    #[test]
    fn f32_activation_random_shapes(dt in prop::sample::select(QTYPES.to_vec()), rows in 1usize..70,
                                    blocks in 1usize..20, n in 1usize..12,
                                    amp in prop::sample::select(vec![1e-3f32, 1.0, 300.0]), seed: u64) {
        let cols = blocks * QK;
        let w = matrix(seed, dt, rows, cols);
        let x = uniform(&mut rng(seed ^ 5), n * cols, amp);
        for isa in Isa::available() {
            check_f32act(isa, dt, &w, rows, cols, &x, n);
        }
    }
}

/// The 32-value block types, whose small batches (up to 8 tokens) the AVX2 kernels compute in
/// one pass over the weights.
const BLOCK32: [DType; 6] = [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q5_0, DType::Q5_1, DType::IQ4_NL];

/// The tokens of `x` (n rows of `cols`) one at a time through `one`, outputs as [token][row].
fn one_at_a_time(rows: usize, cols: usize, x: &[f32], one: impl Fn(&[f32], &mut [f32])) -> Vec<f32> {
    let mut y = vec![f32::NAN; x.len() / cols * rows];
    for (xt, yt) in x.chunks_exact(cols).zip(y.chunks_exact_mut(rows)) {
        one(xt, yt);
    }
    y
}

/// Where `got` and `want` first differ in bits, as a message; None if nowhere.
fn first_bit_difference(got: &[f32], want: &[f32], rows: usize) -> Option<String> {
    let i = (0..want.len()).find(|&i| !same_bits(got[i], want[i]))?;
    // Tokens and rows are counted from the start of the slices given.
    Some(format!(
        "token {} row {}: {:e} ({:#010x}), one at a time {:e} ({:#010x})",
        i / rows,
        i % rows,
        got[i],
        got[i].to_bits(),
        want[i],
        want[i].to_bits()
    ))
}

/// A pass of 1 to 12 tokens (the verification pass of `--lookup`, and the last tokens of a
/// prefill, which the AVX2 kernels compute in one pass over the weights) gives each token the
/// sums of a one-token pass, bit for bit, with 8-bit activations: every tile keeps one
/// accumulator per (row, token) and adds the blocks in order. Checked on the portable and AVX2
/// kernel sets (the AVX-512 ones tile otherwise), on odd row counts.
#[test]
fn fast_small_batches_equal_one_token_passes_bit_for_bit() {
    for isa in [Isa::Scalar, Isa::Avx2] {
        if !isa.is_available() {
            skip(
                &format!("fast::fast_small_batches_equal_one_token_passes_bit_for_bit[{}]", isa.name()),
                "this CPU lacks the features",
            );
            continue;
        }
        for dt in BLOCK32 {
            for (k, (rows, cols)) in [(67, 160), (193, 576)].into_iter().enumerate() {
                let w = quant::random_blocks(dt, rows * cols / QK, k as u64 + 11);
                for n in 1..=12 {
                    let x = uniform(&mut rng(n as u64 * 3 + k as u64), n * cols, 1.0);
                    let got = fast_with(isa, dt, &w, rows, cols, &x, n);
                    let want = one_at_a_time(rows, cols, &x, |xt, yt| {
                        fast::matvec_with(isa, dt, &w, rows, cols, xt, yt).expect("fast matvec")
                    });
                    if let Some(m) = first_bit_difference(&got, &want, rows) {
                        panic!("fast {} {dt} {rows}x{cols} T={n}: {m}", isa.name());
                    }
                }
            }
        }
    }
}

/// With f32 activations, 1 to 12 tokens within the rigorous bound of [`check_f32act`] (the
/// small-batch tiles of 2 to 8 tokens and the tails after the prefill tiles); two tokens keep
/// the one-token tile's four accumulators per (row, token), so a pass of 2 tokens gives both a
/// one-token pass's bits, and so does a pass of 9 or 10 to its last 1 or 2 tokens, after an
/// 8-token tile (Q8_0's prefill tiles are of 4 tokens: 9 is 4 + 5 there, not checked so).
#[test]
fn f32_activation_small_batches() {
    let isa = Isa::Avx2;
    if !isa.is_available() {
        skip("fast::f32_activation_small_batches", "this CPU lacks AVX2, FMA or F16C");
        return;
    }
    for dt in [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q5_0] {
        for (k, (rows, cols)) in [(67, 160), (193, 576)].into_iter().enumerate() {
            let w = quant::random_blocks(dt, rows * cols / QK, k as u64 + 5);
            for n in 1..=12 {
                let x = uniform(&mut rng(n as u64 * 13 + k as u64), n * cols, 2.0);
                check_f32act(isa, dt, &w, rows, cols, &x, n);
                let tails = matches!(n, 9 | 10) && dt != DType::Q8_0;
                if !(n <= 2 || tails) {
                    continue;
                }
                let got = f32act_with(isa, dt, &w, rows, cols, &x, n);
                let want = one_at_a_time(rows, cols, &x, |xt, yt| {
                    fast::matmul_f32_with(isa, dt, &w, rows, cols, xt, 1, yt).expect("f32 matvec")
                });
                let from = if n > 8 { 8 * rows } else { 0 };
                if let Some(m) = first_bit_difference(&got[from..], &want[from..], rows) {
                    panic!("f32act avx2 {dt} {rows}x{cols} T={n} (from token {}): {m}", from / rows);
                }
            }
        }
    }
}

/// The AVX-512 f32-activation kernels on 1 to 12 tokens: within the rigorous bound of
/// [`check_f32act`]; 2 to 4 tokens (tiles that keep the one-token tile's two accumulators per
/// (row, token)) give each token a one-token pass's bits; 5 to 12 tokens (one accumulator per
/// (row, token): the 4 × 4 prefill tile, then the last 5 to 8 tokens in one pass) give each
/// token the bits of an 8-token pass. The `--lookup` verification passes run on these.
#[test]
fn f32_activation_small_batches_avx512() {
    let isa = Isa::Avx512Vnni;
    if !isa.is_available() {
        skip("fast::f32_activation_small_batches_avx512", "this CPU lacks AVX-512 F/BW/VL or VNNI");
        return;
    }
    for dt in [DType::Q4_0, DType::Q4_1, DType::Q8_0, DType::Q5_0] {
        for (k, (rows, cols)) in [(67, 160), (193, 576)].into_iter().enumerate() {
            let w = quant::random_blocks(dt, rows * cols / QK, k as u64 + 7);
            for n in 1..=12 {
                let x = uniform(&mut rng(n as u64 * 17 + k as u64), n * cols, 2.0);
                check_f32act(isa, dt, &w, rows, cols, &x, n);
                if n == 1 {
                    continue;
                }
                let got = f32act_with(isa, dt, &w, rows, cols, &x, n);
                let want = one_at_a_time(rows, cols, &x, |xt, yt| {
                    if n <= 4 {
                        fast::matmul_f32_with(isa, dt, &w, rows, cols, xt, 1, yt).expect("f32 matvec");
                    } else {
                        let mut eight = vec![f32::NAN; 8 * rows];
                        fast::matmul_f32_with(isa, dt, &w, rows, cols, &xt.repeat(8), 8, &mut eight)
                            .expect("f32 matmul");
                        yt.copy_from_slice(&eight[..rows]);
                    }
                });
                if let Some(m) = first_bit_difference(&got, &want, rows) {
                    let of = if n <= 4 { "one-token passes" } else { "8-token passes" };
                    panic!("f32act avx512 {dt} {rows}x{cols} T={n} against {of}: {m}");
                }
            }
        }
    }
}

#[test]
fn f32_activation_bad_arguments_are_errors() {
    let w = matrix(1, DType::Q4_0, 4, 64);
    let x = vec![0.0f32; 128];
    let mut y = vec![0.0f32; 8];
    let f32w = vec![0u8; 4 * 64 * 4];
    assert!(matches!(
        fast::matvec_f32(DType::F32, &f32w, 4, 64, &x[..64], &mut y[..4]),
        Err(Error::UnsupportedDtype { dtype: DType::F32, .. })
    ));
    assert!(fast::matvec_f32(DType::Q4_0, &w, 4, 64, &x[..32], &mut y[..4]).is_err(), "short x");
    assert!(fast::matmul_f32(DType::Q4_0, &w, 4, 64, &x, 2, &mut y[..7]).is_err(), "short y");
    assert!(fast::matmul_f32(DType::Q4_0, &w[..w.len() - 1], 4, 64, &x, 2, &mut y).is_err(), "short w");
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_available()) {
        assert!(
            fast::matmul_f32_with(isa, DType::Q4_0, &w, 4, 64, &x, 2, &mut y).is_err(),
            "{} unavailable",
            isa.name()
        );
    }
    let mut y = [1.0f32; 6];
    fast::matmul_f32(DType::Q8_0, &[], 3, 0, &[], 2, &mut y).expect("no columns");
    assert_eq!(y, [0.0; 6], "an empty sum is zero");
    // The same for a prefill long enough for the panels, on every kernel set.
    for isa in Isa::available() {
        let mut y = [1.0f32; 3 * 30];
        fast::matmul_f32_with(isa, DType::Q4_K, &[], 3, 0, &[], 30, &mut y).expect("no columns");
        assert_eq!(y, [0.0; 90], "{}: an empty prefill sum is zero", isa.name());
    }
}

/// Fast attention against the reference: f32 and f16 caches, grouped heads, odd head sizes,
/// one token (decode) and prefill batches at a cache offset, without and with sliding windows
/// (shorter than the context, starting inside a block of 16 or a decode chunk, and longer than
/// the context). Only the order of f32 additions (and FMA) differs, hence
/// [`Tolerance::F32_ACCUMULATION`].
#[test]
fn attention_matches_the_reference() {
    use crate::support::Cache;
    for dt in [DType::F32, DType::F16] {
        for (n_kv_heads, group, head_dim) in [(1, 1, 8), (3, 3, 64), (2, 2, 17), (1, 4, 130)] {
            let n_heads = n_kv_heads * group;
            let scale = 1.0 / (head_dim as f32).sqrt();
            // Decode at 600 positions spans three of the decode path's chunks, which are merged.
            for (n_tokens, pos0, window) in [
                (1, 0, None),
                (1, 40, None),
                (1, 600, None),
                (2, 0, None),
                (7, 3, None),
                (33, 100, None),
                (1, 40, Some(1)),
                (1, 600, Some(300)),
                (1, 600, Some(5000)),
                (7, 3, Some(4)),
                (33, 100, Some(21)),
                (33, 100, Some(1000)),
            ] {
                let rows = pos0 + n_tokens + 2;
                let len = rows * n_kv_heads * head_dim;
                let seed = (n_tokens * 131 + pos0 * 7 + head_dim) as u64;
                let k = Cache::from_f32(dt, &uniform(&mut rng(seed), len, 1.0));
                let v = Cache::from_f32(dt, &uniform(&mut rng(seed ^ 1), len, 1.0));
                let q = uniform(&mut rng(seed ^ 2), n_tokens * n_heads * head_dim, 2.0);
                let mut want = vec![f32::NAN; q.len()];
                let mut got = vec![f32::NAN; q.len()];
                let args = (n_heads, n_kv_heads, head_dim, scale);
                if n_tokens == 1 {
                    cpu::attention_decode(
                        &q,
                        k.as_ref(),
                        v.as_ref(),
                        args.0,
                        args.1,
                        args.2,
                        pos0 + 1,
                        args.3,
                        window,
                        &mut want,
                    )
                    .expect("reference");
                    fast::attention_decode(
                        &q,
                        k.as_ref(),
                        v.as_ref(),
                        args.0,
                        args.1,
                        args.2,
                        pos0 + 1,
                        args.3,
                        window,
                        &mut got,
                    )
                    .expect("fast");
                } else {
                    cpu::attention_prefill(
                        &q,
                        n_tokens,
                        pos0,
                        k.as_ref(),
                        v.as_ref(),
                        args.0,
                        args.1,
                        args.2,
                        args.3,
                        window,
                        &mut want,
                    )
                    .expect("reference");
                    fast::attention_prefill(
                        &q,
                        n_tokens,
                        pos0,
                        k.as_ref(),
                        v.as_ref(),
                        args.0,
                        args.1,
                        args.2,
                        args.3,
                        window,
                        &mut got,
                    )
                    .expect("fast");
                }
                let label = format!(
                    "attention {dt} heads {n_heads}/{n_kv_heads} dim {head_dim} T={n_tokens} pos0={pos0} window={window:?}"
                );
                assert_close(&label, &got, &want, Tolerance::F32_ACCUMULATION);
            }
        }
    }
}

#[test]
fn attention_rejects_what_the_reference_rejects() {
    let c = vec![0.0f32; 4 * 2 * 8];
    let (k, v) = (cpu::CacheRef::F32(&c), cpu::CacheRef::F32(&c));
    let q = vec![0.0f32; 3 * 8];
    let mut out = vec![0.0f32; 3 * 8];
    assert!(fast::attention_decode(&q, k, v, 3, 2, 8, 1, 1.0, None, &mut out).is_err(), "3 heads over 2 KV heads");
    let q = vec![0.0f32; 2 * 8];
    let mut out = vec![0.0f32; 2 * 8];
    assert!(fast::attention_decode(&q, k, v, 2, 2, 8, 0, 1.0, None, &mut out).is_err(), "n_kv = 0");
    assert!(fast::attention_decode(&q, k, v, 2, 2, 8, 5, 1.0, None, &mut out).is_err(), "past the cache");
    assert!(fast::attention_prefill(&q, 1, 0, k, v, 2, 2, 8, 1.0, None, &mut out[..8]).is_err(), "short out");
    assert!(fast::attention_decode(&q, k, v, 2, 2, 8, 4, 1.0, Some(0), &mut out).is_err(), "a window of 0");
    assert!(cpu::attention_decode(&q, k, v, 2, 2, 8, 4, 1.0, Some(0), &mut out).is_err(), "a window of 0");
    fast::attention_decode(&q, k, v, 2, 2, 8, 4, 1.0, None, &mut out).expect("a full cache is fine");
}

/// The fast attention's own exponential, through a softmax of two positions: with scores 0 and
/// x and values 0 and 1 the output is e^x / (1 + e^x), within a few ulp of libm's (and below
/// e^-87, where the fast one stops, within 1e-37).
#[test]
fn attention_exp_is_close_to_libm() {
    let (k, v) = ([0.0f32, 1.0], [0.0f32, 1.0]);
    for i in 0..2000 {
        let x = -90.0 + i as f32 * 0.05;
        let mut out = [0.0f32];
        fast::attention_decode(&[x], cpu::CacheRef::F32(&k), cpu::CacheRef::F32(&v), 1, 1, 1, 2, 1.0, None, &mut out)
            .expect("attention");
        let want = if x <= 0.0 { x.exp() / (1.0 + x.exp()) } else { 1.0 / (1.0 + (-x).exp()) };
        let tol = 4.0 * f32::EPSILON * want + 1e-37;
        assert!((out[0] - want).abs() <= tol, "x = {x}: {} vs {want}", out[0]);
    }
}

/// The weight types the f32-activation path handles by dequantize-then-multiply: the quantized
/// types without hand-tiled f32 kernels (derived, so a new type cannot be left out of these
/// tests).
fn dq_types() -> impl Iterator<Item = DType> {
    DType::QUANTIZED.into_iter().filter(|t| !QTYPES.contains(t))
}

/// Valid random blocks (strata does not quantize to these types): `quant::random_blocks`.
fn blocks_matrix(seed: u64, dt: DType, rows: usize, cols: usize) -> Vec<u8> {
    quant::random_blocks(dt, rows * cols / dt.block_values(), seed)
}

/// (rows, blocks per row): one block, odd and even counts, and a 1536- or 2048-wide row.
const DQ_SHAPES: [(usize, usize); 5] = [(1, 1), (3, 2), (13, 3), (37, 6), (21, 8)];

#[test]
fn f32_activation_new_types_match_the_reference() {
    for isa in Isa::ALL {
        if !isa.is_available() {
            skip(
                &format!("fast::f32_activation_new_types_match_the_reference[{}]", isa.name()),
                "this CPU lacks the features",
            );
            continue;
        }
        for dt in dq_types() {
            for (k, (rows, blocks)) in DQ_SHAPES.into_iter().enumerate() {
                let cols = blocks * dt.block_values();
                let w = blocks_matrix(k as u64 * 31 + dt.ggml_type() as u64, dt, rows, cols);
                for n in [1, 2, 5, 9] {
                    let x = uniform(&mut rng(k as u64 * 7 + n as u64), n * cols, 2.0);
                    check_f32act(isa, dt, &w, rows, cols, &x, n);
                }
            }
        }
    }
}

/// The comparison above can fail: one changed quant in row 0 moves its product by more than
/// the bound, for every new type and kernel set.
#[test]
fn f32_activation_new_types_catch_a_changed_weight() {
    for dt in dq_types() {
        let (rows, cols) = (3, 2 * dt.block_values());
        let w = blocks_matrix(5, dt, rows, cols);
        let x = vec![1.0f32; cols];
        let want = reference(dt, &w, rows, cols, &x, 1);
        // Flip every bit of one byte in the middle of row 0's first block, past its scales.
        let mut bad = w.clone();
        bad[dt.block_bytes() / 2 + 4] ^= 0xFF;
        let before = oracle::dequantize(dt, &w, 1, cols);
        let after = oracle::dequantize(dt, &bad, 1, cols);
        let moved: f64 = before.iter().zip(&after).map(|(a, b)| b - a).sum();
        assert!(moved.abs() > 1e-3, "{dt}: the mutation must change row 0's sum (moved {moved})");
        for isa in Isa::available() {
            let got = f32act_with(isa, dt, &bad, rows, cols, &x, 1);
            assert!(
                (got[0] - want[0]).abs() as f64 > 0.5 * moved.abs(),
                "{dt} {}: a changed weight went unnoticed ({} vs {})",
                isa.name(),
                got[0],
                want[0]
            );
            assert_eq!(&got[1..], &f32act_with(isa, dt, &w, rows, cols, &x, 1)[1..], "{dt}: other rows unchanged");
        }
    }
}

/// The K-quant tiles (AVX-512: 4 rows × 4 tokens, then one pass of 4 rows × the last 1 to 3
/// tokens; AVX2: 1 row × 8 or 4 tokens, then one-token tiles): token counts around the tile
/// sizes and a 33-token
/// prefill, row counts with every tail of a 4-row tile, within the rigorous bound of
/// [`check_f32act`] on every kernel set; and one changed weight in the last row of a whole
/// tile moves only that row's sums, for every token of the tile.
#[test]
fn f32_activation_k_quant_prefill_tiles() {
    for isa in Isa::available() {
        for dt in [DType::Q4_K, DType::Q6_K] {
            for (k, rows) in [4usize, 9, 14, 67].into_iter().enumerate() {
                let cols = 3 * 256;
                let w = blocks_matrix(k as u64 * 13 + 1, dt, rows, cols);
                for n in [3, 4, 6, 8, 11, 12, 16, 33] {
                    let x = uniform(&mut rng(k as u64 * 11 + n as u64), n * cols, 2.0);
                    check_f32act(isa, dt, &w, rows, cols, &x, n);
                }
            }
            let (rows, cols, n) = (8, 2 * 256, 8);
            let w = blocks_matrix(3, dt, rows, cols);
            // Row 3: the last of the first 4-row tile.
            check_changed_row(isa, dt, &w, rows, cols, &vec![1.0f32; n * cols], n, 3, 1e-3);
        }
    }
}

/// One byte of row `row` (its first block, past the scales) flipped: that row's sums move for
/// every token (by more than `moved`), no other row's do (by more than `moved`; 0: not at all),
/// and every sum stays within 1e-3 relative of the reference on the changed weights.
#[allow(clippy::too_many_arguments)]
fn check_changed_row(
    isa: Isa,
    dt: DType,
    w: &[u8],
    rows: usize,
    cols: usize,
    x: &[f32],
    n: usize,
    row: usize,
    moved: f32,
) {
    let mut bad = w.to_vec();
    let rb = w.len() / rows;
    bad[row * rb + dt.block_bytes() / 2 + 4] ^= 0xFF;
    let (good, got) = (f32act_with(isa, dt, w, rows, cols, x, n), f32act_with(isa, dt, &bad, rows, cols, x, n));
    let want = reference(dt, &bad, rows, cols, x, n);
    for t in 0..n {
        for r in 0..rows {
            let i = t * rows + r;
            let changed = (got[i] - good[i]).abs() > moved;
            assert_eq!(changed, r == row, "{dt} {}: token {t} row {r}: {} vs {}", isa.name(), got[i], good[i]);
            assert!(
                (got[i] - want[i]).abs() <= 1e-3 * want[i].abs().max(1.0),
                "{dt} {}: token {t} row {r}: {} vs reference {}",
                isa.name(),
                got[i],
                want[i]
            );
        }
    }
}

/// Products of 24 tokens or more run in panels (`f32act_panel`: 32 rows decoded once, 12 tokens
/// per tile with AVX-512; 16 rows and 6 tokens with AVX2): every quantized type, row counts
/// around the panels (short last panels of 1, 15, 17 and 1 rows, padded with zero rows whose
/// sums must not land anywhere), token counts around the tiles, within the rigorous bound of
/// [`check_f32act`] on every kernel set (the portable one runs its tiles on the same cases);
/// and one changed weight in the last row of a whole panel (row 31: the second 16-row panel
/// with AVX2) moves only that row's sums, for every token.
#[test]
fn f32_activation_prefill_panels() {
    for isa in Isa::available() {
        for dt in DType::QUANTIZED {
            let cols = 2 * dt.block_values().max(256);
            for (k, rows) in [1usize, 15, 32, 49, 65].into_iter().enumerate() {
                let w = blocks_matrix(k as u64 * 7 + dt.ggml_type() as u64, dt, rows, cols);
                for n in [24, 25, 29, 36, 41] {
                    let x = uniform(&mut rng(k as u64 * 3 + n as u64), n * cols, 2.0);
                    check_f32act(isa, dt, &w, rows, cols, &x, n);
                }
            }
            let (rows, n) = (40, 27);
            let w = blocks_matrix(9, dt, rows, cols);
            // Row 31: the last of the first panel.
            check_changed_row(isa, dt, &w, rows, cols, &uniform(&mut rng(4), n * cols, 1.0), n, 31, 0.0);
        }
    }
}

#[test]
fn f32_activation_new_types_bad_arguments_are_errors() {
    let w = blocks_matrix(1, DType::Q4_K, 2, 512);
    let x = vec![0.0f32; 512];
    let mut y = vec![0.0f32; 2];
    assert!(fast::matvec_f32(DType::Q4_K, &w, 2, 512, &x[..256], &mut y).is_err(), "short x");
    assert!(fast::matvec_f32(DType::Q4_K, &w[..w.len() - 1], 2, 512, &x, &mut y).is_err(), "short w");
    let e = fast::matvec_f32(DType::Q4_K, &w, 4, 256, &x[..256], &mut [0.0; 4]);
    assert!(e.is_ok(), "4 rows of one super-block are the same bytes: {e:?}");
    let e = fast::matvec_f32(DType::Q4_K, &w[..144 * 3], 1, 384, &x[..384], &mut y[..1]).unwrap_err();
    assert!(e.to_string().contains("256"), "a row that is not whole super-blocks: {e}");
    for isa in Isa::ALL.into_iter().filter(|i| !i.is_available()) {
        assert!(fast::matmul_f32_with(isa, DType::Q6_K, &w[..420], 1, 512, &x, 1, &mut y[..1]).is_err());
    }
    assert!(fast::supports(DType::Q4_K) && !fast::supports(DType::F16));
}

/// Where the binary16 scales (`d`, and `m` / `dmin` where the type has one) of a block of a
/// type of `dq_types()` are.
fn scale_offsets(dt: DType) -> &'static [usize] {
    match dt {
        DType::Q4_0 | DType::Q8_0 | DType::Q5_0 | DType::IQ4_NL | DType::IQ4_XS => &[0],
        DType::Q4_1 | DType::Q5_1 | DType::Q4_K | DType::Q5_K => &[0, 2],
        DType::Q2_K => &[80, 82],
        DType::Q3_K => &[108],
        DType::Q6_K => &[208],
        _ => panic!("{dt} is not decoded by the exact path's block decoders"),
    }
}

/// Bit for bit, except that two NaNs are equal whatever their payloads (Rust does not specify
/// which NaN an operation on NaNs returns).
fn same_bits(a: f32, b: f32) -> bool {
    a.to_bits() == b.to_bits() || (a.is_nan() && b.is_nan())
}

/// `row` through the exact path's decoders (every kernel set this CPU runs) against
/// `quant::dequantize_row`, value by value.
fn check_decoders(label: &str, dt: DType, row: &[u8]) {
    let values = row.len() / dt.block_bytes() * dt.block_values();
    let mut want = vec![0.0f32; values];
    quant::dequantize_row(dt, row, &mut want).expect("reference dequantize_row");
    for isa in Isa::available() {
        let mut got = vec![f32::NAN; values];
        fast::dequantize_row_exact(isa, dt, row, &mut got).expect("exact decoders");
        if let Some(i) = (0..values).find(|&i| !same_bits(got[i], want[i])) {
            panic!(
                "{label} {dt} ({}): value {i} (block {}, position {}) is {:e} ({:#010x}), the reference's {:e} ({:#010x})",
                isa.name(),
                i / dt.block_values(),
                i % dt.block_values(),
                got[i],
                got[i].to_bits(),
                want[i],
                want[i].to_bits()
            );
        }
    }
}

/// The exact path's per-type block decoders (the tiled types' too) return `quant::dequantize_row`'s values bit for
/// bit: on random blocks (every quant and sub-block scale pattern over many blocks), on blocks
/// whose quants are all zeros or all ones, and with extreme binary16 scales (the largest and
/// smallest normal, subnormals, zeros of both signs, infinities and NaN).
#[test]
fn exact_decoders_equal_dequantize_row_bit_for_bit() {
    let extremes: [u16; 12] = [
        0x7BFF, // 65504
        0xFBFF, // -65504
        0x0400, // 2^-14, the smallest normal
        0x0001, // 2^-24, the smallest subnormal
        0x83FF, // a negative subnormal
        0x0000, 0x8000, 0x3C00, // 1
        0x7C00, // inf
        0xFC00, // -inf
        0x7E00, // NaN
        0x7C01, // a signalling NaN's bits
    ];
    for dt in QTYPES.into_iter().chain(dq_types()) {
        for seed in 0..4 {
            let row = quant::random_blocks(dt, 64, seed * 977 + dt.ggml_type() as u64);
            check_decoders("random blocks", dt, &row);
        }
        for fill in [0x00u8, 0xFF] {
            let mut row = quant::random_blocks(dt, 8, 3);
            for block in row.chunks_exact_mut(dt.block_bytes()) {
                let keep: Vec<(usize, [u8; 2])> =
                    scale_offsets(dt).iter().map(|&at| (at, [block[at], block[at + 1]])).collect();
                block.fill(fill);
                for (at, bits) in keep {
                    block[at..at + 2].copy_from_slice(&bits);
                }
            }
            check_decoders(&format!("quants all {fill:#04x}"), dt, &row);
        }
        // Every pair of extreme scales (d with each m / dmin), on random quants.
        let offsets = scale_offsets(dt);
        let mut row = quant::random_blocks(dt, extremes.len() * extremes.len(), 11);
        for (k, block) in row.chunks_exact_mut(dt.block_bytes()).enumerate() {
            let pair = [extremes[k / extremes.len()], extremes[k % extremes.len()]];
            for (&at, bits) in offsets.iter().zip(pair) {
                block[at..at + 2].copy_from_slice(&bits.to_le_bytes());
            }
        }
        check_decoders("extreme scales", dt, &row);
    }
}

/// The comparison above can fail: one changed quant bit changes a decoded value.
#[test]
fn exact_decoders_check_catches_a_changed_bit() {
    for dt in QTYPES.into_iter().chain(dq_types()) {
        let row = quant::random_blocks(dt, 2, 9);
        let mut want = vec![0.0f32; 2 * dt.block_values()];
        quant::dequantize_row(dt, &row, &mut want).expect("reference dequantize_row");
        let mut bad = row.clone();
        // A byte past the scales of block 0 (every type keeps quants there).
        bad[dt.block_bytes() / 2 + 4] ^= 0xFF;
        let mut got = vec![0.0f32; want.len()];
        fast::dequantize_row_exact(Isa::best(), dt, &bad, &mut got).expect("exact decoders");
        assert!(got.iter().zip(&want).any(|(g, w)| !same_bits(*g, *w)), "{dt}: a changed byte went unnoticed");
        assert!(
            fast::dequantize_row_exact(Isa::best(), dt, &row[1..], &mut got).is_err(),
            "{dt}: a short row is an error"
        );
    }
    let mut out = [0.0f32; 32];
    assert!(fast::dequantize_row_exact(Isa::best(), DType::F16, &[0u8; 64], &mut out).is_err(), "f16 is not here");
}

/// The exact and fast paths' GELU-gated product against float64 (x / (1 + e^(-2u)) =
/// 0.5 x (1 + tanh u)), relative error: at most 2e-5 (measured 1.2e-5, at large negative x,
/// where the f32 rounding of u is multiplied by |2u| up to 87 in the exponential) and no worse
/// than the reference's libm `tanhf`, which loses every digit to cancellation where 1 + tanh u
/// is near 0 (measured: relative error 1). Below x = -22 or so the exponential stops at e^88,
/// so the result is about x e^-88 (under 1e-35) where float64 gives less. Enough values that
/// the parallel split runs; a NaN stays a NaN.
#[test]
fn gelu_mul_is_as_close_to_float64_as_the_reference() {
    let (worst, worst_ref) = glu_against_float64("gelu_mul", -30.0, 0.001, fast::gelu_mul, cpu::gelu_mul, |x| {
        let t = (2.0f64 / std::f64::consts::PI).sqrt() * x * (1.0 + 0.044715 * x * x);
        x / (1.0 + (-2.0 * t).exp())
    });
    assert!(worst <= 2e-5, "fast gelu_mul is {worst:.3e} from float64");
    assert!(worst <= worst_ref, "fast {worst:.3e} against the reference's {worst_ref:.3e}");
}

/// The exact and fast paths' SiLU-gated product against float64, relative error: at most 3e-7
/// (measured 1.5e-7, as the reference's libm `expf`: the exponential's ulp, the add, the
/// division and the product). Below x = -87 the exponential stops at
/// e^88 where the reference's overflows to infinity, so both give about 0 there (under 1e-35)
/// where float64 gives x e^x. Enough values that the parallel split runs; a NaN stays a NaN.
#[test]
fn silu_mul_is_as_close_to_float64_as_the_reference() {
    let (worst, _) =
        glu_against_float64("silu_mul", -120.0, 0.004, fast::silu_mul, cpu::silu_mul, |x| x / (1.0 + (-x).exp()));
    assert!(worst <= 3e-7, "fast silu_mul is {worst:.3e} from float64");
}

type Glu = fn(&[f32], &[f32], &mut [f32]) -> strata_kernels::Result<()>;

/// A gated product `fast` and its reference on 60001 gates from `from` in steps of `step` (enough
/// that the parallel split runs) times ups of 1 to 2.5, against float64's `act(x) * up`: the
/// largest relative errors of the two (printed), where float64 is above 1e-30 (below, `fast`
/// must be within 1e-35). Also: a NaN gate gives NaN, and lengths that differ are an error.
fn glu_against_float64(name: &str, from: f32, step: f32, fast: Glu, reference: Glu, act: fn(f64) -> f64) -> (f64, f64) {
    let n = 60_001;
    let gate: Vec<f32> = (0..n).map(|i| from + i as f32 * step).collect();
    let up: Vec<f32> = (0..n).map(|i| 1.0 + (i % 7) as f32 * 0.25).collect();
    let (mut got, mut want_ref) = (vec![0.0f32; n], vec![0.0f32; n]);
    let (mut worst, mut worst_ref) = (0.0f64, 0.0f64);
    fast(&gate, &up, &mut got).unwrap_or_else(|e| panic!("fast {name}: {e}"));
    reference(&gate, &up, &mut want_ref).unwrap_or_else(|e| panic!("reference {name}: {e}"));
    for i in 0..n {
        let x = gate[i] as f64;
        let want = act(x) * up[i] as f64;
        let err = (got[i] as f64 - want).abs();
        let ref_err = (want_ref[i] as f64 - want).abs();
        if want.abs() > 1e-30 {
            worst = worst.max(err / want.abs());
            worst_ref = worst_ref.max(ref_err / want.abs());
        } else {
            assert!(err <= 1e-35, "{name}, x = {x}: {} vs {want}", got[i]);
        }
    }
    eprintln!("{name}, largest relative error against float64: fast {worst:.3e}, reference {worst_ref:.3e}");
    let mut one = [0.0f32];
    fast(&[f32::NAN], &[1.0], &mut one).unwrap_or_else(|e| panic!("{name}: {e}"));
    assert!(one[0].is_nan(), "{name}: a NaN gate gave {}", one[0]);
    assert!(fast(&[1.0, 2.0], &[1.0], &mut [0.0, 0.0]).is_err(), "{name}: lengths must agree");
    (worst, worst_ref)
}
