//! Comparing results against a reference with a named tolerance, with a report that says how
//! far off, where, and the first offending pairs. Used by the kernel tests here and by the
//! tests of the crates above.
//!
//! Also the workspace's one way to skip a test ([`skip`], [`model_or_skip`]): a skipped test
//! is counted per test binary and reported on stderr, where cargo shows it, never passed off
//! as verified. The reasons have one wording each ([`NOT_BUILT_WITH_CUDA`], [`NO_DRIVER`],
//! [`NO_MODEL`]) so that the per-binary counts group them.

use std::fmt;

/// A named tolerance: element i passes when
/// `|got_i - want_i| <= abs + rel * max(|want_i|, rms(want))`.
///
/// Using the row's RMS as a floor keeps values near zero (cancellation in a dot product) from
/// demanding an impossible relative accuracy, while large values are still held to `rel`.
/// NaN never passes, except against NaN under [`Tolerance::STRICT`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tolerance {
    pub name: &'static str,
    pub abs: f64,
    pub rel: f64,
}

impl Tolerance {
    /// Bit-identical values (NaN matches NaN): ops that only convert or copy (dequantize,
    /// gather, KV append, add, scale, argmax).
    pub const STRICT: Tolerance = Tolerance { name: "strict", abs: 0.0, rel: 0.0 };
    /// Elementwise f32 math where only a transcendental's last bits differ (CUDA expf/sincosf
    /// against libm, a few ulp): silu, softmax, rope.
    pub const F32_ROUNDING: Tolerance = Tolerance { name: "f32 rounding", abs: 1e-6, rel: 2e-6 };
    /// f32 sums taken in another order (matvec, matmul, rmsnorm, attention): the error of a
    /// sum of n terms grows like sqrt(n) ulp of the row's magnitude; 1e-4 of the RMS covers
    /// rows of tens of thousands of terms with a wide margin.
    pub const F32_ACCUMULATION: Tolerance = Tolerance { name: "f32 accumulation", abs: 1e-6, rel: 1e-4 };
    /// Values that went through binary16 storage once (2^-11 relative rounding) on one side.
    pub const FP16: Tolerance = Tolerance { name: "fp16", abs: 1e-6, rel: 1e-3 };
    /// A product on TF32 tensor cores (the `next` prefill matmul): both inputs rounded to 10
    /// mantissa bits (2^-11 relative each), so the error of a sum is about 2^-10.5 of its RMS
    /// times a few for the largest of many outputs.
    pub const TF32: Tolerance = Tolerance { name: "tf32 inputs", abs: 1e-5, rel: 4e-3 };
    /// A product whose activations were rounded to 8-bit blocks on one side (the fast CPU
    /// path, as llama.cpp does): each x becomes `round(x / d) * d` with `d = max|x| / 127` over
    /// its block of 32, an error uniform in ±d/2 (standard deviation `d / sqrt(12)`), and `d`
    /// itself goes through binary16 (2^-12 relative, negligible next to it). Over a row with
    /// weights w the error's deviation is `||w|| d / sqrt(12)`, while the output's RMS is
    /// `||w|| rms(x)`; with `max|x| = k rms(x)` in a block the ratio is `k / (127 sqrt(12))
    /// = k / 440`: 0.4% for uniform inputs (k = sqrt(3)), 0.6% for Gaussian blocks (k ≈ 2.5).
    /// `rel = 3e-2` is 5 to 7.5 deviations of that, so it holds on every element of large tests.
    pub const Q8_ACTIVATIONS: Tolerance = Tolerance { name: "q8 activations", abs: 1e-5, rel: 3e-2 };
    /// Attention on f16 tensor cores (the `next` prefill attention, `attention_mma.cu`) against
    /// the CPU reference on the unrounded queries, for the benches' check (|q|, |k|, |v| <= 1):
    /// Q is rounded to f16, which moves each score by up to `2^-11 * scale * sum_d |q_d k_d|`
    /// (about 1.4e-3 of a logit for uniform q and k at head_dim 128, 5.5e-3 at worst), and the
    /// softmax weights are rounded to f16 (2^-11 each); an output moves by that fraction of the
    /// |v| it averages, while the outputs' RMS can be far below |v| (a flat softmax averages
    /// out), hence the absolute part. The host model of the kernel (`tests/attention_mma.rs`,
    /// the same roundings) is off by at most 1.6e-4 absolute and 1.5e-3 relative to the RMS on
    /// 256 tokens x 8 heads x 128; `abs = 1e-3`, `rel = 1e-2` leave six times that. Tests use
    /// the per-output bound of [`attention_mma_bounds`] instead.
    pub const F16_ATTENTION: Tolerance = Tolerance { name: "f16 attention", abs: 1e-3, rel: 1e-2 };

