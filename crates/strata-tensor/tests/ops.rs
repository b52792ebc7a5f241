//! Every op through the tensor API, on the CPU and on CUDA, against the kernel crate's CPU
//! reference called directly (and, where the host takes a vectorized path, `cpu::fast`); plus the
//! typed errors for bad shapes, types and devices.

use half::f16;
use strata_kernels::check::{Tolerance, assert_close};
use strata_kernels::cpu::{self, CacheMut, CacheRef};
use strata_kernels::quant;
use strata_tensor::{DType, Error, RopeLayout, Stream, Tensor, ops};

use crate::device_test;
use crate::support::{on, poisoned, tol, uniform};

type K = strata_kernels::DType;

fn weights(dt: K, rows: usize, cols: usize, seed: u64) -> (Vec<u8>, Tensor) {
    let bytes = quant::quantize_matrix(dt, &uniform(seed, rows * cols, 1.0), rows, cols).unwrap();
    let t = Tensor::from_bytes(dt.into(), &[rows, cols], &bytes).unwrap();
    (bytes, t)
}

fn f32t(shape: &[usize], v: &[f32]) -> Tensor {
    Tensor::from_f32(shape, v.to_vec()).unwrap()
}

fn i32t(v: &[i32]) -> Tensor {
    Tensor::from_i32(&[v.len()], v.to_vec()).unwrap()
}

const SHAPES: [(K, usize, usize); 6] =
    [(K::Q4_1, 37, 96), (K::Q4_0, 64, 576), (K::Q8_0, 5, 32), (K::F16, 9, 45), (K::BF16, 70, 33), (K::F32, 3, 7)];

fn dequantize_body(s: &Stream) {
    for (dt, rows, cols) in SHAPES {
        let (bytes, w) = weights(dt, rows, cols, 1);
        let mut want = vec![0.0; rows * cols];
        cpu::dequantize_rows(dt, &bytes, rows, cols, &mut want).unwrap();
        let mut out = poisoned(&[rows, cols], s);
        ops::dequantize_rows(&on(s, w), &mut out, s).unwrap();
        assert_close(&format!("dequantize {dt}"), &out.to_vec_f32(s).unwrap(), &want, Tolerance::STRICT);
    }
}
device_test!(dequantize_rows, dequantize_body);

fn gather_body(s: &Stream) {
    for (dt, rows, cols) in SHAPES {
        let (bytes, table) = weights(dt, rows, cols, 2);
        let ids: Vec<i32> = (0..5).map(|i| (i * 7 % rows) as i32).collect();
        let mut want = vec![0.0; ids.len() * cols];
        cpu::embedding_gather(dt, &bytes, rows, cols, &ids, &mut want).unwrap();
        let mut out = poisoned(&[ids.len(), cols], s);
        ops::embedding_gather(&on(s, table), &on(s, i32t(&ids)), &mut out, s).unwrap();
        assert_close(&format!("gather {dt}"), &out.to_vec_f32(s).unwrap(), &want, Tolerance::STRICT);
    }
}
device_test!(embedding_gather, gather_body);

/// On the host, quantized weights take the default (exact) path: bit for bit
/// `cpu::fast::matmul_f32`, and within f32 accumulation of the reference. Everything else (and
/// CUDA) against the reference.
fn check_product(label: &str, s: &Stream, dt: K, got: &[f32], reference: &[f32], exact: impl FnOnce() -> Vec<f32>) {
    if matches!(s, Stream::Host) && cpu::fast::supports(dt) {
        assert_close(&format!("{label} vs cpu::fast::matmul_f32"), got, &exact(), Tolerance::STRICT);
        assert_close(&format!("{label} vs reference"), got, reference, Tolerance::F32_ACCUMULATION);
    } else {
        assert_close(label, got, reference, tol(s, Tolerance::F32_ACCUMULATION));
    }
}

