//! The memory bound of a CPU decode step on this machine: how fast 1 and 2 threads can read a
//! buffer the size of Gemma 3 270M's output head (262144 × 640 Q8_0, 178 MB, far beyond any
//! cache), and how close the head's products come to that read (`exact`: f32 activations,
//! `fast`: 8-bit activations). A decode step reads every weight once, so bytes per token ÷ the
//! read rate is the least time a token can take (`docs/cpu-bench.md`, "The bound"). A
//! measuring tool, not a test: wall time, so run it on an idle machine and quote `uptime`.
//!
//!   cargo run --release --example membw [REPS=15]
//!
//! Read: each thread of a rayon pool of 1 or 2 sums its contiguous half of the buffer with
//! 256-bit loads into four independent 64-bit accumulators (eight loads, four cache lines, in
//! flight per iteration), so nothing but the loads limits it. Reported: the best and the
//! median of REPS passes, in GB/s (1e9 bytes).

use std::time::Instant;

use rayon::prelude::*;
use strata_kernels::cpu::fast::{self, Isa};
use strata_kernels::{DType, quant};

/// Gemma 3 270M's head: 262144 rows of 640 values, Q8_0 (34 bytes per 32 values).
const HEAD_ROWS: usize = 262_144;
const HEAD_COLS: usize = 640;
/// SmolLM2-135M's head (the default model): 49152 rows of 576 values, Q8_0 (tied embedding).
const SMOL_ROWS: usize = 49_152;
const SMOL_COLS: usize = 576;
/// One of the default model's Q4_1 products (gate or up: 1536 rows of 576 values).
const FFN_ROWS: usize = 1536;

/// One product to time: label, weight type, weights, rows, columns, activations, exact path.
type Product<'a> = (&'a str, DType, &'a [u8], usize, usize, &'a [f32], bool);

/// Sums the bytes of `buf` as 64-bit lanes (the value is only there so the loads are used).
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
fn sum_avx2(buf: &[u8]) -> u64 {
    use std::arch::x86_64::*;
    let mut acc = [_mm256_setzero_si256(); 4];
    let chunks = buf.chunks_exact(256);
    let tail = chunks.remainder();
    for c in chunks {
        let p = c.as_ptr();
        for (k, a) in acc.iter_mut().enumerate() {
            // SAFETY: `c` holds 256 bytes; the loads read bytes 32 k .. 32 k + 32 and
            // 128 + 32 k .. 160 + 32 k of it, unaligned loads allowed.
            let (v0, v1) =
                unsafe { (_mm256_loadu_si256(p.add(32 * k).cast()), _mm256_loadu_si256(p.add(128 + 32 * k).cast())) };
            *a = _mm256_add_epi64(*a, _mm256_add_epi64(v0, v1));
        }
    }
    let s = _mm256_add_epi64(_mm256_add_epi64(acc[0], acc[1]), _mm256_add_epi64(acc[2], acc[3]));
    let mut lanes = [0u64; 4];
    // SAFETY: `lanes` is 32 writable bytes.
    unsafe { _mm256_storeu_si256(lanes.as_mut_ptr().cast(), s) };
    lanes.iter().fold(0u64, |a, &l| a.wrapping_add(l)) + tail.iter().map(|&b| u64::from(b)).sum::<u64>()
}

fn sum_bytes(buf: &[u8]) -> u64 {
    #[cfg(target_arch = "x86_64")]
    if is_x86_feature_detected!("avx2") {
        // SAFETY: the CPU has AVX2 (checked just above), the feature `sum_avx2` is built for.
        return unsafe { sum_avx2(buf) };
    }
    buf.chunks_exact(8).map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8]))).fold(0, u64::wrapping_add)
}