    pub fn is_strict(&self) -> bool {
        self.abs == 0.0 && self.rel == 0.0
    }
}

/// The outcome of [`compare`].
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    pub tolerance: Tolerance,
    pub len: usize,
    /// Largest |got - want| and where (NaN counts as infinite).
    pub max_abs: f64,
    pub max_abs_at: usize,
    /// Largest |got - want| / max(|want|, rms(want)) and where.
    pub max_rel: f64,
    pub max_rel_at: usize,
    /// Elements outside the tolerance, and the first few of them as (index, got, want).
    pub n_bad: usize,
    pub first_bad: Vec<(usize, f64, f64)>,
    /// A length mismatch, if any (then nothing else was compared).
    pub len_mismatch: Option<(usize, usize)>,
}

impl Comparison {
    pub fn passed(&self) -> bool {
        self.len_mismatch.is_none() && self.n_bad == 0
    }
}

impl fmt::Display for Comparison {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some((g, w)) = self.len_mismatch {
            return write!(f, "length mismatch: got {g} values, want {w}");
        }
        write!(
            f,
            "{} of {} values outside {} (abs {:e} + rel {:e}); max abs err {:.3e} at [{}], max rel err {:.3e} at [{}]",
            self.n_bad,
            self.len,
            self.tolerance.name,
            self.tolerance.abs,
            self.tolerance.rel,
            self.max_abs,
            self.max_abs_at,
            self.max_rel,
            self.max_rel_at
        )?;
        if !self.first_bad.is_empty() {
            write!(f, "; first:")?;
            for (i, g, w) in &self.first_bad {
                write!(f, " [{i}] got {g:e} want {w:e};")?;
            }
        }
        Ok(())
    }
}

/// Compares `got` with `want` under `tol`.
pub fn compare<A: Copy + Into<f64>, B: Copy + Into<f64>>(got: &[A], want: &[B], tol: Tolerance) -> Comparison {
    let mut c = Comparison {
        tolerance: tol,
        len: want.len(),
        max_abs: 0.0,
        max_abs_at: 0,
        max_rel: 0.0,
        max_rel_at: 0,
        n_bad: 0,
        first_bad: Vec::new(),
        len_mismatch: None,
    };
    if got.len() != want.len() {
        c.len_mismatch = Some((got.len(), want.len()));
        return c;
    }
    let finite = want.iter().map(|&w| w.into()).filter(|w: &f64| w.is_finite());
    let (sum_sq, n) = finite.fold((0.0f64, 0usize), |(s, n), w| (s + w * w, n + 1));
    let rms = if n > 0 { (sum_sq / n as f64).sqrt() } else { 0.0 };
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        let (g, w): (f64, f64) = (g.into(), w.into());
        let ok = if tol.is_strict() {
            g.to_bits() == w.to_bits() || (g.is_nan() && w.is_nan())
        } else {
            let scale = w.abs().max(rms);
            (g - w).abs() <= tol.abs + tol.rel * scale || (g == w)
        };
        let abs = if g.is_nan() != w.is_nan() {
            f64::INFINITY
        } else if g.is_nan() {
            0.0
        } else {
            (g - w).abs()
        };
        let rel = if abs == 0.0 { 0.0 } else { abs / w.abs().max(rms).max(f64::MIN_POSITIVE) };
        if abs > c.max_abs {
            c.max_abs = abs;
            c.max_abs_at = i;
        }
        if rel > c.max_rel {
            c.max_rel = rel;
            c.max_rel_at = i;
        }
        if !ok {
            c.n_bad += 1;
            if c.first_bad.len() < 5 {
                c.first_bad.push((i, g, w));
            }
        }
    }
    c
}