fn matvec_matmul_body(s: &Stream) {
    for (dt, rows, cols) in SHAPES {
        let (bytes, w) = weights(dt, rows, cols, 3);
        let w = on(s, w);
        let x = uniform(4, 67 * cols, 1.0);
        let mut want = vec![0.0; rows];
        cpu::matvec(dt, &bytes, rows, cols, &x[..cols], &mut want).unwrap();
        let mut y = poisoned(&[rows], s);
        ops::matvec(&w, &on(s, f32t(&[cols], &x[..cols])), &mut y, s).unwrap();
        check_product(&format!("matvec {dt}"), s, dt, &y.to_vec_f32(s).unwrap(), &want, || {
            let mut f = vec![0.0; rows];
            cpu::fast::matvec_f32(dt, &bytes, rows, cols, &x[..cols], &mut f).unwrap();
            f
        });

        let mut want = vec![0.0; 67 * rows];
        cpu::matmul(dt, &bytes, rows, cols, &x, 67, &mut want).unwrap();
        let mut y = poisoned(&[67, rows], s);
        ops::matmul(&w, &on(s, f32t(&[67, cols], &x)), &mut y, s).unwrap();
        check_product(&format!("matmul {dt}"), s, dt, &y.to_vec_f32(s).unwrap(), &want, || {
            let mut f = vec![0.0; 67 * rows];
            cpu::fast::matmul_f32(dt, &bytes, rows, cols, &x, 67, &mut f).unwrap();
            f
        });
    }
}
device_test!(matvec_matmul, matvec_matmul_body);

fn norm_rope_body(s: &Stream) {
    let (t, h, d) = (5, 3, 64);
    let x = uniform(5, t * h * d, 2.0);
    let w = uniform(6, d, 1.0);
    let mut want = vec![0.0; x.len()];
    cpu::rmsnorm(&x, &w, t * h, d, 1e-5, &mut want).unwrap();
    let mut out = poisoned(&[t, h, d], s);
    ops::rmsnorm(&on(s, f32t(&[t, h, d], &x)), &on(s, f32t(&[d], &w)), 1e-5, &mut out, s).unwrap();
    assert_close("rmsnorm", &out.to_vec_f32(s).unwrap(), &want, tol(s, Tolerance::F32_ACCUMULATION));

    let pos = [3, 4, 5, 6, 4000];
    let factors: Vec<f32> = (0..24).map(|i| 1.0 + i as f32 / 3.0).collect();
    let factors_t = on(s, f32t(&[24], &factors));
    for layout in [RopeLayout::Adjacent, RopeLayout::HalfSplit] {
        for with_factors in [false, true] {
            let mut want = x.clone();
            let ff = with_factors.then_some(&factors[..]);
            cpu::rope(&mut want, t, h, d, &pos, 48, 10000.0, 1.0, ff, layout).unwrap();
            let mut xt = on(s, f32t(&[t, h, d], &x));
            let ft = with_factors.then_some(&factors_t);
            ops::rope(&mut xt, &on(s, i32t(&pos)), 48, 10000.0, 1.0, ft, layout, s).unwrap();
            let label = format!("rope {layout:?} factors {with_factors}");
            assert_close(&label, &xt.to_vec_f32(s).unwrap(), &want, tol(s, Tolerance::F32_ROUNDING));
        }
    }
    // Factors of the wrong length are a typed error.
    let mut xt = on(s, f32t(&[t, h, d], &x));
    let short = on(s, f32t(&[23], &factors[..23]));
    assert!(ops::rope(&mut xt, &on(s, i32t(&pos)), 48, 10000.0, 1.0, Some(&short), RopeLayout::Adjacent, s).is_err());
}
device_test!(rmsnorm_rope, norm_rope_body);

/// K and V caches of [rows, n_kv_heads, head_dim] uniform values (seeds `seed` and `seed + 1`)
/// as `dt` tensors on the stream's device, and the same values for the CPU reference.
struct TestCache {
    k: Tensor,
    v: Tensor,
    dt: DType,
    values: [Vec<f32>; 2],
    halves: [Vec<f16>; 2],
}

impl TestCache {
    fn new(s: &Stream, dt: DType, shape: [usize; 3], seed: u64) -> TestCache {
        let n = shape.iter().product();
        let values = [uniform(seed, n, 1.0), uniform(seed + 1, n, 1.0)];
        let halves = values.clone().map(|v| v.iter().map(|&x| f16::from_f32(x)).collect::<Vec<f16>>());
        let tensor = |i: usize| match dt {
            DType::F16 => on(s, Tensor::from_f16(&shape, &halves[i]).unwrap()),
            _ => on(s, f32t(&shape, &values[i])),
        };
        let (k, v) = (tensor(0), tensor(1));
        TestCache { k, v, dt, values, halves }
    }

    /// The caches as the CPU reference reads them.
    fn refs(&self) -> (CacheRef<'_>, CacheRef<'_>) {
        match self.dt {
            DType::F16 => (CacheRef::F16(&self.halves[0]), CacheRef::F16(&self.halves[1])),
            _ => (CacheRef::F32(&self.values[0]), CacheRef::F32(&self.values[1])),
        }
    }
}

