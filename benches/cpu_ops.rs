//! criterion benches of every op's CPU reference, at the default model's shapes (576, 1536,
//! 49152) and at Llama-7B's (4096, 11008, 32000). Each reports the bytes the op must move, so
//! criterion prints GB/s; the roofline to compare with is the machine's memory bandwidth
//! (these ops are memory-bound on a CPU except matmul, which is compute-bound).
//!
//! `cargo bench --bench cpu_ops` (filter with a substring, e.g. `-- matvec`).

#[path = "shared/ops.rs"]
mod ops;

use std::hint::black_box;
use std::time::Duration;

use criterion::{BatchSize, Criterion, Throughput, criterion_group, criterion_main};
use ops::{Cache, Op};
use strata_kernels::cpu::{self, CacheMut};

fn cpu_ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("cpu");
    for op in ops::cpu_cases() {
        let inputs = op.inputs(1);
        g.throughput(Throughput::Bytes(op.bytes()));
        if let Op::KvAppend { tokens, row_len, .. } = op {
            // Time the append alone, not the copy of the cache that each iteration starts from.
            g.bench_function(op.label(), |b| {
                b.iter_batched_ref(
                    || inputs.k.clone(),
                    |cache| {
                        let m = match cache {
                            Cache::F16(h) => CacheMut::F16(h),
                            Cache::F32(f) => CacheMut::F32(f),
                        };
                        cpu::kv_append(&inputs.x, tokens, row_len, &inputs.ids, m, 2 * tokens).unwrap()
                    },
                    BatchSize::SmallInput,
                )
            });
        } else {
            g.bench_function(op.label(), |b| b.iter(|| black_box(op.run_cpu(&inputs))));
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2)).sample_size(10);
    targets = cpu_ops
}
criterion_main!(benches);