/// Best and median seconds of `reps` calls of `f` (after one untimed call), `before` run
/// untimed ahead of each.
fn time(reps: usize, mut before: impl FnMut(), mut f: impl FnMut()) -> (f64, f64) {
    f();
    let mut t: Vec<f64> = (0..reps.max(1))
        .map(|_| {
            before();
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64()
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[0], t[t.len() / 2])
}

fn main() {
    let reps: usize = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(15);
    let isa = Isa::best();
    println!("kernels: {}; {} passes per case (best / median)", isa.name(), reps);
    let head = quant::random_blocks(DType::Q8_0, HEAD_ROWS * HEAD_COLS / 32, 11);
    let smol = quant::random_blocks(DType::Q8_0, SMOL_ROWS * SMOL_COLS / 32, 13);
    let ffn = quant::random_blocks(DType::Q4_1, FFN_ROWS * SMOL_COLS / 32, 17);
    let x: Vec<f32> = (0..HEAD_COLS).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0).collect();
    let xs: Vec<f32> = (0..SMOL_COLS).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0).collect();
    let mut y = vec![0.0f32; HEAD_ROWS];
    for threads in [1usize, 2] {
        let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(threads).build() else {
            eprintln!("membw: no rayon pool of {threads} threads");
            return;
        };
        pool.install(|| {
            let mb = head.len() as f64 / 1e6;
            let mut check = 0u64;
            let (best, med) = time(reps, || {}, || {
                let part = head.len().div_ceil(threads);
                check = check.wrapping_add(head.par_chunks(part).map(sum_bytes).reduce(|| 0, u64::wrapping_add));
            });
            println!(
                "{threads} thread(s)  read {mb:.1} MB: {:.2} ms best, {:.2} ms median = {:.1} / {:.1} GB/s (checksum {check:x})",
                best * 1e3,
                med * 1e3,
                mb / 1e3 / best,
                mb / 1e3 / med
            );
            let products: [Product<'_>; 6] = [
                ("Gemma head Q8_0 262144x640 exact", DType::Q8_0, &head, HEAD_ROWS, HEAD_COLS, &x, true),
                ("Gemma head Q8_0 262144x640 fast ", DType::Q8_0, &head, HEAD_ROWS, HEAD_COLS, &x, false),
                ("SmolLM2 head Q8_0 49152x576 exact", DType::Q8_0, &smol, SMOL_ROWS, SMOL_COLS, &xs, true),
                ("SmolLM2 head Q8_0 49152x576 fast ", DType::Q8_0, &smol, SMOL_ROWS, SMOL_COLS, &xs, false),
                ("SmolLM2 Q4_1 1536x576 exact", DType::Q4_1, &ffn, FFN_ROWS, SMOL_COLS, &xs, true),
                ("SmolLM2 Q4_1 1536x576 fast ", DType::Q4_1, &ffn, FFN_ROWS, SMOL_COLS, &xs, false),
            ];
            for (name, dt, w, rows, cols, x, exact) in products {
                let out = &mut y[..rows];
                let mut failed = None;
                // A matrix that fits the last-level cache (32 MiB here) would stay there between
                // calls; in a decode step the rest of the model passes through in between, so
                // the cache is flushed by reading the 178 MB buffer first, untimed.
                let fits = w.len() < 64 << 20;
                let flush = || {
                    if fits {
                        std::hint::black_box(sum_bytes(&head));
                    }
                };
                let (best, med) = time(reps, flush, || {
                    let r = if exact {
                        fast::matmul_f32_with(isa, dt, w, rows, cols, x, 1, out)
                    } else {
                        fast::matvec_with(isa, dt, w, rows, cols, x, out)
                    };
                    failed = failed.take().or(r.err());
                });
                if let Some(e) = failed {
                    eprintln!("membw: {name}: {e}");
                    std::process::exit(1);
                }
                let mb = w.len() as f64 / 1e6;
                println!(
                    "{threads} thread(s)  {name} ({mb:.1} MB): {:.2} ms best, {:.2} ms median = {:.1} / {:.1} GB/s",
                    best * 1e3,
                    med * 1e3,
                    mb / 1e3 / best,
                    mb / 1e3 / med
                );
            }
        });
    }
}