fn attention_body(s: &Stream) {
    let (h, kvh, d, rows) = (9, 3, 64, 40);
    for cache_dt in [DType::F16, DType::F32] {
        let cache = TestCache::new(s, cache_dt, [rows, kvh, d], 7);
        let ((kt, vt), (kr, vr)) = ((&cache.k, &cache.v), cache.refs());
        let scale = 0.125;
        let q = uniform(9, 6 * h * d, 1.0);
        let mut want = vec![0.0; h * d];
        cpu::attention_decode(&q[..h * d], kr, vr, h, kvh, d, 33, scale, None, &mut want).unwrap();
        let mut out = poisoned(&[h, d], s);
        ops::attention_decode(&on(s, f32t(&[h, d], &q[..h * d])), kt, vt, 33, scale, None, &mut out, s).unwrap();
        let got = out.to_vec_f32(s).unwrap();
        // The host runs the fast attention: f32 summation order only (and exactly cpu::fast).
        assert_close(&format!("decode {cache_dt}"), &got, &want, Tolerance::F32_ACCUMULATION);
        if matches!(s, Stream::Host) {
            let mut f = vec![0.0; h * d];
            cpu::fast::attention_decode(&q[..h * d], kr, vr, h, kvh, d, 33, scale, None, &mut f).unwrap();
            assert_close(&format!("decode {cache_dt} vs cpu::fast"), &got, &f, Tolerance::STRICT);
        }

        let mut want = vec![0.0; 6 * h * d];
        cpu::attention_prefill(&q, 6, 30, kr, vr, h, kvh, d, scale, None, &mut want).unwrap();
        let mut out = poisoned(&[6, h, d], s);
        ops::attention_prefill(&on(s, f32t(&[6, h, d], &q)), 30, kt, vt, scale, None, &mut out, s).unwrap();
        let got = out.to_vec_f32(s).unwrap();
        assert_close(&format!("prefill {cache_dt}"), &got, &want, Tolerance::F32_ACCUMULATION);
        if matches!(s, Stream::Host) {
            let mut f = vec![0.0; 6 * h * d];
            cpu::fast::attention_prefill(&q, 6, 30, kr, vr, h, kvh, d, scale, None, &mut f).unwrap();
            assert_close(&format!("prefill {cache_dt} vs cpu::fast"), &got, &f, Tolerance::STRICT);
        }
    }
}
device_test!(attention, attention_body);

/// `with_cpu_reference` puts this thread's host ops on the reference: bit for bit.
#[test]
fn with_cpu_reference_runs_the_reference() {
    let s = Stream::Host;
    let (dt, rows, cols) = (K::Q4_1, 37, 96);
    let (bytes, w) = weights(dt, rows, cols, 3);
    let x = uniform(4, 5 * cols, 1.0);
    let mut want = vec![0.0; 5 * rows];
    cpu::matmul(dt, &bytes, rows, cols, &x, 5, &mut want).unwrap();
    let mut y = poisoned(&[5, rows], &s);
    ops::with_cpu_reference(|| ops::matmul(&w, &f32t(&[5, cols], &x), &mut y, &s)).unwrap();
    assert_close("matmul under with_cpu_reference", &y.to_vec_f32(&s).unwrap(), &want, Tolerance::STRICT);
    let mut want = vec![0.0; rows];
    cpu::matvec(dt, &bytes, rows, cols, &x[..cols], &mut want).unwrap();
    let mut y = poisoned(&[rows], &s);
    ops::with_cpu_reference(|| ops::matvec(&w, &f32t(&[cols], &x[..cols]), &mut y, &s)).unwrap();
    assert_close("matvec under with_cpu_reference", &y.to_vec_f32(&s).unwrap(), &want, Tolerance::STRICT);
    // And only inside the closure.
    ops::matvec(&w, &f32t(&[cols], &x[..cols]), &mut y, &s).unwrap();
    let mut exact = vec![0.0; rows];
    cpu::fast::matvec_f32(dt, &bytes, rows, cols, &x[..cols], &mut exact).unwrap();
    assert_close("matvec after with_cpu_reference", &y.to_vec_f32(&s).unwrap(), &exact, Tolerance::STRICT);
}

