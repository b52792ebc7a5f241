//! criterion benches of the fast CPU matvec/matmul (8-bit activations, "fast"; f32
//! activations, "f32act", the default `exact` path) and attention (`cpu::fast`) against the CPU
//! reference, per shape of the default model (SmolLM2-135M: Q4_1 layers of 576 / 1536 / 192
//! rows, the Q8_0 output head of 49152 rows, 9/3 heads of 64), every quantized type on a
//! 2048 x 2048 matrix, and per kernel set this CPU runs. Each reports the bytes the op must move (weights + activations in and out), so criterion prints GB/s: a matvec is
//! memory-bound, its roofline is the memory bandwidth one or all threads get (or the cache's,
//! for matrices that stay in L2/L3 across iterations, as the small ones here do); a matmul of
//! T tokens does 2 * rows * cols * T flops on the same bytes and is compute-bound, so its
//! roofline is the cores' int8 dot-product rate. Attention reads the KV cache once (the bytes
//! reported) and is compute-bound in prefill (T^2 / 2 score and weight products per head).
//!
//! `cargo bench --bench cpu_fast` (filter with a substring, e.g. `-- 'matvec q4_1'`); set
//! `RAYON_NUM_THREADS` to compare with a fixed thread count.

#[path = "shared/ops.rs"]
mod ops;

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ops::{Inputs, MODEL, Op};
use strata_kernels::DType;
use strata_kernels::cpu::fast::{self, Isa};
use strata_kernels::cuda::PrefillKernel;

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
    // The types strata reads but does not write (random valid blocks), on the down
    // projection's shape (1536 columns: whole 256-value super-blocks), beside Q4_1 there.
    for dt in [
        DType::Q4_K,
        DType::Q5_K,
        DType::Q6_K,
        DType::Q3_K,
        DType::Q2_K,
        DType::Q5_0,
        DType::Q5_1,
        DType::IQ4_NL,
        DType::IQ4_XS,
    ] {
        v.push(Op::Matvec { dt, rows: m.hidden, cols: m.ffn });
    }
    v.push(Op::Matmul { dt: DType::Q4_K, rows: m.hidden, cols: m.ffn, tokens: 64 });
    v.push(Op::Matmul { dt: DType::Q6_K, rows: m.hidden, cols: m.ffn, tokens: 64 });
    // Every quantized type on one 2048 x 2048 matrix (whole super-blocks; 1.3 to 4.5 MB of
    // weights, held in L3 across iterations), for the exact and fast paths side by side.
    for dt in DType::QUANTIZED {
        v.push(Op::Matvec { dt, rows: 2048, cols: 2048 });
    }
    // Gemma 3 270M Q4_K_M's layer types and shapes (hidden 640, FFN 2048, q 1024 rows): Q5_0
    // gate/up/q, Q4_K output and down, Q6_K down; 64-token prefill tiles of each.
    for (dt, rows, cols) in [(DType::Q5_0, 2048, 640), (DType::Q4_K, 640, 2048), (DType::Q6_K, 640, 2048)] {
        v.push(Op::Matvec { dt, rows, cols });
        v.push(Op::Matmul { dt, rows, cols, tokens: 64 });
    }
    // The K-quants' small batches (a `--lookup` verification pass, the end of a prefill): on
    // AVX-512 two 4-token tiles of `f32act_k512` (exact) and one 8-token tile of `avx512_k`
    // (fast), on AVX2 one 8-token tile of each.
    for dt in [DType::Q4_K, DType::Q6_K] {
        v.push(Op::Matmul { dt, rows: 640, cols: 2048, tokens: 8 });
    }
    let (heads, kv_heads, head_dim) = (m.heads, m.kv_heads, m.head_dim);
    for n_kv in [256, 1024] {
        v.push(Op::AttentionDecode { cache: DType::F16, heads, kv_heads, head_dim, n_kv });
    }
    v.push(Op::AttentionPrefill {
        cache: DType::F16,
        heads,
        kv_heads,
        head_dim,
        tokens: 256,
        kernel: PrefillKernel::Proven,
    });
    v
}

