//! Every op, on every weight and cache type, against the f64 oracle (CPU reference) and
//! against the CPU reference (CUDA). Shapes come from proptest: odd sizes, tails that are not
//! multiples of 32 or of a block, one token and many.

use proptest::prelude::*;
use rand::seq::SliceRandom;
use strata_kernels::check::{Tolerance, assert_close};
use strata_kernels::{DType, RopeLayout, quant};

use crate::device_test;
use crate::oracle;
use crate::support::{Backend, Cache, Cpu, rng, uniform};

/// `cases` proptest cases, or fewer when `STRATA_TEST_CASES` says so (scripts/gpu-check.sh
/// sets it under compute-sanitizer's racecheck, which slows kernels down a thousandfold).
fn config(cases: u32) -> ProptestConfig {
    let cap = std::env::var("STRATA_TEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(u32::MAX);
    ProptestConfig { cases: cases.min(cap).max(1), failure_persistence: None, ..ProptestConfig::default() }
}

/// The weight types `dev` computes with: all of them on the CPU; on CUDA those with kernels
/// (`cuda::supports`), so a type is tested there as soon as its kernels land.
fn weight_types(dev: &dyn Backend) -> Vec<DType> {
    DType::ALL.into_iter().filter(|&d| dev.name() == "cpu" || strata_kernels::cuda::supports(d)).collect()
}

fn any_dtype(dev: &dyn Backend) -> impl Strategy<Value = DType> {
    prop::sample::select(weight_types(dev))
}

fn any_cache_dtype() -> impl Strategy<Value = DType> {
    prop::sample::select(vec![DType::F32, DType::F16])
}

/// A row length valid for `dt`: whole blocks, plus a ragged tail for plain-float types.
fn cols_for(dt: DType, blocks: usize, tail: usize) -> usize {
    if dt.is_quantized() { blocks.max(1) * dt.block_values() } else { (blocks * 32 + tail).max(1) }
}

/// Quantized uniform values, or valid random blocks for the types strata does not quantize to.
fn random_matrix(seed: u64, dt: DType, rows: usize, cols: usize) -> Vec<u8> {
    let values = uniform(&mut rng(seed), rows * cols, 1.0);
    match quant::quantize_matrix(dt, &values, rows, cols) {
        Ok(w) => w,
        Err(_) => quant::random_blocks(dt, rows * cols / dt.block_values(), seed),
    }
}

/// The label of a device-vs-reference comparison.
fn vs_cpu(dev: &dyn Backend, what: &str) -> String {
    format!("{what}: {} vs cpu reference", dev.name())
}

fn dequantize_body(dev: &dyn Backend) {
    proptest!(config(48), |(dt in any_dtype(dev), rows in 1usize..9, blocks in 0usize..12, tail in 0usize..32, seed: u64)| {
        let cols = cols_for(dt, blocks, tail);
        let w = random_matrix(seed, dt, rows, cols);
        let want = Cpu.dequantize_rows(dt, &w, rows, cols);
        assert_close("dequantize: cpu vs oracle", &want, &oracle::dequantize(dt, &w, rows, cols), Tolerance::F32_ROUNDING);
        let label = vs_cpu(dev, &format!("dequantize {dt} {rows}x{cols}"));
        assert_close(&label, &dev.dequantize_rows(dt, &w, rows, cols), &want, Tolerance::STRICT);
    });
}
device_test!(dequantize_rows, dequantize_body);

fn gather_body(dev: &dyn Backend) {
    proptest!(config(32), |(dt in any_dtype(dev), n_vocab in 1usize..300, blocks in 0usize..6, tail in 0usize..32, n_ids in 1usize..20, seed: u64)| {
        let dim = cols_for(dt, blocks, tail);
        let table = random_matrix(seed, dt, n_vocab, dim);
        let ids: Vec<i32> = (0..n_ids).map(|i| ((seed as usize / 7 + i * 131) % n_vocab) as i32).collect();
        let want = Cpu.embedding_gather(dt, &table, n_vocab, dim, &ids);
        let full = oracle::dequantize(dt, &table, n_vocab, dim);
        let oracle_rows: Vec<f64> = ids.iter().flat_map(|&id| full[id as usize * dim..][..dim].to_vec()).collect();
        assert_close("gather: cpu vs oracle", &want, &oracle_rows, Tolerance::F32_ROUNDING);
        let label = vs_cpu(dev, &format!("embedding_gather {dt} dim {dim}"));
        assert_close(&label, &dev.embedding_gather(dt, &table, n_vocab, dim, &ids), &want, Tolerance::STRICT);
    });
}
device_test!(embedding_gather, gather_body);

fn matvec_body(dev: &dyn Backend) {
    proptest!(config(48), |(dt in any_dtype(dev), rows in 1usize..70, blocks in 0usize..14, tail in 0usize..32, seed: u64)| {
        let cols = cols_for(dt, blocks, tail);
        let w = random_matrix(seed, dt, rows, cols);
        let x = uniform(&mut rng(seed ^ 1), cols, 1.0);
        let want = Cpu.matvec(dt, &w, rows, cols, &x);
        assert_close("matvec: cpu vs oracle", &want, &oracle::matmul(dt, &w, rows, cols, &x, 1), Tolerance::F32_ACCUMULATION);
        let label = vs_cpu(dev, &format!("matvec {dt} {rows}x{cols}"));
        assert_close(&label, &dev.matvec(dt, &w, rows, cols, &x), &want, Tolerance::F32_ACCUMULATION);
    });
}
device_test!(matvec, matvec_body);

fn matmul_body(dev: &dyn Backend) {
    proptest!(config(32), |(dt in any_dtype(dev), rows in 1usize..80, blocks in 0usize..8, tail in 0usize..32, n_tokens in 1usize..72, seed: u64)| {
        let cols = cols_for(dt, blocks, tail);
        let w = random_matrix(seed, dt, rows, cols);
        let x = uniform(&mut rng(seed ^ 2), n_tokens * cols, 1.0);
        let want = Cpu.matmul(dt, &w, rows, cols, &x, n_tokens);
        assert_close("matmul: cpu vs oracle", &want, &oracle::matmul(dt, &w, rows, cols, &x, n_tokens), Tolerance::F32_ACCUMULATION);
        let label = vs_cpu(dev, &format!("matmul {dt} {rows}x{cols} T={n_tokens}"));
        assert_close(&label, &dev.matmul(dt, &w, rows, cols, &x, n_tokens), &want, Tolerance::F32_ACCUMULATION);
    });
}
device_test!(matmul, matmul_body);

/// Every weight type the device has kernels for, deterministically (the proptests above draw
/// a type per case, so with 15 types one of them can go unexercised in a run): dequantize and
/// gather bit for bit, matvec and matmul under f32 accumulation, at shapes with tails (odd row
/// counts, 67 tokens, not a multiple of the 64-token matmul tile; ragged rows for float types).
/// The CPU reference itself is held to the f64 oracle first, so the `_cpu` variant checks it.
fn every_weight_type_body(dev: &dyn Backend) {
    for dt in weight_types(dev) {
        let (rows, cols) = (67, cols_for(dt, 3, 7));
        let w = random_matrix(0x5eed ^ dt.ggml_type() as u64, dt, rows, cols);
        let want = Cpu.dequantize_rows(dt, &w, rows, cols);
        let oracle_label = format!("dequantize {dt}: cpu vs oracle");
        assert_close(&oracle_label, &want, &oracle::dequantize(dt, &w, rows, cols), Tolerance::F32_ROUNDING);
        let label = vs_cpu(dev, &format!("dequantize {dt} {rows}x{cols}"));
        assert_close(&label, &dev.dequantize_rows(dt, &w, rows, cols), &want, Tolerance::STRICT);
        let ids: Vec<i32> = vec![66, 0, 31, 31, 5];
        let want = Cpu.embedding_gather(dt, &w, rows, cols, &ids);
        let label = vs_cpu(dev, &format!("embedding_gather {dt} dim {cols}"));
        assert_close(&label, &dev.embedding_gather(dt, &w, rows, cols, &ids), &want, Tolerance::STRICT);
        let x = uniform(&mut rng(9), 67 * cols, 1.0);
        let want = Cpu.matvec(dt, &w, rows, cols, &x[..cols]);
        let oracle_label = format!("matvec {dt}: cpu vs oracle");
        let oracle_want = oracle::matmul(dt, &w, rows, cols, &x[..cols], 1);
        assert_close(&oracle_label, &want, &oracle_want, Tolerance::F32_ACCUMULATION);
        let label = vs_cpu(dev, &format!("matvec {dt} {rows}x{cols}"));
        assert_close(&label, &dev.matvec(dt, &w, rows, cols, &x[..cols]), &want, Tolerance::F32_ACCUMULATION);
        let want = Cpu.matmul(dt, &w, rows, cols, &x, 67);
        let oracle_label = format!("matmul {dt}: cpu vs oracle");
        assert_close(&oracle_label, &want, &oracle::matmul(dt, &w, rows, cols, &x, 67), Tolerance::F32_ACCUMULATION);
        let label = vs_cpu(dev, &format!("matmul {dt} {rows}x{cols} T=67"));
        assert_close(&label, &dev.matmul(dt, &w, rows, cols, &x, 67), &want, Tolerance::F32_ACCUMULATION);
    }
}
device_test!(every_weight_type, every_weight_type_body);

/// The default model's shapes (576 / 1536 / 192 rows and columns) in each weight type, one
/// token and a prefill batch that is not a multiple of the matmul tile.
fn model_shapes_body(dev: &dyn Backend) {
    for dt in weight_types(dev) {
        // 576 columns are not whole 256-value super-blocks: those types take the 1536-wide one.
        for (rows, cols) in [(576, 576), (192, 576), (1536, 576), (576, 1536)] {
            if dt.row_bytes(cols).is_err() {
                continue;
            }
            let w = random_matrix(rows as u64 * 7 + cols as u64, dt, rows, cols);
            let x = uniform(&mut rng(3), 67 * cols, 1.0);
            let want = Cpu.matvec(dt, &w, rows, cols, &x[..cols]);
            let label = vs_cpu(dev, &format!("matvec {dt} {rows}x{cols}"));
            assert_close(&label, &dev.matvec(dt, &w, rows, cols, &x[..cols]), &want, Tolerance::F32_ACCUMULATION);
            let want = Cpu.matmul(dt, &w, rows, cols, &x, 67);
            let label = vs_cpu(dev, &format!("matmul {dt} {rows}x{cols} T=67"));
            assert_close(&label, &dev.matmul(dt, &w, rows, cols, &x, 67), &want, Tolerance::F32_ACCUMULATION);
        }
    }
}
device_test!(model_shapes, model_shapes_body);

fn rmsnorm_body(dev: &dyn Backend) {
    proptest!(config(32), |(n_rows in 1usize..6, dim in 1usize..1300, eps in prop::sample::select(vec![1e-5f32, 1e-6, 0.0]), seed: u64)| {
        let x = uniform(&mut rng(seed), n_rows * dim, 3.0);
        let w = uniform(&mut rng(seed ^ 3), dim, 2.0);
        let want = Cpu.rmsnorm(&x, &w, n_rows, dim, eps);
        assert_close("rmsnorm: cpu vs oracle", &want, &oracle::rmsnorm(&x, &w, dim, eps), Tolerance::F32_ACCUMULATION);
        let label = vs_cpu(dev, &format!("rmsnorm {n_rows}x{dim}"));
        assert_close(&label, &dev.rmsnorm(&x, &w, n_rows, dim, eps), &want, Tolerance::F32_ACCUMULATION);
    });
}
device_test!(rmsnorm, rmsnorm_body);

fn rope_body(dev: &dyn Backend) {
    let layouts = vec![RopeLayout::Adjacent, RopeLayout::HalfSplit];
    proptest!(config(48), |(n_tokens in 1usize..6, n_heads in 1usize..5, half_dim in 1usize..65, rot_frac in 1usize..=4,
                            layout in prop::sample::select(layouts.clone()),
                            base in prop::sample::select(vec![10000.0f32, 100000.0, 500000.0]),
                            fscale in prop::sample::select(vec![1.0f32, 0.25]), with_factors: bool, seed: u64)| {
        let head_dim = 2 * half_dim;
        let n_rot = 2 * (half_dim * rot_frac).div_ceil(4);
        let x = uniform(&mut rng(seed), n_tokens * n_heads * head_dim, 2.0);
        let positions: Vec<i32> = (0..n_tokens).map(|t| ((seed >> 8) as i32 & 0x1FFF) + t as i32).collect();
        // Llama 3.1-style divisors: 1 for high frequencies, up to 8 for low ones.
        let factors: Vec<f32> = (0..n_rot / 2).map(|i| 1.0 + 7.0 * (i as f32 / (n_rot / 2) as f32).powi(2)).collect();
        let ff = with_factors.then_some(&factors[..]);
        let want = Cpu.rope(&x, n_tokens, n_heads, head_dim, &positions, n_rot, base, fscale, ff, layout);
        let oracle = oracle::rope(&x, n_heads, head_dim, &positions, n_rot, base, fscale, ff, layout);
        assert_close("rope: cpu vs oracle", &want, &oracle, Tolerance::F32_ROUNDING);
        let label = vs_cpu(dev, &format!("rope {layout:?} head_dim {head_dim} n_rot {n_rot} factors {with_factors}"));
        let got = dev.rope(&x, n_tokens, n_heads, head_dim, &positions, n_rot, base, fscale, ff, layout);
        assert_close(&label, &got, &want, Tolerance::F32_ROUNDING);
    });
}
device_test!(rope, rope_body);

struct AttnCase {
    n_heads: usize,
    k: Cache,
    v: Cache,
    scale: f32,
}

fn attn_case(dt: DType, n_kv_heads: usize, group: usize, head_dim: usize, rows: usize, seed: u64) -> AttnCase {
    let len = rows * n_kv_heads * head_dim;
    AttnCase {
        n_heads: n_kv_heads * group,
        k: Cache::from_f32(dt, &uniform(&mut rng(seed ^ 4), len, 1.0)),
        v: Cache::from_f32(dt, &uniform(&mut rng(seed ^ 5), len, 1.0)),
        scale: 1.0 / (head_dim as f32).sqrt(),
    }
}

fn head_dims() -> impl Strategy<Value = usize> {
    prop::sample::select(vec![8usize, 17, 24, 64, 80, 96, 128, 130, 256])
}

/// No window, a sliding window shorter than most contexts (1 included: a query sees only
/// itself), or one longer than any context here.
fn windows() -> impl Strategy<Value = Option<usize>> {
    prop_oneof![Just(None), (1usize..40).prop_map(Some), (1usize..300).prop_map(Some), Just(Some(4096))]
}

fn attention_decode_body(dev: &dyn Backend) {
    proptest!(config(32), |(dt in any_cache_dtype(), n_kv_heads in 1usize..4, group in 1usize..4, head_dim in head_dims(),
                            n_kv in 1usize..400, extra in 0usize..3, window in windows(), seed: u64)| {
        let c = attn_case(dt, n_kv_heads, group, head_dim, n_kv + extra, seed);
        let q = uniform(&mut rng(seed), c.n_heads * head_dim, 2.0);
        let want = Cpu.attention_decode(&q, &c.k, &c.v, c.n_heads, n_kv_heads, head_dim, n_kv, c.scale, window);
        let oracle = oracle::attention(&q, 1, n_kv - 1, &c.k.to_f32(), &c.v.to_f32(), c.n_heads, n_kv_heads, head_dim, c.scale, window);
        assert_close("attention_decode: cpu vs oracle", &want, &oracle, Tolerance::F32_ACCUMULATION);
        let label = vs_cpu(dev, &format!("attention_decode {dt} kv {n_kv} window {window:?} heads {}/{n_kv_heads} dim {head_dim}", c.n_heads));
        let got = dev.attention_decode(&q, &c.k, &c.v, c.n_heads, n_kv_heads, head_dim, n_kv, c.scale, window);
        assert_close(&label, &got, &want, Tolerance::F32_ACCUMULATION);
    });
}
device_test!(attention_decode, attention_decode_body);

fn attention_prefill_body(dev: &dyn Backend) {
    proptest!(config(32), |(dt in any_cache_dtype(), n_kv_heads in 1usize..4, group in 1usize..4, head_dim in head_dims(),
                            n_tokens in 1usize..12, pos0 in 0usize..150, window in windows(), seed: u64)| {
        let c = attn_case(dt, n_kv_heads, group, head_dim, pos0 + n_tokens + 1, seed);
        let q = uniform(&mut rng(seed), n_tokens * c.n_heads * head_dim, 2.0);
        let want = Cpu.attention_prefill(&q, n_tokens, pos0, &c.k, &c.v, c.n_heads, n_kv_heads, head_dim, c.scale, window);
        let oracle = oracle::attention(&q, n_tokens, pos0, &c.k.to_f32(), &c.v.to_f32(), c.n_heads, n_kv_heads, head_dim, c.scale, window);
        assert_close("attention_prefill: cpu vs oracle", &want, &oracle, Tolerance::F32_ACCUMULATION);
        let label = vs_cpu(dev, &format!("attention_prefill {dt} T {n_tokens} pos0 {pos0} window {window:?} dim {head_dim}"));
        let got = dev.attention_prefill(&q, n_tokens, pos0, &c.k, &c.v, c.n_heads, n_kv_heads, head_dim, c.scale, window);
        assert_close(&label, &got, &want, Tolerance::F32_ACCUMULATION);
    });
}
device_test!(attention_prefill, attention_prefill_body);

/// The window's edges on the reference: a window at least as long as the context is global
/// attention bit for bit; a window of 1 sees only the query's own row (softmax of one score),
/// so the output is that row of V exactly; a window of w gives the same result as global
/// attention over a cache holding only the last w rows (the positions it must see, no more).
#[test]
fn attention_window_edges() {
    let (n_kv_heads, group, head_dim, n_tokens, pos0) = (2, 2, 24, 5, 9);
    let rows = pos0 + n_tokens;
    let c = attn_case(DType::F32, n_kv_heads, group, head_dim, rows, 11);
    let q = uniform(&mut rng(12), n_tokens * c.n_heads * head_dim, 2.0);
    let run = |w| Cpu.attention_prefill(&q, n_tokens, pos0, &c.k, &c.v, c.n_heads, n_kv_heads, head_dim, c.scale, w);
    let global = run(None);
    assert_eq!(run(Some(rows)), global, "window = the whole context");
    assert_eq!(run(Some(10 * rows)), global, "window longer than the context");
    let (k, v) = (c.k.to_f32(), c.v.to_f32());
    let row = n_kv_heads * head_dim;
    let one = run(Some(1));
    for t in 0..n_tokens {
        for h in 0..c.n_heads {
            let got = &one[(t * c.n_heads + h) * head_dim..][..head_dim];
            let want = &v[(pos0 + t) * row + (h / group) * head_dim..][..head_dim];
            assert_eq!(got, want, "window 1: token {t} head {h} is its own V row");
        }
    }
    // Decode at position p = rows - 1 with window w: the same as global attention over a
    // cache whose rows are p+1-w..=p.
    let w = 4;
    let qd = &q[..c.n_heads * head_dim];
    let got = Cpu.attention_decode(qd, &c.k, &c.v, c.n_heads, n_kv_heads, head_dim, rows, c.scale, Some(w));
    let tail = |x: &[f32]| Cache::from_f32(DType::F32, &x[(rows - w) * row..]);
    let want = Cpu.attention_decode(qd, &tail(&k), &tail(&v), c.n_heads, n_kv_heads, head_dim, w, c.scale, None);
    assert_close("decode window 4 vs the last 4 rows", &got, &want, Tolerance::STRICT);
}

/// gelu_mul at the tails of the tanh approximation, zero and tiny values, against the f64
/// formula, plus a value known from the literature: gelu_tanh(1) = 0.841192 (to 6 places).
#[test]
fn gelu_mul_against_the_f64_formula() {
    let gate = [-100.0f32, -10.0, -5.0, -3.0, -1.0, -0.5, -1e-3, 0.0, 1e-3, 0.5, 1.0, 3.0, 5.0, 10.0, 100.0];
    let up: Vec<f32> = (0..gate.len()).map(|i| 0.5 + i as f32 * 0.25).collect();
    let got = Cpu.gelu_mul(&gate, &up);
    assert_close("gelu_mul vs f64", &got, &oracle::gelu_mul(&gate, &up), Tolerance::F32_ROUNDING);
    let one = Cpu.gelu_mul(&[1.0], &[1.0])[0];
    assert!((one - 0.841_192).abs() < 1e-6, "gelu_tanh(1) = {one}");
    assert_eq!(Cpu.gelu_mul(&[0.0, -100.0], &[3.0, 3.0]), [0.0, 0.0], "gelu(0) and the far negative tail are 0");
    assert_eq!(Cpu.gelu_mul(&[100.0], &[2.0]), [200.0], "the far positive tail is x");
}

fn kv_append_body(dev: &dyn Backend) {
    proptest!(config(32), |(dt in any_cache_dtype(), n_tokens in 1usize..10, row_len in 1usize..300, spare in 0usize..20, seed: u64)| {
        let rows = n_tokens + spare;
        let cache = Cache::from_f32(dt, &uniform(&mut rng(seed), rows * row_len, 1.0));
        let src = uniform(&mut rng(seed ^ 6), n_tokens * row_len, 100.0);
        // Distinct positions (a repeated one would make the result depend on write order), in
        // a shuffled order.
        let offset = (seed % (spare as u64 + 1)) as i32;
        let mut positions: Vec<i32> = (0..n_tokens as i32).map(|t| t + offset).collect();
        positions.shuffle(&mut rng(seed ^ 8));
        let want = Cpu.kv_append(&src, n_tokens, row_len, &positions, &cache);
        // Oracle: the untouched rows are unchanged and appended rows are the values rounded once.
        let mut expect = cache.to_f32();
        for (t, &p) in positions.iter().enumerate() {
            for j in 0..row_len {
                let v = src[t * row_len + j];
                expect[p as usize * row_len + j] = if dt == DType::F16 { half::f16::from_f32(v).to_f32() } else { v };
            }
        }
        assert_close("kv_append: cpu vs oracle", &want.to_f32(), &expect, Tolerance::STRICT);
        let label = vs_cpu(dev, &format!("kv_append {dt} T {n_tokens} row {row_len}"));
        assert_close(&label, &dev.kv_append(&src, n_tokens, row_len, &positions, &cache).to_f32(), &want.to_f32(), Tolerance::STRICT);
    });
}
device_test!(kv_append, kv_append_body);

fn elementwise_body(dev: &dyn Backend) {
    proptest!(config(32), |(n in 1usize..5000, s in -4.0f32..4.0, seed: u64)| {
        let a = uniform(&mut rng(seed), n, 12.0);
        let b = uniform(&mut rng(seed ^ 7), n, 3.0);
        let want = Cpu.silu_mul(&a, &b);
        assert_close("silu_mul: cpu vs oracle", &want, &oracle::silu_mul(&a, &b), Tolerance::F32_ROUNDING);
        assert_close(&vs_cpu(dev, "silu_mul"), &dev.silu_mul(&a, &b), &want, Tolerance::F32_ROUNDING);

        let want = Cpu.gelu_mul(&a, &b);
        assert_close("gelu_mul: cpu vs oracle", &want, &oracle::gelu_mul(&a, &b), Tolerance::F32_ROUNDING);
        assert_close(&vs_cpu(dev, "gelu_mul"), &dev.gelu_mul(&a, &b), &want, Tolerance::F32_ROUNDING);

        let want = Cpu.add(&a, &b);
        let exact: Vec<f64> = a.iter().zip(&b).map(|(&x, &y)| x as f64 + y as f64).collect();
        assert_close("add: cpu vs oracle", &want, &exact, Tolerance::F32_ROUNDING);
        assert_close(&vs_cpu(dev, "add"), &dev.add(&a, &b), &want, Tolerance::STRICT);

        let cols = 1 + (seed % 97) as usize % n;
        let rows = n / cols;
        let x = &a[..rows * cols];
        let bias = &b[..cols];
        let want = Cpu.add_bias(x, bias, rows, cols);
        let exact: Vec<f64> = x.iter().enumerate().map(|(i, &v)| v as f64 + bias[i % cols] as f64).collect();
        assert_close("add_bias: cpu vs oracle", &want, &exact, Tolerance::F32_ROUNDING);
        assert_close(&vs_cpu(dev, "add_bias"), &dev.add_bias(x, bias, rows, cols), &want, Tolerance::STRICT);

        let want = Cpu.scale(&a, s);
        let exact: Vec<f64> = a.iter().map(|&x| x as f64 * s as f64).collect();
        assert_close("scale: cpu vs oracle", &want, &exact, Tolerance::F32_ROUNDING);
        assert_close(&vs_cpu(dev, "scale"), &dev.scale(&a, s), &want, Tolerance::STRICT);
    });
}
device_test!(elementwise, elementwise_body);

fn softmax_body(dev: &dyn Backend) {
    proptest!(config(32), |(rows in 1usize..5, cols in 1usize..3000, seed: u64)| {
        let x = uniform(&mut rng(seed), rows * cols, 10.0);
        let want = Cpu.softmax_rows(&x, rows, cols);
        assert_close("softmax: cpu vs oracle", &want, &oracle::softmax_rows(&x, cols), Tolerance::F32_ACCUMULATION);
        assert_close(&vs_cpu(dev, &format!("softmax {rows}x{cols}")), &dev.softmax_rows(&x, rows, cols), &want, Tolerance::F32_ACCUMULATION);
    });
}
device_test!(softmax_rows, softmax_body);

fn argmax_body(dev: &dyn Backend) {
    proptest!(config(48), |(rows in 1usize..5, cols in 1usize..3000, levels in 1u32..6, nan_every in 0usize..7, seed: u64)| {
        // Few distinct levels force ties (the smallest index must win); some NaNs are ignored.
        let mut x: Vec<f32> = uniform(&mut rng(seed), rows * cols, 1.0).iter().map(|v| ((v + 1.0) * levels as f32 / 2.0).floor()).collect();
        if nan_every > 0 {
            for v in x.iter_mut().step_by(nan_every + 1) {
                *v = f32::NAN;
            }
        }
        let want = Cpu.argmax_rows(&x, rows, cols);
        assert_eq!(want, oracle::argmax_rows(&x, cols), "argmax: cpu vs oracle");
        assert_eq!(dev.argmax_rows(&x, rows, cols), want, "{}", vs_cpu(dev, "argmax"));
    });
}
device_test!(argmax_rows, argmax_body);