/// `with_cpu_path(Fast)` puts this thread's host products on the 8-bit-activation kernels, bit
/// for bit, and nests: the inner path wins, the outer one comes back after it.
#[test]
fn with_cpu_path_fast_runs_the_fast_kernels() {
    let s = Stream::Host;
    let (dt, rows, cols) = (K::Q8_0, 29, 128);
    let (bytes, w) = weights(dt, rows, cols, 5);
    let x = uniform(6, 3 * cols, 1.0);
    let mut fast = vec![0.0; 3 * rows];
    cpu::fast::matmul(dt, &bytes, rows, cols, &x, 3, &mut fast).unwrap();
    let mut reference = vec![0.0; 3 * rows];
    cpu::matmul(dt, &bytes, rows, cols, &x, 3, &mut reference).unwrap();
    let run = || {
        let mut y = poisoned(&[3, rows], &s);
        ops::matmul(&w, &f32t(&[3, cols], &x), &mut y, &s).unwrap();
        y.to_vec_f32(&s).unwrap()
    };
    assert_eq!(ops::cpu_path(), ops::CpuPath::Exact, "the default path");
    let (inner, outer) = ops::with_cpu_path(ops::CpuPath::Fast, || (ops::with_cpu_reference(run), run()));
    assert_close("matmul under with_cpu_path(Fast)", &outer, &fast, Tolerance::STRICT);
    assert_close("matmul under a nested with_cpu_reference", &inner, &reference, Tolerance::STRICT);
    assert_eq!(ops::cpu_path(), ops::CpuPath::Exact, "restored after the closure");
}

fn kv_append_body(s: &Stream) {
    let (rows, kvh, d, t) = (12, 3, 8, 4);
    let src = uniform(10, t * kvh * d, 5.0);
    let pos = [7, 2, 9, 0];
    let mut want16 = vec![f16::ZERO; rows * kvh * d];
    cpu::kv_append(&src, t, kvh * d, &pos, CacheMut::F16(&mut want16), rows).unwrap();
    let mut cache = on(s, Tensor::from_f16(&[rows, kvh, d], &vec![f16::ZERO; rows * kvh * d]).unwrap());
    ops::kv_append(&on(s, f32t(&[t, kvh, d], &src)), &on(s, i32t(&pos)), &mut cache, s).unwrap();
    let got = cache.to_host(s).unwrap();
    assert_eq!(got.as_f16().unwrap(), &want16[..], "f16 cache after append");
}
device_test!(kv_append, kv_append_body);

fn elementwise_body(s: &Stream) {
    let n = 1000;
    let (a, b) = (uniform(11, n, 8.0), uniform(12, n, 2.0));
    let (at, bt) = (on(s, f32t(&[n], &a)), on(s, f32t(&[n], &b)));
    let mut want = vec![0.0; n];
    cpu::silu_mul(&a, &b, &mut want).unwrap();
    let mut out = poisoned(&[n], s);
    // On the host the exact and fast paths run the vectorized SiLU (`cpu::fast::silu_mul`),
    // the reference path the reference; a GPU its kernel, against the reference.
    let mut vectorized = vec![0.0; n];
    cpu::fast::silu_mul(&a, &b, &mut vectorized).unwrap();
    ops::silu_mul(&at, &bt, &mut out, s).unwrap();
    let host_want = if matches!(s, Stream::Host) { &vectorized } else { &want };
    assert_close("silu_mul", &out.to_vec_f32(s).unwrap(), host_want, tol(s, Tolerance::F32_ROUNDING));
    ops::with_cpu_reference(|| ops::silu_mul(&at, &bt, &mut out, s)).unwrap();
    assert_close("silu_mul, reference path", &out.to_vec_f32(s).unwrap(), &want, tol(s, Tolerance::F32_ROUNDING));

    cpu::add(&a, &b, &mut want).unwrap();
    let mut acc = on(s, f32t(&[n], &a));
    ops::add_inplace(&mut acc, &bt, s).unwrap();
    assert_close("add_inplace", &acc.to_vec_f32(s).unwrap(), &want, Tolerance::STRICT);

    // A bias broadcast over 40 tokens of 25 columns (n = 1000).
    let (rows, cols) = (40, 25);
    let mut want_b = vec![0.0; n];
    cpu::add_bias(&a, &b[..cols], rows, cols, &mut want_b).unwrap();
    let mut xt = on(s, f32t(&[rows, cols], &a));
    ops::add_bias_inplace(&mut xt, &on(s, f32t(&[cols], &b[..cols])), s).unwrap();
    assert_close("add_bias_inplace", &xt.to_vec_f32(s).unwrap(), &want_b, Tolerance::STRICT);
    assert!(ops::add_bias_inplace(&mut xt, &on(s, f32t(&[cols + 1], &b[..cols + 1])), s).is_err(), "bias length");

    cpu::scale(&a, -0.25, &mut want).unwrap();
    ops::scale(&at, -0.25, &mut out, s).unwrap();
    assert_close("scale", &out.to_vec_f32(s).unwrap(), &want, Tolerance::STRICT);

    let (rows, cols) = (3, 333);
    let x = uniform(13, rows * cols, 10.0);
    let xt = on(s, f32t(&[rows, cols], &x));
    let mut want = vec![0.0; rows * cols];
    cpu::softmax_rows(&x, rows, cols, &mut want).unwrap();
    let mut out = poisoned(&[rows, cols], s);
    ops::softmax_rows(&xt, &mut out, s).unwrap();
    assert_close("softmax", &out.to_vec_f32(s).unwrap(), &want, tol(s, Tolerance::F32_ACCUMULATION));

    let mut want = vec![0; rows];
    cpu::argmax_rows(&x, rows, cols, &mut want).unwrap();
    let mut idx = on(s, Tensor::from_i32(&[rows], vec![-1; rows]).unwrap());
    ops::argmax_rows(&xt, &mut idx, s).unwrap();
    assert_eq!(idx.to_vec_i32(s).unwrap(), want, "argmax");
}
device_test!(elementwise, elementwise_body);