/// The fast path of `op` with the kernel set `isa` (attention picks its own: `Isa::best`).
fn run_fast(isa: Isa, op: Op, i: &Inputs, y: &mut [f32]) {
    let scale = |hd: usize| 1.0 / (hd as f32).sqrt();
    let r = match op {
        Op::Matvec { dt, rows, cols } => fast::matvec_with(isa, dt, &i.w, rows, cols, &i.x, y),
        Op::Matmul { dt, rows, cols, tokens } => fast::matmul_with(isa, dt, &i.w, rows, cols, &i.x, tokens, y),
        Op::AttentionDecode { heads, kv_heads, head_dim, n_kv, .. } => fast::attention_decode(
            &i.x,
            i.k.as_ref(),
            i.v.as_ref(),
            heads,
            kv_heads,
            head_dim,
            n_kv,
            scale(head_dim),
            None,
            y,
        ),
        Op::AttentionPrefill { heads, kv_heads, head_dim, tokens, .. } => {
            let (k, v) = (i.k.as_ref(), i.v.as_ref());
            fast::attention_prefill(&i.x, tokens, 0, k, v, heads, kv_heads, head_dim, scale(head_dim), None, y)
        }
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
            Op::AttentionDecode { heads, head_dim, .. } => heads * head_dim,
            Op::AttentionPrefill { heads, head_dim, tokens, .. } => tokens * heads * head_dim,
            _ => 0,
        };
        // Attention has one fast variant (it picks its kernels itself); the products one per
        // kernel set.
        let isas =
            if matches!(op, Op::Matvec { .. } | Op::Matmul { .. }) { Isa::available() } else { vec![Isa::best()] };
        g.throughput(Throughput::Bytes(op.bytes()));
        g.bench_function(format!("{} reference", op.label()), |b| b.iter(|| black_box(op.run_cpu(&inputs))));
        for isa in isas {
            let mut y = vec![0.0f32; out_len];
            let has_8bit = match op {
                Op::Matvec { dt, .. } | Op::Matmul { dt, .. } => fast::supports_8bit(dt),
                _ => true,
            };
            if has_8bit {
                g.bench_function(format!("{} fast {}", op.label(), isa.name()), |b| {
                    b.iter(|| run_fast(isa, op, black_box(&inputs), &mut y))
                });
            }
            if let Op::Matvec { dt, rows, cols } | Op::Matmul { dt, rows, cols, .. } = op {
                let tokens = if let Op::Matmul { tokens, .. } = op { tokens } else { 1 };
                g.bench_function(format!("{} f32act {}", op.label(), isa.name()), |b| {
                    b.iter(|| {
                        let i = black_box(&inputs);
                        fast::matmul_f32_with(isa, dt, &i.w, rows, cols, &i.x, tokens, &mut y).expect("f32act op")
                    })
                });
            }
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
        g.bench_function(format!("decode step smollm2-135m f32act {}", isa.name()), |b| {
            b.iter(|| {
                for (dt, rows, cols, w) in &mats {
                    fast::matmul_f32_with(isa, *dt, w, *rows, *cols, &x[..*cols], 1, &mut y[..*rows])
                        .expect("f32act matvec");
                }
            })
        });
    }
    g.finish();
}

