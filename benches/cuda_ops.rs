//! criterion benches of every CUDA kernel, at the default model's and Llama-7B's shapes, timed
//! with CUDA events around batches of launches (criterion's `iter_custom`). Weights are kept
//! in enough copies that repeated launches read DRAM, not L2. Each reports the bytes the op
//! must move, so criterion prints GB/s: compare with the device's memory bandwidth (the GPU
//! report, benches/gpu_report.rs, measures it and prints the fraction).
//!
//! Without a device (or without `--features cuda`) it prints `skipped:` and exits cleanly.

#[cfg(feature = "cuda")]
#[path = "shared/gpu.rs"]
mod gpu;
#[path = "shared/ops.rs"]
mod ops;

#[cfg(feature = "cuda")]
fn main() {
    use std::time::Duration;

    use criterion::{Criterion, Throughput};

    let dev = match gpu::open() {
        Ok(d) => d,
        Err(why) => {
            println!("skipped: CUDA benches: {why}");
            return;
        }
    };
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(600))
        .sample_size(10)
        .configure_from_args();
    let mut g = c.benchmark_group(format!("cuda {}", dev.name));
    for op in ops::cuda_cases() {
        let prepared = match dev.prepare(op, &op.inputs(1), 512 << 20) {
            Ok(p) => p,
            Err(e) => {
                println!("{}: cannot prepare: {e}", op.label());
                continue;
            }
        };
        g.throughput(Throughput::Bytes(op.bytes()));
        g.bench_function(op.label(), |b| {
            b.iter_custom(|iters| {
                let per_launch = dev.time(&prepared, 0, iters as usize, 1).expect("timed launches");
                Duration::from_secs_f64(per_launch[0] * iters as f64)
            })
        });
    }
    g.finish();
    c.final_summary();
}

#[cfg(not(feature = "cuda"))]
fn main() {
    let _ = ops::cuda_cases;
    println!("skipped: CUDA benches: built without cuda (rebuild with --features cuda)");
}