#[test]
fn bad_shapes_types_and_devices_are_typed_errors() {
    let s = Stream::Host;
    let (_, w) = weights(K::Q4_0, 4, 64, 1);
    let x = f32t(&[63], &[0.0; 63]);
    let mut y = f32t(&[4], &[0.0; 4]);
    assert!(matches!(ops::matvec(&w, &x, &mut y, &s), Err(Error::Shape { op: "matvec", .. })));
    let ids = f32t(&[2], &[0.0, 1.0]);
    let mut out = f32t(&[2, 64], &[0.0; 128]);
    assert!(matches!(ops::embedding_gather(&w, &ids, &mut out, &s), Err(Error::Dtype { .. })));
    let mut i = Tensor::from_i32(&[4], vec![0; 4]).unwrap();
    assert!(matches!(ops::matvec(&w, &f32t(&[64], &[0.0; 64]), &mut i, &s), Err(Error::Dtype { .. })));
    // Out-of-vocabulary ids are refused on the CPU.
    let bad = i32t(&[0, 4]);
    assert!(matches!(ops::embedding_gather(&w, &bad, &mut out, &s), Err(Error::Kernel(_))));
    // A quantized row must be whole blocks.
    assert!(Tensor::from_bytes(DType::Q4_0, &[2, 33], &[0; 36]).is_err());
    // A shared view must lie inside its owner.
    let owner: strata_tensor::SharedBytes = std::sync::Arc::new(vec![0u8; 100]);
    assert!(Tensor::from_shared(DType::F32, &[30], owner.clone(), 0).is_err());
    assert!(Tensor::from_shared(DType::F32, &[20], owner, 20).is_ok());
    if let Ok((_, gs)) = crate::support::gpu() {
        // A host tensor on a GPU stream is a device error, not a crash.
        assert!(matches!(ops::matvec(&w, &f32t(&[64], &[0.0; 64]), &mut y, gs), Err(Error::Device { .. })));
    }
}

/// The `next` kernel set's decode matvec (`STRATA_GPU_KERNELS=next`: 8-bit activations,
/// `dp4a`) against the CPU fast path, which rounds the activations the same way: equal up to
/// the order of f32 sums, for every quantized type, through the tensor API (the stream's
/// scratch, the switch). A GPU-only test: on the host the switch changes nothing.
#[test]
fn matvec_next_cuda() {
    crate::support::on_cuda("ops::matvec_next_cuda", |s| {
        for dt in K::QUANTIZED {
            let (rows, cols) = (33, 512);
            let bytes = quant::random_blocks(dt, rows * cols / dt.block_values(), 21);
            let w = Tensor::from_bytes(dt.into(), &[rows, cols], &bytes).unwrap();
            let x = uniform(22, cols, 1.0);
            let mut want = vec![0.0; rows];
            cpu::fast::matvec(dt, &bytes, rows, cols, &x, &mut want).unwrap();
            let (w, xt) = (on(s, w), on(s, f32t(&[cols], &x)));
            let mut y = poisoned(&[rows], s);
            ops::with_gpu_kernels(ops::GpuKernels::Next, || ops::matvec(&w, &xt, &mut y, s)).unwrap();
            assert_close(&format!("matvec next {dt}"), &y.to_vec_f32(s).unwrap(), &want, Tolerance::F32_ACCUMULATION);
            // Twice: the second call reuses the stream's scratch.
            let mut y2 = poisoned(&[rows], s);
            ops::with_gpu_kernels(ops::GpuKernels::Next, || ops::matvec(&w, &xt, &mut y2, s)).unwrap();
            assert_close(&format!("matvec next {dt}, again"), &y2.to_vec_f32(s).unwrap(), &want, Tolerance::STRICT);
        }
    });
}