/// The matvecs of one decode step of Gemma 3 270M Q4_K_M: 18 layers of its tensor types
/// (q, k, gate, up Q5_0; v Q8_0; output Q4_K; down Q6_K in every other layer, Q4_K in the
/// others, as in the file) and the tied Q8_0 head of 262144 × 640 (178 MB, 70% of the bytes),
/// about 245 MB: far more than L3, so the step streams from DRAM as a real one does.
fn decode_step_gemma(c: &mut Criterion) {
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
    let (hidden, ffn, q, kv, vocab) = (640, 2048, 1024, 256, 262_144);
    let mut mats: Vec<(DType, usize, usize, Vec<u8>)> = Vec::new();
    for l in 0..18 {
        let down = if l % 2 == 0 { DType::Q6_K } else { DType::Q4_K };
        let layer = [
            (DType::Q5_0, q, hidden),
            (DType::Q5_0, kv, hidden),
            (DType::Q8_0, kv, hidden),
            (DType::Q4_K, hidden, q),
            (DType::Q5_0, ffn, hidden),
            (DType::Q5_0, ffn, hidden),
            (down, hidden, ffn),
        ];
        for (k, &(dt, rows, cols)) in layer.iter().enumerate() {
            mats.push((dt, rows, cols, Op::Matvec { dt, rows, cols }.inputs((l * 7 + k) as u64).w));
        }
    }
    let head = Op::Matvec { dt: DType::Q8_0, rows: vocab, cols: hidden };
    mats.push((DType::Q8_0, vocab, hidden, head.inputs(1).w));
    let x: Vec<f32> = (0..ffn).map(|i| ((i * 37 % 101) as f32 - 50.0) / 50.0).collect();
    let mut y = vec![0.0f32; vocab];
    let mut g = c.benchmark_group("cpu_fast");
    let isa = Isa::best();
    let (layers, head) = mats.split_at(mats.len() - 1);
    for (what, set) in [("layers+head", &mats[..]), ("layers", layers), ("head", head)] {
        g.throughput(Throughput::Bytes(set.iter().map(|m| m.3.len() as u64).sum()));
        g.bench_function(format!("decode step gemma3-270m {what} fast {}", isa.name()), |b| {
            b.iter(|| {
                for (dt, rows, cols, w) in set {
                    fast::matvec_with(isa, *dt, w, *rows, *cols, &x[..*cols], &mut y[..*rows]).expect("fast matvec");
                }
            })
        });
        g.bench_function(format!("decode step gemma3-270m {what} f32act {}", isa.name()), |b| {
            b.iter(|| {
                for (dt, rows, cols, w) in set {
                    fast::matmul_f32_with(isa, *dt, w, *rows, *cols, &x[..*cols], 1, &mut y[..*rows])
                        .expect("f32act matvec");
                }
            })
        });
    }
    g.finish();
}

/// The attention of one decode step of the default model after a 512-token prompt: 30 layers'
/// f16 KV caches (12 MB in all, so the step reads them from L3 or DRAM, not from L2 as the
/// one-cache cases of [`cpu_fast`] do), the fast kernel against the reference. Decode attention
/// reads each cache once, so its roofline is the bandwidth the caches come from.
fn decode_step_attention(c: &mut Criterion) {
    let _ = rayon::ThreadPoolBuilder::new().use_current_thread().build_global();
    let m = MODEL;
    let (heads, kv_heads, head_dim, n_kv) = (m.heads, m.kv_heads, m.head_dim, 512);
    let op = Op::AttentionDecode { cache: DType::F16, heads, kv_heads, head_dim, n_kv };
    let layers: Vec<Inputs> = (0..30).map(|l| op.inputs(l)).collect();
    let mut y = vec![0.0f32; heads * head_dim];
    let mut g = c.benchmark_group("cpu_fast");
    g.throughput(Throughput::Bytes(30 * op.bytes()));
    g.bench_function("decode step smollm2-135m attention 512 positions reference", |b| {
        b.iter(|| {
            for i in &layers {
                black_box(op.run_cpu(i));
            }
        })
    });
    g.bench_function(format!("decode step smollm2-135m attention 512 positions fast {}", Isa::best().name()), |b| {
        b.iter(|| {
            for i in &layers {
                run_fast(Isa::best(), op, black_box(i), &mut y);
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1)).sample_size(10);
    targets = cpu_fast, decode_step, decode_step_gemma, decode_step_attention
}
criterion_main!(benches);