/// Panics with a full report when `got` is not within `tol` of `want`.
#[track_caller]
pub fn assert_close<A: Copy + Into<f64>, B: Copy + Into<f64>>(label: &str, got: &[A], want: &[B], tol: Tolerance) {
    let c = compare(got, want, tol);
    assert!(c.passed(), "{label}: {c}");
}

/// Why a CUDA test cannot run in a build without the `cuda` feature.
pub const NOT_BUILT_WITH_CUDA: &str = "built without cuda (rebuild with --features cuda)";
/// Why a CUDA test cannot run on a machine without the NVIDIA driver.
pub const NO_DRIVER: &str = "no CUDA device (no NVIDIA driver: libcuda.so could not be loaded)";
/// Why a test that needs the default model did not run: the machine said it has none.
pub const NO_MODEL: &str = "no model on this machine (STRATA_NO_MODEL=1)";
/// The opt-out variable behind [`NO_MODEL`].
pub const NO_MODEL_ENV: &str = "STRATA_NO_MODEL";

/// Why a CUDA test cannot run when the device exists but could not be opened (any other
/// reason than [`NOT_BUILT_WITH_CUDA`] and [`NO_DRIVER`]).
pub fn no_cuda_device(detail: &dyn fmt::Display) -> String {
    format!("no CUDA device ({detail})")
}

/// The default model for a test that needs it ([`crate::default_model_path`]).
///
/// When the file is missing and `STRATA_NO_MODEL=1` says this machine has no model, the test
/// is counted as skipped ([`skip`], reason [`NO_MODEL`]) and `None` comes back: the caller
/// returns without asserting anything. When the file is missing without that variable it
/// panics with what to do: in CI the model must be there. With the model present the
/// variable changes nothing.
///
/// # Panics
/// When the model is missing and `STRATA_NO_MODEL` is not `1`.
#[track_caller]
pub fn model_or_skip(test: &str) -> Option<std::path::PathBuf> {
    model_file_or_skip(test, crate::default_model_path())
}

/// [`model_or_skip`] for another model file a test needs (`scripts/fetch-model.sh NAME`
/// fetches the others): the same policy, reason and message.
///
/// # Panics
/// When the file is missing and `STRATA_NO_MODEL` is not `1`.
#[track_caller]
pub fn model_file_or_skip(test: &str, path: std::path::PathBuf) -> Option<std::path::PathBuf> {
    if path.is_file() {
        return Some(path);
    }
    if std::env::var_os(NO_MODEL_ENV).is_some_and(|v| v == "1") {
        skip(test, NO_MODEL);
        return None;
    }
    panic!(
        "{test} needs a model and there is no file at {}: run scripts/fetch-model.sh (see its \
         header for the names; STRATA_MODEL=FILE for the default model), or set {NO_MODEL_ENV}=1 \
         to count the tests that need a model as skipped",
        path.display()
    )
}

/// The running test's name (libtest names each test's thread after it), for [`skip`] from
/// helpers that are not told which test called them.
pub fn current_test() -> String {
    std::thread::current().name().unwrap_or("(unnamed test)").to_string()
}

/// Skipped tests so far, counted per reason.
static SKIPPED: std::sync::Mutex<Vec<(String, usize)>> = std::sync::Mutex::new(Vec::new());