/// The `next` kernel set's prefill matmul (TF32 tensor cores) against the CPU reference for
/// every weight type, with tails in rows, tokens and columns. TF32 rounds both inputs to 10
/// mantissa bits, so each product may be off by about 2^-10 of its size: the bound per output
/// is `1.5 * 2^-10 * sum_k |x_k w_k|` (plus f32 summation), not the proven kernel's f32
/// tolerance. It can fail: a wrong tile, a dropped chunk or a transposed fragment is off by
/// whole products. A GPU-only test.
#[test]
fn matmul_next_cuda() {
    crate::support::on_cuda("ops::matmul_next_cuda", |s| {
        let shapes = [(K::Q4_0, 64, 4096, 128), (K::Q4_1, 70, 96, 131), (K::F32, 17, 45, 3), (K::F16, 130, 64, 200)];
        let quantized = K::QUANTIZED.iter().map(|&dt| (dt, 67, 512, 129));
        for (dt, rows, cols, tokens) in shapes.into_iter().chain(quantized) {
            let bytes = quant::quantize_matrix(dt, &uniform(31, rows * cols, 1.0), rows, cols)
                .unwrap_or_else(|_| quant::random_blocks(dt, rows * cols / dt.block_values(), 31));
            let w = Tensor::from_bytes(dt.into(), &[rows, cols], &bytes).unwrap();
            let x = uniform(32, tokens * cols, 2.0);
            let mut want = vec![0.0; tokens * rows];
            cpu::matmul(dt, &bytes, rows, cols, &x, tokens, &mut want).unwrap();
            let mut wf = vec![0.0; rows * cols];
            cpu::dequantize_rows(dt, &bytes, rows, cols, &mut wf).unwrap();
            let (w, xt) = (on(s, w), on(s, f32t(&[tokens, cols], &x)));
            let mut y = poisoned(&[tokens, rows], s);
            ops::with_gpu_kernels(ops::GpuKernels::Next, || ops::matmul(&w, &xt, &mut y, s)).unwrap();
            let got = y.to_vec_f32(s).unwrap();
            for t in 0..tokens {
                for r in 0..rows {
                    let mag: f64 = (0..cols).map(|k| f64::from((x[t * cols + k] * wf[r * cols + k]).abs())).sum();
                    let bound = 1.5 * mag / 1024.0 + 1e-6 * mag.max(1.0);
                    let (g, e) = (f64::from(got[t * rows + r]), f64::from(want[t * rows + r]));
                    assert!(
                        (g - e).abs() <= bound,
                        "matmul next {dt} {rows}x{cols} T={tokens}: y[{t}][{r}] = {g}, reference {e}, bound {bound}"
                    );
                }
            }
        }
    });
}

#[test]
fn gpu_kernel_sets_parse() {
    assert_eq!(ops::GpuKernels::parse("proven").unwrap(), ops::GpuKernels::Proven);
    assert_eq!(ops::GpuKernels::parse("next").unwrap(), ops::GpuKernels::Next);
    let e = ops::GpuKernels::parse("fastest").unwrap_err().to_string();
    assert!(e.contains("STRATA_GPU_KERNELS") && e.contains("proven"), "{e}");
    assert_eq!(ops::with_gpu_kernels(ops::GpuKernels::Next, ops::gpu_kernels).unwrap(), ops::GpuKernels::Next);
}

