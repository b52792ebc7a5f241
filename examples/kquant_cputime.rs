//! CPU time per call of the K-quant products (the method of `docs/cpu-bench.md`: process CPU
//! time, `CLOCK_PROCESS_CPUTIME_ID`, of calls on a 1-thread rayon pool repeated for about 1.5 s),
//! which a loaded machine disturbs less than wall time. A measuring tool, not a test.
//!
//!   cargo run --release --example kquant_cputime [SECONDS] [best]
//!
//! With `best`, the kernels are this CPU's best set (`Isa::best`, AVX-512 where present) instead
//! of the AVX2 ones, and Gemma 3's 32-value block products are timed too (Q5_0 gate/up 2048 ×
//! 640, Q8_0 head rows 16384 × 640).

use strata_kernels::cpu::fast::{self, Isa};
use strata_kernels::{DType, quant};

fn cpu_seconds() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant libc defines.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

fn main() {
    let secs: f64 = std::env::args().nth(1).and_then(|s| s.parse().ok()).unwrap_or(1.5);
    let best = std::env::args().nth(2).is_some_and(|a| a == "best");
    let isa = if best { Isa::best() } else { Isa::Avx2 };
    let Ok(pool) = rayon::ThreadPoolBuilder::new().num_threads(1).build() else {
        eprintln!("kquant_cputime: no rayon pool");
        return;
    };
    let mut cases = vec![
        (DType::Q4_K, 640, 2048, 1),
        (DType::Q6_K, 640, 2048, 1),
        (DType::Q4_K, 640, 2048, 64),
        (DType::Q6_K, 640, 2048, 64),
    ];
    if best {
        cases.extend([(DType::Q5_0, 2048, 640, 1), (DType::Q5_0, 2048, 640, 64), (DType::Q8_0, 16384, 640, 1)]);
    }
    println!("kernels: {}", isa.name());
    for (dt, rows, cols, n) in cases {
        let w = quant::random_blocks(dt, rows * cols / dt.block_values(), 7);
        let x: Vec<f32> = (0..n * cols).map(|i| ((i * 7919 % 1000) as f32 - 500.0) / 300.0).collect();
        let mut y = vec![0.0f32; n * rows];
        for (name, exact) in [("exact", true), ("fast", false)] {
            let call = |y: &mut [f32]| {
                let r = if exact {
                    fast::matmul_f32_with(isa, dt, &w, rows, cols, &x, n, y)
                } else {
                    fast::matmul_with(isa, dt, &w, rows, cols, &x, n, y)
                };
                if let Err(e) = r {
                    eprintln!("{e}");
                    std::process::exit(1);
                }
            };
            pool.install(|| {
                call(&mut y);
                let (t0, mut calls) = (cpu_seconds(), 0u32);
                while cpu_seconds() - t0 < secs {
                    call(&mut y);
                    calls += 1;
                }
                let us = (cpu_seconds() - t0) / f64::from(calls) * 1e6;
                let sum: f64 = y.iter().map(|&v| f64::from(v)).sum();
                println!("{dt:?} {rows}x{cols} T={n} {name}: {us:.1} us/call (checksum {sum:.6e})");
            });
        }
    }
}
