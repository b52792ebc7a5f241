//! criterion benches of the fast CPU matvec/matmul (`cpu::fast`) against the CPU reference, per
//! shape of the default model (SmolLM2-135M: Q4_1 layers of 576 / 1536 / 192 rows, the Q8_0
//! output head of 49152 rows) and per kernel set this CPU runs. Each reports the bytes the op
//! must move (weights + activations in and out), so criterion prints GB/s: a matvec is
//! memory-bound, its roofline is the memory bandwidth one or all threads get (or the cache's,
//! for matrices that stay in L2/L3 across iterations, as the small ones here do); a matmul of
//! T tokens does 2 * rows * cols * T flops on the same bytes and is compute-bound, so its
//! roofline is the cores' int8 dot-product rate.
//!
//! `cargo bench --bench cpu_fast` (filter with a substring, e.g. `-- 'matvec q4_1'`); set
//! `RAYON_NUM_THREADS` to compare with a fixed thread count.

#[path = "shared/ops.rs"]
mod ops;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ops::{MODEL, Op};
use strata_kernels::DType;
use strata_kernels::cpu::fast::{self, Isa};

fn cases() -> Vec<Op> {
    let m = MODEL;
    let mut v = Vec::new();
    for (rows, cols) in
        [(m.hidden, m.hidden), (m.kv_heads * m.head_dim, m.hidden), (m.ffn, m.hidden), (m.hidden, m.ffn)]
    {
        for dt in [DType::Q4_1, DType::Q4_0, DType::Q8_0] {
            v.push(Op::Matvec { dt, rows, cols });
        }
        v.push(Op::Matmul { dt: DType::Q4_1, rows, cols, tokens: 64 });
    }
    v.push(Op::Matvec { dt: DType::Q8_0, rows: m.vocab, cols: m.hidden });
    v
}

fn run_fast(isa: Isa, op: Op, w: &[u8], x: &[f32], y: &mut [f32]) {
    let r = match op {
        Op::Matvec { dt, rows, cols } => fast::matvec_with(isa, dt, w, rows, cols, x, y),
        Op::Matmul { dt, rows, cols, tokens } => fast::matmul_with(isa, dt, w, rows, cols, x, tokens, y),
        _ => Ok(()),
    };
    r.expect("fast op");
}

fn cpu_fast(c: &mut Criterion) {
    // Like the `strata` binary, run on rayon's pool with this thread as worker 0, so a call
    // does not pay for handing its work to another thread and waiting for it.
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
    let mut g = c.benchmark_group("cpu_fast");
    for op in cases() {
        let inputs = op.inputs(1);
        let out_len = match op {
            Op::Matvec { rows, .. } => rows,
            Op::Matmul { rows, tokens, .. } => rows * tokens,
            _ => 0,
        };
        g.throughput(Throughput::Bytes(op.bytes()));
        g.bench_function(format!("{} reference", op.label()), |b| b.iter(|| black_box(op.run_cpu(&inputs))));
        for isa in Isa::available() {
            let mut y = vec![0.0f32; out_len];
            g.bench_function(format!("{} fast {}", op.label(), isa.name()), |b| {
                b.iter(|| run_fast(isa, op, black_box(&inputs.w), black_box(&inputs.x), &mut y))
            });
        }
    }
    g.finish();
}

/// The matvecs of one decode step of the default model: 30 layers of distinct weights (Q4_1:
/// q, k, v, o, gate, up, down) and the Q8_0 head, about 96 MB, so unlike the single-matrix cases
/// above the weights come from L3 or DRAM as in a real decode step, not from L2.
fn decode_step(c: &mut Criterion) {
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
    let m = MODEL;
    let kv = m.kv_heads * m.head_dim;
    let layer = [
        (m.hidden, m.hidden),
        (kv, m.hidden),
        (kv, m.hidden),
        (m.hidden, m.hidden),
        (m.ffn, m.hidden),
        (m.ffn, m.hidden),
        (m.hidden, m.ffn),
    ];
    let mut mats: Vec<(DType, usize, usize, Vec<u8>)> = Vec::new();
    for l in 0..30 {
        for (k, &(rows, cols)) in layer.iter().enumerate() {
            let op = Op::Matvec { dt: DType::Q4_1, rows, cols };
            mats.push((DType::Q4_1, rows, cols, op.inputs((l * 7 + k) as u64).w));
        }
    }
    let head = Op::Matvec { dt: DType::Q8_0, rows: m.vocab, cols: m.hidden };
    mats.push((DType::Q8_0, m.vocab, m.hidden, head.inputs(1).w));
    let bytes: usize = mats.iter().map(|(_, _, _, w)| w.len()).sum();
    let x: Vec<f32> = (0..m.ffn).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut y = vec![0.0f32; m.vocab];
    let mut g = c.benchmark_group("cpu_fast");
    g.throughput(Throughput::Bytes(bytes as u64));
    for isa in Isa::available() {
        g.bench_function(format!("decode step smollm2-135m fast {}", isa.name()), |b| {
            b.iter(|| {
                for (dt, rows, cols, w) in &mats {
                    fast::matvec_with(isa, *dt, w, *rows, *cols, &x[..*cols], &mut y[..*rows]).expect("fast matvec");
                }
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(10);
    targets = cpu_fast, decode_step
}
criterion_main!(benches);