extern "C" fn report_skipped() {
    let skipped = SKIPPED.lock().map(|s| s.clone()).unwrap_or_default();
    // Straight to stderr at exit, after the harness's summary: `cargo test` captures what
    // passing tests print, and these lines must show what was not exercised.
    use std::io::Write;
    let mut err = std::io::stderr();
    for (why, n) in skipped {
        let _ = writeln!(err, "skipped: {n} test{} in this binary: {why}", if n == 1 { "" } else { "s" });
    }
}

/// Records that a test could not run (no CUDA device, no model file, ...): prints
/// `skipped: <test>: <why>` (visible with `--nocapture`) and counts it; when the test binary
/// exits it prints `skipped: N tests in this binary: <why>` to stderr for each reason. A skipped
/// test is never counted as verified: the caller returns without asserting anything.
pub fn skip(test: &str, why: &str) {
    println!("skipped: {test}: {why}");
    let mut list = SKIPPED.lock().unwrap_or_else(|p| p.into_inner());
    if list.is_empty() {
        // SAFETY: FFI call into libc; registers a plain extern "C" function that captures
        // nothing and only reads a mutex, valid for the whole process lifetime.
        unsafe { libc::atexit(report_skipped) };
    }
    match list.iter_mut().find(|(w, _)| w == why) {
        Some((_, n)) => *n += 1,
        None => list.push((why.to_string(), 1)),
    }
}

/// A seeded stream of values in [-2, 2) (xorshift64, the top 24 bits of each state): inputs
/// for the unit tests of this crate, the same sequence for the same seed on every machine.
#[cfg(test)]
pub(crate) fn test_values(seed: u64) -> impl FnMut() -> f32 {
    let mut state = seed;
    move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 * 4.0 - 2.0
    }
}

/// `x` rounded to binary16 and back (round to nearest even, as the CUDA kernels' `__float2half_rn`
/// and the `half` crate do): the queries the f16 tensor-core attention multiplies.
pub fn round_f16(x: &[f32]) -> Vec<f32> {
    x.iter().map(|&v| half::f16::from_f32(v).to_f32()).collect()
}