/// The `next` kernel set's decode attention (flash-decoding: splits of 256 cached positions,
/// one block per kv head and split, then a combine) against the CPU reference, across group
/// sizes (MHA, GQA 3/4/8), head dims up to 256, cache lengths around the split size and
/// sliding windows. A GPU-only test.
#[test]
fn attention_decode_next_cuda() {
    crate::support::on_cuda("ops::attention_decode_next_cuda", |s| {
        let rows = 700;
        for (h, kvh, d) in [(9, 3, 64), (32, 32, 128), (32, 8, 128), (8, 1, 256), (6, 2, 80)] {
            for cache_dt in [DType::F16, DType::F32] {
                let cache = TestCache::new(s, cache_dt, [rows, kvh, d], 17);
                let ((kt, vt), (kr, vr)) = ((&cache.k, &cache.v), cache.refs());
                let q = uniform(19, h * d, 2.0);
                let qt = on(s, f32t(&[h, d], &q));
                let scale = 1.0 / (d as f32).sqrt();
                for n_kv in [1, 255, 256, 257, 700] {
                    for window in [None, Some(100), Some(300)] {
                        let mut want = vec![0.0; h * d];
                        cpu::attention_decode(&q, kr, vr, h, kvh, d, n_kv, scale, window, &mut want).unwrap();
                        let mut out = poisoned(&[h, d], s);
                        ops::with_gpu_kernels(ops::GpuKernels::Next, || {
                            ops::attention_decode(&qt, kt, vt, n_kv, scale, window, &mut out, s)
                        })
                        .unwrap();
                        let label = format!("next decode {h}/{kvh}x{d} {cache_dt} n_kv={n_kv} window={window:?}");
                        assert_close(&label, &out.to_vec_f32(s).unwrap(), &want, Tolerance::F32_ACCUMULATION);
                    }
                }
            }
        }
    });
}

/// The `next` kernel set's prefill attention against the CPU reference: on f16 tensor cores
/// (`attention_mma.cu`) for an f16 cache with head_dim 64, 128 or 256, else its CUDA-core
/// tiled fallback (`attention_tiled.cu`: f32 caches, head_dim 80). Group sizes MHA and GQA
/// 3/4/8 (a 64-row tile of a GQA 3 group splits a token's heads), token counts with partial
/// row and key tiles (70 tokens x 3 heads = 3.3 row tiles; 130 keys = 2 tiles of 64 and a
/// tail), a prompt after cached rows (pos0 > 0, chunked prefill: keys 0..pos0 + n) and sliding
/// windows shorter than a key tile and than the prompt.
///
/// The tensor-core kernel rounds Q and the softmax weights to f16, so it is held to the CPU
/// reference run on the f16-rounded Q, per output within `check::attention_mma_bounds`
/// (derived there from f16 and f32 rounding; the host model of the kernel in the kernel
/// crate's `attention_mma` tests uses at most an eighth of it, while an off-by-one window, a
/// wrong GQA row mapping or a dropped key tile exceed it 60 to 30,000 times); the tiled
/// fallback computes in f32 and keeps `Tolerance::F32_ACCUMULATION`. A GPU-only test.
#[test]
fn attention_prefill_next_cuda() {
    crate::support::on_cuda("ops::attention_prefill_next_cuda", |s| {
        for (h, kvh, d) in [(9, 3, 64), (32, 32, 128), (32, 8, 128), (8, 1, 256), (6, 2, 80)] {
            for cache_dt in [DType::F16, DType::F32] {
                // What the launcher picks on an sm_80+ device (the build's only targets).
                let mma = cache_dt == DType::F16 && matches!(d, 64 | 128 | 256);
                for (tokens, pos0) in [(1, 0), (17, 0), (70, 0), (130, 0), (33, 300)] {
                    let cache = TestCache::new(s, cache_dt, [pos0 + tokens, kvh, d], 23);
                    let ((kt, vt), (kr, vr)) = ((&cache.k, &cache.v), cache.refs());
                    let q = uniform(29, tokens * h * d, 2.0);
                    let qt = on(s, f32t(&[tokens, h, d], &q));
                    let q16 = strata_kernels::check::round_f16(&q);
                    let scale = 1.0 / (d as f32).sqrt();
                    for window in [None, Some(5), Some(40)] {
                        let mut out = poisoned(&[tokens, h, d], s);
                        ops::with_gpu_kernels(ops::GpuKernels::Next, || {
                            ops::attention_prefill(&qt, pos0, kt, vt, scale, window, &mut out, s)
                        })
                        .unwrap();
                        let got = out.to_vec_f32(s).unwrap();
                        let label = format!(
                            "next prefill {} {h}/{kvh}x{d} {cache_dt} T={tokens} pos0={pos0} window={window:?}",
                            if mma { "mma" } else { "tiled" }
                        );
                        let mut want = vec![0.0; tokens * h * d];
                        let q_in = if mma { &q16 } else { &q };
                        cpu::attention_prefill(q_in, tokens, pos0, kr, vr, h, kvh, d, scale, window, &mut want)
                            .unwrap();
                        if mma {
                            let bounds = strata_kernels::check::attention_mma_bounds(
                                &q16, kr, vr, tokens, pos0, h, kvh, d, scale, window,
                            );
                            strata_kernels::check::assert_within_bounds(&label, &got, &want, &bounds);
                        } else {
                            assert_close(&label, &got, &want, Tolerance::F32_ACCUMULATION);
                        }
                    }
                }
            }
        }
    });
}