/// Per-output error bounds for prefill attention on f16 tensor cores (`attention_mma.cu`)
/// against the CPU reference (`cpu::attention_prefill`) run on the same f16-rounded queries
/// `q16` ([`round_f16`]), with the same caches and arguments; `[n_tokens][n_heads][head_dim]`
/// like the output.
///
/// Both sides then multiply the same values; what differs, for a query row that sees `n` keys,
/// with `S = scale * max_j sum_d |q_d k_jd|` over its visible keys and `u = 2^-24`:
/// - each score is an f32 sum of head_dim products, on the CPU in order and on tensor cores in
///   another order with possibly truncating adds: both within `head_dim * 4u * S` of exact
///   (4u per add covers truncation with a margin of two), plus the scale's rounding, so the
///   scores differ by at most `delta = (2 * head_dim * 4u + 2u) * S`, which moves each softmax
///   weight by a factor within `exp(+-2 delta)`;
/// - the kernel rounds each weight to f16 (2^-11 relative; below 2^-14 absolute 2^-25) and
///   sums the rounded ones, so its weights are off by a further factor within `1 +- 2^-10`,
///   plus `2^-25` each; `expf` against libm adds a few ulp (`8u`);
/// - the weighted sums of `n` values of V: f32, within `n * 4u` of exact on each side.
///
/// The weights sum to 1, so the output's error is at most `max_j |v_jd|` times
/// `exp(2 delta) (1 + 2^-10)(1 + 8u) - 1 + 2 n 4u + n 2^-25`, the bound returned (plus
/// `1e-30`). It still catches the indexing errors it is meant to: a key dropped, added or
/// misplaced, a row read for another head or token, is off by a whole weight (1/n of a flat
/// softmax, far more for the peaked ones of random tests and for short windows).
// The arguments mirror `cpu::attention_prefill`'s.
#[allow(clippy::too_many_arguments)]
pub fn attention_mma_bounds(
    q16: &[f32],
    k: crate::cpu::CacheRef,
    v: crate::cpu::CacheRef,
    n_tokens: usize,
    pos0: usize,
    n_heads: usize,
    n_kv_heads: usize,
    head_dim: usize,
    scale: f32,
    window: Option<usize>,
) -> Vec<f64> {
    const U: f64 = 1.0 / (1u64 << 24) as f64;
    let kv = |c: &crate::cpu::CacheRef, i: usize| -> f64 {
        match c {
            crate::cpu::CacheRef::F32(x) => f64::from(x[i]),
            crate::cpu::CacheRef::F16(x) => f64::from(x[i].to_f32()),
        }
    };
    let group = n_heads / n_kv_heads.max(1);
    let row = n_kv_heads * head_dim;
    let mut bounds = vec![0.0; n_tokens * n_heads * head_dim];
    for t in 0..n_tokens {
        let p = pos0 + t;
        let keys = crate::cpu::first_visible(p, window)..p + 1;
        let n = keys.len() as f64;
        for h in 0..n_heads {
            let kv_off = (h / group) * head_dim;
            let q = &q16[(t * n_heads + h) * head_dim..][..head_dim];
            let s_max = keys
                .clone()
                .map(|j| {
                    q.iter().enumerate().map(|(d, &qd)| (f64::from(qd) * kv(&k, j * row + kv_off + d)).abs()).sum()
                })
                .fold(0.0f64, f64::max)
                * f64::from(scale);
            let delta = (2.0 * head_dim as f64 * 4.0 * U + 2.0 * U) * s_max;
            let factor = (2.0 * delta).exp() * (1.0 + 1.0 / 1024.0) * (1.0 + 8.0 * U) - 1.0
                + 2.0 * n * 4.0 * U
                + n / (1u64 << 25) as f64;
            for d in 0..head_dim {
                let v_max = keys.clone().map(|j| kv(&v, j * row + kv_off + d).abs()).fold(0.0f64, f64::max);
                bounds[(t * n_heads + h) * head_dim + d] = factor * v_max + 1e-30;
            }
        }
    }
    bounds
}

/// Panics unless `|got_i - want_i| <= bounds_i` for every i (NaN never passes), with the
/// worst element (error, bound, where) and the first few offenders.
#[track_caller]
pub fn assert_within_bounds(label: &str, got: &[f32], want: &[f32], bounds: &[f64]) {
    assert!(
        got.len() == want.len() && want.len() == bounds.len(),
        "{label}: lengths differ: got {}, want {}, bounds {}",
        got.len(),
        want.len(),
        bounds.len()
    );
    let mut bad = Vec::new();
    let (mut worst, mut worst_at) = (0.0f64, 0);
    for (i, ((&g, &w), &b)) in got.iter().zip(want).zip(bounds).enumerate() {
        let err = (f64::from(g) - f64::from(w)).abs();
        let err = if err.is_nan() { f64::INFINITY } else { err };
        if err / b > worst {
            (worst, worst_at) = (err / b, i);
        }
        if err > b {
            bad.push((i, g, w, b));
        }
    }
    assert!(
        bad.is_empty(),
        "{label}: {} of {} values outside their bounds; worst at [{worst_at}]: error {:.3e} = {worst:.2} x its bound; first: {:?}",
        bad.len(),
        got.len(),
        (f64::from(got[worst_at]) - f64::from(want[worst_at])).abs(),
        &bad[..bad.len().min(5)]
    );
}

/// The largest `|got_i - want_i| / bounds_i` (how much of the bound is used; NaN counts as
/// infinite), for tests that check a bound is not loose beyond use.
pub fn bound_used(got: &[f32], want: &[f32], bounds: &[f64]) -> f64 {
    got.iter()
        .zip(want)
        .zip(bounds)
        .map(|((&g, &w), &b)| {
            let e = (f64::from(g) - f64::from(w)).abs() / b;
            if e.is_nan() { f64::INFINITY } else { e }
        })
        .fold(0.0, f64::max)
}