/// The ops of a mixture-of-experts FFN: one expert's slice of a 3-D weight as a view
/// (`Tensor::narrow`: same bytes, so the same products as the expert on its own, exactly), the
/// gather of its tokens' rows (`embedding_gather` of an f32 table), and the scaled scatter-add
/// of its outputs into their rows (`scatter_add_scaled`: one product and one sum per value,
/// rounded like the CPU reference, so compared exactly), with odd widths.
fn moe_body(s: &Stream) {
    let (n_expert, rows, cols) = (3, 37, 96);
    let experts: Vec<Vec<u8>> = (0..n_expert).map(|e| weights(K::Q4_1, rows, cols, 40 + e as u64).0).collect();
    let stacked = on(s, Tensor::from_bytes(DType::Q4_1, &[n_expert, rows, cols], &experts.concat()).unwrap());
    let x = on(s, f32t(&[2, cols], &uniform(41, 2 * cols, 1.0)));
    for (e, bytes) in experts.iter().enumerate() {
        let view = stacked.narrow(e..e + 1).unwrap().reshape(&[rows, cols]).unwrap();
        let alone = on(s, Tensor::from_bytes(DType::Q4_1, &[rows, cols], bytes).unwrap());
        let (mut a, mut b) = (poisoned(&[2, rows], s), poisoned(&[2, rows], s));
        ops::matmul(&view, &x, &mut a, s).unwrap();
        ops::matmul(&alone, &x, &mut b, s).unwrap();
        assert_close(
            &format!("expert {e} view"),
            &a.to_vec_f32(s).unwrap(),
            &b.to_vec_f32(s).unwrap(),
            Tolerance::STRICT,
        );
    }
    assert!(stacked.narrow(2..4).is_err(), "a slice past the experts");

    let (t, width) = (13, 37);
    let h = uniform(42, t * width, 3.0);
    let picked = [7, 0, 3, 12, 5];
    let mut gathered = poisoned(&[picked.len(), width], s);
    ops::embedding_gather(&on(s, f32t(&[t, width], &h)), &on(s, i32t(&picked)), &mut gathered, s).unwrap();
    let want: Vec<f32> =
        picked.iter().flat_map(|&r| h[r as usize * width..(r as usize + 1) * width].to_vec()).collect();
    assert_close("gather rows", &gathered.to_vec_f32(s).unwrap(), &want, Tolerance::STRICT);

    let src = uniform(43, picked.len() * width, 2.0);
    let w = [0.5, -1.25, 0.125, 3.0, 0.75];
    let base = uniform(44, t * width, 1.0);
    let mut want = base.clone();
    for ((&r, &wt), row) in picked.iter().zip(&w).zip(src.chunks_exact(width)) {
        for (o, &v) in want[r as usize * width..(r as usize + 1) * width].iter_mut().zip(row) {
            *o += wt * v;
        }
    }
    let mut out = on(s, f32t(&[t, width], &base));
    let (srct, rowst, wt) = (on(s, f32t(&[picked.len(), width], &src)), on(s, i32t(&picked)), on(s, f32t(&[5], &w)));
    ops::scatter_add_scaled(&srct, &rowst, &wt, &mut out, s).unwrap();
    assert_close("scatter_add_scaled", &out.to_vec_f32(s).unwrap(), &want, Tolerance::STRICT);
    assert!(ops::scatter_add_scaled(&srct, &on(s, i32t(&picked[..4])), &wt, &mut out, s).is_err(), "rows length");

    out.fill_zero(s).unwrap();
    assert!(out.to_vec_f32(s).unwrap().iter().all(|&v| v == 0.0), "fill_zero");
}
device_test!(moe, moe_body);

/// On the host a repeated row or one outside `out` is an error (the CUDA kernel adds without
/// atomics and cannot report a bad row without a synchronize).
#[test]
fn scatter_add_scaled_refuses_repeated_and_outside_rows() {
    let s = Stream::Host;
    let src = f32t(&[2, 3], &[1.0; 6]);
    let w = f32t(&[2], &[1.0, 1.0]);
    let mut out = f32t(&[4, 3], &[0.0; 12]);
    for bad in [[1, 1], [0, 4], [-1, 0]] {
        let err = ops::scatter_add_scaled(&src, &i32t(&bad), &w, &mut out, &s).expect_err("bad rows");
        assert!(matches!(err, Error::Kernel(_)), "{bad:?}: {err}");
    }
    assert_eq!(out.as_f32().unwrap(), &[0.0; 12], "nothing written");
}
